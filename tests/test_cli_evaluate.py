"""`rq-hf evaluate reconstruction | generation` and `rq-hf stats` end to end, in process (one import of the
stack for all runs) and once sharded over two `accelerate launch` CPU processes, with a tiny feature
extractor (tests/evaluation_helpers.py) since no Inception weights exist offline."""

import importlib.util
import json
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from evaluation_helpers import NUM_FEATURES
from training_helpers import MNIST, accelerate_command, run_launched

from rq_hf.cli import image_to_tensor, load_vqvae, main
from rq_hf.cli_evaluate import inception_score_splits
from rq_hf.evaluation import codebook_perplexity, codebook_usage, compute_statistics, load_statistics, psnr

HELPERS = Path(__file__).parent / "evaluation_helpers.py"
TINY = f"{HELPERS}:tiny_extractor"


def run_cli(capsys, *args):
    """`rq-hf ARGS` in this process: (exit status, stdout, stderr)."""
    status = main([str(arg) for arg in args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def assert_user_error(result, command, fragment):
    status, _, err = result
    assert status == 2, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"rq-hf {command}: error: "), err
    assert fragment in last, last
    assert "Traceback" not in err


def mnist_images(rows: int, size: int, channels: int = 3) -> torch.Tensor:
    """The first `rows` fixture digits as the commands prepare them: (rows, channels, size, size) in [-1, 1]."""
    dataset = datasets.load_dataset("parquet", data_files=str(MNIST), split=f"train[:{rows}]")
    return torch.stack([image_to_tensor(image, size, channels) for image in dataset["image"]])


def test_stats_writes_mu_sigma_of_the_dataset_features(tmp_path, capsys):
    output, summary = tmp_path / "stats.npz", tmp_path / "stats.json"
    status, out, err = run_cli(
        capsys,
        "stats",
        "--dataset",
        MNIST,
        "--num-samples",
        40,
        "--resolution",
        32,
        "--batch-size",
        16,
        "--feature-extractor",
        TINY,
        "--output",
        output,
        "--json",
        summary,
    )
    assert status == 0, err
    with np.load(output) as archive:
        assert sorted(archive.files) == ["mu", "num_samples", "sigma"]
        assert archive["mu"].shape == (NUM_FEATURES,) and archive["sigma"].shape == (
            NUM_FEATURES,
            NUM_FEATURES,
        )
    from evaluation_helpers import TinyFeatures

    expected = compute_statistics((mnist_images(40, 32) + 1) / 2, TinyFeatures(), batch_size=7)
    statistics = load_statistics(output)
    assert statistics.num_samples == 40
    np.testing.assert_allclose(statistics.mu, expected.mu, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(statistics.sigma, expected.sigma, rtol=1e-6, atol=1e-9)
    assert "| images | 40 |" in out and f"| features | {NUM_FEATURES} |" in out
    assert json.loads(summary.read_text())["num_samples"] == 40


def test_reconstruction_on_the_demo_reports_psnr_ssim_rfid_and_code_usage(tmp_path, capsys):
    output, figure = tmp_path / "rec.json", tmp_path / "usage.png"
    status, out, err = run_cli(
        capsys,
        "evaluate",
        "reconstruction",
        "--dataset",
        MNIST,
        "--num-samples",
        24,
        "--batch-size",
        10,
        "--feature-extractor",
        TINY,
        "--output",
        output,
        "--codebook-figure",
        figure,
    )
    assert status == 0, err
    results = json.loads(output.read_text())
    vqvae = load_vqvae(None)
    images = mnist_images(24, 32)
    with torch.no_grad():
        codes = vqvae.encode(images).codes
        decoded = vqvae.decode_codes(codes).sample.clamp(-1, 1)
    assert results["metrics"]["psnr"] == pytest.approx(
        psnr((images + 1) / 2, (decoded + 1) / 2).mean().item(), rel=1e-5
    )
    assert 0 < results["metrics"]["ssim"] <= 1 and results["metrics"]["rfid"] >= 0
    usage = codebook_usage(codes, vqvae.codebook_sizes)
    assert [entry["used_codes"] for entry in results["codebook"]] == [int((u > 0).sum()) for u in usage]
    assert [entry["perplexity"] for entry in results["codebook"]] == pytest.approx(codebook_perplexity(usage))
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| rFID |" in out and "| codes depth 4 |" in out
    if importlib.util.find_spec("torchvision") is None:
        assert "lpips" not in results["metrics"] and any("LPIPS skipped" in note for note in results["notes"])


def test_generation_fid_against_stats_equals_fid_against_the_dataset(tmp_path, capsys):
    stats = tmp_path / "ref.npz"
    data = ["--dataset", MNIST, "--split", "train[:30]", "--image-column", "image"]
    assert (
        run_cli(capsys, "stats", *data, "--resolution", 32, "--feature-extractor", TINY, "--output", stats)[0]
        == 0
    )
    common = ["evaluate", "generation", "--num-samples", 20, "--batch-size", 8, "--feature-extractor", TINY]
    status, out, err = run_cli(
        capsys, *common, "--seed", 3, "--reference-stats", stats, "--output", tmp_path / "a.json"
    )
    assert status == 0, err
    status, _, err = run_cli(capsys, *common, "--seed", 3, *data, "--output", tmp_path / "b.json")
    assert status == 0, err
    against_stats = json.loads((tmp_path / "a.json").read_text())
    against_data = json.loads((tmp_path / "b.json").read_text())
    assert against_stats["metrics"]["fid"] == pytest.approx(against_data["metrics"]["fid"], rel=1e-6)
    assert against_stats["inception_score_splits"] == inception_score_splits(20) == 2
    assert 1 <= against_stats["metrics"]["inception_score"] <= 10
    assert "| FID |" in out and "Inception Score (2 splits)" in out
    # another seed draws other digits: another FID
    status, _, _ = run_cli(
        capsys, *common, "--seed", 4, "--reference-stats", stats, "--output", tmp_path / "c.json"
    )
    assert status == 0
    assert json.loads((tmp_path / "c.json").read_text())["metrics"]["fid"] != against_stats["metrics"]["fid"]


def test_generation_speed_flags_reach_the_transformer_and_keep_the_samples(
    golden_pipeline_dir, tmp_path, capsys, monkeypatch
):
    from rq_hf.modeling_rqtransformer import RQTransformerForImageGeneration

    calls = []
    generate = RQTransformerForImageGeneration.generate

    def recording_generate(self, *args, compile=False, **kwargs):
        fused = self.spatial_layers[0].self_attn.fused_qkv_weight is not None
        calls.append((compile, fused))
        # inductor would compile C++ here: the eager backend runs the same compiled-decoder path, cheaply
        compile = {"backend": "eager", "fullgraph": True} if compile else False
        return generate(self, *args, compile=compile, **kwargs)

    monkeypatch.setattr(RQTransformerForImageGeneration, "generate", recording_generate)
    stats = tmp_path / "ref.npz"
    np.savez(stats, mu=np.zeros(NUM_FEATURES), sigma=np.eye(NUM_FEATURES))
    common = ["evaluate", "generation", "--model", golden_pipeline_dir("cin"), "--labels", 1, 7, "--top-k", 5]
    common += ["--num-samples", 4, "--reference-stats", stats, "--feature-extractor", TINY]
    assert run_cli(capsys, *common, "--output", tmp_path / "plain.json")[0] == 0
    status, _, err = run_cli(capsys, *common, "--compile", "--fuse-qkv", "--output", tmp_path / "fast.json")
    assert status == 0, err
    assert calls == [(False, False), (True, True)]
    plain, fast = (json.loads((tmp_path / f"{name}.json").read_text()) for name in ("plain", "fast"))
    assert fast["metrics"]["fid"] == pytest.approx(plain["metrics"]["fid"], rel=1e-6)
    assert fast["sampling"]["compile"] and fast["sampling"]["fuse_qkv"] and not plain["sampling"]["fuse_qkv"]


def test_inception_score_splits_follow_the_sample_count():
    assert [inception_score_splits(n) for n in (2, 19, 20, 99, 100, 50_000)] == [1, 1, 2, 9, 10, 10]


def test_golden_fixture_reconstruction_and_generation_with_labels(golden_pipeline_dir, tmp_path, capsys):
    model = golden_pipeline_dir("cin")
    status, out, err = run_cli(
        capsys,
        "evaluate",
        "reconstruction",
        "--model",
        model,
        "--dataset",
        MNIST,
        "--num-samples",
        8,
        "--feature-extractor",
        f"{HELPERS}:tiny_extractor_without_head",
        "--output",
        tmp_path / "rec.json",
    )
    assert status == 0, err
    assert len(json.loads((tmp_path / "rec.json").read_text())["codebook"]) == 4
    status, out, err = run_cli(
        capsys,
        "evaluate",
        "generation",
        "--model",
        model,
        "--labels",
        1,
        7,
        "--top-k",
        5,
        "--num-samples",
        6,
        "--dataset",
        MNIST,
        "--reference-num-samples",
        12,
        "--feature-extractor",
        f"{HELPERS}:tiny_extractor_without_head",
        "--output",
        tmp_path / "gen.json",
    )
    assert status == 0, err
    results = json.loads((tmp_path / "gen.json").read_text())
    assert results["conditions"] == [1, 7] and "inception_score" not in results["metrics"]
    assert any("Inception Score skipped" in note for note in results["notes"])


def test_text_model_gets_a_clip_score(tmp_path, capsys):
    from test_text_pipeline import tiny_clip, tiny_text_pipeline
    from transformers import AutoTokenizer

    from rq_hf.conversion_tokenizer import convert_rq_tokenizer

    bpe = Path(__file__).parent / "fixtures" / "tokenizer-bpe16k"
    convert_rq_tokenizer(bpe / "bpe-16k-vocab.json", bpe / "bpe-16k-merges.txt", tmp_path / "tokenizer")
    tiny_text_pipeline(AutoTokenizer.from_pretrained(tmp_path / "tokenizer")).save_pretrained(
        tmp_path / "t2i"
    )
    model, processor = tiny_clip()
    model.save_pretrained(tmp_path / "clip")
    processor.save_pretrained(tmp_path / "clip")
    (tmp_path / "prompts.txt").write_text("a red square\n\na blue circle\n")
    common = [
        "evaluate",
        "generation",
        "--model",
        tmp_path / "t2i",
        "--prompts-file",
        tmp_path / "prompts.txt",
        "--num-samples",
        4,
        "--dataset",
        MNIST,
        "--reference-num-samples",
        8,
        "--feature-extractor",
        TINY,
    ]
    status, out, err = run_cli(
        capsys, *common, "--clip-model", tmp_path / "clip", "--output", tmp_path / "r.json"
    )
    assert status == 0, err
    results = json.loads((tmp_path / "r.json").read_text())
    assert -1 <= results["metrics"]["clip_score"] <= 1 and "| CLIP score |" in out
    status, out, err = run_cli(capsys, *common)
    assert status == 0, err
    assert "note: CLIP score skipped" in out
    assert_user_error(
        run_cli(capsys, *common, "--labels", 1), "evaluate generation", "--labels: expected none"
    )


@pytest.fixture
def bad_stats(tmp_path):
    np.savez(tmp_path / "mu_only.npz", mu=np.zeros(NUM_FEATURES))
    np.savez(tmp_path / "wide.npz", mu=np.zeros(5), sigma=np.eye(5))
    return tmp_path


GENERATE = ["evaluate", "generation", "--num-samples", 4, "--feature-extractor", TINY]
RECONSTRUCT = ["evaluate", "reconstruction", "--dataset", MNIST, "--feature-extractor", TINY]
STATS = ["stats", "--dataset", MNIST, "--resolution", 32, "--feature-extractor", TINY, "--output"]


@pytest.mark.parametrize(
    "args, command, fragment",
    [
        (
            GENERATE + ["--reference-stats", "{tmp}/mu_only.npz"],
            "evaluate generation",
            "--reference-stats: expected an .npz file with arrays 'mu' and 'sigma', got keys ['mu']",
        ),
        (
            GENERATE + ["--reference-stats", "{tmp}/wide.npz"],
            "evaluate generation",
            f"--reference-stats: expected statistics of {NUM_FEATURES} features (the feature extractor's), got 5",
        ),
        (
            GENERATE + ["--reference-stats", "{tmp}/missing.npz"],
            "evaluate generation",
            "--reference-stats: expected an existing .npz file",
        ),
        (
            ["evaluate", "generation", "--num-samples", 1, "--reference-stats", "{tmp}/wide.npz"],
            "evaluate generation",
            "--num-samples: expected at least 2 images (a covariance needs two), got 1",
        ),
        (
            GENERATE + ["--dataset", MNIST, "--reference-stats", "{tmp}/wide.npz"],
            "evaluate generation",
            "--reference-stats, --dataset: expected exactly one of them",
        ),
        (
            GENERATE + ["--dataset", MNIST, "--labels", 10],
            "evaluate generation",
            "--labels: expected class ids in [0, 10), got [10]",
        ),
        (
            GENERATE + ["--dataset", MNIST, "--prompts-file", "{tmp}/wide.npz"],
            "evaluate generation",
            "--prompts-file: expected none for a model without a tokenizer",
        ),
        (
            RECONSTRUCT + ["--image-column", "img"],
            "evaluate reconstruction",
            "--image-column: expected a column of the dataset (image, label), got 'img'",
        ),
        (
            RECONSTRUCT + ["--image-column", "label"],
            "evaluate reconstruction",
            "--image-column: expected a column of images, got 'label'",
        ),
        (
            RECONSTRUCT + ["--num-samples", 1],
            "evaluate reconstruction",
            "--num-samples: expected at least 2 images (a covariance needs two), got 1",
        ),
        (
            RECONSTRUCT + ["--num-samples", 1000],
            "evaluate reconstruction",
            "--num-samples: expected at most 256 (the rows of the split), got 1000",
        ),
        (RECONSTRUCT + ["--split", "test"], "evaluate reconstruction", "--split: expected a split of"),
        (
            RECONSTRUCT + ["--output", "{tmp}/no/such/folder/r.json"],
            "evaluate reconstruction",
            "--output: expected a file in an existing folder",
        ),
        (
            ["evaluate", "reconstruction", "--dataset", "{tmp}/missing.parquet"],
            "evaluate reconstruction",
            "--dataset: expected a data file (.parquet, .csv, .json, .arrow), a dataset folder or a Hub dataset id",
        ),
        (
            RECONSTRUCT[:-2] + ["--feature-extractor", f"{HELPERS}:broken_extractor"],
            "evaluate reconstruction",
            "--feature-extractor: expected an output of shape (B, F) with B = 2",
        ),
        (
            RECONSTRUCT[:-2] + ["--feature-extractor", "no_such_module:factory"],
            "evaluate reconstruction",
            "--feature-extractor: expected 'package.module:factory' or 'path/to/file.py:factory'",
        ),
        (
            RECONSTRUCT[:-2] + ["--feature-extractor", f"{HELPERS}:missing"],
            "evaluate reconstruction",
            "(no callable 'missing' in",
        ),
        (STATS + ["{tmp}/s.npz", "--num-samples", 1], "stats", "--num-samples: expected at least 2 images"),
        (STATS + ["{tmp}/s.npz", "--resolution", 0], "stats", "--resolution: expected an int >= 1, got 0"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(args, command, fragment, bad_stats, capsys):
    argv = [str(arg).replace("{tmp}", str(bad_stats)) for arg in args]
    before = sorted(path.name for path in bad_stats.iterdir())
    assert_user_error(run_cli(capsys, *argv), command, fragment)
    assert sorted(path.name for path in bad_stats.iterdir()) == before


@pytest.mark.skipif(
    importlib.util.find_spec("torch_fidelity") is not None, reason="torch-fidelity is installed"
)
def test_default_inception_without_torch_fidelity_says_what_to_do(tmp_path, capsys):
    assert_user_error(
        run_cli(capsys, "stats", "--dataset", MNIST, "--output", tmp_path / "s.npz"),
        "stats",
        "--inception-weights: load_inception: the standard FID Inception network needs the "
        "`torch-fidelity` package",
    )


def test_two_processes_give_the_one_process_reconstruction_numbers(tmp_path, capsys):
    args = [
        "evaluate",
        "reconstruction",
        "--dataset",
        MNIST,
        "--num-samples",
        21,
        "--batch-size",
        4,
        "--feature-extractor",
        TINY,
    ]  # no --device: a CPU-only machine joins the gloo group without ACCELERATE_USE_CPU
    status, _, err = run_cli(capsys, *args, "--output", tmp_path / "one.json")
    assert status == 0, err
    command, env = accelerate_command(
        ["-m", "rq_hf.cli", *map(str, args), "--output", str(tmp_path / "two.json")]
    )
    env.pop("ACCELERATE_USE_CPU")  # the commands join the gloo group on a CPU-only machine without it
    launched = run_launched(command, env, timeout=300)
    assert launched.stdout.count("| rFID |") == 1  # only process 0 reports
    one, two = (json.loads((tmp_path / name).read_text()) for name in ("one.json", "two.json"))
    assert (one["num_processes"], two["num_processes"]) == (1, 2)
    assert two["num_samples"] == one["num_samples"] == 21
    assert [entry["used_codes"] for entry in two["codebook"]] == [
        entry["used_codes"] for entry in one["codebook"]
    ]
    assert [e["perplexity"] for e in two["codebook"]] == pytest.approx(
        [e["perplexity"] for e in one["codebook"]]
    )
    for name, value in one["metrics"].items():
        assert two["metrics"][name] == pytest.approx(value, rel=1e-6, abs=1e-6), name  # FID: float32 noise


@pytest.mark.parametrize(
    "command, fragment",
    [
        (["evaluate"], "accelerate launch"),
        (["evaluate", "reconstruction"], "--codebook-figure"),
        (["evaluate", "generation"], "--reference-stats"),
        (["stats"], "--resolution"),
    ],
)
def test_help_describes_the_evaluation_commands(command, fragment, capsys):
    with pytest.raises(SystemExit) as exit_status:
        main([*command, "--help"])
    out = capsys.readouterr().out
    assert exit_status.value.code == 0 and out.startswith("usage: rq-hf") and fragment in out
