"""Size limits on requests, checked before anything of that size is allocated.

Each limit has a generous default and an environment variable that raises it (``0``:
no limit); a request above it is a :class:`~nucdata.errors.SizeLimitError` that names
the variable. The limits on *inputs* live beside their readers: image pixels in
:mod:`nucdata._util.images` (``NUCDATA_MAX_IMAGE_PIXELS``, also the limit on a CoNSeP
``.mat`` map and on instance maps), extraction in ``nucdata.acquire``
(``NUCDATA_EXTRACT_LIMIT``), pickles in :mod:`nucdata._util.safe_pickle`
(``NUCDATA_PICKLE_MAX_BYTES``, ``NUCDATA_PICKLE_MAX_ITEMS``).

``NUCDATA_MAX_PATCH_SIDE`` (default :data:`MAX_PATCH_SIDE`, 2048)
    The largest patch side of an export (``--size`` of ``pannuke``, ``--win`` of
    ``hovernet-patches``): a PanNuke mask patch of side S under a label set of C classes
    takes ``S * S * (C + 1) * 8`` bytes, 270 MB at 2048 with 7 classes.
``NUCDATA_MAX_RESAMPLE`` (default :data:`MAX_RESAMPLE`, 16)
    The largest resampling factor either way (``--mpp``, ``tiles(mpp=)``,
    ``crops(mpp=)``): an image is enlarged or shrunk at most this many times. A typo such
    as ``--mpp 1e-4`` for a 0.25 µm/px image would ask for 2500 times the pixels per side.
"""

from __future__ import annotations

import math
import os

import numpy as np

from nucdata.errors import InvalidArgumentError, SizeLimitError

__all__ = ["MAX_PATCH_SIDE", "MAX_RESAMPLE", "check_patch_side", "check_scales", "env_limit"]

MAX_PATCH_SIDE = 2048
PATCH_ENV_VAR = "NUCDATA_MAX_PATCH_SIDE"
MAX_RESAMPLE = 16.0
RESAMPLE_ENV_VAR = "NUCDATA_MAX_RESAMPLE"


def env_limit(var: str, default: float) -> float | None:
    """The limit ``$var`` sets (``0``: none, ``None`` returned), else ``default``.

    Raises
    ------
    InvalidArgumentError
        When the variable is set to something that is not a non-negative number.
    """
    raw = os.environ.get(var, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not math.isfinite(value) or value < 0:
        raise InvalidArgumentError(f"${var}={raw!r} is not a non-negative number; set it to a number such as "
                                   f"{default:g} (the default), 0 for no limit, or unset it.")
    return None if value == 0 else value


def check_patch_side(value: int, option: str) -> int:
    """Refuse an export patch side (``--size``, ``--win``) above ``NUCDATA_MAX_PATCH_SIDE``.

    Parameters
    ----------
    value
        The side in pixels.
    option
        How the user gave it (``"--size"``), named in the error.

    Raises
    ------
    SizeLimitError
        Above the limit; the message names the variable that raises it.
    """
    limit = env_limit(PATCH_ENV_VAR, MAX_PATCH_SIDE)
    if limit is not None and value > limit:
        raise SizeLimitError(
            f"{option} {value:,} is above the largest patch side, {int(limit):,} pixels (one patch would "
            f"take {value * value * 8:,} bytes per channel). Use a smaller {option}; if you mean it, "
            f"set {PATCH_ENV_VAR} to a larger side (0: no limit).")
    return value


def check_scales(scales: np.ndarray, mpp: float | None = None) -> np.ndarray:
    """Refuse resampling factors (native pixels per output pixel) beyond ``NUCDATA_MAX_RESAMPLE``.

    Parameters
    ----------
    scales
        One factor per image (below 1 enlarges, above 1 shrinks).
    mpp
        The requested microns per pixel, named in the error.

    Returns
    -------
    numpy.ndarray
        ``scales`` unchanged.

    Raises
    ------
    SizeLimitError
        When an image would be enlarged or shrunk more than the limit (or a factor is not
        a positive finite number).
    """
    scales = np.asarray(scales, np.float64)
    if scales.size == 0:
        return scales
    bad = ~(np.isfinite(scales) & (scales > 0))
    if bad.any():
        raise SizeLimitError(f"mpp={mpp!r} gives resampling factors that are not positive finite numbers "
                             f"({scales[bad][:3].tolist()}); check the images' mpp and the mpp asked for.")
    limit = env_limit(RESAMPLE_ENV_VAR, MAX_RESAMPLE)
    if limit is None:
        return scales
    up, down = 1.0 / float(scales.min()), float(scales.max())
    if up > limit or down > limit:
        factor, how = (up, "enlarged") if up >= down else (down, "shrunk")
        raise SizeLimitError(
            f"mpp={mpp!r} would have images {how} {factor:,.4g} times per side, more than the limit of "
            f"{limit:g} (a typo such as 1e-4 for 0.25?). Ask for an mpp nearer the images' own; if you "
            f"mean it, set {RESAMPLE_ENV_VAR} to a larger factor (0: no limit).")
    return scales
