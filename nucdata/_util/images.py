"""Reading and writing RGB images (TIFF with LZW or PackBits, PNG with or without alpha)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from nucdata.errors import CorruptArchiveError, InvalidArgumentError

#: Images above this many pixels are refused (decompression bombs): Pillow's own limit
#: (about 89 million). Override with the environment variable ``NUCDATA_MAX_IMAGE_PIXELS``
#: (``0``: no limit). The datasets' largest images (MoNuSAC) are far below it.
MAX_IMAGE_PIXELS = int(Image.MAX_IMAGE_PIXELS or 89_478_485)
PIXELS_ENV_VAR = "NUCDATA_MAX_IMAGE_PIXELS"


def pixel_limit() -> int | None:
    """The most pixels an image (or a map of one) may have: ``$NUCDATA_MAX_IMAGE_PIXELS``, else
    :data:`MAX_IMAGE_PIXELS`; ``None`` when the variable is ``0`` (no limit).

    The one limit of every decoder path (Pillow, the tifffile fallback of MoNuSAC's
    ``.svs``, CoNSeP's ``.mat`` maps), checked from the file's header before its pixels
    are decoded.

    Raises
    ------
    InvalidArgumentError
        When the variable is not a number.
    """
    env = os.environ.get(PIXELS_ENV_VAR, "").strip()
    if not env:
        return MAX_IMAGE_PIXELS
    try:
        value = int(float(env))
    except (ValueError, OverflowError):
        raise InvalidArgumentError(f"${PIXELS_ENV_VAR}={env!r} is not a number of pixels (0: no limit).") from None
    return None if value <= 0 else value


def check_pixels(path: str | os.PathLike[str], width: int, height: int) -> None:
    """Refuse an image of ``width x height`` pixels above :func:`pixel_limit`, before decoding it.

    Raises
    ------
    CorruptArchiveError
        Naming the file, its size, the limit and the variable that raises it.
    """
    limit = pixel_limit()
    if width < 0 or height < 0:
        raise CorruptArchiveError(f"{path}: the header gives a negative size ({width}x{height}); the file is "
                                  "damaged. Extract or download it again.")
    if limit is not None and int(width) * int(height) > limit:
        raise CorruptArchiveError(
            f"{path}: {width}x{height} pixels is above the limit of {limit:,} "
            "(a decompression bomb, or not a tile of a nucleus dataset). If the image is "
            f"genuine, set {PIXELS_ENV_VAR} to a larger number of pixels (0: no limit)."
        )


@contextlib.contextmanager
def _open(path: Path) -> Iterator[Image.Image]:
    """``Image.open`` with nucdata's pixel limit instead of Pillow's global one."""
    limit = pixel_limit()
    pillow = Image.MAX_IMAGE_PIXELS
    if pillow is not None and (limit is None or limit > pillow):
        Image.MAX_IMAGE_PIXELS = limit  # only ever raised, on the user's explicit request
    with Image.open(path) as im:
        check_pixels(path, im.size[0], im.size[1])
        yield im


def _too_large(path: Path, exc: Exception) -> CorruptArchiveError:
    return CorruptArchiveError(
        f"{path}: refused: {exc} If the image is genuine, set {PIXELS_ENV_VAR} to a larger "
        "number of pixels (0: no limit)."
    )


def _grey_to_uint8(array: np.ndarray, mode: str) -> np.ndarray:
    """Scale a 16-bit, 32-bit or float greyscale image to uint8 (not clip it)."""
    if mode == "F":
        values = np.nan_to_num(array.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        top = 1.0 if values.max(initial=0.0) <= 1.0 else 255.0
        return np.clip(np.rint(values / top * 255.0), 0, 255).astype(np.uint8)
    values = array.astype(np.int64)
    if mode.startswith("I;16") or values.max(initial=0) > 255:
        # the full 16-bit range maps onto 0..255 (65535 -> 255); wider values by their maximum
        top = 65535 if values.max(initial=0) <= 65535 else int(values.max())
        values = np.clip(values, 0, None)
        return ((values * 255 + top // 2) // top).astype(np.uint8)
    return np.clip(values, 0, 255).astype(np.uint8)


def read_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as ``(H, W, 3)`` uint8, dropping any alpha channel.

    Pillow decodes both TIFF codecs the MoNuSeg files use (LZW with predictor, PackBits),
    so no extra codec package is needed. 16-bit, 32-bit and float greyscale images are
    scaled to 0..255 (16-bit: ``round(v * 255 / 65535)``) and repeated into three
    channels.

    Raises
    ------
    CorruptArchiveError
        When the file is missing, truncated, not an image, or larger than
        :data:`MAX_IMAGE_PIXELS`.
    """
    path = Path(path)
    try:
        with _open(path) as im:
            im.load()
            if im.mode.startswith("I;16") or im.mode in ("I", "F"):
                grey = _grey_to_uint8(np.asarray(im), im.mode)
                return np.repeat(grey[:, :, None], 3, axis=2)
            if im.mode != "RGB":
                im = im.convert("RGB")
            return np.asarray(im, dtype=np.uint8)
    except Image.DecompressionBombError as exc:
        raise _too_large(path, exc) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise CorruptArchiveError(
            f"{path}: cannot be read as an image ({exc}). The file is truncated or not an "
            "image; extract or download it again."
        ) from exc


def read_gray(path: str | Path) -> np.ndarray:
    """Read a single-channel image (a mask) as a 2-D array."""
    path = Path(path)
    try:
        with _open(path) as im:
            im.load()
            if im.mode not in ("L", "1", "I", "I;16", "P"):
                im = im.convert("L")
            array = np.asarray(im)
    except Image.DecompressionBombError as exc:
        raise _too_large(path, exc) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise CorruptArchiveError(
            f"{path}: cannot be read as a mask image ({exc}); extract or download it again."
        ) from exc
    return array if array.ndim == 2 else array[..., 0]
