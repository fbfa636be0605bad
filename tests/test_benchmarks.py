"""The sampling-speed benchmark runs end to end on a tiny model and writes rows that the Figure-4 plot reads."""

import argparse
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import torch

from rq_hf.configuration_rqtransformer import RQTransformerConfig
from rq_hf.evaluation import load_sampling_speed, plot_sampling_speed
from rq_hf.modeling_rqtransformer import (
    RQTransformerForImageGeneration,
    causal_attention_mask,
    eager_attention_forward,
)

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"
TINY = ["--hidden-size", "32", "--spatial-layers", "1", "--depth-layers", "1", "--heads", "2"]
TINY += ["--codebook-size", "16", "--codebook-dim", "8", "--num-classes", "10", "--threads", "1"]


def sampling_speed(*args):
    return subprocess.run(
        [sys.executable, str(BENCHMARKS / "sampling_speed.py"), *TINY, *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=600,
    )


def test_sampling_speed_rows_feed_the_figure(tmp_path):
    rows_file = tmp_path / "rows.json"
    run = sampling_speed("--batch-size", 2, 3, "--repeats", 1, "--json-output", rows_file)
    assert run.returncode == 0, run.stderr
    rows = load_sampling_speed(rows_file)
    methods = {"rq-hf generate (fp32, sdpa, static cache)", "rq-hf uncached reference (fp32)"}
    assert {(row["batch"], row["implementation"]) for row in rows} == {
        (b, m) for b in (2, 3) for m in methods
    }
    assert all(row["stage"] == "AR" and row["config"] == "8x8x4" for row in rows)
    assert "| rq-hf generate (fp32, sdpa, static cache)" in run.stdout
    assert plot_sampling_speed(rows_file, tmp_path / "speed.png", stage="AR").exists()


def test_sampling_speed_rejects_a_profile_path_without_a_folder(tmp_path):
    run = sampling_speed("--profile", tmp_path / "missing" / "trace.json")
    assert run.returncode == 2
    assert "--profile: expected a file path in an existing folder" in run.stderr
    assert not (tmp_path / "missing").exists()


def test_variants_are_timed_side_by_side(tmp_path):
    rows_file = tmp_path / "rows.json"
    run = sampling_speed(
        "--batch-size", 2, "--repeats", 1, "--no-reference", "--json-output", rows_file,
        "--attn-implementation", "sdpa", "decode_reduction", "--qkv", "separate", "fused",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "greedy codes of every variant identical: True" in run.stdout
    assert {row["implementation"] for row in load_sampling_speed(rows_file)} == {
        f"rq-hf generate (fp32, {attention}{qkv}, static cache)"
        for attention in ("sdpa", "decode_reduction")
        for qkv in ("", ", fused qkv")
    }


def load_benchmark():
    spec = importlib.util.spec_from_file_location("sampling_speed", BENCHMARKS / "sampling_speed.py")
    benchmark = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = benchmark  # its dataclasses look their module up there
    spec.loader.exec_module(benchmark)
    return benchmark


def test_every_compiled_row_has_its_own_model():
    benchmark = load_benchmark()
    args = argparse.Namespace(
        attn_implementation=["sdpa", "eager"],
        qkv=["separate", "fused"],
        compile=True,
        compile_mode=["auto", "max-autotune"],
        dtype="fp32",
    )
    model = RQTransformerForImageGeneration(
        RQTransformerConfig(hidden_size=8, num_spatial_layers=1, num_depth_layers=1, num_spatial_heads=2,
                            num_depth_heads=2, vocab_size=4, code_shape=(2, 2, 2), codebook_dim=4)
    )  # fmt: skip
    variants = benchmark.model_variants(model, args)
    assert [variant.name for variant in variants] == [
        "fp32, sdpa", "fp32, sdpa, fused qkv", "fp32, eager", "fp32, eager, fused qkv"
    ]  # fmt: skip
    assert variants[0].model is model and variants[0].compiled["auto"] is model
    compiled = [m for variant in variants for m in variant.compiled.values()]
    assert len({id(m) for m in compiled}) == 8
    for variant in variants:
        fused = variant.name.endswith("fused qkv")
        for copy in variant.compiled.values():
            assert copy.config._attn_implementation == variant.model.config._attn_implementation
            assert (copy.spatial_layers[0].self_attn.fused_qkv_weight is not None) == fused


def test_decode_reduction_attention_equals_eager_attention():
    benchmark = load_benchmark()
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(3, 2, 1, 8, generator=generator)
    key, value = torch.randn(2, 3, 2, 5, 8, generator=generator)
    mask = causal_attention_mask(torch.tensor([2]), 5, torch.float32)
    module = torch.nn.Module().eval()
    expected, _ = eager_attention_forward(module, query, key, value, mask, scaling=0.3)
    output, _ = benchmark.decode_reduction_attention(module, query, key, value, mask, scaling=0.3)
    assert output.shape == (3, 1, 2, 8)
    torch.testing.assert_close(output, expected)
    assert not torch.allclose(
        output, eager_attention_forward(module, query, key, value, None, scaling=0.3)[0]
    )
