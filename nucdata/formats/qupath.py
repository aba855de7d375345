"""QuPath GeoJSON: read what QuPath (0.2 to 0.5) and other tools export, write what QuPath imports.

**Frame.** QuPath's coordinates are pixels of the full-resolution image with the origin at
the **top-left corner** of the top-left pixel (the pixel-corner frame: pixel ``(row i,
column j)`` is the square ``[j, j+1) x [i, i+1)``, its centre at ``(j + 0.5, i + 0.5)``).
nucdata's records use the pixel-centre frame, so the reader subtracts 0.5 from every
coordinate and the writer adds it back (``frame="centre"`` reads files whose numbers are
already pixel centres, as CellViT's GeoJSON, see :mod:`nucdata.formats.cellvit`).

**Reading** (:func:`read_qupath`). The file is a ``FeatureCollection``, a single
``Feature``, or a JSON list of features (QuPath's "export as list"); features nested in
``childObjects`` are read too. What each feature is comes from ``properties.objectType``
(QuPath 0.4+), ``properties.object_type`` or ``properties.type`` (0.3), or a legacy
``id`` such as ``"PathDetectionObject"`` (0.2):

* ``detection`` (and a feature without a type but with a ``classification``): one nucleus,
  its ``geometry`` the outline (a ``MultiPolygon`` stays one nucleus with several parts;
  a ``Point`` is a nucleus without outline);
* ``cell``: one nucleus, outlined by the feature's ``nucleusGeometry`` (a member of the
  Feature beside ``geometry``; also accepted inside ``properties``), else by its cell
  ``geometry``;
* ``annotation``: one nucleus per polygon of its geometry (hand-drawn nuclei; a
  ``MultiPolygon`` annotation holds one nucleus per part, as CellViT writes a class's
  nuclei) and one per point of a ``Point``/``MultiPoint`` (QuPath's points tool);
* ``tile``, ``tma_core``, ``root``: not nuclei, skipped (counted in ``meta["skipped"]``).

Polygons keep their holes (later rings); a pixel belongs to a nucleus by the even-odd rule
over all its rings (:mod:`nucdata.formats._geometry`). The centroid is the outline's area
centroid (holes subtracted; a point's own position). The class is
``classification.name`` (or ``names`` joined with ``": "``) with ``color`` ``[r, g, b]``
or the older packed ``colorRGB``; codes are given to class names in sorted order
(:attr:`~nucdata.formats.Nuclei.class_names`). ``measurements`` is read as a dict (0.4+)
or QuPath's older list of ``{"name", "value"}``; a value that is not a number is NaN. Ids
are ``properties.nucdata_id`` where every feature has one (nucdata's writer puts it
there), else 1..N in file order; the features' own ``id`` (QuPath's UUIDs) are kept as
:attr:`~nucdata.formats.Nuclei.uuids`.

**Writing** (:func:`write_qupath`, :class:`QuPathWriter`, streamed): a
``FeatureCollection`` with one Feature per nucleus: a stable ``id`` (UUID 5 of the id
prefix and the nucleus id, or the record's own UUIDs), the outline as a closed
``Polygon`` (holes as further rings; a ``Point`` at the centroid for a nucleus without
one), and ``properties``: ``objectType: "detection"``, ``isLocked: false``,
``classification: {name, color}`` (the class under the label set chosen with
``classify_by``, else the record's own labels; none for a nucleus without one),
``nucdata_id``, and ``measurements`` as a dict: ``area_px`` (px²), ``Area µm^2``,
``Centroid X µm`` and ``Centroid Y µm`` (QuPath's names; corner frame, times µm/px) when
µm/px is known, ``probability`` (the record's label probability), ``<set>: probability``
and ``<set>: outside`` for every label set it carries, and the record's other
measurements. Every coordinate has the record's ``offset`` added (slides written region
by region). The file is published atomically.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nucdata.errors import InvalidArgumentError, MalformedAnnotationError
from nucdata.formats._geometry import polygon_area, polygon_centroid
from nucdata.formats._limits import check_nuclei, check_vertices, read_json
from nucdata.formats._record import Nuclei, names_to_codes
from nucdata.formats._stream import PublishOnExit, StreamedFile, dumps

__all__ = ["QuPathWriter", "read_qupath", "write_qupath"]

#: objectType of QuPath's legacy ``id`` values (0.2) and of the aliases it accepts
_LEGACY_TYPES = {"PathDetectionObject": "detection", "PathCellObject": "cell", "PathAnnotationObject": "annotation",
                 "PathTileObject": "tile", "TMACoreObject": "tma_core", "PathRootObject": "root"}
_NOT_NUCLEI = {"tile", "tma_core", "root"}
_MAX_DEPTH = 64
_MAX_MEASUREMENTS = 2000
FRAMES = ("corner", "centre")


# -- reading ---------------------------------------------------------------------------
def _features(data: Any, path: Path) -> list[tuple[int, dict]]:
    """Every feature of the file (with its position for messages), nested children included."""
    if isinstance(data, dict) and data.get("type") == "FeatureCollection" or (
            isinstance(data, dict) and "features" in data and "geometry" not in data):
        top = data.get("features")
        if not isinstance(top, list):
            raise MalformedAnnotationError(f"{path}: the FeatureCollection's 'features' is not a list; export the "
                                           "objects again as GeoJSON.")
    elif isinstance(data, dict) and ("geometry" in data or data.get("type") == "Feature"):
        top = [data]
    elif isinstance(data, list):
        top = data
    else:
        raise MalformedAnnotationError(
            f"{path}: not GeoJSON features (a FeatureCollection, a Feature or a list of features); found a JSON "
            f"{type(data).__name__}. Export the objects from QuPath with File > Export objects as GeoJSON.")
    out: list[tuple[int, dict]] = []
    stack = [(f, 0) for f in reversed(top)]
    while stack:
        feature, depth = stack.pop()
        if depth > _MAX_DEPTH:
            raise MalformedAnnotationError(f"{path}: childObjects nest deeper than {_MAX_DEPTH} levels; the file is "
                                           "damaged or crafted.")
        if not isinstance(feature, dict):
            raise MalformedAnnotationError(f"{path}: feature {len(out)} is a JSON {type(feature).__name__}, not an "
                                           "object; export the objects again as GeoJSON.")
        out.append((len(out), feature))
        check_nuclei(len(out), path, "features")
        children = feature.get("childObjects") or (feature.get("properties") or {}).get("childObjects")
        if isinstance(children, list):
            stack.extend((c, depth + 1) for c in reversed(children))
    return out


def object_type(feature: dict) -> str:
    """The QuPath object type of a feature (``"detection"``, ``"cell"``, ``"annotation"``...)."""
    props = feature.get("properties") if isinstance(feature.get("properties"), dict) else {}
    for key in ("objectType", "object_type", "type"):
        value = props.get(key)
        if isinstance(value, str) and value:
            return _LEGACY_TYPES.get(value, value.lower())
    legacy = feature.get("id")
    if isinstance(legacy, str) and legacy in _LEGACY_TYPES:
        return _LEGACY_TYPES[legacy]
    return "detection" if "classification" in props else "annotation"


def _point(value: Any, path: Path, where: str) -> tuple[float, float]:
    if (not isinstance(value, (list, tuple)) or len(value) < 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value[:2])):
        raise MalformedAnnotationError(f"{path}: {where}: a position is [x, y] numbers, found {str(value)[:60]}; "
                                       "export the objects again.")
    x, y = float(value[0]), float(value[1])
    if not (np.isfinite(x) and np.isfinite(y)):
        raise MalformedAnnotationError(f"{path}: {where}: position {value[:2]} is not finite; export again.")
    return x, y


def _ring_array(ring: Any, path: Path, where: str, shift: float) -> np.ndarray:
    if not isinstance(ring, list):
        raise MalformedAnnotationError(f"{path}: {where}: a ring is a list of positions, found "
                                       f"{type(ring).__name__}; export the objects again.")
    check_vertices(len(ring), path, where)
    pts = np.array([_point(p, path, where) for p in ring], np.float64).reshape(-1, 2) - shift
    if len(pts) > 1 and (pts[0] == pts[-1]).all():
        pts = pts[:-1]
    return pts


def _parts(geometry: Any, path: Path, where: str, shift: float) -> tuple[list[list[np.ndarray]], list[np.ndarray]]:
    """(polygon parts as lists of rings, points) of a GeoJSON geometry."""
    if geometry is None:
        return [], []
    if not isinstance(geometry, dict):
        raise MalformedAnnotationError(f"{path}: {where}: the geometry is not an object; export again.")
    kind, coords = geometry.get("type"), geometry.get("coordinates")
    if kind == "GeometryCollection":
        polys: list[list[np.ndarray]] = []
        points: list[np.ndarray] = []
        members = geometry.get("geometries")
        if not isinstance(members, list):
            raise MalformedAnnotationError(f"{path}: {where}: a GeometryCollection without 'geometries'.")
        for g in members[:_MAX_DEPTH * 1000]:
            p, q = _parts(g, path, where, shift)
            polys += p
            points += q
        return polys, points
    if kind == "Polygon":
        if not isinstance(coords, list):
            raise MalformedAnnotationError(f"{path}: {where}: Polygon coordinates are not a list.")
        return [[_ring_array(r, path, where, shift) for r in coords]], []
    if kind == "MultiPolygon":
        if not isinstance(coords, list) or not all(isinstance(p, list) for p in coords):
            raise MalformedAnnotationError(f"{path}: {where}: MultiPolygon coordinates are not a list of polygons.")
        check_nuclei(len(coords), path, f"polygons in {where}")
        return [[_ring_array(r, path, where, shift) for r in p] for p in coords], []
    if kind == "Point":
        return [], [np.array(_point(coords, path, where)) - shift]
    if kind == "MultiPoint":
        if not isinstance(coords, list):
            raise MalformedAnnotationError(f"{path}: {where}: MultiPoint coordinates are not a list.")
        check_nuclei(len(coords), path, f"points in {where}")
        return [], [np.array(_point(c, path, where)) - shift for c in coords]
    raise MalformedAnnotationError(
        f"{path}: {where}: geometry type {kind!r} is not a nucleus outline (Polygon, MultiPolygon, Point or "
        "MultiPoint); remove such objects or export detections only.")


def _classification(props: dict) -> tuple[str | None, tuple[int, int, int] | None]:
    c = props.get("classification")
    if isinstance(c, str):
        return c, None
    if not isinstance(c, dict):
        return None, None
    name = c.get("name")
    if not isinstance(name, str) and isinstance(c.get("names"), list):
        name = ": ".join(str(n) for n in c["names"])
    colour = None
    rgb = c.get("color", c.get("colour"))
    if isinstance(rgb, list) and len(rgb) >= 3 and all(isinstance(v, (int, float)) for v in rgb[:3]):
        colour = tuple(int(np.clip(v, 0, 255)) for v in rgb[:3])
    elif isinstance(c.get("colorRGB"), int):
        packed = c["colorRGB"] & 0xFFFFFF
        colour = ((packed >> 16) & 255, (packed >> 8) & 255, packed & 255)
    return (name if isinstance(name, str) and name else None), colour  # type: ignore[return-value]


def _measurements(props: dict) -> dict[str, float]:
    m = props.get("measurements")
    out: dict[str, float] = {}
    items: Iterable[tuple[Any, Any]] = ()
    if isinstance(m, dict):
        items = m.items()
    elif isinstance(m, list):
        items = ((e.get("name"), e.get("value")) for e in m if isinstance(e, dict))
    for name, value in items:
        if not isinstance(name, str):
            continue
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        out[name] = float(value) if ok else float("nan")
    return out


def _combined_centroid(parts: list[list[np.ndarray]]) -> np.ndarray:
    total, acc = 0.0, np.zeros(2)
    for rings in parts:
        c, a = polygon_centroid(rings)
        if a > 0:
            acc += c * a
            total += a
    if total > 0:
        return acc / total
    pts = [r for rings in parts for r in rings if len(r)]
    return np.concatenate(pts).mean(axis=0) if pts else np.array([np.nan, np.nan])


def read_qupath(path: str | os.PathLike[str], *, frame: str = "corner", image: str | None = None) -> Nuclei:
    """Read a QuPath GeoJSON file (module docstring: which objects are nuclei, frames, classes).

    Parameters
    ----------
    path
        The ``.geojson`` / ``.json`` file.
    frame
        ``"corner"`` (QuPath's, the default) or ``"centre"`` (coordinates already at pixel centres).
    image
        The image's name; default the file's stem.

    Returns
    -------
    Nuclei
        ``meta`` holds ``skipped`` (object type -> count of features that are not nuclei).

    Raises
    ------
    MalformedAnnotationError
        Not GeoJSON, or a feature with a broken geometry; names the file and the feature.
    SizeLimitError
        Above ``NUCDATA_MAX_JSON_BYTES``, ``NUCDATA_MAX_NUCLEI`` or ``NUCDATA_MAX_VERTICES``.
    """
    if frame not in FRAMES:
        raise InvalidArgumentError(f"frame={frame!r}: choose 'corner' (QuPath's) or 'centre'")
    path = Path(path)
    shift = 0.5 if frame == "corner" else 0.0
    data = read_json(path, "GeoJSON file")
    outlines: list[list[list[np.ndarray]]] = []  # per nucleus: its parts (lists of rings)
    points: list[np.ndarray | None] = []
    names: list[str | None] = []
    colours: dict[str, tuple[int, int, int]] = {}
    measures: list[dict[str, float]] = []
    uuids: list[str | None] = []
    given_ids: list[Any] = []
    types: list[str] = []
    skipped: dict[str, int] = {}
    for index, feature in _features(data, path):
        kind = object_type(feature)
        if kind in _NOT_NUCLEI:
            skipped[kind] = skipped.get(kind, 0) + 1
            continue
        props = feature.get("properties") if isinstance(feature.get("properties"), dict) else {}
        where = f"feature {index} ({kind}{', id ' + str(feature['id']) if 'id' in feature else ''})"
        geometry = feature.get("geometry")
        if kind == "cell":
            nucleus = feature.get("nucleusGeometry", props.get("nucleusGeometry"))
            if nucleus is not None:
                geometry = nucleus
        parts, pts = _parts(geometry, path, where, shift)
        name, colour = _classification(props)
        if name is not None and colour is not None:
            colours.setdefault(name, colour)
        m = _measurements(props)
        fid = feature.get("id")
        fid = str(fid) if isinstance(fid, (str, int)) and str(fid) not in _LEGACY_TYPES else None
        own_id = props.get("nucdata_id")
        pieces: list[tuple[list[list[np.ndarray]], np.ndarray | None]]
        if kind == "annotation":  # one nucleus per polygon and per point
            pieces = [([p], None) for p in parts] + [([], q) for q in pts]
        else:
            pieces = [(parts, pts[0] if pts and not parts else None)] if (parts or pts) else []
        for k, (nucleus_parts, point) in enumerate(pieces):
            outlines.append(nucleus_parts)
            points.append(point)
            names.append(name)
            measures.append(m)
            uuids.append(fid if len(pieces) == 1 else (f"{fid}/{k}" if fid else None))
            given_ids.append(own_id if len(pieces) == 1 else None)
            types.append(kind)
        check_nuclei(len(outlines), path)
    n = len(outlines)
    centroids = np.zeros((n, 2))
    polygons: list[np.ndarray] = []
    holes: dict[int, list[np.ndarray]] = {}
    for i, (parts, point) in enumerate(zip(outlines, points, strict=True)):
        if parts:
            centroids[i] = _combined_centroid(parts)
            areas = [polygon_area(rings[0]) if rings and len(rings[0]) else 0.0 for rings in parts]
            main = int(np.argmax(areas))
            rings = [r for r in parts[main] if len(r)]
            polygons.append(rings[0] if rings else np.zeros((0, 2)))
            extra = rings[1:] + [r for j, p in enumerate(parts) if j != main for r in p if len(r)]
            if extra:
                holes[i] = extra
        else:
            centroids[i] = point if point is not None else (np.nan, np.nan)
            polygons.append(np.zeros((0, 2)))
    ints = [v for v in given_ids if isinstance(v, int) and not isinstance(v, bool)]
    ids = np.array(ints, np.int64) if len(ints) == n and len(set(ints)) == n else np.arange(1, n + 1)
    labels, class_names = names_to_codes(names)
    keys = sorted({k for m in measures for k in m})
    if len(keys) > _MAX_MEASUREMENTS:
        raise MalformedAnnotationError(f"{path}: {len(keys)} distinct measurement names, more than "
                                       f"{_MAX_MEASUREMENTS}; the file is damaged or crafted.")
    measurements = {k: np.array([m.get(k, np.nan) for m in measures]) for k in keys}
    has_outline = any(len(p) for p in polygons)
    return Nuclei(
        image=image if image is not None else _stem(path), ids=ids, centroids=centroids,
        polygons=polygons if has_outline else None, holes=holes, labels=labels, class_names=class_names,
        class_colours={code: colours[name] for code, name in class_names.items() if name in colours},
        measurements=measurements, uuids=np.array(uuids, dtype=object) if n else None,
        object_types=np.array(types, dtype=object) if n else None, meta={"skipped": skipped, "frame": frame})


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".geojson", ".json"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


# -- writing ---------------------------------------------------------------------------
def _closed(ring: np.ndarray, dx: float, dy: float, decimals: int) -> list[list[float]]:
    pts = np.round(np.asarray(ring, np.float64) + (dx, dy), decimals).tolist()
    if pts and pts[0] != pts[-1]:
        pts.append(pts[0])
    return pts


class QuPathWriter(PublishOnExit):
    """Write a QuPath GeoJSON ``FeatureCollection`` record by record; published atomically on close.

    Parameters
    ----------
    path
        The file to write.
    classify_by
        The label set whose class names the ``classification`` (one of each record's
        :attr:`~nucdata.formats.Nuclei.sets`); ``None``: the record's own labels.
    id_prefix
        Prefix of the stable UUIDs (``uuid5(URL, f"{id_prefix}/{id}")``); default the
        record's image name.
    decimals
        Decimals of the coordinates.

    Examples
    --------
    >>> with QuPathWriter("slide.geojson", classify_by="pannuke") as out:   # doctest: +SKIP
    ...     for region in regions:
    ...         out.add(region)
    """

    def __init__(self, path: str | os.PathLike[str], *, classify_by: str | None = None,
                 id_prefix: str | None = None, decimals: int = 2) -> None:
        self.classify_by = classify_by
        self.id_prefix = id_prefix
        self.decimals = int(decimals)
        self.count = 0
        self._file = StreamedFile(path)
        self._file.write('{"type":"FeatureCollection","features":[')

    @property
    def path(self) -> Path:
        return self._file.path

    def add(self, nuclei: Nuclei) -> int:
        """Append the features of one record; return how many were written."""
        if self.classify_by is not None and self.classify_by not in nuclei.sets:
            raise InvalidArgumentError(f"classify_by={self.classify_by!r}: the nuclei of {nuclei.image!r} carry no "
                                       f"such label set ({', '.join(nuclei.sets) or 'none'})")
        for feature in features(nuclei, classify_by=self.classify_by, id_prefix=self.id_prefix,
                                decimals=self.decimals):
            self._file.write(("," if self.count else "") + dumps(feature))
            self.count += 1
        return len(nuclei)

    def close(self) -> Path:
        """Finish the collection and publish the file."""
        if not self._file.closed:
            self._file.write("]}")
        return self._file.close()

    def abort(self, exc: BaseException | None = None) -> None:
        """Discard what was written (the destination keeps what it had)."""
        self._file.abort(exc)


def features(nuclei: Nuclei, *, classify_by: str | None = None, id_prefix: str | None = None,
             decimals: int = 2) -> Iterable[dict[str, Any]]:
    """The QuPath Features of one record, one per nucleus (see the module docstring)."""
    dx, dy = nuclei.offset
    cx, cy = dx + 0.5, dy + 0.5  # pixel centre -> pixel corner, at the record's place
    prefix = nuclei.image if id_prefix is None else id_prefix
    areas = nuclei.areas if nuclei.areas is not None else nuclei.outline_areas()
    chosen = nuclei.sets.get(classify_by) if classify_by is not None else None
    mpp = nuclei.mpp if nuclei.mpp is not None and nuclei.mpp > 0 else None
    for i in range(len(nuclei)):
        nid = int(nuclei.ids[i])
        rings = [r for r in nuclei.rings(i) if len(np.unique(np.round(r, decimals), axis=0)) >= 3]
        if rings and rings[0] is nuclei.rings(i)[0]:  # an outline with an area (else its centroid)
            geometry = {"type": "Polygon", "coordinates": [_closed(r, cx, cy, decimals) for r in rings]}
        else:
            x, y = nuclei.centroids[i]
            geometry = {"type": "Point", "coordinates": [round(float(x) + cx, decimals), round(float(y) + cy, decimals)]}
        props: dict[str, Any] = {"objectType": "detection", "isLocked": False}
        name, colour = None, None
        if chosen is not None:
            label = int(chosen.labels[i])
            if label >= 0:
                name, colour = chosen.name_of(label), chosen.colour_of(label)
        elif nuclei.labels is not None and nuclei.labels[i] >= 0:
            code = int(nuclei.labels[i])
            name = nuclei.class_names.get(code)
            rgb = nuclei.class_colours.get(code)
            colour = [int(v) for v in rgb] if rgb is not None else None
        if name is not None:
            props["classification"] = {"name": name, **({"color": colour} if colour is not None else {})}
        measurements: dict[str, Any] = {}
        area = areas[i] if areas is not None else np.nan
        if np.isfinite(area):
            measurements["area_px"] = int(area) if float(area).is_integer() else float(area)
            if mpp:
                measurements["Area µm^2"] = float(area) * mpp * mpp
        if mpp:
            measurements["Centroid X µm"] = (float(nuclei.centroids[i, 0]) + cx) * mpp
            measurements["Centroid Y µm"] = (float(nuclei.centroids[i, 1]) + cy) * mpp
        if nuclei.probabilities is not None and np.isfinite(nuclei.probabilities[i]):
            measurements["probability"] = float(nuclei.probabilities[i])
        for set_name, labels in nuclei.sets.items():
            if labels.probabilities is not None and np.isfinite(labels.probabilities[i]):
                measurements[f"{set_name}: probability"] = float(labels.probabilities[i])
            if labels.outside is not None and np.isfinite(labels.outside[i]):
                measurements[f"{set_name}: outside"] = float(labels.outside[i])
            elif labels.labels[i] == -2:
                measurements[f"{set_name}: outside"] = 1.0
        for key, values in nuclei.measurements.items():
            if np.isfinite(values[i]):
                measurements[key] = float(values[i])
        props["measurements"] = measurements
        props["nucdata_id"] = nid
        fid = (str(nuclei.uuids[i]) if nuclei.uuids is not None and nuclei.uuids[i]
               else str(uuid.uuid5(uuid.NAMESPACE_URL, f"{prefix}/{nid}")))
        yield {"type": "Feature", "id": fid, "geometry": geometry, "properties": props}


def write_qupath(path: str | os.PathLike[str], nuclei: Nuclei | Sequence[Nuclei], *,
                 classify_by: str | None = None, id_prefix: str | None = None, decimals: int = 2) -> Path:
    """Write one or more records (regions of one slide, with their offsets) as one QuPath GeoJSON file.

    Parameters
    ----------
    path
        The file (published atomically).
    nuclei
        A record, or several (each with its ``offset``).
    classify_by, id_prefix, decimals
        As for :class:`QuPathWriter`.

    Returns
    -------
    Path
        ``path``.
    """
    records = [nuclei] if isinstance(nuclei, Nuclei) else list(nuclei)
    with QuPathWriter(path, classify_by=classify_by, id_prefix=id_prefix, decimals=decimals) as out:
        for record in records:
            out.add(record)
    return Path(path)
