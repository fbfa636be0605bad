"""Conversion of original stage-1 folders: configs, key maps, safe loading, atomic output, errors."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from rq_hf import RQVAEModel
from rq_hf.conversion import convert_original_checkpoint, load_original_state_dict
from rq_hf.conversion_rqvae import convert_rqvae_state_dict, rqvae_config_from_original

REPO = Path(__file__).parents[1]


def copy_release(golden_dir, name, tmp_path) -> Path:
    target = tmp_path / name
    shutil.copytree(golden_dir(name), target)
    return target


@pytest.mark.parametrize("name", ["cin", "txt"])
def test_converted_folder_loads_and_reproduces_codes(golden_dir, golden_expected, tmp_path, name):
    out = convert_original_checkpoint(golden_dir(name), tmp_path / "out")
    assert sorted(p.name for p in (out / "vqvae").iterdir()) == [
        "config.json",
        "diffusion_pytorch_model.safetensors",
    ]
    model = RQVAEModel.from_pretrained(out / "vqvae").eval()
    expected = golden_expected(name)
    assert torch.equal(model.encode(expected["images"]).codes, expected["codes"])


def test_stage1_folder_given_directly_and_ema_weights(golden_dir, tmp_path):
    out = convert_original_checkpoint(golden_dir("cin") / "stage1", tmp_path / "out", use_ema=True)
    model = RQVAEModel.from_pretrained(out / "vqvae")
    ema = load_original_state_dict(golden_dir("cin") / "stage1" / "model.pt", use_ema=True)
    torch.testing.assert_close(model.quant_conv.weight, ema["quant_conv.weight"])


def test_config_maps_to_diffusers_blocks(golden_dir):
    config = yaml.safe_load((golden_dir("txt") / "stage1" / "config.yaml").read_text())
    kwargs = rqvae_config_from_original(config)
    # txt: resolution 32, ch_mult [1,1,2,2] -> 32,16,8,4; attention at 4
    assert kwargs["down_block_types"][-1] == "AttnDownEncoderBlock2D"
    assert kwargs["up_block_types"][0] == "AttnUpDecoderBlock2D"
    assert kwargs["block_out_channels"] == [32, 32, 64, 64]
    assert kwargs["shared_codebook"] is False and kwargs["num_quantizers"] == 3


def test_every_original_key_is_mapped_and_unknown_keys_are_named(golden_dir):
    config = yaml.safe_load((golden_dir("cin") / "stage1" / "config.yaml").read_text())
    kwargs = rqvae_config_from_original(config)
    original = load_original_state_dict(golden_dir("cin") / "stage1" / "model.pt")
    converted = convert_rqvae_state_dict(original, kwargs)
    assert set(converted) == set(RQVAEModel(**kwargs).state_dict())
    with pytest.raises(ValueError, match=r"unexpected keys \['encoder.extra.weight'\]"):
        convert_rqvae_state_dict({**original, "encoder.extra.weight": torch.zeros(1)}, kwargs)
    missing = {k: v for k, v in original.items() if k != "quantizer.codebooks.0.embed_ema"}
    with pytest.raises(ValueError, match="quantizer.codebooks.0.embed_ema"):
        convert_rqvae_state_dict(missing, kwargs)


def test_missing_weights_are_named(golden_dir, tmp_path):
    release = copy_release(golden_dir, "cin", tmp_path)
    checkpoint = torch.load(release / "stage1" / "model.pt", weights_only=True)
    del checkpoint["state_dict"]["encoder.conv_in.weight"]
    torch.save(checkpoint, release / "stage1" / "model.pt")
    with pytest.raises(ValueError, match=r"missing \['encoder.conv_in.weight'\]"):
        convert_original_checkpoint(release, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupted_checkpoint_is_a_clear_error_and_writes_nothing(golden_dir, tmp_path, damage):
    release = copy_release(golden_dir, "cin", tmp_path)
    model_pt = release / "stage1" / "model.pt"
    data = model_pt.read_bytes()
    model_pt.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"not a checkpoint" * 10)
    with pytest.raises(ValueError, match="^checkpoint: expected a readable torch.save file"):
        convert_original_checkpoint(release, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["cin"], "no staging folder may be left behind"


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "extra": Path("x")}, path)
    with pytest.raises(ValueError, match="^checkpoint: expected a readable torch.save file"):
        load_original_state_dict(path)


def test_missing_ema_weights_are_named(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, path)
    with pytest.raises(ValueError, match="'state_dict_ema'"):
        load_original_state_dict(path, use_ema=True)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c["arch"]["ddconfig"].pop("ch_mult"), "arch.ddconfig.ch_mult"),
        (lambda c: c["arch"]["hparams"].pop("code_shape"), "arch.hparams.code_shape"),
        (lambda c: c["arch"].pop("hparams"), "arch.hparams"),
        (lambda c: c["arch"]["hparams"].update(bottleneck_type="vq"), "bottleneck_type"),
        (lambda c: c["arch"]["ddconfig"].update(double_z=True), "double_z"),
        (lambda c: c["arch"]["ddconfig"].update(dropout=0.1), "dropout"),
        (lambda c: c["arch"]["hparams"].update(code_shape=[3, 3, 4]), "code_shape"),
        (lambda c: c["arch"]["hparams"].update(latent_shape=[4, 4, 16]), "latent_shape"),
    ],
)
def test_bad_config_is_a_clear_error(golden_dir, tmp_path, edit, message):
    release = copy_release(golden_dir, "cin", tmp_path)
    config_path = release / "stage1" / "config.yaml"
    config = yaml.safe_load(config_path.read_text())
    edit(config)
    config_path.write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError, match=message):
        convert_original_checkpoint(release, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bad_folders_are_clear_errors(golden_dir, tmp_path):
    with pytest.raises(ValueError, match="^checkpoint_dir: expected"):
        convert_original_checkpoint(tmp_path / "missing", tmp_path / "out")
    with pytest.raises(ValueError, match="^checkpoint_dir: expected"):
        convert_original_checkpoint(golden_dir("cin") / "stage2", tmp_path / "out")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep").write_text("x")
    with pytest.raises(ValueError, match="^output_dir: expected"):
        convert_original_checkpoint(golden_dir("cin"), tmp_path / "out")
    assert (tmp_path / "out" / "keep").read_text() == "x"
    convert_original_checkpoint(golden_dir("cin"), tmp_path / "out", overwrite=True)
    assert not (tmp_path / "out" / "keep").exists()


def test_conversion_script_and_cli_errors(golden_dir, tmp_path):
    script = REPO / "conversion_scripts" / "convert_rq_original_to_hf.py"
    run = subprocess.run(
        [
            sys.executable,
            str(script),
            "--checkpoint_dir",
            str(golden_dir("txt")),
            "--output_dir",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "o" / "vqvae" / "config.json").is_file()
    failed = subprocess.run(
        [
            sys.executable,
            str(script),
            "--checkpoint_dir",
            str(tmp_path / "nope"),
            "--output_dir",
            str(tmp_path / "p"),
        ],
        capture_output=True,
        text=True,
    )
    assert failed.returncode == 2
    assert failed.stderr.startswith("rq-hf convert: error: checkpoint_dir: expected")
    assert "Traceback" not in failed.stderr


def test_tokenizer_is_checked_against_the_model(golden_dir, tmp_path):
    bpe = Path(__file__).parent / "fixtures" / "tokenizer-bpe16k"
    with pytest.raises(ValueError, match="^tokenizer_dir: expected none for a class model"):
        convert_original_checkpoint(golden_dir("cin"), tmp_path / "a", tokenizer_dir=bpe)
    with pytest.raises(ValueError, match=r"^tokenizer_dir: expected at most 50 tokens"):
        convert_original_checkpoint(golden_dir("txt"), tmp_path / "b", tokenizer_dir=bpe)
    with pytest.raises(ValueError, match="^tokenizer_dir: expected a folder with tokenizer.json"):
        convert_original_checkpoint(golden_dir("txt"), tmp_path / "c", tokenizer_dir=tmp_path)
    assert not any((tmp_path / name).exists() for name in "abc")
