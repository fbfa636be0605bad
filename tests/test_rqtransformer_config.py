"""RQTransformerConfig and the stage-2 config / generation-config conversion."""

import copy
from pathlib import Path

import pytest
import yaml
from transformers import AutoConfig

from rq_hf.configuration_rqtransformer import RQTransformerConfig
from rq_hf.conversion_rqtransformer import generation_config_from_original, rqtransformer_config_from_original

FIXTURES = Path(__file__).parent / "fixtures"


def original_config(name: str) -> dict:
    return yaml.safe_load((FIXTURES / name / "stage2" / "config.yaml").read_text())


def test_vocab_size_is_stored_per_depth():
    assert RQTransformerConfig(code_shape=(2, 2, 3), vocab_size=7).vocab_size == [7, 7, 7]
    config = RQTransformerConfig(
        code_shape=(2, 2, 3),
        vocab_size=[7, 5, 6],
        shared_tok_emb=False,
        shared_cls_emb=False,
        shared_codebook=False,
    )
    assert config.vocab_size == [7, 5, 6]
    assert config.intermediate_size == 4 * config.hidden_size


def test_condition_properties():
    unconditional = RQTransformerConfig()
    assert (unconditional.num_condition_embeddings, unconditional.condition_sequence_length) == (1, 1)
    assert not unconditional.is_conditional
    text = RQTransformerConfig(condition_vocab_size=50, condition_length=5)
    assert (text.num_condition_embeddings, text.condition_sequence_length, text.is_conditional) == (
        50,
        5,
        True,
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"code_shape": (8, 8)}, "code_shape: expected 3 positive ints"),
        ({"code_shape": (2, 2, 3), "vocab_size": [4, 4]}, "vocab_size: expected a positive int or 3"),
        (
            {"code_shape": (2, 2, 2), "vocab_size": [4, 5], "shared_cls_emb": False},
            "shared_tok_emb: expected False",
        ),
        (
            {
                "code_shape": (2, 2, 2),
                "vocab_size": [4, 5],
                "shared_tok_emb": False,
                "shared_codebook": False,
            },
            "shared_cls_emb: expected False",
        ),
        (
            {"code_shape": (2, 2, 2), "vocab_size": [4, 5], "shared_tok_emb": False, "shared_cls_emb": False},
            "shared_codebook: expected False",
        ),
        ({"condition_length": 4, "condition_vocab_size": 1}, "condition_vocab_size: expected >= 2"),
        (
            {"hidden_size": 64, "num_spatial_heads": 5},
            "num_spatial_heads: expected a divisor of hidden_size 64",
        ),
        ({"hidden_act": "relu"}, "hidden_act: expected one of"),
        (
            {"condition_vocab_size": 10, "null_condition_id": 10},
            r"null_condition_id: expected an id in \[0, 10\)",
        ),
    ],
)
def test_invalid_config_raises(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RQTransformerConfig(**kwargs)


def test_auto_config_round_trip(tmp_path):
    config = RQTransformerConfig(
        code_shape=(2, 3, 2),
        vocab_size=[9, 4],
        shared_tok_emb=False,
        shared_cls_emb=False,
        shared_codebook=False,
        condition_vocab_size=11,
        null_condition_id=10,
        hidden_act="quick_gelu",
    )
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, RQTransformerConfig)
    assert loaded.to_diff_dict() == config.to_diff_dict()


def test_fixture_configs_convert():
    cin = rqtransformer_config_from_original(original_config("cin"))
    assert cin.code_shape == [8, 8, 4] and cin.vocab_size == [64] * 4
    assert (cin.condition_vocab_size, cin.condition_length, cin.hidden_size, cin.codebook_dim) == (
        10,
        1,
        64,
        16,
    )
    assert (cin.num_spatial_layers, cin.num_depth_layers, cin.num_spatial_heads, cin.num_depth_heads) == (
        3,
        2,
        4,
        4,
    )
    assert cin.shared_codebook and cin.shared_cls_emb and cin.shared_tok_emb and cin.cumsum_depth_ctx
    assert (cin.hidden_act, cin.residual_dropout, cin.null_condition_id) == ("gelu", 0.1, None)
    txt = rqtransformer_config_from_original(original_config("txt"))
    assert (txt.condition_vocab_size, txt.condition_length) == (50, 5)
    assert not txt.shared_codebook and not txt.shared_cls_emb and not txt.shared_tok_emb


def test_missing_keys_take_the_original_defaults():
    arch = {
        "type": "rq-transformer",
        "block_size": [2, 2, 3],
        "vocab_size": [5, 6, 7],
        "embed_dim": 16,
        "body": {"n_layer": 1, "block": {"n_head": 2}},
        "head": {"n_layer": 1, "block": {"n_head": 4}},
    }
    config = rqtransformer_config_from_original({"arch": arch})
    assert (config.condition_vocab_size, config.condition_length, config.embedding_dropout) == (0, 0, 0.0)
    assert not any(
        [config.input_emb_vqvae, config.head_emb_vqvae, config.cumsum_depth_ctx, config.shared_tok_emb]
        + [config.shared_cls_emb, config.shared_codebook]
    )
    assert (config.mlp_bias, config.attention_bias, config.attention_dropout, config.residual_dropout) == (
        True,
        True,
        0.0,
        0.1,
    )
    assert (config.hidden_act, config.num_spatial_heads, config.num_depth_heads) == ("gelu", 2, 4)


def _with(path: str, value) -> dict:
    config = copy.deepcopy(original_config("cin"))
    *parents, last = path.split(".")
    section = config
    for key in parents:
        section = section[key]
    section[last] = value
    return config


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("arch.use_padding_emb", True, "arch.use_padding_emb: expected False"),
        ("arch.scaled_head_emb_vqvae", True, "arch.scaled_head_emb_vqvae: expected False"),
        ("arch.ar_hierarchy", True, "arch.ar_hierarchy: expected None"),
        ("arch.new_option", 1, r"arch: unsupported option\(s\) \['new_option'\]"),
        ("arch.type", "rq-vae", "arch.type: expected 'rq-transformer'"),
        ("arch.head.block.gelu", "v2", r"arch.head.block: expected the same \['gelu'\]"),
        ("arch.body.block.embed_dim", 32, "arch.body.block.embed_dim: expected arch.embed_dim 64"),
        ("arch.body.block.flash", True, r"arch.body.block: unsupported option\(s\) \['flash'\]"),
        ("arch.vocab_size", 32, r"arch.vocab_size: expected the vqvae codebook sizes \[64, 64, 64, 64\]"),
        ("arch.input_embed_dim", 8, "arch.input_embed_dim: expected the vqvae code width 16"),
        ("arch.block_size", [4, 4, 4], "arch.block_size: expected vqvae code_shape"),
    ],
)
def test_unsupported_original_options_raise(path, value, message):
    with pytest.raises(ValueError, match=message):
        rqtransformer_config_from_original(_with(path, value))


def test_gelu_v2_converts_to_quick_gelu():
    config = _with("arch.body.block.gelu", "v2")
    config["arch"]["head"]["block"]["gelu"] = "v2"
    assert rqtransformer_config_from_original(config).hidden_act == "quick_gelu"


def test_generation_config_reads_the_sampling_section():
    generation = generation_config_from_original({"sampling": {"temp": 0.9, "top_k": [8, 4], "top_p": 0.92}})
    assert (generation.temperature, generation.top_k, generation.top_p, generation.do_sample) == (
        0.9,
        [8, 4],
        0.92,
        True,
    )
    fallback = generation_config_from_original({"experiment": {"sample": {"top_k": 250, "top_p": 1.0}}})
    assert (fallback.temperature, fallback.top_k, fallback.top_p) == (1.0, 250, 1.0)
    empty = generation_config_from_original(original_config("cin"))
    assert (empty.temperature, empty.top_k, empty.top_p) == (1.0, None, None)
