"""RQPipeline: parity with the original greedy images, reproducibility, outputs, save/load, Hub paths."""

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rq_hf import RQPipeline, RQVAEModel
from rq_hf.conversion import convert_rqtransformer, convert_rqvae, find_original_release

ATOL = 1e-4


@pytest.fixture(scope="module")
def cin_pipeline(golden_pipeline_dir):
    return RQPipeline.from_pretrained(golden_pipeline_dir("cin"))


@pytest.fixture(scope="module")
def txt_pipeline(golden_pipeline_dir):
    return RQPipeline.from_pretrained(golden_pipeline_dir("txt"))


def test_greedy_images_equal_the_originals(cin_pipeline, golden_expected):
    expected = golden_expected("cin")
    labels = expected["cond"][:, 0].tolist()
    images = cin_pipeline(class_labels=labels, top_k=1, output_type="pt").images
    torch.testing.assert_close(images, ((expected["greedy_images"] + 1) / 2).clamp(0, 1), atol=ATOL, rtol=0)


def test_fused_qkv_projections_keep_the_greedy_images_of_the_original(golden_pipeline_dir, golden_expected):
    pipeline = RQPipeline.from_pretrained(golden_pipeline_dir("cin"))
    pipeline.fuse_qkv_projections()
    assert pipeline.transformer.spatial_layers[0].self_attn.fused_qkv_weight is not None
    expected = golden_expected("cin")
    images = pipeline(class_labels=expected["cond"][:, 0].tolist(), top_k=1, output_type="pt").images
    torch.testing.assert_close(images, ((expected["greedy_images"] + 1) / 2).clamp(0, 1), atol=ATOL, rtol=0)
    pipeline.unfuse_qkv_projections()
    assert pipeline.transformer.spatial_layers[0].self_attn.fused_qkv_weight is None


def test_text_fixture_driven_by_token_ids_equals_the_original(txt_pipeline, golden_expected):
    expected = golden_expected("txt")
    images = txt_pipeline(condition_ids=expected["cond"], top_k=1, output_type="pt").images
    torch.testing.assert_close(images, ((expected["greedy_images"] + 1) / 2).clamp(0, 1), atol=ATOL, rtol=0)


def test_same_generator_same_images_and_another_seed_differs(cin_pipeline):
    def sample(seed):
        generator = torch.Generator().manual_seed(seed)
        return cin_pipeline(
            class_labels=[1, 2], num_images_per_prompt=2, generator=generator, output_type="pt"
        ).images

    first, second, other = sample(0), sample(0), sample(1)
    assert torch.equal(first, second)
    assert not torch.equal(first, other)


@pytest.mark.parametrize("output_type", ["pil", "np", "pt"])
def test_output_types(cin_pipeline, output_type):
    images = cin_pipeline(class_labels=3, num_images_per_prompt=2, top_k=1, output_type=output_type).images
    if output_type == "pil":
        assert len(images) == 2 and all(isinstance(i, Image.Image) and i.size == (32, 32) for i in images)
    elif output_type == "np":
        assert images.shape == (2, 32, 32, 3) and images.min() >= 0 and images.max() <= 1
    else:
        assert images.shape == (2, 3, 32, 32) and images.dtype == torch.float32
    assert len(cin_pipeline(class_labels=3, top_k=1, output_type=output_type, return_dict=False)) == 1


def test_batched_decoding_equals_one_batch(cin_pipeline):
    kwargs = dict(class_labels=[0, 1, 2], top_k=1, output_type="pt")
    torch.testing.assert_close(
        cin_pipeline(**kwargs, decode_batch_size=1).images, cin_pipeline(**kwargs).images, atol=1e-5, rtol=0
    )


def test_save_and_load_round_trip(cin_pipeline, tmp_path):
    cin_pipeline.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] == "RQPipeline"
    assert index["vqvae"] == ["rq_hf.modeling_rqvae", "RQVAEModel"]
    assert (tmp_path / "transformer" / "model.safetensors").is_file()
    assert (tmp_path / "transformer" / "generation_config.json").is_file()
    assert not list(tmp_path.rglob("*.bin"))
    reloaded = RQPipeline.from_pretrained(tmp_path)
    kwargs = dict(class_labels=[4, 5], output_type="pt")
    first = cin_pipeline(**kwargs, generator=torch.Generator().manual_seed(3)).images
    second = reloaded(**kwargs, generator=torch.Generator().manual_seed(3)).images
    assert torch.equal(first, second)


def test_converted_folder_has_the_release_defaults_and_a_card(golden_pipeline_dir):
    folder = golden_pipeline_dir("cin")
    generation = json.loads((folder / "transformer" / "generation_config.json").read_text())
    assert generation.get("top_k") is None and generation.get("top_p") is None
    card = (folder / "README.md").read_text()
    assert "license: cc-by-nc-sa-4.0" in card and "library_name: rq_hf" in card


def test_mismatched_components_are_refused(golden_dir):
    cin, txt = find_original_release(golden_dir("cin")), find_original_release(golden_dir("txt"))
    cin_vqvae, txt_vqvae = convert_rqvae(cin.stage1), convert_rqvae(txt.stage1)
    transformer = convert_rqtransformer(cin.stage2, cin_vqvae)
    with pytest.raises(
        ValueError, match=r"^vqvae, transformer: expected components that agree, got code shape"
    ):
        RQPipeline(vqvae=txt_vqvae, transformer=transformer)
    other = RQVAEModel(**dict(cin_vqvae.config))
    with pytest.raises(ValueError, match="codebook copy"):
        RQPipeline(vqvae=other, transformer=transformer)


def test_from_pretrained_with_a_hub_repo_id_uses_the_snapshot(golden_pipeline_dir, tmp_path, monkeypatch):
    # A Hub cache laid out as huggingface_hub writes it; local_files_only resolves it without network.
    commit = "0" * 40
    repo_cache = tmp_path / "cache" / "models--rq-hf--cin-test"
    shutil.copytree(golden_pipeline_dir("cin"), repo_cache / "snapshots" / commit)
    (repo_cache / "refs").mkdir()
    (repo_cache / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipeline = RQPipeline.from_pretrained(
        "rq-hf/cin-test", cache_dir=tmp_path / "cache", local_files_only=True
    )
    assert pipeline.transformer.config.condition_vocab_size == 10
    with pytest.raises(OSError):
        RQPipeline.from_pretrained("rq-hf/not-cached", cache_dir=tmp_path / "cache", local_files_only=True)


def test_push_to_hub_uploads_the_saved_folder_with_its_card(cin_pipeline, monkeypatch):
    from huggingface_hub import ModelCard

    uploaded = {}

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, private=None, exist_ok=False):
            return type("Repo", (), {"repo_id": repo_id})()

        def upload_folder(self, repo_id, folder_path, commit_message, create_pr):
            uploaded["repo_id"] = repo_id
            files = [p for p in Path(folder_path).rglob("*") if p.is_file()]
            uploaded["files"] = sorted(p.relative_to(folder_path).as_posix() for p in files)
            uploaded["card"] = (Path(folder_path) / "README.md").read_text()

    monkeypatch.setattr("rq_hf.pipeline_rq.HfApi", FakeApi)
    card = ModelCard("---\nlicense: apache-2.0\n---\n# test card\n")
    cin_pipeline.push_to_hub("me/rq-test", model_card=card)
    assert uploaded["repo_id"] == "me/rq-test"
    assert "model_index.json" in uploaded["files"] and "transformer/model.safetensors" in uploaded["files"]
    assert "# test card" in uploaded["card"]


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(class_labels=10), "class_labels"),
        (dict(class_labels=[]), "class_labels"),
        (dict(class_labels="1"), "class_labels"),
        (dict(), "class_labels"),
        (dict(class_labels=1, prompt="a cat"), "class_labels, prompt"),
        (dict(prompt="a cat"), "prompt"),
        (dict(class_labels=1, output_type="latent"), "output_type"),
        (dict(class_labels=1, num_images_per_prompt=0), "num_images_per_prompt"),
        (dict(condition_ids=torch.zeros(2, dtype=torch.long)), "condition_ids"),
    ],
)
def test_bad_input_is_a_clear_value_error(cin_pipeline, kwargs, argument):
    with pytest.raises(ValueError, match=f"^{argument}: expected"):
        cin_pipeline(**kwargs)


def test_images_are_never_nan(cin_pipeline):
    images = cin_pipeline(class_labels=[0, 9], output_type="np").images
    assert np.isfinite(images).all()
    broken = RQPipeline(vqvae=copy.deepcopy(cin_pipeline.vqvae), transformer=cin_pipeline.transformer)
    with torch.no_grad():
        broken.vqvae.decoder.conv_out.bias.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="vqvae: the decoder produced NaN or infinite pixels"):
        broken.decode_codes(torch.zeros(1, *cin_pipeline.transformer.config.code_shape, dtype=torch.long))
