"""RQ-Transformer against the original implementation's outputs (tests/fixtures/{cin,txt}), conversion, saving."""

import copy
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel

from rq_hf.conversion_rqtransformer import (
    convert_rqtransformer_state_dict,
    rqtransformer_config_from_original,
    rqtransformer_from_original,
)
from rq_hf.modeling_rqtransformer import RQTransformerForImageGeneration

FIXTURES = Path(__file__).parent / "fixtures"


def load_original(name: str) -> tuple[dict, dict, list[torch.Tensor]]:
    """Stage-2 config, stage-2 state dict and the stage-1 codebooks (padding row dropped) of a fixture."""
    root = FIXTURES / name
    config = yaml.safe_load((root / "stage2" / "config.yaml").read_text())
    state_dict = torch.load(root / "stage2" / "model.pt", map_location="cpu", weights_only=True)["state_dict"]
    stage1 = torch.load(root / "stage1" / "model.pt", map_location="cpu", weights_only=True)["state_dict"]
    depth = config["arch"]["block_size"][2]
    codebooks = [stage1[f"quantizer.codebooks.{d}.weight"][:-1] for d in range(depth)]
    return config, state_dict, codebooks


@pytest.fixture(scope="module", params=["cin", "txt"])
def converted(request) -> tuple[str, RQTransformerForImageGeneration, dict]:
    model = rqtransformer_from_original(*load_original(request.param))
    return request.param, model, load_file(FIXTURES / request.param / "expected.safetensors")


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_teacher_forced_logits_match_original(converted, attn_implementation):
    name, model, expected = converted
    model.set_attn_implementation(attn_implementation)
    assert model.config._attn_implementation == attn_implementation
    with torch.no_grad():
        output = model(expected["codes"], condition_ids=expected["cond"])
    torch.testing.assert_close(output.logits, expected["logits"], atol=1e-4, rtol=0)
    if name == "txt":
        torch.testing.assert_close(output.condition_logits, expected["cond_logits"], atol=1e-4, rtol=0)
    else:
        assert output.condition_logits is None


def test_greedy_generate_matches_original_sampler(converted):
    _, model, expected = converted
    codes = model.generate(condition_ids=expected["cond"], top_k=1)
    assert torch.equal(codes, expected["greedy_codes"])


def test_conversion_reads_sampling_defaults_and_codebooks(converted):
    name, model, _ = converted
    _, _, codebooks = load_original(name)
    assert model.generation_config.temperature == 1.0
    assert model.generation_config.top_k is None and model.generation_config.top_p is None
    stored = model.code_embeddings.codebook
    expected = codebooks[0] if model.config.shared_codebook else torch.cat(codebooks)
    assert torch.equal(stored, expected)


def test_state_dict_conversion_names_missing_and_unexpected_keys():
    config, state_dict, codebooks = load_original("txt")
    model = rqtransformer_from_original(config, state_dict, codebooks)
    broken = dict(state_dict)
    del broken["head_mlp.bias"]
    broken["extra.weight"] = torch.zeros(1)
    with pytest.raises(
        ValueError, match=r"missing \['code_embeddings.head_projection.bias'\].*'extra.weight'"
    ):
        convert_rqtransformer_state_dict(broken, model.config)
    reshaped = dict(state_dict, **{"cond_emb.weight": torch.zeros(3, 3)})
    with pytest.raises(ValueError, match=r"cond_emb.weight: expected shape \(50, 32\), got \(3, 3\)"):
        convert_rqtransformer_state_dict(reshaped, model.config)


def test_save_load_round_trip_with_auto_classes(converted, tmp_path):
    _, model, expected = converted
    model = copy.deepcopy(model)
    model.generation_config.top_k = [3, 2, 1, 1][: model.config.code_shape[2]]
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "generation_config.json").exists()
    config = AutoConfig.from_pretrained(tmp_path)
    assert config.to_dict()["vocab_size"] == model.config.vocab_size
    loaded = AutoModel.from_pretrained(tmp_path)
    assert isinstance(loaded, RQTransformerForImageGeneration)
    assert loaded.generation_config.top_k == model.generation_config.top_k
    assert torch.equal(loaded.code_embeddings.codebook, model.code_embeddings.codebook)
    with torch.no_grad():
        logits = loaded(expected["codes"], condition_ids=expected["cond"]).logits
    torch.testing.assert_close(logits, expected["logits"], atol=1e-4, rtol=0)


def test_hard_and_one_hot_soft_labels_give_the_same_loss(converted):
    name, model, expected = converted
    codes, cond = expected["codes"], expected["cond"]
    with torch.no_grad():
        hard = model(codes, condition_ids=cond, labels=codes)
        one_hot = torch.nn.functional.one_hot(codes, max(model.config.vocab_size)).float()
        soft = model(codes, condition_ids=cond, soft_labels=one_hot)
    logits = expected["logits"]
    code_loss = torch.nn.functional.cross_entropy(logits.flatten(0, -2), codes.flatten())
    torch.testing.assert_close(hard.code_loss, code_loss, atol=1e-4, rtol=0)
    reference = code_loss
    if name == "txt":
        condition_loss = torch.nn.functional.cross_entropy(
            expected["cond_logits"].flatten(0, 1), cond[:, 1:].flatten()
        )
        torch.testing.assert_close(hard.condition_loss, condition_loss, atol=1e-4, rtol=0)
        reference = 0.9 * code_loss + 0.1 * condition_loss  # the default condition_loss_weight 0.1
    else:
        assert hard.condition_loss is None
    torch.testing.assert_close(hard.loss, reference, atol=1e-4, rtol=0)
    torch.testing.assert_close(soft.loss, hard.loss, atol=1e-5, rtol=0)


def test_condition_loss_weight_mixes_the_two_losses():
    model = rqtransformer_from_original(*load_original("txt"))
    expected = load_file(FIXTURES / "txt" / "expected.safetensors")
    codes, cond = expected["codes"], expected["cond"]
    losses = {}
    with torch.no_grad():
        for weight in (0.0, 0.25, 1.0):
            model.config.condition_loss_weight = weight
            losses[weight] = model(codes, condition_ids=cond, labels=codes)
    torch.testing.assert_close(losses[0.0].loss, losses[0.0].code_loss)
    torch.testing.assert_close(losses[1.0].loss, losses[1.0].condition_loss)
    expected_mix = 0.75 * losses[0.25].code_loss + 0.25 * losses[0.25].condition_loss
    torch.testing.assert_close(losses[0.25].loss, expected_mix)
    with pytest.raises(ValueError, match=r"^condition_loss_weight: expected a float in \[0, 1\], got 1.5"):
        type(model.config)(**{**model.config.to_dict(), "condition_loss_weight": 1.5})


ORIGINAL_NAMES = [
    ("spatial_layers.", "body_transformer.blocks."),
    ("depth_layers.", "head_transformer.blocks."),
    ("input_layernorm", "ln1"),
    ("post_attention_layernorm", "ln2"),
    ("self_attn.q_proj", "attn.query"),
    ("self_attn.k_proj", "attn.key"),
    ("self_attn.v_proj", "attn.value"),
    ("self_attn.o_proj", "attn.proj"),
    ("mlp.fc1", "mlp.0"),
    ("mlp.fc2", "mlp.2"),
    ("code_embeddings.token_embeddings", "tok_emb"),
    ("condition_embeddings", "cond_emb"),
    ("condition_classifier.norm", "cond_classifier.layer_norm"),
    ("condition_classifier.linear", "cond_classifier.linear"),
    ("classifier.norm", "classifier.layer_norm"),
    ("condition_position_embeddings", "pos_emb_cond"),
    ("spatial_position_embeddings", "pos_emb_hw"),
    ("depth_position_embeddings", "pos_emb_d"),
]


def test_learned_embeddings_and_per_depth_classifiers_convert_from_original_names():
    """Original names, `(1, L, E)` position embeddings and TupleEmbedding offsets of a model with learned token
    embeddings and per-depth classifiers convert back to the same weights."""
    config, _, _ = load_original("txt")
    config["arch"].update(input_emb_vqvae=False, head_emb_vqvae=False, shared_tok_emb=False)
    hf_config = rqtransformer_config_from_original(config)
    ours = RQTransformerForImageGeneration(hf_config).state_dict()
    original = {}
    for key, tensor in ours.items():
        for new, old in ORIGINAL_NAMES:
            key = key.replace(new, old)
        original[key] = tensor[None] if key.startswith("pos_emb_") else tensor
    original["tok_emb.offsets"] = torch.tensor([0, 32, 64])
    converted = convert_rqtransformer_state_dict(original, hf_config)
    assert converted.keys() == ours.keys()
    assert all(torch.equal(converted[key], ours[key]) for key in ours)
    original["tok_emb.offsets"] = torch.tensor([0, 0, 0])
    with pytest.raises(ValueError, match=r"tok_emb.offsets: expected \[0, 32, 64\]"):
        convert_rqtransformer_state_dict(original, hf_config)
