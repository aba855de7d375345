"""What the format modules share: per-image nuclei with their outlines, class tables, JSON writing."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nucdata._util.atomic import atomic_write_json
from nucdata._util.geometry import box_outline, nucleus_outline
from nucdata._util.paths import child_path
from nucdata.errors import InvalidArgumentError
from nucdata.formats import Nuclei

if TYPE_CHECKING:  # type hints only: the dataset module is below this layer's callers
    from nucdata.dataset import NucleusDataset

__all__ = ["MARKER", "image_nuclei", "image_path", "nuclei_of", "outline", "set_classes", "write_json"]

#: the file every fold or patch folder of a segmentation export carries (what it holds)
MARKER = "export.json"


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as compact JSON, atomically."""
    atomic_write_json(path, data, indent=None)


def outline(ds: NucleusDataset, inst: np.ndarray, k: int, row: int) -> np.ndarray:
    """The nucleus's outline (x, y at pixel centres): its mask's contour, or its box without a mask."""
    bbox = np.asarray(ds.store.column("nuclei", "bbox")[row])
    if ds.store.column("nuclei", "has_mask")[row]:
        return nucleus_outline(inst, k, bbox)
    return box_outline(bbox)


def nuclei_of(ds: NucleusDataset, index: int) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
    """(instance map, [(k, row, label)]) for image ``index`` (k = 1-based instance value)."""
    rows = ds.store.nucleus_slice(index)
    inst = np.asarray(ds.store.instance_map(index))
    return inst, [(k + 1, row, int(ds.labels[row])) for k, row in enumerate(range(rows.start, rows.stop))]


def image_nuclei(ds: NucleusDataset, index: int) -> Nuclei:
    """Store image ``index`` as a :class:`nucdata.formats.Nuclei` record, for the format writers.

    Ids are the instance values ``1..K`` (the store's nucleus order), centroids, areas and
    boxes the store's, outlines the masks' contours (pixel-centre frame; a box for a
    nucleus without a mask), labels ``ds.labels`` with the names and colours of
    ``ds.classes``, µm/px the image's (``None`` when unknown).
    """
    inst, nuclei = nuclei_of(ds, index)
    rows = ds.store.nucleus_slice(index)
    mpp = float(ds.store.column("images", "mpp")[index])
    name = str(ds.store.column("images", "name")[index])
    classes = ds.classes
    return Nuclei(
        image=name, ids=np.arange(1, len(nuclei) + 1),
        centroids=np.asarray(ds.store.column("nuclei", "centroid")[rows], np.float64),
        polygons=[outline(ds, inst, k, row) for k, row, _ in nuclei],
        labels=np.array([label for _, _, label in nuclei], np.int64),
        class_names={k: n for k, (n, _c) in classes.items()},
        class_colours={k: tuple(int(v) for v in c) for k, (_n, c) in classes.items()},
        areas=np.asarray(ds.store.column("nuclei", "area")[rows], np.float64),
        bboxes=np.asarray(ds.store.column("nuclei", "bbox")[rows], np.int64),
        mpp=mpp if mpp == mpp and mpp > 0 else None, shape=inst.shape)


def set_classes(ds: NucleusDataset) -> list[tuple[int, str, list[int]]]:
    """``(id, name, rgb)`` of every class of ``ds``'s label set (segmentation exports need one)."""
    if ds.label_set is None:
        raise InvalidArgumentError(
            f"{ds.name}: segmentation exports write one channel or type id per class of a label "
            "set; pass --label-set (for example pannuke)."
        )
    return [(k, name, list(rgb)) for k, (name, rgb) in ds.classes.items()]


def image_path(ds: NucleusDataset, folder: Path, index: int, suffix: str) -> Path:
    """``folder / (<image name> + suffix)`` for store image ``index``; a name that would leave
    ``folder`` is an :class:`~nucdata.errors.UnsafeNameError` naming the store's column and row."""
    name = str(ds.store.column("images", "name")[index])
    return child_path(folder, name, suffix, source=ds.store.path / "images" / "name.npy", element=f"row {index}",
                      fix=f"the store is damaged or crafted: `nucdata verify {ds.name} --deep` lists its problems; "
                          f"rebuild it with `nucdata prepare {ds.name} --force`")
