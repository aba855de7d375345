"""The store: one converted dataset as memory-mappable ``.npy`` columns (docs/store-format.md).

Layout of ``stores/<dataset>/<converter-version>/``::

    manifest.json              written last; a store without it does not exist
    images/<column>.npy        one row per image (dim ``image``)
    nuclei/<column>.npy        one row per nucleus, sorted by image (dim ``nucleus``)
    pixels/rgb.npy             uint8: (N, H, W, 3) when all images share a size,
                               else a flat heap indexed by images/pixel_offset
    pixels/instances.npy       int32 instance maps, stacked or heaped the same way;
                               0 is background, k the k-th nucleus of the image

Every source writes through :class:`StoreWriter`, which computes each nucleus's
centroid, bbox and area from the instance map itself, so that ``area`` is always
the nucleus's pixel count and ``centroid`` the mean of its pixel coordinates
(x, y; origin at the centre of the top-left pixel). ``bbox`` is ``(x0, y0, x1, y1)``
in pixel indices with ``x1``/``y1`` exclusive.

The writer builds into a hidden staging folder beside the final one and
publishes it with :func:`nucdata.atomic.swap_dir` after writing the manifest, so an
interrupted conversion never leaves a half store and a replaced store survives a kill
at any point; :func:`clean_stale` restores or removes what an interrupted run left.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from . import atomic
from .errors import DataHomeError, StoreError, StoreLockedError
from .faults import fault_point
from .home import cache_dir, is_writable, writable_folder

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
_HEADER_BYTES = 256  # reserved .npy header; final shape is written once known


class NpyStreamWriter:
    """Append arrays to a ``.npy`` file whose final shape is known only at the end.

    A fixed 256-byte header is reserved and rewritten on :meth:`close`, so data
    never has to be copied: ``np.load(..., mmap_mode="r")`` reads the result.
    """

    def __init__(self, path: Path, dtype: np.dtype | str):
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self.count = 0  # elements written
        self._hash = hashlib.sha256()  # of the data bytes (after the header), streamed
        self._fh = open(self.path, "wb")  # noqa: SIM115 - closed in close()
        self._fh.write(b"\0" * _HEADER_BYTES)

    def append(self, array: np.ndarray) -> int:
        """Append ``array`` (C order); return the element offset where it starts."""
        start = self.count
        data = np.ascontiguousarray(array, dtype=self.dtype)
        raw = data.reshape(-1).view(np.uint8)
        self._fh.write(raw)
        self._hash.update(raw)
        self.count += data.size
        return start

    def close(self, shape: tuple[int, ...]) -> dict[str, Any]:
        """Write the final header; return the file's record (see :func:`file_record`)."""
        if int(np.prod(shape, dtype=np.int64)) != self.count:
            raise ValueError(f"{self.path}: shape {shape} does not hold {self.count} elements")
        header = f"{{'descr': {np.lib.format.dtype_to_descr(self.dtype)!r}, 'fortran_order': False, 'shape': {tuple(int(s) for s in shape)!r}, }}"
        body = header.encode("latin1")
        pad = _HEADER_BYTES - 10 - len(body) - 1
        if pad < 0:
            raise ValueError("shape too long for the reserved .npy header")
        blob = b"\x93NUMPY\x01\x00" + (_HEADER_BYTES - 10).to_bytes(2, "little")
        blob += body + b" " * pad + b"\n"
        self._fh.seek(0)
        self._fh.write(blob)
        self._fh.close()
        return {"shape": [int(x) for x in shape], "dtype": np.lib.format.dtype_to_descr(self.dtype),
                "sha256": self._hash.hexdigest(), "bytes": self.path.stat().st_size}

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self._fh.close()


def relabel_sequential(instance_map: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Relabel an instance map to 1..K in increasing order of the original ids.

    Returns the new int32 map and the original id of each new label (length K).
    Ids that own no pixel disappear.
    """
    flat = np.asarray(instance_map)
    if flat.size == 0 or flat.max(initial=0) <= 0:
        return np.zeros(flat.shape, np.int32), np.zeros(0, np.int64)
    if flat.min() < 0:
        raise ValueError("instance maps must be non-negative")
    present = np.bincount(flat.ravel()) > 0
    present[0] = False
    original = np.flatnonzero(present).astype(np.int64)
    lut = np.zeros(present.size, np.int32)
    lut[original] = np.arange(1, original.size + 1, dtype=np.int32)
    return lut[flat], original


@functools.lru_cache(maxsize=8)
def _pixel_coordinates(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Row and column of every pixel in raster order (cached: images repeat sizes)."""
    rows, cols = np.divmod(np.arange(shape[0] * shape[1], dtype=np.int64), shape[1])
    rows.flags.writeable = cols.flags.writeable = False
    return rows, cols


def nucleus_properties(instance_map: np.ndarray, count: int) -> dict[str, np.ndarray]:
    """Area, centroid and bbox of labels 1..count of a sequential instance map."""
    flat = instance_map.ravel()
    area = np.bincount(flat, minlength=count + 1)[1 : count + 1]
    if (area == 0).any():
        raise ValueError("instance map is not sequential: a label 1..K owns no pixel")
    rows, cols = _pixel_coordinates(instance_map.shape)
    sum_x = np.bincount(flat, weights=cols, minlength=count + 1)[1 : count + 1]
    sum_y = np.bincount(flat, weights=rows, minlength=count + 1)[1 : count + 1]
    centroid = np.stack([sum_x / area, sum_y / area], axis=1).astype(np.float32)
    bbox = np.zeros((count, 4), np.int32)
    for k, sl in enumerate(ndimage.find_objects(instance_map, max_label=count)):
        bbox[k] = (sl[1].start, sl[0].start, sl[1].stop, sl[0].stop)
    return {"area": area.astype(np.int32), "centroid": centroid, "bbox": bbox}


def file_record(array: np.ndarray, path: Path) -> dict[str, Any]:
    """The manifest's record of one ``.npy`` file.

    ``shape`` and ``dtype`` (numpy's descr string) of the array, ``sha256`` of its
    data bytes (the file after the ``.npy`` header, so that streamed files can be
    hashed while written) and ``bytes``, the file's size.
    """
    array = np.ascontiguousarray(array)
    return {"shape": [int(x) for x in array.shape], "dtype": np.lib.format.dtype_to_descr(array.dtype),
            "sha256": hashlib.sha256(array.reshape(-1).view(np.uint8)).hexdigest(),
            "bytes": Path(path).stat().st_size}


def _string_column(values: list[str]) -> np.ndarray:
    width = max([1, *(len(v) for v in values)])
    return np.asarray(values, dtype=f"<U{width}")


class StoreWriter:
    """Build a store in a temporary folder and publish it atomically.

    Use as a context manager; leaving the block with an exception removes the
    temporary folder and publishes nothing.

    Parameters
    ----------
    final_dir
        Where the store is published (``stores/<dataset>/<version>``).
    dataset
        Dataset name, recorded in the manifest.
    converter_version
        The source module's version string.
    """

    def __init__(self, final_dir: Path, dataset: str, converter_version: str):
        self.final_dir = Path(final_dir)
        self.dataset = dataset
        self.converter_version = converter_version
        self.tmp_dir = atomic.staging_dir(self.final_dir)
        for sub in ("images", "nuclei", "pixels"):
            (self.tmp_dir / sub).mkdir(parents=True)
        self._rgb = NpyStreamWriter(self.tmp_dir / "pixels" / "rgb.npy", np.uint8)
        self._inst = NpyStreamWriter(self.tmp_dir / "pixels" / "instances.npy", np.int32)
        self._images: dict[str, list[Any]] = {
            k: []
            for k in ("name", "split", "height", "width", "mpp", "tissue", "patient", "flag",
                      "nucleus_start", "nucleus_count", "pixel_offset")
        }
        self._image_extra: dict[str, list[Any]] = {}
        self._nuclei: dict[str, list[np.ndarray]] = {
            k: [] for k in ("image", "centroid", "bbox", "area", "label", "has_mask", "source_id")
        }
        self._nucleus_extra: dict[str, list[np.ndarray]] = {}
        self._n_nuclei = 0
        self._shapes: set[tuple[int, int]] = set()
        self._names: set[str] = set()
        self._files: dict[str, dict[str, Any]] = {}
        self.published = False

    # -- writing -------------------------------------------------------------------
    def add_image(
        self,
        name: str,
        split: str,
        rgb: np.ndarray,
        instance_map: np.ndarray,
        labels: np.ndarray | None = None,
        source_ids: np.ndarray | None = None,
        *,
        mpp: float | None = None,
        tissue: str = "",
        patient: str = "",
        flag: str = "",
        boxes: np.ndarray | None = None,
        box_labels: np.ndarray | None = None,
        box_source_ids: np.ndarray | None = None,
        nucleus_columns: Mapping[str, np.ndarray] | None = None,
        image_columns: Mapping[str, Any] | None = None,
    ) -> int:
        """Add one image and its nuclei; return the number of nuclei written.

        Parameters
        ----------
        rgb
            ``(H, W, 3)`` uint8.
        instance_map
            ``(H, W)`` integer map, labels ``1..K`` consecutive (see
            :func:`relabel_sequential`), background 0.
        labels, source_ids
            Per masked nucleus ``k`` (index ``k-1``): native class code (-1 none)
            and the id the source gave it. Default -1 and ``k``.
        boxes, box_labels, box_source_ids
            Nuclei without a mask (bounding boxes ``(x0, y0, x1, y1)``, exclusive
            ends); they follow the masked nuclei with ``has_mask`` false, ``area`` 0
            and the box centre as centroid.
        nucleus_columns
            Extra per-nucleus columns (masked nuclei first, then boxes); every image
            of a store must give the same keys.
        image_columns
            Extra per-image scalar columns.
        """
        if name in self._names:
            raise StoreError(f"{self.dataset}: image name {name!r} occurs twice")
        self._names.add(name)
        rgb = np.asarray(rgb)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise StoreError(f"{self.dataset}/{name}: rgb must be (H, W, 3) uint8, got {rgb.shape} {rgb.dtype}")
        inst = np.asarray(instance_map).astype(np.int32, copy=False)
        if inst.shape != rgb.shape[:2]:
            raise StoreError(f"{self.dataset}/{name}: instance map {inst.shape} != image {rgb.shape[:2]}")
        k = int(inst.max(initial=0))
        props = nucleus_properties(inst, k)
        labels = np.full(k, -1, np.int32) if labels is None else np.asarray(labels, np.int32)
        ids = np.arange(1, k + 1, dtype=np.int64) if source_ids is None else np.asarray(source_ids, np.int64)
        if labels.shape != (k,) or ids.shape != (k,):
            raise StoreError(f"{self.dataset}/{name}: {k} nuclei but {labels.shape[0]} labels / {ids.shape[0]} ids")
        centroid, bbox, area = props["centroid"], props["bbox"], props["area"]
        has_mask = np.ones(k, bool)
        if boxes is not None and len(boxes):
            boxes = np.asarray(boxes, np.int32).reshape(-1, 4)
            m = boxes.shape[0]
            box_labels = np.full(m, -1, np.int32) if box_labels is None else np.asarray(box_labels, np.int32)
            box_ids = np.arange(k + 1, k + m + 1, dtype=np.int64) if box_source_ids is None else np.asarray(box_source_ids, np.int64)
            box_centre = np.stack([(boxes[:, 0] + boxes[:, 2] - 1) / 2, (boxes[:, 1] + boxes[:, 3] - 1) / 2], 1)
            centroid = np.concatenate([centroid, box_centre.astype(np.float32)])
            bbox = np.concatenate([bbox, boxes])
            area = np.concatenate([area, np.zeros(m, np.int32)])
            labels = np.concatenate([labels, box_labels])
            ids = np.concatenate([ids, box_ids])
            has_mask = np.concatenate([has_mask, np.zeros(m, bool)])
        n = centroid.shape[0]
        index = len(self._images["name"])
        h, w = inst.shape
        offset = self._rgb.append(rgb) // 3
        self._inst.append(inst)
        self._shapes.add((h, w))
        for key, value in (
            ("name", name), ("split", split), ("height", h), ("width", w),
            ("mpp", np.nan if mpp is None else float(mpp)), ("tissue", tissue),
            ("patient", patient), ("flag", flag), ("nucleus_start", self._n_nuclei),
            ("nucleus_count", n), ("pixel_offset", offset),
        ):
            self._images[key].append(value)
        self._extend(self._image_extra, image_columns or {}, index, scalar=True)
        for key, value in (
            ("image", np.full(n, index, np.int32)), ("centroid", centroid), ("bbox", bbox),
            ("area", area), ("label", labels), ("has_mask", has_mask), ("source_id", ids),
        ):
            self._nuclei[key].append(value)
        extra = {key: np.asarray(v) for key, v in (nucleus_columns or {}).items()}
        for key, v in extra.items():
            if v.shape[0] != n:
                raise StoreError(f"{self.dataset}/{name}: column {key!r} has {v.shape[0]} rows, expected {n}")
        self._extend(self._nucleus_extra, extra, index, scalar=False)
        self._n_nuclei += n
        return n

    def _extend(self, target: dict[str, list[Any]], values: Mapping[str, Any], index: int, scalar: bool) -> None:
        if index > 0 and set(values) != set(target):
            raise StoreError(
                f"{self.dataset}: image {index} has extra columns {sorted(values)}, "
                f"earlier images {sorted(target)}"
            )
        for key, value in values.items():
            target.setdefault(key, []).append(value)

    # -- publishing ----------------------------------------------------------------
    def _save_array(self, relative: str, array: np.ndarray) -> None:
        """Save one column and record its shape, dtype and data hash for the manifest."""
        array = np.ascontiguousarray(array)
        path = self.tmp_dir / relative
        np.save(path, array, allow_pickle=False)
        self._files[relative] = file_record(array, path)

    def _save_column(self, folder: str, key: str, values: Any) -> None:
        if isinstance(values, list) and values and isinstance(values[0], str):
            array = _string_column(values)
        elif isinstance(values, list) and values and isinstance(values[0], np.ndarray):
            array = np.concatenate(values) if values else np.zeros(0)
        else:
            array = np.asarray(values)
        self._save_array(f"{folder}/{key}.npy", array)

    def publish(self, manifest: dict[str, Any]) -> Path:
        """Write columns and manifest, then rename the folder into place."""
        n_images = len(self._images["name"])
        if len(self._shapes) == 1:
            (h, w), = self._shapes
            layout = "stacked"
            self._files["pixels/rgb.npy"] = self._rgb.close((n_images, h, w, 3))
            self._files["pixels/instances.npy"] = self._inst.close((n_images, h, w))
        else:
            layout = "heap"
            self._files["pixels/rgb.npy"] = self._rgb.close((self._rgb.count,))
            self._files["pixels/instances.npy"] = self._inst.close((self._inst.count,))
        typed = {"height": np.int32, "width": np.int32, "mpp": np.float32,
                 "nucleus_start": np.int64, "nucleus_count": np.int32, "pixel_offset": np.int64}
        for key, values in self._images.items():
            if key in typed:
                values = np.asarray(values, dtype=typed[key]).reshape(n_images)
            self._save_column("images", key, values if values is not None else [])
        for key, values in self._image_extra.items():
            self._save_column("images", key, values)
        empty = {"image": (np.int32, (0,)), "centroid": (np.float32, (0, 2)), "bbox": (np.int32, (0, 4)),
                 "area": (np.int32, (0,)), "label": (np.int32, (0,)), "has_mask": (bool, (0,)),
                 "source_id": (np.int64, (0,))}
        for key, values in self._nuclei.items():
            array = np.concatenate(values) if values else np.zeros(empty[key][1], empty[key][0])
            self._save_array(f"nuclei/{key}.npy", array.astype(empty[key][0], copy=False))
        for key, values in self._nucleus_extra.items():
            self._save_column("nuclei", key, values)
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "dataset": self.dataset,
            "converter_version": self.converter_version,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "pixels": {"layout": layout, "shapes": sorted(self._shapes)},
            "columns": {
                "images": sorted([*self._images, *self._image_extra]),
                "nuclei": sorted([*self._nuclei, *self._nucleus_extra]),
            },
            "files": dict(sorted(self._files.items())),
            "label_tables": _label_tables_version(),  # the label-set tables load() translates with
            **manifest,
        }
        fault_point("store:columns-written")
        atomic.atomic_write_json(self.tmp_dir / MANIFEST, manifest, default=_json_default)
        fault_point("store:manifest-written")
        # a rebuild: the old store is moved aside, the new one renamed in, the old removed
        atomic.swap_dir(self.tmp_dir, self.final_dir, label="store")
        self.published = True
        return self.final_dir

    # -- context manager -----------------------------------------------------------
    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if not self.published:
            self._rgb.abort()
            self._inst.abort()
            atomic.discard(self.tmp_dir)

    @property
    def images(self) -> dict[str, list[Any]]:
        """Per-image values gathered so far (read-only use)."""
        return self._images

    @property
    def nucleus_labels(self) -> np.ndarray:
        return np.concatenate(self._nuclei["label"]) if self._nuclei["label"] else np.zeros(0, np.int32)

    @property
    def nucleus_images(self) -> np.ndarray:
        return np.concatenate(self._nuclei["image"]) if self._nuclei["image"] else np.zeros(0, np.int32)


def _label_tables_version() -> str:
    from .labelsets import table_version

    return table_version()


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def is_complete(folder: Path) -> bool:
    """Whether ``folder`` holds a published store (its manifest is written last)."""
    return (Path(folder) / MANIFEST).is_file()


def clean_stale(dataset_dir: Path) -> list[str]:
    """Repair what interrupted conversions left in ``dataset_dir``; return what was done.

    Call under :func:`dataset_lock`. A store whose replacement was killed between
    its two renames is restored from its complete old copy; staging and old
    folders whose owner process is gone are removed (:func:`nucdata.atomic.recover`).
    Folders named the way earlier development versions did (``.tmp-*``, ``.old-*``)
    are removed too.

    Returns
    -------
    list of str
        One line per action, for the progress output.
    """
    lines = atomic.recover_all(dataset_dir, complete=is_complete).lines()
    if dataset_dir.is_dir():
        for child in dataset_dir.iterdir():
            if child.is_dir() and child.name.startswith((".tmp-", ".old-")):  # earlier naming
                shutil.rmtree(child, ignore_errors=True)
                lines.append(f"removed the leftovers of an interrupted run: {child.name}")
    return lines


def derived_dir(store_path: str | os.PathLike[str]) -> Path:
    """Where files derived from a store (crop banks, their lock) are written.

    The store's own folder when it is writable; for a read-only store (a shared,
    read-only data home) a folder in the user's cache,
    ``<cache>/readonly-stores/<dataset>-<version>-<hash of the store's path>/``
    (see :func:`nucdata.home.cache_dir`, ``$NUCDATA_CACHE``).
    """
    path = Path(store_path)
    if is_writable(path):
        return path
    key = hashlib.sha256(str(path.resolve()).encode("utf-8")).hexdigest()[:16]
    return cache_dir() / "readonly-stores" / f"{path.parent.name}-{path.name}-{key}"


@contextlib.contextmanager
def dataset_lock(dataset_dir: Path, timeout: float = 3600.0, poll: float = 0.2) -> Iterator[None]:
    """Hold an exclusive lock on ``dataset_dir/.lock`` (waits for another preparer).

    Raises
    ------
    StoreLockedError
        When the lock is still held by another process after ``timeout`` seconds.
    """
    writable_folder(dataset_dir, f"the lock of {dataset_dir.name!r}")
    path = dataset_dir / ".lock"
    try:
        fh = open(path, "a+")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise DataHomeError(
            f"{path}: cannot create the lock file ({exc.strerror or exc}); the folder is read-only. "
            "Set NUCDATA_HOME (or --root) to a writable folder to prepare datasets there."
        ) from None
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                _try_lock(fh)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise StoreLockedError(
                        f"{path}: another process has been preparing {dataset_dir.name!r} for "
                        f"more than {timeout:.0f} s. Wait for it, or if no nucdata process is "
                        "running, delete this lock file."
                    ) from None
                time.sleep(poll)
        yield
    finally:
        with contextlib.suppress(OSError):
            _unlock(fh)
        fh.close()


if os.name == "nt":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _try_lock(fh: Any) -> None:
        fh.seek(0)
        msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)

    def _unlock(fh: Any) -> None:
        fh.seek(0)
        msvcrt.locking(fh.fileno(), msvcrt.LK_UNLCK, 1)
else:
    import fcntl

    def _try_lock(fh: Any) -> None:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)

    def _unlock(fh: Any) -> None:
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _rebuild_hint(dataset: Any) -> str:
    name = dataset if isinstance(dataset, str) and dataset else "<dataset>"
    return f"Rebuild it with `nucdata prepare {name} --force`."


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check the structure of a store's ``manifest.json``.

    Parameters
    ----------
    path
        The store folder.

    Raises
    ------
    StoreError
        When the manifest is missing, not JSON, not an object, of another schema
        version, or lacks ``dataset``, ``columns`` or ``pixels``; the message says
        how to rebuild.
    """
    folder = Path(path)
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise StoreError(
            f"{folder}: no {MANIFEST}; this is not a finished store. Run `nucdata prepare <dataset>` again."
        )
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise StoreError(f"{manifest_path}: unreadable ({type(exc).__name__}: {exc}). "
                         f"{_rebuild_hint(folder.parent.name)}") from None
    if not isinstance(manifest, dict):
        raise StoreError(f"{manifest_path}: expected a JSON object, found {type(manifest).__name__}. "
                         f"{_rebuild_hint(folder.parent.name)}")
    dataset = manifest.get("dataset") or folder.parent.name
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise StoreError(
            f"{manifest_path}: schema version {manifest.get('schema_version')} is not {SCHEMA_VERSION}. "
            f"{_rebuild_hint(dataset)}"
        )
    columns, pixels = manifest.get("columns"), manifest.get("pixels")
    problems = []
    if not isinstance(manifest.get("dataset"), str):
        problems.append("'dataset' (a name)")
    if not (isinstance(columns, dict) and all(isinstance(columns.get(t), list) for t in ("images", "nuclei"))):
        problems.append("'columns' (lists 'images' and 'nuclei')")
    if not (isinstance(pixels, dict) and pixels.get("layout") in ("stacked", "heap")
            and isinstance(pixels.get("shapes"), list)):
        problems.append("'pixels' (layout 'stacked' or 'heap', and 'shapes')")
    if problems:
        raise StoreError(f"{manifest_path}: lacks {' and '.join(problems)}. {_rebuild_hint(dataset)}")
    return manifest


class Store:
    """Read-only access to a published store, every column memory-mapped at open.

    Mapping every file when the store is opened gives a consistent snapshot: a
    ``prepare --force`` that replaces the store meanwhile does not change what this
    object reads (the old files stay mapped). Pickling keeps only the path and the
    manifest, so a store travels cheaply into DataLoader workers; unpickling maps
    the files again and refuses a store that was replaced in between.

    Raises
    ------
    StoreError
        When the manifest is unreadable or malformed, or a listed column is missing
        or not a readable ``.npy`` file.
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.manifest: dict[str, Any] = read_manifest(self.path)
        self._cache: dict[str, np.ndarray] = self._map_all()

    def _map_all(self) -> dict[str, np.ndarray]:
        names = [f"{table}/{key}" for table in ("images", "nuclei") for key in self.manifest["columns"][table]]
        mapped = {}
        for name in [*names, "pixels/rgb", "pixels/instances"]:
            path = self.path / f"{name}.npy"
            try:
                mapped[name] = np.load(path, mmap_mode="r", allow_pickle=False)
            except FileNotFoundError:
                raise StoreError(f"{path}: column missing. {_rebuild_hint(self.dataset)}") from None
            except (OSError, ValueError) as exc:
                raise StoreError(f"{path}: not a readable .npy column ({exc}); the file is truncated or "
                                 f"damaged (`nucdata verify {self.dataset}` lists every problem). "
                                 f"{_rebuild_hint(self.dataset)}") from None
        return mapped

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "manifest": self.manifest}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path = Path(state["path"])
        self.manifest = state["manifest"]
        if read_manifest(self.path) != self.manifest:
            raise StoreError(f"{self.path}: the store was rebuilt after this dataset was opened; open it "
                             "again (nucdata.load) so that every process reads the same store.")
        self._cache = self._map_all()

    @property
    def dataset(self) -> str:
        return self.manifest["dataset"]

    def column(self, table: str, key: str) -> np.ndarray:
        """Memory-mapped column ``images/<key>`` or ``nuclei/<key>`` (mapped at open).

        Raises
        ------
        StoreError
            When the store has no such column.
        """
        try:
            return self._cache[f"{table}/{key}"]
        except KeyError:
            raise StoreError(
                f"{self.path / table / (key + '.npy')}: no such column in this store "
                f"(it has {', '.join(self.manifest['columns'].get(table, [])) or 'none'})."
            ) from None

    def image_columns(self) -> list[str]:
        return list(self.manifest["columns"]["images"])

    def nucleus_columns(self) -> list[str]:
        return list(self.manifest["columns"]["nuclei"])

    @property
    def n_images(self) -> int:
        return int(self.column("images", "name").shape[0])

    @property
    def n_nuclei(self) -> int:
        return int(self.column("nuclei", "image").shape[0])

    def _pixels(self, kind: str) -> np.ndarray:
        return self.column("pixels", kind)

    def rgb(self, index: int) -> np.ndarray:
        """``(H, W, 3)`` uint8 view of image ``index`` (no copy)."""
        return self._pixel_view("rgb", index, 3)

    def instance_map(self, index: int) -> np.ndarray:
        """``(H, W)`` int32 view of image ``index``'s instance map (no copy)."""
        return self._pixel_view("instances", index, 1)

    def _pixel_view(self, kind: str, index: int, channels: int) -> np.ndarray:
        pixels = self._pixels(kind)
        if self.manifest["pixels"]["layout"] == "stacked":
            return pixels[index]
        h = int(self.column("images", "height")[index])
        w = int(self.column("images", "width")[index])
        start = int(self.column("images", "pixel_offset")[index]) * channels
        flat = pixels[start : start + h * w * channels]
        return flat.reshape((h, w, 3) if channels == 3 else (h, w))

    def nucleus_slice(self, index: int) -> slice:
        start = int(self.column("images", "nucleus_start")[index])
        return slice(start, start + int(self.column("images", "nucleus_count")[index]))


# -- verification ------------------------------------------------------------------------
def _data_sha256(path: Path, chunk: int = 1 << 24) -> str:
    """SHA-256 of a ``.npy`` file's data bytes (everything after its header)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            np.lib.format.read_array_header_1_0(fh)
        else:
            np.lib.format.read_array_header_2_0(fh)
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """Shape, dtype and header length of a ``.npy`` file, reading only its header."""
    with open(path, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
        return tuple(shape), dtype, fh.tell()


def verify_store(path: str | os.PathLike[str], deep: bool = False) -> list[str]:
    """Check a store on disk; return every problem found (empty when it is sound).

    Checked: the manifest's structure; every listed column and both pixel files
    exist, have complete data and the shape and dtype the manifest recorded; column
    lengths agree with the image and nucleus counts (and the manifest's counts);
    ``nucleus_start``/``nucleus_count`` tile the nucleus table and agree with
    ``nuclei/image``; centroids are finite and inside their image, boxes inside it;
    pixel files hold exactly the pixels the image sizes call for. With ``deep``, each
    file's SHA-256 is compared with the manifest's and each instance map's largest
    label with its number of masked nuclei.

    Never raises for a damaged store: every failure is one line of the result.

    Parameters
    ----------
    path
        The store folder (``stores/<dataset>/<version>``).
    deep
        Also hash every file and read every instance map (reads the whole store).
    """
    folder = Path(path)
    try:
        manifest = read_manifest(folder)
    except StoreError as exc:
        return [str(exc)]
    dataset = manifest["dataset"]
    hint = _rebuild_hint(dataset)
    problems: list[str] = []
    records = manifest.get("files")
    if not isinstance(records, dict):
        problems.append(f"{folder / MANIFEST}: written by an older nucdata, without file shapes and hashes; "
                        f"only a structural check is possible. {hint}")
        records = {}
    arrays: dict[str, np.ndarray] = {}
    names = [f"{t}/{k}.npy" for t in ("images", "nuclei") for k in manifest["columns"][t]]
    for rel in [*names, "pixels/rgb.npy", "pixels/instances.npy"]:
        file = folder / rel
        if not file.is_file():
            problems.append(f"{file}: missing. {hint}")
            continue
        try:
            shape, dtype, header = _npy_header(file)
            expected_bytes = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            size = file.stat().st_size
            if size != expected_bytes:
                problems.append(f"{file}: {size:,} bytes, but its header {shape} {dtype} needs "
                                f"{expected_bytes:,} (truncated or damaged). {hint}")
                continue
            record = records.get(rel)
            if records and not isinstance(record, dict):
                problems.append(f"{file}: not listed in the manifest's files. {hint}")
            elif record:
                if [int(x) for x in shape] != list(record.get("shape", [])):
                    problems.append(f"{file}: shape {list(shape)}, the manifest recorded {record.get('shape')}. {hint}")
                if np.lib.format.dtype_to_descr(dtype) != record.get("dtype"):
                    problems.append(f"{file}: dtype {np.lib.format.dtype_to_descr(dtype)}, the manifest recorded "
                                    f"{record.get('dtype')}. {hint}")
                if deep and _data_sha256(file) != record.get("sha256"):
                    problems.append(f"{file}: SHA-256 of its data differs from the manifest's (the file was "
                                    f"modified after it was written). {hint}")
            arrays[rel] = np.load(file, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, TypeError, SyntaxError) as exc:
            problems.append(f"{file}: not a readable .npy file ({type(exc).__name__}: {exc}). {hint}")
    for rel in records:
        if rel not in arrays and not (folder / rel).is_file():
            problems.append(f"{folder / rel}: listed in the manifest but missing. {hint}")
    try:
        problems += _check_values(folder, manifest, arrays, deep, hint)
    except Exception as exc:  # noqa: BLE001 - a damaged store must be reported, never raise
        problems.append(f"{folder}: the value checks stopped at an unexpected state "
                        f"({type(exc).__name__}: {exc}). {hint}")
    return problems


def _check_values(folder: Path, manifest: dict[str, Any], arrays: dict[str, np.ndarray], deep: bool,
                  hint: str) -> list[str]:
    """Cross-checks of lengths and values (see :func:`verify_store`)."""
    problems: list[str] = []

    def col(rel: str) -> np.ndarray | None:
        return arrays.get(rel)

    names = col("images/name.npy")
    image_ = col("nuclei/image.npy")
    if names is None or image_ is None:
        return problems
    n_images, n_nuclei = int(names.shape[0]), int(image_.shape[0])
    for rel, array in arrays.items():
        table = rel.split("/", 1)[0]
        want = {"images": n_images, "nuclei": n_nuclei}.get(table)
        if want is not None and (array.ndim == 0 or array.shape[0] != want):
            problems.append(f"{folder / rel}: {array.shape[0] if array.ndim else 0} rows, but the store has "
                            f"{want} {'images' if table == 'images' else 'nuclei'}. {hint}")
    counts = manifest.get("counts", {})
    for key, n in (("images", n_images), ("nuclei", n_nuclei)):
        total = counts.get(key, {}).get("total") if isinstance(counts.get(key), dict) else None
        if total is not None and total != n:
            problems.append(f"{folder / MANIFEST}: counts.{key}.total is {total}, the columns hold {n}. {hint}")
    if problems:
        return problems  # lengths disagree: the value checks below would index out of range

    start, count = col("images/nucleus_start.npy"), col("images/nucleus_count.npy")
    if start is not None and count is not None:
        start, count = np.asarray(start, np.int64), np.asarray(count, np.int64)
        expected_start = np.concatenate([[0], np.cumsum(count)[:-1]]) if n_images else np.zeros(0, np.int64)
        if (count < 0).any():
            problems.append(f"{folder}/images/nucleus_count.npy: negative counts at images "
                            f"{np.flatnonzero(count < 0)[:5].tolist()}. {hint}")
        elif int(count.sum()) != n_nuclei:
            problems.append(f"{folder}/images/nucleus_count.npy: sums to {int(count.sum())}, but the nucleus "
                            f"table has {n_nuclei} rows. {hint}")
        elif not np.array_equal(start, expected_start):
            bad = np.flatnonzero(start != expected_start)[:5].tolist()
            problems.append(f"{folder}/images/nucleus_start.npy: does not follow nucleus_count at images {bad}. {hint}")
        elif not np.array_equal(np.asarray(image_), np.repeat(np.arange(n_images), count)):
            problems.append(f"{folder}/nuclei/image.npy: disagrees with images/nucleus_count. {hint}")

    height, width = col("images/height.npy"), col("images/width.npy")
    if height is None or width is None:
        return problems
    height, width = np.asarray(height, np.int64), np.asarray(width, np.int64)
    if (height <= 0).any() or (width <= 0).any():
        problems.append(f"{folder}/images: non-positive height or width. {hint}")
        return problems
    image_idx = np.asarray(image_, np.int64)
    if n_nuclei and (image_idx.min() < 0 or image_idx.max() >= n_images):
        problems.append(f"{folder}/nuclei/image.npy: image indices outside 0..{n_images - 1}. {hint}")
        return problems
    w_of, h_of = width[image_idx], height[image_idx]
    centroid = col("nuclei/centroid.npy")
    if centroid is not None and n_nuclei:
        c = np.asarray(centroid, np.float64).reshape(n_nuclei, -1)
        bad = ~np.isfinite(c).all(1)
        if c.shape[1] == 2:
            bad |= (c[:, 0] < -0.5) | (c[:, 0] > w_of - 0.5) | (c[:, 1] < -0.5) | (c[:, 1] > h_of - 0.5)
        if bad.any():
            rows = np.flatnonzero(bad)
            problems.append(f"{folder}/nuclei/centroid.npy: {rows.size} centroid(s) not finite or outside their "
                            f"image, first at rows {rows[:5].tolist()} (e.g. {c[rows[0]].tolist()}). {hint}")
    bbox = col("nuclei/bbox.npy")
    if bbox is not None and n_nuclei:
        b = np.asarray(bbox, np.int64).reshape(n_nuclei, -1)
        if b.shape[1] == 4:
            bad = ((b[:, 0] < 0) | (b[:, 1] < 0) | (b[:, 2] > w_of) | (b[:, 3] > h_of)
                   | (b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1]))
            if bad.any():
                rows = np.flatnonzero(bad)
                problems.append(f"{folder}/nuclei/bbox.npy: {rows.size} box(es) outside their image or inverted, "
                                f"first at rows {rows[:5].tolist()}. {hint}")
    area, has_mask = col("nuclei/area.npy"), col("nuclei/has_mask.npy")
    if area is not None and has_mask is not None and n_nuclei:
        a, m = np.asarray(area, np.int64), np.asarray(has_mask, bool)
        bad = (a < 0) | (m & (a == 0)) | (a > w_of * h_of)
        if bad.any():
            problems.append(f"{folder}/nuclei/area.npy: {int(bad.sum())} impossible area(s), first at rows "
                            f"{np.flatnonzero(bad)[:5].tolist()}. {hint}")

    pixels = (col("pixels/rgb.npy"), col("pixels/instances.npy"))
    layout = manifest["pixels"]["layout"]
    if layout == "stacked":
        for rel, array, channels in (("pixels/rgb.npy", pixels[0], (3,)), ("pixels/instances.npy", pixels[1], ())):
            if array is None:
                continue
            if n_images and (len(set(height.tolist())) > 1 or len(set(width.tolist())) > 1):
                problems.append(f"{folder / rel}: stacked layout, but the images have different sizes. {hint}")
            elif array.shape != (n_images, *((int(height[0]), int(width[0])) if n_images else array.shape[1:3]),
                                 *channels):
                problems.append(f"{folder / rel}: shape {array.shape} does not hold {n_images} images of "
                                f"{int(height[0]) if n_images else '?'}x{int(width[0]) if n_images else '?'}. {hint}")
    else:
        offset = col("images/pixel_offset.npy")
        area_px = height * width
        if offset is not None:
            expected = np.concatenate([[0], np.cumsum(area_px)[:-1]]) if n_images else np.zeros(0, np.int64)
            if not np.array_equal(np.asarray(offset, np.int64), expected):
                problems.append(f"{folder}/images/pixel_offset.npy: does not follow the image sizes. {hint}")
        for rel, array, channels in (("pixels/rgb.npy", pixels[0], 3), ("pixels/instances.npy", pixels[1], 1)):
            if array is not None and array.size != int(area_px.sum()) * channels:
                problems.append(f"{folder / rel}: {array.size:,} values, the image sizes call for "
                                f"{int(area_px.sum()) * channels:,}. {hint}")
    if deep and not problems and pixels[1] is not None and has_mask is not None and count is not None:
        running = np.concatenate([[0], np.cumsum(np.asarray(has_mask, np.int64))])
        masked = running[start + count] - running[start]
        store = Store.__new__(Store)
        store.path, store.manifest = folder, manifest
        store._cache = {k[:-4]: v for k, v in arrays.items()}
        for i in range(n_images):
            k = int(np.asarray(store.instance_map(i)).max(initial=0))
            want = int(masked[i])
            if k != want:
                problems.append(f"{folder}/pixels/instances.npy: image {i} ({names[i]}) has {k} instance labels "
                                f"but {want} masked nuclei. {hint}")
                break
    return problems
