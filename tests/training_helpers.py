"""What the training-script tests share: paths, tiny configs, in-process runs and `accelerate launch` runs.

The scripts live in `training/` (not a package, as in diffusers' examples); their folder is put on `sys.path`
and the scripts are imported here, the way they import each other.
"""

from __future__ import annotations

import importlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import torch

REPO = Path(__file__).resolve().parents[1]
TRAINING = REPO / "training"
FIXTURES = REPO / "tests" / "fixtures"
MNIST = FIXTURES / "mnist-small.parquet"  # the first 256 digits of shared/data/mnist/test.parquet
TINY_RQVAE = FIXTURES / "training-tiny-rqvae.json"  # 16x16 images -> 8x8x2 codes, K=32
TINY_TRANSFORMER = FIXTURES / "training-tiny-rqtransformer.json"
sys.path.insert(0, str(TRAINING))
common = importlib.import_module("common")
train_rqvae = importlib.import_module("train_rqvae")
train_rqtransformer = importlib.import_module("train_rqtransformer")
UsageError = common.UsageError

# Writes each rank's trained weights next to the run: the scripts' `main` returns the trained model.
RANK_DUMP = """
import os, sys, torch
sys.path.insert(0, {training!r})
import {script} as script
result = script.main(script.parse_args(sys.argv[1:]))
model = result.transformer if hasattr(result, "transformer") else result
torch.save(model.state_dict(), os.path.join({dump_dir!r}, "rank" + os.environ["RANK"] + ".pt"))
"""


def data_args(*extra: str) -> list[str]:
    """Flags reading the MNIST fixture, no trackers."""
    return ["--train_data_files", str(MNIST), "--report_to", "none", *extra]


def argv_of(flags: dict[str, str | bool | None]) -> list[str]:
    """Command-line arguments from {flag: value}; True is a switch, None leaves the flag out."""
    argv = []
    for flag, value in flags.items():
        if value is True:
            argv.append(flag)
        elif value is not None:
            argv += [flag, str(value)]
    return argv


def accelerate_command(target: list[str], num_processes: int = 2) -> tuple[list[str], dict]:
    """`accelerate launch --multi_gpu --num_processes N TARGET...` (TARGET: a script and its arguments, or
    `-m module ...`) and its environment: gloo on CPU (ACCELERATE_USE_CPU) and one thread per process."""
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        str(num_processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
        *target,
    ]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return command, env


def launch_command(
    script: str, args: list[str], dump_dir: Path, num_processes: int = 2
) -> tuple[list[str], dict]:
    """`accelerate launch` of the training `script` on N CPU processes (see `accelerate_command`), saving
    every rank's weights in `dump_dir`."""
    dump_dir.mkdir(parents=True, exist_ok=True)
    wrapper = dump_dir / f"launch_{script}.py"
    wrapper.write_text(RANK_DUMP.format(training=str(TRAINING), script=script, dump_dir=str(dump_dir)))
    return accelerate_command([str(wrapper), *args], num_processes)


def free_port() -> int:
    """A TCP port free on loopback now: each launch gets its own rendezvous, so a run killed by an earlier
    test can never be joined by a later one."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_launched(command: list[str], env: dict, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run a launch command to the end; fail with its output when it fails or times out (then the launcher
    and all its ranks are killed, so no rank outlives the test)."""
    process = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        raise AssertionError(f"timed out after {timeout} s:\n{stdout[-3000:]}{stderr[-6000:]}") from None
    result = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return result


def launch(script: str, args: list[str], dump_dir: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run the training `script` on 2 CPU processes to the end (see `run_launched`)."""
    command, env = launch_command(script, args, dump_dir)
    return run_launched(command, env, timeout)


def run_and_kill_after(command: list[str], marker: Path, timeout: float = 240) -> None:
    """Run `command` (one thread) and SIGKILL it, with any child process, as soon as `marker` exists."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        deadline = time.monotonic() + timeout
        while not marker.exists():
            if process.poll() is not None:
                log.seek(0)
                raise AssertionError(f"the run ended before writing {marker}:\n{log.read()[-6000:]}")
            assert time.monotonic() < deadline, f"the run never wrote {marker}"
            time.sleep(0.02)
        for child in psutil.Process(process.pid).children(recursive=True):
            child.kill()
        process.kill()
        process.wait(timeout=60)


def load_dump(dump_dir: Path, rank: int) -> dict[str, torch.Tensor]:
    return torch.load(dump_dir / f"rank{rank}.pt", weights_only=True)


def assert_same_weights(expected: dict[str, torch.Tensor], actual: dict[str, torch.Tensor]) -> None:
    assert expected.keys() == actual.keys()
    different = [key for key in expected if not torch.equal(expected[key].cpu(), actual[key].cpu())]
    assert not different, f"{len(different)} of {len(expected)} tensors differ, e.g. {different[:3]}"
