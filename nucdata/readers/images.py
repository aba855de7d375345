"""Reading and writing RGB images (TIFF with LZW or PackBits, PNG with or without alpha)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import CorruptArchiveError


def read_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as ``(H, W, 3)`` uint8, dropping any alpha channel.

    Pillow decodes both TIFF codecs the MoNuSeg files use (LZW with predictor, PackBits),
    so no extra codec package is needed.

    Raises
    ------
    CorruptArchiveError
        When the file is missing, truncated or not an image.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("RGBA", "LA", "P", "L", "I;16", "CMYK", "YCbCr", "I", "F") or im.mode != "RGB":
                im = im.convert("RGB")
            return np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise CorruptArchiveError(
            f"{path}: cannot be read as an image ({exc}). The file is truncated or not an "
            "image; extract or download it again."
        ) from exc


def read_gray(path: str | Path) -> np.ndarray:
    """Read a single-channel image (a mask) as a 2-D array."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode not in ("L", "1", "I", "I;16", "P"):
                im = im.convert("L")
            array = np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise CorruptArchiveError(
            f"{path}: cannot be read as a mask image ({exc}); extract or download it again."
        ) from exc
    return array if array.ndim == 2 else array[..., 0]
