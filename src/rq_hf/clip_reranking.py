"""CLIP re-ranking of text-to-image samples (the original T2I notebook's selection, on correctly scaled images).

The original notebook drew 64 candidates per caption, scored them with CLIP and kept the best, but handed
CLIP decoder outputs in [-1, 1] through `uint8(255 x)`, so negative pixels wrapped around. Here candidates
are scored as float images in [0, 1] through :func:`rq_hf.evaluation.clip_score`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch


def load_clip(rerank_with: str | os.PathLike | tuple) -> tuple:
    """`(CLIPModel, CLIPProcessor)` from a Hub id or local folder, or a `(model, processor)` pair as given."""
    if isinstance(rerank_with, tuple):
        if len(rerank_with) != 2:
            raise ValueError(
                f"rerank_with: expected a CLIP id/path or a (model, processor) pair, got {rerank_with!r}"
            )
        return rerank_with
    if not isinstance(rerank_with, (str, os.PathLike)):
        raise TypeError(f"rerank_with: expected a CLIP model id or path, got {type(rerank_with).__name__}")
    from transformers import CLIPModel, CLIPProcessor

    return CLIPModel.from_pretrained(rerank_with).eval(), CLIPProcessor.from_pretrained(rerank_with)


@torch.no_grad()
def rerank_candidates(
    images: torch.Tensor, prompts: Sequence[str], num_candidates: int, num_keep: int, model, processor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the `num_keep` best of `num_candidates` images per prompt by CLIP score.

    Args:
        images: `(len(prompts) * num_candidates, 3, H, W)` float in [0, 1], the candidates of each prompt
            consecutive.
        prompts: the captions, one per group of candidates.
        num_candidates / num_keep: group size and how many to keep per group (`num_keep <= num_candidates`).
        model, processor: a transformers `CLIPModel` and its `CLIPProcessor`.

    Returns:
        `(len(prompts) * num_keep, 3, H, W)` images, best first within each prompt, and their scores
        `(len(prompts) * num_keep,)` (cosine similarities).
    """
    from .evaluation import clip_score

    if images.shape[0] != len(prompts) * num_candidates:
        raise ValueError(
            f"images: expected {len(prompts)} x {num_candidates} candidates, got {images.shape[0]} images"
        )
    texts = [prompt for prompt in prompts for _ in range(num_candidates)]
    scores = clip_score(images, texts, model, processor).view(len(prompts), num_candidates)
    best, order = scores.sort(dim=1, descending=True)
    rows = (order[:, :num_keep] + torch.arange(len(prompts))[:, None] * num_candidates).flatten()
    return images[rows.to(images.device)], best[:, :num_keep].flatten()
