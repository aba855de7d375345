"""The record every format reads into and writes from: :class:`Nuclei` (one image's or slide's nuclei).

Plain arrays and small dataclasses, nothing of a store or a dataset, so a segmenter's
output, a store's image and a classifier's predictions meet in one shape.

Frames: every coordinate of a :class:`Nuclei` is in the **pixel-centre frame** of the
full image (level 0 of a slide): the top-left pixel's centre is ``(0, 0)``, ``x`` the
column, ``y`` the row (the store's frame). ``offset`` says where the record's origin lies
in the image: writers add it to every coordinate (a region of a slide classified on its
own is written at its place in the slide); readers return ``offset == (0, 0)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from nucdata.errors import InvalidArgumentError
from nucdata.formats._geometry import polygon_centroid

__all__ = ["Nuclei", "SetLabels"]


@dataclass
class SetLabels:
    """Labels of nuclei under one label set (a classifier's output, or a dataset's labels).

    Attributes
    ----------
    name
        The label set (``"pannuke"``).
    classes
        Class names by id (``classes[k]`` is class ``k``).
    labels
        (N,) int64 class ids; -1 missing, -2 outside the set.
    probabilities
        (N,) float64 probability of each nucleus's label (NaN where there is none), or ``None``.
    colours
        RGB of each class (``colours[k]``), or ``None`` (writers pick none).
    candidates
        (N,) int64 candidate bitmasks (bit ``k``: class ``k``; bit ``len(classes)``: outside), or ``None``.
    outside
        (N,) float64 probability of "none of the set's classes", or ``None``.
    """

    name: str
    classes: Sequence[str]
    labels: np.ndarray
    probabilities: np.ndarray | None = None
    colours: Sequence[Sequence[int]] | None = None
    candidates: np.ndarray | None = None
    outside: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, np.int64).reshape(-1)
        n = self.labels.size
        for key in ("probabilities", "candidates", "outside"):
            value = getattr(self, key)
            if value is not None:
                arr = np.asarray(value, np.int64 if key == "candidates" else np.float64).reshape(-1)
                if arr.size != n:
                    raise InvalidArgumentError(f"SetLabels {self.name!r}: {key} has {arr.size} entries for {n} "
                                               "labels")
                setattr(self, key, arr)
        bad = (self.labels >= len(self.classes)) | (self.labels < -2)
        if bad.any():
            raise InvalidArgumentError(f"SetLabels {self.name!r}: label {int(self.labels[bad][0])} is not a class "
                                       f"id of its {len(self.classes)} classes (nor -1 missing, -2 outside)")

    def name_of(self, label: int) -> str | None:
        """The class name of ``label`` (``None`` for -1; ``"outside"`` for -2)."""
        if label >= 0:
            return str(self.classes[label])
        return "outside" if label == -2 else None

    def colour_of(self, label: int) -> list[int] | None:
        """The RGB of ``label``'s class, when the set has colours."""
        if label < 0 or self.colours is None:
            return None
        return [int(v) for v in self.colours[label]]


@dataclass
class Nuclei:
    """The nuclei of one image (or slide, or region of one), as plain arrays.

    Attributes
    ----------
    image
        The image's name (its file stem); files are matched to images by it.
    ids
        (N,) int64 ids, stable: the instance-map value, HoVer-Net's ``nuc`` key, the
        id a GeoJSON feature carries (``properties.nucdata_id``), a CSV's ``id``; else
        1..N in file order.
    centroids
        (N, 2) float64 (x, y), pixel-centre frame (module docstring).
    polygons
        Per nucleus its outline, ``(k, 2)`` float64 x, y in the pixel-centre frame (the
        outer ring of its largest part), or ``None`` for all (centroids only). An empty
        ``(0, 2)`` array marks a nucleus without an outline.
    holes
        Nucleus index -> further rings (holes, or other parts of a multi-part outline);
        a pixel belongs to the nucleus by the even-odd rule over all its rings.
    instance_map
        (H, W) integer map whose values are ``ids`` (0 background), or ``None``.
    labels
        (N,) int64 class codes as the file gives them (-1: none), or ``None``.
    class_names
        Code -> class name, for the codes ``labels`` uses (from the file, when it names them).
    class_colours
        Code -> RGB, when the file gives colours.
    probabilities
        (N,) float64 probability of each label (HoVer-Net's ``type_prob``), or ``None``.
    sets
        Labels under label sets (a classifier's output), by set name.
    measurements
        Extra per-nucleus numbers, by name ((N,) float64 each).
    areas
        (N,) float64 areas in px², or ``None`` (writers compute them from outlines).
    bboxes
        (N, 4) int64 ``(x0, y0, x1, y1)`` pixel indices, ``x1``/``y1`` exclusive, or ``None``.
    uuids
        (N,) the ids a file gave as text (QuPath's UUIDs), or ``None``.
    object_types
        (N,) what each nucleus was in the file (``"detection"``, ``"cell"``, ...), or ``None``.
    mpp
        µm per pixel, when known.
    offset
        ``(x, y)`` of the record's origin in the full image; writers add it.
    shape
        ``(height, width)`` of the image, when known.
    meta
        What else the file said (HoVer-Net's ``mag``, CellViT's ``wsi_metadata``, the
        object types a GeoJSON reader skipped...).
    """

    image: str
    ids: np.ndarray
    centroids: np.ndarray
    polygons: list[np.ndarray] | None = None
    holes: dict[int, list[np.ndarray]] = field(default_factory=dict)
    instance_map: np.ndarray | None = None
    labels: np.ndarray | None = None
    class_names: dict[int, str] = field(default_factory=dict)
    class_colours: dict[int, tuple[int, int, int]] = field(default_factory=dict)
    probabilities: np.ndarray | None = None
    sets: dict[str, SetLabels] = field(default_factory=dict)
    measurements: dict[str, np.ndarray] = field(default_factory=dict)
    areas: np.ndarray | None = None
    bboxes: np.ndarray | None = None
    uuids: np.ndarray | None = None
    object_types: np.ndarray | None = None
    mpp: float | None = None
    offset: tuple[float, float] = (0.0, 0.0)
    shape: tuple[int, int] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.ids = np.asarray(self.ids, np.int64).reshape(-1)
        n = self.ids.size
        self.centroids = np.asarray(self.centroids, np.float64).reshape(-1, 2)
        if self.centroids.shape[0] != n:
            raise InvalidArgumentError(f"Nuclei {self.image!r}: {self.centroids.shape[0]} centroids for {n} ids")
        if np.unique(self.ids).size != n:
            raise InvalidArgumentError(f"Nuclei {self.image!r}: ids are not unique")
        if self.polygons is not None:
            self.polygons = [np.asarray(p, np.float64).reshape(-1, 2) for p in self.polygons]
            if len(self.polygons) != n:
                raise InvalidArgumentError(f"Nuclei {self.image!r}: {len(self.polygons)} outlines for {n} ids")
        for key in ("labels", "probabilities", "areas", "uuids", "object_types"):
            value = getattr(self, key)
            if value is None:
                continue
            dtype = {"labels": np.int64, "probabilities": np.float64, "areas": np.float64}.get(key, object)
            arr = np.asarray(value, dtype).reshape(-1)
            if arr.size != n:
                raise InvalidArgumentError(f"Nuclei {self.image!r}: {key} has {arr.size} entries for {n} ids")
            setattr(self, key, arr)
        if self.bboxes is not None:
            self.bboxes = np.asarray(self.bboxes, np.int64).reshape(-1, 4)
            if self.bboxes.shape[0] != n:
                raise InvalidArgumentError(f"Nuclei {self.image!r}: {self.bboxes.shape[0]} boxes for {n} ids")
        self.measurements = {str(k): np.asarray(v, np.float64).reshape(-1) for k, v in self.measurements.items()}
        for key, values in self.measurements.items():
            if values.size != n:
                raise InvalidArgumentError(f"Nuclei {self.image!r}: measurement {key!r} has {values.size} entries "
                                           f"for {n} ids")
        for key, labels in self.sets.items():
            if labels.labels.size != n:
                raise InvalidArgumentError(f"Nuclei {self.image!r}: label set {key!r} has {labels.labels.size} "
                                           f"labels for {n} ids")
        self.offset = (float(self.offset[0]), float(self.offset[1]))

    def __len__(self) -> int:
        return int(self.ids.size)

    # -- derived ---------------------------------------------------------------------
    def rings(self, i: int) -> list[np.ndarray]:
        """Every ring of nucleus ``i`` (its outline, then :attr:`holes`); empty without an outline."""
        if self.polygons is None or not len(self.polygons[i]):
            return []
        return [self.polygons[i], *self.holes.get(i, [])]

    def outline_areas(self) -> np.ndarray:
        """(N,) area of each outline in px² (holes subtracted; NaN without an outline)."""
        out = np.full(len(self), np.nan)
        if self.polygons is None:
            return out
        for i in range(len(self)):
            rings = self.rings(i)
            if rings:
                out[i] = polygon_centroid(rings)[1]
        return out

    def label_names(self) -> list[str | None]:
        """Each nucleus's class name (``class_names`` of its code; ``None`` without a label or name)."""
        if self.labels is None:
            return [None] * len(self)
        return [self.class_names.get(int(code)) if code >= 0 else None for code in self.labels.tolist()]

    def shifted(self, dx: float, dy: float) -> Nuclei:
        """A copy whose coordinates are moved by ``(dx, dy)`` (offset unchanged; boxes rounded)."""
        polygons = None if self.polygons is None else [p + (dx, dy) for p in self.polygons]
        holes = {i: [r + (dx, dy) for r in rings] for i, rings in self.holes.items()}
        bboxes = None
        if self.bboxes is not None:
            bboxes = self.bboxes + np.array([round(dx), round(dy), round(dx), round(dy)], np.int64)
        return replace(self, centroids=self.centroids + (dx, dy), polygons=polygons, holes=holes, bboxes=bboxes)

    def select(self, keep: np.ndarray) -> Nuclei:
        """The nuclei where ``keep`` (a boolean mask or indices) holds, every field cut alike."""
        idx = np.arange(len(self))[keep]
        pos = {int(old): new for new, old in enumerate(idx)}

        def cut(a: Any) -> Any:
            return None if a is None else np.asarray(a)[idx]

        sets = {k: SetLabels(v.name, v.classes, v.labels[idx], cut(v.probabilities), v.colours,
                             cut(v.candidates), cut(v.outside)) for k, v in self.sets.items()}
        return replace(
            self, ids=self.ids[idx], centroids=self.centroids[idx],
            polygons=None if self.polygons is None else [self.polygons[i] for i in idx],
            holes={pos[i]: r for i, r in self.holes.items() if i in pos},
            labels=cut(self.labels), probabilities=cut(self.probabilities), sets=sets,
            measurements={k: v[idx] for k, v in self.measurements.items()}, areas=cut(self.areas),
            bboxes=cut(self.bboxes), uuids=cut(self.uuids), object_types=cut(self.object_types))


def names_to_codes(names: Sequence[str | None]) -> tuple[np.ndarray, dict[int, str]]:
    """Codes for class names as a file gives them: ``0..C-1`` in sorted order, -1 for none."""
    found = sorted({n for n in names if n is not None})
    code = {name: i for i, name in enumerate(found)}
    return (np.array([code[n] if n is not None else -1 for n in names], np.int64),
            {i: name for name, i in code.items()})
