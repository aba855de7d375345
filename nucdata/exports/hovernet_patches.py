"""HoVer-Net's extracted training patches (``--format hovernet-patches``).

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
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from nucdata._util import atomic
from nucdata._util.disk import check_free_space
from nucdata._util.faults import fault_point
from nucdata._util.limits import check_patch_side
from nucdata._util.paths import child_path
from nucdata.errors import InvalidArgumentError
from nucdata.exports._common import MARKER, set_classes

if TYPE_CHECKING:
    from nucdata.dataset import NucleusDataset

NAME = "hovernet-patches"
DESCRIPTION = "HoVer-Net's extracted training patches (win x win every step), under a label set"
OPTIONS: tuple[str, ...] = ("mpp", "win", "step", "assume_mpp")

#: HoVer-Net's defaults (its extract_patches.py)
HOVERNET_WIN = 540
HOVERNET_STEP = 164


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


def patch_count(h: int, w: int, win: int, step: int) -> int:
    """How many patches :func:`mirror_patches` cuts from an ``h x w`` image (without cutting them)."""
    diff = win - step
    h, w = max(win, max(1, h) + diff), max(win, max(1, w) + diff)

    def along(length: int) -> tuple[int, bool]:
        return (length - win) // step + 1, (length - win) % step != 0

    (nh, fh), (nw, fw) = along(h), along(w)
    return nh * nw + fh * nw + fw * nh + (fh and fw)


def write(
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
        The empty folder; patches go to ``out/<split>/<win>x<win>_<step>x<step>/``
        (:func:`nucdata.exports.export` builds it beside the final folder and publishes
        it whole).
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

    Raises
    ------
    SizeLimitError
        For a ``win`` above ``NUCDATA_MAX_PATCH_SIDE``.
    DiskFullError
        When the patches would not fit on ``out``'s disk (checked before writing).
    UnsafeNameError
        For an image or split name that would leave ``out``.
    """
    from nucdata.views import image_scales, resample_image

    check_patch_side(int(win), "--win")
    if not 0 < step <= win:
        raise InvalidArgumentError(f"need 0 < step <= win, got win={win}, step={step}")
    classes = set_classes(ds)
    scales = image_scales(ds, mpp, assume_mpp)
    split_column = np.asarray(ds.store.column("images", "split"))
    names = np.asarray(ds.store.column("images", "name"))
    heights = np.asarray(ds.store.column("images", "height"), np.int64)[ds.indices]
    widths = np.asarray(ds.store.column("images", "width"), np.int64)[ds.indices]
    out = Path(out)
    patches = sum(patch_count(int(round(h / s)), int(round(w / s)), win, step)
                  for h, w, s in zip(heights, widths, scales, strict=True))
    check_free_space(out, patches * (win * win * 5 * 4 + 128), "the hovernet-patches export")
    written: list[Path] = []
    by_split: dict[str, list[int]] = {}
    for position, index in enumerate(ds.indices):
        by_split.setdefault(str(split_column[index]), []).append(position)
    source = ds.store.path / "images"
    for split, positions in by_split.items():
        dest = child_path(out, split, source=source / "split.npy", element="a split name") / f"{win}x{win}_{step}x{step}"
        dest.mkdir(parents=True)
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
                path = child_path(dest, str(names[index]), f"_{idx:03d}.npy", source=source / "name.npy",
                                  element=f"row {index}")
                np.save(path, np.ascontiguousarray(patch))
                files.append(path)
                count += 1
        type_info = {"0": ["background", [0, 0, 0]]}
        type_info.update({str(cid + 1): [name, rgb] for cid, name, rgb in classes})
        atomic.atomic_write_json(dest / "type_info.json", type_info)
        atomic.atomic_write_json(dest / MARKER, {
            "format": "hovernet-patches", "dataset": ds.name, "split": split, "label_set": ds.label_set,
            "win": win, "step": step, "mpp": mpp, "patches": count,
            "channels": ["R", "G", "B", "instance", "type"],
            "unlabelled_nuclei_typed_0": unlabelled,
        })
        fault_point("export:fold-written")  # the whole export is published at once (nucdata.exports)
        written += files
    return written
