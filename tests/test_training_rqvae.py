"""training/train_rqvae.py: two CPU processes under `accelerate launch`, resumption after a kill, loadable
outputs, and flags refused before the first training step."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
import torch
from training_helpers import (
    MNIST,
    REPO,
    TINY_RQVAE,
    TRAINING,
    UsageError,
    argv_of,
    assert_same_weights,
    data_args,
    launch,
    load_dump,
    run_and_kill_after,
    train_rqvae,
)

from rq_hf import RQVAEModel

# 20 steps of 8 digits per process on the first 40 digits: several epochs, so resuming crosses epoch
# boundaries; the GAN starts at step 2; flips exercise the per-example random generators.
RUN_FLAGS = argv_of(
    {
        "--model_config": TINY_RQVAE,
        "--perceptual_weight": 0,
        "--disc_start": 2,
        "--random_flip": True,
        "--max_train_samples": 40,
        "--train_batch_size": 8,
        "--max_train_steps": 20,
        "--checkpointing_steps": 4,
        "--validation_steps": 10,
        "--learning_rate": 1e-3,
        "--lr_scheduler": "cosine",
    }
)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_processes_keep_identical_codebooks_and_save_a_loadable_model(tmp_path):
    launch("train_rqvae", data_args(*RUN_FLAGS, "--output_dir", str(tmp_path / "out")), tmp_path / "ranks")
    rank0, rank1 = load_dump(tmp_path / "ranks", 0), load_dump(tmp_path / "ranks", 1)
    assert_same_weights(rank0, rank1)
    initial = RQVAEModel.from_config(RQVAEModel.load_config(str(TINY_RQVAE)))
    assert not torch.equal(
        rank0["quantizer.codebooks.0.embeddings"], initial.quantizer.codebooks[0].embeddings
    )

    output = tmp_path / "out"
    model = RQVAEModel.from_pretrained(str(output))
    assert_same_weights(rank0, model.state_dict())
    assert model.config.sample_size == 16 and model.code_shape == (8, 8, 2)
    checkpoint = RQVAEModel.from_pretrained(str(output / "checkpoint-20" / "vqvae"))
    assert_same_weights(rank0, checkpoint.state_dict())
    assert "psnr_depth2" in (output / "README.md").read_text()
    assert (output / "validation" / "reconstruction-20.png").is_file()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_resuming_after_a_kill_gives_the_weights_of_an_uninterrupted_run(tmp_path):
    output = tmp_path / "killed"
    flags = data_args(*RUN_FLAGS, "--output_dir", str(output))
    run_and_kill_after([sys.executable, str(TRAINING / "train_rqvae.py"), *flags], output / "checkpoint-4")
    assert not (output / "config.json").exists(), "the run was meant to be killed before its end"

    resumed = train_rqvae.main(train_rqvae.parse_args([*flags, "--resume_from_checkpoint", "latest"]))
    uninterrupted = train_rqvae.main(
        train_rqvae.parse_args(data_args(*RUN_FLAGS, "--output_dir", str(tmp_path / "uninterrupted")))
    )
    assert_same_weights(uninterrupted.state_dict(), resumed.state_dict())


def test_streaming_dataset_with_gradient_accumulation_trains(tmp_path):
    args = train_rqvae.parse_args(
        data_args(
            "--model_config",
            str(TINY_RQVAE),
            "--perceptual_weight",
            "0",
            "--streaming",
            "--max_train_steps",
            "2",
            "--gradient_accumulation_steps",
            "2",
            "--train_batch_size",
            "4",
            "--output_dir",
            str(tmp_path),
        )
    )
    model = train_rqvae.main(args)
    assert_same_weights(model.state_dict(), RQVAEModel.from_pretrained(str(tmp_path)).state_dict())


BAD_FLAGS = {
    "missing column": ({"--image_column": "picture"}, "--image_column: expected a column of the dataset"),
    "not an image column": ({"--image_column": "label"}, "--image_column: expected a column of images"),
    "unknown dataset path": (
        {"--dataset_name": "/no/such/dataset"},
        "--dataset_name: expected a Hub dataset id",
    ),
    "missing data files": (
        {"--train_data_files": "/no/such/file.parquet"},
        "--train_data_files: expected existing",
    ),
    "resolution vs downsampling": (
        {"--resolution": "15"},
        "--resolution: expected a multiple of the RQ-VAE's",
    ),
    "lpips not installed": (
        {"--perceptual_weight": "1"},
        "--perceptual_weight: expected 0 without the lpips",
    ),
    "unreadable model config": (
        {"--model_config": str(MNIST)},
        "--model_config: expected an RQVAEModel config",
    ),
    "bad split": ({"--dataset_split": "validation"}, "--dataset_split: expected a split of the dataset"),
    "resume from nowhere": (
        {"--resume_from_checkpoint": "/no/such/checkpoint-3"},
        "--resume_from_checkpoint: expected 'latest' or an existing",
    ),
    "zero batch": ({"--train_batch_size": "0"}, "--train_batch_size: expected an int >= 1, got 0"),
    "streaming without steps": (
        {"--streaming": True, "--max_train_steps": None},
        "--max_train_steps: expected a step count with --streaming",
    ),
}


@pytest.mark.parametrize("case", list(BAD_FLAGS))
def test_bad_flags_fail_before_training_with_one_clear_message(case, tmp_path):
    changes, message = BAD_FLAGS[case]
    if case == "lpips not installed" and importlib.util.find_spec("lpips") is not None:
        pytest.skip("lpips is installed here")
    flags = {
        "--model_config": str(TINY_RQVAE),
        "--perceptual_weight": "0",
        "--max_train_steps": "1",
        "--train_data_files": str(MNIST),
        "--report_to": "none",
        "--output_dir": str(tmp_path / "out"),
    }
    with pytest.raises(UsageError) as error:
        train_rqvae.main(train_rqvae.parse_args(argv_of({**flags, **changes})))
    assert str(error.value).startswith(message), str(error.value)
    assert not (tmp_path / "out").exists(), "a refused run must leave nothing behind"


def test_command_line_reports_a_bad_flag_in_one_line_with_exit_status_2(tmp_path):
    command = [
        sys.executable,
        str(TRAINING / "train_rqvae.py"),
        *data_args(
            "--model_config", str(TINY_RQVAE), "--image_column", "picture", "--output_dir", str(tmp_path)
        ),
    ]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == (
        "train_rqvae.py: error: --image_column: expected a column of the dataset (image, label), "
        "got 'picture'"
    )
    assert "Traceback" not in result.stderr
