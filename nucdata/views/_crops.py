"""Per-nucleus crops, cut once into a memory-mapped crop bank and served from it.

A crop bank lives beside its store, in ``<store>/crops/<key>/`` (the key hashes the
parameters; for a read-only store, in the user's cache instead, see
:func:`nucdata._util.locks.derived_dir`)::

    crops.npy       uint8 (N, 4, S, S): RGB and the nucleus's mask (0/255), channels first
    scale.npy       float32 (N,): output pixels per source pixel (1 unless resized)
    origin.npy      int32 (N, 2): x, y of the window's top-left pixel in the image
    has_mask.npy    bool (N,): false where the mask channel is the nucleus's box
    manifest.json   parameters and the identity of the store it was cut from

Row ``n`` of a bank is row ``n`` of the store's nucleus table.

Placement (``context=None``): a ``S x S`` window centred on the pixel nearest the
nucleus centroid. Pixels outside the image are filled by reflection; the mask channel
is zero there (a mirrored nucleus is not the nucleus). When the nucleus's bounding box
does not fit in that window, the rule of the merging method's reference code (Zhang et
al. 2023, see docs/citing.md) applies: the window is centred on the box instead, and if
the box's longer side exceeds ``S`` the enclosing square is cut and resized to ``S``
(bilinear for pixels, nearest for the mask); ``scale`` records it. With ``context=c``
every crop is the square of ``c`` times the box's longer side, centred on the box,
resized to ``S``. Nuclei known only by a box (``has_mask`` false) get the box as their
mask channel.

The bank is rebuilt when its store is rebuilt: the store manifest's ``created`` and
converter version are recorded in the bank's manifest and compared on every open.
It is written into a hidden staging folder and published with
:func:`nucdata._util.atomic.swap_dir`, under a lock.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from nucdata._util import atomic
from nucdata._util.locks import dataset_lock
from nucdata._util.npy import NpyStreamWriter
from nucdata._util.progress import progress
from nucdata.errors import InvalidArgumentError
from nucdata.store import Store, derived_dir, is_complete
from nucdata.views._loaders import batch_loader

#: bumped whenever the content of a bank changes for the same parameters
BANK_VERSION = 2


def _bank_key(size: int, context: float | None, scales: np.ndarray | None = None) -> str:
    params: dict[str, Any] = {"size": size, "context": context, "version": BANK_VERSION}
    if scales is not None:  # resampled (mpp=): the per-image scales define the content
        params["scales"] = hashlib.sha256(np.asarray(scales, np.float64).tobytes()).hexdigest()
    text = json.dumps(params, sort_keys=True)
    return f"s{size}-" + hashlib.sha256(text.encode()).hexdigest()[:10]


def _store_identity(store: Store) -> dict[str, Any]:
    """What a bank records of its store: dataset, creation time, converter version and content.

    ``content`` is the SHA-256 of the manifest's per-file data hashes (every column and the
    pixels): the creation time has one-second resolution, so two builds within a second
    with different content would otherwise share an identity, and a bank cut from the
    first would be taken for the second.
    """
    m = store.manifest
    content = hashlib.sha256(json.dumps(m.get("files", {}), sort_keys=True).encode()).hexdigest()
    return {"dataset": m["dataset"], "created": m["created"], "converter_version": m["converter_version"],
            "content": content}


def _resize(array: np.ndarray, size: int, nearest: bool) -> np.ndarray:
    mode = Image.NEAREST if nearest else Image.BILINEAR
    return np.asarray(Image.fromarray(np.ascontiguousarray(array)).resize((size, size), mode))


def place_windows(
    centroids: np.ndarray, bboxes: np.ndarray, size: int, context: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Top-left corners ``(K, 2)`` (x, y) and sides ``(K,)`` of the crop windows.

    Parameters
    ----------
    centroids
        ``(K, 2)`` x, y, pixel-centre coordinates.
    bboxes
        ``(K, 4)`` x0, y0, x1, y1 with exclusive ends.
    size
        Crop side ``S`` in output pixels.
    context
        ``None`` for fixed ``S`` windows, else the window side as a multiple of the
        box's longer side.

    Returns
    -------
    origin, side
        A window whose side differs from ``size`` is resized to ``size``.
    """
    k = centroids.shape[0]
    bboxes = np.asarray(bboxes, np.int64).reshape(k, 4)
    bw, bh = bboxes[:, 2] - bboxes[:, 0], bboxes[:, 3] - bboxes[:, 1]
    longer = np.maximum(bw, bh)
    if context is not None:
        side = np.maximum(np.ceil(longer * float(context)), 1).astype(np.int64)
        centred_on_box = np.ones(k, bool)
    else:
        side = np.full(k, size, np.int64)
        centre = np.floor(np.asarray(centroids, np.float64) + 0.5).astype(np.int64)
        left, top = centre[:, 0] - size // 2, centre[:, 1] - size // 2
        fits = (bboxes[:, 0] >= left) & (bboxes[:, 2] <= left + size) & (bboxes[:, 1] >= top) & (bboxes[:, 3] <= top + size)
        centred_on_box = ~fits
        side[centred_on_box] = np.maximum(longer[centred_on_box], size)
    # Centre on the box: the window encloses the whole nucleus (odd slack goes right/down).
    box_left = bboxes[:, 0] - (side - bw) // 2
    box_top = bboxes[:, 1] - (side - bh) // 2
    if context is None:
        origin = np.stack([np.where(centred_on_box, box_left, left), np.where(centred_on_box, box_top, top)], 1)
    else:
        origin = np.stack([box_left, box_top], 1)
    return origin.astype(np.int64), side


def cut_image(
    rgb: np.ndarray,
    instance_map: np.ndarray,
    centroids: np.ndarray,
    bboxes: np.ndarray,
    has_mask: np.ndarray,
    size: int,
    context: float | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut the crops of the nuclei of one image.

    Parameters
    ----------
    rgb, instance_map
        ``(H, W, 3)`` uint8 and ``(H, W)`` int; nucleus ``k`` (0-based row of the
        image's nuclei) has value ``k + 1`` when ``has_mask[k]``.
    centroids, bboxes, has_mask
        The image's rows of the store's nucleus table.
    size, context
        See :func:`place_windows`.

    Returns
    -------
    crops, scales, origins
        ``(K, 4, size, size)`` uint8, ``(K,)`` float32 and ``(K, 2)`` int32.
    """
    k = centroids.shape[0]
    out = np.zeros((k, 4, size, size), np.uint8)
    scales = np.ones(k, np.float32)
    if k == 0:
        return out, scales, np.zeros((0, 2), np.int32)
    origin, side = place_windows(centroids, bboxes, size, context)
    h, w = instance_map.shape
    # One padded copy per image, wide enough for every window, instead of per-crop padding.
    pad = int(max(0, -origin.min(), (origin[:, 0] + side - w).max(), (origin[:, 1] + side - h).max())) + 1
    padded = np.pad(rgb, ((pad, pad), (pad, pad), (0, 0)), mode="reflect" if min(h, w) > 1 else "edge")
    inst = np.pad(instance_map, pad)
    for i in range(k):
        s = int(side[i])
        left, top = int(origin[i, 0]) + pad, int(origin[i, 1]) + pad
        window = padded[top : top + s, left : left + s]
        if has_mask[i]:
            mask = (inst[top : top + s, left : left + s] == i + 1).astype(np.uint8) * 255
        else:  # the box is all we know of this nucleus
            mask = np.zeros((s, s), np.uint8)
            x0, y0, x1, y1 = (int(v) - int(o) for v, o in zip(bboxes[i], (*origin[i], *origin[i]), strict=True))
            mask[max(0, y0) : max(0, y1), max(0, x0) : max(0, x1)] = 255
        if s != size:
            window = _resize(window, size, nearest=False)
            mask = _resize(mask, size, nearest=True)
            scales[i] = size / s
        out[i, :3] = window.transpose(2, 0, 1)
        out[i, 3] = mask
    return out, scales, origin.astype(np.int32)


class CropBank:
    """A built crop bank: memory-mapped arrays plus the parameters that made them.

    Holds only paths between uses, so it pickles cheaply into DataLoader workers, which
    reopen the memory map (and share its pages through the page cache).

    Parameters
    ----------
    path
        The bank's folder (``<store>/crops/<key>``, or in the cache for a read-only
        store); use :func:`build_bank` to get one.
    store
        The store it was cut from (what :func:`build_bank` passes); without it,
        :attr:`store` opens :attr:`store_path`.
    """

    def __init__(self, path: str | os.PathLike[str], store: Store | None = None):
        self.path = Path(path)
        self.manifest: dict[str, Any] = json.loads((self.path / "manifest.json").read_text())
        self._arrays: dict[str, np.ndarray] = {}
        self._store = store

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "manifest": self.manifest, "_arrays": {}, "_store": self._store}

    @property
    def store(self) -> Store:
        """The store this bank was cut from: the one given to :func:`build_bank`.

        A bank opened by its path alone finds it beside itself (``<store>/crops/<key>``) or
        where its manifest recorded it, and only a store with the identity the bank
        recorded (dataset, creation time, converter version, content hash, nucleus count)
        is taken.

        Raises
        ------
        MissingFilesError
            When neither place holds that store (it was rebuilt, moved or removed since).
        """
        if self._store is None:
            self._store = self._find_store()
        return self._store

    def _find_store(self) -> Store:
        from nucdata.errors import MissingFilesError

        places = [self.path.parent.parent]
        if "store_path" in self.manifest:
            places.append(Path(self.manifest["store_path"]))
        wanted = self.manifest.get("store")
        for place in places:
            if not is_complete(place):
                continue
            store = Store(place)
            if (wanted is None or _store_identity(store) == wanted) and store.n_nuclei == len(self):
                return store
        what = (f"the {wanted['dataset']} store created {wanted['created']}" if isinstance(wanted, dict)
                else "its store")
        raise MissingFilesError(
            f"{self.path}: this crop bank was cut from {what}, and neither "
            f"{' nor '.join(str(p) for p in dict.fromkeys(places))} holds that store now (rebuilt, moved or "
            "removed since). Fix: cut the bank again from the store you have: ds.crops(size=...) or "
            "nucdata.views.build_bank(store, size).")

    def _array(self, name: str) -> np.ndarray:
        if name not in self._arrays:
            self._arrays[name] = np.load(self.path / f"{name}.npy", mmap_mode="r")
        return self._arrays[name]

    @property
    def crops(self) -> np.ndarray:
        """uint8 ``(N, 4, S, S)`` memory map: RGB, then the nucleus mask (0/255)."""
        return self._array("crops")

    @property
    def scale(self) -> np.ndarray:
        """float32 ``(N,)``: output pixels per source pixel; not 1 where resized."""
        return self._array("scale")

    @property
    def resized(self) -> np.ndarray:
        """bool ``(N,)``: the crop was cut larger than ``S`` and resized."""
        return np.asarray(self.scale) != 1

    @property
    def origin(self) -> np.ndarray:
        """int32 ``(N, 2)``: x, y of the window's top-left pixel in its image."""
        return self._array("origin")

    @property
    def has_mask(self) -> np.ndarray:
        """bool ``(N,)``: false where the mask channel is the nucleus's bounding box."""
        return self._array("has_mask")

    @property
    def store_path(self) -> Path:
        """The folder of :attr:`store` (beside the bank, or recorded for a bank in the cache)."""
        return self.store.path

    @property
    def size(self) -> int:
        return int(self.manifest["size"])

    def __len__(self) -> int:
        return int(self.manifest["count"])

    def tensor(self, device: str | torch.device = "cpu") -> torch.Tensor:
        """The whole bank as one uint8 tensor ``(N, 4, S, S)`` (for GPU-resident training)."""
        return torch.from_numpy(np.array(self.crops)).to(device)

    def __repr__(self) -> str:
        return f"CropBank({str(self.path)!r}, crops={len(self)}, size={self.size}, context={self.manifest['context']})"


def build_bank(store: Store, size: int = 64, context: float | None = None, force: bool = False,
               mpp: float | None = None, scales: np.ndarray | None = None) -> CropBank:
    """Return the crop bank of ``store`` for these parameters, cutting it if needed.

    Parameters
    ----------
    store
        The store to cut from; the bank goes to ``<store>/crops/<key>/``.
    size
        Crop side in pixels.
    context
        See :func:`place_windows`.
    force
        Cut again even when a valid bank exists.
    mpp, scales
        Cut from images resampled to ``mpp`` microns per pixel; ``scales`` gives each
        store image's native pixels per output pixel (:func:`nucdata.views.store_scales`).
        The bank's ``scale`` then counts output pixels per *native* pixel and ``origin``
        is in native pixels (rounded).

    Raises
    ------
    InvalidArgumentError
        For a crop size below 4 pixels or a context that is not positive.
    """
    if size < 4:
        raise InvalidArgumentError(f"crop size must be at least 4 pixels, got {size}")
    if context is not None and not context > 0:
        raise InvalidArgumentError(f"context must be a positive multiple of the nucleus size, got {context}")
    if (mpp is None) != (scales is None):
        raise InvalidArgumentError("build_bank needs both mpp and the per-image scales, or neither")
    per_image = None if scales is None else np.asarray(scales, np.float64)
    crops_dir = derived_dir(store.path) / "crops"  # a read-only store's banks go to the cache
    folder = crops_dir / _bank_key(size, context, per_image)
    identity = _store_identity(store)
    with dataset_lock(crops_dir):  # two processes asking at once cut it once
        if folder.is_dir() and not force:
            try:
                bank = CropBank(folder)
                if bank.manifest.get("store") == identity and len(bank) == store.n_nuclei:
                    return CropBank(folder, store)
            except (OSError, json.JSONDecodeError, KeyError):
                pass  # unreadable: cut it again below
        atomic.recover(folder)
        tmp = atomic.staging_dir(folder)
        writer = NpyStreamWriter(tmp / "crops.npy", np.uint8)
        try:
            scales, origins = [], []
            centroid = np.asarray(store.column("nuclei", "centroid"))
            bbox = np.asarray(store.column("nuclei", "bbox"))
            has_mask = np.asarray(store.column("nuclei", "has_mask"))
            for i in progress(range(store.n_images), desc=f"cutting {store.dataset} crops ({size} px)",
                              unit="images"):
                rows = store.nucleus_slice(i)
                rgb, inst, cen, box = store.rgb(i), store.instance_map(i), centroid[rows], bbox[rows]
                image_scale = 1.0 if per_image is None else float(per_image[i])
                if image_scale != 1.0:  # resample the image, map the nuclei into its frame
                    from nucdata.views._resample import resample_image

                    rgb, inst = resample_image(rgb, inst, image_scale)
                    cen = (cen + 0.5) / image_scale - 0.5
                    h, w = inst.shape
                    box = np.stack([np.floor(box[:, 0] / image_scale), np.floor(box[:, 1] / image_scale),
                                    np.ceil(box[:, 2] / image_scale), np.ceil(box[:, 3] / image_scale)], 1)
                    box = np.clip(box, 0, [w, h, w, h]).astype(np.int64)
                    box[:, 2:] = np.maximum(box[:, 2:], box[:, :2] + 1)
                crops, scale, origin = cut_image(
                    np.asarray(rgb), np.asarray(inst), cen, box, has_mask[rows], size, context,
                )
                if image_scale != 1.0:
                    scale = (scale / image_scale).astype(np.float32)
                    origin = np.rint(origin * image_scale).astype(np.int32)
                writer.append(crops)
                scales.append(scale)
                origins.append(origin)
            n = store.n_nuclei
            writer.close((n, 4, size, size))
            scale_all = np.concatenate(scales) if scales else np.zeros(0, np.float32)
            np.save(tmp / "scale.npy", scale_all)
            np.save(tmp / "origin.npy", np.concatenate(origins) if origins else np.zeros((0, 2), np.int32))
            np.save(tmp / "has_mask.npy", has_mask.astype(bool))
            manifest = {"version": BANK_VERSION, "size": size, "context": context, "mpp": mpp, "count": n,
                        "resized": int((scale_all != 1).sum()), "box_masks": int((~has_mask).sum()),
                        "store": identity, "store_path": str(store.path)}
            atomic.atomic_write_json(tmp / "manifest.json", manifest)
            atomic.swap_dir(tmp, folder, label="crops")
        finally:
            writer.abort()
            atomic.discard(tmp)
    return CropBank(folder, store)


def _concat(parts: list[np.ndarray], dtype: Any, shape: tuple[int, ...] = ()) -> np.ndarray:
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros((0, *shape), dtype)


class CropDataset(torch.utils.data.Dataset):
    """Map-style dataset over nuclei (not images), served from crop banks.

    No image is decoded: every item is a slice of a memory-mapped bank. ``ds[i]`` is one
    sample; ``ds[[i, j, ...]]`` (any integer sequence) is a batch dict of stacked
    tensors, gathered with one sorted read per dataset — that is what
    :func:`crop_loader` uses. ``__getitems__`` makes a plain
    ``DataLoader(ds, batch_size=...)`` gather per batch too. Each sample::

        image          uint8 (3, S, S)
        mask           uint8 (1, S, S), 255 on the nucleus
        label          int64: class under the label set (-1 missing, -2 outside);
                       the native code without a label set
        candidates     int64 bitmask over the label set's classes (0 without one)
        native_label   int64: the dataset's own code (-1 none)
        scale          float32: output pixels per source pixel (1 unless resized)
        resized        bool: the nucleus did not fit and its enclosing square was resized
        has_mask       bool: false where the mask channel is the nucleus's box
        dataset        str;  dataset_index int64 (position in ``datasets``)
        image_index, nucleus_index  int64 (rows in that dataset's store)

    Parameters
    ----------
    banks
        One crop bank per dataset, all of one crop size.
    datasets
        Their names.
    labels, candidates
        Per dataset, per store nucleus: label and candidate bitmask.
    image_index
        Per dataset, per store nucleus: its image's row.
    nucleus_rows
        Per dataset, the store nucleus rows to serve (default: all).
    label_set
        The label set of ``labels`` (``None``: native codes).
    stores
        Per dataset, the store its bank was cut from (default: each bank's
        :attr:`CropBank.store`); native codes and :meth:`labels_under` read it.

    Attributes
    ----------
    labels, candidates : numpy.ndarray
        int64 ``(N,)``, item order: every crop's label under ``label_set`` (-1 missing,
        -2 outside the set; the native code without a label set) and its candidate
        bitmask (bit ``k`` set: class ``k`` is possible; 0 when nothing is known). The
        arrays a training loop needs without gathering any pixels, e.g.
        ``nucdata_models.target_bits(torch.from_numpy(crops.labels),
        torch.from_numpy(crops.candidates))`` for ``nucdata_models.partial_label_loss``.
    native_labels : numpy.ndarray
        int64 ``(N,)``: each crop's code in its own dataset's vocabulary (-1 none).
    dataset_index, image_index, nucleus_index : numpy.ndarray
        int64 ``(N,)``: position in ``datasets``, and the image's and the nucleus's row
        in that dataset's store.
    scale, has_mask : numpy.ndarray
        float32 and bool ``(N,)``, as in each sample; ``resized`` is ``scale != 1``.
    datasets : list of str
        Dataset names, in ``dataset_index`` order; ``offsets[d]:offsets[d + 1]`` are
        dataset ``d``'s items.
    stores : list of nucdata.store.Store
        The stores, in ``dataset_index`` order.
    label_set : str or None
        The label set of ``labels``; :meth:`labels_under` gives them under another.
    """

    def __init__(
        self,
        banks: Sequence[CropBank],
        datasets: Sequence[str],
        labels: Sequence[np.ndarray],
        candidates: Sequence[np.ndarray],
        image_index: Sequence[np.ndarray],
        nucleus_rows: Sequence[np.ndarray] | None = None,
        label_set: str | None = None,
        stores: Sequence[Store] | None = None,
    ):
        self.banks = list(banks)
        self.datasets = list(datasets)
        self.label_set = label_set
        self.stores = list(stores) if stores is not None else [b.store for b in self.banks]
        if len(self.stores) != len(self.banks):
            raise InvalidArgumentError(f"{len(self.stores)} stores for {len(self.banks)} crop banks")
        if len({b.size for b in self.banks}) > 1:
            raise InvalidArgumentError(f"crop banks of different sizes cannot be served together: {self.banks}")
        self.rows = [np.asarray(r, np.int64) for r in (nucleus_rows or [np.arange(len(b)) for b in banks])]
        sizes = [r.size for r in self.rows]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.dataset_index = np.repeat(np.arange(len(self.banks)), sizes).astype(np.int64)
        pairs = list(zip(self.banks, self.rows, strict=True))
        # Flat numpy arrays (not Python lists): a worker gets them by fork, or one pickle.
        self.labels = _concat([np.asarray(x)[r] for x, r in zip(labels, self.rows, strict=True)], np.int64)
        self.candidates = _concat([np.asarray(x)[r] for x, r in zip(candidates, self.rows, strict=True)], np.int64)
        self.image_index = _concat([np.asarray(x)[r] for x, r in zip(image_index, self.rows, strict=True)], np.int64)
        self.nucleus_index = _concat(self.rows, np.int64)
        self.scale = _concat([np.asarray(b.scale)[r] for b, r in pairs], np.float32)
        self.has_mask = _concat([np.asarray(b.has_mask)[r] for b, r in pairs], bool)
        self.native_labels = _concat([np.asarray(st.column("nuclei", "label"))[r]
                                      for st, r in zip(self.stores, self.rows, strict=True)], np.int64)
        self._names = np.asarray(self.datasets, dtype=object)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def size(self) -> int:
        """Crop side ``S`` in pixels."""
        return self.banks[0].size if self.banks else 0

    @property
    def resized(self) -> np.ndarray:
        """bool ``(N,)``: crops whose nucleus was resized to fit."""
        return self.scale != 1

    def labels_under(self, label_set: str | None) -> tuple[np.ndarray, np.ndarray]:
        """Labels and candidate bitmasks ``(N,)`` int64 of every crop under ``label_set``.

        ``None`` gives the native codes and zero candidates. Lets one bank serve every
        label set (what the cross-training method needs) without cutting it again.
        """
        if label_set is None:
            return self.native_labels.copy(), np.zeros(len(self), np.int64)
        from nucdata.labels import translate_store_labels

        parts = [translate_store_labels(store, label_set, nuclei=rows)  # tissue from each store
                 for store, rows in zip(self.stores, self.rows, strict=True)]
        return _concat([p[0] for p in parts], np.int64), _concat([p[1] for p in parts], np.int64)

    def _gather(self, index: np.ndarray, into: torch.Tensor | None = None) -> torch.Tensor:
        shape = (index.size, 4, self.size, self.size)
        # ``into``: from crop_loader's batch function (in a worker, its shared-memory slot).
        # A plain DataLoader's default collate stacks the samples into a new tensor anyway.
        tensor = into if into is not None else torch.empty(shape, dtype=torch.uint8)
        out = tensor.numpy()
        which = self.dataset_index[index]
        if index.size and (len(self.banks) == 1 or bool((which == which[0]).all())):
            # One bank: gather straight into the batch (one copy), in the batch's order; a
            # run of consecutive rows (sequential or contiguous sampling) is one slice.
            rows = self.nucleus_index[index]
            crops = self.banks[int(which[0])].crops
            if rows.size > 1 and bool((np.diff(rows) == 1).all()):
                out[:] = crops[rows[0] : rows[-1] + 1]
            else:
                # mode="clip": numpy buffers ``out`` for mode="raise" (a second copy); the
                # rows are the bank's own, in range
                np.take(crops, rows, axis=0, out=out, mode="clip")
            return tensor
        for d in np.unique(which):
            sel = np.flatnonzero(which == d)
            rows = self.nucleus_index[index[sel]]
            order = np.argsort(rows, kind="stable")  # sorted reads walk the file forward
            sorted_rows = rows[order]
            run = sorted_rows.size > 1 and bool((np.diff(sorted_rows) == 1).all())
            crops = self.banks[d].crops
            # A contiguous run (sequential sampling) is one slice, not a fancy index.
            out[sel[order]] = crops[sorted_rows[0] : sorted_rows[-1] + 1] if run else crops[sorted_rows]
        return tensor

    def _fields(self, index: np.ndarray, into: torch.Tensor | None = None) -> dict[str, Any]:
        """The batch with its per-crop fields as numpy arrays and pixels as ``crops``."""
        if index.size and (index.min() < -len(self) or index.max() >= len(self)):
            raise IndexError(f"index out of range for {len(self)} nuclei")
        index = np.where(index < 0, index + len(self), index)
        which = self.dataset_index[index]
        scale = self.scale[index]
        return {
            "crops": self._gather(index, into),
            "label": self.labels[index],
            "candidates": self.candidates[index],
            "native_label": self.native_labels[index],
            "scale": scale,
            "resized": scale != 1,
            "has_mask": self.has_mask[index],
            "dataset": self._names[which].tolist(),
            "dataset_index": which,
            "image_index": self.image_index[index],
            "nucleus_index": self.nucleus_index[index],
        }

    def _batch(self, index: np.ndarray) -> dict[str, Any]:
        return _as_tensors(self._fields(index))

    def __getitem__(self, i: int | Sequence[int] | np.ndarray) -> dict[str, Any]:
        if np.ndim(i) == 0:
            i = int(i)  # type: ignore[arg-type]
            if not -len(self) <= i < len(self):
                raise IndexError(f"index {i} out of range for {len(self)} nuclei")
            batch = self._batch(np.array([i], np.int64))
            return {k: v[0] for k, v in batch.items()}
        return self._batch(np.asarray(i, np.int64).reshape(-1))

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        """One gather for a DataLoader batch, split into samples for ``collate_fn``."""
        batch = self._batch(np.asarray(indices, np.int64).reshape(-1))
        return [{k: v[j] for k, v in batch.items()} for j in range(len(indices))]

    def tensor(self, device: str | torch.device = "cpu") -> torch.Tensor:
        """Every crop as one uint8 tensor ``(N, 4, S, S)``, in this dataset's order."""
        return self._gather(np.arange(len(self))).to(device)

    def __repr__(self) -> str:
        parts = ", ".join(f"{n}: {int(b - a)}" for n, a, b in zip(self.datasets, self.offsets[:-1], self.offsets[1:], strict=True))
        return f"CropDataset({parts}; size={self.size}, label_set={self.label_set!r})"


def _as_tensors(fields: dict[str, Any]) -> dict[str, Any]:
    """Batch dict of tensors from :meth:`CropDataset._fields` (no copies)."""
    out = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in fields.items()}
    crops = out.pop("crops")
    return {"image": crops[:, :3], "mask": crops[:, 3:], **out}


def _crop_batch(crops: CropDataset, indices: Sequence[int], empty: Any) -> dict[str, Any]:
    """crop_loader's batch function (:func:`nucdata.views._loaders.batch_loader`): one gather.

    The pixels are gathered straight into the tensor ``empty`` gives (in a worker, its
    reusable shared-memory slot); the small per-crop fields stay numpy arrays, which
    cross from a worker inline, and :class:`CropLoader` makes them tensors.
    """
    index = np.asarray(indices, np.int64).reshape(-1)
    (pixels,) = empty([((index.size, 4, crops.size, crops.size), torch.uint8)])
    return crops._fields(index, into=pixels)


class CropLoader:
    """Iterable of crop batches (dicts as :class:`CropDataset` gives for a list of indices).

    Wraps a :class:`torch.utils.data.DataLoader` (``.dataloader``) whose every index is a
    whole batch (the views' one loader path, shared with :func:`nucdata.tile_loader`);
    made by :func:`crop_loader`. It turns each batch's numpy fields into tensors (no
    copy) and splits the pixels into ``image`` and ``mask``.
    """

    def __init__(self, dataloader: torch.utils.data.DataLoader):
        self.dataloader = dataloader

    def __len__(self) -> int:
        return len(self.dataloader)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for fields in self.dataloader:
            yield _as_tensors(fields)


class ContiguousBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Batches of consecutive indices, in a shuffled order of batches.

    Every batch is one contiguous slice of the bank (the fastest read there is), while
    the order of batches changes every epoch. Within a batch the nuclei are neighbours
    in the store, so they come from the same few images; use it where that is acceptable
    (or reshuffle on the GPU), :func:`crop_loader` with ``shuffle=True`` otherwise.

    Parameters
    ----------
    length
        Number of items.
    batch_size
        Items per batch.
    shuffle
        Shuffle the order of batches each epoch.
    drop_last
        Drop a last, shorter batch.
    generator
        Random generator for the order.
    """

    def __init__(self, length: int, batch_size: int, shuffle: bool = True, drop_last: bool = False,
                 generator: torch.Generator | None = None):
        self.length, self.batch_size, self.shuffle = int(length), int(batch_size), shuffle
        self.drop_last, self.generator = drop_last, generator

    def __len__(self) -> int:
        full, rest = divmod(self.length, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def __iter__(self):
        starts = torch.arange(len(self)) * self.batch_size
        if self.shuffle:
            starts = starts[torch.randperm(len(starts), generator=self.generator)]
        for start in starts.tolist():
            yield list(range(start, min(start + self.batch_size, self.length)))


class ShuffledBatchSampler(torch.utils.data.Sampler[np.ndarray]):
    """Shuffled batches of indices, each an int64 array cut from one permutation per epoch.

    The same batches as ``BatchSampler(RandomSampler(...), batch_size, drop_last)`` (one
    ``torch.randperm`` per epoch, drawn the same way), without iterating the indices one
    by one in Python: at a few hundred thousand crops per second that iteration costs
    about a tenth of the batch.
    """

    def __init__(self, length: int, batch_size: int, drop_last: bool = False,
                 generator: torch.Generator | None = None):
        self.length, self.batch_size, self.drop_last, self.generator = int(length), int(batch_size), drop_last, generator

    def __len__(self) -> int:
        full, rest = divmod(self.length, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def __iter__(self) -> Iterator[np.ndarray]:
        generator = self.generator
        if generator is None:  # as RandomSampler: a fresh generator seeded from torch's global one
            generator = torch.Generator()
            generator.manual_seed(int(torch.empty((), dtype=torch.int64).random_().item()))
        order = torch.randperm(self.length, generator=generator).numpy()
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            yield order[start : start + self.batch_size]


def crop_loader(
    dataset: CropDataset,
    batch_size: int = 256,
    shuffle: bool = False,
    num_workers: int = 0,
    drop_last: bool = False,
    generator: torch.Generator | None = None,
    contiguous: bool = False,
    pin_memory: bool = False,
) -> CropLoader:
    """Batches of crops, each fetched with one gather from the banks.

    Parameters
    ----------
    dataset
        The crops.
    batch_size, shuffle, num_workers, drop_last, generator, pin_memory
        As for :class:`torch.utils.data.DataLoader`.
    contiguous
        Serve contiguous runs of nuclei in shuffled batch order
        (:class:`ContiguousBatchSampler`) instead of independently shuffled nuclei.

    Returns
    -------
    CropLoader
        Yields batch dicts of tensors (see :class:`CropDataset`); its ``dataloader``
        (persistent workers) does the work. With workers, each worker gathers whole
        batches into a few shared-memory slots it reuses and the small fields travel
        inline (how, and why: ``nucdata/views/_loaders.py``); the main process copies
        the pixels out as a batch arrives, so batches may be kept.
    """
    if contiguous:
        sampler: torch.utils.data.Sampler = ContiguousBatchSampler(len(dataset), batch_size, shuffle, drop_last, generator)
    elif shuffle:
        sampler = ShuffledBatchSampler(len(dataset), batch_size, drop_last, generator)
    else:
        sampler = torch.utils.data.BatchSampler(torch.utils.data.SequentialSampler(dataset), batch_size, drop_last)
    return CropLoader(batch_loader(dataset, _crop_batch, sampler, num_workers, pin_memory))


def crops_of(datasets: Sequence[Any], size: int = 64, context: float | None = None,
             mpp: float | None = None, assume_mpp: float | None = None) -> CropDataset:
    """One :class:`CropDataset` over the selected nuclei of ``datasets``.

    Parameters
    ----------
    datasets
        Image datasets; their splits choose the nuclei and their label sets the labels
        (``label_set`` of the result is set only when they all agree).
    size, context, mpp, assume_mpp
        See :meth:`nucdata.NucleusDataset.crops`; one bank per store is cut if needed.

    Returns
    -------
    CropDataset
        Items in dataset order, then store order; ``dataset_index`` says which.
    """
    from nucdata.views._resample import image_scales, store_scales

    banks, rows, labels, candidates, images = [], [], [], [], []
    for ds in datasets:
        scales = None
        if mpp is not None:  # per store image: native pixels per output pixel
            image_scales(ds, mpp, assume_mpp)  # raises when an image of the split has no mpp
            scales = store_scales(ds.store, mpp, assume_mpp)
        banks.append(build_bank(ds.store, size, context, mpp=mpp, scales=scales))
        sel = ds.nucleus_selector()
        all_rows = np.arange(ds.store.n_nuclei)
        rows.append(all_rows[sel])
        labels.append(ds.labels)
        candidates.append(ds.candidates)
        images.append(np.asarray(ds.store.column("nuclei", "image")))
    label_sets = {ds.label_set for ds in datasets}
    return CropDataset(banks, [d.name for d in datasets], labels, candidates, images, rows,
                       label_set=label_sets.pop() if len(label_sets) == 1 else None,
                       stores=[ds.store for ds in datasets])
