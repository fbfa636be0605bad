"""Shared fixtures: the original-format parity fixtures (copied from shared/golden) and converted models."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

FIXTURES = Path(__file__).parent / "fixtures"

# The test models are tiny: one thread is as fast as two, and immune to OpenMP oversubscription when other
# processes (the 2-process distributed tests, a parallel job) share the two cores.
torch.set_num_threads(1)
GOLDEN_NAMES = ["cin", "txt"]


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def golden_dir():
    """Path of a parity fixture folder by name."""
    return lambda name: FIXTURES / name


@pytest.fixture(scope="session")
def golden_expected():
    """The original code's outputs (`expected.safetensors`) by fixture name."""
    cache = {}

    def load(name):
        if name not in cache:
            cache[name] = load_file(FIXTURES / name / "expected.safetensors")
        return cache[name]

    return load


@pytest.fixture(scope="session")
def golden_rqvae():
    """The converted stage-1 RQ-VAE of a parity fixture, in eval mode (do not modify it in tests)."""
    from rq_hf.conversion import convert_rqvae, find_original_release

    cache = {}

    def load(name):
        if name not in cache:
            cache[name] = convert_rqvae(find_original_release(FIXTURES / name).stage1)
        return cache[name]

    return load


@pytest.fixture(scope="session")
def golden_pipeline_dir(tmp_path_factory):
    """A parity fixture converted to a full RQPipeline folder (by name; do not modify it in tests)."""
    from rq_hf.conversion import convert_original_checkpoint

    cache = {}

    def convert(name):
        if name not in cache:
            cache[name] = convert_original_checkpoint(
                FIXTURES / name, tmp_path_factory.mktemp(name) / "pipeline"
            )
        return cache[name]

    return convert
