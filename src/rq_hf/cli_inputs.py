"""Inputs of ``rq-hf evaluate`` / ``rq-hf stats``: the processes of an ``accelerate launch``, ``datasets``
sources, feature extractors and output paths, each refused with a one-line :class:`~rq_hf.cli.UserError`
naming the flag at fault."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from .cli import UserError, image_to_tensor

DATA_FILE_BUILDERS = {
    ".parquet": "parquet",
    ".csv": "csv",
    ".json": "json",
    ".jsonl": "json",
    ".arrow": "arrow",
}
FLAGS = {
    "feature_extractor": "--feature-extractor",
    "inception_weights": "--inception-weights",
    "path": "--reference-stats",
}


# -- processes ------------------------------------------------------------------------------------------------
@dataclass
class Processes:
    """This process's place among the ``count`` processes of an ``accelerate launch`` (1 without one)."""

    index: int
    count: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.index == 0

    def share(self, total: int) -> range:
        """This process's contiguous share of ``range(total)``."""
        return range(self.index * total // self.count, (self.index + 1) * total // self.count)


def join_processes(device: str | None) -> Processes:
    """Join the process group of an ``accelerate launch`` (nothing to join without one): gloo on CPU (on a
    machine without CUDA, with ``--device cpu`` or ``ACCELERATE_USE_CPU=1``), else accelerate's backend."""
    import os

    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    cpu = device == "cpu" or parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available()
    state = PartialState(cpu=cpu)
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if state.num_processes != launched:
        raise UserError(
            f"accelerate launch: expected the {launched} launched processes to join one process group, got "
            f"{state.num_processes} (a process group started earlier in this process?)"
        )
    return Processes(
        state.process_index, state.num_processes, torch.device(device) if device else state.device
    )


def sum_across_processes(tensor: Tensor) -> Tensor:
    """``tensor`` summed over all processes (in place; unchanged without a process group)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(tensor)
    return tensor


# -- inputs ---------------------------------------------------------------------------------------------------
def flag_error(error: Exception, default_flag: str) -> UserError:
    """A library error ``argument: expected ...`` as a one-line error naming the command-line flag."""
    message = str(error).splitlines()[0] if str(error) else type(error).__name__
    argument, _, rest = message.partition(": ")
    if argument in FLAGS and rest:
        return UserError(f"{FLAGS[argument]}: {rest}")
    return UserError(f"{default_flag}: {message}")


def load_image_dataset(name: str, split: str | None, image_column: str):
    """One split of a ``datasets`` source: a data file (.parquet, .csv, .json(l), .arrow), a folder that
    ``datasets.load_dataset`` reads (e.g. an image folder), or a Hub dataset id; ``split`` may slice
    (``"train[:1000]"``). Without ``split`` the source must have exactly one split."""
    import datasets

    path = Path(name).expanduser()
    expected = "a data file (.parquet, .csv, .json, .arrow), a dataset folder or a Hub dataset id"
    if path.is_file():
        builder = DATA_FILE_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise UserError(f"--dataset: expected {expected}, got the file {name!r}")
        arguments = (builder,), {"data_files": str(path)}
    elif path.is_dir():
        arguments = (str(path),), {}
    elif name.startswith(("/", ".", "~")) or name.count("/") > 1:
        raise UserError(f"--dataset: expected {expected}, got the missing path {name!r}")
    else:
        arguments = (name,), {}
    try:
        loaded = datasets.load_dataset(*arguments[0], split=split, **arguments[1])
    except ValueError as error:
        flag = "--split" if split is not None and "split" in str(error).lower() else "--dataset"
        raise UserError(f"{flag}: expected a split of {name!r}, got {split!r} ({error})") from error
    except (OSError, datasets.exceptions.DatasetNotFoundError) as error:
        raise UserError(
            f"--dataset: expected {expected}, got {name!r} ({type(error).__name__}: {error})"
        ) from error
    if isinstance(loaded, datasets.DatasetDict):
        if len(loaded) != 1:
            raise UserError(f"--split: expected one of {sorted(loaded)} for {name!r}, got none")
        loaded = next(iter(loaded.values()))
    feature = loaded.features.get(image_column)
    if feature is None:
        columns = ", ".join(loaded.features)
        raise UserError(f"--image-column: expected a column of the dataset ({columns}), got {image_column!r}")
    if not isinstance(feature, datasets.Image):
        raise UserError(
            f"--image-column: expected a column of images, got {image_column!r} of type {feature}"
        )
    return loaded


def num_samples_to_use(
    available: int, requested: int | None, processes: Processes, flag: str = "--num-samples"
) -> int:
    """How many rows / samples to use: ``requested`` (at most ``available``), at least 2 and one per process."""
    total = available if requested is None else requested
    if requested is not None and requested > available:
        raise UserError(f"{flag}: expected at most {available} (the rows of the split), got {requested}")
    if total < 2:
        raise UserError(f"{flag}: expected at least 2 images (a covariance needs two), got {total}")
    if total < processes.count:
        raise UserError(f"{flag}: expected at least one image per process ({processes.count}), got {total}")
    return total


def dataset_batches(
    dataset, rows: range, column: str, size: int, channels: int, batch_size: int, description: str, show: bool
) -> Iterator[Tensor]:
    """The images of ``rows`` as float (B, channels, size, size) in [-1, 1], ``batch_size`` at a time."""
    from tqdm.auto import tqdm

    with tqdm(total=len(rows), desc=description, unit="img", disable=not show) as progress:
        for start in range(rows.start, rows.stop, batch_size):
            images = dataset[start : min(start + batch_size, rows.stop)][column]
            if any(image is None for image in images):
                raise UserError(
                    f"--image-column: expected an image in every row, got an empty one in {column!r}"
                )
            yield torch.stack([image_to_tensor(image, size, channels) for image in images])
            progress.update(len(images))


def unit_rgb(images: Tensor, device: torch.device) -> Tensor:
    """Model-range images (B, C, H, W) in [-1, 1] -> float32 (B, 3, H, W) in [0, 1] on ``device``."""
    images = ((images.float() + 1) / 2).clamp(0, 1).to(device)
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


def load_extractor(args: argparse.Namespace, device: torch.device) -> tuple[nn.Module, nn.Module | None]:
    """The ``--feature-extractor`` (or the FID Inception) and its classifier head, on ``device``."""
    from .evaluation import load_feature_extractor

    flag = "--feature-extractor" if args.feature_extractor else "--inception-weights"
    try:
        extractor, head = load_feature_extractor(
            args.feature_extractor, inception_weights=args.inception_weights
        )
    except (ValueError, TypeError) as error:
        raise flag_error(error, flag) from error
    except (ImportError, OSError) as error:
        note = (
            ""
            if args.feature_extractor
            else " (offline or without it: --feature-extractor package.module:factory)"
        )
        raise UserError(f"{flag}: {str(error).splitlines()[0]}{note}") from error
    return extractor.to(device), None if head is None else head.to(device)


def num_features_of(extractor: nn.Module, size: int, device: torch.device) -> int:
    """The extractor's feature count F, from a probe batch (which also checks its (B, F) output)."""
    from .evaluation._checks import run_extractor

    try:
        return run_extractor(
            extractor, torch.zeros(2, 3, size, size, device=device), "feature_extractor"
        ).shape[1]
    except (ValueError, TypeError) as error:
        raise flag_error(error, "--feature-extractor") from error


def check_output(path: str | None, flag: str) -> None:
    """Refuse an output path whose folder is missing before any work is done."""
    if path is None:
        return
    target = Path(path).expanduser()
    if target.is_dir():
        raise UserError(f"{flag}: expected a file path, got the folder {path!r}")
    if not target.parent.is_dir():
        raise UserError(f"{flag}: expected a file in an existing folder, got {path!r}")


def check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise UserError(f"--batch-size: expected an int >= 1, got {batch_size}")
