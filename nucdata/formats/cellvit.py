"""CellViT and CellViT++ outputs: ``cell_detection.json``, ``cells.json`` and their GeoJSON files.

What CellViT writes, as read from its public inference code (TIO-IKIM/CellViT,
``cell_segmentation/inference/cell_detection.py`` and ``cell_segmentation/utils/template_geojson.py``;
TIO-IKIM/CellViT-Inference, ``cellvit/inference/inference.py``, the CellViT++ release), for
each slide in its output folder::

    cell_detection.json   {"wsi_metadata": {...}, "type_map": ..., "cells": [{"bbox", "centroid", "type"}, ...]}
    cells.json            the same, each cell also with "contour", "type_prob" (and patch bookkeeping)
    cell_detection.geojson, cells.geojson   a JSON *list* of Features, one per cell type:
                          a MultiPoint of the centroids, or a MultiPolygon of the contours,
                          objectType "annotation", classification {name, color}

``type_map`` maps names to codes in CellViT 1 (``{"Background": 0, "Neoplastic": 1, ...}``)
and codes to names in CellViT++ (``{"0": "Background", ...}``); both are read. Coordinates
are level-0 slide pixels: ``centroid`` is ``[x, y]``, ``contour`` ``[[x, y], ...]`` and
``bbox`` ``[[row_min, col_min], [row_max, col_max]]``, as in HoVer-Net's post-processing,
which CellViT's follows (image moments and OpenCV contours of the instance's pixel
indices: the **pixel-centre frame**, no shift). The GeoJSON files carry the same numbers
(CellViT copies them unchanged, closing each ring), so they are read in the pixel-centre
frame too, unlike QuPath's own GeoJSON (:mod:`nucdata.formats.qupath`); each polygon or
point of a class's feature is one nucleus. µm/px comes from ``wsi_metadata.base_mpp`` (or
``mpp``) where present. Ids are 1..N in file order (CellViT gives cells none).
Snappy-compressed outputs (``*.json.snappy``, CellViT++'s ``--compression``) are refused:
rerun without compression, or decompress them first.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from nucdata.errors import MalformedAnnotationError, UnsupportedFormatError
from nucdata.formats._geometry import polygon_centroid
from nucdata.formats._limits import check_nuclei, check_vertices, existing_file, read_json
from nucdata.formats._record import Nuclei
from nucdata.formats.qupath import read_qupath

__all__ = ["read_cellvit"]

_NAMES = ("cell_detection", "cells")


def cellvit_image(path: str | os.PathLike[str]) -> str:
    """The slide a CellViT output file belongs to: its folder's name (``<slide>/cell_detection.json``;
    CellViT 1's ``<slide>/cell_detection/cell_detection.json``), or the prefix of
    ``<slide>_cell_detection.json``."""
    path = Path(path)
    stem = path.name.split(".")[0]
    for name in _NAMES:
        if stem == name:
            parent = path.parent
            if parent.name == "cell_detection" and parent.parent.name:
                return parent.parent.name
            return parent.name or stem
        if stem.endswith("_" + name):
            return stem[: -len(name) - 1]
    return stem


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and bool(np.isfinite(value))


def _type_names(type_map: Any) -> dict[int, str]:
    if not isinstance(type_map, dict):
        return {}
    out: dict[int, str] = {}
    for key, value in type_map.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and isinstance(key, str):
            out[int(value)] = key  # CellViT 1: name -> code
        elif isinstance(value, str):
            try:
                out[int(key)] = value  # CellViT++: code -> name
            except (TypeError, ValueError):
                continue
    return out


def read_cellvit(path: str | os.PathLike[str], *, image: str | None = None) -> Nuclei:
    """Read a CellViT ``cell_detection.json`` / ``cells.json``, or its GeoJSON (module docstring).

    Parameters
    ----------
    path
        The file.
    image
        The slide's name; default :func:`cellvit_image` of the path.

    Raises
    ------
    UnsupportedFormatError
        A snappy-compressed file.
    MalformedAnnotationError
        Not CellViT's layout; names the file and the cell.
    SizeLimitError
        Above the JSON, nuclei or vertex limits.
    """
    path = existing_file(path, "CellViT output")
    name = image if image is not None else cellvit_image(path)
    if path.name.lower().endswith(".snappy"):
        raise UnsupportedFormatError(
            f"{path}: a snappy-compressed CellViT output, which nucdata does not decompress. Run CellViT without "
            "--compression, or decompress it first (python -c \"import snappy,sys; sys.stdout.buffer.write("
            "snappy.decompress(open(sys.argv[1],'rb').read()))\" FILE > cell_detection.json).")
    data = read_json(path, "CellViT output")
    if isinstance(data, list) or (isinstance(data, dict) and ("features" in data or data.get("type") == "Feature")):
        nuclei = read_qupath(path, frame="centre", image=name)
        nuclei.meta["format"] = "cellvit-geojson"
        return nuclei
    if not isinstance(data, dict) or not isinstance(data.get("cells"), list):
        raise MalformedAnnotationError(
            f"{path}: not a CellViT output (an object with 'cells': [{{bbox, centroid, type}}, ...], or its GeoJSON "
            "list of features); export it again with CellViT.")
    cells = data["cells"]
    check_nuclei(len(cells), path, "cells")
    n = len(cells)
    centroids = np.zeros((n, 2))
    polygons: list[np.ndarray] = []
    labels = np.full(n, -1, np.int64)
    probs = np.full(n, np.nan)
    bboxes = np.zeros((n, 4), np.int64)
    have_boxes = True
    for i, cell in enumerate(cells):
        where = f"cells[{i}]"
        if not isinstance(cell, dict):
            raise MalformedAnnotationError(f"{path}: {where} is not an object.")
        contour = cell.get("contour")
        if isinstance(contour, list):
            check_vertices(len(contour), path, f"{where}.contour")
            if not all(isinstance(p, list) and len(p) >= 2 and _number(p[0]) and _number(p[1]) for p in contour):
                raise MalformedAnnotationError(f"{path}: {where}.contour holds an entry that is not [x, y].")
            ring = np.array([p[:2] for p in contour], np.float64).reshape(-1, 2)
        else:
            ring = np.zeros((0, 2))
        polygons.append(ring)
        c = cell.get("centroid")
        if isinstance(c, list) and len(c) >= 2 and _number(c[0]) and _number(c[1]):
            centroids[i] = (float(c[0]), float(c[1]))
        elif len(ring):
            centroids[i] = polygon_centroid([ring])[0]
        else:
            raise MalformedAnnotationError(f"{path}: {where} has no centroid [x, y]; export it again with CellViT.")
        box = cell.get("bbox")
        if (isinstance(box, list) and len(box) == 2 and all(isinstance(b, list) and len(b) == 2 for b in box)
                and all(_number(v) for b in box for v in b)):
            (r0, c0), (r1, c1) = box
            bboxes[i] = (int(np.floor(c0)), int(np.floor(r0)), int(np.ceil(c1)), int(np.ceil(r1)))
        else:
            have_boxes = False
        t = cell.get("type")
        if t is not None:
            if not _number(t) or float(t) != int(t):
                raise MalformedAnnotationError(f"{path}: {where}.type is {t!r}, not an integer class code.")
            labels[i] = int(t) if int(t) >= 0 else -1
        p = cell.get("type_prob")
        if _number(p):
            probs[i] = float(p)
    meta = data.get("wsi_metadata") if isinstance(data.get("wsi_metadata"), dict) else {}
    mpp = next((float(meta[k]) for k in ("base_mpp", "mpp") if _number(meta.get(k)) and meta[k] > 0), None)
    names = _type_names(data.get("type_map"))
    return Nuclei(image=name, ids=np.arange(1, n + 1), centroids=centroids,
                  polygons=polygons if any(len(p) for p in polygons) else None, labels=labels,
                  class_names=names, probabilities=probs if np.isfinite(probs).any() else None,
                  bboxes=bboxes if have_boxes and n else None, mpp=mpp,
                  meta={"format": "cellvit-json", "wsi_metadata": meta})
