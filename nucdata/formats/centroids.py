"""Centroid CSV: one row per nucleus, for segmenters and annotators that give points only.

Layout: UTF-8 comma-separated text whose **first row is a header** (required; names are
matched case-insensitively, surrounding spaces ignored, other columns ignored):

``x``, ``y`` (required)
    The nucleus's centre in pixels of the full image, **pixel-centre frame**: ``x`` the
    column and ``y`` the row of the pixel the centre falls on, the top-left pixel's
    centre at ``(0, 0)`` (add nothing to numpy/scikit-image indices; subtract 0.5 from
    QuPath's or ImageJ's corner-frame coordinates).
``id``
    An integer id, unique per image; default the row's position within its image (1, 2, ...).
``image``
    The image's name (file stem); without it every row belongs to one image named after
    the CSV file.
``label``
    The class: an integer code, or a class name (names get codes in sorted order); empty:
    none.

:func:`read_labels_csv` reads the companion labels CSV of ``prepare --custom``
(``image,id,label``: a class per nucleus id).

:func:`read_centroids_csv` returns one :class:`~nucdata.formats.Nuclei` per image;
:func:`write_centroids_csv` writes records in the same layout (``x``, ``y``, ``id``,
``image``, ``label``; the label as its class name where the record names it), atomically.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nucdata._util.atomic import atomic_write_text
from nucdata._util.limits import env_limit
from nucdata.errors import MalformedAnnotationError, SizeLimitError
from nucdata.formats._limits import JSON_ENV_VAR, MAX_JSON_BYTES, check_nuclei, existing_file
from nucdata.formats._record import Nuclei

__all__ = ["read_centroids_csv", "read_labels_csv", "write_centroids_csv"]

COLUMNS = ("x", "y", "id", "image", "label")


def read_centroids_csv(path: str | os.PathLike[str]) -> list[Nuclei]:
    """Read a centroid CSV (module docstring) into one record per image, in order of first appearance.

    Raises
    ------
    MalformedAnnotationError
        No header with ``x`` and ``y``, a value that is not a number, a repeated id; names
        the file, the line and the column.
    SizeLimitError
        More rows than ``NUCDATA_MAX_NUCLEI``, or a file above ``NUCDATA_MAX_JSON_BYTES``.
    """
    path = existing_file(path, "centroid CSV")
    limit = env_limit(JSON_ENV_VAR, MAX_JSON_BYTES)
    size = path.stat().st_size
    if limit is not None and size > limit:
        raise SizeLimitError(f"{path}: {size:,} bytes is more than the {int(limit):,} a centroid CSV may have; "
                             f"split it, or set {JSON_ENV_VAR} to a larger size (0: no limit).")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise MalformedAnnotationError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}).") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    names = [h.strip().lower() for h in header] if header else []
    if "x" not in names or "y" not in names:
        raise MalformedAnnotationError(
            f"{path}: line 1 must be a header naming the columns x and y (and optionally id, image, label); found "
            f"{header!r}. Add the header line 'x,y' (pixel-centre coordinates, see docs/formats.md).")
    col = {name: names.index(name) for name in COLUMNS if name in names}
    rows: dict[str, list[tuple[float, float, int | None, str | None, int]]] = {}
    default_image = path.stem
    count = 0
    for line, row in enumerate(reader, start=2):
        if not row or all(not v.strip() for v in row):
            continue
        count += 1
        if count % 65536 == 0:
            check_nuclei(count, path, "rows")

        def cell(name: str, row: list[str] = row) -> str:
            i = col[name]
            return row[i].strip() if i < len(row) else ""

        try:
            x, y = float(cell("x")), float(cell("y"))
        except ValueError:
            raise MalformedAnnotationError(f"{path}: line {line}: x={cell('x')!r}, y={cell('y')!r} are not "
                                           "numbers.") from None
        if not (np.isfinite(x) and np.isfinite(y)):
            raise MalformedAnnotationError(f"{path}: line {line}: x, y must be finite numbers.")
        nid = None
        if "id" in col and cell("id"):
            text_id = cell("id")
            if not (text_id.lstrip("-").isascii() and text_id.lstrip("-").isdigit() and len(text_id) < 19):
                raise MalformedAnnotationError(f"{path}: line {line}: id {text_id!r} is not an integer.")
            nid = int(text_id)
        image = cell("image") if "image" in col and cell("image") else default_image
        label = cell("label") if "label" in col else ""
        rows.setdefault(image, []).append((x, y, nid, label or None, line))
    check_nuclei(count, path, "rows")
    labels_text = [r[3] for per in rows.values() for r in per if r[3] is not None]
    numeric = all(t.lstrip("-").isascii() and t.lstrip("-").isdigit() and len(t) < 19 for t in labels_text)
    names_sorted = sorted(set(labels_text)) if not numeric else []
    code_of = {name: i for i, name in enumerate(names_sorted)}
    out = []
    for image, per in rows.items():
        given = [r[2] for r in per]
        if all(g is not None for g in given):
            ids = np.array(given, np.int64)
            if np.unique(ids).size != ids.size:
                seen: set[int] = set()
                for _x, _y, g, _, line in per:
                    if g in seen:
                        raise MalformedAnnotationError(f"{path}: line {line}: id {g} appears twice for image "
                                                       f"{image!r}; ids are unique per image.")
                    seen.add(g)  # type: ignore[arg-type]
        elif any(g is not None for g in given):
            line = next(r[4] for r in per if r[2] is None)
            raise MalformedAnnotationError(f"{path}: line {line}: no id, where other rows of image {image!r} have "
                                           "one; give every row an id or none.")
        else:
            ids = np.arange(1, len(per) + 1)
        if numeric:
            labels = np.array([int(r[3]) if r[3] is not None else -1 for r in per], np.int64)
            labels[labels < 0] = -1
            class_names: dict[int, str] = {}
        else:
            labels = np.array([code_of[r[3]] if r[3] is not None else -1 for r in per], np.int64)
            class_names = {i: name for name, i in code_of.items()}
        out.append(Nuclei(image=image, ids=ids, centroids=np.array([(r[0], r[1]) for r in per]).reshape(-1, 2),
                          labels=labels if labels_text else None, class_names=class_names if labels_text else {}))
    return out


def write_centroids_csv(path: str | os.PathLike[str], nuclei: Nuclei | Sequence[Nuclei]) -> Path:
    """Write records as a centroid CSV (columns ``x, y, id, image, label``), atomically; offsets are added."""
    records = [nuclei] if isinstance(nuclei, Nuclei) else list(nuclei)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for r in records:
        names = r.label_names()
        dx, dy = r.offset
        for i in range(len(r)):
            label = ""
            if r.labels is not None and r.labels[i] >= 0:
                label = names[i] if names[i] is not None else str(int(r.labels[i]))
            writer.writerow([repr(float(r.centroids[i, 0]) + dx), repr(float(r.centroids[i, 1]) + dy),
                             int(r.ids[i]), r.image, label])
    return atomic_write_text(path, buffer.getvalue())


def read_labels_csv(path: str | os.PathLike[str]) -> dict[tuple[str, int], str]:
    """A labels CSV: ``(image, id) -> label`` (class name or code as text; empty: none).

    Layout: a header naming ``image``, ``id`` and ``label`` (required, any order, other
    columns ignored), then one row per labelled nucleus: its image's stem, its id (the
    instance value, HoVer-Net key or GeoJSON ``nucdata_id`` / position), its class.

    Raises
    ------
    MalformedAnnotationError
        No header, an id that is not an integer, a nucleus labelled twice; names the line.
    SizeLimitError
        Above ``NUCDATA_MAX_JSON_BYTES`` or ``NUCDATA_MAX_NUCLEI`` rows.
    """
    path = existing_file(path, "labels CSV")
    limit = env_limit(JSON_ENV_VAR, MAX_JSON_BYTES)
    if limit is not None and path.stat().st_size > limit:
        raise SizeLimitError(f"{path}: larger than {int(limit):,} bytes; split it or set {JSON_ENV_VAR}.")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise MalformedAnnotationError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}).") from None
    rows = csv.reader(io.StringIO(text, newline=""))
    header = [h.strip().lower() for h in next(rows, [])]
    if not {"image", "id", "label"} <= set(header):
        raise MalformedAnnotationError(f"{path}: line 1 must be the header image,id,label (found {header}); add it.")
    col = {k: header.index(k) for k in ("image", "id", "label")}
    out: dict[tuple[str, int], str] = {}
    for line, row in enumerate(rows, start=2):
        if not row or all(not v.strip() for v in row):
            continue
        try:
            image, text_id, label = (row[col[k]].strip() for k in ("image", "id", "label"))
        except IndexError:
            raise MalformedAnnotationError(f"{path}: line {line} has fewer columns than the header.") from None
        if not (text_id.lstrip("-").isascii() and text_id.lstrip("-").isdigit() and len(text_id) < 19):
            raise MalformedAnnotationError(f"{path}: line {line}: id {text_id!r} is not an integer.")
        key = (image, int(text_id))
        if key in out:
            raise MalformedAnnotationError(f"{path}: line {line}: image {image!r} id {text_id} is labelled twice.")
        out[key] = label
        if len(out) % 65536 == 0:
            check_nuclei(len(out), path, "labels")
    return out
