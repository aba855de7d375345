"""Instance maps: sequential relabelling and per-nucleus area, centroid and bbox.

``area`` is the nucleus's pixel count and ``centroid`` the mean of its pixel
coordinates (x, y; origin at the centre of the top-left pixel); ``bbox`` is
``(x0, y0, x1, y1)`` in pixel indices with ``x1``/``y1`` exclusive.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import ndimage

__all__ = ["count_ids", "dense_ids", "nucleus_properties", "relabel_sequential"]


def dense_ids(max_id: int, pixels: int) -> bool:
    """Whether ids up to ``max_id`` in ``pixels`` pixels may be counted with a table of ``max_id + 1``.

    An instance map of N pixels holds at most N distinct ids, so a table (``bincount``,
    a look-up table) is sized by the largest id only when that id is within a small
    multiple of the pixel count; otherwise (an id of ``2**40`` in a 256 x 256 patch
    would ask for an 8 TiB table) the ids are sorted instead (``np.unique``: memory in
    proportion to the pixels, whatever the ids).
    """
    return max_id <= 4 * pixels + 65536


def count_ids(instance_map: np.ndarray) -> int:
    """How many distinct positive ids ``instance_map`` holds (memory bounded by its size)."""
    flat = np.asarray(instance_map).ravel()
    top = int(flat.max(initial=0))
    if top <= 0:
        return 0
    if dense_ids(top, flat.size) and flat.min() >= 0:
        return int(np.count_nonzero(np.bincount(flat)[1:]))
    ids = np.unique(flat)
    return int((ids > 0).sum())


def relabel_sequential(instance_map: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Relabel an instance map to 1..K in increasing order of the original ids.

    Returns the new int32 map and the original id of each new label (length K).
    Ids that own no pixel disappear. Memory is bounded by the map's size whatever its
    ids (see :func:`dense_ids`).
    """
    flat = np.asarray(instance_map)
    if flat.size == 0 or flat.max(initial=0) <= 0:
        return np.zeros(flat.shape, np.int32), np.zeros(0, np.int64)
    if flat.min() < 0:
        raise ValueError("instance maps must be non-negative")
    top = int(flat.max())
    if not dense_ids(top, flat.size):  # sparse, huge ids: sort instead of a table of top + 1
        original, inverse = np.unique(flat.ravel(), return_inverse=True)
        if original[0] == 0:
            labels = inverse.astype(np.int32)
            original = original[1:]
        else:
            labels = (inverse + 1).astype(np.int32)
        return labels.reshape(flat.shape), original.astype(np.int64)
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
