"""COCO: one file per dataset and split; polygons (pixel-corner frame) where masks exist, else boxes."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from nucdata._util.paths import child_path
from nucdata.exports._common import nuclei_of, write_json
from nucdata.exports._common import outline as nucleus_outline

if TYPE_CHECKING:
    from nucdata.dataset import NucleusDataset

NAME = "coco"
DESCRIPTION = "one COCO file per dataset and split"
OPTIONS: tuple[str, ...] = ()

def write(ds: NucleusDataset, out: Path) -> list[Path]:
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
        inst, nuclei = nuclei_of(ds, i)
        for k, row, label in nuclei:
            x0, y0, x1, y1 = (int(v) for v in ds.store.column("nuclei", "bbox")[row])
            has_mask = bool(ds.store.column("nuclei", "has_mask")[row])
            outline = nucleus_outline(ds, inst, k, row) + 0.5
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
    path = child_path(out, f"{ds.name}_{split.replace('/', '-')}", ".json", source=ds.store.path / "manifest.json",
                      element="the dataset name and split")
    write_json(path, {
        "info": {"description": f"nucdata export of {ds.name} ({split})", "version": ds.manifest["converter_version"]},
        "licenses": [{"id": 0, "name": ds.manifest.get("licence", ""), "url": ds.manifest.get("homepage", "")}],
        "images": images, "annotations": annotations, "categories": categories,
    })
    return [path]
