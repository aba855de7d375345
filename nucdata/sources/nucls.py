"""NuCLS: per field of view an RGB PNG and a CSV of annotations (``rgb/``, ``csv/``).

* Instances come from the CSV, the lossless source (the mask PNG lets later
  annotations overwrite earlier ones). ``polyline`` rows are contours, rasterised with
  the ImageScope rule (pixel-corner vertices, first annotation wins, clipped);
  ``rectangle`` rows are boxes only: ``has_mask`` false, bbox from ``xmin..xmax``.
* Native label = ``raw_classification`` as its ``nucleus_GTcodes.csv`` code (unlabeled
  = 99); ``main_classification`` and ``super_classification`` are kept as columns.
  An unknown class name keeps its nucleus unlabelled (-1) and is counted.
* A malformed coordinate list is refused with the file, row and column.
* Splits: the official hospital-based folds in ``train_test_splits/``; each FOV is
  stored under ``fold<k>``, the fold whose test list holds its slide.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import MalformedAnnotationError, MissingFilesError
from ..labelsets import native_vocabulary
from ..readers.images import read_rgb
from ..readers.imagescope import Region, rasterize_regions
from ..store import StoreWriter
from .base import ConversionReport, Source, list_files, walk_dirs

MPP = 0.2
FOLD_FILE = re.compile(r"fold_(\d+)_(train|test)\.csv$", re.IGNORECASE)
DEBUG_FOLDS = {999}


def slide_of(stem: str) -> str:
    """Slide name: the part of the FOV stem before ``_id-``."""
    return stem.split("_id-")[0]


def parse_coords(text: str, path: Path, row: int, column: str) -> np.ndarray:
    try:
        values = [float(v) for v in text.replace('"', "").split(",") if v.strip() != ""]
    except ValueError:
        raise MalformedAnnotationError(
            f"{path}: row {row}, column {column!r}: {text[:60]!r} is not a comma-separated list "
            "of numbers. Fix the row or download the dataset again."
        ) from None
    return np.asarray(values)


def read_fov_csv(path: Path) -> list[dict[str, object]]:
    """Rows of one FOV CSV with parsed coordinates."""
    rows = []
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        needed = {"raw_classification", "type", "xmin", "ymin", "xmax", "ymax", "coords_x", "coords_y"}
        missing = needed - set(reader.fieldnames or [])
        if missing:
            raise MalformedAnnotationError(
                f"{path}: columns {sorted(missing)} are missing (found {reader.fieldnames}); "
                "this is not a NuCLS annotation CSV."
            )
        for i, record in enumerate(reader, 2):  # row 1 is the header
            xs = parse_coords(record["coords_x"], path, i, "coords_x")
            ys = parse_coords(record["coords_y"], path, i, "coords_y")
            if xs.size != ys.size:
                raise MalformedAnnotationError(
                    f"{path}: row {i}: coords_x has {xs.size} values but coords_y {ys.size}. "
                    "Fix the row or download the dataset again."
                )
            try:
                box = [int(float(record[k])) for k in ("xmin", "ymin", "xmax", "ymax")]
            except ValueError:
                raise MalformedAnnotationError(f"{path}: row {i}: xmin/ymin/xmax/ymax must be numbers.") from None
            rows.append({
                "raw": record["raw_classification"].strip(),
                "main": (record.get("main_classification") or "").strip(),
                "super": (record.get("super_classification") or "").strip(),
                "type": record["type"].strip().lower(),
                "box": box,
                "vertices": np.stack([xs, ys], axis=1),
                "row": i,
            })
    return rows


def read_folds(folder: Path | None) -> dict[int, dict[str, set[str]]]:
    folds: dict[int, dict[str, set[str]]] = {}
    if folder is None:
        return folds
    for path in list_files(folder, (".csv",)):
        match = FOLD_FILE.search(path.name)
        if not match or int(match.group(1)) in DEBUG_FOLDS:
            continue
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if "slide_name" not in (reader.fieldnames or []):
                raise MalformedAnnotationError(f"{path}: no 'slide_name' column; not a NuCLS fold file.")
            slides = {r["slide_name"].strip() for r in reader}
        folds.setdefault(int(match.group(1)), {})[match.group(2).lower()] = slides
    return folds


class NuCLS(Source):
    """NuCLS from ``rgb/``, ``csv/`` and ``train_test_splits/``."""

    name = "nucls"
    version = "1"

    def convert(
        self, folder: Path, writer: StoreWriter, progress: Callable[[str], None] | None = None
    ) -> ConversionReport:
        report = ConversionReport(rules={
            "instances": "from CSV contours (polyline rows), ImageScope rule: pixel-corner vertices, first annotation wins, clipped",
            "rectangles": "rectangle rows are boxes without mask (has_mask false)",
            "classes": "native code = raw_classification's nucleus_GTcodes.csv code; main/super kept as columns",
            "splits": "FOV stored under fold<k>, the official fold whose test list holds its slide",
        })
        rgb_dir = csv_dir = split_dir = None
        for d in walk_dirs(folder):
            name = d.name.lower()
            if name == "rgb" and rgb_dir is None and (d.parent / "csv").is_dir():
                rgb_dir, csv_dir = d, d.parent / "csv"
                split_dir = d.parent / "train_test_splits"
        if rgb_dir is None or csv_dir is None:
            raise MissingFilesError(
                f"{folder}: no rgb/ folder beside csv/ found. Extract the NuCLS dataset there "
                "(rgb/, csv/, mask/, train_test_splits/)."
            )
        folds = read_folds(split_dir if split_dir and split_dir.is_dir() else None)
        if not folds:
            report.notes.append("no train_test_splits/ fold files: every FOV is 'unassigned'")
        test_fold = {slide: k for k, parts in sorted(folds.items()) for slide in parts.get("test", ())}
        codes = {name.lower(): code for code, name, _ in native_vocabulary("nucls")}
        images = {p.stem: p for p in list_files(rgb_dir, (".png",))}
        tables = {p.stem: p for p in list_files(csv_dir, (".csv",)) if p.name.lower() != "all_fov_locations.csv"}
        lonely = sorted(set(images) ^ set(tables))
        if lonely:
            raise MissingFilesError(
                f"{rgb_dir.parent}: FOVs without both rgb/*.png and csv/*.csv: {', '.join(lonely[:10])}"
                + (" ..." if len(lonely) > 10 else "") + ". Re-extract the dataset."
            )
        def split_name(stem: str) -> str:
            k = test_fold.get(slide_of(stem))
            return f"fold{k}" if k is not None else "unassigned"

        order = sorted(images, key=lambda s: (split_name(s), s))
        for i, stem in enumerate(order, 1):
            self._convert_fov(writer, report, stem, images[stem], tables[stem], split_name(stem), codes)
            if progress and (i % 50 == 0 or i == len(order)):
                progress(f"{i}/{len(order)} fields of view")
        present = {split_name(s) for s in order}
        report.extra["protocols"] = {
            f"fold{k}": {part: sorted({f"fold{test_fold[s]}" if s in test_fold else "unassigned" for s in slides} & present)
                         for part, slides in parts.items()}
            for k, parts in sorted(folds.items())
        }
        return report

    def _convert_fov(self, writer: StoreWriter, report: ConversionReport, stem: str, image: Path,
                     table: Path, split: str, codes: dict[str, int]) -> None:
        rgb = read_rgb(image)
        h, w = rgb.shape[:2]
        rows = read_fov_csv(table)
        report.regions[split] += len(rows)
        polys = [r for r in rows if r["type"] != "rectangle"]
        boxes = [r for r in rows if r["type"] == "rectangle"]
        regions = [Region(str(r["row"]), r["vertices"], 0, r["raw"], False, None) for r in polys]
        inst, kept, dropped = rasterize_regions(regions, (h, w))
        report.dropped.update(dropped)
        kept_rows = [polys[i] for i in kept]
        box_array = np.array([[max(0, b["box"][0]), max(0, b["box"][1]), min(w, b["box"][2]), min(h, b["box"][3])]
                              for b in boxes], np.int64).reshape(-1, 4)
        valid = (box_array[:, 2] > box_array[:, 0]) & (box_array[:, 3] > box_array[:, 1])
        report.dropped["degenerate_boxes"] += int((~valid).sum())
        boxes = [b for b, ok in zip(boxes, valid, strict=True) if ok]
        box_array = box_array[valid]
        report.dropped["boxes_without_mask_kept"] += len(boxes)

        def code_of(row: dict[str, object]) -> int:
            code = codes.get(str(row["raw"]).lower(), -1)
            if code == -1:
                report.dropped[f"unknown_class_kept_unlabelled:{row['raw'] or '(empty)'}"] += 1
            return code

        every = kept_rows + boxes
        writer.add_image(
            stem, split, rgb, inst,
            np.array([code_of(r) for r in kept_rows], np.int32),
            np.array([r["row"] for r in kept_rows], np.int64),
            mpp=MPP, tissue="breast", patient="-".join(slide_of(stem).split("-")[:3]),
            boxes=box_array, box_labels=np.array([code_of(r) for r in boxes], np.int32),
            box_source_ids=np.array([r["row"] for r in boxes], np.int64),
            nucleus_columns={
                "main_classification": np.array([str(r["main"]) for r in every], dtype="<U32"),
                "super_classification": np.array([str(r["super"]) for r in every], dtype="<U32"),
            },
            image_columns={"slide": slide_of(stem)},
        )
