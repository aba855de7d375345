"""HoVer-Net JSON: the per-image file HoVer-Net's inference writes (``json/<image>.json``).

Layout (Graham et al. 2019, the HoVer-Net repository's ``infer`` output)::

    {"mag": 40,
     "nuc": {"1": {"bbox": [[rmin, cmin], [rmax, cmax]],
                   "centroid": [x, y],
                   "contour": [[x, y], ...],
                   "type": 2,
                   "type_prob": 0.93},
             ...}}

**Frame.** Pixel centres, as nucdata's records: HoVer-Net takes ``centroid`` from the
image moments of the instance's pixel indices and ``contour`` from OpenCV's contour
tracing, whose points are the (integer) positions of the instance's boundary pixels; so
no shift is applied either way. ``bbox`` is row first, ``rmax``/``cmax`` exclusive.

**Reading** (:func:`read_hovernet_json`). ``nuc`` keys are the nuclei's ids (integers;
other keys are kept as :attr:`~nucdata.formats.Nuclei.uuids` and the ids become 1..N);
``type`` is the class code (``null`` or a negative value: none), ``type_prob`` its
probability. HoVer-Net's own models write code 0 for "no label" (its ``type_info.json``
names it ``nolabe``); pass that file (``type_info=``: ``{"0": ["nolabe", [0, 0, 0]], ...}``)
to name the codes. ``mag`` is kept in ``meta``; it is an objective magnification, not a
pixel size, so no µm/px is inferred from it.

**Writing** (:func:`write_hovernet_json`, :class:`HoverNetWriter`, streamed): the same
layout. ``type`` is the class id under the label set ``classify_by`` (else the record's
own label code; -1 none, -2 outside) and ``type_prob`` its probability (the record's
``probabilities``; without any, 1.0 for a labelled nucleus, as an annotation is certain,
and ``null`` otherwise). With label sets, each nucleus also gets ``"type_sets": {set:
{"type", "type_name", "type_prob"}}``. ``contour`` is rounded to integer pixels as
HoVer-Net writes it; ``mag`` defaults to ``round(10 / mpp)`` (0.25 µm/px: 40). Offsets
are added to every coordinate.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nucdata.errors import InvalidArgumentError, MalformedAnnotationError
from nucdata.formats._geometry import polygon_centroid
from nucdata.formats._limits import check_nuclei, check_vertices, read_json
from nucdata.formats._record import Nuclei
from nucdata.formats._stream import PublishOnExit, StreamedFile, dumps

__all__ = ["HoverNetWriter", "read_hovernet_json", "write_hovernet_json"]


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and bool(np.isfinite(value))


def _pairs(value: Any, path: Path, where: str) -> np.ndarray:
    if not isinstance(value, list):
        raise MalformedAnnotationError(f"{path}: {where} is not a list of [x, y] pairs; export the JSON again.")
    check_vertices(len(value), path, where)
    if not all(isinstance(p, list) and len(p) >= 2 and _number(p[0]) and _number(p[1]) for p in value):
        raise MalformedAnnotationError(f"{path}: {where} holds an entry that is not [x, y] numbers; export the "
                                       "JSON again.")
    return np.array([p[:2] for p in value], np.float64).reshape(-1, 2)


def _type_info(type_info: str | os.PathLike[str] | dict | None) -> tuple[dict[int, str], dict[int, tuple]]:
    if type_info is None:
        return {}, {}
    data = type_info if isinstance(type_info, dict) else read_json(type_info, "HoVer-Net type_info.json")
    names: dict[int, str] = {}
    colours: dict[int, tuple] = {}
    if not isinstance(data, dict):
        raise MalformedAnnotationError(f"{type_info}: a type_info.json maps codes to [name, [r, g, b]]; found a "
                                       f"JSON {type(data).__name__}.")
    for key, value in data.items():
        try:
            code = int(key)
        except (TypeError, ValueError):
            raise MalformedAnnotationError(f"{type_info}: key {key!r} is not an integer type code.") from None
        if isinstance(value, list) and value and isinstance(value[0], str):
            names[code] = value[0]
            if len(value) > 1 and isinstance(value[1], list) and len(value[1]) >= 3:
                colours[code] = tuple(int(v) for v in value[1][:3])
        elif isinstance(value, str):
            names[code] = value
        else:
            raise MalformedAnnotationError(f"{type_info}: type {key}: expected [name, [r, g, b]], found "
                                           f"{str(value)[:60]}.")
    return names, colours


def read_hovernet_json(path: str | os.PathLike[str], *, type_info: str | os.PathLike[str] | dict | None = None,
                       image: str | None = None) -> Nuclei:
    """Read one HoVer-Net JSON file (module docstring: layout and frame).

    Parameters
    ----------
    path
        The ``.json`` file.
    type_info
        HoVer-Net's ``type_info.json`` (a path or its parsed dict), naming the type codes.
    image
        The image's name; default the file's stem.

    Raises
    ------
    MalformedAnnotationError
        Not HoVer-Net's layout, or a nucleus without a usable centroid or contour.
    SizeLimitError
        Above ``NUCDATA_MAX_JSON_BYTES``, ``NUCDATA_MAX_NUCLEI`` or ``NUCDATA_MAX_VERTICES``.
    """
    path = Path(path)
    data = read_json(path, "HoVer-Net JSON")
    if not isinstance(data, dict) or not isinstance(data.get("nuc"), dict):
        raise MalformedAnnotationError(
            f"{path}: not a HoVer-Net JSON file (an object with 'nuc': {{id: {{bbox, centroid, contour, type, "
            "type_prob}}}}); found " + (f"keys {sorted(data)[:5]}" if isinstance(data, dict) else
                                        f"a JSON {type(data).__name__}") + ".")
    entries = list(data["nuc"].items())
    check_nuclei(len(entries), path)
    n = len(entries)
    centroids = np.zeros((n, 2))
    polygons: list[np.ndarray] = []
    bboxes = np.zeros((n, 4), np.int64)
    have_boxes = True
    labels = np.full(n, -1, np.int64)
    probs = np.full(n, np.nan)
    keys: list[str] = []
    for i, (key, nuc) in enumerate(entries):
        where = f"nuc[{key!r}]"
        if not isinstance(nuc, dict):
            raise MalformedAnnotationError(f"{path}: {where} is not an object; export the JSON again.")
        keys.append(str(key))
        contour = _pairs(nuc["contour"], path, f"{where}.contour") if nuc.get("contour") is not None \
            else np.zeros((0, 2))
        polygons.append(contour)
        c = nuc.get("centroid")
        if isinstance(c, list) and len(c) >= 2 and _number(c[0]) and _number(c[1]):
            centroids[i] = (float(c[0]), float(c[1]))
        elif len(contour):
            centroids[i] = polygon_centroid([contour])[0]
        else:
            raise MalformedAnnotationError(f"{path}: {where} has neither a centroid [x, y] nor a contour; export "
                                           "the JSON again.")
        box = nuc.get("bbox")
        if (isinstance(box, list) and len(box) == 2 and all(isinstance(b, list) and len(b) == 2 for b in box)
                and all(_number(v) for b in box for v in b)):
            (r0, c0), (r1, c1) = box
            bboxes[i] = (int(c0), int(r0), int(c1), int(r1))
        else:
            have_boxes = False
        t = nuc.get("type")
        if t is not None:
            if not _number(t) or float(t) != int(t):
                raise MalformedAnnotationError(f"{path}: {where}.type is {t!r}, not an integer class code.")
            labels[i] = int(t) if int(t) >= 0 else -1
        p = nuc.get("type_prob")
        if p is not None:
            if not _number(p):
                raise MalformedAnnotationError(f"{path}: {where}.type_prob is {p!r}, not a number.")
            probs[i] = float(p)
    int_keys = [k.strip() for k in keys]
    numeric = all(k.lstrip("-").isascii() and k.lstrip("-").isdigit() and len(k) < 19 for k in int_keys)
    ids = np.array([int(k) for k in int_keys], np.int64) if numeric and n else np.arange(1, n + 1)
    if numeric and np.unique(ids).size != n:
        ids = np.arange(1, n + 1)
        numeric = False
    names, colours = _type_info(type_info)
    stem = path.name[:-5] if path.name.lower().endswith(".json") else path.stem
    return Nuclei(
        image=image if image is not None else stem, ids=ids, centroids=centroids,
        polygons=polygons if any(len(p) for p in polygons) else None, labels=labels,
        class_names={c: names[c] for c in sorted(set(labels.tolist()) | set(names)) if c in names},
        class_colours=colours, probabilities=probs if np.isfinite(probs).any() else None,
        bboxes=bboxes if have_boxes and n else None,
        uuids=None if numeric else np.array(keys, dtype=object), meta={"mag": data.get("mag")})


# -- writing ---------------------------------------------------------------------------
def _box(nuclei: Nuclei, i: int, dx: int, dy: int) -> list[list[int]]:
    if nuclei.bboxes is not None:
        x0, y0, x1, y1 = (int(v) for v in nuclei.bboxes[i])
    else:
        pts = nuclei.polygons[i] if nuclei.polygons is not None and len(nuclei.polygons[i]) else \
            nuclei.centroids[i:i + 1]
        x0, y0 = (int(np.floor(v + 0.5)) for v in pts.min(axis=0))
        x1, y1 = (int(np.ceil(v - 0.5)) + 1 for v in pts.max(axis=0))
    return [[y0 + dy, x0 + dx], [y1 + dy, x1 + dx]]


def _integer_contour(contour: np.ndarray, centre: np.ndarray, dx: float, dy: float) -> list[list[int]]:
    """Integer pixel positions for a contour, as HoVer-Net writes them: each vertex rounded to
    the nearest pixel centre, and a vertex half-way between two centres (a mask's traced
    outline) to the one on the nucleus's side (towards its centroid), so the contour runs
    through the nucleus's boundary pixels and rasterises back to its mask."""
    if not len(contour):
        return []
    v = np.asarray(contour, np.float64)
    half = np.isclose(np.abs(v - np.floor(v)), 0.5)
    towards = np.where(v > centre[None, :], np.floor(v), np.ceil(v))
    snapped = np.where(half, towards, np.rint(v))
    out = snapped + (round(dx), round(dy))
    keep = np.ones(len(out), bool)
    keep[1:] = (np.diff(out, axis=0) != 0).any(axis=1)  # drop repeats made by the rounding
    return out[keep].astype(np.int64).tolist()


def entry(nuclei: Nuclei, i: int, classify_by: str | None = None) -> dict[str, Any]:
    """The ``nuc`` entry of nucleus ``i`` (see the module docstring)."""
    dx, dy = nuclei.offset
    ix, iy = int(round(dx)), int(round(dy))
    chosen = nuclei.sets.get(classify_by) if classify_by is not None else None
    if chosen is not None:
        label = int(chosen.labels[i])
        prob = chosen.probabilities[i] if chosen.probabilities is not None else np.nan
    else:
        label = int(nuclei.labels[i]) if nuclei.labels is not None else -1
        prob = nuclei.probabilities[i] if nuclei.probabilities is not None else np.nan
    if nuclei.probabilities is None and chosen is None:
        type_prob = 1.0 if label >= 0 else None
    else:
        type_prob = float(prob) if np.isfinite(prob) else None
    contour = nuclei.polygons[i] if nuclei.polygons is not None else np.zeros((0, 2))
    out: dict[str, Any] = {
        "bbox": _box(nuclei, i, ix, iy),
        "centroid": [float(nuclei.centroids[i, 0]) + dx, float(nuclei.centroids[i, 1]) + dy],
        "contour": _integer_contour(contour, nuclei.centroids[i], dx, dy),
        "type": label,
        "type_prob": type_prob,
    }
    if nuclei.sets:
        out["type_sets"] = {
            name: {"type": int(s.labels[i]), "type_name": s.name_of(int(s.labels[i])),
                   "type_prob": (float(s.probabilities[i]) if s.probabilities is not None
                                 and np.isfinite(s.probabilities[i]) else None)}
            for name, s in nuclei.sets.items()}
    return out


class HoverNetWriter(PublishOnExit):
    """Write one HoVer-Net JSON file record by record (a slide region by region); atomic on close.

    Parameters
    ----------
    path
        The file to write.
    mag
        The ``mag`` field (default: ``round(10 / mpp)`` of the first record with an mpp, else ``null``).
    classify_by
        The label set whose class ids are ``type`` (``None``: the record's own labels).
    """

    def __init__(self, path: str | os.PathLike[str], *, mag: float | None = None,
                 classify_by: str | None = None) -> None:
        self.mag = mag
        self.classify_by = classify_by
        self.count = 0
        self._seen: set[str] = set()
        self._file = StreamedFile(path)
        self._started = False

    @property
    def path(self) -> Path:
        return self._file.path

    def _start(self, nuclei: Nuclei) -> None:
        mag = self.mag
        if mag is None and nuclei.mpp is not None and nuclei.mpp == nuclei.mpp and nuclei.mpp > 0:
            mag = round(10.0 / nuclei.mpp)
        self._file.write('{"mag":' + dumps(mag) + ',"nuc":{')
        self._started = True

    def add(self, nuclei: Nuclei) -> int:
        """Append one record's nuclei; ids must be unique across the file."""
        if self.classify_by is not None and self.classify_by not in nuclei.sets:
            raise InvalidArgumentError(f"classify_by={self.classify_by!r}: the nuclei of {nuclei.image!r} carry no "
                                       f"such label set ({', '.join(nuclei.sets) or 'none'})")
        if not self._started:
            self._start(nuclei)
        for i in range(len(nuclei)):
            key = str(int(nuclei.ids[i]))
            if key in self._seen:
                raise InvalidArgumentError(f"{self.path}: nucleus id {key} written twice; give every region's "
                                           "nuclei ids unique in the slide")
            self._seen.add(key)
            self._file.write(("," if self.count else "") + dumps(key) + ":" + dumps(entry(nuclei, i, self.classify_by)))
            self.count += 1
        return len(nuclei)

    def close(self) -> Path:
        """Finish the object and publish the file."""
        if not self._file.closed:
            if not self._started:
                self._file.write('{"mag":' + dumps(self.mag) + ',"nuc":{')
            self._file.write("}}")
        return self._file.close()

    def abort(self, exc: BaseException | None = None) -> None:
        """Discard what was written (the destination keeps what it had)."""
        self._file.abort(exc)


def write_hovernet_json(path: str | os.PathLike[str], nuclei: Nuclei | Sequence[Nuclei], *,
                        mag: float | None = None, classify_by: str | None = None) -> Path:
    """Write one or more records as one HoVer-Net JSON file (published atomically).

    Parameters
    ----------
    path
        The file.
    nuclei
        A record, or several (regions of one slide, with their offsets).
    mag, classify_by
        As for :class:`HoverNetWriter`.

    Returns
    -------
    Path
        ``path``.
    """
    records = [nuclei] if isinstance(nuclei, Nuclei) else list(nuclei)
    with HoverNetWriter(path, mag=mag, classify_by=classify_by) as out:
        for record in records:
            out.add(record)
    return Path(path)
