"""Labelled image grids for the command line and the training scripts' validation images."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

LABEL_WIDTH = 96
PADDING = 2


def labelled_grid(
    rows: Sequence[Sequence[Image.Image]],
    row_labels: Sequence[str],
    column_labels: Sequence[str] | None = None,
) -> Image.Image:
    """Paste images into a grid, one row per entry of ``rows``, with a text label left of each row and
    optional labels above the columns. All images must share one size."""
    if not rows or not all(rows) or len(row_labels) != len(rows):
        raise ValueError(
            f"rows: expected non-empty rows, one label each, got {len(rows)} rows, {len(row_labels)} labels"
        )
    width, height = rows[0][0].size
    columns = max(len(row) for row in rows)
    header = 14 if column_labels else 0
    scale = max(1, 64 // max(width, height))  # small images (MNIST) are shown enlarged
    cell_w, cell_h = width * scale + PADDING, height * scale + PADDING
    grid = Image.new("RGB", (LABEL_WIDTH + columns * cell_w, header + len(rows) * cell_h), "white")
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default()
    for column, label in enumerate(column_labels or []):
        draw.text((LABEL_WIDTH + column * cell_w + 2, 1), label, fill="black", font=font)
    for index, (row, label) in enumerate(zip(rows, row_labels, strict=True)):
        top = header + index * cell_h
        draw.text((4, top + cell_h // 2 - 6), label[:14], fill="black", font=font)
        for column, image in enumerate(row):
            if image.size != (width, height):
                raise ValueError(f"rows: expected images of one size {width}x{height}, got {image.size}")
            enlarged = image.convert("RGB").resize((width * scale, height * scale), Image.NEAREST)
            grid.paste(enlarged, (LABEL_WIDTH + column * cell_w, top))
    return grid


def save_image_atomically(image: Image.Image, path: str | os.PathLike) -> Path:
    """Save ``image`` (format from the suffix) through a temporary file renamed into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        image.save(temporary, format=Image.registered_extensions().get(path.suffix.lower(), "PNG"))
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path
