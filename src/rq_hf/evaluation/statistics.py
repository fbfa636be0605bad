"""Feature statistics (mean and covariance) for FID: accumulation, and `.npz` files in the original's layout.

File layout (the original release's ``assets/fid_stats/*.npz`` and its ``acts.npz``): ``mu`` float64 (F,)
and ``sigma`` float64 (F, F), read with ``np.load(path)["mu"]``. Files written here add ``num_samples``
(int64 scalar), which the original's loader ignores; files without it load with ``num_samples=None``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torchmetrics import Metric

from ._checks import (
    Images,
    atomic_write,
    check_features,
    check_module,
    iter_image_batches,
    module_device,
    run_extractor,
)


@dataclass
class FeatureStatistics:
    """Mean ``mu`` (F,) and covariance ``sigma`` (F, F) of a feature set, float64 numpy arrays.

    ``num_samples`` is the number of feature vectors they came from (``None`` when unknown, e.g. loaded
    from an original release file). Construction checks shapes and finiteness.
    """

    mu: np.ndarray
    sigma: np.ndarray
    num_samples: int | None = None

    def __post_init__(self) -> None:
        mu = np.asarray(self.mu, dtype=np.float64)
        sigma = np.asarray(self.sigma, dtype=np.float64)
        if mu.ndim != 1 or mu.shape[0] == 0:
            raise ValueError(f"mu: expected a vector of shape (F,), got shape {mu.shape}")
        if sigma.shape != (mu.shape[0], mu.shape[0]):
            raise ValueError(
                f"sigma: expected shape (F, F) = {(mu.shape[0],) * 2} to match mu, got {sigma.shape}"
            )
        if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
            raise ValueError("mu, sigma: expected finite values, got NaN or inf")
        if np.abs(sigma - sigma.T).max() > 1e-6 * max(float(np.abs(sigma).max()), np.finfo(np.float64).tiny):
            raise ValueError("sigma: expected a symmetric covariance matrix, got an asymmetric one")
        if self.num_samples is not None and (not isinstance(self.num_samples, int) or self.num_samples < 2):
            raise ValueError(f"num_samples: expected None or an int >= 2, got {self.num_samples!r}")
        self.mu = mu
        self.sigma = sigma

    @property
    def num_features(self) -> int:
        """The feature dimension F."""
        return self.mu.shape[0]


class FeatureStatisticsMetric(Metric):
    """torchmetrics accumulator of feature statistics: float64 sums, summed across processes by ``compute``.

    ``update(features)`` takes (B, F) features (any float dtype, any device); ``compute()`` returns
    :class:`FeatureStatistics` with the unbiased covariance (divided by N - 1, as ``np.cov``). Under
    ``torch.distributed`` every process updates with its own share and ``compute`` gathers the sums once.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = None

    def __init__(self, num_features: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features < 1:
            raise ValueError(f"num_features: expected a positive int, got {num_features!r}")
        self.num_features = num_features
        self.add_state("feature_sum", torch.zeros(num_features, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state(
            "outer_sum", torch.zeros(num_features, num_features, dtype=torch.float64), dist_reduce_fx="sum"
        )
        self.add_state("num_samples", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, features: Tensor) -> None:
        features = check_features(features, "features", device=self.feature_sum.device)
        if features.shape[1] != self.num_features:
            raise ValueError(
                f"features: expected {self.num_features} features per row, got {features.shape[1]}"
            )
        self.feature_sum += features.sum(dim=0)
        self.outer_sum += features.T @ features
        self.num_samples += features.shape[0]

    def compute(self) -> FeatureStatistics:
        count = int(self.num_samples.item())
        if count < 2:
            raise ValueError(f"features: expected at least 2 samples for a covariance, got {count}")
        mu = self.feature_sum / count
        sigma = (self.outer_sum - count * torch.outer(mu, mu)) / (count - 1)
        sigma = (sigma + sigma.T) / 2
        return FeatureStatistics(mu.cpu().numpy(), sigma.cpu().numpy(), count)


def statistics_from_features(features: Tensor) -> FeatureStatistics:
    """Statistics of a feature matrix (N, F) with N >= 2 (any float dtype)."""
    features = check_features(features, "features", min_samples=2)
    metric = FeatureStatisticsMetric(features.shape[1])
    metric.update(features)
    return metric.compute()


def compute_statistics(
    images: Images, feature_extractor: nn.Module, *, batch_size: int = 50, name: str = "images"
) -> FeatureStatistics:
    """Statistics of the features of a set of images, accumulated batch by batch (memory O(F^2), not O(N F)).

    Under ``torch.distributed`` every process passes its own share of the images and gets the statistics
    of all shares (the sums are reduced once, on the extractor's device).

    Args:
        images: (N, 3, H, W) float in [0, 1] or uint8, or an iterable of such batches; N >= 2 in total.
        feature_extractor: an ``nn.Module`` following the contract (e.g. :func:`load_inception`).
        batch_size: batch size when ``images`` is one tensor.
        name: the argument name used in error messages.
    """
    statistics, _ = statistics_and_size(images, feature_extractor, batch_size=batch_size, name=name)
    return statistics


def statistics_and_size(
    images: Images,
    feature_extractor: nn.Module,
    *,
    batch_size: int,
    name: str,
    size: tuple[int, int] | None = None,
) -> tuple[FeatureStatistics, tuple[int, int]]:
    """:func:`compute_statistics` also returning the image size (H, W), required to be ``size`` if given."""
    check_module(feature_extractor, "feature_extractor")
    metric = None
    for batch in iter_image_batches(images, name, batch_size=batch_size, size=size):
        features = run_extractor(feature_extractor, batch, "feature_extractor")
        if metric is None:
            metric = FeatureStatisticsMetric(features.shape[1]).to(module_device(feature_extractor))
        metric.update(features)
        size = (batch.shape[2], batch.shape[3])
    return metric.compute(), size


def save_statistics(statistics: FeatureStatistics, path: str | os.PathLike) -> None:
    """Write ``mu``, ``sigma`` (and ``num_samples`` when known) to ``path`` as `.npz`, atomically."""
    if not isinstance(statistics, FeatureStatistics):
        raise TypeError(f"statistics: expected FeatureStatistics, got {type(statistics).__name__}")
    arrays = {"mu": statistics.mu, "sigma": statistics.sigma}
    if statistics.num_samples is not None:
        arrays["num_samples"] = np.asarray(statistics.num_samples, dtype=np.int64)
    atomic_write(path, lambda file: np.savez(file, **arrays))


def load_statistics(path: str | os.PathLike) -> FeatureStatistics:
    """Read an `.npz` with ``mu`` (F,) and ``sigma`` (F, F): ours or the original release's files."""
    if not os.path.isfile(path):
        raise ValueError(f"path: expected an existing .npz file, got {str(path)!r}")
    expected = "path: expected an .npz file with arrays 'mu' and 'sigma'"
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ValueError(f"{expected}, got {str(path)!r} ({error})") from error
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise TypeError(f"{expected}, got a single array in {str(path)!r}")
    with archive:
        keys = sorted(archive.files)
        if "mu" not in keys or "sigma" not in keys:
            raise ValueError(f"{expected}, got keys {keys}")
        num_samples = int(archive["num_samples"]) if "num_samples" in keys else None
        return FeatureStatistics(archive["mu"], archive["sigma"], num_samples)
