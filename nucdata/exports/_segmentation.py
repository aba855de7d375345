"""Exports for segmentation trainers: PanNuke's fold layout and HoVer-Net's patches.

PanNuke (``--format pannuke``)
    The layout of the published folds (docs/datasets/pannuke.md), so that
    PanNuke training code (CellViT, HoVer-Net's PanNuke configs, StarDist examples)
    reads any dataset under any label set unchanged::

        Fold k/images/foldk/images.npy   float64 (N, S, S, 3), values 0-255
        Fold k/images/foldk/types.npy    <U (N,), the tissue of each patch
        Fold k/masks/foldk/masks.npy     float64 (N, S, S, C + 1)
        Fold k/export.json               what was exported (nucdata's own, ignored by readers)

    Mask channel ``c < C`` holds the instance ids of the patch's nuclei of class ``c``
    of the label set (ids are unique within a patch, across channels); channel ``C``
    is the background indicator, 1 where there is no nucleus (padding included).
    Nuclei without a label in the set (missing, or outside it) are in no class channel
    but are 0 in the background channel, so ``1 - mask[..., C]`` still finds them;
    ``export.json`` counts them. Patches are the image's grid tiles of side ``S``
    (256 like PanNuke) at ``mpp`` (native without it), the last tile of a row or
    column shifted back inside the image; images smaller than a tile are padded with
    black. One fold per split: splits named ``fold<k>`` keep their number, other splits
    are numbered 1, 2, ... in order of appearance (``export.json`` records which).

HoVer-Net patches (``--format hovernet-patches``)
    What HoVer-Net's ``extract_patches.py`` writes (vqdang/hover_net, with its
    ``misc/patch_extractor.py``): per image, the RGB image, the instance map and the
    type map stacked into ``(H, W, 5)`` int32, mirror-padded by ``(win - step) / 2`` on
    every side (``np.pad(..., "reflect")``), then cut into ``win x win`` windows every
    ``step`` pixels (plus the extra row and column of windows flush with the bottom and
    right edges), each saved as ``<split>/<win>x<win>_<step>x<step>/<image>_<idx:03d>.npy``.
    Defaults are HoVer-Net's: ``win = 540``, ``step = 164``. The type channel is 0 for
    background and ``c + 1`` for class ``c``; nuclei without a label in the set get 0
    (HoVer-Net one-hot encodes the type map, so it has no ignore value; they remain in
    the instance channel). ``type_info.json`` (HoVer-Net's ``"id": [name, [r, g, b]]``)
    is written beside the patches. An image smaller than one window after padding is
    padded further (reflect) at its bottom and right, where HoVer-Net would fail.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nucdata._util import atomic
from nucdata._util.npy import NpyStreamWriter
from nucdata.errors import InvalidArgumentError

if TYPE_CHECKING:  # type hints only: the dataset module builds on this one
    from nucdata.dataset import NucleusDataset

PANNUKE_SIZE = 256
HOVERNET_WIN = 540
HOVERNET_STEP = 164
_MARKER = "export.json"
_FOLD = re.compile(r"^fold(\d+)$")


def _classes(ds: NucleusDataset) -> list[tuple[int, str, list[int]]]:
    """``(id, name, rgb)`` of every class of ``ds``'s label set."""
    if ds.label_set is None:
        raise InvalidArgumentError(
            f"{ds.name}: segmentation exports write one channel or type id per class of a label "
            "set; pass --label-set (for example pannuke)."
        )
    return [(k, name, list(rgb)) for k, (name, rgb) in ds.classes.items()]


def _check_replaceable(dest: Path) -> None:
    """Refuse to replace a folder that an earlier nucdata export did not write."""
    if dest.exists() and not (dest / _MARKER).is_file():
        raise InvalidArgumentError(
            f"{dest} exists and was not written by nucdata export; move it away or choose another --out."
        )


def _fold_numbers(splits: list[str]) -> dict[str, int]:
    """Split name -> PanNuke fold number (``fold<k>`` keeps ``k``; others count up)."""
    numbers: dict[str, int] = {}
    for split in splits:
        match = _FOLD.match(split)
        if match:
            numbers[split] = int(match.group(1))
    taken = set(numbers.values())
    nxt = 1
    for split in splits:
        if split not in numbers:
            while nxt in taken:
                nxt += 1
            numbers[split] = nxt
            taken.add(nxt)
    return numbers


def export_pannuke(
    ds: NucleusDataset,
    out: str | os.PathLike[str],
    mpp: float | None = None,
    size: int = PANNUKE_SIZE,
    assume_mpp: float | None = None,
) -> list[Path]:
    """Write ``ds`` in PanNuke's fold layout (see the module docstring).

    Parameters
    ----------
    ds
        The dataset, under a label set; its split chooses the images.
    out
        Folder that receives ``Fold k/`` folders (each built aside and swapped in).
    mpp
        Resample to this many microns per pixel (``None``: native).
    size
        Patch side (PanNuke's is 256).
    assume_mpp
        mpp for images that have none.

    Returns
    -------
    list of Path
        The ``.npy`` files written.

    Raises
    ------
    InvalidArgumentError
        Without a label set, or when a ``Fold k`` folder in ``out`` is not nucdata's.
    """
    classes = _classes(ds)
    n_classes = len(classes)
    tiles = ds.tiles(size=size, mpp=mpp, edge="shift", assume_mpp=assume_mpp)
    split_column = np.asarray(ds.store.column("images", "split"))
    image_split = split_column[ds.indices]
    positions = tiles.grid[:, 1]
    splits = list(dict.fromkeys(str(image_split[p]) for p in positions)) or [str(ds.split or "all")]
    numbers = _fold_numbers(splits)
    tissue = np.asarray(ds.store.column("images", "tissue"))
    out = Path(out)
    written: list[Path] = []
    for split in splits:
        k = numbers[split]
        dest = out / f"Fold {k}"
        _check_replaceable(dest)
        atomic.recover(dest)
        tmp = atomic.staging_dir(dest)
        image_dir, mask_dir = tmp / "images" / f"fold{k}", tmp / "masks" / f"fold{k}"
        image_dir.mkdir(parents=True)
        mask_dir.mkdir(parents=True)
        images = NpyStreamWriter(image_dir / "images.npy", np.float64)
        masks = NpyStreamWriter(mask_dir / "masks.npy", np.float64)
        try:
            types: list[str] = []
            origins: list[list[Any]] = []
            unlabelled = nuclei = 0
            for t in np.flatnonzero(image_split[positions] == split):
                m, j, ty, tx = (int(v) for v in tiles.grid[t])
                sample = tiles.tile(m, j, ty, tx)
                inst = sample["instance_map"].numpy()
                labels = sample["labels"].numpy()
                mask = np.zeros((size, size, n_classes + 1), np.float64)
                klass = np.zeros(labels.size + 1, np.int64)  # tile id -> class channel (-1: none)
                klass[0] = -1
                klass[1:] = np.where(labels >= 0, labels, -1)
                per_pixel = klass[inst]
                for c in range(n_classes):
                    mask[..., c] = np.where(per_pixel == c, inst, 0)
                mask[..., n_classes] = inst == 0
                images.append(sample["image"].numpy().transpose(1, 2, 0).astype(np.float64))
                masks.append(mask)
                index = int(ds.indices[j])
                types.append(str(tissue[index]) or "Unknown")
                origins.append([sample["image_id"], *[float(v) for v in sample["origin"]]])
                unlabelled += int((labels < 0).sum())
                nuclei += int(labels.size)
            n = len(types)
            images.close((n, size, size, 3))
            masks.close((n, size, size, n_classes + 1))
            np.save(image_dir / "types.npy", np.asarray(types, dtype=f"<U{max([1, *map(len, types)])}"))
            atomic.atomic_write_json(tmp / _MARKER, {
                "format": "pannuke", "dataset": ds.name, "split": split, "label_set": ds.label_set,
                "channels": [name for _, name, _ in classes] + ["background"], "patch_size": size,
                "mpp": mpp, "patches": n, "nuclei": nuclei, "unlabelled_nuclei": unlabelled,
                "patch_origins": origins,
            })
            atomic.swap_dir(tmp, dest, label="export")
        finally:
            images.abort()
            masks.abort()
            atomic.discard(tmp)
        written += [dest / "images" / f"fold{k}" / "images.npy", dest / "images" / f"fold{k}" / "types.npy",
                    dest / "masks" / f"fold{k}" / "masks.npy"]
    return written


def mirror_patches(x: np.ndarray, win: int, step: int) -> list[np.ndarray]:
    """HoVer-Net's ``PatchExtractor.extract(x, "mirror")`` on an ``(H, W, C)`` array.

    Mirror-pads by ``(win - step) // 2`` (top/left) and the rest (bottom/right), then
    takes windows every ``step`` plus the bottom row and right column flush with the
    edge and the bottom-right corner (HoVer-Net's ``__extract_valid``).
    """
    if not 0 < step <= win:
        raise InvalidArgumentError(f"need 0 < step <= win, got win={win}, step={step}")
    diff = win - step
    before, after = diff // 2, diff - diff // 2
    x = np.pad(x, ((before, after), (before, after), (0, 0)), "reflect")
    short_h, short_w = max(0, win - x.shape[0]), max(0, win - x.shape[1])
    if short_h or short_w:  # HoVer-Net fails here; pad on to one window
        x = np.pad(x, ((0, short_h), (0, short_w), (0, 0)), "reflect")
    h, w = x.shape[:2]

    def last(length: int) -> tuple[bool, int]:
        flag = (length - win) % step != 0
        return flag, (int(np.floor((length - win) / step)) + 1) * step

    h_flag, h_last = last(h)
    w_flag, w_last = last(w)
    corners = [(r, c) for r in range(0, h_last, step) for c in range(0, w_last, step)]
    if h_flag:
        corners += [(h - win, c) for c in range(0, w_last, step)]
    if w_flag:
        corners += [(r, w - win) for r in range(0, h_last, step)]
    if h_flag and w_flag:
        corners.append((h - win, w - win))
    return [x[r : r + win, c : c + win] for r, c in corners]


def export_hovernet_patches(
    ds: NucleusDataset,
    out: str | os.PathLike[str],
    mpp: float | None = None,
    win: int = HOVERNET_WIN,
    step: int = HOVERNET_STEP,
    assume_mpp: float | None = None,
) -> list[Path]:
    """Write ``ds`` as HoVer-Net training patches (see the module docstring).

    Parameters
    ----------
    ds
        The dataset, under a label set.
    out
        Folder; patches go to ``out/<split>/<win>x<win>_<step>x<step>/`` (built aside and
        swapped in).
    mpp
        Resample each image to this many microns per pixel first.
    win, step
        Window and step (HoVer-Net's defaults 540 and 164).
    assume_mpp
        mpp for images that have none.

    Returns
    -------
    list of Path
        The patch files written.
    """
    from nucdata.views import image_scales, resample_image

    classes = _classes(ds)
    scales = image_scales(ds, mpp, assume_mpp)
    split_column = np.asarray(ds.store.column("images", "split"))
    names = np.asarray(ds.store.column("images", "name"))
    out = Path(out)
    written: list[Path] = []
    by_split: dict[str, list[int]] = {}
    for position, index in enumerate(ds.indices):
        by_split.setdefault(str(split_column[index]), []).append(position)
    for split, positions in by_split.items():
        dest = out / split / f"{win}x{win}_{step}x{step}"
        _check_replaceable(dest)
        atomic.recover(dest)
        tmp = atomic.staging_dir(dest)
        try:
            unlabelled = count = 0
            files = []
            for position in positions:
                index = int(ds.indices[position])
                rgb, inst = resample_image(ds.store.rgb(index), ds.store.instance_map(index), float(scales[position]))
                rows = ds.store.nucleus_slice(index)
                labels = ds.labels[rows.start : rows.stop]
                type_lut = np.zeros(labels.size + 1, np.int32)
                type_lut[1:] = np.where(labels >= 0, labels + 1, 0)
                has_mask = np.asarray(ds.store.column("nuclei", "has_mask")[rows])
                type_lut = type_lut[: int(has_mask.sum()) + 1]
                stacked = np.concatenate([rgb.astype(np.int32), inst[..., None].astype(np.int32),
                                          type_lut[inst][..., None]], axis=-1)
                unlabelled += int(((labels < 0) & has_mask).sum())
                for idx, patch in enumerate(mirror_patches(stacked, win, step)):
                    name = f"{names[index]}_{idx:03d}.npy"
                    np.save(tmp / name, np.ascontiguousarray(patch))
                    files.append(name)
                    count += 1
            type_info = {"0": ["background", [0, 0, 0]]}
            type_info.update({str(cid + 1): [name, rgb] for cid, name, rgb in classes})
            atomic.atomic_write_json(tmp / "type_info.json", type_info)
            atomic.atomic_write_json(tmp / _MARKER, {
                "format": "hovernet-patches", "dataset": ds.name, "split": split, "label_set": ds.label_set,
                "win": win, "step": step, "mpp": mpp, "patches": count,
                "channels": ["R", "G", "B", "instance", "type"],
                "unlabelled_nuclei_typed_0": unlabelled,
            })
            atomic.swap_dir(tmp, dest, label="export")
        finally:
            atomic.discard(tmp)
        written += [dest / f for f in files]
    return written
