"""The rq-hf command line, run as a subprocess on the converted parity fixture, including its error paths."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from rq_hf import RQVAEModel

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def rq_hf(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "rq_hf.cli", *map(str, args)], capture_output=True, text=True, env=ENV, cwd=cwd
    )


def assert_user_error(run, command, fragment):
    assert run.returncode == 2, run.stderr
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith(f"rq-hf {command}: error: "), run.stderr
    assert fragment in last
    assert "Traceback" not in run.stderr


@pytest.fixture(scope="module")
def pipeline_dir(golden_pipeline_dir):
    return golden_pipeline_dir("cin")


@pytest.mark.slow
def test_generate_writes_a_grid_and_per_image_files(pipeline_dir, tmp_path):
    run = rq_hf(
        "generate",
        "--model",
        pipeline_dir,
        "--labels",
        0,
        1,
        2,
        "--num-images",
        3,
        "--top-k",
        5,
        "--seed",
        1,
        "--device",
        "cpu",
        "--output",
        tmp_path / "grid.png",
    )
    assert run.returncode == 0, run.stderr
    grid = Image.open(tmp_path / "grid.png")
    assert grid.width > 3 * 32 and grid.height >= 3 * 32
    run = rq_hf(
        "generate",
        "--model",
        pipeline_dir,
        "--labels",
        4,
        "--num-images",
        2,
        "--top-k",
        5,
        5,
        5,
        5,
        "--fuse-qkv",
        "--device",
        "cpu",
        "--output-dir",
        tmp_path / "each",
    )
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in (tmp_path / "each").iterdir()) == ["4_000.png", "4_001.png"]


@pytest.mark.slow
def test_generate_errors_are_one_line(pipeline_dir, tmp_path):
    out = tmp_path / "x.png"
    assert_user_error(
        rq_hf("generate", "--model", pipeline_dir, "--labels", 10, "--output", out, "--device", "cpu"),
        "generate",
        "class_labels: expected ids in [0, 10)",
    )
    assert_user_error(
        rq_hf("generate", "--model", tmp_path / "missing", "--labels", 1, "--output", out),
        "generate",
        "--model",
    )
    assert_user_error(
        rq_hf(
            "generate",
            "--model",
            pipeline_dir,
            "--labels",
            1,
            "--top-k",
            0,
            "--output",
            out,
            "--device",
            "cpu",
        ),
        "generate",
        "top_k",
    )
    assert_user_error(rq_hf("generate", "--model", pipeline_dir, "--labels", 1), "generate", "--output")
    assert not out.exists()


@pytest.mark.slow
def test_reconstruct_prints_psnr_per_depth(pipeline_dir, tmp_path):
    for index in range(2):
        Image.fromarray((np.random.default_rng(index).random((40, 48, 3)) * 255).astype("uint8")).save(
            tmp_path / f"in{index}.png"
        )
    run = rq_hf(
        "reconstruct",
        tmp_path / "in0.png",
        tmp_path / "in1.png",
        "--model",
        pipeline_dir,
        "--output",
        tmp_path / "rec.png",
    )
    assert run.returncode == 0, run.stderr
    rows = [line for line in run.stdout.splitlines() if line.startswith("| in")]
    assert len(rows) == 2 and all(len(row.split("|")) == 7 for row in rows)  # name + 4 depths
    assert Image.open(tmp_path / "rec.png").width >= 5 * 32
    assert_user_error(
        rq_hf("reconstruct", tmp_path / "nope.png", "--model", pipeline_dir, "--output", tmp_path / "r2.png"),
        "reconstruct",
        "IMAGE: expected a readable image file",
    )
    broken = RQVAEModel.from_pretrained(pipeline_dir, subfolder="vqvae")
    with torch.no_grad():
        broken.decoder.conv_out.bias.fill_(float("nan"))
    broken.save_pretrained(tmp_path / "broken")
    assert_user_error(
        rq_hf(
            "reconstruct",
            tmp_path / "in0.png",
            "--model",
            tmp_path / "broken",
            "--output",
            tmp_path / "r3.png",
        ),
        "reconstruct",
        "vqvae: the decoder produced NaN or infinite pixels",
    )
    assert not (tmp_path / "r3.png").exists()


@pytest.mark.slow
def test_convert_and_info(golden_dir, tmp_path):
    run = rq_hf(
        "convert",
        "--checkpoint_dir",
        golden_dir("cin"),
        "--output_dir",
        tmp_path / "out",
        "--release",
        "imagenet-480m",
    )
    assert run.returncode == 0, run.stderr
    assert "imagenet" in (tmp_path / "out" / "README.md").read_text().lower()
    info = rq_hf("info", tmp_path / "out")
    assert info.returncode == 0, info.stderr
    assert "codes (8, 8, 4)" in info.stdout and "3 spatial + 2 depth layers" in info.stdout
    assert_user_error(
        rq_hf(
            "convert",
            "--checkpoint_dir",
            golden_dir("cin"),
            "--output_dir",
            tmp_path / "o2",
            "--release",
            "no-such-release",
        ),
        "convert",
        "release: expected one of",
    )
    assert not (tmp_path / "o2").exists()
    assert_user_error(rq_hf("info", tmp_path / "nothing"), "info", "--model")


def test_help_is_available_for_every_command():
    for command in ([], ["generate"], ["reconstruct"], ["convert"], ["info"]):
        run = rq_hf(*command, "--help")
        assert run.returncode == 0 and "usage: rq-hf" in run.stdout


@pytest.mark.slow
def test_readme_main_command_uses_the_bundled_demo(tmp_path):
    run = rq_hf(
        "generate",
        "--labels",
        0,
        1,
        2,
        3,
        4,
        5,
        6,
        7,
        8,
        9,
        "--num-images",
        2,
        "--device",
        "cpu",
        "--output",
        tmp_path / "digits.png",
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    grid = Image.open(tmp_path / "digits.png")
    assert grid.height >= 10 * 32
