"""What the image metrics among the `evaluate` module scripts (``rq_hf/evaluate_modules``) share: the stored
feature type of one image and its conversion back to a tensor. Imported by those scripts only, so that importing
:mod:`rq_hf.evaluation` does not import `datasets`."""

from __future__ import annotations

from collections.abc import Sequence

import datasets
import numpy as np
import torch

IMAGE_FEATURE = datasets.Sequence(datasets.Sequence(datasets.Sequence(datasets.Value("float32"))))
"""One image `(3, H, W)`, float in [0, 1], as `evaluate` stores the batches given to `add_batch`."""


def images_to_tensor(images: Sequence) -> torch.Tensor:
    """Stored images (`N` nested `(3, H, W)` lists or arrays) -> float32 tensor `(N, 3, H, W)`."""
    return torch.from_numpy(np.asarray(images, dtype=np.float32))
