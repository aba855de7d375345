"""``nucdata classify``: a folder of images or whole slides and their segmenter's nuclei, classified.

Each image (a PNG/JPEG/TIFF tile, or a pyramidal TIFF whole slide read by region) is paired
with its nuclei by file stem (:func:`find_jobs`) and classified on its own
(:func:`classify_image`):

* **Streaming.** The image is read tile by tile (:mod:`.engine`: tiles of ``tile`` model
  pixels; each nucleus in the tile holding its centroid, its crop cut from the tile's
  region, which holds every window whole), classified a tile per model call, and the
  results are written to the outputs by streamed writers (:mod:`nucdata.formats`). What
  is held for a whole slide is its table of nuclei (ids, centroids, boxes, and outlines
  where the input has them); pixels, crops and probabilities exist one tile (or one
  resumable part) at a time, so the memory does not grow with the slide's area. A slide's
  instance map (a tiled label TIFF) is read by region too, its nuclei measured in one
  streamed pass first.
* **Resume.** Results are kept in parts of about ``part_nuclei`` nuclei
  (``<out>/.nucdata-classify/work/<stem>/part-NNNNN.npz``, each written atomically under
  the image's lock); a killed run's rerun reuses the parts of the same model, inputs and
  options and carries on at the first tile not yet done (finer than per slide: per part).
  Outputs are published when the image is done: each file atomically, then the image's
  record (``<out>/.nucdata-classify/done/<stem>.json``, its key and counts) last; an image
  whose record matches is skipped by a rerun, one without is done again.
* **Many images.** ``workers`` processes on one machine, or a Dask cluster
  (``scheduler``: an address, or a ``dask.distributed.Client``); one task per image, the
  outputs in the shared ``out`` folder. Every path yields the same files.

Outputs per image (``formats``): ``<stem>.geojson`` (QuPath: detections with
``classification`` under ``label_set``, measurements: probability and outside under every
set, area in µm², centroid in µm; stable ids), ``<stem>.json`` (HoVer-Net: ``type`` and
``type_prob`` under ``label_set``, every set under ``type_sets``), ``<stem>.parquet`` (one
row per nucleus, columns per label set).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nucdata.errors import InvalidArgumentError, MalformedAnnotationError, OutputFolderError

__all__ = ["FORMATS", "INPUT_KINDS", "ClassifyOptions", "Job", "classify_image", "classify_paths", "find_jobs"]

#: Output formats: name -> file suffix.
FORMATS = {"geojson": ".geojson", "hovernet-json": ".json", "parquet": ".parquet"}
#: Kinds of segmenter output (the command's flags).
INPUT_KINDS = ("instances", "hovernet-json", "cellvit", "geojson", "centroids")
#: Image files found in an --images folder.
IMAGE_SUFFIXES = (".ome.tiff", ".ome.tif", ".tiff", ".tif", ".svs", ".btf", ".tf8", ".ndpi", ".scn", ".bif",
                  ".png", ".jpg", ".jpeg", ".npy")
#: Where classify keeps its records, work and locks inside ``--out``.
STATE = ".nucdata-classify"
#: Fewest nuclei whose crops are compared with the training data's before the check is made.
CHECK_NUCLEI = 2000


@dataclass
class ClassifyOptions:
    """What ``nucdata classify`` was asked for (beyond the model, the inputs and ``--out``)."""

    formats: tuple[str, ...] = ("geojson",)
    label_set: str | None = None  # the set of GeoJSON classification / HoVer-Net type; None: the first merged
    mpp: float | None = None
    vocabulary: str | None = None  # the input's own classes are labels of this vocabulary
    tile: int = 2048  # model pixels per tile side
    part_nuclei: int = 5_000  # nuclei per resumable part (bounds what a part holds)
    overwrite: bool = False
    device: str = "auto"
    prefetch: bool | None = None  # read and cut the next tile while the model runs (None: on CUDA)

    def check(self) -> None:
        unknown = [f for f in self.formats if f not in FORMATS]
        if unknown or not self.formats:
            raise InvalidArgumentError(f"--format {','.join(self.formats)}: choose from {', '.join(FORMATS)}")
        if self.tile < 64:
            raise InvalidArgumentError(f"tile={self.tile}: give at least 64 pixels")
        if self.part_nuclei < 1:
            raise InvalidArgumentError(f"part_nuclei={self.part_nuclei}: give at least 1")


@dataclass
class Job:
    """One image and its nuclei: ``kind`` of segmenter output in ``nuclei`` (``image_name``: the
    record of a multi-image centroid CSV)."""

    stem: str
    image: Path
    kind: str
    nuclei: Path
    image_name: str | None = None


# -- pairing images and nuclei -------------------------------------------------------------------
def image_stem(path: str | os.PathLike[str]) -> str:
    """An image file's stem (``a.ome.tif`` -> ``a``)."""
    name = Path(path).name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(path).stem


def _nuclei_stem(path: Path, kind: str) -> str:
    from nucdata.formats import cellvit_image, instance_stem

    if kind == "instances":
        return instance_stem(path)
    if kind == "cellvit":
        return cellvit_image(path)
    name = path.name
    for suffix in (".geojson", ".json", ".csv"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _nuclei_files(folder: Path, kind: str) -> list[Path]:
    suffixes = {"instances": (".png", ".tif", ".tiff", ".npy"), "hovernet-json": (".json",),
                "geojson": (".geojson", ".json"), "centroids": (".csv",)}
    if kind == "cellvit":
        return sorted(p for p in folder.rglob("*") if p.is_file() and p.name.split(".")[0].endswith(
            ("cell_detection", "cells")) and not p.name.endswith(".snappy"))
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(suffixes[kind])
                  and not p.name.startswith("."))


def find_jobs(images: str | os.PathLike[str], kind: str, nuclei: str | os.PathLike[str]) -> list[Job]:
    """Pair every image with its nuclei by file stem (a single file with a single file: as given).

    Parameters
    ----------
    images
        An image file, or a folder of them (PNG, JPEG, TIFF and pyramidal TIFF slides, ``.npy``).
    kind
        One of :data:`INPUT_KINDS`.
    nuclei
        The segmenter's output: a file, or a folder matched by stem (instance images:
        ``<stem>.png``, ``<stem>_masks.tif``, ``<stem>_cp_masks.png``...; HoVer-Net:
        ``<stem>.json``; GeoJSON: ``<stem>.geojson``; CellViT: ``<stem>/cell_detection.json``;
        centroids: one CSV with an ``image`` column, or one CSV per image).

    Raises
    ------
    InvalidArgumentError
        A missing path, an image without nuclei, or nuclei without an image; naming them.
    """
    if kind not in INPUT_KINDS:
        raise InvalidArgumentError(f"kind {kind!r}: choose from {', '.join(INPUT_KINDS)}")
    images, nuclei = Path(images), Path(nuclei)
    for path, what in ((images, "--images"), (nuclei, f"--{kind}")):
        if not path.exists():
            raise InvalidArgumentError(f"{what} {path}: no such file or folder; correct the path")
    if images.is_file():
        image_files = [images]
    else:
        image_files = sorted(p for p in images.iterdir() if p.is_file() and not p.name.startswith(".")
                             and p.name.lower().endswith(IMAGE_SUFFIXES))
        if not image_files:
            raise InvalidArgumentError(f"--images {images}: holds no image (PNG, JPEG, TIFF, SVS, .npy)")
    by_stem = {image_stem(p): p for p in image_files}
    if kind == "centroids":
        return _centroid_jobs(by_stem, nuclei, images.is_file())
    files = [nuclei] if nuclei.is_file() else _nuclei_files(nuclei, kind)
    if images.is_file() and nuclei.is_file():
        return [Job(image_stem(images), images, kind, nuclei)]
    found = {}
    for f in files:
        stem = _nuclei_stem(f, kind)
        if stem in by_stem and stem not in found:
            found[stem] = f
    missing = [s for s in by_stem if s not in found]
    if missing and images.is_file():
        raise InvalidArgumentError(f"--{kind} {nuclei}: holds nothing for image {images.name} (stem {missing[0]!r})")
    if not found:
        raise InvalidArgumentError(f"--{kind} {nuclei}: no file matches an image of --images {images} by stem "
                                   f"(images: {', '.join(sorted(by_stem)[:5])}); name each like its image")
    if missing:
        raise InvalidArgumentError(f"--{kind} {nuclei}: no nuclei for {len(missing)} image(s) of --images "
                                   f"({', '.join(missing[:5])}); add them, or point --images at the ones to classify")
    return [Job(s, by_stem[s], kind, found[s]) for s in sorted(found)]


def _centroid_jobs(by_stem: dict[str, Path], nuclei: Path, single_image: bool) -> list[Job]:
    from nucdata.formats import read_centroids_csv

    files = [nuclei] if nuclei.is_file() else _nuclei_files(nuclei, "centroids")
    jobs: dict[str, Job] = {}
    for f in files:
        records = read_centroids_csv(f)
        if single_image and len(by_stem) == 1 and len(records) == 1:
            stem = next(iter(by_stem))
            return [Job(stem, by_stem[stem], "centroids", f, records[0].image)]
        for r in records:
            if r.image in by_stem and r.image not in jobs:
                jobs[r.image] = Job(r.image, by_stem[r.image], "centroids", f, r.image)
    missing = [s for s in by_stem if s not in jobs]
    if not jobs:
        raise InvalidArgumentError(f"--centroids {nuclei}: no row names an image of --images (its 'image' column "
                                   f"or the CSV's stem); images: {', '.join(sorted(by_stem)[:5])}")
    if missing:
        raise InvalidArgumentError(f"--centroids {nuclei}: no nuclei for image(s) {', '.join(missing[:5])}")
    return [jobs[s] for s in sorted(jobs)]


# -- reading one image's inputs ---------------------------------------------------------------------
class _SlideSource:
    """A :class:`nucdata.formats.Slide` as an engine region source (level 0)."""

    def __init__(self, slide):
        self.slide = slide
        self.width, self.height = slide.width, slide.height

    def read(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        return self.slide.read_rgb(x0, y0, x1 - x0, y1 - y0)


class _SlideLabels:
    """A label TIFF read by region (the values of its pixels)."""

    def __init__(self, slide):
        self.slide = slide
        self.shape = (slide.height, slide.width)

    def read(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        region = self.slide.read_region(x0, y0, x1 - x0, y1 - y0)
        return region[..., 0] if region.ndim == 3 else region


def _is_tiff(path: Path) -> bool:
    from nucdata.formats.images import TIFF_SUFFIXES

    return path.name.lower().endswith(TIFF_SUFFIXES)


def _open_image(path: Path, stack: contextlib.ExitStack):
    """The image as a region source and the µm/px its file states."""
    from nucdata.formats import open_slide, read_image
    from nucdata_models.merge.engine import ArraySource

    if path.suffix.lower() == ".npy":
        try:
            return ArraySource(np.load(path, allow_pickle=False, mmap_mode="r")), None
        except ValueError as exc:
            raise InvalidArgumentError(f"{path}: not a plain .npy image ({exc}); save it with numpy.save") from None
    if _is_tiff(path):
        slide = stack.enter_context(open_slide(path))
        return _SlideSource(slide), slide.mpp
    rgb, mpp = read_image(path)
    return ArraySource(rgb), mpp


def _measure_label_slide(labels: _SlideLabels, block: int = 2048):
    """Ids, centroids, boxes and areas of a label TIFF's nuclei, read block by block.

    Each block gives, per id in it, its pixel count, coordinate sums and box; the partial
    rows of all blocks (about one per nucleus, a few more for nuclei cut by block edges:
    seven numbers each) are reduced by id at the end, so any ids work (sparse or huge) and
    memory stays in proportion to the number of nuclei, never to the slide's pixels.
    """
    from nucdata_models.merge.engine import Nuclei

    h, w = labels.shape
    rows: list[np.ndarray] = []
    for y0 in range(0, h, block):
        for x0 in range(0, w, block):
            region = np.asarray(labels.read(x0, y0, min(w, x0 + block), min(h, y0 + block)))
            rr, cc = np.nonzero(region > 0)
            if not rr.size:
                continue
            ids = region[rr, cc].astype(np.int64)
            order = np.argsort(ids, kind="stable")
            ids, xs, ys = ids[order], (cc + x0)[order], (rr + y0)[order]
            starts = np.flatnonzero(np.r_[True, np.diff(ids) != 0])
            rows.append(np.stack([ids[starts], np.diff(np.r_[starts, ids.size]),
                                  np.add.reduceat(xs, starts), np.add.reduceat(ys, starts),
                                  np.minimum.reduceat(xs, starts), np.minimum.reduceat(ys, starts),
                                  np.maximum.reduceat(xs, starts) + 1, np.maximum.reduceat(ys, starts) + 1], 1))
    table = np.concatenate(rows) if rows else np.zeros((0, 8), np.int64)
    table = table[np.argsort(table[:, 0], kind="stable")]
    starts = np.flatnonzero(np.r_[True, np.diff(table[:, 0]) != 0]) if len(table) else np.zeros(0, np.int64)
    ids = table[starts, 0]
    count = np.add.reduceat(table[:, 1], starts) if len(table) else np.zeros(0, np.int64)
    sums = np.add.reduceat(table[:, 2:4], starts) if len(table) else np.zeros((0, 2), np.int64)
    box = np.concatenate([np.minimum.reduceat(table[:, 4:6], starts), np.maximum.reduceat(table[:, 6:8], starts)],
                         1) if len(table) else np.zeros((0, 4), np.int64)
    return Nuclei(ids, sums / np.maximum(count, 1)[:, None], box, count.astype(np.float64), np.ones(ids.size, bool))


def _read_nuclei(job: Job, source, stack: contextlib.ExitStack):
    """The job's nuclei (:class:`.engine.Nuclei`), their mask source and the µm/px their file states."""
    from nucdata import formats
    from nucdata_models.merge.engine import InstanceMasks, NoMasks, Nuclei, PolygonMasks

    if job.kind == "instances":
        if _is_tiff(job.nuclei) and isinstance(source, _SlideSource):
            labels = _SlideLabels(stack.enter_context(formats.open_slide(job.nuclei)))
            if labels.shape != (source.height, source.width):
                raise MalformedAnnotationError(
                    f"{job.nuclei}: the instance map is {labels.shape[1]}x{labels.shape[0]} px, the image "
                    f"{job.image.name} {source.width}x{source.height}; pass the segmenter's labels of this image")
            nuclei = _measure_label_slide(labels)
            return nuclei, InstanceMasks(labels, nuclei.ids), labels.slide.mpp
        inst = formats.read_instances(job.nuclei)
        if inst.shape != (source.height, source.width):
            raise MalformedAnnotationError(
                f"{job.nuclei}: the instance map is {inst.shape[1]}x{inst.shape[0]} px, the image {job.image.name} "
                f"{source.width}x{source.height}; pass the segmenter's labels of this image")
        nuclei, seq = Nuclei.from_instances(inst)
        return nuclei, InstanceMasks(seq, np.arange(1, len(nuclei) + 1)), None
    if job.kind == "hovernet-json":
        record = formats.read_hovernet_json(job.nuclei, image=job.stem)
    elif job.kind == "geojson":
        record = formats.read_qupath(job.nuclei, image=job.stem)
    elif job.kind == "cellvit":
        record = formats.read_cellvit(job.nuclei, image=job.stem)
    else:
        record = next(r for r in formats.read_centroids_csv(job.nuclei) if r.image == job.image_name)
    nuclei = Nuclei.from_record(record, (source.height, source.width))
    masks = PolygonMasks(nuclei) if nuclei.has_outlines else NoMasks()
    return nuclei, masks, record.mpp


def _annotation(nuclei) -> np.ndarray | None:
    """The nuclei's own labels as codes, or as class names where the input names them."""
    if nuclei.annotation is None:
        return None
    if not nuclei.class_names:
        return nuclei.annotation
    return np.array([nuclei.class_names.get(int(c), int(c)) if c >= 0 else "" for c in nuclei.annotation],
                    dtype=object)


# -- one image -------------------------------------------------------------------------------------
def _stat(path: Path) -> list[Any]:
    st = path.stat()
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]


def _key(classifier, job: Job, options: ClassifyOptions) -> str:
    """What makes an image's outputs: the model, the input files and the options that change them."""
    from nucdata._util.version import VERSION

    parts = {"model": model_identity(classifier), "image": _stat(job.image), "nuclei": _stat(job.nuclei),
             "image_name": job.image_name, "kind": job.kind, "mpp": options.mpp, "vocabulary": options.vocabulary,
             "tile": options.tile, "part_nuclei": options.part_nuclei, "label_set": options.label_set,
             "formats": sorted(options.formats), "nucdata": VERSION}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def model_identity(classifier) -> str:
    """A digest of the classifier's weights and description (cached on it)."""
    cached = getattr(classifier, "_identity", None)
    if cached is None:
        h = hashlib.sha256(json.dumps(classifier.meta, sort_keys=True, default=str).encode())
        for module in (classifier.trainer.base, classifier.trainer.heads):
            for name, tensor in module.state_dict().items():
                h.update(name.encode())
                h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        cached = h.hexdigest()[:20]
        classifier._identity = cached
    return cached


def _outputs(out: Path, stem: str, options: ClassifyOptions) -> dict[str, Path]:
    from nucdata._util.paths import child_path

    return {f: child_path(out, stem, FORMATS[f], source=out, element="an image stem",
                          fix="rename the image file") for f in options.formats}


def _ours(record: Path) -> set[str]:
    """The names of the outputs an image's record says classify wrote (any earlier run, any format)."""
    with contextlib.suppress(OSError, json.JSONDecodeError, TypeError, AttributeError):
        if record.is_file():
            names = json.loads(record.read_text(encoding="utf-8")).get("outputs", [])
            return {n for n in names if isinstance(n, str)}
    return set()


def _check_targets(out: Path, job: Job, targets: dict[str, Path], ours: set[str], options: ClassifyOptions) -> None:
    """Refuse to replace files classify did not write (``ours``: :func:`_ours`; unless ``overwrite``)."""
    if options.overwrite:
        return
    foreign = [p.name for p in targets.values() if p.exists() and p.name not in ours]
    inputs = {job.image.resolve(), job.nuclei.resolve()}
    clash = [p.name for p in targets.values() if p.exists() and p.resolve() in inputs]
    if clash:
        raise OutputFolderError(f"{out}: writing {clash[0]} would replace an input of {job.stem}; choose another "
                                "--out")
    if foreign:
        raise OutputFolderError(f"{out}: {', '.join(foreign)} exist(s) and classify did not write it; nothing was "
                                "changed. Choose another --out, or pass --overwrite to replace it.")


def _default_label_set(classifier, wanted: str | None) -> str:
    from nucdata.labels import MERGED_LABEL_SETS

    if wanted is not None:
        if wanted not in classifier.names:
            raise InvalidArgumentError(f"--label-set {wanted}: the model has {', '.join(classifier.names)}")
        return wanted
    return next((s for s in classifier.names if s in MERGED_LABEL_SETS), classifier.names[0])


def _outlines(masks, nuclei, rows: np.ndarray, rings: bool, contours: bool):
    """Outlines of one tile's nuclei from the masks their crops were cut with (native pixels).

    ``rings``: every ring of the mask (the contour between its pixels' centres and the
    background, longest first: further parts and holes follow, even-odd rule), what QuPath
    GeoJSON gets from an instance map. ``contours``: the longest ring with each vertex moved
    onto the mask pixel it borders, the integer contour through the boundary pixels' centres
    HoVer-Net writes (OpenCV's); both give the mask back when rasterised
    (:func:`nucdata.formats.ring_pixels`), a HoVer-Net contour the mask's largest part only.
    """
    from skimage.measure import find_contours

    box = nuclei.bbox[rows]
    x0, y0 = (int(v) for v in box[:, :2].min(0))
    x1, y1 = (int(v) for v in box[:, 2:].max(0))
    local = masks.paint(x0, y0, x1, y1, rows)
    all_rings, all_contours = [], []
    for k in range(len(rows)):
        bx0, by0, bx1, by1 = (int(v) for v in box[k] - np.array([x0, y0, x0, y0]))
        mask = local[by0:by1, bx0:bx1] == k + 1
        found = sorted(find_contours(np.pad(mask, 1).astype(np.float32), 0.5), key=len, reverse=True)
        # (row, col) in the padded window -> (x, y) in the image
        traced = [np.stack([c[:, 1] + bx0 + x0 - 1, c[:, 0] + by0 + y0 - 1], 1) for c in found]
        if rings:
            all_rings.append(traced)
        if contours:
            all_contours.append([_on_pixels(traced[0], mask, bx0 + x0, by0 + y0)] if traced else [])
    return all_rings, all_contours


def _on_pixels(outline: np.ndarray, mask: np.ndarray, x0: int, y0: int) -> np.ndarray:
    """A half-pixel outline moved onto the mask's boundary pixels (integer x, y, repeats dropped)."""
    h, w = mask.shape
    out: list[tuple[float, float]] = []
    for x, y in outline:
        for cx, cy in ((np.floor(x), np.floor(y)), (np.ceil(x), np.ceil(y)), (np.floor(x), np.ceil(y)),
                       (np.ceil(x), np.floor(y))):
            i, j = int(cy) - y0, int(cx) - x0
            if 0 <= i < h and 0 <= j < w and mask[i, j]:
                if not out or out[-1] != (cx, cy):
                    out.append((cx, cy))
                break
    if len(out) > 1 and out[0] == out[-1]:
        out.pop()
    return np.array(out, np.float64).reshape(-1, 2)


class _Parts:
    """The resumable parts of one image's results (``work/<stem>/``)."""

    def __init__(self, folder: Path, key: str):
        self.folder = folder
        self.key = key
        marker = folder / "key.json"
        if folder.is_dir():
            try:
                same = json.loads(marker.read_text(encoding="utf-8")).get("key") == key
            except (OSError, json.JSONDecodeError, AttributeError):
                same = False
            if not same:
                shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
        if not marker.is_file():
            from nucdata._util.atomic import atomic_write_json

            atomic_write_json(marker, {"key": key})
        for stale in folder.glob(".*.tmp"):
            stale.unlink(missing_ok=True)

    def done(self) -> list[Path]:
        return sorted(self.folder.glob("part-*.npz"))

    def next_tile(self) -> int:
        parts = self.done()
        if not parts:
            return 0
        with np.load(parts[-1], allow_pickle=False) as z:
            return int(z["tile_end"])

    def write(self, index: int, arrays: dict[str, np.ndarray]) -> Path:
        from nucdata._util.atomic import atomic_path

        path = self.folder / f"part-{index:05d}.npz"
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
        return path

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def classify_image(classifier, job: Job, out: str | os.PathLike[str], options: ClassifyOptions | None = None,
                   say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Classify one image's nuclei and publish its outputs (module docstring), resuming a killed run.

    Returns
    -------
    dict
        ``image``, ``nuclei``, ``outputs`` (file names), ``skipped`` (already done),
        ``resumed_parts``, ``gaps`` (the :class:`DomainShiftWarning` messages), ``seconds``.
    """
    from nucdata._util.atomic import atomic_write_json
    from nucdata._util.faults import fault_point
    from nucdata._util.locks import dataset_lock

    options = options or ClassifyOptions()
    options.check()
    out = Path(out)
    start = time.perf_counter()
    state = out / STATE
    targets = _outputs(out, job.stem, options)
    record = state / "done" / f"{job.stem}.json"
    (state / "locks" / job.stem).mkdir(parents=True, exist_ok=True)
    with dataset_lock(state / "locks" / job.stem):
        key = _key(classifier, job, options)
        if record.is_file() and all(p.is_file() for p in targets.values()):
            with contextlib.suppress(OSError, json.JSONDecodeError, AttributeError):
                done = json.loads(record.read_text(encoding="utf-8"))
                if done.get("key") == key and set(done.get("outputs", [])) >= {p.name for p in targets.values()}:
                    return {**done, "skipped": True, "seconds": round(time.perf_counter() - start, 3)}
        ours = _ours(record)
        _check_targets(out, job, targets, ours, options)
        for target in targets.values():  # what a killed writer left
            for stale in out.glob(f".{target.name}.*.tmp"):
                stale.unlink(missing_ok=True)
        parts = _Parts(state / "work" / job.stem, key)
        with contextlib.ExitStack() as stack:
            summary = _classify(classifier, job, options, parts, stack, say)
            # every output of this image classify wrote, this run's formats and earlier runs' still there
            kept = {name for name in ours if name not in {p.name for p in targets.values()} and (out / name).is_file()}
            summary["outputs"] = [p.name for p in targets.values()] + sorted(kept)
            _publish(classifier, job, options, parts, targets, summary, stack)
        fault_point("classify:outputs-published")
        summary["key"] = key
        atomic_write_json(record, summary)
        parts.remove()
    return {**summary, "skipped": False, "seconds": round(time.perf_counter() - start, 3)}


def _classify(classifier, job: Job, options: ClassifyOptions, parts: _Parts, stack: contextlib.ExitStack,
              say: Callable[[str], None] | None) -> dict[str, Any]:
    """Cut, classify and store the parts of one image (from the first tile not yet done)."""
    from nucdata._util.faults import fault_point
    from nucdata._util.progress import Counter
    from nucdata.errors import DomainShiftWarning
    from nucdata_models.merge.card import crop_statistics
    from nucdata_models.merge.engine import (
        InstanceMasks,
        NoMasks,
        cut_tile,
        model_frame,
        plan_tiles,
    )

    source, stated = _open_image(job.image, stack)
    nuclei, masks, nuclei_mpp = _read_nuclei(job, source, stack)
    mpp = classifier.resolve_mpp(options.mpp, stated if stated is not None else nuclei_mpp, str(job.image))
    scale = classifier.scale_for(mpp)
    cen, _, w, h = model_frame(nuclei, scale, source.width, source.height)
    tiles, _ = plan_tiles(cen, w, h, options.tile)
    whole = len(tiles) <= 1 and max(w, h) <= options.tile
    rings = isinstance(masks, InstanceMasks) and "geojson" in options.formats
    contours = not isinstance(masks, NoMasks) and "hovernet-json" in options.formats
    done = parts.done()
    first = parts.next_tile()
    resumed = len(done)
    gaps: list[str] | None = None
    for path in done:  # the check a killed run made
        with np.load(path, allow_pickle=False) as z:
            found = json.loads(str(z["gaps"])) if "gaps" in z.files else None
        if found is not None:
            gaps = found
            break
    seen = sum(len(t.rows) for t in tiles if t.index < first)
    counter = Counter(total=len(nuclei), desc=f"classifying {job.stem}", unit="nuclei")
    counter.update(seen)
    pending: dict[str, list[np.ndarray]] = {}
    stats: dict[str, list[np.ndarray]] = {}
    part_index = len(done)

    def flush(tile_end: int) -> None:
        nonlocal pending, part_index
        if not pending:
            return
        arrays = {k: np.concatenate(v) for k, v in pending.items()}
        arrays["tile_end"] = np.array(tile_end)
        arrays["gaps"] = np.array(json.dumps(gaps))  # null until the check is made
        parts.write(part_index, arrays)
        part_index += 1
        pending = {}
        fault_point("classify:part-written")

    todo = [t for t in tiles if t.index >= first]

    def prepare(tile):  # everything that reads the files: one thread at a time
        crops = cut_tile(source, masks, nuclei, tile.rows, classifier.crop_size, scale, whole=whole)
        outlines = _outlines(masks, nuclei, tile.rows, rings, contours) if rings or contours else ([], [])
        return tile, crops, outlines

    ahead = options.prefetch if options.prefetch is not None else classifier.device.type == "cuda"
    for n_done, (tile, crops, (traced, hover)) in enumerate(_prefetched(prepare, todo, ahead)):
        if gaps is None:
            for k, v in crop_statistics(crops).items():
                stats.setdefault(k, []).append(v)
            seen_crops = sum(len(v) for v in next(iter(stats.values()), []))
            if seen_crops >= CHECK_NUCLEI or n_done == len(todo) - 1:
                gaps = classifier.gaps({k: np.concatenate(v) for k, v in stats.items()}, mpp)
                for gap in gaps:
                    warnings.warn(f"{job.image}: far from the training data: {gap}", DomainShiftWarning, stacklevel=2)
                    if say is not None:
                        say(f"warning: {job.stem}: far from the training data: {gap}")
                stats = {}
        probs = classifier.probabilities(crops)
        pending.setdefault("rows", []).append(tile.rows)
        for s, p in probs.items():
            pending.setdefault(f"probs:{s}", []).append(p.astype(np.float32))
        for name, per in (("rings", traced), ("contours", hover)):
            if per:
                v, rs, ro = _flat_rings(per)
                pending.setdefault(f"{name}:vertices", []).append(v)
                pending.setdefault(f"{name}:counts", []).append(np.diff(ro))
                pending.setdefault(f"{name}:lengths", []).append(np.diff(rs))
        counter.update(len(tile.rows))
        if sum(len(r) for r in pending["rows"]) >= options.part_nuclei:
            flush(tile.index + 1)
    flush(todo[-1].index + 1 if todo else first)
    counter.close()
    return {"image": job.stem, "nuclei": len(nuclei), "mpp": mpp, "scale": scale, "tiles": len(tiles),
            "resumed_parts": resumed, "gaps": gaps or [],
            "_nuclei": nuclei}


def _prefetched(prepare: Callable[[Any], Any], items: Sequence[Any], ahead: bool):
    """``prepare(item)`` for every item in order; with ``ahead``, the next one is prepared in a thread
    while the caller works on this one (on a GPU: reading and cutting overlap the model). One
    item is prepared at a time, so the files are read by one thread only; memory holds two."""
    if not ahead:
        yield from (prepare(item) for item in items)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="nucdata-classify-read") as pool:
        future = pool.submit(prepare, items[0]) if items else None
        for i in range(len(items)):
            result = future.result()
            future = pool.submit(prepare, items[i + 1]) if i + 1 < len(items) else None
            yield result


def _flat_rings(per):
    """Rings per nucleus as flat vertices, ring starts and ring ranges."""
    rings = [np.asarray(r, np.float64).reshape(-1, 2) for p in per for r in p]
    counts = np.array([len(p) for p in per], np.int64)
    lengths = np.array([len(r) for r in rings], np.int64)
    vertices = np.concatenate(rings) if rings else np.zeros((0, 2))
    return (vertices, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
            np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))


def _publish(classifier, job: Job, options: ClassifyOptions, parts: _Parts, targets: dict[str, Path],
             summary: dict[str, Any], stack: contextlib.ExitStack) -> None:
    """Stream the parts into the outputs, each published atomically when complete."""
    from nucdata import formats

    nuclei = summary.pop("_nuclei")
    label_set = _default_label_set(classifier, options.label_set)
    annotation = _annotation(nuclei) if options.vocabulary else None
    writers = {}
    with contextlib.ExitStack() as opened:
        if "geojson" in targets:
            writers["geojson"] = opened.enter_context(
                formats.QuPathWriter(targets["geojson"], classify_by=label_set, id_prefix=job.stem))
        if "hovernet-json" in targets:
            writers["hovernet-json"] = opened.enter_context(
                formats.HoverNetWriter(targets["hovernet-json"], classify_by=label_set))
        if "parquet" in targets:
            writers["parquet"] = opened.enter_context(formats.ParquetWriter(targets["parquet"]))
        for path in parts.done():
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            record = _record(classifier, job, nuclei, arrays, summary["mpp"], annotation, options)
            for name, writer in writers.items():
                if name == "hovernet-json" and "contours:vertices" in arrays:
                    writer.add(_with_outlines(record, _unflat(arrays, "contours")))
                else:
                    writer.add(record)


def _unflat(arrays: dict[str, np.ndarray], name: str) -> list[list[np.ndarray]]:
    """Per nucleus its rings, from a part's flat ``<name>:vertices/counts/lengths``."""
    v, counts, lengths = arrays[f"{name}:vertices"], arrays[f"{name}:counts"], arrays[f"{name}:lengths"]
    starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    of = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return [[v[starts[r] : starts[r + 1]] for r in range(of[i], of[i + 1])] for i in range(len(counts))]


def _with_outlines(record, per: list[list[np.ndarray]]):
    """``record`` with these outlines (first ring; further rings as holes or parts)."""
    from dataclasses import replace

    polygons = [p[0] if p else np.zeros((0, 2)) for p in per]
    holes = {i: p[1:] for i, p in enumerate(per) if len(p) > 1}
    return replace(record, polygons=polygons, holes=holes)


def _record(classifier, job: Job, nuclei, arrays: dict[str, np.ndarray], mpp: float, annotation,
            options: ClassifyOptions):
    """One part's nuclei as a :class:`nucdata.formats.Nuclei` with every label set."""
    from nucdata import formats

    rows = arrays["rows"].astype(np.int64)
    probs = {s: arrays[f"probs:{s}"] for s in classifier.names}
    sets = classifier.publish(probs, None if annotation is None else annotation[rows], options.vocabulary,
                              None, None)
    polygons, holes = None, {}
    if "rings:vertices" in arrays:
        per = _unflat(arrays, "rings")
    elif nuclei.has_outlines:
        per = [nuclei.rings(int(r)) for r in rows]
    else:
        per = None
    if per is not None:
        polygons = [p[0] if p else np.zeros((0, 2)) for p in per]
        holes = {i: p[1:] for i, p in enumerate(per) if len(p) > 1}
    set_labels = {}
    for s, r in sets.items():
        colours = [tuple(int(r.colors[k].lstrip("#")[j : j + 2], 16) for j in (0, 2, 4))
                   for k in range(len(r.class_names))]
        set_labels[s] = formats.SetLabels(s, list(r.class_names), r.label, r.probability, colours, r.candidates,
                                          r.outside_probability.astype(np.float64))
    return formats.Nuclei(image=job.stem, ids=nuclei.ids[rows], centroids=nuclei.centroid[rows], polygons=polygons,
                          holes=holes, sets=set_labels, areas=nuclei.area[rows], mpp=mpp, bboxes=nuclei.bbox[rows],
                          uuids=None if nuclei.uuids is None else nuclei.uuids[rows])


# -- many images -----------------------------------------------------------------------------------
_LOADED: dict[tuple[str, str], Any] = {}


def _classifier(model: str, device: str):
    """The classifier of ``model``, loaded once per process (workers and Dask tasks reuse it)."""
    from nucdata_models.merge.classify import Classifier

    key = (str(model), device)
    if key not in _LOADED:
        _LOADED[key] = Classifier.from_pretrained(model, device=device)
    return _LOADED[key]


def _task(model: str, job: Job, out: str, options: dict[str, Any], threads: int | None = None) -> dict[str, Any]:
    """One image on a worker (a process of ``--workers``, or a Dask worker)."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    opts = ClassifyOptions(**options)
    opts.formats = tuple(opts.formats)
    return classify_image(_classifier(model, opts.device), job, out, opts)


def classify_paths(model: str | os.PathLike[str], images: str | os.PathLike[str], out: str | os.PathLike[str], *,
                   instances: str | os.PathLike[str] | None = None, hovernet_json: str | os.PathLike[str] | None = None,
                   cellvit: str | os.PathLike[str] | None = None, geojson: str | os.PathLike[str] | None = None,
                   centroids: str | os.PathLike[str] | None = None, options: ClassifyOptions | None = None,
                   workers: int = 1, scheduler: Any = None, say: Callable[[str], None] | None = None
                   ) -> list[dict[str, Any]]:
    """Classify every image of ``images`` with its segmenter's nuclei; what ``nucdata classify`` runs.

    Parameters
    ----------
    model
        A ``build-merged`` output folder or its ``classifier.safetensors``.
    images
        An image or slide, or a folder of them.
    out
        The output folder (module docstring: files per image, resume records).
    instances, hovernet_json, cellvit, geojson, centroids
        The nuclei, exactly one (a file, or a folder matched by stem: :func:`find_jobs`).
    options
        :class:`ClassifyOptions` (formats, label set, µm/px, vocabulary, tile, ...).
    workers
        Processes on this machine (one image each at a time).
    scheduler
        A Dask scheduler address (``tcp://host:8786``) or a ``dask.distributed.Client``:
        one task per image on the cluster (``pip install "nucdata[distributed]"``); the
        workers must see ``model``, the inputs and ``out`` at the same paths. Each task
        runs with this process's ``torch.get_num_threads()``, so the outputs are the ones a
        serial run gives, byte for byte (set the threads before calling to change it).

    Returns
    -------
    list of dict
        Per image, :func:`classify_image`'s summary, in stem order.
    """
    options = options or ClassifyOptions()
    options.check()
    given = {k: v for k, v in (("instances", instances), ("hovernet-json", hovernet_json), ("cellvit", cellvit),
                                ("geojson", geojson), ("centroids", centroids)) if v is not None}
    if len(given) != 1:
        raise InvalidArgumentError("give the nuclei exactly one way: --instances, --hovernet-json, --cellvit, "
                                   f"--geojson or --centroids (got {', '.join('--' + k for k in given) or 'none'})")
    kind, where = next(iter(given.items()))
    jobs = find_jobs(images, kind, where)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = str(Path(model).resolve())
    plain = {**asdict(options), "formats": list(options.formats)}
    if scheduler is not None:
        return _on_dask(scheduler, model, jobs, out, plain)
    if workers > 1 and len(jobs) > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        threads = max(1, (os.cpu_count() or 1) // workers)
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=mp.get_context("spawn")) as pool:
            futures = [pool.submit(_task, model, job, str(out), plain, threads) for job in jobs]
            results = [f.result() for f in futures]
    else:
        classifier = _classifier(model, options.device)
        results = [classify_image(classifier, job, out, options, say) for job in jobs]
    if say is not None:
        for r in results:
            say(_line(r))
    return results


def _line(r: dict[str, Any]) -> str:
    what = "up to date" if r.get("skipped") else f"{r['nuclei']:,} nuclei in {r['seconds']:.1f} s"
    resumed = f", resumed after {r['resumed_parts']} part(s)" if r.get("resumed_parts") and not r.get("skipped") \
        else ""
    return f"{r['image']}: {what}{resumed} -> {', '.join(r['outputs'])}"


def _on_dask(scheduler: Any, model: str, jobs: Sequence[Job], out: Path, options: dict[str, Any]
             ) -> list[dict[str, Any]]:
    try:
        from dask.distributed import Client
    except ImportError:
        from nucdata.errors import MissingDependencyError

        raise MissingDependencyError('"nucdata[distributed]"', "--scheduler (a Dask cluster); without it use "
                                     "--workers N on one machine") from None
    import torch

    # every task computes with this process's torch thread count: a CPU's float sums (so the
    # outputs' last digits) depend on it, and a worker thread does not inherit it
    threads = torch.get_num_threads()
    client = scheduler if isinstance(scheduler, Client) else Client(scheduler)
    try:
        futures = [client.submit(_task, model, job, str(out), options, threads, key=f"nucdata-classify-{job.stem}-"
                                 f"{hashlib.sha256(str(job.image).encode()).hexdigest()[:8]}", pure=False)
                   for job in jobs]
        return client.gather(futures)
    finally:
        if client is not scheduler:
            client.close()
