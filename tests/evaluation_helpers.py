"""Tiny feature extractors for the `rq-hf evaluate` / `rq-hf stats` tests (no Inception weights offline).

Passed on the command line as `--feature-extractor tests/evaluation_helpers.py:tiny_extractor`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

NUM_FEATURES = 8
NUM_CLASSES = 10


class TinyFeatures(nn.Module):
    """(B, 3, H, W) float in [0, 1] or uint8 -> (B, 8): 4x4 average pooling and a fixed random projection."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.register_buffer("projection", torch.randn(3 * 16, NUM_FEATURES, generator=generator))

    def forward(self, images: Tensor) -> Tensor:
        images = images.float() / 255 if images.dtype == torch.uint8 else images.float()
        pooled = F.adaptive_avg_pool2d(images, 4).flatten(1)
        return torch.tanh(4 * (pooled - 0.5) @ self.projection)


def tiny_head() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(NUM_FEATURES, NUM_CLASSES)


def tiny_extractor() -> tuple[nn.Module, nn.Module]:
    """The extractor with a classifier head (10 logits), so the Inception Score is computed too."""
    return TinyFeatures(), tiny_head()


def tiny_extractor_without_head() -> nn.Module:
    """The extractor alone: no Inception Score."""
    return TinyFeatures()


class Flat(nn.Module):
    def forward(self, images: Tensor) -> Tensor:
        return images.flatten()


def broken_extractor() -> nn.Module:
    """Returns (B * 3 * H * W,) instead of (B, F)."""
    return Flat()
