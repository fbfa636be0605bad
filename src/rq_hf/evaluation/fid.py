"""Fréchet (Inception) Distance between feature statistics, image sets, and precomputed `.npz` statistics.

FID = ||mu_a - mu_b||^2 + Tr(sigma_a) + Tr(sigma_b) - 2 Tr((sigma_a sigma_b)^(1/2)).

The trace of the matrix square root is computed in float64 in the symmetric form
Tr((sigma_a sigma_b)^(1/2)) = sum_i sqrt(lambda_i), lambda_i the eigenvalues of the symmetric positive
semi-definite matrix sigma_a^(1/2) sigma_b sigma_a^(1/2) (same spectrum as sigma_a sigma_b). No complex
numbers arise, so there is no imaginary part to drop. Eigenvalues below zero can only be round-off (or a
broken covariance): those above -1e-5 x the largest are set to zero, which is what pytorch-fid (and the
original release) get by taking the real part of ``scipy.linalg.sqrtm`` and what torchmetrics gets from the
real part of the complex square roots of the eigenvalues; a more negative one raises ``ValueError``
(pytorch-fid raises on an imaginary component above 1e-3). Singular covariances (fewer samples than
features) need no diagonal offset in this form. The result is never NaN: a non-finite value raises
``ValueError``.
"""

from __future__ import annotations

import os

import numpy as np
from torch import Tensor, nn

from ._checks import Images, check_module
from .backbone import load_inception
from .statistics import FeatureStatistics, load_statistics, statistics_and_size, statistics_from_features

NEGATIVE_EIGENVALUE_TOLERANCE = 1e-5
"""Eigenvalues down to -tolerance x the largest eigenvalue count as round-off and are set to zero."""


def _clipped_eigenvalues(matrix: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-decomposition of a symmetric PSD matrix with round-off negatives set to zero."""
    eigenvalues, eigenvectors = np.linalg.eigh((matrix + matrix.T) / 2)
    scale = max(float(np.abs(eigenvalues).max()), np.finfo(np.float64).tiny)
    if eigenvalues.min() < -NEGATIVE_EIGENVALUE_TOLERANCE * scale:
        raise ValueError(
            f"{name}: expected a positive semi-definite covariance, "
            f"got an eigenvalue of {eigenvalues.min():.4g} (largest magnitude {scale:.4g})"
        )
    return np.clip(eigenvalues, 0.0, None), eigenvectors


def frechet_distance(statistics_a: FeatureStatistics, statistics_b: FeatureStatistics) -> float:
    """FID between two Gaussians given as :class:`FeatureStatistics` (float64; symmetric in its arguments)."""
    for name, value in (("statistics_a", statistics_a), ("statistics_b", statistics_b)):
        if not isinstance(value, FeatureStatistics):
            raise TypeError(f"{name}: expected FeatureStatistics, got {type(value).__name__}")
    if statistics_a.num_features != statistics_b.num_features:
        raise ValueError(
            f"statistics_b: expected {statistics_a.num_features} features like statistics_a, "
            f"got {statistics_b.num_features} (were both computed with the same feature extractor?)"
        )
    eigenvalues_a, eigenvectors_a = _clipped_eigenvalues(statistics_a.sigma, "statistics_a.sigma")
    _clipped_eigenvalues(statistics_b.sigma, "statistics_b.sigma")
    root_a = (eigenvectors_a * np.sqrt(eigenvalues_a)) @ eigenvectors_a.T
    product_eigenvalues, _ = _clipped_eigenvalues(
        root_a @ statistics_b.sigma @ root_a, "sigma_a^1/2 sigma_b sigma_a^1/2"
    )
    difference = statistics_a.mu - statistics_b.mu
    distance = (
        difference @ difference
        + np.trace(statistics_a.sigma)
        + np.trace(statistics_b.sigma)
        - 2.0 * np.sqrt(product_eigenvalues).sum()
    )
    if not np.isfinite(distance):
        raise ValueError(f"statistics: expected statistics giving a finite distance, got {distance}")
    return float(distance)


def fid_from_features(features_a: Tensor, features_b: Tensor) -> float:
    """FID between two feature matrices (N, F) and (M, F), N, M >= 2."""
    return frechet_distance(statistics_from_features(features_a), statistics_from_features(features_b))


def compute_fid(
    images: Images,
    reference: FeatureStatistics | str | os.PathLike | Images,
    *,
    feature_extractor: nn.Module | None = None,
    batch_size: int = 50,
) -> float:
    """FID of a set of (generated) images against a reference.

    Args:
        images: (N, 3, H, W) float in [0, 1] or uint8, or an iterable of such batches; N >= 2.
        reference: :class:`FeatureStatistics`, the path of an `.npz` statistics file (the original
            release's reference files work as they are), or reference images like ``images`` (same H, W).
        feature_extractor: an ``nn.Module`` following the contract; ``None`` loads the standard Inception
            (:func:`load_inception`, downloaded on first use). Precomputed statistics must come from the
            same extractor and protocol.
        batch_size: batch size for tensors given whole.
    """
    extractor = (
        load_inception()
        if feature_extractor is None
        else check_module(feature_extractor, "feature_extractor")
    )
    size = None
    if isinstance(reference, FeatureStatistics):
        reference_statistics = reference
    elif isinstance(reference, (str, os.PathLike)):
        reference_statistics = load_statistics(reference)
    else:
        reference_statistics, size = statistics_and_size(
            reference, extractor, batch_size=batch_size, name="reference"
        )
    statistics, _ = statistics_and_size(images, extractor, batch_size=batch_size, name="images", size=size)
    return frechet_distance(statistics, reference_statistics)
