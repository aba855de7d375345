"""Outlines of nuclei from instance maps."""

from __future__ import annotations

import numpy as np
from skimage.measure import find_contours


def nucleus_outline(instance_map: np.ndarray, label: int, bbox: np.ndarray) -> np.ndarray:
    """The longest outline of nucleus ``label`` as ``(n, 2)`` x, y in pixel-centre coordinates.

    The outline follows the 0.5 iso-line between the nucleus's pixel centres and its
    neighbours'; add 0.5 to convert to the pixel-corner frame of GeoJSON and COCO.
    """
    x0, y0, x1, y1 = (int(v) for v in bbox)
    window = np.pad(instance_map[y0:y1, x0:x1] == label, 1).astype(np.float32)
    contours = find_contours(window, 0.5)
    if not contours:
        return np.zeros((0, 2))
    rows_cols = max(contours, key=len)
    return np.stack([rows_cols[:, 1] + x0 - 1, rows_cols[:, 0] + y0 - 1], axis=1)


def box_outline(bbox: np.ndarray) -> np.ndarray:
    """A closed box outline (pixel-centre coordinates) for nuclei without a mask."""
    x0, y0, x1, y1 = (float(v) for v in bbox)
    return np.array([[x0 - 0.5, y0 - 0.5], [x1 - 0.5, y0 - 0.5], [x1 - 0.5, y1 - 0.5], [x0 - 0.5, y1 - 0.5], [x0 - 0.5, y0 - 0.5]])
