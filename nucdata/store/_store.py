"""The store: one converted dataset as memory-mappable ``.npy`` columns (docs/store-format.md).

Layout of ``stores/<dataset>/<converter-version>/``::

    manifest.json              written last; a store without it does not exist
    images/<column>.npy        one row per image (dim ``image``)
    nuclei/<column>.npy        one row per nucleus, sorted by image (dim ``nucleus``)
    pixels/rgb.npy             uint8, planar (channels first): (N, 3, H, W) when all
                               images share a size, else a flat heap of each image's
                               three planes, indexed by images/pixel_offset
    pixels/instances.npy       int32 instance maps, stacked or heaped the same way;
                               0 is background, k the k-th nucleus of the image

Every source writes through :class:`StoreWriter`, which computes each nucleus's
centroid, bbox and area from the instance map itself, so that ``area`` is always
the nucleus's pixel count and ``centroid`` the mean of its pixel coordinates
(x, y; origin at the centre of the top-left pixel). ``bbox`` is ``(x0, y0, x1, y1)``
in pixel indices with ``x1``/``y1`` exclusive.

The writer builds into a hidden staging folder beside the final one and
publishes it with :func:`nucdata._util.atomic.swap_dir` after writing the manifest, so an
interrupted conversion never leaves a half store and a replaced store survives a kill
at any point; :func:`clean_stale` restores or removes what an interrupted run left.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from nucdata._util import atomic
from nucdata._util.faults import fault_point
from nucdata._util.instances import nucleus_properties
from nucdata._util.npy import NpyStreamWriter, file_record
from nucdata._util.progress import Counter
from nucdata.errors import SchemaVersionError, StoreError
from nucdata.store._layout import MANIFEST

#: 2: planar pixels (``rgb.npy`` channels first, so that a window of an image is already
#: the ``(3, h, w)`` a sample holds); stores of schema 1 (channels last) are refused
#: with a rebuild hint
SCHEMA_VERSION = 2


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

    def __init__(self, final_dir: Path, dataset: str, converter_version: str, progress: Counter | None = None):
        self.final_dir = Path(final_dir)
        self.dataset = dataset
        self.converter_version = converter_version
        #: optional :class:`nucdata._util.progress.Counter`, ticked once per image added
        self.progress = progress
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
        box_centroids: np.ndarray | None = None,
        nucleus_columns: Mapping[str, np.ndarray] | None = None,
        image_columns: Mapping[str, Any] | None = None,
        properties: Mapping[str, np.ndarray] | None = None,
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
        box_centroids
            ``(M, 2)`` x, y (pixel-centre frame) of the box-only nuclei's centres where
            the source marks them (point annotations, CRCHisto); default the box centre.
        nucleus_columns
            Extra per-nucleus columns (masked nuclei first, then boxes); every image
            of a store must give the same keys.
        image_columns
            Extra per-image scalar columns.
        properties
            ``nucleus_properties(instance_map, K)`` when already computed (a converter's
            worker process); computed here otherwise.
        """
        if name in self._names:
            raise StoreError(f"{self.dataset}: image name {name!r} occurs twice")
        self._names.add(name)
        if self.progress is not None:
            self.progress.update()
        rgb = np.asarray(rgb)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise StoreError(f"{self.dataset}/{name}: rgb must be (H, W, 3) uint8, got {rgb.shape} {rgb.dtype}")
        inst = np.asarray(instance_map).astype(np.int32, copy=False)
        if inst.shape != rgb.shape[:2]:
            raise StoreError(f"{self.dataset}/{name}: instance map {inst.shape} != image {rgb.shape[:2]}")
        k = int(inst.max(initial=0))
        props = nucleus_properties(inst, k) if properties is None else properties
        if properties is not None and any(np.shape(props[key])[:1] != (k,) for key in ("area", "centroid", "bbox")):
            raise StoreError(f"{self.dataset}/{name}: properties given for other than its {k} nuclei")
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
            if box_centroids is not None:
                box_centre = np.asarray(box_centroids, np.float64)
                if box_centre.shape != (m, 2) or not np.isfinite(box_centre).all():
                    raise StoreError(f"{self.dataset}/{name}: box_centroids must be {m} finite x, y pairs, "
                                     f"got shape {box_centre.shape}")
            centroid = np.concatenate([centroid, box_centre.astype(np.float32)])
            bbox = np.concatenate([bbox, boxes])
            area = np.concatenate([area, np.zeros(m, np.int32)])
            labels = np.concatenate([labels, box_labels])
            ids = np.concatenate([ids, box_ids])
            has_mask = np.concatenate([has_mask, np.zeros(m, bool)])
        n = centroid.shape[0]
        index = len(self._images["name"])
        h, w = inst.shape
        offset = self._rgb.append(rgb.transpose(2, 0, 1)) // 3  # planar: one plane per channel
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
            self._files["pixels/rgb.npy"] = self._rgb.close((n_images, 3, h, w))
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
            # the label-set tables load() translates with (the caller names them: the store
            # layer does not read the tables)
            "label_tables": manifest.get("label_tables"),
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
        if self.progress is not None:
            self.progress.close()
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


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def rebuild_hint(dataset: Any) -> str:
    """The sentence that tells how to rebuild a damaged store."""
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
                         f"{rebuild_hint(folder.parent.name)}") from None
    if not isinstance(manifest, dict):
        raise StoreError(f"{manifest_path}: expected a JSON object, found {type(manifest).__name__}. "
                         f"{rebuild_hint(folder.parent.name)}")
    dataset = manifest.get("dataset") or folder.parent.name
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise SchemaVersionError(
            f"{manifest_path}: written with store schema version {manifest.get('schema_version')!r}; this "
            f"nucdata reads schema {SCHEMA_VERSION}. {rebuild_hint(dataset)}"
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
        raise StoreError(f"{manifest_path}: lacks {' and '.join(problems)}. {rebuild_hint(dataset)}")
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
                raise StoreError(f"{path}: column missing. {rebuild_hint(self.dataset)}") from None
            except (OSError, ValueError) as exc:
                raise StoreError(f"{path}: not a readable .npy column ({exc}); the file is truncated or "
                                 f"damaged (`nucdata verify {self.dataset}` lists every problem). "
                                 f"{rebuild_hint(self.dataset)}") from None
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
        """``(H, W, 3)`` uint8 view of image ``index`` (no copy).

        The store keeps the pixels planar (:meth:`planes`); this is the same memory seen
        channels last, so it is not C-contiguous: ``np.ascontiguousarray`` it for
        libraries that need that.
        """
        return self.planes(index).transpose(1, 2, 0)

    def planes(self, index: int) -> np.ndarray:
        """``(3, H, W)`` uint8 view of image ``index`` as stored (planar, C-contiguous, no copy)."""
        return self._pixel_view("rgb", index, 3)

    def instance_map(self, index: int) -> np.ndarray:
        """``(H, W)`` int32 view of image ``index``'s instance map (no copy)."""
        return self._pixel_view("instances", index, 1)

    def _pixel_view(self, kind: str, index: int, channels: int) -> np.ndarray:
        return image_pixels(self._pixels(kind), self.manifest["pixels"]["layout"], index, channels,
                            self.column("images", "height"), self.column("images", "width"),
                            self.column("images", "pixel_offset"))

    def nucleus_slice(self, index: int) -> slice:
        start = int(self.column("images", "nucleus_start")[index])
        return slice(start, start + int(self.column("images", "nucleus_count")[index]))


def image_pixels(pixels: np.ndarray, layout: str, index: int, channels: int, heights: np.ndarray,
                 widths: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Image ``index``'s view into a pixel file: ``(3, H, W)`` for RGB (planar, as stored), ``(H, W)`` for instances.

    ``layout`` is the manifest's ``pixels.layout``: ``"stacked"`` (one array of equal-sized
    images) or a flat heap indexed by ``pixel_offset`` (in pixels; an RGB image takes
    ``3 * H * W`` values from ``3 * pixel_offset``, its three planes one after another).
    """
    if layout == "stacked":
        return pixels[index]
    h, w = int(heights[index]), int(widths[index])
    start = int(offsets[index]) * channels
    flat = pixels[start : start + h * w * channels]
    return flat.reshape((3, h, w) if channels == 3 else (h, w))
