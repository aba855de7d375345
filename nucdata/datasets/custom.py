"""A user's own labelled images as a dataset (``nucdata prepare --custom NAME``).

The card (``registry/<NAME>.json``, ``"custom": true``; :func:`nucdata.catalog.write_custom_card`)
says under ``custom_source`` where the images are, where the annotations are and in which
format, the optional labels CSV and the µm/px given. Every file is read through
:mod:`nucdata.formats`; the rules:

Images
    Every PNG, JPEG or TIFF file directly in the images folder (sorted by name; macOS
    junk skipped), read as RGB by nucdata's one decoder. Its **stem** (the name without
    the extension) is the image's name and matches its annotation file. Two images with
    one stem are refused. All images go to the split ``train`` (a user dataset has no
    official split; ``build-merged`` makes its own grouped splits).
Annotations, matched to images by stem
    ``instances``: one instance label image per image (PNG/TIFF/``.npy``, Cellpose's
    ``_cp_masks``/``_masks``/``_seg`` and similar suffixes stripped; :func:`nucdata.formats.instance_stem`),
    a nucleus per id, its source id the id in the file. ``geojson``: a QuPath GeoJSON per
    image (``<stem>.geojson`` or ``.json``), a nucleus per detection, cell or annotation
    polygon (:func:`nucdata.formats.read_qupath`), its source id the feature's
    ``nucdata_id`` or its position. ``hovernet-json``: a HoVer-Net JSON per image, a nucleus
    per ``nuc`` entry, its source id the entry's key. Outlines are rasterised with the
    formats' one rule (a pixel whose centre lies inside or on the outline); where two
    overlap the earlier keeps the pixel, and an outline left with no pixel (outside the
    image, or covered by earlier ones) is dropped and counted. A nucleus given by a point
    only (no outline) is kept as a one-pixel box at its centre, without a mask.
    An image without an annotation file, and an annotation file without an image, are
    skipped and counted; an instance map of another size than its image is refused.
Labels
    From the labels CSV when given (header required: ``image``, ``id``, ``label``; the id
    is the nucleus's source id above, the label a class name or code of the native
    vocabulary), else from the files: GeoJSON class names, HoVer-Net ``type`` codes;
    instance maps carry none (-1). Names are matched to the dataset's native classes
    (its stored table, :func:`nucdata.labels.find_user_tables`) case-insensitively; a name
    or code the vocabulary lacks is refused, naming the file, the nucleus and the fix.
µm/px
    The ``--mpp`` given (the card's ``mpp``), else each image's own (its file's metadata,
    :func:`nucdata.formats.image_mpp`), else unknown.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from nucdata._util.instances import relabel_sequential
from nucdata._util.paths import is_junk
from nucdata.datasets._base import ConversionReport, Converter
from nucdata.errors import InvalidCardError, MalformedAnnotationError, MissingFilesError
from nucdata.formats import (
    Nuclei,
    instance_stem,
    rasterize,
    read_hovernet_json,
    read_image,
    read_instances,
    read_labels_csv,
    read_qupath,
)
from nucdata.labels import find_user_tables
from nucdata.store import StoreWriter

#: The annotation formats ``prepare --custom`` reads, by the flag that names them
FORMATS = ("instances", "geojson", "hovernet-json")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
_ANNOTATION_SUFFIXES = {"instances": (".png", ".tif", ".tiff", ".npy"), "geojson": (".geojson", ".json"),
                        "hovernet-json": (".json",)}
SPLIT = "train"


def _files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not is_junk(p.name) and p.name.lower().endswith(suffixes))


def _annotation_stem(path: Path, fmt: str) -> str:
    if fmt == "instances":
        return instance_stem(path)
    name = path.name
    for suffix in (".geojson", ".json"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def image_files(folder: Path) -> dict[str, Path]:
    """Stem -> image file of a user dataset's images folder (two images of one stem are refused)."""
    found: dict[str, Path] = {}
    for path in _files(folder, IMAGE_SUFFIXES):
        stem = path.name[: -len(path.suffix)]
        if stem in found:
            raise MalformedAnnotationError(f"{folder}: two images are named {stem!r} ({found[stem].name}, {path.name}); "
                                           "an image's stem names it and matches its annotations: rename one.")
        found[stem] = path
    return found


def annotation_files(folder: Path, fmt: str, images_folder: Path | None = None) -> dict[str, Path]:
    """Stem -> annotation file of the given format in ``folder`` (images in the same folder are not masks)."""
    if fmt not in FORMATS:
        raise InvalidCardError(f"annotation format {fmt!r}: choose one of {', '.join(FORMATS)}")
    same = images_folder is not None and folder.resolve() == Path(images_folder).resolve()
    found: dict[str, Path] = {}
    for path in _files(folder, _ANNOTATION_SUFFIXES[fmt]):
        stem = _annotation_stem(path, fmt)
        if same and fmt == "instances" and stem == path.name[: -len(path.suffix)]:
            continue  # an image beside its masks (Cellpose saves <image>_cp_masks.png there)
        if stem in found:
            raise MalformedAnnotationError(f"{folder}: {found[stem].name} and {path.name} both annotate image "
                                           f"{stem!r}; keep one.")
        found[stem] = path
    return found


def read_annotation(path: Path, fmt: str, image: str) -> Nuclei:
    """One image's annotation file as a :class:`~nucdata.formats.Nuclei` record."""
    if fmt == "geojson":
        return read_qupath(path, image=image)
    if fmt == "hovernet-json":
        return read_hovernet_json(path, image=image)
    from nucdata.formats import nuclei_from_instances

    return nuclei_from_instances(read_instances(path), image)


def class_names_in(source: dict[str, Any]) -> list[tuple[int, str]]:
    """``(code, name)`` of the classes a user dataset's files name, for a native vocabulary.

    Names (GeoJSON classes, CSV labels that are not integers) get codes in sorted order;
    integer codes (HoVer-Net types, integer CSV labels) keep theirs, named ``"type <code>"``.
    """
    names: set[str] = set()
    codes: set[int] = set()
    labels = source.get("labels")
    values: list[str] = []
    if labels:
        values = list(read_labels_csv(Path(labels)).values())
    else:
        images = Path(source["images"])
        annotations = annotation_files(Path(source["annotations"]), source["format"], images)
        for stem, path in annotations.items():
            if source["format"] == "instances":
                break
            nuclei = read_annotation(path, source["format"], stem)
            if source["format"] == "geojson":
                names.update(n for n in nuclei.label_names() if n is not None)
            elif nuclei.labels is not None:
                codes.update(int(c) for c in nuclei.labels.tolist() if c >= 0)
    for value in values:
        if not value:
            continue
        if value.lstrip("-").isascii() and value.lstrip("-").isdigit() and len(value) < 19:
            if int(value) >= 0:
                codes.add(int(value))
        else:
            names.add(value)
    if names and codes:
        raise MalformedAnnotationError("the labels mix class names and integer codes; give a --vocabulary or "
                                       "--mapping that names every code, or use one kind throughout.")
    if codes:
        return [(c, f"type {c}") for c in sorted(codes)]
    return list(enumerate(sorted(names)))


class Custom(Converter):
    """A user's images with instance maps, QuPath GeoJSON or HoVer-Net JSON (module docstring)."""

    name = "custom"
    version = "1"

    def convert(self, folder: Path, writer: StoreWriter, progress: Callable[[str], None] | None = None
                ) -> ConversionReport:
        say = progress or (lambda _msg: None)
        source = self.card.extra.get("custom_source")
        if not isinstance(source, dict) or source.get("format") not in FORMATS:
            raise InvalidCardError(f"{self.card.name}: not a user dataset's card (no custom_source with a format "
                                   f"of {', '.join(FORMATS)}); create it with nucdata prepare --custom.")
        fmt = source["format"]
        images = image_files(Path(folder))
        ann_dir = Path(source["annotations"])
        if not ann_dir.is_dir():
            raise MissingFilesError(f"{ann_dir}: the annotations folder of {self.card.name} was not found; prepare "
                                    "it again with nucdata prepare --custom and the folder's current path.")
        annotations = annotation_files(ann_dir, fmt, Path(folder))
        matched = [s for s in images if s in annotations]
        report = ConversionReport()
        report.rules.update({
            "images": "PNG/JPEG/TIFF files of the images folder; the stem names the image and matches its annotation",
            "split": f"every image in '{SPLIT}' (a user dataset has no official split)",
            "annotations": f"{fmt}, one file per image, matched by stem",
            "outlines": "rasterised: a pixel whose centre lies inside or on the outline; the earlier outline keeps "
                        "an overlapping pixel; an outline with no pixel left is dropped",
            "points": "a nucleus without an outline is a one-pixel box at its centre, without a mask",
            "labels": "the labels CSV (image, id, label) when given, else the files' classes; names matched to "
                      "the native vocabulary case-insensitively",
            "mpp": "the --mpp given, else the image file's own, else unknown",
        })
        unmatched_images = [s for s in images if s not in annotations]
        unmatched_annotations = [s for s in annotations if s not in images]
        if unmatched_images:
            report.dropped["image without an annotation file"] += len(unmatched_images)
            report.notes.append("images without annotations (skipped): " + ", ".join(unmatched_images[:20])
                                + (" ..." if len(unmatched_images) > 20 else ""))
        if unmatched_annotations:
            report.dropped["annotation file without an image"] += len(unmatched_annotations)
            report.notes.append("annotations without an image (skipped): " + ", ".join(unmatched_annotations[:20])
                                + (" ..." if len(unmatched_annotations) > 20 else ""))
        if not matched:
            raise MissingFilesError(
                f"{folder}: no image has an annotation file in {ann_dir} ({len(images)} images, {len(annotations)} "
                f"{fmt} files). Annotations are matched to images by stem: <image stem>"
                + {"instances": "[_cp_masks|_masks|_seg|...].png/.tif/.npy", "geojson": ".geojson",
                   "hovernet-json": ".json"}[fmt] + ".")
        tables = find_user_tables(self.card.name)
        labels_csv = read_labels_csv(Path(source["labels"])) if source.get("labels") else None
        used_csv: set[tuple[str, int]] = set()
        classes: Counter[str] = Counter()
        for stem in matched:
            rgb, file_mpp = read_image(images[stem])
            mpp = self.card.mpp if self.card.mpp is not None else file_mpp
            nuclei = read_annotation(annotations[stem], fmt, stem)
            inst, masked, boxes, box_rows = self._pixels(nuclei, rgb.shape[:2], annotations[stem], fmt, report)
            codes = self._codes(nuclei, annotations[stem], fmt, tables, labels_csv, used_csv, stem)
            box_arr = None
            if box_rows:
                box_arr = np.array([boxes[r] for r in box_rows], np.int64).reshape(-1, 4)
            writer.add_image(
                stem, SPLIT, rgb, inst, labels=codes[masked], source_ids=nuclei.ids[masked], mpp=mpp,
                boxes=box_arr, box_labels=codes[box_rows] if box_rows else None,
                box_source_ids=nuclei.ids[box_rows] if box_rows else None,
                box_centroids=nuclei.centroids[box_rows] if box_rows else None)
            report.regions[SPLIT] += len(nuclei)
            for code in codes.tolist():
                classes[str(code)] += 1
        if labels_csv is not None:
            unused = len(set(labels_csv) - used_csv)
            if unused:
                report.dropped["labels CSV row naming no nucleus"] += unused
        say(f"{self.card.name}: {len(matched)} images, {sum(report.regions.values())} nuclei read")
        report.extra["custom"] = {"format": fmt, "images": len(matched)}
        return report

    def _pixels(self, nuclei: Nuclei, shape: tuple[int, int], path: Path, fmt: str, report: ConversionReport
                ) -> tuple[np.ndarray, np.ndarray, dict[int, tuple[int, int, int, int]], list[int]]:
        """(sequential instance map, record rows of its nuclei 1..K, boxes of point nuclei, their rows)."""
        n = len(nuclei)
        if fmt == "instances":
            inst = np.asarray(nuclei.instance_map)
            if inst.shape != tuple(shape):
                raise MalformedAnnotationError(f"{path}: the instance map is {inst.shape[1]}x{inst.shape[0]}, its "
                                               f"image {shape[1]}x{shape[0]}; save one map per image, of its size.")
            seq, original = relabel_sequential(inst)
            row_of = {int(i): r for r, i in enumerate(nuclei.ids.tolist())}
            return seq, np.array([row_of[int(i)] for i in original.tolist()], np.int64), {}, []
        outlined = [i for i in range(n) if nuclei.rings(i)]
        points = [i for i in range(n) if not nuclei.rings(i)]
        drawn = rasterize([nuclei.rings(i) for i in outlined], shape, np.arange(1, len(outlined) + 1))
        seq, original = relabel_sequential(drawn)
        masked = np.array([outlined[int(v) - 1] for v in original.tolist()], np.int64)
        lost = len(outlined) - masked.size
        if lost:
            report.dropped["outline with no pixel in the image (outside it, or covered by earlier outlines)"] += lost
        boxes: dict[int, tuple[int, int, int, int]] = {}
        kept_points = []
        h, w = shape
        for i in points:
            x, y = nuclei.centroids[i]
            col, row = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))
            if not (np.isfinite(x) and np.isfinite(y)) or not (0 <= col < w and 0 <= row < h):
                report.dropped["point outside the image"] += 1
                continue
            boxes[i] = (col, row, col + 1, row + 1)
            kept_points.append(i)
        return seq, masked, boxes, kept_points

    def _codes(self, nuclei: Nuclei, path: Path, fmt: str, tables: Any, labels_csv: dict | None,
               used: set[tuple[str, int]], stem: str) -> np.ndarray:
        """Native code of every nucleus of the record (-1: none)."""
        n = len(nuclei)
        codes = np.full(n, -1, np.int64)
        known = {c for c, _, _ in tables.native} if tables is not None else set()

        def resolve(value: str | int, where: str) -> int:
            if isinstance(value, int) or (value.lstrip("-").isascii() and value.lstrip("-").isdigit()
                                          and len(value) < 19):
                code = int(value)
                if code < 0:
                    return -1
                if code not in known:
                    raise MalformedAnnotationError(
                        f"{where}: class code {code} is not a native class of {self.card.name} ({sorted(known)}); add "
                        "it to the vocabulary or the mapping's native_classes, then prepare --custom again.")
                return code
            code = tables.code_of(value) if tables is not None else None
            if code is None:
                names = [name for _, name, _ in tables.native] if tables is not None else []
                raise MalformedAnnotationError(
                    f"{where}: class {value!r} is not a native class of {self.card.name} ({', '.join(names) or 'none'}); "
                    "add it to the vocabulary or the mapping's native_classes (or leave both out to take the "
                    "classes the files name), then prepare --custom again.")
            return code

        if labels_csv is not None:
            for i, nid in enumerate(nuclei.ids.tolist()):
                value = labels_csv.get((stem, int(nid)))
                if value is not None:
                    used.add((stem, int(nid)))
                    if value:
                        codes[i] = resolve(value, f"{self.card.extra['custom_source']['labels']}: image {stem!r} id {nid}")
            return codes
        if nuclei.labels is None:
            return codes
        if fmt == "geojson":
            for i, name in enumerate(nuclei.label_names()):
                if name is not None:
                    codes[i] = resolve(name, f"{path}: nucleus {int(nuclei.ids[i])}")
            return codes
        for i, code in enumerate(nuclei.labels.tolist()):
            if code >= 0:
                codes[i] = resolve(int(code), f"{path}: nucleus {int(nuclei.ids[i])}")
        return codes
