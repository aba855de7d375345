"""Resampling an image (and its instance map) to another µm/px, reading only a window.

The geometry and the filter are described in :mod:`nucdata.views` (tiles): output pixel
``g`` is centred on native coordinate ``(g + 0.5) * scale - 0.5``; images follow
:func:`skimage.transform.rescale` with ``anti_aliasing=True`` (a Gaussian of sigma
``max(0, (scale - 1) / 2)`` then bilinear, borders mirrored) folded into two sparse
per-axis weight matrices; instance maps take the nearest native pixel, so ids stay ids.
Crops, tiles and exports share this one implementation.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import sparse

from nucdata.errors import InvalidArgumentError, MissingMppError

if TYPE_CHECKING:
    from nucdata.dataset import NucleusDataset


def output_length(n: int, scale: float) -> int:
    """Pixels along an axis of ``n`` native pixels resampled by ``scale`` (as skimage)."""
    return max(1, int(np.round(n / scale)))


def _mirror(index: np.ndarray, n: int) -> np.ndarray:
    """Fold indices into ``[0, n)`` like ``scipy.ndimage``'s ``mode="mirror"``."""
    if n == 1:
        return np.zeros_like(index)
    period = 2 * (n - 1)
    index = np.mod(index, period)
    return np.where(index > n - 1, period - index, index)


@functools.lru_cache(maxsize=64)
def _gaussian(scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Offsets and weights of the anti-aliasing Gaussian for ``scale`` (skimage's sigma)."""
    sigma = max(0.0, (scale - 1.0) / 2.0)
    if sigma == 0:
        return np.zeros(1, np.int64), np.ones(1)
    radius = int(4.0 * sigma + 0.5)  # scipy.ndimage's truncate=4.0
    offsets = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 * (offsets / sigma) ** 2)
    return offsets, weights / weights.sum()


@functools.lru_cache(maxsize=64)
def _axis_table(n: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Taps of every output pixel of an axis of ``n`` native pixels: ``(n_out, T)`` indices and weights.

    Keyed on the axis (its length and scale) alone, not on a window's start, so random
    tiles of one image (and every image of one size) share it; a window takes its rows.
    """
    count = output_length(n, scale)
    g = np.arange(count, dtype=np.float64)
    centre = (g + 0.5) * scale - 0.5
    left = np.floor(centre).astype(np.int64)
    frac = centre - left
    taps = _mirror(np.stack([left, left + 1], 1), n)  # (count, 2): bilinear taps
    tap_w = np.stack([1.0 - frac, frac], 1)
    offsets, g_w = _gaussian(float(scale))
    index = _mirror(taps[:, :, None] + offsets[None, None, :], n).reshape(count, -1)  # filter, then sample
    weight = (tap_w[:, :, None] * g_w[None, None, :]).reshape(count, -1).astype(np.float32)
    index.flags.writeable = False
    weight.flags.writeable = False
    return index, weight


def axis_weights(n: int, start: int, count: int, scale: float,
                 channels: int = 1) -> tuple[int, sparse.csr_matrix]:
    """Resampling of output pixels ``start .. start+count-1`` of an axis of ``n`` pixels.

    Parameters
    ----------
    n
        Native pixels along the axis.
    start, count
        Output pixels wanted (all inside the resampled axis).
    scale
        Native pixels per output pixel.
    channels
        Planes stacked along this axis: the matrix acts on ``channels`` blocks of the
        native window (``(channels * pixels, ...)``, block-major) and gives
        ``(channels * count, ...)``, every block resampled alike
        (``kron(eye(channels), matrix)``).

    Returns
    -------
    lo, matrix
        ``out = matrix @ native[lo : lo + matrix.shape[1] // channels]`` along this axis;
        ``float32`` weights, one row per output pixel (and plane) with a fixed number
        of entries (repeated columns add up).
    """
    table, table_w = _axis_table(int(n), float(scale))
    index, weight = table[start : start + count], table_w[start : start + count]
    lo = int(index.min())
    width = int(index.max()) + 1 - lo
    index = index - lo
    if channels > 1:
        index = (index[None] + (np.arange(channels) * width)[:, None, None]).reshape(channels * count, -1)
        weight = np.broadcast_to(weight, (channels, *weight.shape)).reshape(channels * count, -1)
    taps_per_row = index.shape[1]
    indptr = np.arange(0, index.size + 1, taps_per_row, dtype=np.int32)
    matrix = sparse.csr_matrix((weight.ravel(), index.ravel().astype(np.int32), indptr),
                               shape=(index.shape[0], width * channels))
    return lo, matrix


def nearest_indices(n: int, start: int, count: int, scale: float) -> np.ndarray:
    """Native pixel holding the centre of each output pixel ``start .. start+count-1``."""
    g = np.arange(start, start + count, dtype=np.float64)
    return np.clip(np.floor((g + 0.5) * scale).astype(np.int64), 0, n - 1)


def resample_planes(planes: np.ndarray, y0: int, x0: int, rows: int, cols: int, scale: float) -> np.ndarray:
    """``(3, rows, cols)`` uint8: the output window of planar pixels ``(3, H, W)`` resampled by ``scale``.

    Two sparse products in float32, the only dtype round trip (uint8 in, uint8 out):
    rows first, the three planes stacked (``kron(eye(3), rows)`` on ``(3 * h, w)``), then
    columns, on the transpose of that product.
    """
    c, h, w = planes.shape
    ly, wy = axis_weights(h, y0, rows, scale, channels=c)
    lx, wx = axis_weights(w, x0, cols, scale)
    region = planes[:, ly : ly + wy.shape[1] // c, lx : lx + wx.shape[1]]
    hr, wr = region.shape[1:]
    step = wy @ region.astype(np.float32).reshape(c * hr, wr)  # (3 * rows, wr)
    out = wx @ np.ascontiguousarray(step.T)  # (cols, 3 * rows)
    out += 0.5
    np.clip(out, 0, 255, out=out)
    return out.T.astype(np.uint8, order="C").reshape(c, rows, cols)


def resample_rgb_chw(rgb: np.ndarray, y0: int, x0: int, rows: int, cols: int, scale: float) -> np.ndarray:
    """``(3, rows, cols)`` uint8 from channels-last ``(H, W, 3)`` pixels (see :func:`resample_planes`)."""
    return resample_planes(np.asarray(rgb).transpose(2, 0, 1), y0, x0, rows, cols, scale)


def nearest_window(instance_map: np.ndarray, y0: int, x0: int, rows: int, cols: int, scale: float) -> np.ndarray:
    """``(rows, cols)`` int32: nearest-neighbour window of an instance map (rows, then columns)."""
    h, w = instance_map.shape
    ny = nearest_indices(h, y0, rows, scale)
    nx = nearest_indices(w, x0, cols, scale)
    band = np.take(instance_map[ny[0] : ny[-1] + 1], ny - ny[0], axis=0)  # whole rows: reads only the band
    return np.take(band, nx, axis=1).astype(np.int32, copy=False)


def resample_window(
    rgb: np.ndarray, instance_map: np.ndarray, y0: int, x0: int, rows: int, cols: int, scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """Output pixels ``[y0, y0+rows) x [x0, x0+cols)`` of an image resampled by ``scale``.

    Parameters
    ----------
    rgb, instance_map
        The native ``(H, W, 3)`` uint8 image (``Store.rgb``: a view of the planar store)
        and ``(H, W)`` int map (memory maps are fine: only the rows and columns the
        window needs are read).
    y0, x0, rows, cols
        The window in the output frame; it must lie inside the resampled image.
    scale
        Native pixels per output pixel.

    Returns
    -------
    rgb, instance_map
        ``(rows, cols, 3)`` uint8 (anti-aliased, bilinear) and ``(rows, cols)`` int32
        (nearest neighbour).
    """
    if rows <= 0 or cols <= 0:
        return np.zeros((max(rows, 0), max(cols, 0), 3), np.uint8), np.zeros((max(rows, 0), max(cols, 0)), np.int32)
    if scale == 1.0:
        return (np.ascontiguousarray(rgb[y0 : y0 + rows, x0 : x0 + cols]),
                np.array(instance_map[y0 : y0 + rows, x0 : x0 + cols], dtype=np.int32))
    image = np.ascontiguousarray(resample_rgb_chw(rgb, y0, x0, rows, cols, scale).transpose(1, 2, 0))
    return image, nearest_window(instance_map, y0, x0, rows, cols, scale)


def resample_image(rgb: np.ndarray, instance_map: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """A whole image and its instance map resampled by ``scale`` (see :func:`resample_window`)."""
    h, w = instance_map.shape
    return resample_window(rgb, instance_map, 0, 0, output_length(h, scale), output_length(w, scale), scale)


# --------------------------------------------------------------------------------------
# Resolution per image
# --------------------------------------------------------------------------------------
def image_scales(ds: NucleusDataset, mpp: float | None, assume_mpp: float | None = None) -> np.ndarray:
    """Native pixels per output pixel for every image of ``ds``'s split.

    Parameters
    ----------
    ds
        The dataset.
    mpp
        Target microns per pixel; ``None`` keeps the native resolution (all ones).
    assume_mpp
        The mpp to use for images that have none (yours to vouch for); without it, the
        card's ``mpp_default`` (a documented default, where a card states one) is used.

    Raises
    ------
    MissingMppError
        When an image has no mpp and neither ``assume_mpp`` nor the card gives one.
    InvalidArgumentError
        For an ``mpp`` that is not a positive number.
    """
    if mpp is None:
        return np.ones(len(ds), np.float64)
    if not (isinstance(mpp, (int, float)) and math.isfinite(mpp) and mpp > 0):
        raise InvalidArgumentError(f"mpp must be a positive number of microns per pixel, got {mpp!r}")
    own = np.asarray(ds.store.column("images", "mpp"), np.float64)[ds.indices]
    missing = ~(np.isfinite(own) & (own > 0))
    if missing.any():
        fallback = assume_mpp
        if fallback is None:
            try:
                fallback = ds.card.extra.get("mpp_default")
            except Exception:  # a store without a packaged card (tests, merged stores)
                fallback = None
        if fallback is None:
            names = np.asarray(ds.store.column("images", "name"))[ds.indices[missing]]
            shown = ", ".join(map(str, names[:5])) + (" ..." if names.size > 5 else "")
            raise MissingMppError(
                f"{ds.name}: {int(missing.sum())} image(s) have no microns-per-pixel value "
                f"({shown}) and the {ds.name} card states no default, so they cannot be "
                f"resampled to mpp={mpp}. Pass assume_mpp=<value> if you know their "
                "resolution, choose a split without them, or leave mpp=None."
            )
        own = np.where(missing, float(fallback), own)
    from nucdata._util.limits import check_scales

    return check_scales(float(mpp) / own, mpp)  # a SizeLimitError past $NUCDATA_MAX_RESAMPLE (issue 21)


def store_scales(store: Any, mpp: float, assume_mpp: float | None = None) -> np.ndarray:
    """Native pixels per output pixel for every image of a store (crop banks cover stores).

    Images without an mpp (and no ``assume_mpp`` or card default) get 1: their crops
    exist in the bank but are never served, since :func:`image_scales` refuses any
    split that holds them.
    """
    from nucdata.catalog import get_card

    own = np.asarray(store.column("images", "mpp"), np.float64)
    fallback = assume_mpp
    if fallback is None:
        try:
            fallback = get_card(store.dataset).extra.get("mpp_default")
        except Exception:  # a store without a packaged card
            fallback = None
    known = np.isfinite(own) & (own > 0)
    if fallback is not None:
        own = np.where(known, own, float(fallback))
        known[:] = True
    return np.where(known, float(mpp) / np.where(known, own, 1.0), 1.0)
