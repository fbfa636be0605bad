"""Input checks, batching and atomic file writes shared by the evaluation modules.

Every check raises ``ValueError`` (or ``TypeError`` for a wrong kind of object) with the message style
``argument: expected ..., got ...``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO

import torch
from torch import Tensor, nn

Images = Tensor | Iterable[Tensor]
"""A whole set as one tensor (N, 3, H, W), or an iterable of such batches (a DataLoader, a generator)."""


def check_images(images: object, name: str) -> Tensor:
    """Check one batch of images: (B, 3, H, W), float in [0, 1] or uint8 in [0, 255]; returned unchanged."""
    if not isinstance(images, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor of shape (B, 3, H, W), got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[0] == 0:
        raise ValueError(f"{name}: expected shape (B, 3, H, W) with B >= 1, got {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return images
    if not images.is_floating_point():
        raise ValueError(f"{name}: expected dtype float (values in [0, 1]) or uint8, got {images.dtype}")
    if not torch.isfinite(images).all():
        raise ValueError(f"{name}: expected finite values in [0, 1], got NaN or inf")
    low, high = images.min().item(), images.max().item()
    if low < 0.0 or high > 1.0:
        raise ValueError(
            f"{name}: expected float values in [0, 1] (map model outputs in [-1, 1] with (x + 1) / 2), "
            f"got values in [{low:.4g}, {high:.4g}]"
        )
    return images


def to_float_images(images: Tensor) -> Tensor:
    """A checked batch as float32 in [0, 1] (uint8 divided by 255)."""
    if images.dtype == torch.uint8:
        return images.float() / 255.0
    return images.float()


def iter_image_batches(
    images: Images, name: str, *, batch_size: int, size: tuple[int, int] | None = None
) -> Iterator[Tensor]:
    """Yield checked batches of ``images``, all of the spatial size of the first one (or of ``size``).

    A tensor (N, 3, H, W) is split into batches of ``batch_size``; an iterable is used batch by batch.
    """
    check_positive_int(batch_size, "batch_size")
    if isinstance(images, Tensor):
        check_images(images, name)
        batches: Iterable[Tensor] = images.split(batch_size)
    elif isinstance(images, Iterable):
        batches = (check_images(batch, f"{name}[batch {index}]") for index, batch in enumerate(images))
    else:
        raise TypeError(
            f"{name}: expected a tensor (N, 3, H, W) or an iterable of such batches, "
            f"got {type(images).__name__}"
        )
    count = 0
    for index, batch in enumerate(batches):
        batch_hw = (batch.shape[2], batch.shape[3])
        if size is None:
            size = batch_hw
        elif batch_hw != size:
            raise ValueError(
                f"{name}: expected images of size (H, W) = {size}, got {batch_hw} in batch {index}"
            )
        count += batch.shape[0]
        yield batch
    if count == 0:
        raise ValueError(f"{name}: expected at least one image, got none")


def iter_image_pairs(
    originals: Images, reconstructions: Images, *, batch_size: int
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield checked (originals, reconstructions) batch pairs of identical shapes."""
    first = iter_image_batches(originals, "originals", batch_size=batch_size)
    second = iter_image_batches(reconstructions, "reconstructions", batch_size=batch_size)
    end = object()
    index = 0
    while True:
        original, reconstruction = next(first, end), next(second, end)
        if original is end and reconstruction is end:
            return
        if original is end or reconstruction is end:
            raise ValueError(
                f"reconstructions: expected as many batches as originals, got a different count after {index}"
            )
        if original.shape != reconstruction.shape:
            raise ValueError(
                f"reconstructions: expected the shape of originals {tuple(original.shape)}, "
                f"got {tuple(reconstruction.shape)} in batch {index}"
            )
        yield original, reconstruction
        index += 1


def check_features(
    features: object, name: str, *, min_samples: int = 1, device: torch.device | str = "cpu"
) -> Tensor:
    """Check a feature matrix (N, F) of finite floats with N >= ``min_samples``; as float64 on ``device``."""
    if not isinstance(features, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor of shape (N, F), got {type(features).__name__}")
    if features.ndim != 2 or features.shape[1] == 0:
        raise ValueError(f"{name}: expected shape (N, F), got {tuple(features.shape)}")
    if not features.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point dtype, got {features.dtype}")
    if features.shape[0] < min_samples:
        what = "for a covariance " if min_samples >= 2 else ""
        raise ValueError(
            f"{name}: expected at least {min_samples} samples {what}(rows), got {features.shape[0]}"
        )
    if not torch.isfinite(features).all():
        raise ValueError(f"{name}: expected finite values, got NaN or inf")
    return features.detach().to(device, torch.float64)


def check_module(module: object, name: str) -> nn.Module:
    """Check that ``module`` is an ``nn.Module``."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"{name}: expected a torch.nn.Module, got {type(module).__name__}")
    return module


def check_positive_int(value: object, name: str) -> int:
    """Check a positive ``int`` (bools rejected)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")
    return value


def module_device(module: nn.Module) -> torch.device:
    """The device of the first parameter or buffer of ``module``; CPU for a module without any."""
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


@torch.no_grad()
def run_extractor(module: nn.Module, images: Tensor, name: str) -> Tensor:
    """Run a feature extractor / classifier on a checked batch and check its (B, F) output (float64, CPU)."""
    output = module(images.to(module_device(module)))
    if not isinstance(output, Tensor) or output.ndim != 2 or output.shape[0] != images.shape[0]:
        got = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
        raise ValueError(f"{name}: expected an output of shape (B, F) with B = {images.shape[0]}, got {got}")
    return check_features(output, f"{name} output")


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Write a file through ``write(file)`` under a temporary name in its folder, then rename it to ``path``.

    Readers never see a partial file; on error the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise ValueError(f"path: expected a file in an existing folder, got {str(path)!r}")
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
