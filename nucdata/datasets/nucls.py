"""NuCLS: per field of view (FOV) an RGB PNG, a mask PNG and a CSV of annotations.

Layout (datasets.md §5.3), found anywhere under the folder::

    <root>/rgb/<stem>.png        (``rgbs/`` in older copies)
    <root>/csv/<stem>.csv        + ALL_FOV_LOCATIONS.csv (not a FOV; skipped)
    <root>/mask/<stem>.png       not read (see below)
    <root>/train_test_splits/fold_<k>_{train,test}.csv

Rules (recorded in every manifest under ``rules``):

* **Instances come from the CSV**, the lossless source: the mask PNG lets later
  annotations overwrite earlier ones, paints boxes as filled rectangles, and its
  instance ids (channel 1 x channel 2) can collide beyond 254 objects.
* **Coordinates.** ``coords_x``/``coords_y`` are integer pixel indices of the FOV image
  (0.2 µm/px), i.e. pixel *centres*. They are shifted by +0.5 into the corner frame of
  the shared rasteriser (:mod:`nucdata.datasets`), so a pixel belongs to a
  contour when its own index lies inside the polygon; first annotation in file order
  wins overlaps; clipped at the border; degenerate / outside / fully-overlapped
  contours are dropped and counted.
* **Rectangles.** ``rectangle`` rows are bounding boxes only: written as nuclei without
  mask (``has_mask`` false, ``area`` 0) with box ``(xmin, ymin, xmax + 1, ymax + 1)``
  (inclusive pixel indices made exclusive), clipped to the image.
* **Classes.** Native label = the ``raw_classification``'s code in
  ``nucleus_GTcodes.csv`` (tumor 1 ... eosinophil 12, unlabeled 99); ``unlabeled`` and
  ``apoptotic_body`` are kept. Raw, main and super classifications are kept as string
  columns (main/super as written in the CSV; derived from the raw class through
  :data:`HIERARCHY` only when a CSV lacks those columns). Rows whose class is a FOV group (GT code 253) are not nuclei: skipped and
  counted. An unknown raw class keeps its nucleus with label -1, counted per name.
* **Malformed rows** (a coordinate that is not a number, unequal ``coords_x`` /
  ``coords_y`` lengths, a polyline without coordinates, a box without numbers, an
  unknown ``type``) raise :class:`MalformedAnnotationError` with file, row and fix.
* **Splits.** The official hospital-based folds: each FOV is stored under split
  ``fold<k>``, the fold whose *test* list holds its slide (the folds partition the
  slides); FOVs of slides in no test list go to ``unassigned``. The protocols
  ``fold<k>/train`` and ``fold<k>/test`` are derived from the fold files and recorded
  in the manifest (``load("nucls", split="fold1/train")``). The debug fold 999 is
  ignored. Without ``train_test_splits/`` every FOV is ``unassigned`` (noted).
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nucdata._util.images import read_rgb
from nucdata.datasets._base import ConversionReport, Converter, id_number, list_files, walk_dirs
from nucdata.datasets._imagescope import Region, rasterize_regions
from nucdata.errors import MalformedAnnotationError, MissingFilesError
from nucdata.store import StoreWriter

MPP = 0.2
#: ``nucleus_GTcodes.csv`` codes of the 13 raw classes.
GT_CODES = {
    "tumor": 1, "fibroblast": 2, "lymphocyte": 3, "plasma_cell": 4, "macrophage": 5,
    "mitotic_figure": 6, "vascular_endothelium": 7, "myoepithelium": 8, "apoptotic_body": 9,
    "neutrophil": 10, "ductal_epithelium": 11, "eosinophil": 12, "unlabeled": 99,
}
#: raw -> (main, super) classification (NuCLS ``configs/nucleus_style_defaults.py``).
HIERARCHY = {
    "tumor": ("tumor_nonMitotic", "tumor_any"),
    "mitotic_figure": ("tumor_mitotic", "tumor_any"),
    "fibroblast": ("nonTILnonMQ_stromal", "nonTIL_stromal"),
    "vascular_endothelium": ("nonTILnonMQ_stromal", "nonTIL_stromal"),
    "macrophage": ("macrophage", "nonTIL_stromal"),
    "lymphocyte": ("lymphocyte", "sTIL"),
    "plasma_cell": ("plasma_cell", "sTIL"),
    "neutrophil": ("other_nucleus", "other_nucleus"),
    "eosinophil": ("other_nucleus", "other_nucleus"),
    "myoepithelium": ("other_nucleus", "other_nucleus"),
    "ductal_epithelium": ("other_nucleus", "other_nucleus"),
    "apoptotic_body": ("AMBIGUOUS", "AMBIGUOUS"),
    "unlabeled": ("AMBIGUOUS", "AMBIGUOUS"),
}
FOV_CODE = 253
FOV_GROUPS = {"correction_fov_reviewed_maha", "fov_preapproved", "fov_for_programmatic_edit",
              "fov_basic", "fov_representative", "fov_problematic", "fov_discordant"}
FOLD_FILE = re.compile(r"^fold_(\d+)_(train|test)\.csv$", re.IGNORECASE)
DEBUG_FOLDS = {999}
UNASSIGNED = "unassigned"
BOUND = re.compile(r"_(left|top|bottom|right)-(-?\d+)")
_COORD_LIMIT = 2.0**31  # coordinates and boxes at or beyond are refused (they are cast to int64/int32)
REQUIRED = ("raw_classification", "type", "xmin", "ymin", "xmax", "ymax", "coords_x", "coords_y")

RULES = {
    "instances": "from the CSV (lossless); the mask PNG is not read (later annotations overwrite earlier ones there)",
    "coordinates": "coords_x/coords_y are pixel indices (centres): shifted +0.5 into the shared corner-frame rule, so a pixel belongs to a contour when its index is inside the polygon",
    "overlap": "first annotation in file order keeps overlapping pixels",
    "border": "vertices past the border are kept and the filled polygon is clipped to the image",
    "degenerate": "contours with < 3 distinct vertices, zero area, no pixel inside the image or no free pixel are dropped and counted",
    "rectangles": "rectangle rows are boxes without mask (has_mask false, area 0): (xmin, ymin, xmax+1, ymax+1) clipped; boxes outside the image dropped and counted",
    "classes": "label = raw_classification's nucleus_GTcodes.csv code (unlabeled 99 and apoptotic_body 9 kept); raw/main/super kept as string columns; unknown names kept with -1 and counted",
    "fov_rows": "rows whose class is a FOV group (GT code 253) are not nuclei: skipped and counted",
    "regions": "annotations read = nucleus rows (polylines and rectangles) of every FOV CSV",
    "splits": "FOV stored under fold<k>, the official fold whose test list holds its slide (unassigned if none); protocols fold<k>/train|test from train_test_splits/; debug fold 999 ignored",
    "mpp": "0.2 um/px for every FOV",
}


@dataclass
class Annotation:
    """One nucleus row of a FOV CSV."""

    row: int  # CSV record number, header = 1
    source_id: int
    raw: str
    main: str
    super: str
    kind: str  # "polyline" or "rectangle"
    box: tuple[int, int, int, int]  # xmin, ymin, xmax, ymax (inclusive pixel indices)
    vertices: np.ndarray  # (n, 2) x, y pixel indices


def slide_of(stem: str) -> str:
    """Slide name of a FOV stem: the part before ``_id-``, from ``TCGA-`` on."""
    slide = stem.split("_id-")[0]
    at = slide.find("TCGA-")
    return slide[at:] if at > 0 else slide


def hospital_of(slide: str) -> str:
    """TCGA tissue-source site (the hospital the folds split by)."""
    parts = slide.split("-")
    return parts[1] if slide.startswith("TCGA-") and len(parts) > 1 else ""


def fov_bounds(stem: str) -> dict[str, int]:
    """``left/top/bottom/right`` of the FOV in slide pixels, from its stem (-1 if absent)."""
    found = {k: int(v) for k, v in BOUND.findall(stem)}
    return {f"fov_{k}": found.get(k, -1) for k in ("left", "top", "bottom", "right")}


def _malformed(
    path: Path, row: int, index: str, problem: str, column: str | None = None
) -> MalformedAnnotationError:
    where = f"row {row}" + (f", column {column!r}" if column else "")
    return MalformedAnnotationError(
        f"{path}: {where} (CSV index {index or '?'}; the header is row 1): {problem}. "
        "Correct that row (coords_x and coords_y are equally long lists of comma-separated "
        "integers; xmin..ymax are numbers) or download the dataset again."
    )


def parse_coords(text: str, path: Path, row: int, index: str, column: str) -> np.ndarray:
    """A comma-separated coordinate list as float64; empty text gives no values."""
    text = (text or "").strip().strip('"').strip()
    if not text:
        return np.zeros(0)
    try:
        return np.asarray([float(v) for v in text.split(",")], np.float64)
    except ValueError:
        raise _malformed(
            path, row, index, f"{text[:60]!r} is not a comma-separated list of numbers", column
        ) from None


def _checked_lines(fh: Any, path: Path) -> Iterator[str]:
    """The lines of a text file, with decoding errors as a typed error naming the line."""
    number = 0
    try:
        for number, line in enumerate(fh, 1):  # noqa: B007 - number is used after the loop
            yield line
    except UnicodeDecodeError as exc:
        raise MalformedAnnotationError(
            f"{path}: line {number + 1}: bytes that are not UTF-8 ({exc.reason} at byte {exc.start} "
            "of the chunk read). NuCLS CSVs are UTF-8; re-save the file as UTF-8 or download it again."
        ) from None


def _csv_rows(reader: csv.DictReader, path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(row number, record)`` pairs; csv errors and short rows become typed errors."""
    try:
        for number, record in enumerate(reader, 2):  # the header is row 1
            if None in record.values():
                short = [k for k, v in record.items() if v is None]
                raise _malformed(path, number, "", f"the row is short: no value for {short}")
            yield number, record
    except csv.Error as exc:
        hint = (" (a field longer than the csv module allows: the row is damaged)" if "field larger" in str(exc)
                else " (an unterminated quote swallows the rest of the file)" if "EOF" in str(exc) or "end" in str(exc)
                else "")
        raise _malformed(path, reader.line_num, "", f"not valid CSV: {exc}{hint}") from None


def read_fov_csv(path: Path) -> tuple[list[Annotation], int]:
    """Nucleus rows of one FOV CSV, and how many FOV-group rows were skipped.

    Raises
    ------
    MalformedAnnotationError
        Missing columns or a malformed row (file, row and fix in the message).
    """
    rows: list[Annotation] = []
    fov_rows = 0
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(_checked_lines(fh, path), strict=True)  # an unterminated quote is an error
        missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
            raise MalformedAnnotationError(
                f"{path}: columns {missing} are missing (found {reader.fieldnames}); this is not "
                "a NuCLS annotation CSV. Download the dataset again."
            )
        index_column = (reader.fieldnames or [""])[0]
        for number, record in _csv_rows(reader, path):
            index = (record.get(index_column) or "").strip() if index_column not in REQUIRED else ""
            raw = (record["raw_classification"] or "").strip()
            if raw.lower() in FOV_GROUPS or raw.lower().startswith("fov"):
                fov_rows += 1
                continue
            kind = (record["type"] or "").strip().lower()
            if kind not in ("polyline", "rectangle"):
                raise _malformed(path, number, index, f"type {record['type']!r} is neither 'polyline' nor 'rectangle'")
            xs = parse_coords(record["coords_x"], path, number, index, "coords_x")
            ys = parse_coords(record["coords_y"], path, number, index, "coords_y")
            if xs.size != ys.size:
                raise _malformed(path, number, index, f"coords_x has {xs.size} values but coords_y {ys.size}")
            if kind == "polyline" and xs.size == 0:
                raise _malformed(path, number, index, "a polyline row without coordinates")
            try:
                values = [float(record[k]) for k in ("xmin", "ymin", "xmax", "ymax")]  # type: ignore[arg-type]
            except (TypeError, ValueError):
                values = [float("nan")]
            # sizes before anything is allocated or cast: a pixel index is far below 2**31
            for name, found in (("xmin/ymin/xmax/ymax", np.asarray(values)), ("coords_x", xs), ("coords_y", ys)):
                if (np.abs(found[np.isfinite(found)]) >= _COORD_LIMIT).any():
                    raise _malformed(path, number, index, f"{name} holds a value beyond ±2**31, not a pixel index")
            finite = bool(xs.size) and bool(np.isfinite(xs).all() and np.isfinite(ys).all())
            if all(np.isfinite(values)):
                box = tuple(int(round(v)) for v in values)
            elif finite:
                box = (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))
            elif kind == "polyline":  # non-finite vertices: the rasteriser drops and counts it
                box = (0, 0, 0, 0)
            else:
                raise _malformed(path, number, index, "xmin/ymin/xmax/ymax are not finite numbers and there "
                                 "are no finite coordinates")
            rows.append(Annotation(
                row=number,
                source_id=id_number(index, number),
                raw=raw,
                main=_level(record, "main_classification", raw, 0),
                super=_level(record, "super_classification", raw, 1),
                kind=kind,
                box=box,  # type: ignore[arg-type]
                vertices=np.stack([xs, ys], axis=1),
            ))
    return rows, fov_rows


def _level(record: dict[str, str], column: str, raw: str, level: int) -> str:
    """The row's main/super class; derived from the raw class only when the column is absent."""
    if column in record:
        return (record[column] or "").strip()
    return HIERARCHY.get(raw.lower(), ("", ""))[level]


def read_folds(folder: Path) -> dict[int, dict[str, set[str]]]:
    """``{fold: {"train": slides, "test": slides}}`` from ``fold_<k>_<part>.csv`` files.

    Raises
    ------
    MalformedAnnotationError
        A fold file without a ``slide_name`` column.
    """
    folds: dict[int, dict[str, set[str]]] = {}
    for path in list_files(folder, (".csv",)):
        match = FOLD_FILE.match(path.name)
        if not match or int(match.group(1)) in DEBUG_FOLDS:
            continue
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            if "slide_name" not in (reader.fieldnames or []):
                raise MalformedAnnotationError(
                    f"{path}: no 'slide_name' column (found {reader.fieldnames}); not a NuCLS fold "
                    "file. Download train_test_splits/ again."
                )
            slides = {slide_of(r["slide_name"].strip()) for r in reader if (r["slide_name"] or "").strip()}
        folds.setdefault(int(match.group(1)), {})[match.group(2).lower()] = slides
    return folds


def assign_splits(
    slides: set[str], folds: dict[int, dict[str, set[str]]], folder: Path | None
) -> tuple[dict[str, str], dict[str, dict[str, list[str]]]]:
    """Stored split of each slide and the protocols ``fold<k>/{train,test}``.

    Raises
    ------
    MalformedAnnotationError
        When the test lists do not partition the slides, or a protocol part would
        take a stored split of which some slides are not listed in that part.
    """
    where = folder or Path("train_test_splits")
    split_of_slide: dict[str, str] = {}
    for slide in sorted(slides):
        tests = [k for k, parts in sorted(folds.items()) if slide in parts.get("test", set())]
        if len(tests) > 1:
            raise MalformedAnnotationError(
                f"{where}: slide {slide} is in the test list of folds {tests}; the official folds "
                "give each slide one test fold. Download train_test_splits/ again."
            )
        split_of_slide[slide] = f"fold{tests[0]}" if tests else UNASSIGNED
    members: dict[str, set[str]] = {}
    for slide, split in split_of_slide.items():
        members.setdefault(split, set()).add(slide)
    protocols: dict[str, dict[str, list[str]]] = {}
    for k, parts in sorted(folds.items()):
        protocol: dict[str, list[str]] = {}
        for part in ("train", "test"):
            listed = parts.get(part, set())
            chosen = sorted({split_of_slide[s] for s in listed if s in split_of_slide}, key=split_key)
            for split in chosen:
                extra = sorted(members[split] - listed)
                if extra:
                    raise MalformedAnnotationError(
                        f"{where}/fold_{k}_{part}.csv: fold {k}'s {part} part takes split {split!r} "
                        f"but not its slides {extra[:5]}; the fold files are inconsistent. "
                        "Download train_test_splits/ again."
                    )
            protocol[part] = chosen
        if set(protocol["train"]) & set(protocol["test"]):
            raise MalformedAnnotationError(
                f"{where}: fold {k} lists the same slides in train and test. Download "
                "train_test_splits/ again."
            )
        protocols[f"fold{k}"] = protocol
    return split_of_slide, protocols


def split_key(split: str) -> tuple[int, str]:
    """Sort ``fold2`` before ``fold10`` and ``unassigned`` last."""
    match = re.fullmatch(r"fold(\d+)", split)
    return (int(match.group(1)), "") if match else (1 << 30, split)


def find_layout(folder: Path) -> tuple[Path, Path, Path | None]:
    """``(rgb dir, csv dir, train_test_splits dir or None)`` under ``folder``.

    Raises
    ------
    MissingFilesError
        When no ``rgb/`` (or ``rgbs/``) folder sits beside a ``csv/`` folder.
    """
    for d in walk_dirs(folder):
        subs = {p.name.lower(): p for p in d.iterdir() if p.is_dir()}
        rgb = subs.get("rgb") or subs.get("rgbs")
        table = subs.get("csv") or subs.get("csvs")
        if rgb is not None and table is not None:
            return rgb, table, subs.get("train_test_splits")
    raise MissingFilesError(
        f"{folder}: no NuCLS dataset found (a folder holding rgb/ and csv/, with mask/ and "
        "train_test_splits/ beside them). Extract the corrected single-rater dataset there, or "
        "point --from at the folder that holds rgb/ and csv/."
    )


class NuCLS(Converter):
    """NuCLS (corrected single-rater set) from ``rgb/``, ``csv/`` and ``train_test_splits/``."""

    name = "nucls"
    version = "2"

    def convert(
        self, folder: Path, writer: StoreWriter, progress: Callable[[str], None] | None = None
    ) -> ConversionReport:
        """Convert every FOV under ``folder``, fold by fold.

        Raises
        ------
        MissingFilesError
            No ``rgb/`` beside ``csv/``, or a FOV with only one of its PNG and CSV.
        MalformedAnnotationError
            A malformed CSV row or fold file.
        CorruptArchiveError
            An unreadable PNG.
        """
        say = progress or (lambda _msg: None)
        report = ConversionReport(rules=dict(RULES))
        report.extra["native_classes"] = {str(c): n for n, c in GT_CODES.items()}
        rgb_dir, csv_dir, split_dir = find_layout(folder)
        images = {p.stem: p for p in list_files(rgb_dir, (".png",))}
        tables = {p.stem: p for p in list_files(csv_dir, (".csv",))
                  if p.name.lower() != "all_fov_locations.csv"}
        lonely = sorted(set(images) ^ set(tables))
        if lonely:
            lines = [f"  {rgb_dir / (s + '.png')} has no CSV" if s in images else f"  {csv_dir / (s + '.csv')} has no image"
                     for s in lonely[:20]]
            raise MissingFilesError(
                "NuCLS fields of view need both rgb/<name>.png and csv/<name>.csv:\n"
                + "\n".join(lines) + ("\n  ..." if len(lonely) > 20 else "")
                + "\nRe-extract the dataset or add the missing files."
            )
        folds = read_folds(split_dir) if split_dir is not None else {}
        if not folds:
            report.notes.append("no train_test_splits/ fold files found: every FOV is stored as 'unassigned'")
            say("nucls: no train_test_splits/ fold files: every FOV is stored as 'unassigned'")
        split_of_slide, protocols = assign_splits({slide_of(s) for s in images}, folds, split_dir)
        report.extra["protocols"] = protocols
        order = sorted(images, key=lambda s: (split_key(split_of_slide[slide_of(s)]), s))
        unknown: Counter[str] = Counter()
        for i, stem in enumerate(order, 1):
            split = split_of_slide[slide_of(stem)]
            n = self._convert_fov(writer, report, unknown, stem, images[stem], tables[stem], split)
            if i % 100 == 0 or i == len(order):
                say(f"[{i}/{len(order)}] {split}/{stem}: {n} nuclei")
        if unknown:
            report.extra["unknown_classes"] = dict(sorted(unknown.items()))
            report.notes.append(
                "unknown raw classes (nuclei kept with label -1): "
                + ", ".join(f"{k!r}: {v}" for k, v in sorted(unknown.items()))
            )
        unassigned = sum(1 for s in order if split_of_slide[slide_of(s)] == UNASSIGNED)
        if folds and unassigned:
            report.notes.append(f"{unassigned} FOVs belong to slides in no fold's test list: split 'unassigned'")
        return report

    def _convert_fov(
        self, writer: StoreWriter, report: ConversionReport, unknown: Counter[str],
        stem: str, image: Path, table: Path, split: str,
    ) -> int:
        rgb = read_rgb(image)
        h, w = rgb.shape[:2]
        rows, fov_rows = read_fov_csv(table)
        report.dropped["fov_rows_skipped"] += fov_rows
        report.regions[split] += len(rows)
        contours = [r for r in rows if r.kind == "polyline"]
        boxes = [r for r in rows if r.kind == "rectangle"]
        # Pixel-index vertices -> the rasteriser's corner frame.
        regions = [Region(str(r.source_id), r.vertices + 0.5, 0, r.raw, False, None) for r in contours]
        inst, kept, dropped = rasterize_regions(regions, (h, w))
        report.dropped.update(dropped)
        masked = [contours[i] for i in kept]
        box_array = np.array(
            [[max(0, b.box[0]), max(0, b.box[1]), min(w, b.box[2] + 1), min(h, b.box[3] + 1)] for b in boxes],
            np.int64,
        ).reshape(-1, 4)
        inside = (box_array[:, 2] > box_array[:, 0]) & (box_array[:, 3] > box_array[:, 1])
        report.dropped["box_outside_image"] += int((~inside).sum())
        boxes = [b for b, ok in zip(boxes, inside, strict=True) if ok]
        box_array = box_array[inside]
        report.dropped["boxes_without_mask_kept"] += len(boxes)

        def code(row: Annotation) -> int:
            value = GT_CODES.get(row.raw.lower(), -1)
            if value == -1:
                shown = row.raw or "(empty)"
                unknown[shown] += 1
                report.dropped[f"unknown_class_kept_unlabelled:{shown}"] += 1
            return value

        every = masked + boxes

        def column(values: list[str]) -> np.ndarray:
            return np.asarray(values, dtype=str) if values else np.zeros(0, "<U1")

        slide = slide_of(stem)
        return writer.add_image(
            stem, split, rgb, inst,
            np.array([code(r) for r in masked], np.int32),
            np.array([r.source_id for r in masked], np.int64),
            mpp=MPP, tissue="breast", patient="-".join(slide.split("-")[:3]),
            boxes=box_array,
            box_labels=np.array([code(r) for r in boxes], np.int32),
            box_source_ids=np.array([r.source_id for r in boxes], np.int64),
            nucleus_columns={
                "raw_classification": column([r.raw for r in every]),
                "main_classification": column([r.main for r in every]),
                "super_classification": column([r.super for r in every]),
            },
            image_columns={"slide": slide, "hospital": hospital_of(slide), **fov_bounds(stem)},
        )
