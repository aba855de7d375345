"""Overlay PNGs of a dataset's images (outlines coloured by class, drawn by :mod:`nucdata.views`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from nucdata.views import render_overlay

if TYPE_CHECKING:
    from nucdata.dataset import NucleusDataset


def write_overlays(ds: NucleusDataset, out: str | os.PathLike[str], limit: int | None = None) -> list[Path]:
    """One PNG per image of ``ds`` into folder ``out`` (the first ``limit`` images when given)."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for position in range(len(ds) if limit is None else min(limit, len(ds))):
        name = str(ds.store.column("images", "name")[int(ds.indices[position])])
        path = folder / f"{name}.png"
        render_overlay(ds, position).save(path)
        written.append(path)
    return written
