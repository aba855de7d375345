"""HoVer-Net JSON: one file per image (``mag``, ``nuc``: bbox row-first, centroid and contour x, y
at pixel centres, ``type`` and ``type_prob``), as HoVer-Net's inference writes it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from nucdata.exports._common import image_path, nuclei_of, write_json
from nucdata.exports._common import outline as nucleus_outline

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
        inst, nuclei = nuclei_of(ds, i)
        mpp = float(ds.store.column("images", "mpp")[i])
        nuc = {}
        for k, row, label in nuclei:
            x0, y0, x1, y1 = (int(v) for v in ds.store.column("nuclei", "bbox")[row])
            centroid = [float(v) for v in ds.store.column("nuclei", "centroid")[row]]
            nuc[str(k)] = {
                "bbox": [[y0, x0], [y1, x1]],
                "centroid": centroid,
                "contour": np.rint(nucleus_outline(ds, inst, k, row)).astype(int).tolist(),
                "type": label,
                "type_prob": 1.0 if label >= 0 else None,
            }
        path = image_path(ds, out, i, ".json")
        write_json(path, {"mag": round(10.0 / mpp) if mpp == mpp and mpp > 0 else None, "nuc": nuc})
        written.append(path)
    return written
