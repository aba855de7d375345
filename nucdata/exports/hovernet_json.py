"""HoVer-Net JSON: one file per image (``mag``, ``nuc``: bbox row-first, centroid and contour x, y
at pixel centres, ``type`` and ``type_prob``), as HoVer-Net's inference writes it.

Written by the one HoVer-Net JSON writer, :func:`nucdata.formats.write_hovernet_json`:
``nuc`` keys are the nuclei's instance values, ``type`` the class under the export's label
set (or the native code; -1 none) with ``type_prob`` 1.0 for a labelled nucleus (an
annotation) and ``null`` otherwise, ``mag`` ``round(10 / µm per px)``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from nucdata.exports._common import image_nuclei, image_path
from nucdata.formats import write_hovernet_json

if TYPE_CHECKING:
    from nucdata.dataset import NucleusDataset

NAME = "hovernet-json"
DESCRIPTION = "HoVer-Net inference JSON, one file per image"
OPTIONS: tuple[str, ...] = ()


def write(ds: NucleusDataset, out: Path) -> list[Path]:
    """HoVer-Net's per-image JSON (``mag``, ``nuc``: bbox row-first, centroid/contour x, y)."""
    written = []
    for i in ds.indices:
        i = int(i)
        written.append(write_hovernet_json(image_path(ds, out, i, ".json"), image_nuclei(ds, i)))
    return written
