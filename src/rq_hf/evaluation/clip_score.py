"""CLIP score of text-to-image samples with transformers' ``CLIPModel`` / ``CLIPProcessor``.

The score of a pair is the cosine similarity of CLIP's projected image and text embeddings, in [-1, 1]
(the paper's scale: CC-3M numbers like 0.26; torchmetrics' ``CLIPScore`` reports 100 x max(cos, 0) instead).
The paper used OpenAI's ViT-B/32 (``openai/clip-vit-base-patch32`` on the Hub) and averaged over the
validation captions. Images enter as float (B, 3, H, W) in [0, 1] (or uint8); floats are rounded to uint8
(``round(255 x)``, as saving PNGs does) and the processor gets uint8 with ``do_rescale=True``, so its resize,
crop and normalisation see the range they expect whichever image-processor backend is installed. The
original notebook fed decoder outputs in [-1, 1] to ``uint8(255 x)`` (negative values wrapped around); its
metric script truncated ``255 x`` instead of rounding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn.functional import cosine_similarity

from ._checks import Images, check_images, check_module, iter_image_batches, module_device


@torch.no_grad()
def clip_score(images: Tensor, texts: Sequence[str], model: nn.Module, processor: object) -> Tensor:
    """Per-pair CLIP score (cosine similarity), (B,) float32 on the CPU.

    Args:
        images: (B, 3, H, W) float in [0, 1] or uint8 in [0, 255].
        texts: B captions, ``texts[i]`` describing ``images[i]``; truncated to the model's text length.
        model: a transformers ``CLIPModel`` (its outputs ``image_embeds`` and ``text_embeds`` are used).
        processor: the matching ``CLIPProcessor`` (tokenizer + image processor).
    """
    images = check_images(images, "images")
    check_module(model, "model")
    if not callable(processor):
        raise TypeError(f"processor: expected a CLIPProcessor, got {type(processor).__name__}")
    if isinstance(texts, str) or not all(isinstance(text, str) for text in texts):
        raise ValueError(
            f"texts: expected a sequence of {images.shape[0]} strings, got {type(texts).__name__}"
        )
    if len(texts) != images.shape[0]:
        raise ValueError(f"texts: expected {images.shape[0]} captions (one per image), got {len(texts)}")
    if images.dtype != torch.uint8:
        images = images.float().mul(255.0).round().to(torch.uint8)
    inputs = processor(
        text=list(texts),
        images=list(images.cpu()),
        return_tensors="pt",
        padding=True,
        truncation=True,
        max_length=model.config.text_config.max_position_embeddings,
        do_rescale=True,
        input_data_format="channels_first",
    )
    outputs = model(**inputs.to(module_device(model)))
    return cosine_similarity(outputs.image_embeds, outputs.text_embeds, dim=-1).float().cpu()


def compute_clip_score(
    images: Images, texts: Sequence[str], model: nn.Module, processor: object, *, batch_size: int = 50
) -> float:
    """Mean CLIP score over a set of (image, caption) pairs.

    Args:
        images: (N, 3, H, W) float in [0, 1] or uint8, or an iterable of such batches.
        texts: N captions in the order of the images.
        model, processor: as in :func:`clip_score`.
        batch_size: batch size when ``images`` is one tensor.
    """
    if isinstance(texts, str):
        raise TypeError("texts: expected a sequence of strings, got a single string")
    scores = []
    offset = 0
    for batch in iter_image_batches(images, "images", batch_size=batch_size):
        captions = texts[offset : offset + batch.shape[0]]
        scores.append(clip_score(batch, captions, model, processor))
        offset += batch.shape[0]
    if offset != len(texts):
        raise ValueError(f"texts: expected {offset} captions (one per image), got {len(texts)}")
    return torch.cat(scores).mean().item()
