"""PanNuke's fold layout, for segmentation trainers (``--format pannuke``).

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
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nucdata._util import atomic
from nucdata._util.disk import check_free_space
from nucdata._util.faults import fault_point
from nucdata._util.limits import check_patch_side
from nucdata._util.npy import NpyStreamWriter
from nucdata.errors import InvalidArgumentError
from nucdata.exports._common import MARKER, set_classes

if TYPE_CHECKING:
    from nucdata.dataset import NucleusDataset

NAME = "pannuke"
DESCRIPTION = "PanNuke's fold layout (images.npy, types.npy, masks.npy per fold), under a label set"
OPTIONS: tuple[str, ...] = ("mpp", "size", "assume_mpp")

#: PanNuke's patch side
PANNUKE_SIZE = 256
_FOLD = re.compile(r"^fold(\d+)$")


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


def write(
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
        The empty folder that receives the ``Fold k/`` folders (:func:`nucdata.exports.export`
        builds it beside the final folder and publishes every fold at once).
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
        Without a label set.
    SizeLimitError
        For a ``size`` above ``NUCDATA_MAX_PATCH_SIDE``.
    DiskFullError
        When the patches would not fit on ``out``'s disk (checked before writing).
    """
    check_patch_side(int(size), "--size")
    if int(size) < 1:
        raise InvalidArgumentError(f"--size must be a positive number of pixels, got {size}")
    classes = set_classes(ds)
    n_classes = len(classes)
    tiles = ds.tiles(size=size, mpp=mpp, edge="shift", assume_mpp=assume_mpp)
    split_column = np.asarray(ds.store.column("images", "split"))
    image_split = split_column[ds.indices]
    positions = tiles.grid[:, 1]
    splits = list(dict.fromkeys(str(image_split[p]) for p in positions)) or [str(ds.split or "all")]
    numbers = _fold_numbers(splits)
    tissue = np.asarray(ds.store.column("images", "tissue"))
    out = Path(out)
    # images (3 channels) and masks (C + 1) as float64, per patch: refuse up front what cannot fit
    check_free_space(out, len(tiles.grid) * size * size * (3 + n_classes + 1) * 8, "the pannuke export")
    written: list[Path] = []
    for split in splits:
        k = numbers[split]
        dest = out / f"Fold {k}"
        image_dir, mask_dir = dest / "images" / f"fold{k}", dest / "masks" / f"fold{k}"
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
        finally:
            images.abort()
            masks.abort()
        np.save(image_dir / "types.npy", np.asarray(types, dtype=f"<U{max([1, *map(len, types)])}"))
        atomic.atomic_write_json(dest / MARKER, {
            "format": "pannuke", "dataset": ds.name, "split": split, "label_set": ds.label_set,
            "channels": [name for _, name, _ in classes] + ["background"], "patch_size": size,
            "mpp": mpp, "patches": n, "nuclei": nuclei, "unlabelled_nuclei": unlabelled,
            "patch_origins": origins,
        })
        fault_point("export:fold-written")  # the whole export is published at once (nucdata.exports)
        written += [image_dir / "images.npy", image_dir / "types.npy", mask_dir / "masks.npy"]
    return written
