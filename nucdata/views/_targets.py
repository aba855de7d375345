"""Training targets computed from an instance map: HoVer-Net, distance and boundary maps.

Every function takes an ``(H, W)`` integer instance map (0 background, any positive id
per nucleus; ids need not be consecutive) and works on the whole map with vectorised
numpy; where a per-nucleus computation is unavoidable (distance transforms) the loop
runs over each nucleus's bounding box only. The classes wrap them as ``dict -> dict``
tile transforms::

    tiles = ds.tiles(size=256, transforms=nucdata.views.HoVerNetTargets())
    tiles[0]["hv_map"]   # float32 (2, S, S)

HoVer-Net's sign convention (``models/hovernet/targets.py::gen_instance_hv_map`` of
vqdang/hover_net): channel 0 is the *horizontal* map, channel 1 the *vertical* map.
Inside nucleus ``k`` the horizontal value grows with x (to the right) and the vertical
value with y (downwards), both measured from the nucleus's centre of mass rounded to
the nearest pixel, and each side is scaled separately so that the nucleus's leftmost
(topmost) pixels are -1 and its rightmost (bottommost) pixels +1. Background is 0.
The raw offset is HoVer-Net's ``x + 1 - round(cx)`` (its ``np.arange(1, w + 1)``
grid minus the rounded centre of mass), so the rounded centre's own column holds
``+1 / scale`` and the zero falls one pixel left of (above) it; ``exact_hovernet=False``
uses the symmetric ``x - cx`` from the unrounded centroid instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from scipy import ndimage

Sample = dict[str, Any]


def _as_numpy(instance_map: Any) -> np.ndarray:
    if isinstance(instance_map, torch.Tensor):
        instance_map = instance_map.numpy()
    inst = np.asarray(instance_map)
    if inst.ndim != 2:
        raise ValueError(f"an instance map is (H, W), got shape {inst.shape}")
    if inst.size and inst.min() < 0:
        raise ValueError("instance maps must be non-negative")
    return inst.astype(np.int64, copy=False)


def _compact(inst: np.ndarray) -> tuple[np.ndarray, int]:
    """Ids relabelled 1..K (consecutive) so that per-nucleus tables are dense."""
    if inst.size == 0 or inst.max(initial=0) == 0:
        return np.zeros(inst.shape, np.int64), 0
    present = np.bincount(inst.ravel()) > 0
    present[0] = False
    lut = np.zeros(present.size, np.int64)
    ids = np.flatnonzero(present)
    lut[ids] = np.arange(1, ids.size + 1)
    return lut[inst], int(ids.size)


def hv_maps(instance_map: Any, exact_hovernet: bool = True, min_size: int = 0) -> np.ndarray:
    """HoVer-Net's horizontal and vertical maps, ``(2, H, W)`` float32 in ``[-1, 1]``.

    Parameters
    ----------
    instance_map
        ``(H, W)`` instance ids (numpy or torch), 0 background.
    exact_hovernet
        ``True``: HoVer-Net's arithmetic (rounded centre of mass, offset
        ``x + 1 - round(cx)``). ``False``: ``x - cx`` from the exact centroid.
    min_size
        Nuclei with fewer pixels get zeros (HoVer-Net's training pipeline uses 30).

    Returns
    -------
    numpy.ndarray
        Channel 0 horizontal (grows to the right), channel 1 vertical (grows
        downwards); each nucleus's negative side is scaled by its most negative value
        and its positive side by its largest, so both ends reach exactly -1 and +1.
    """
    inst, k = _compact(_as_numpy(instance_map))
    h, w = inst.shape
    out = np.zeros((2, h, w), np.float32)
    if k == 0:
        return out
    flat = inst.ravel()
    area = np.bincount(flat, minlength=k + 1).astype(np.float64)
    ys, xs = np.divmod(np.arange(flat.size, dtype=np.int64), w)
    cx = np.bincount(flat, weights=xs, minlength=k + 1) / np.maximum(area, 1)
    cy = np.bincount(flat, weights=ys, minlength=k + 1) / np.maximum(area, 1)
    # Extremes of x and y per nucleus come from its bounding box: no per-pixel reduction.
    boxes = ndimage.find_objects(inst, max_label=k)
    x0 = np.array([b[1].start for b in boxes], np.float64)
    x1 = np.array([b[1].stop - 1 for b in boxes], np.float64)
    y0 = np.array([b[0].start for b in boxes], np.float64)
    y1 = np.array([b[0].stop - 1 for b in boxes], np.float64)
    if exact_hovernet:
        shift_x = np.floor(cx[1:] + 0.5) - 1.0  # value = x - shift
        shift_y = np.floor(cy[1:] + 0.5) - 1.0
    else:
        shift_x, shift_y = cx[1:], cy[1:]
    keep = area[1:] >= max(min_size, 1)
    fg = flat > 0
    label = flat[fg] - 1
    for channel, coord, shift, lo, hi in ((0, xs, shift_x, x0, x1), (1, ys, shift_y, y0, y1)):
        neg = shift - lo  # magnitude of the most negative value (lo - shift < 0)
        pos = hi - shift
        value = coord[fg] - shift[label]
        scaled = np.where(value < 0, value / np.where(neg[label] > 0, neg[label], 1.0),
                          np.where(value > 0, value / np.where(pos[label] > 0, pos[label], 1.0), 0.0))
        scaled = np.where(keep[label], scaled, 0.0)
        out[channel].reshape(-1)[np.flatnonzero(fg)] = scaled
    return out


def boundary_map(instance_map: Any, width: int = 1) -> np.ndarray:
    """Pixels of each nucleus that touch another id (background or a neighbour), ``(H, W)`` bool.

    Parameters
    ----------
    instance_map
        ``(H, W)`` instance ids, 0 background.
    width
        Boundary thickness in pixels (inwards); 4-connectivity.
    """
    inst = _as_numpy(instance_map)
    border = np.zeros(inst.shape, bool)
    current = inst
    for _ in range(max(1, int(width))):
        edge = np.zeros(inst.shape, bool)
        edge[1:, :] |= current[1:, :] != current[:-1, :]
        edge[:-1, :] |= current[:-1, :] != current[1:, :]
        edge[:, 1:] |= current[:, 1:] != current[:, :-1]
        edge[:, :-1] |= current[:, :-1] != current[:, 1:]
        edge &= current > 0
        border |= edge
        current = np.where(edge, 0, current)
    return border


def distance_map(instance_map: Any, normalise: bool = True) -> np.ndarray:
    """Euclidean distance of each nucleus pixel to the nearest pixel outside its nucleus.

    Parameters
    ----------
    instance_map
        ``(H, W)`` instance ids, 0 background. The image's edge does not count as
        outside (a nucleus cut by the border keeps growing towards it).
    normalise
        Scale each nucleus to a maximum of 1 (the StarDist / DIST convention).

    Returns
    -------
    numpy.ndarray
        ``(H, W)`` float32, 0 on background; loops over nucleus bounding boxes only.
    """
    inst, k = _compact(_as_numpy(instance_map))
    out = np.zeros(inst.shape, np.float32)
    h, w = inst.shape
    for label, box in enumerate(ndimage.find_objects(inst, max_label=k), start=1):
        if box is None:
            continue
        ys = slice(max(box[0].start - 1, 0), min(box[0].stop + 1, h))
        xs = slice(max(box[1].start - 1, 0), min(box[1].stop + 1, w))
        mine = inst[ys, xs] == label
        # Pad with "inside" at the image edge, "outside" elsewhere (one pixel ring).
        pad = ((int(box[0].start == 0), int(box[0].stop == h)), (int(box[1].start == 0), int(box[1].stop == w)))
        padded = np.pad(mine, pad, constant_values=True)
        dist = ndimage.distance_transform_edt(padded)
        dist = dist[pad[0][0] : padded.shape[0] - pad[0][1], pad[1][0] : padded.shape[1] - pad[1][1]]
        values = dist[mine]
        if normalise and values.size:
            values = values / values.max()
        out[ys, xs][mine] = values
    return out


class _MapTransform:
    """Base of the tile transforms: reads ``instance_map``, adds one tensor key."""

    key = ""

    def compute(self, inst: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, sample: Sample) -> Sample:
        inst = sample["instance_map"]
        return {**sample, self.key: torch.from_numpy(np.ascontiguousarray(self.compute(_as_numpy(inst))))}


class HoVerNetTargets(_MapTransform):
    """Tile transform adding ``hv_map`` float32 (2, S, S) and ``np_map`` int64 (S, S).

    ``np_map`` is 1 inside nuclei. Parameters as :func:`hv_maps`.
    """

    key = "hv_map"

    def __init__(self, exact_hovernet: bool = True, min_size: int = 0):
        self.exact_hovernet, self.min_size = exact_hovernet, min_size

    def compute(self, inst: np.ndarray) -> np.ndarray:
        return hv_maps(inst, self.exact_hovernet, self.min_size)

    def __call__(self, sample: Sample) -> Sample:
        out = super().__call__(sample)
        out["np_map"] = (torch.as_tensor(sample["instance_map"]) > 0).to(torch.int64)
        return out


class DistanceTargets(_MapTransform):
    """Tile transform adding ``distance_map`` float32 (S, S); see :func:`distance_map`."""

    key = "distance_map"

    def __init__(self, normalise: bool = True):
        self.normalise = normalise

    def compute(self, inst: np.ndarray) -> np.ndarray:
        return distance_map(inst, self.normalise)


class BoundaryTargets(_MapTransform):
    """Tile transform adding ``boundary_map`` bool (S, S); see :func:`boundary_map`."""

    key = "boundary_map"

    def __init__(self, width: int = 1):
        self.width = width

    def compute(self, inst: np.ndarray) -> np.ndarray:
        return boundary_map(inst, self.width)


def compose(*transforms: Callable[[Sample], Sample]) -> Callable[[Sample], Sample]:
    """One ``dict -> dict`` transform applying ``transforms`` in order (picklable)."""
    return _Compose(transforms)


class _Compose:
    def __init__(self, transforms: tuple[Callable[[Sample], Sample], ...]):
        self.transforms = transforms

    def __call__(self, sample: Sample) -> Sample:
        for t in self.transforms:
            sample = t(sample)
        return sample
