"""The sampling-speed benchmark runs end to end on a tiny model and writes rows that the Figure-4 plot reads."""

import os
import subprocess
import sys
from pathlib import Path

from rq_hf.evaluation import load_sampling_speed, plot_sampling_speed

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
