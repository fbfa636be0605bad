"""Folder writers that never leave a half-written result: write under a temporary sibling, then rename."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path


def write_folder_atomically(
    output_dir: str | os.PathLike, write: Callable[[Path], None], overwrite: bool = False
) -> Path:
    """Call ``write(staging_folder)`` and move the result to ``output_dir``.

    Args:
        output_dir: destination folder; it must be missing or empty unless ``overwrite``.
        write: fills the staging folder (a sibling of ``output_dir``, so the final rename is atomic).
        overwrite: replace an existing non-empty ``output_dir``.

    Raises:
        ValueError: ``output_dir`` is a file, or a non-empty folder without ``overwrite``. On any error in
            ``write`` the staging folder is removed and ``output_dir`` is left as it was.
    """
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"output_dir: expected a folder path, got the existing file {output_dir}")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise ValueError(
            f"output_dir: expected a missing or empty folder (or overwrite), got non-empty {output_dir}"
        )
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = output_dir.parent / f".{output_dir.name}.tmp-{uuid.uuid4().hex}"
    staging.mkdir()  # plain mkdir keeps the umask's permissions once renamed (mkdtemp would make it 0700)
    try:
        write(staging)
        if output_dir.exists():
            shutil.rmtree(output_dir)
        os.replace(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output_dir
