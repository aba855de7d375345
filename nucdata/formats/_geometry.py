"""Outlines and pixels in the pixel-centre frame: areas, centroids, rasterisation, outlines.

Every outline here is ``(k, 2)`` float (x, y) in the **pixel-centre frame**: pixel
``(row i, column j)`` has its centre at ``(x=j, y=i)``, so the image's top-left corner
is at ``(-0.5, -0.5)``. GeoJSON and QuPath use the pixel-corner frame (top-left corner at
``(0, 0)``, pixel centres at half-integers); their readers and writers shift by 0.5.

Rasterisation rule (:func:`ring_pixels`, :func:`rasterize`): a pixel belongs to an outline
when its centre lies inside it (even-odd rule over all its rings, so holes and further
parts work) **or on it** (an edge or vertex through the centre). So an outline traced
through the centres of a mask's boundary pixels (HoVer-Net's and CellViT's integer
contours, OpenCV's) gives back the mask, and an outline on the half-pixel lines between
a mask and its background (marching squares, nucdata's exports) gives back the mask too.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["polygon_area", "polygon_centroid", "rasterize", "ring_pixels"]


def _ring(ring: np.ndarray) -> np.ndarray:
    v = np.asarray(ring, np.float64).reshape(-1, 2)
    if len(v) > 1 and (v[0] == v[-1]).all():
        v = v[:-1]  # a repeated closing vertex
    return v


def polygon_area(ring: np.ndarray) -> float:
    """Area of a ring (shoelace formula; 0 below three vertices)."""
    v = _ring(ring)
    if len(v) < 3:
        return 0.0
    x, y = v[:, 0], v[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def polygon_centroid(rings: Sequence[np.ndarray]) -> tuple[np.ndarray, float]:
    """Area centroid ``(x, y)`` and area of an outline given as rings (first outer, others holes).

    Holes subtract. An outline of zero area (a point, a line) gives the mean of its
    vertices and area 0.
    """
    total, cx, cy = 0.0, 0.0, 0.0
    for n, ring in enumerate(rings):
        v = _ring(ring)
        if len(v) < 3:
            continue
        x, y = v[:, 0], v[:, 1]
        x2, y2 = np.roll(x, -1), np.roll(y, -1)
        cross = x * y2 - x2 * y
        a = 0.5 * float(cross.sum())
        if a == 0.0:
            continue
        weight = abs(a) if n == 0 else -abs(a)  # holes subtract
        cx += weight * float(((x + x2) * cross).sum()) / (6.0 * a)
        cy += weight * float(((y + y2) * cross).sum()) / (6.0 * a)
        total += weight
    if total > 0:
        return np.array([cx / total, cy / total]), total
    points = np.concatenate([_ring(r) for r in rings]) if rings else np.zeros((0, 2))
    if not len(points):
        return np.array([np.nan, np.nan]), 0.0
    return points.mean(axis=0), 0.0


def ring_pixels(rings: Sequence[np.ndarray], shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of the pixels an outline covers (module docstring's rule), clipped to ``shape``.

    Parameters
    ----------
    rings
        ``(k, 2)`` x, y rings in the pixel-centre frame; the even-odd rule runs over all
        of them (an outer ring with holes, or several parts).
    shape
        ``(height, width)`` of the image.
    """
    h, w = int(shape[0]), int(shape[1])
    empty = (np.zeros(0, np.intp), np.zeros(0, np.intp))
    loops = [_ring(r) for r in rings]
    loops = [v for v in loops if len(v)]
    if not loops or h <= 0 or w <= 0:
        return empty
    allv = np.concatenate(loops)
    if not np.isfinite(allv).all():
        return empty
    r0 = max(0, int(np.ceil(allv[:, 1].min())))
    r1 = min(h - 1, int(np.floor(allv[:, 1].max())))
    c0 = max(0, int(np.ceil(allv[:, 0].min())))
    c1 = min(w - 1, int(np.floor(allv[:, 0].max())))
    if r1 < r0 or c1 < c0:
        return empty
    width = c1 - c0 + 1
    grid = np.zeros((r1 - r0 + 1, width + 1), np.int32)  # a difference array per row
    x1 = np.concatenate([v[:, 0] for v in loops])
    y1 = np.concatenate([v[:, 1] for v in loops])
    x2 = np.concatenate([np.roll(v[:, 0], -1) for v in loops])
    y2 = np.concatenate([np.roll(v[:, 1], -1) for v in loops])
    ys = np.arange(r0, r1 + 1, dtype=np.float64)[:, None]
    straddle = (y1[None] > ys) != (y2[None] > ys)
    with np.errstate(divide="ignore", invalid="ignore"):
        xc = x1[None] + (ys - y1[None]) * (x2 - x1)[None] / (y2 - y1)[None]
    xc = np.where(straddle, xc, np.inf)
    xc.sort(axis=1)
    counts = straddle.sum(axis=1)
    rows_idx, pair_idx = [], []
    for r in np.flatnonzero(counts >= 2):
        k = int(counts[r]) // 2 * 2
        rows_idx.append(np.full(k // 2, r))
        pair_idx.append(xc[r, :k].reshape(-1, 2))
    if rows_idx:
        rr = np.concatenate(rows_idx)
        pairs = np.concatenate(pair_idx)
        start = np.clip(np.ceil(pairs[:, 0]).astype(np.int64) - c0, 0, width)
        stop = np.clip(np.floor(pairs[:, 1]).astype(np.int64) - c0 + 1, 0, width)
        ok = stop > start
        np.add.at(grid, (rr[ok], start[ok]), 1)
        np.add.at(grid, (rr[ok], stop[ok]), -1)
    mask = np.cumsum(grid, axis=1)[:, :width] > 0
    # On the outline: horizontal edges along a row of centres, and vertices on a centre.
    flat = (y1 == y2) & (y1 == np.round(y1))
    for xa, xb, yy in zip(x1[flat], x2[flat], y1[flat], strict=True):
        row = int(yy) - r0
        if 0 <= row < mask.shape[0]:
            lo = max(0, int(np.ceil(min(xa, xb))) - c0)
            hi = min(width - 1, int(np.floor(max(xa, xb))) - c0)
            if hi >= lo:
                mask[row, lo:hi + 1] = True
    on = (allv == np.round(allv)).all(axis=1)
    if on.any():
        vc = allv[on, 0].astype(np.int64) - c0
        vr = allv[on, 1].astype(np.int64) - r0
        keep = (vc >= 0) & (vc < width) & (vr >= 0) & (vr < mask.shape[0])
        mask[vr[keep], vc[keep]] = True
    rows, cols = np.nonzero(mask)
    return rows + r0, cols + c0


def rasterize(outlines: Sequence[Sequence[np.ndarray]], shape: tuple[int, int],
              values: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
    """An ``int32`` instance map of outlines: value ``values[i]`` (default ``i + 1``) for outline ``i``.

    Parameters
    ----------
    outlines
        Per nucleus, its rings (pixel-centre frame; see :func:`ring_pixels`).
    shape
        ``(height, width)``.
    values
        The value each outline's pixels take.

    Notes
    -----
    Where outlines overlap, the **earlier** one keeps the pixel; an outline left with no
    pixel is absent from the map (the caller counts it).
    """
    inst = np.zeros(tuple(int(v) for v in shape), np.int32)
    vals = np.arange(1, len(outlines) + 1) if values is None else np.asarray(values, np.int64)
    for rings, value in zip(outlines, vals, strict=True):
        rr, cc = ring_pixels(rings, inst.shape)
        if rr.size:
            free = inst[rr, cc] == 0
            inst[rr[free], cc[free]] = int(value)
    return inst
