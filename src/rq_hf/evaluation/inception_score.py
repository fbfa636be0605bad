"""Inception Score: exp(E_x KL(p(y|x) || p(y))), mean and standard deviation over splits.

As in the original release (StudioGAN's ``calculate_kl_div``): the N predictions are cut into ``splits``
contiguous parts ``[j N // splits, (j + 1) N // splits)``, the score is computed per part and the mean and
the unbiased standard deviation (``torch.std``) of the parts are returned. The original shuffled the samples
(``DataLoader(shuffle=True)``) before splitting; here the given order is used, so results are reproducible
(shuffle beforehand to get the original's random split). torchmetrics' ``InceptionScore`` is not used because
it permutes with the global random generator. Computed in float64; 0 log 0 = 0.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._checks import (
    Images,
    check_features,
    check_module,
    check_positive_int,
    iter_image_batches,
    run_extractor,
)
from .backbone import load_inception


def inception_score(probabilities: Tensor, splits: int = 10) -> tuple[float, float]:
    """Inception Score of class probabilities.

    Args:
        probabilities: (N, C) rows of class probabilities (non-negative, summing to 1), N >= ``splits``.
        splits: number of contiguous parts (10 in the paper).

    Returns:
        (mean, std) over the parts; 1 for identical predictions, C for one-hot predictions spread evenly
        over C classes within every part. ``std`` is 0 for ``splits=1``.
    """
    check_positive_int(splits, "splits")
    probabilities = check_features(probabilities, "probabilities", min_samples=splits)
    if probabilities.min() < 0 or not torch.allclose(
        probabilities.sum(dim=1), torch.ones((), dtype=torch.float64), atol=1e-4
    ):
        raise ValueError(
            "probabilities: expected non-negative rows summing to 1 (apply softmax to logits), got others"
        )
    count = probabilities.shape[0]
    scores = []
    for index in range(splits):
        part = probabilities[index * count // splits : (index + 1) * count // splits]
        marginal = part.mean(dim=0, keepdim=True)
        kl = (torch.xlogy(part, part) - torch.xlogy(part, marginal)).sum(dim=1).mean()
        scores.append(kl.exp())
    scores_tensor = torch.stack(scores)
    std = scores_tensor.std().item() if splits > 1 else 0.0
    return scores_tensor.mean().item(), std


def compute_inception_score(
    images: Images, *, classifier: nn.Module | None = None, splits: int = 10, batch_size: int = 50
) -> tuple[float, float]:
    """Inception Score of a set of images.

    Args:
        images: (N, 3, H, W) float in [0, 1] or uint8, or an iterable of such batches; N >= ``splits``.
        classifier: an ``nn.Module`` mapping a batch to logits (B, C) (the feature-extractor contract);
            ``None`` loads the standard Inception with its 1008 logits (``load_inception(output="logits")``).
        splits: number of contiguous parts.
        batch_size: batch size when ``images`` is one tensor.

    Returns:
        (mean, std), see :func:`inception_score`.
    """
    classifier = (
        load_inception(output="logits") if classifier is None else check_module(classifier, "classifier")
    )
    batches = iter_image_batches(images, "images", batch_size=batch_size)
    logits = torch.cat([run_extractor(classifier, batch, "classifier") for batch in batches])
    return inception_score(logits.softmax(dim=1), splits)
