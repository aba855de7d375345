"""Overlay PNGs of a dataset's images (outlines coloured by class, drawn by :mod:`nucdata.views`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from nucdata._util.atomic import atomic_path
from nucdata.errors import InvalidArgumentError
from nucdata.exports._common import image_path
from nucdata.views import render_overlay

if TYPE_CHECKING:
    from nucdata.dataset import NucleusDataset


def write_overlays(ds: NucleusDataset, out: str | os.PathLike[str], limit: int | None = None) -> list[Path]:
    """One PNG per image of ``ds`` into folder ``out`` (the first ``limit`` images when given).

    Each file is named after its image; a name that would leave ``out`` (``../x``, an
    absolute path) is an :class:`~nucdata.errors.UnsafeNameError`, before anything of it
    is drawn. Each PNG is written atomically (a temporary file beside it, renamed over it).
    """
    if isinstance(out, str) and not out.strip():
        raise InvalidArgumentError("the output folder is empty (--out \"\"); name a folder for the overlays.")
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for position in range(len(ds) if limit is None else min(limit, len(ds))):
        path = image_path(ds, folder, int(ds.indices[position]), ".png")
        image = render_overlay(ds, position)
        with atomic_path(path) as tmp:  # a killed run leaves the last good PNG, never half of one
            image.save(tmp, format="PNG", compress_level=1)  # zlib level 1: about half the time of 6, 1.2x the bytes
        written.append(path)
    return written
