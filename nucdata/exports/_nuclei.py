"""Exports to the formats pathology tools read: QuPath GeoJSON, COCO, HoVer-Net JSON.

These are interchange copies written from the store; the store stays the source.
Coordinates: GeoJSON and COCO polygons are in the pixel-corner frame (origin at the
top-left corner of the image, as QuPath and COCO use); HoVer-Net JSON keeps its own
conventions (centroid and contour (x, y) at pixel centres; ``bbox`` as
``[[rmin, cmin], [rmax, cmax]]``, row first).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nucdata._util.atomic import atomic_write_json
from nucdata._util.geometry import box_outline, nucleus_outline

if TYPE_CHECKING:  # type hints only: the dataset module builds on this one
    from nucdata.dataset import NucleusDataset

FORMATS = ("geojson", "coco", "hovernet-json", "pannuke", "hovernet-patches")


def _write_json(path: Path, data: Any) -> None:
    atomic_write_json(path, data, indent=None)


def _outline(ds: NucleusDataset, inst: np.ndarray, k: int, row: int) -> np.ndarray:
    bbox = np.asarray(ds.store.column("nuclei", "bbox")[row])
    if ds.store.column("nuclei", "has_mask")[row]:
        return nucleus_outline(inst, k, bbox)
    return box_outline(bbox)


def _nuclei_of(ds: NucleusDataset, index: int):
    """(instance map, [(k, row, label)]) for image ``index`` (k = 1-based instance value)."""
    rows = ds.store.nucleus_slice(index)
    inst = np.asarray(ds.store.instance_map(index))
    return inst, [(k + 1, row, int(ds.labels[row])) for k, row in enumerate(range(rows.start, rows.stop))]


def export_geojson(ds: NucleusDataset, out: Path) -> list[Path]:
    """One QuPath FeatureCollection per image: a ``detection`` Feature per nucleus."""
    classes = {k: (n, list(c)) for k, (n, c) in ds.classes.items()}
    written = []
    for i in ds.indices:
        inst, nuclei = _nuclei_of(ds, int(i))
        features = []
        for k, row, label in nuclei:
            outline = _outline(ds, inst, k, row) + 0.5  # pixel-corner frame
            if len(outline) < 3:
                continue
            ring = outline.round(2).tolist()
            if ring[0] != ring[-1]:
                ring.append(ring[0])
            props: dict[str, Any] = {"objectType": "detection", "isLocked": False,
                                     "measurements": {"area_px": int(ds.store.column("nuclei", "area")[row])}}
            if label in classes:
                name, colour = classes[label]
                props["classification"] = {"name": name, "color": colour}
            features.append({"type": "Feature", "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{ds.name}/{i}/{k}")),
                             "geometry": {"type": "Polygon", "coordinates": [ring]}, "properties": props})
        name = str(ds.store.column("images", "name")[i])
        path = out / f"{name}.geojson"
        _write_json(path, {"type": "FeatureCollection", "features": features})
        written.append(path)
    return written


def export_coco(ds: NucleusDataset, out: Path) -> list[Path]:
    """One COCO file for the dataset (and split): polygons where masks exist, else boxes."""
    classes, vocabulary = {k: (n, list(c)) for k, (n, c) in ds.classes.items()}, ds.vocabulary
    categories = [{"id": cid, "name": name, "supercategory": vocabulary} for cid, (name, _) in sorted(classes.items())]
    images, annotations = [], []
    unnamed: set[int] = set()  # labels outside the vocabulary (-1 missing, -2 outside the set)
    for i in ds.indices:
        i = int(i)
        images.append({"id": i, "file_name": f"{ds.store.column('images', 'name')[i]}.png",
                       "width": int(ds.store.column("images", "width")[i]),
                       "height": int(ds.store.column("images", "height")[i]), "license": 0})
        inst, nuclei = _nuclei_of(ds, i)
        for k, row, label in nuclei:
            x0, y0, x1, y1 = (int(v) for v in ds.store.column("nuclei", "bbox")[row])
            has_mask = bool(ds.store.column("nuclei", "has_mask")[row])
            outline = _outline(ds, inst, k, row) + 0.5
            segmentation = [outline.round(2).ravel().tolist()] if has_mask and len(outline) >= 3 else []
            annotations.append({
                "id": len(annotations) + 1, "image_id": i, "category_id": label,
                "segmentation": segmentation, "area": int(ds.store.column("nuclei", "area")[row]) if has_mask else (x1 - x0) * (y1 - y0),
                "bbox": [x0, y0, x1 - x0, y1 - y0], "iscrowd": 0,
            })
            if label not in classes:
                unnamed.add(label)
    # Every category_id resolves to a category, so COCO readers never meet a dangling id.
    special = {-1: "unlabelled", -2: "outside the label set"}
    categories += [{"id": c, "name": special.get(c, f"code {c}"), "supercategory": vocabulary} for c in sorted(unnamed)]
    split = ds.split or "all"
    path = out / f"{ds.name}_{split.replace('/', '-')}.json"
    _write_json(path, {
        "info": {"description": f"nucdata export of {ds.name} ({split})", "version": ds.manifest["converter_version"]},
        "licenses": [{"id": 0, "name": ds.manifest.get("licence", ""), "url": ds.manifest.get("homepage", "")}],
        "images": images, "annotations": annotations, "categories": categories,
    })
    return [path]


def export_hovernet(ds: NucleusDataset, out: Path) -> list[Path]:
    """HoVer-Net's per-image JSON (``mag``, ``nuc``: bbox row-first, centroid/contour x, y)."""
    written = []
    for i in ds.indices:
        i = int(i)
        inst, nuclei = _nuclei_of(ds, i)
        mpp = float(ds.store.column("images", "mpp")[i])
        nuc = {}
        for k, row, label in nuclei:
            x0, y0, x1, y1 = (int(v) for v in ds.store.column("nuclei", "bbox")[row])
            centroid = [float(v) for v in ds.store.column("nuclei", "centroid")[row]]
            nuc[str(k)] = {
                "bbox": [[y0, x0], [y1, x1]],
                "centroid": centroid,
                "contour": np.rint(_outline(ds, inst, k, row)).astype(int).tolist(),
                "type": label,
                "type_prob": 1.0 if label >= 0 else None,
            }
        name = str(ds.store.column("images", "name")[i])
        path = out / f"{name}.json"
        _write_json(path, {"mag": round(10.0 / mpp) if mpp == mpp and mpp > 0 else None, "nuc": nuc})
        written.append(path)
    return written


def export(ds: NucleusDataset, fmt: str, out: str | os.PathLike[str], **options: Any) -> list[Path]:
    """Export ``ds`` (its split and label set) as ``fmt`` into folder ``out``.

    Parameters
    ----------
    ds
        The dataset; its split chooses the images and its label set the classes
        (native codes and names without one).
    fmt
        ``"geojson"`` (QuPath: one FeatureCollection per image, a ``detection`` per
        nucleus), ``"coco"`` (one file per dataset and split) or ``"hovernet-json"``
        (one file per image); the schemas are described in docs/tutorials/loading.md.
        For segmentation trainers: ``"pannuke"`` (PanNuke's fold layout) and
        ``"hovernet-patches"`` (HoVer-Net's extracted patches), both under a label set;
        see :mod:`nucdata.exports`.
    out
        Folder to write into (created if needed); each file is written atomically.
    **options
        For ``pannuke``: ``mpp``, ``size``, ``assume_mpp``; for ``hovernet-patches``:
        ``mpp``, ``win``, ``step``, ``assume_mpp``.

    Returns
    -------
    list of Path
        The files written.

    Raises
    ------
    InvalidArgumentError
        For an unknown format.
    """
    from nucdata.errors import InvalidArgumentError
    from nucdata.exports._segmentation import export_hovernet_patches, export_pannuke

    segmentation = {"pannuke": export_pannuke, "hovernet-patches": export_hovernet_patches}
    if fmt in segmentation:
        return segmentation[fmt](ds, Path(out), **options)
    writers = {"geojson": export_geojson, "coco": export_coco, "hovernet-json": export_hovernet}
    if fmt not in writers:
        raise InvalidArgumentError(f"unknown export format {fmt!r}; valid formats: {', '.join(FORMATS)}")
    if options:
        raise InvalidArgumentError(f"{fmt} export takes no options, got {sorted(options)}")
    return writers[fmt](ds, Path(out))
