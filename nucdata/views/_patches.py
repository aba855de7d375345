"""Patch-level labels: which classes occur in a window of an image, beside the store.

A patch label is one row ``(image, window, label set, flags)``: flag ``c`` is 1 when the
window holds a nucleus of class ``c`` of the label set, 0 when it holds none. Patch
labels are cheap (a pathologist ticks boxes per patch; slide archives are full of them)
and are what weakly supervised methods train on (Han et al., MedIA 2022: multi-label
patch classifiers, CAM pseudo-labels). :class:`PatchLabels` holds them as plain arrays;
they come from three places:

* :func:`derive_patch_labels` computes them from a dataset's own nucleus labels, on the
  grid ``ds.patches(size, mpp)`` cuts (the windows of :class:`nucdata.TileDataset`'s
  grid: side ``size`` output pixels, ``size * scale`` native pixels);
* :func:`read_patch_csv` reads a user's CSV (one row per patch);
* :func:`patch_labels_from_names` reads the flags written into file names, in the
  LUAD-HistoSeg form ``1031280-2300-27920-[1 0 0 1].png`` (space-separated) or the
  BCSS-WSSS form ``...+0[1101].png`` (contiguous).

Imported flags name *tissue* classes (LUAD-HistoSeg: tumour epithelium, necrosis,
lymphocyte, tumour-associated stroma). :func:`tissue_mapping` turns them into a label
set's nucleus classes with a table in the packaged tables' row form (``native`` a tissue
class, ``kind`` exact / ambiguous / outside / unknown, ``classes``, ``reason``,
``sources``), validated by the same rules (:func:`nucdata.labels.parse_rows`): a tissue
class *admits* the nucleus classes of its row (exact: one; ambiguous: the candidates;
outside: none of the set's; unknown: every class). A nucleus class is flagged 1 in a
patch when a tissue class present there admits it, 0 otherwise: a 0 is exact only as
far as the tissue classes cover the patch (closed world), which is what the patch
labels of those datasets claim.

Windows are ``(x0, y0, x1, y1)`` in native pixels, corner frame (the image's top-left
corner is ``(0, 0)``; a store centroid ``c``, pixel-centre frame, lies at ``c + 0.5``);
a nucleus is in a window when its centroid is (half-open: ``x0 <= c + 0.5 < x1``). A
row whose window is NaN covers its whole image (file-name imports: the image *is* the
patch).

**Annotations win.** :meth:`PatchLabels.reconcile` checks flags against a dataset's
nucleus labels: a labelled nucleus of class ``c`` in a patch whose flag ``c`` is 0 sets
the flag to 1 and counts one conflict (``conflicts``, per patch in ``conflict_rows``).

The sidecar format (:meth:`PatchLabels.to_csv`, :func:`read_patch_labels`) is the CSV
:func:`read_patch_csv` reads: ``dataset, image, label_set, x0, y0, x1, y1`` and one 0/1
column per class of the label set, named as the class.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from nucdata.errors import InvalidArgumentError, PatchLabelError
from nucdata.views._resample import image_scales
from nucdata.views._tiles import TileDataset

if TYPE_CHECKING:
    from nucdata.dataset import NucleusDataset

__all__ = ["PatchDataset", "PatchLabels", "derive_patch_labels", "parse_flag_name", "patch_labels_from_names",
           "read_patch_csv", "read_patch_labels", "tissue_mapping"]

#: the columns of a patch-label CSV before the class columns (``dataset``, ``label_set`` and
#: the window are optional in a user's file)
META_COLUMNS = ("dataset", "image", "label_set", "x0", "y0", "x1", "y1")

_LUAD = re.compile(r"^(?P<stem>.*?)-?\[(?P<flags>[01](?: [01])+)\]$")
_BCSS = re.compile(r"^(?P<stem>.*?)\[(?P<flags>[01]{2,})\]$")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


@dataclass
class PatchLabels:
    """Class-presence flags per patch under one label set.

    Attributes
    ----------
    label_set
        The label set the flags are over.
    classes
        Its class names, in id order (one flag column each).
    image
        str ``(P,)``: the image name of each patch (the store's ``images/name``).
    window
        float64 ``(P, 4)``: ``x0, y0, x1, y1`` in native pixels, corner frame; a NaN row
        is the whole image.
    flags
        uint8 ``(P, C)``: 1 the class occurs in the patch, 0 it does not.
    dataset
        The dataset the patches belong to (``None``: not said).
    source
        ``"derived"``, ``"csv"`` or ``"file names"``.
    conflicts
        Flags set from 0 to 1 because a nucleus annotation said so (:meth:`reconcile`).
    conflict_rows
        int64 ``(P,)``: conflicts per patch.
    complete
        bool ``(P,)`` for derived labels: every nucleus of the window had a label, so a
        0 is exact; ``None`` for imported ones.
    """

    label_set: str
    classes: tuple[str, ...]
    image: np.ndarray
    window: np.ndarray
    flags: np.ndarray
    dataset: str | None = None
    source: str = "derived"
    conflicts: int = 0
    conflict_rows: np.ndarray | None = None
    complete: np.ndarray | None = field(default=None)

    def __post_init__(self) -> None:
        self.classes = tuple(self.classes)
        self.image = np.asarray(self.image, dtype=str).reshape(-1)
        self.window = np.asarray(self.window, np.float64).reshape(-1, 4)
        self.flags = np.asarray(self.flags, np.uint8).reshape(-1, len(self.classes))
        n = self.image.shape[0]
        if self.window.shape[0] != n or self.flags.shape[0] != n:
            raise InvalidArgumentError(f"patch labels: {n} images, {self.window.shape[0]} windows and "
                                       f"{self.flags.shape[0]} flag rows; give one of each per patch")
        if self.flags.size and int(self.flags.max()) > 1:
            raise InvalidArgumentError("patch labels: flags must be 0 or 1")
        if self.conflict_rows is None:
            self.conflict_rows = np.zeros(n, np.int64)

    def __len__(self) -> int:
        return int(self.image.shape[0])

    def __repr__(self) -> str:
        return (f"PatchLabels({self.dataset!r}, label_set={self.label_set!r}, patches={len(self)}, "
                f"source={self.source!r}, conflicts={self.conflicts})")

    # -- where the nuclei are -----------------------------------------------------------
    def _windows_of(self, ds: NucleusDataset) -> tuple[np.ndarray, np.ndarray]:
        """Per patch: the store row of its image (-1 when the dataset has no such image) and
        its window with NaN (whole image) resolved."""
        names = [str(n) for n in np.asarray(ds.store.column("images", "name"))]
        index = {n: i for i, n in enumerate(names)}
        for i, n in enumerate(names):  # file-name imports: the name with its flag bracket, or without
            stem = _strip_flags(n)
            if stem != n:
                index.setdefault(stem, i)
        rows = np.asarray([index.get(str(n), index.get(_strip_flags(str(n)), -1)) for n in self.image], np.int64)
        height = np.asarray(ds.store.column("images", "height"), np.float64)
        width = np.asarray(ds.store.column("images", "width"), np.float64)
        window = self.window.copy()
        whole = np.isnan(window).any(1) & (rows >= 0)
        window[whole] = np.stack([np.zeros(whole.sum()), np.zeros(whole.sum()),
                                  width[rows[whole]], height[rows[whole]]], 1)
        return rows, window

    def members(self, ds: NucleusDataset) -> list[np.ndarray]:
        """Per patch, the store rows of the nuclei whose centroid lies in its window."""
        rows, window = self._windows_of(ds)
        centroid = np.asarray(ds.store.column("nuclei", "centroid"), np.float64) + 0.5
        out = []
        for p in range(len(self)):
            if rows[p] < 0:
                out.append(np.zeros(0, np.int64))
                continue
            span = ds.store.nucleus_slice(int(rows[p]))
            c = centroid[span]
            x0, y0, x1, y1 = window[p]
            inside = (c[:, 0] >= x0) & (c[:, 0] < x1) & (c[:, 1] >= y0) & (c[:, 1] < y1)
            out.append(np.flatnonzero(inside) + span.start)
        return out

    def unmatched(self, ds: NucleusDataset) -> list[str]:
        """Image names of patches the dataset has no image for."""
        rows, _ = self._windows_of(ds)
        return sorted({str(n) for n, r in zip(self.image, rows, strict=True) if r < 0})

    def _labels_of(self, ds: NucleusDataset) -> np.ndarray:
        from nucdata.labels import translate_store_labels

        labels, _ = translate_store_labels(ds.store, self.label_set)
        return np.asarray(labels, np.int64)

    def reconcile(self, ds: NucleusDataset) -> PatchLabels:
        """These flags with the dataset's nucleus annotations winning: a labelled nucleus of
        class ``c`` in a patch flagged 0 for ``c`` sets the flag, and is counted.

        Returns
        -------
        PatchLabels
            A new table; ``conflicts`` counts the flags set (plus those counted before),
            ``conflict_rows`` per patch.
        """
        labels = self._labels_of(ds)
        flags = self.flags.copy()
        per_row = self.conflict_rows.copy()
        for p, rows in enumerate(self.members(ds)):
            present = np.unique(labels[rows][labels[rows] >= 0])
            missing = present[flags[p, present] == 0]
            flags[p, missing] = 1
            per_row[p] += missing.size
        return replace(self, flags=flags, conflicts=int(per_row.sum()), conflict_rows=per_row,
                       dataset=self.dataset or ds.name)

    def allowed(self, ds: NucleusDataset) -> np.ndarray:
        """int64 bitmask per store nucleus of the classes its patches allow.

        A nucleus in several patches is allowed the classes every one of them flags (a
        flag 0 anywhere removes the class); a nucleus in none keeps every class
        (``(1 << C) - 1``). The outside bit is never set: flags say nothing about it.
        """
        every = (1 << len(self.classes)) - 1
        out = np.full(ds.store.n_nuclei, every, np.int64)
        weights = np.left_shift(np.int64(1), np.arange(len(self.classes), dtype=np.int64))
        bits = (self.flags.astype(np.int64) * weights).sum(1)
        for p, rows in enumerate(self.members(ds)):
            out[rows] &= bits[p]
        return out

    def covered(self, ds: NucleusDataset) -> np.ndarray:
        """bool per store nucleus: inside at least one patch."""
        out = np.zeros(ds.store.n_nuclei, bool)
        for rows in self.members(ds):
            out[rows] = True
        return out

    # -- the sidecar -------------------------------------------------------------------
    def to_csv(self, path: str | os.PathLike[str]) -> Path:
        """Write the table as CSV (``dataset, image, label_set, x0, y0, x1, y1, <classes>``), atomically."""
        from nucdata._util.atomic import atomic_write_text

        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow([*META_COLUMNS, *self.classes])
        for p in range(len(self)):
            window = ["" if np.isnan(v) else f"{v:.6g}" for v in self.window[p]]
            writer.writerow([self.dataset or "", self.image[p], self.label_set, *window,
                             *(str(int(f)) for f in self.flags[p])])
        path = Path(path)
        atomic_write_text(path, buffer.getvalue())
        return path

    def summary(self) -> dict[str, Any]:
        """Counts for reports: patches, flags set per class, conflicts."""
        return {"label_set": self.label_set, "dataset": self.dataset, "source": self.source, "patches": len(self),
                "flagged": {c: int(self.flags[:, k].sum()) for k, c in enumerate(self.classes)},
                "conflicts": int(self.conflicts)}


def _strip_flags(name: str) -> str:
    """An image name without its LUAD-HistoSeg / BCSS-WSSS flag bracket (unchanged without one)."""
    for pattern in (_LUAD, _BCSS):
        match = pattern.match(name)
        if match:
            return match.group("stem")
    return name


def _class_names(label_set: str) -> tuple[str, ...]:
    from nucdata.labels import label_set as get_label_set

    return tuple(get_label_set(label_set).names)


# --------------------------------------------------------------------------------------
# Derived from nucleus labels
# --------------------------------------------------------------------------------------
def grid_windows(ds: NucleusDataset, size: int, mpp: float | None = None, assume_mpp: float | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The windows of ``ds.patches(size, mpp)``'s grid: image positions ``(P,)`` and windows ``(P, 4)``.

    The grid of :class:`nucdata.TileDataset` with ``stride == size`` and padded edges, in
    native pixels (corner frame).
    """
    if int(size) != size or size < 1:
        raise InvalidArgumentError(f"patch size must be a positive integer, got {size!r}")
    scales = image_scales(ds, mpp, assume_mpp)
    grid = TileDataset([ds], size=int(size), mpp=mpp, assume_mpp=assume_mpp).grid
    positions = grid[:, 1].astype(np.int64)
    scale = scales[positions].astype(np.float64)
    ty, tx = grid[:, 2].astype(np.float64), grid[:, 3].astype(np.float64)
    windows = np.stack([tx * scale, ty * scale, (tx + size) * scale, (ty + size) * scale], 1)
    return positions, windows.reshape(-1, 4)


def derive_patch_labels(ds: NucleusDataset, window: int = 256, label_set: str | None = None,
                        mpp: float | None = None, assume_mpp: float | None = None) -> PatchLabels:
    """Patch flags from a dataset's own nucleus labels, on the grid of ``ds.patches(window, mpp)``.

    Flag ``c`` of a patch is 1 when a nucleus whose centroid lies in the window has class
    ``c`` under ``label_set``; nuclei without a label (or with only a candidate set)
    flag nothing, and ``complete`` says which patches had none of those.

    Parameters
    ----------
    ds
        The dataset (its split chooses the images).
    window
        Patch side in pixels at ``mpp`` (native pixels without it).
    label_set
        The label set of the flags (default: the dataset's; one is needed).
    mpp
        Microns per pixel of the grid (``None``: native).
    assume_mpp
        µm/px for images that have none (see :func:`nucdata.views.image_scales`).

    Raises
    ------
    InvalidArgumentError
        Without a label set, or for a bad window.
    """
    from nucdata.labels import translate_store_labels

    label_set = label_set or ds.label_set
    if label_set is None:
        raise InvalidArgumentError(f"{ds.name}: patch flags need a label set; pass label_set= or load the "
                                   "dataset with label_set=...")
    classes = _class_names(label_set)
    labels, _ = translate_store_labels(ds.store, label_set)
    labels = np.asarray(labels, np.int64)
    positions, windows = grid_windows(ds, window, mpp, assume_mpp)
    names = np.asarray(ds.store.column("images", "name"))
    image_rows = np.asarray(ds.indices, np.int64)[positions]
    table = PatchLabels(label_set, classes, names[image_rows].astype(str), windows,
                        np.zeros((positions.size, len(classes)), np.uint8), dataset=ds.name, source="derived")
    flags = table.flags
    complete = np.ones(len(table), bool)
    for p, rows in enumerate(table.members(ds)):
        own = labels[rows]
        flags[p, np.unique(own[own >= 0])] = 1
        complete[p] = bool((own != -1).all())
    table.complete = complete
    return table


# --------------------------------------------------------------------------------------
# Imported: tissue classes to nucleus classes
# --------------------------------------------------------------------------------------
def tissue_mapping(table: Mapping[str, Any] | str | os.PathLike[str], label_set: str | None = None,
                   tissue_classes: Sequence[str] | None = None) -> tuple[tuple[str, ...], np.ndarray, str]:
    """Validate a table from tissue classes to a label set's nucleus classes.

    The table is a dict (or a JSON file) in the packaged tables' form::

        {"label_set": "pannuke",
         "tissue_classes": ["TE", "NEC", "LYM", "TAS"],
         "sources": {"han2022": "Han et al., MedIA 2022"},
         "rows": [{"native": "TE", "kind": "ambiguous", "classes": ["neoplastic", "epithelial"],
                   "reason": "tumour epithelium holds tumour and epithelial nuclei", "sources": ["han2022"]},
                  ...]}

    ``native`` is a tissue class (by name or position); each tissue class needs exactly
    one row, checked by :func:`nucdata.labels.parse_rows` (kinds, classes of the set, a
    reason, cited sources). A row *admits*: exact, its class; ambiguous, its candidates;
    outside, no class; unknown, every class.

    Returns
    -------
    tuple
        The tissue classes, bool ``(T, C)`` admits matrix, and the label set's name.

    Raises
    ------
    PatchLabelError
        A table that is not a JSON object, or whose tissue classes disagree with the
        ones the flags carry.
    LabelTableError
        A row that breaks the table rules (from :func:`nucdata.labels.parse_rows`).
    """
    from nucdata.labels import OUTSIDE_NAME, parse_rows, table_sources
    from nucdata.labels import label_set as get_label_set

    where = "tissue mapping"
    if not isinstance(table, Mapping):
        where = str(table)
        try:
            table = json.loads(Path(table).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise PatchLabelError(f"{where}: not a readable JSON tissue mapping ({exc}); write it as "
                                  "{label_set, tissue_classes, sources, rows}") from exc
        if not isinstance(table, Mapping):
            raise PatchLabelError(f"{where}: the tissue mapping must be a JSON object")
    name = label_set or table.get("label_set")
    if not name:
        raise PatchLabelError(f"{where}: names no label set; add \"label_set\" or pass label_set=")
    if label_set and table.get("label_set") and str(table["label_set"]).lower() != str(label_set).lower():
        raise PatchLabelError(f"{where}: maps into {table['label_set']!r}, not {label_set!r}")
    target = get_label_set(str(name))
    tissues = tuple(str(t) for t in (table.get("tissue_classes") or tissue_classes or ()))
    if not tissues:
        raise PatchLabelError(f"{where}: lists no tissue classes; add \"tissue_classes\" in flag order")
    if tissue_classes is not None and tuple(tissue_classes) != tissues:
        raise PatchLabelError(f"{where}: tissue classes {list(tissues)} differ from the flags' "
                              f"{list(tissue_classes)}; list them in the flags' order")
    rows_data = []
    for i, r in enumerate(table.get("rows") or []):
        r = dict(r) if isinstance(r, Mapping) else r
        if isinstance(r, dict) and r.get("when"):
            raise PatchLabelError(f"{where}: row {i} is tissue-conditional (\"when\"); a tissue mapping has one "
                                  "unconditional row per tissue class")
        if isinstance(r, dict) and isinstance(r.get("native"), str):
            if r["native"] not in tissues:
                raise PatchLabelError(f"{where}: row {i} names tissue class {r['native']!r}, not one of "
                                      f"{', '.join(tissues)}")
            r["native"] = tissues.index(r["native"])
        rows_data.append(r)
    sources = {**table_sources(), **dict(table.get("sources") or {})}
    rows = parse_rows(f"{where} -> {target.name}", target, dict(enumerate(tissues)), rows_data, sources=sources)
    admits = np.zeros((len(tissues), len(target)), bool)
    lower = [n.lower() for n in target.names]
    for row in rows:
        if row.kind == "unknown":
            admits[row.native] = True
        for c in row.classes:
            if c != OUTSIDE_NAME:
                admits[row.native, lower.index(c.lower())] = True
    return tissues, admits, target.name


def _nucleus_flags(tissue_flags: np.ndarray, admits: np.ndarray) -> np.ndarray:
    """Nucleus-class flags from tissue flags: a class is flagged when a present tissue admits it."""
    return (tissue_flags.astype(np.int64) @ admits.astype(np.int64) > 0).astype(np.uint8)


# --------------------------------------------------------------------------------------
# Imported: file names
# --------------------------------------------------------------------------------------
def parse_flag_name(name: str, form: str = "auto") -> tuple[str, tuple[int, ...]]:
    """The stem and flags of a file name in the LUAD-HistoSeg or BCSS-WSSS convention.

    ``1031280-2300-27920-[1 0 0 1].png`` (LUAD-HistoSeg, space-separated) gives
    ``("1031280-2300-27920", (1, 0, 0, 1))``; ``TCGA-xx+0[1101].png`` (BCSS-WSSS,
    contiguous) gives ``("TCGA-xx+0", (1, 1, 0, 1))``. Folders and the image extension
    are dropped.

    Parameters
    ----------
    name
        A file name or path.
    form
        ``"luad"``, ``"bcss"`` or ``"auto"`` (either).

    Raises
    ------
    PatchLabelError
        A name with no flag bracket of that form, naming the name and the expected form.
    """
    if form not in ("auto", "luad", "bcss"):
        raise InvalidArgumentError(f"unknown flag-name form {form!r}; valid forms: 'auto', 'luad', 'bcss'")
    base = Path(str(name)).name
    stem = base[: -len(Path(base).suffix)] if Path(base).suffix.lower() in _IMAGE_SUFFIXES else base
    patterns = {"luad": (_LUAD,), "bcss": (_BCSS,), "auto": (_LUAD, _BCSS)}[form]
    for pattern in patterns:
        match = pattern.match(stem)
        if match:
            flags = tuple(int(f) for f in match.group("flags").replace(" ", ""))
            return match.group("stem"), flags
    expected = {"luad": "'<id>-[1 0 0 1].png' (LUAD-HistoSeg)", "bcss": "'<id>[1101].png' (BCSS-WSSS)",
                "auto": "'<id>-[1 0 0 1].png' (LUAD-HistoSeg) or '<id>[1101].png' (BCSS-WSSS)"}[form]
    raise PatchLabelError(f"{name}: no patch flags in the file name; expected {expected}, one 0/1 flag per "
                          "tissue class")


def patch_labels_from_names(names: Iterable[str | os.PathLike[str]] | str | os.PathLike[str],
                            mapping: Mapping[str, Any] | str | os.PathLike[str], label_set: str | None = None,
                            dataset: str | None = None, form: str = "auto") -> PatchLabels:
    """Patch labels from file names with flag brackets (LUAD-HistoSeg / BCSS-WSSS).

    Each file is one patch covering its whole image; its image name is the file name
    without the extension (a store image named without the bracket is found too, see
    :meth:`PatchLabels.members`).

    Parameters
    ----------
    names
        File names or paths, or a folder whose image files are read.
    mapping
        The tissue-class table (:func:`tissue_mapping`), whose ``tissue_classes`` are the
        flags' classes in bracket order.
    label_set
        The label set (default: the mapping's).
    dataset
        The dataset the patches belong to.
    form
        See :func:`parse_flag_name`.

    Raises
    ------
    PatchLabelError
        A name without flags, a flag count that is not the number of tissue classes, or
        an empty list.
    """
    if isinstance(names, (str, os.PathLike)) and Path(names).is_dir():
        folder = Path(names)
        names = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
        if not names:
            raise PatchLabelError(f"{folder}: no image files to read patch flags from")
    elif isinstance(names, (str, os.PathLike)):
        names = [names]
    names = [str(n) for n in names]
    if not names:
        raise PatchLabelError("no file names given to read patch flags from")
    tissues, admits, set_name = tissue_mapping(mapping, label_set)
    images, tissue_flags = [], []
    for n in names:
        _, flags = parse_flag_name(n, form)
        if len(flags) != len(tissues):
            raise PatchLabelError(f"{n}: {len(flags)} flags, but the mapping has {len(tissues)} tissue classes "
                                  f"({', '.join(tissues)}); give one flag per tissue class")
        base = Path(n).name
        images.append(base[: -len(Path(base).suffix)] if Path(base).suffix.lower() in _IMAGE_SUFFIXES else base)
        tissue_flags.append(flags)
    flags = _nucleus_flags(np.asarray(tissue_flags, np.uint8), admits)
    window = np.full((len(images), 4), np.nan)
    return PatchLabels(set_name, _class_names(set_name), np.asarray(images), window, flags, dataset=dataset,
                       source="file names")


# --------------------------------------------------------------------------------------
# Imported: CSV
# --------------------------------------------------------------------------------------
def read_patch_csv(path: str | os.PathLike[str], label_set: str | None = None,
                   mapping: Mapping[str, Any] | str | os.PathLike[str] | None = None,
                   dataset: str | None = None) -> PatchLabels:
    """Patch labels from a CSV: one row per patch, one 0/1 column per class.

    Columns: ``image`` (required); ``x0, y0, x1, y1`` (all four or none: native pixels,
    corner frame; none or empty cells = the whole image); ``dataset`` and ``label_set``
    (optional; a file may hold one of each); then one column per class. Without
    ``mapping`` the class columns are the label set's classes, every one; with it they
    are the mapping's tissue classes, turned into nucleus flags (:func:`tissue_mapping`).

    Raises
    ------
    PatchLabelError
        A missing file or column, an unknown or missing class column, a flag that is not
        0/1, a bad window, or rows naming several datasets or label sets; the message
        names the file and the line.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise PatchLabelError(f"{path}: cannot read the patch-label CSV ({exc})") from exc
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in (reader.fieldnames or [])]
    if "image" not in header:
        raise PatchLabelError(f"{path}: no 'image' column; the header must name image, optionally "
                              "x0,y0,x1,y1, dataset and label_set, then one 0/1 column per class")
    corner = [c for c in ("x0", "y0", "x1", "y1") if c in header]
    if corner and len(corner) != 4:
        raise PatchLabelError(f"{path}: window columns {corner}; give all of x0, y0, x1, y1 or none")
    flag_columns = [h for h in header if h not in META_COLUMNS]
    rows = list(reader)
    if not rows:
        raise PatchLabelError(f"{path}: no patch rows below the header")
    sets = {str(r.get("label_set") or "").strip() for r in rows} - {""}
    datasets = {str(r.get("dataset") or "").strip() for r in rows} - {""}
    if len(sets) > 1 or len(datasets) > 1:
        raise PatchLabelError(f"{path}: rows name several label sets {sorted(sets)} or datasets {sorted(datasets)}; "
                              "write one file per dataset and label set")
    if mapping is not None:
        tissues, admits, set_name = tissue_mapping(mapping, label_set or (sets.pop() if sets else None))
        expected = list(tissues)
    else:
        set_name = label_set or (sets.pop() if sets else None)
        if not set_name:
            raise PatchLabelError(f"{path}: names no label set; add a label_set column or pass label_set=")
        expected = list(_class_names(set_name))
    unknown = [c for c in flag_columns if c not in expected]
    missing = [c for c in expected if c not in flag_columns]
    if unknown or missing:
        raise PatchLabelError(f"{path}: class columns {flag_columns} do not match {expected} "
                              f"(unknown: {unknown}, missing: {missing}); name one column per class, as spelled "
                              f"in {'the mapping' if mapping is not None else repr(set_name)}")
    images, windows, flags = [], [], []
    for line, r in enumerate(rows, start=2):
        image = str(r.get("image") or "").strip()
        if r.get(None):
            raise PatchLabelError(f"{path}: line {line}: more cells than the header has columns")
        if not image:
            raise PatchLabelError(f"{path}: line {line}: empty 'image'")
        try:
            cells = [str(r.get(c) or "").strip() for c in corner]
            if corner and any(cells) and not all(cells):
                raise ValueError("some window cells empty")
            window = [float(v) for v in cells] if corner and all(cells) else [np.nan] * 4
            if not np.isnan(window[0]) and not (window[0] < window[2] and window[1] < window[3]):
                raise ValueError("x0 < x1 and y0 < y1 are needed")
        except ValueError as exc:
            raise PatchLabelError(f"{path}: line {line}: bad window ({exc}); write numbers x0 < x1, y0 < y1 in "
                                  "native pixels, or leave all four empty for the whole image") from exc
        row = []
        for c in expected:
            cell = str(r.get(c) or "").strip()
            if cell not in ("0", "1"):
                raise PatchLabelError(f"{path}: line {line}: flag {c!r} is {cell!r}; write 0 or 1")
            row.append(int(cell))
        images.append(image)
        windows.append(window)
        flags.append(row)
    flags_array = np.asarray(flags, np.uint8)
    if mapping is not None:
        flags_array = _nucleus_flags(flags_array, admits)
    return PatchLabels(set_name, _class_names(set_name), np.asarray(images), np.asarray(windows), flags_array,
                       dataset=dataset or (datasets.pop() if datasets else None), source="csv")


def read_patch_labels(path: str | os.PathLike[str]) -> PatchLabels:
    """Read a sidecar written by :meth:`PatchLabels.to_csv` (or a user's CSV naming its label set)."""
    return read_patch_csv(path)


# --------------------------------------------------------------------------------------
# ds.patches(size, mpp)
# --------------------------------------------------------------------------------------
class PatchDataset(torch.utils.data.Dataset):
    """Grid patches of one dataset with their class flags: ``ds.patches(size, mpp)``.

    Each item is a :class:`nucdata.TileDataset` grid tile (``image``, ``instance_map``,
    ``centroids``, ``labels``, ... of the nuclei with a mask) plus:

    ``flags``            uint8 (C,): the patch's flags (its window's row of ``labels``;
                         the smallest window holding the tile's centre when several do)
    ``flags_known``      bool: some row of the table covers this tile
    ``patch``            int: that row (-1 when none)
    ``point_centroids``  float32 (M, 2): every nucleus whose centroid lies in the tile,
                         masked or only a point (CRCHisto), in tile pixel coordinates
    ``point_labels``, ``point_candidates``, ``point_index``, ``point_has_mask``
                         their labels, candidates, store rows and whether they have a mask

    Use :meth:`nucdata.NucleusDataset.patches` rather than the constructor.
    """

    def __init__(self, ds: NucleusDataset, size: int = 256, mpp: float | None = None,
                 labels: PatchLabels | None = None, label_set: str | None = None,
                 assume_mpp: float | None = None):
        self.dataset = ds
        self.tiles = TileDataset([ds], size=size, mpp=mpp, assume_mpp=assume_mpp)
        self.size, self.mpp = int(size), mpp
        if labels is None:
            labels = derive_patch_labels(ds, size, label_set, mpp, assume_mpp)
        self.labels = labels
        rows, window = labels._windows_of(ds)
        self._rows, self._window = rows, window
        self._area = (window[:, 2] - window[:, 0]) * (window[:, 3] - window[:, 1])
        self._centroid = np.asarray(ds.store.column("nuclei", "centroid"), np.float64)
        self._has_mask = np.asarray(ds.store.column("nuclei", "has_mask"), bool)

    def __len__(self) -> int:
        return len(self.tiles)

    def _patch_of(self, image_index: int, cx: float, cy: float) -> int:
        w = self._window
        hit = np.flatnonzero((self._rows == image_index) & (w[:, 0] <= cx) & (cx < w[:, 2])
                             & (w[:, 1] <= cy) & (cy < w[:, 3]))
        if hit.size == 0:
            return -1
        return int(hit[np.argmin(self._area[hit])])

    def __getitem__(self, i: int) -> dict[str, Any]:
        sample = self.tiles[i]
        scale, index = float(sample["scale"]), int(sample["image_index"])
        ox, oy = (float(v) for v in sample["origin"])
        side = self.size * scale
        patch = self._patch_of(index, ox + side / 2, oy + side / 2)
        flags = self.labels.flags[patch] if patch >= 0 else np.zeros(len(self.labels.classes), np.uint8)
        span = self.dataset.store.nucleus_slice(index)
        c = self._centroid[span] + 0.5
        inside = (c[:, 0] >= ox) & (c[:, 0] < ox + side) & (c[:, 1] >= oy) & (c[:, 1] < oy + side)
        rows = np.flatnonzero(inside) + span.start
        points = (self._centroid[rows] + 0.5 - np.array([ox, oy])) / scale - 0.5
        sample.update({
            "flags": torch.from_numpy(np.array(flags, np.uint8)),
            "flags_known": patch >= 0,
            "patch": patch,
            "point_centroids": torch.from_numpy(points.astype(np.float32)),
            "point_labels": torch.from_numpy(np.array(self.dataset.labels[rows], np.int64)),
            "point_candidates": torch.from_numpy(np.array(self.dataset.candidates[rows], np.int64)),
            "point_index": torch.from_numpy(rows.astype(np.int64)),
            "point_has_mask": torch.from_numpy(self._has_mask[rows].copy()),
        })
        return sample

    def __repr__(self) -> str:
        return (f"PatchDataset({self.dataset.name!r}; patches={len(self)}, size={self.size}, mpp={self.mpp}, "
                f"label_set={self.labels.label_set!r})")
