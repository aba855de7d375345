"""PanNuke: three folds of float64 npy stacks, streamed a few patches at a time.

Rules (recorded in every manifest):

* ``images.npy`` values are 0-255 held in float64; they are rounded to the nearest
  integer and clipped to 0-255 before the cast to uint8 (patches with values outside
  0-255 are counted).
* ``masks.npy`` channels 0-4 are per-class instance maps (native code = channel
  index); channel 5 (background) is not used. Ids restart in every channel, so every
  (channel, id) pair is its own nucleus; nuclei are numbered by channel, then id.
* A pixel claimed by two channels goes to the lower channel; a nucleus left with no
  pixel is dropped. Both are counted.
* Patches without nuclei are kept.

Reading: each ``.npy`` is opened once with ``np.load(mmap_mode="r")``, which checks the
header and that the file holds every byte its shape promises (a truncated file is a
typed error before anything is converted). The patches are then read in small chunks
with positioned reads into reused buffers rather than through the memory map, because
every page touched through a map stays in the process's resident set until the map is
closed: a 12 GB fold would show as 12 GB RSS. Two worker threads decode chunks ahead of
the writer (numpy and file reads release the GIL), at most ``AHEAD`` chunks at a time,
so peak memory is a few chunk buffers whatever the fold size.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import re
import sys
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from tokenize import TokenError

import numpy as np

from nucdata._util.instances import count_ids, nucleus_properties, relabel_sequential
from nucdata.datasets._base import ConversionReport, Converter, walk_dirs
from nucdata.errors import (
    CorruptArchiveError,
    InvalidArgumentError,
    MalformedAnnotationError,
    MissingFilesError,
)
from nucdata.store import StoreWriter

CHANNELS = 5  # class channels 0-4; channel 5 is background
CHUNK = 8  # patches per read: 12.6 MB of images and 25 MB of masks as float64
AHEAD = 3  # chunks decoded ahead of the writer (bounds memory: AHEAD + 1 buffer sets)
CLASS_NAMES = {0: "Neoplastic", 1: "Inflammatory", 2: "Connective", 3: "Dead", 4: "Epithelial"}
_FOLD = re.compile(r"(?:fold|part)[ _]?(\d)", re.IGNORECASE)
_BLOCK = 16384  # rows per matrix product: OpenBLAS splits larger ones over threads,
# which then fight the two decoding threads for two cores
_FAST_MAX_ID = 1 << 20  # above this, keys of the fast path would lose float64 exactness
_MAX_ID = (2**63 - 1) // (CHANNELS + 1)  # larger ids would overflow the exact path's int64 keys


@dataclass(frozen=True)
class NpyFile:
    """An ``.npy`` array's location in its file, checked once through a memory map."""

    path: Path
    shape: tuple[int, ...]
    dtype: np.dtype
    offset: int

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize

    def read_rows(self, fh: object, start: int, out: np.ndarray) -> np.ndarray:
        """Read rows ``start:start+len(out)`` into ``out`` with one positioned read."""
        view = memoryview(out).cast("B")
        fd = fh.fileno()  # type: ignore[attr-defined]
        done = 0
        while done < view.nbytes:  # preadv may return short counts on large reads
            got = os.preadv(fd, [view[done:]], self.offset + start * self.row_bytes + done)
            if got == 0:
                raise CorruptArchiveError(
                    f"{self.path}: ended while reading patch {start + done // self.row_bytes} "
                    "(the file shrank after it was opened). Extract or download the fold again."
                )
            done += got
        return out


def open_npy(path: Path) -> NpyFile:
    """Check an ``.npy`` file's header and length; truncation becomes a typed error."""
    try:
        with open(path, "rb") as fh:
            magic = fh.read(6)
    except OSError as exc:
        raise CorruptArchiveError(f"{path}: cannot be read ({exc.strerror or exc}).") from None
    if magic != b"\x93NUMPY":
        kind = "a zip or .npz archive" if magic.startswith(b"PK") else "not an .npy array"
        raise CorruptArchiveError(
            f"{path}: the file is {kind} (starts with {magic!r}), though named .npy. PanNuke folds "
            "hold plain .npy arrays; extract or download the fold again."
        )
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError, SyntaxError, TypeError, TokenError) as exc:  # a damaged header
        # numpy raises ValueError ("mmap length is greater than file size") for a
        # truncated body and ValueError/EOFError for a damaged header.
        raise CorruptArchiveError(
            f"{path}: cannot be memory-mapped ({exc}); the file is truncated or not an .npy "
            "array. Extract or download the fold again."
        ) from exc
    if array.ndim == 0:
        raise MalformedAnnotationError(
            f"{path}: holds a single value ({array.dtype}), not an array of patches. Extract or "
            "download the fold again."
        )
    if not isinstance(array, np.memmap):  # zero-size arrays come back as plain arrays
        return NpyFile(path, array.shape, array.dtype, 0)
    if array.ndim > 1 and not array.flags.c_contiguous:
        raise MalformedAnnotationError(
            f"{path}: stored in Fortran order; PanNuke's arrays are C-ordered. Use the original file."
        )
    info = NpyFile(path, tuple(array.shape), array.dtype, int(array.offset))
    del array  # closes the map: the data is read with positioned reads
    return info


def find_folds(folder: Path) -> dict[int, dict[str, Path]]:
    """``{fold: {"images": path, "masks": path, "types": path}}`` found under ``folder``.

    The fold number comes from the path (``Fold 1/``, ``fold1/``, Kaggle's ``Part 1/``).
    """
    folds: dict[int, dict[str, Path]] = {}
    for d in walk_dirs(folder):
        for name in ("images", "masks", "types"):
            path = d / f"{name}.npy"
            if path.is_file():
                match = _FOLD.search(str(path.relative_to(folder)))
                if match:
                    folds.setdefault(int(match.group(1)), {}).setdefault(name, path)
    return folds


def merge_channels(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """Instance map, native codes, per-channel ids and counts for one patch (exact path).

    Parameters
    ----------
    masks
        ``(H, W, >=5)`` with non-negative integral ids in channels 0-4.

    Returns
    -------
    inst, codes, ids, before, overlap
        The sequential int32 map; the channel and in-channel id of each nucleus
        (numbered by channel, then id); the number of (channel, id) pairs present
        before overlaps were resolved; the number of pixels claimed by more than one
        channel (the lowest channel keeps them).
    """
    channels = np.asarray(masks)[..., :CHANNELS].astype(np.int64)
    if channels.min(initial=0) < 0:
        raise ValueError("negative instance id")
    stride = int(channels.max(initial=0)) + 1
    if stride > _MAX_ID:  # channel * stride + id must fit in int64
        raise ValueError("instance id too large")
    # ids are counted without a table sized by the largest id (an id of 2**40 is legal, if odd)
    before = sum(count_ids(channels[..., c]) for c in range(CHANNELS))
    present = channels > 0
    claimed = present.sum(axis=-1)
    overlap = int((claimed > 1).sum())
    first = np.argmax(present, axis=-1)  # lowest channel wins
    ids = np.take_along_axis(channels, first[..., None], axis=-1)[..., 0]
    key = np.where(claimed > 0, first * stride + ids, 0)
    inst, original = relabel_sequential(key)
    return inst, (original // stride).astype(np.int32), original % stride, before, overlap


@dataclass
class _Chunk:
    start: int
    rgb: np.ndarray  # (n, H, W, 3) uint8
    relabelled: list[tuple[np.ndarray, np.ndarray] | None]  # per patch (inst, key) when exact
    stride: int
    exact: np.ndarray  # (n,) bool: no pixel claimed twice, keys are exact
    clipped: np.ndarray  # (n,) bool: image values outside 0-255
    masks: np.ndarray  # the chunk's native masks (for the exact path)
    buffers: tuple[np.ndarray, np.ndarray] | None = None  # returned to the pool after use


def _decode(chunk_start: int, images: np.ndarray, masks: np.ndarray) -> _Chunk:
    """Fast path for one chunk: uint8 RGB and one key per pixel, overlaps detected."""
    n = images.shape[0]
    flat_images = images.reshape(n, -1)
    clipped = (flat_images.min(axis=1) < 0) | (flat_images.max(axis=1) > 255)
    np.clip(images, 0, 255, out=images)
    images += 0.5  # non-negative: truncating x + 0.5 rounds half up
    rgb = images.astype(np.uint8)
    if masks.min() < 0:
        raise ValueError("negative instance id")
    top = float(masks.max(initial=0))  # channel 5 holds 0/1: the whole buffer is cheaper to scan
    if not top < _MAX_ID:  # NaN, inf or beyond int64 keys: the exact path names the patch
        top = float(_FAST_MAX_ID)
    stride = int(top) + 1
    # One pass over the masks: with w_c = 1 and v_c = stride * c, a pixel claimed by a
    # single channel c with id i gives s1 = i and s2 = stride * c * i, so
    # key = s1 + s2 / s1 = i + stride * c. Pixels claimed twice give other values;
    # they are detected by counting nonzero entries and handled by the exact path.
    weights = np.zeros((masks.shape[-1], 2))
    weights[:CHANNELS, 0] = 1.0
    weights[:CHANNELS, 1] = stride * np.arange(CHANNELS)
    flat = masks.reshape(-1, masks.shape[-1])
    sums = np.empty((flat.shape[0], 2))
    for row in range(0, flat.shape[0], _BLOCK):  # small products stay on one BLAS thread
        np.matmul(flat[row:row + _BLOCK], weights, out=sums[row:row + _BLOCK])
    s1, s2 = sums[:, 0], sums[:, 1]
    s2 /= np.maximum(s1, 1.0)
    s1 += s2
    keys = s1.astype(np.int64).reshape(masks.shape[:3])
    claims = np.count_nonzero(masks, axis=(1, 2, 3))
    if masks.shape[-1] > CHANNELS:
        claims -= np.count_nonzero(masks[..., CHANNELS:], axis=(1, 2, 3))
    exact = (claims == np.count_nonzero(keys, axis=(1, 2))) & (stride < _FAST_MAX_ID)
    # Non-integral ids would be truncated silently; send such patches to the exact path,
    # which raises on them.
    exact &= (keys == s1.reshape(masks.shape[:3])).all(axis=(1, 2))
    # Relabel here, in the worker thread, to keep the writer's thread free.
    relabelled = [relabel_sequential(keys[j]) if exact[j] else None for j in range(n)]
    return _Chunk(chunk_start, rgb, relabelled, stride, exact, clipped, masks)


@dataclass
class _Patch:
    """One decoded patch, ready for the writer."""

    rgb: np.ndarray
    inst: np.ndarray
    codes: np.ndarray
    ids: np.ndarray
    before: int
    overlap: int
    clipped: bool
    properties: dict[str, np.ndarray] | None = None  # nucleus_properties, when computed by a worker


def _patches(chunk: _Chunk, masks: NpyFile, properties: bool = False) -> tuple[int, list[_Patch]]:
    """The patches of a decoded chunk (overlapping ones resolved by the exact path)."""
    out = []
    for j in range(chunk.rgb.shape[0]):
        if chunk.exact[j]:
            inst, original = chunk.relabelled[j]  # type: ignore[misc]
            codes = (original // chunk.stride).astype(np.int32)
            ids = original % chunk.stride
            before, overlap = int(original.size), 0
        else:
            inst, codes, ids, before, overlap = PanNuke._exact(masks, chunk.masks[j], chunk.start + j)
        inst = inst.astype(np.int32, copy=False)
        props = nucleus_properties(inst, int(codes.size)) if properties else None
        out.append(_Patch(chunk.rgb[j], inst, codes, ids, before, overlap, bool(chunk.clipped[j]), props))
    return chunk.start, out


def _decode_chunk(images: NpyFile, masks: NpyFile, start: int, stop: int) -> list[_Patch]:
    """A worker process's task: read, decode and measure patches ``start:stop``."""
    with open(images.path, "rb") as fi, open(masks.path, "rb") as fm:
        img = images.read_rows(fi, start, np.empty((stop - start, *images.shape[1:]), images.dtype))
        msk = masks.read_rows(fm, start, np.empty((stop - start, *masks.shape[1:]), masks.dtype))
    chunk = _decode(start, img.astype(np.float64, copy=False), msk)
    return _patches(chunk, masks, properties=True)[1]


def default_jobs() -> int:
    """Processes for ``jobs=None``: the cores this process may use, less one for the writer.

    The writer (hashing and writing every patch, in this process) needs a core of its
    own: on two cores two decoding processes plus the writer measured slower than one
    process with two decoding threads (``benchmarks/pannuke_conversion.py``), so two
    cores give ``jobs=1``.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores - 1)


class PanNuke(Converter):
    """PanNuke folds from ``images.npy``, ``masks.npy`` and ``types.npy``."""

    name = "pannuke"
    version = "1"

    def convert(
        self, folder: Path, writer: StoreWriter, progress: Callable[[str], None] | None = None,
        jobs: int | None = None,
    ) -> ConversionReport:
        """Convert every fold; ``jobs`` processes decode chunks of patches (see :func:`default_jobs`).

        With ``jobs`` above 1 the channel merge, relabelling and nucleus properties run
        in a pool of processes over chunks of ``CHUNK`` patches (each reads its own
        chunk), at most ``jobs + 1`` chunks ahead of the writer, which adds the patches
        in order: the store is the same for every ``jobs``, and memory stays a few
        chunks whatever the fold size. ``jobs=1`` decodes in two threads of this process.
        """
        jobs = default_jobs() if jobs is None else int(jobs)
        if jobs < 1:
            raise InvalidArgumentError(f"jobs must be a positive number of processes, got {jobs}")
        report = ConversionReport(rules={
            "pixels": "float64 0-255 values rounded to the nearest integer and clipped to 0-255, then cast to uint8",
            "classes": "native code = mask channel 0 Neoplastic, 1 Inflammatory, 2 Connective, 3 Dead, 4 Epithelial; channel 5 (background) unused",
            "instances": "ids restart in every channel: every (channel, id) pair is one nucleus, numbered by channel then id; source_id = the in-channel id",
            "overlap": "a pixel in two channels goes to the lower channel; nuclei left without pixels are dropped and counted",
            "empty_patches": "patches without nuclei are kept",
        })
        report.extra["classes"] = {str(k): v for k, v in CLASS_NAMES.items()}
        folds = find_folds(folder)
        if not folds:
            raise MissingFilesError(
                f"{folder}: no PanNuke fold found (images.npy, masks.npy, types.npy under a "
                "'Fold 1'/'fold1' folder). Extract fold_1.zip ... fold_3.zip there."
            )
        opened = {}
        for fold in sorted(folds):  # check every fold before converting any
            files = folds[fold]
            missing = [n for n in ("images", "masks", "types") if n not in files]
            if missing:
                raise MissingFilesError(
                    f"{folder}: fold {fold} lacks {', '.join(m + '.npy' for m in missing)}; "
                    "re-extract that fold's archive."
                )
            opened[fold] = self._open_fold(fold, files)
        for k in ("cross_channel_overlap_pixels", "fully_overlapped", "empty_patches_kept",
                  "pixel_values_clipped_patches"):
            report.dropped[k] += 0  # present in every manifest, even when zero
        for fold in sorted(opened):
            self._convert_fold(fold, *opened[fold], writer, report, progress, jobs)
        return report

    def _open_fold(self, fold: int, files: dict[str, Path]) -> tuple[NpyFile, NpyFile, np.ndarray]:
        images, masks, types_file = (open_npy(files[n]) for n in ("images", "masks", "types"))
        lengths = {files[n]: f.shape[0] if f.shape else 0 for n, f in
                   (("images", images), ("masks", masks), ("types", types_file))}
        if len(set(lengths.values())) != 1:
            listed = ", ".join(f"{p} has {n}" for p, n in lengths.items())
            raise MalformedAnnotationError(
                f"fold {fold}: arrays disagree in length: {listed} patches. "
                "The fold is incomplete or mixed from two releases; extract it again."
            )
        if (len(images.shape) != 4 or images.shape[-1] != 3 or len(masks.shape) != 4
                or masks.shape[-1] < CHANNELS or images.shape[1:3] != masks.shape[1:3]):
            raise MalformedAnnotationError(
                f"fold {fold}: unexpected shapes: {files['images']} {images.shape}, "
                f"{files['masks']} {masks.shape}; expected (N, H, W, 3) and (N, H, W, 6)."
            )
        for f in (images, masks):
            if f.dtype.kind not in "fiu":
                raise MalformedAnnotationError(f"{f.path}: dtype {f.dtype} is not numeric.")
        try:
            types = np.load(files["types"], allow_pickle=False)
        except (ValueError, OSError, EOFError, SyntaxError, TypeError, TokenError) as exc:
            raise CorruptArchiveError(f"{files['types']}: cannot be read ({exc}); extract the fold again.") from exc
        if not isinstance(types, np.ndarray) or types.ndim != 1:
            raise MalformedAnnotationError(
                f"{files['types']}: expected one tissue name per patch (a 1-D array), found "
                f"{getattr(types, 'shape', type(types).__name__)}. Extract the fold again.")
        return images, masks, types.astype(str)

    def _chunks(self, images: NpyFile, masks: NpyFile) -> Iterator[_Chunk]:
        """Decoded chunks in order, produced by two threads at most ``AHEAD`` in advance."""
        n = images.shape[0]
        pool: queue.SimpleQueue[tuple[np.ndarray, np.ndarray]] = queue.SimpleQueue()
        for _ in range(AHEAD + 1):
            pool.put((np.empty((CHUNK, *images.shape[1:]), images.dtype),
                      np.empty((CHUNK, *masks.shape[1:]), masks.dtype)))
        with open(images.path, "rb") as fi, open(masks.path, "rb") as fm, \
                ThreadPoolExecutor(max_workers=2, thread_name_prefix="pannuke") as workers:

            def job(start: int) -> _Chunk:
                img_buf, mask_buf = pool.get()
                stop = min(n, start + CHUNK)
                img = images.read_rows(fi, start, img_buf[: stop - start])
                msk = masks.read_rows(fm, start, mask_buf[: stop - start])
                chunk = _decode(start, img.astype(np.float64, copy=False), msk)
                chunk.buffers = (img_buf, mask_buf)
                return chunk

            pending: deque[Future[_Chunk]] = deque()
            starts = iter(range(0, n, CHUNK))
            try:
                for start in starts:
                    pending.append(workers.submit(job, start))
                    if len(pending) >= AHEAD:
                        break
                while pending:
                    chunk = pending.popleft().result()
                    yield chunk
                    pool.put(chunk.buffers)  # type: ignore[arg-type]
                    nxt = next(starts, None)
                    if nxt is not None:
                        pending.append(workers.submit(job, nxt))
            finally:
                for f in pending:
                    f.cancel()

    def _convert_fold(self, fold: int, images: NpyFile, masks: NpyFile, types: np.ndarray,
                      writer: StoreWriter, report: ConversionReport,
                      progress: Callable[[str], None] | None, jobs: int = 1) -> None:
        n = images.shape[0]
        split = f"fold{fold}"
        chunks = self._pooled(images, masks, jobs) if jobs > 1 and n > CHUNK else (
            _patches(chunk, masks) for chunk in self._chunks(images, masks))
        try:
            for start, patches in chunks:
                for j, patch in enumerate(patches):
                    i = start + j
                    report.regions[split] += patch.before
                    report.dropped["cross_channel_overlap_pixels"] += patch.overlap
                    report.dropped["fully_overlapped"] += patch.before - patch.codes.size
                    report.dropped["empty_patches_kept"] += int(patch.codes.size == 0)
                    report.dropped["pixel_values_clipped_patches"] += int(patch.clipped)
                    writer.add_image(
                        f"fold{fold}_{i:04d}", split, patch.rgb, patch.inst, patch.codes, patch.ids,
                        mpp=self.card.mpp, tissue=str(types[i]), properties=patch.properties,
                    )
                if progress:
                    progress(f"fold {fold}: {min(n, start + CHUNK)}/{n} patches")
        except ValueError as exc:
            if "negative instance id" in str(exc):
                raise MalformedAnnotationError(
                    f"{masks.path}: a patch holds a negative instance id; the fold is damaged. "
                    "Extract or download it again."
                ) from None
            if "instance id too large" in str(exc):
                raise MalformedAnnotationError(
                    f"{masks.path}: a patch holds an instance id above {_MAX_ID:,}; the fold is damaged. "
                    "Extract or download it again."
                ) from None
            raise

    def _pooled(self, images: NpyFile, masks: NpyFile, jobs: int) -> Iterator[tuple[int, list[_Patch]]]:
        """Decoded chunks in order from ``jobs`` processes, at most ``jobs + 1`` in flight."""
        n = images.shape[0]
        starts = iter(range(0, n, CHUNK))
        context = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
            pending: deque[tuple[int, Future[list[_Patch]]]] = deque()
            try:
                for start in starts:
                    pending.append((start, pool.submit(_decode_chunk, images, masks, start, min(n, start + CHUNK))))
                    if len(pending) > jobs:
                        break
                while pending:
                    start, future = pending.popleft()
                    patches = future.result()
                    nxt = next(starts, None)
                    if nxt is not None:
                        pending.append((nxt, pool.submit(_decode_chunk, images, masks, nxt, min(n, nxt + CHUNK))))
                    yield start, patches
            finally:
                for _, future in pending:
                    future.cancel()

    @staticmethod
    def _exact(masks: NpyFile, patch: np.ndarray, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
        """Patches with overlapping channels (or unusual ids) take the exact path."""
        ids = patch[..., :CHANNELS]
        if ids.dtype.kind == "f" and not np.isfinite(ids).all():
            raise MalformedAnnotationError(
                f"{masks.path}: patch {i} holds NaN or infinite instance ids; the fold is damaged."
            )
        if not np.array_equal(ids, np.floor(ids)):
            raise MalformedAnnotationError(
                f"{masks.path}: patch {i} holds non-integral instance ids; the fold is damaged."
            )
        return merge_channels(patch)
