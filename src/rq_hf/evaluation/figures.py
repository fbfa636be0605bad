"""PNG figures with matplotlib (no pyplot state): per-depth codebook usage and sampling speed.

Sampling-speed results file (written by ``benchmarks/sampling_speed.py``): a JSON list of rows, each an
object with exactly these keys (extra keys are ignored)::

    [
      {"config": "8x8x4", "batch": 100, "images_per_second": 123.4, "implementation": "rq-hf"},
      {"config": "8x8x4", "batch": 100, "images_per_second": 45.6, "implementation": "original"},
      ...
    ]

- ``config`` (str): the model shape, e.g. ``"8x8x4"`` or ``"16x16x1"`` (h x w x D); one panel per config.
- ``batch`` (int > 0): the batch size; the x axis.
- ``images_per_second`` (number > 0): throughput; the bar height.
- ``implementation`` (str): e.g. ``"rq-hf"``, ``"rq-hf compiled"``, ``"original"``; one bar colour each.
- ``stage`` (optional str): ``"AR"`` (code sampling) or ``"end to end"`` (with RQ-VAE decoding); see
  ``plot_sampling_speed(stage=...)``. Other keys (``ms_per_image``, ``device``, ...) are ignored.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from matplotlib.figure import Figure
from torch import Tensor

from ._checks import atomic_write
from .reconstruction import codebook_perplexity

SAMPLING_SPEED_FIELDS = {
    "config": "a non-empty string",
    "batch": "a positive int",
    "images_per_second": "a positive number",
    "implementation": "a non-empty string",
}


def _valid_field(key: str, value: object) -> bool:
    """Whether ``value`` is valid for the results-file field ``key``."""
    if key in ("config", "implementation"):
        return isinstance(value, str) and value != ""
    if isinstance(value, bool):
        return False
    if key == "batch":
        return isinstance(value, int) and value > 0
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def _save_png(figure: Figure, path: str | os.PathLike) -> Path:
    """Write ``figure`` to ``path`` as PNG, atomically."""
    return atomic_write(path, lambda file: figure.savefig(file, format="png", dpi=150, bbox_inches="tight"))


def plot_codebook_usage(
    usage: Sequence[Tensor], path: str | os.PathLike, *, title: str | None = None
) -> Path:
    """Per-depth code usage, sorted from the most to the least used code (the paper's Figure 6 style).

    Args:
        usage: per-depth counts from :func:`~rq_hf.evaluation.codebook_usage`, D tensors of shapes (K_d,).
        path: the PNG to write (its folder must exist).
        title: optional figure title.

    Returns:
        ``path`` as a ``Path``. The legend gives each depth's perplexity and number of used codes.
    """
    perplexities = codebook_perplexity(usage)
    figure = Figure(figsize=(6.4, 4.0))
    axes = figure.add_subplot()
    for depth, (counts, perplexity) in enumerate(zip(usage, perplexities, strict=True)):
        ordered = torch.sort(counts.to(torch.float64), descending=True).values
        used = int((ordered > 0).sum())
        ranks = torch.arange(1, ordered.numel() + 1)
        label = f"depth {depth + 1}: perplexity {perplexity:.1f}, {used}/{ordered.numel()} used"
        axes.plot(ranks.numpy(), (ordered / ordered.sum()).numpy(), label=label)
    axes.set_yscale("log")
    axes.set_xlabel("code rank (most used first)")
    axes.set_ylabel("fraction of positions")
    axes.legend(fontsize="small")
    if title:
        axes.set_title(title)
    return _save_png(figure, path)


def load_sampling_speed(path: str | os.PathLike) -> list[dict]:
    """Read and check a sampling-speed results file (schema in the module docstring)."""
    try:
        rows = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"results: expected a readable JSON file, got {str(path)!r} ({error})") from error
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"results: expected a non-empty JSON list of rows, got {type(rows).__name__}")
    for index, row in enumerate(rows):
        if not isinstance(row, dict) or not SAMPLING_SPEED_FIELDS.keys() <= row.keys():
            got = sorted(row) if isinstance(row, dict) else type(row).__name__
            raise ValueError(f"results[{index}]: expected keys {sorted(SAMPLING_SPEED_FIELDS)}, got {got}")
        for key, expected in SAMPLING_SPEED_FIELDS.items():
            if not _valid_field(key, row[key]):
                raise ValueError(f"results[{index}].{key}: expected {expected}, got {row[key]!r}")
    return rows


def plot_sampling_speed(
    results: str | os.PathLike, path: str | os.PathLike, *, title: str | None = None, stage: str | None = None
) -> Path:
    """Images per second against batch size: a panel per config, a bar per implementation (Figure 4 style).

    Args:
        results: the JSON results file (schema in the module docstring).
        path: the PNG to write (its folder must exist).
        title: optional figure title.
        stage: keep only the rows whose optional ``stage`` key equals this (the benchmark writes ``"AR"`` and
            ``"end to end"`` rows); ``None`` keeps every row.
    """
    rows = load_sampling_speed(results)
    if stage is not None:
        rows = [row for row in rows if row.get("stage") == stage]
        if not rows:
            raise ValueError(f"stage: expected a stage present in {str(results)!r}, got {stage!r}")
    configs = list(dict.fromkeys(row["config"] for row in rows))
    implementations = list(dict.fromkeys(row["implementation"] for row in rows))
    figure = Figure(figsize=(4.5 * len(configs), 4.2), layout="constrained")
    panels = figure.subplots(1, len(configs), squeeze=False)[0]
    width = 0.8 / len(implementations)
    for panel, config in zip(panels, configs, strict=True):
        batches = sorted({row["batch"] for row in rows if row["config"] == config})
        for offset, implementation in enumerate(implementations):
            speeds = {
                row["batch"]: row["images_per_second"]
                for row in rows
                if row["config"] == config and row["implementation"] == implementation
            }
            positions = [
                index + (offset - (len(implementations) - 1) / 2) * width for index in range(len(batches))
            ]
            heights = [speeds.get(batch, 0.0) for batch in batches]
            panel.bar(positions, heights, width=width, label=implementation)
        panel.set_xticks(range(len(batches)), [str(batch) for batch in batches])
        panel.set_xlabel("batch size")
        panel.set_ylabel("images / s")
        panel.set_title(config)
    handles, labels = panels[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncols=2, fontsize="small")
    if title:
        figure.suptitle(title)
    return _save_png(figure, path)
