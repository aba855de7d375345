"""CoNSeP: ``{Train,Test}/Images/*.png`` with ``Labels/*.mat`` (HoVer-Net ground truth).

Each ``.mat`` holds ``inst_map`` (ids 1..N), ``type_map``, ``inst_type`` (N x 1, class
of id k+1 in row k) and ``inst_centroid`` (N x 2, x then y). The native label of a
nucleus is ``inst_type`` of its id; ids must be 1..N without gaps, as the files'
README promises, otherwise the file is refused. The files' own centroids are compared
with the ones the store computes (mean pixel coordinate, pixel centres at integers),
and the largest difference is recorded.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from nucdata._util import mat
from nucdata._util.images import PIXELS_ENV_VAR, pixel_limit, read_rgb
from nucdata._util.instances import nucleus_properties, relabel_sequential
from nucdata.datasets._base import ConversionReport, Converter, list_files, walk_dirs
from nucdata.errors import MalformedAnnotationError, MissingFilesError
from nucdata.store import StoreWriter

REQUIRED_KEYS = ("inst_map", "type_map", "inst_type", "inst_centroid")
CLASS_NAMES = {
    1: "other", 2: "inflammatory", 3: "healthy epithelial", 4: "dysplastic/malignant epithelial",
    5: "fibroblast", 6: "muscle", 7: "endothelial",
}


def check_header(path: Path) -> None:
    """Check the ``.mat`` file's variable headers before any variable is read.

    ``scipy.io.whosmat`` reads each variable's name, dimensions and class without its
    data. The maps may hold at most the image pixel limit of elements
    (``NUCDATA_MAX_IMAGE_PIXELS``), and ``inst_type``/``inst_centroid`` at most one row per
    pixel of that limit: a 20000 x 20000 ``inst_map`` (3.2 GB as doubles) is refused here,
    not after ``loadmat`` allocated it. Cell arrays, structs, text and sparse matrices are
    refused too.

    Raises
    ------
    MalformedAnnotationError
        Naming the file, the variable, its dimensions and the limit.
    """
    found = mat.variables(path, "CoNSeP")
    missing = [k for k in REQUIRED_KEYS if k not in found]
    if missing:
        raise MalformedAnnotationError(
            f"{path}: key {missing[0]!r} is missing (found {sorted(k for k in found if not k.startswith('__'))}). "
            "This is not a CoNSeP ground-truth file (HoVer-Net prediction files and the tiled "
            "Kaggle derivative use other keys); use the official archive."
        )
    limit = pixel_limit()
    for key in REQUIRED_KEYS:
        shape, _ = found[key]
        elements = mat.numeric_shape(path, key, found[key], "CoNSeP")
        rows = elements if key in ("inst_map", "type_map") else elements // 2 + 1
        if limit is not None and rows > limit:
            raise MalformedAnnotationError(
                f"{path}: {key} is {' x '.join(map(str, shape))} ({elements:,} values), above the limit of "
                f"{limit:,} image pixels; nothing of it was read (CoNSeP's maps are 1000 x 1000). If the file "
                f"is genuine, set {PIXELS_ENV_VAR} to a larger number of pixels (0: no limit)."
            )


def read_label(path: Path) -> dict[str, np.ndarray]:
    """Read one CoNSeP ``.mat``; check its headers (:func:`check_header`), keys and id/type alignment."""
    check_header(path)
    data = mat.load_variables(path, list(REQUIRED_KEYS))
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise MalformedAnnotationError(
            f"{path}: key {missing[0]!r} is missing (found {sorted(k for k in data if not k.startswith('__'))}). "
            "This is not a CoNSeP ground-truth file (HoVer-Net prediction files and the tiled "
            "Kaggle derivative use other keys); use the official archive."
        )
    inst = _numbers(path, "inst_map", data["inst_map"], integer=True)
    if inst.ndim != 2:
        raise MalformedAnnotationError(f"{path}: inst_map has shape {inst.shape}; expected a 2-D map of ids.")
    if inst.size and inst.min() < 0:
        bad = np.argwhere(inst < 0)[0]
        raise MalformedAnnotationError(
            f"{path}: inst_map holds negative ids (e.g. {int(inst[tuple(bad)])} at row {bad[0]}, column {bad[1]}); "
            "ids must be 0 (background) or 1..N. The file is damaged or not CoNSeP ground truth."
        )
    types = _numbers(path, "inst_type", data["inst_type"], integer=True).reshape(-1)
    centroid_values = _numbers(path, "inst_centroid", data["inst_centroid"], integer=False)
    if centroid_values.size % 2:
        raise MalformedAnnotationError(f"{path}: inst_centroid has shape {centroid_values.shape}; expected N x 2.")
    centroids = centroid_values.reshape(-1, 2)
    n = types.size
    ids = np.unique(inst)
    ids = ids[ids > 0]
    if ids.size and (ids.max() != n or ids.size != n):
        raise MalformedAnnotationError(
            f"{path}: inst_map has {ids.size} ids up to {int(ids.max())} but inst_type has {n} rows; "
            "ids must be 1..N in the order of inst_type. The file is damaged or not ground truth."
        )
    if centroids.shape[0] != n:
        raise MalformedAnnotationError(f"{path}: inst_centroid has {centroids.shape[0]} rows, inst_type {n}.")
    type_map = _numbers(path, "type_map", data["type_map"], integer=True)
    if type_map.shape != inst.shape:
        raise MalformedAnnotationError(f"{path}: type_map {type_map.shape} and inst_map {inst.shape} differ in shape.")
    return {"inst_map": inst, "type_map": type_map, "inst_type": types, "inst_centroid": centroids}


def _numbers(path: Path, key: str, value: object, integer: bool) -> np.ndarray:
    """A numeric array from a ``.mat`` variable, or a typed error naming the key."""
    array = np.asarray(value)
    if array.dtype.kind not in "biuf":
        kind = {"U": "text", "S": "text", "O": "a cell array or struct"}.get(array.dtype.kind, str(array.dtype))
        raise MalformedAnnotationError(
            f"{path}: {key} holds {kind}, not numbers. CoNSeP ground truth stores it as a numeric "
            "matrix; the file was re-saved by another tool or is not ground truth."
        )
    if array.dtype.kind == "f" and array.size:
        finite = np.isfinite(array)
        if not finite.all():
            raise MalformedAnnotationError(f"{path}: {key} holds NaN or infinite values "
                                           f"({int((~finite).sum())} of {array.size}).")
        if integer and not np.array_equal(array, np.round(array)):
            raise MalformedAnnotationError(f"{path}: {key} holds fractional values; it must hold integer ids/codes.")
    return array.astype(np.int64 if integer else np.float64)


def find_split_dirs(folder: Path) -> dict[str, tuple[Path, Path]]:
    """``{"train": (images, labels), "test": (...)}`` under ``folder``."""
    found: dict[str, tuple[Path, Path]] = {}
    for d in walk_dirs(folder):
        split = d.name.lower()
        if split in ("train", "test") and split not in found:
            subs = {s.name.lower(): s for s in d.iterdir() if s.is_dir()}
            if "images" in subs and "labels" in subs:
                found[split] = (subs["images"], subs["labels"])
    return found


class CoNSeP(Converter):
    """CoNSeP from its Train/ and Test/ folders."""

    name = "consep"
    version = "1"

    def convert(
        self, folder: Path, writer: StoreWriter, progress: Callable[[str], None] | None = None
    ) -> ConversionReport:
        report = ConversionReport(rules={
            "classes": "native code = inst_type of the nucleus id (1 other ... 7 endothelial)",
            "ids": "inst_map ids must be 1..N matching inst_type rows; other files are refused",
            "centroids": "recomputed from inst_map (mean pixel x, y; 0-based pixel centres); the files' inst_centroid is compared, not used",
            "type_map": "not used for labels (inst_type is); nuclei whose type_map pixels disagree with inst_type are counted in extra",
        })
        report.extra["classes"] = {str(k): v for k, v in CLASS_NAMES.items()}
        dirs = find_split_dirs(folder)
        missing = [s for s in ("train", "test") if s not in dirs]
        if missing:
            raise MissingFilesError(
                f"{folder}: no {' or '.join(m.capitalize() + '/Images + Labels' for m in missing)} folder found. "
                "Extract consep.zip there (CoNSeP/Train, CoNSeP/Test)."
            )
        worst = 0.0
        type_disagree = 0
        for split in ("train", "test"):
            image_dir, label_dir = dirs[split]
            labels = {p.stem: p for p in list_files(label_dir, (".mat",))}
            images = list_files(image_dir, (".png",))
            lonely = sorted({p.stem for p in images} ^ set(labels))
            if lonely:
                raise MissingFilesError(
                    f"{image_dir.parent}: images and labels do not pair up: {', '.join(lonely)}. "
                    "Re-extract the archive."
                )
            for image in sorted(images, key=_tile_number):
                rgb = read_rgb(image)
                label = read_label(labels[image.stem])
                inst, original = relabel_sequential(label["inst_map"])
                if inst.shape != rgb.shape[:2]:
                    raise MalformedAnnotationError(
                        f"{labels[image.stem]}: inst_map {inst.shape} does not match {image} {rgb.shape[:2]}"
                    )
                codes = label["inst_type"][original - 1]
                ours = nucleus_properties(inst, original.size)["centroid"]
                if original.size:
                    diff = float(np.abs(ours - label["inst_centroid"][original - 1]).max())
                    worst = max(worst, diff)
                report.regions[split] += int(label["inst_type"].size)
                # A nucleus some of whose type_map pixels say another class than inst_type.
                wrong = label["type_map"] != np.concatenate([[0], codes])[inst]
                type_disagree += int(np.count_nonzero(np.bincount(inst[wrong], minlength=codes.size + 1)[1:]))
                unknown = ~np.isin(codes, np.arange(1, 8))
                if unknown.any():
                    report.dropped["unknown_type_codes_kept_unlabelled"] += int(unknown.sum())
                    codes = np.where(unknown, -1, codes)
                writer.add_image(image.stem, split, rgb, inst, codes, original, mpp=self.card.mpp,
                                 tissue="colon")
        report.extra["inst_centroid_max_difference_px"] = round(worst, 4)
        report.extra["type_map_disagreeing_nuclei"] = type_disagree
        report.notes.append(f"largest |inst_centroid - computed centroid| over all nuclei: {worst:.4f} px")
        return report


def _tile_number(path: Path) -> tuple[int, str]:
    tail = path.stem.rsplit("_", 1)[-1]
    return (int(tail) if tail.isascii() and tail.isdigit() else 0, path.stem)
