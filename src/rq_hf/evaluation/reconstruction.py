"""Reconstruction metrics of an RQ-VAE: rFID, PSNR, SSIM, optional LPIPS, and per-depth codebook usage.

Images are (B, 3, H, W), float in [0, 1] or uint8 in [0, 255] (uint8 is divided by 255 for PSNR, SSIM and
LPIPS); originals and reconstructions must have identical shapes. PSNR, SSIM and LPIPS are torchmetrics'
functions with ``data_range=1``, computed per image and averaged over images. Codes are integer
(B, h, w, D) with depth last, as everywhere in rq-hf.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from ._checks import (
    Images,
    check_images,
    check_module,
    iter_image_pairs,
    module_device,
    run_extractor,
    to_float_images,
)
from .backbone import load_inception
from .fid import frechet_distance
from .statistics import FeatureStatisticsMetric

SSIM_KERNEL_SIZE = 11


def _check_pair(originals: Tensor, reconstructions: Tensor) -> tuple[Tensor, Tensor]:
    """Check a batch pair and return both as float32 in [0, 1]."""
    check_images(originals, "originals")
    check_images(reconstructions, "reconstructions")
    if originals.shape != reconstructions.shape:
        raise ValueError(
            f"reconstructions: expected the shape of originals {tuple(originals.shape)}, "
            f"got {tuple(reconstructions.shape)}"
        )
    return to_float_images(originals), to_float_images(reconstructions).to(originals.device)


def psnr(originals: Tensor, reconstructions: Tensor) -> Tensor:
    """Peak signal-to-noise ratio per image in dB, (B,), for a peak of 1 (``inf`` for identical images)."""
    originals, reconstructions = _check_pair(originals, reconstructions)
    return peak_signal_noise_ratio(
        reconstructions, originals, data_range=1.0, reduction="none", dim=(1, 2, 3)
    )


def ssim(originals: Tensor, reconstructions: Tensor) -> Tensor:
    """Structural similarity per image, (B,): Gaussian window 11 x 11, sigma 1.5, k1 0.01, k2 0.03, range 1.

    Needs images of at least 11 x 11 pixels.
    """
    originals, reconstructions = _check_pair(originals, reconstructions)
    if min(originals.shape[2:]) < SSIM_KERNEL_SIZE:
        raise ValueError(
            f"originals: expected images of at least {SSIM_KERNEL_SIZE} x {SSIM_KERNEL_SIZE} pixels for "
            f"SSIM, got {tuple(originals.shape[2:])}"
        )
    return structural_similarity_index_measure(reconstructions, originals, data_range=1.0, reduction="none")


def lpips(originals: Tensor, reconstructions: Tensor, *, net_type: str = "alex") -> Tensor:
    """LPIPS distance per image, (B,), with torchmetrics' implementation (``net_type`` alex, vgg or squeeze).

    Raises:
        ModuleNotFoundError: ``torchvision`` (torchmetrics' LPIPS backbone, pretrained weights downloaded
            by torchvision on first use) is not installed.
    """
    if importlib.util.find_spec("torchvision") is None:
        raise ModuleNotFoundError(
            "lpips: needs the `torchvision` package (the backbone of torchmetrics' LPIPS); install the "
            "torchvision build matching your torch, e.g. pip install torchvision"
        )
    from torchmetrics.functional.image import learned_perceptual_image_patch_similarity

    originals, reconstructions = _check_pair(originals, reconstructions)
    return learned_perceptual_image_patch_similarity(
        reconstructions, originals, net_type=net_type, reduction="none", normalize=True
    ).reshape(-1)


def reconstruction_metrics(
    originals: Images,
    reconstructions: Images,
    *,
    feature_extractor: nn.Module | None = None,
    with_lpips: bool = False,
    batch_size: int = 50,
) -> dict[str, float]:
    """rFID, mean PSNR, mean SSIM (and mean LPIPS) of reconstructions against their originals, in one pass.

    Args:
        originals, reconstructions: (N, 3, H, W) float in [0, 1] or uint8, or iterables of such batches,
            pairwise of identical shapes; N >= 2 (for the covariances of rFID).
        feature_extractor: an ``nn.Module`` following the contract; ``None`` loads the standard Inception.
        with_lpips: also compute LPIPS (needs torchvision).
        batch_size: batch size for tensors given whole.

    Returns:
        ``{"rfid", "psnr", "ssim"}`` (and ``"lpips"``) as floats. Under ``torch.distributed`` every process
        passes its own share of the images and gets the results of all shares (the sums behind the means and
        the covariances are reduced across processes once, by torchmetrics; metric states live on the
        feature extractor's device, as NCCL needs).
    """
    extractor = (
        load_inception()
        if feature_extractor is None
        else check_module(feature_extractor, "feature_extractor")
    )
    device = module_device(extractor)
    statistics: dict[str, FeatureStatisticsMetric] = {}
    names = ("psnr", "ssim", "lpips") if with_lpips else ("psnr", "ssim")
    means = {name: MeanMetric().set_dtype(torch.float64).to(device) for name in names}
    for original, reconstruction in iter_image_pairs(originals, reconstructions, batch_size=batch_size):
        for name, batch in (("originals", original), ("reconstructions", reconstruction)):
            features = run_extractor(extractor, batch, "feature_extractor")
            if name not in statistics:
                statistics[name] = FeatureStatisticsMetric(features.shape[1]).to(device)
            statistics[name].update(features)
        means["psnr"].update(psnr(original, reconstruction).to(device, torch.float64))
        means["ssim"].update(ssim(original, reconstruction).to(device, torch.float64))
        if with_lpips:
            means["lpips"].update(lpips(original, reconstruction).to(device, torch.float64))
    results = {
        "rfid": frechet_distance(statistics["originals"].compute(), statistics["reconstructions"].compute())
    }
    results.update({name: metric.compute().item() for name, metric in means.items()})
    return results


def _codebook_sizes(codebook_sizes: int | Sequence[int], depth: int) -> list[int]:
    """One codebook size per depth from an int (shared) or a sequence of ``depth`` ints."""
    sizes = [codebook_sizes] * depth if isinstance(codebook_sizes, int) else list(codebook_sizes)
    if len(sizes) != depth or any(
        isinstance(size, bool) or not isinstance(size, int) or size < 1 for size in sizes
    ):
        raise ValueError(
            f"codebook_sizes: expected a positive int or {depth} positive ints (one per depth), "
            f"got {codebook_sizes!r}"
        )
    return sizes


def codebook_usage(codes: Tensor, codebook_sizes: int | Sequence[int]) -> list[Tensor]:
    """How often each code is used at each depth.

    Args:
        codes: integer (B, h, w, D) codes, depth last; values in [0, K_d) at depth d.
        codebook_sizes: K, shared by all depths, or (K_1, ..., K_D).

    Returns:
        D int64 tensors of shapes (K_d,): counts over all B h w positions (they add up across batches).
    """
    if not isinstance(codes, Tensor):
        raise TypeError(f"codes: expected a torch.Tensor of shape (B, h, w, D), got {type(codes).__name__}")
    if codes.ndim != 4 or codes.numel() == 0:
        raise ValueError(f"codes: expected a non-empty shape (B, h, w, D), got {tuple(codes.shape)}")
    if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
        raise ValueError(f"codes: expected an integer dtype, got {codes.dtype}")
    sizes = _codebook_sizes(codebook_sizes, codes.shape[-1])
    flat = codes.reshape(-1, codes.shape[-1]).to("cpu", torch.int64)
    usage = []
    for depth, size in enumerate(sizes):
        column = flat[:, depth]
        low, high = column.min().item(), column.max().item()
        if low < 0 or high >= size:
            raise ValueError(
                f"codes: expected values in [0, {size}) at depth {depth}, got values in [{low}, {high}]"
            )
        usage.append(torch.bincount(column, minlength=size))
    return usage


def codebook_perplexity(usage: Sequence[Tensor]) -> list[float]:
    """Perplexity exp(-sum_k p_k log p_k) of the code distribution at each depth, in [1, K_d].

    Args:
        usage: per-depth counts as returned by :func:`codebook_usage` (summed over batches), each (K_d,)
            non-negative with a positive total.
    """
    if isinstance(usage, Tensor) or len(usage) == 0:
        raise ValueError(
            f"usage: expected a non-empty sequence of per-depth count tensors, got {type(usage).__name__}"
        )
    perplexities = []
    for depth, counts in enumerate(usage):
        if not isinstance(counts, Tensor) or counts.ndim != 1:
            got = tuple(counts.shape) if isinstance(counts, Tensor) else type(counts).__name__
            raise ValueError(f"usage: expected a 1-D tensor of counts at depth {depth}, got {got}")
        counts = counts.to(torch.float64)
        if not torch.isfinite(counts).all() or counts.min() < 0 or counts.sum() <= 0:
            raise ValueError(f"usage: expected non-negative counts with a positive total at depth {depth}")
        probabilities = counts / counts.sum()
        perplexities.append(torch.exp(-torch.xlogy(probabilities, probabilities).sum()).item())
    return perplexities
