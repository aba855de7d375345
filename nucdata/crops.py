"""Per-nucleus crops, cut once into a memory-mapped crop bank and served from it.

A crop bank lives beside its store, in ``<store>/crops/<key>/``::

    crops.npy       uint8 (N, 4, S, S): RGB and the nucleus's mask (0/255), channels first
    nucleus.npy     int64 (N,): row of the nucleus in the store's nucleus table
    scale.npy       float32 (N,): output pixels per source pixel (1 unless resized)
    manifest.json   parameters and the identity of the store it was cut from

Crops are centred on the nucleus centroid; pixels outside the image are filled by
reflection (the mask channel is zero there). A nucleus whose bounding box does not fit
in the crop (or, with ``context``, every nucleus) is handled as the method does: the
enclosing square is cut and resized to the crop size, and ``scale`` records it. Nuclei
known only by a box (``has_mask`` false) get the box as mask.

The bank is rebuilt when its store is rebuilt (the store manifest's ``created`` and
converter version are recorded), and written atomically like a store.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .store import NpyStreamWriter, Store, dataset_lock

BANK_VERSION = 1


def _bank_key(size: int, context: float | None) -> str:
    text = json.dumps({"size": size, "context": context, "version": BANK_VERSION}, sort_keys=True)
    return f"s{size}-" + hashlib.sha256(text.encode()).hexdigest()[:10]


def _store_identity(store: Store) -> dict[str, Any]:
    m = store.manifest
    return {"dataset": m["dataset"], "created": m["created"], "converter_version": m["converter_version"]}


def _resize(array: np.ndarray, size: int, nearest: bool) -> np.ndarray:
    mode = Image.NEAREST if nearest else Image.BILINEAR
    if array.ndim == 2:
        return np.asarray(Image.fromarray(array).resize((size, size), mode))
    return np.asarray(Image.fromarray(array).resize((size, size), mode))


def cut_image(
    rgb: np.ndarray,
    instance_map: np.ndarray,
    centroids: np.ndarray,
    bboxes: np.ndarray,
    has_mask: np.ndarray,
    size: int,
    context: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Crops ``(K, 4, size, size)`` and scales ``(K,)`` for the nuclei of one image."""
    k = centroids.shape[0]
    out = np.zeros((k, 4, size, size), np.uint8)
    scales = np.ones(k, np.float32)
    if k == 0:
        return out, scales
    sides = np.maximum(bboxes[:, 2] - bboxes[:, 0], bboxes[:, 3] - bboxes[:, 1]).astype(np.float64)
    windows = np.full(k, size, np.int64)
    if context is not None:
        windows = np.maximum(np.ceil(sides * context), 1).astype(np.int64)
    else:
        too_big = sides > size
        windows[too_big] = np.ceil(sides[too_big]).astype(np.int64)
    pad = int(windows.max()) // 2 + 2
    # Reflection for pixels, zeros for the instance map (a mirrored nucleus is not the nucleus).
    mode = "reflect" if min(rgb.shape[:2]) > pad else "symmetric"
    padded = np.pad(rgb, ((pad, pad), (pad, pad), (0, 0)), mode=mode)
    inst = np.pad(instance_map, pad)
    for i in range(k):
        w = int(windows[i])
        if has_mask[i]:
            cx, cy = centroids[i]
        else:
            x0, y0, x1, y1 = bboxes[i]
            cx, cy = (x0 + x1 - 1) / 2, (y0 + y1 - 1) / 2
        left = int(np.floor(cx + 0.5)) - w // 2 + pad
        top = int(np.floor(cy + 0.5)) - w // 2 + pad
        window = padded[top : top + w, left : left + w]
        if has_mask[i]:
            mask = (inst[top : top + w, left : left + w] == i + 1).astype(np.uint8) * 255
        else:
            mask = np.zeros((w, w), np.uint8)
            x0, y0, x1, y1 = (int(v) for v in bboxes[i])
            mask[max(0, y0 + pad - top) : max(0, y1 + pad - top), max(0, x0 + pad - left) : max(0, x1 + pad - left)] = 255
        if w != size:
            window = _resize(np.ascontiguousarray(window), size, nearest=False)
            mask = _resize(mask, size, nearest=True)
            scales[i] = size / w
        out[i, :3] = window.transpose(2, 0, 1)
        out[i, 3] = mask
    return out, scales


class CropBank:
    """A built crop bank: memory-mapped arrays plus the parameters that made them."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.manifest = json.loads((self.path / "manifest.json").read_text())
        self._crops: np.ndarray | None = None

    def __getstate__(self) -> dict[str, Any]:  # workers reopen the memory map
        return {"path": self.path, "manifest": self.manifest, "_crops": None}

    @property
    def crops(self) -> np.ndarray:
        if self._crops is None:
            self._crops = np.load(self.path / "crops.npy", mmap_mode="r")
        return self._crops

    @property
    def nucleus(self) -> np.ndarray:
        return np.load(self.path / "nucleus.npy", mmap_mode="r")

    @property
    def scale(self) -> np.ndarray:
        return np.load(self.path / "scale.npy", mmap_mode="r")

    @property
    def size(self) -> int:
        return int(self.manifest["size"])

    def __len__(self) -> int:
        return int(self.manifest["count"])

    def tensor(self, device: str | torch.device = "cpu") -> torch.Tensor:
        """The whole bank as one uint8 tensor ``(N, 4, S, S)`` (for GPU-resident training)."""
        return torch.from_numpy(np.array(self.crops)).to(device)


def build_bank(store: Store, size: int = 64, context: float | None = None, force: bool = False) -> CropBank:
    """Return the crop bank of ``store`` for these parameters, cutting it if needed."""
    if size < 4:
        from .errors import InvalidArgumentError

        raise InvalidArgumentError(f"crop size must be at least 4 pixels, got {size}")
    folder = store.path / "crops" / _bank_key(size, context)
    identity = _store_identity(store)
    with dataset_lock(store.path / "crops"):
        if folder.is_dir() and not force:
            try:
                bank = CropBank(folder)
                if bank.manifest.get("store") == identity:
                    return bank
            except (OSError, json.JSONDecodeError):
                pass  # half-written or foreign: rebuild below
        tmp = folder.parent / f".tmp-{folder.name}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        try:
            writer = NpyStreamWriter(tmp / "crops.npy", np.uint8)
            scales = []
            centroid = np.asarray(store.column("nuclei", "centroid"))
            bbox = np.asarray(store.column("nuclei", "bbox"))
            has_mask = np.asarray(store.column("nuclei", "has_mask"))
            for i in range(store.n_images):
                rows = store.nucleus_slice(i)
                crops, scale = cut_image(
                    np.asarray(store.rgb(i)), np.asarray(store.instance_map(i)),
                    centroid[rows], bbox[rows], has_mask[rows], size, context,
                )
                writer.append(crops)
                scales.append(scale)
            n = store.n_nuclei
            writer.close((n, 4, size, size))
            np.save(tmp / "nucleus.npy", np.arange(n, dtype=np.int64))
            np.save(tmp / "scale.npy", np.concatenate(scales) if scales else np.zeros(0, np.float32))
            manifest = {"version": BANK_VERSION, "size": size, "context": context, "count": n,
                        "resized": int(sum(int((s != 1).sum()) for s in scales)), "store": identity}
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
            if folder.exists():
                shutil.rmtree(folder)
            os.rename(tmp, folder)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return CropBank(folder)


class CropDataset(torch.utils.data.Dataset):
    """Map-style dataset over nuclei, served from crop banks without decoding images.

    ``ds[i]`` is one sample; ``ds[[i, j, ...]]`` (any integer sequence) is a batch dict
    with stacked tensors, which is how :func:`crop_loader` serves tens of thousands of
    crops per second. Each sample::

        image          uint8 (3, S, S)
        mask           uint8 (1, S, S), 255 on the nucleus
        label          int64 (class under the label set; native code without one)
        candidates     int64 bitmask (0 without a label set)
        scale          float32 (1 unless the nucleus was resized to fit)
        dataset        str;  dataset_index int64 (position in ``datasets``)
        image_index, nucleus_index  int64 (rows in the dataset's store)
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
    ):
        self.banks = list(banks)
        self.datasets = list(datasets)
        self.label_set = label_set
        self.rows = [np.asarray(r) for r in (nucleus_rows or [np.arange(len(b)) for b in banks])]
        sizes = [r.size for r in self.rows]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.dataset_index = np.repeat(np.arange(len(banks)), sizes).astype(np.int64)
        self.labels = np.concatenate([np.asarray(x)[r] for x, r in zip(labels, self.rows, strict=True)]) if sizes else np.zeros(0, np.int64)
        self.candidates = np.concatenate([np.asarray(x)[r] for x, r in zip(candidates, self.rows, strict=True)]) if sizes else np.zeros(0, np.int64)
        self.image_index = np.concatenate([np.asarray(x)[r] for x, r in zip(image_index, self.rows, strict=True)]) if sizes else np.zeros(0, np.int64)
        self.nucleus_index = np.concatenate(self.rows).astype(np.int64) if sizes else np.zeros(0, np.int64)
        self.scale = np.concatenate([np.asarray(b.scale)[r] for b, r in zip(self.banks, self.rows, strict=True)]) if sizes else np.zeros(0, np.float32)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def size(self) -> int:
        return self.banks[0].size if self.banks else 0

    def _gather(self, index: np.ndarray) -> np.ndarray:
        out = np.empty((index.size, 4, self.size, self.size), np.uint8)
        which = self.dataset_index[index]
        for d in np.unique(which):
            sel = np.flatnonzero(which == d)
            rows = self.nucleus_index[index[sel]]
            order = np.argsort(rows, kind="stable")  # sorted reads are sequential on disk
            out[sel[order]] = self.banks[d].crops[rows[order]]
        return out

    def __getitem__(self, i: int | Sequence[int] | np.ndarray) -> dict[str, Any]:
        if np.isscalar(i):
            i = int(i)
            if not -len(self) <= i < len(self):
                raise IndexError(f"index {i} out of range for {len(self)} nuclei")
            batch = self[np.array([i % len(self)])]
            return {k: (v[0] if isinstance(v, torch.Tensor | list) else v) for k, v in batch.items()}
        index = np.asarray(i, np.int64)
        crops = torch.from_numpy(self._gather(index))
        which = self.dataset_index[index]
        return {
            "image": crops[:, :3],
            "mask": crops[:, 3:],
            "label": torch.from_numpy(self.labels[index].astype(np.int64)),
            "candidates": torch.from_numpy(self.candidates[index].astype(np.int64)),
            "scale": torch.from_numpy(self.scale[index].astype(np.float32)),
            "dataset": [self.datasets[d] for d in which],
            "dataset_index": torch.from_numpy(which),
            "image_index": torch.from_numpy(self.image_index[index].astype(np.int64)),
            "nucleus_index": torch.from_numpy(self.nucleus_index[index]),
        }

    def tensor(self, device: str | torch.device = "cpu") -> torch.Tensor:
        """Every crop as one uint8 tensor ``(N, 4, S, S)``, in dataset order."""
        return torch.from_numpy(self._gather(np.arange(len(self)))).to(device)


def crop_loader(
    dataset: CropDataset,
    batch_size: int = 256,
    shuffle: bool = False,
    num_workers: int = 0,
    drop_last: bool = False,
    generator: torch.Generator | None = None,
) -> torch.utils.data.DataLoader:
    """A DataLoader that fetches whole batches with one gather per batch."""
    base = (torch.utils.data.RandomSampler(dataset, generator=generator) if shuffle
            else torch.utils.data.SequentialSampler(dataset))
    sampler = torch.utils.data.BatchSampler(base, batch_size, drop_last)
    return torch.utils.data.DataLoader(
        dataset, sampler=sampler, batch_size=None, num_workers=num_workers,
        persistent_workers=num_workers > 0,
    )
