"""Instance maps: sequential relabelling and per-nucleus area, centroid and bbox.

``area`` is the nucleus's pixel count and ``centroid`` the mean of its pixel
coordinates (x, y; origin at the centre of the top-left pixel); ``bbox`` is
``(x0, y0, x1, y1)`` in pixel indices with ``x1``/``y1`` exclusive.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import ndimage

__all__ = ["nucleus_properties", "relabel_sequential"]


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
