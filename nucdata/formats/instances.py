"""Instance label images: what StarDist, Cellpose, InstanSeg and most segmenters save.

An instance label image is a single-channel integer image of the same size as its tissue
image: 0 is background and every other value one nucleus (its id; ids need not be
consecutive). Read from:

* **PNG** (8 or 16 bit; Cellpose's ``<image>_cp_masks.png``) and **TIFF** (8, 16 or 32 bit
  integers, read with ``tifffile``; StarDist's and Cellpose's ``<image>_masks.tif``);
* **``.npy``** holding one 2-D integer array (``np.save(path, labels)``), read without
  pickle; a ``.npy`` of another kind is refused;
* **Cellpose ``<image>_seg.npy``**: a *pickled dict* (``masks``, ``outlines``, ``flows``,
  ...). It is read only through nucdata's allow-list unpickler
  (:mod:`nucdata._util.safe_pickle`), which builds plain data and numeric arrays and
  nothing else; Cellpose saves the dict inside an object array, which that unpickler
  refuses, so such a file is refused with a typed error that says how to export the masks
  as PNG or TIFF instead. Never with plain ``pickle``.

The size is checked against the image pixel limit (``NUCDATA_MAX_IMAGE_PIXELS``) from the
file's header before its pixels are decoded, and the number of ids against
``NUCDATA_MAX_NUCLEI``. :func:`nuclei_from_instances` turns a map into a
:class:`~nucdata.formats.Nuclei` (ids the map's values; centroid the mean of each
nucleus's pixel coordinates, pixel-centre frame; area its pixel count; box exclusive).
:func:`write_instances` writes a map (PNG up to 65,535 ids, else TIFF; ``.npy`` when asked).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from nucdata._util import safe_pickle
from nucdata._util.atomic import atomic_path
from nucdata._util.images import check_pixels
from nucdata._util.instances import count_ids
from nucdata._util.npy import npy_header
from nucdata.errors import (
    CorruptArchiveError,
    InvalidArgumentError,
    MalformedAnnotationError,
    NucdataError,
    UnsupportedFormatError,
)
from nucdata.formats._limits import check_nuclei, existing_file
from nucdata.formats._record import Nuclei

__all__ = ["INSTANCE_SUFFIXES", "nuclei_from_instances", "read_instances", "write_instances"]

#: File name endings of instance images, stripped to find the image's stem (longest first)
INSTANCE_SUFFIXES = ("_cp_masks", "_seg", "_masks", "_mask", "_labels", "_label", "_instances", "_inst")
_EXPORT_FIX = ("export the masks as an image instead: in Cellpose's GUI File > Save masks as PNG/tif, on its "
               "command line --save_png or --save_tif, or in Python cellpose.io.save_masks(...) / "
               "tifffile.imwrite('<image>_masks.tif', masks)")


def _check_map(array: np.ndarray, path: Path) -> np.ndarray:
    if array.ndim == 3 and array.shape[2] in (1, 3, 4) and array.shape[0] > 4:
        if array.shape[2] > 1 and not (array[..., 1:3] == array[..., :1]).all():
            raise MalformedAnnotationError(
                f"{path}: a colour image, not an instance label image (one channel, 0 background, one integer "
                "per nucleus); save the segmenter's label output, not its overlay.")
        array = array[..., 0]
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise MalformedAnnotationError(f"{path}: an instance label image has two dimensions, this one has shape "
                                       f"{array.shape}; save one 2-D label image per tissue image.")
    if array.dtype.kind == "f":
        if not np.isfinite(array).all() or (array != np.round(array)).any():
            raise MalformedAnnotationError(f"{path}: float values that are not whole numbers; an instance map holds "
                                           "integer ids.")
        array = array.astype(np.int64)
    if array.dtype.kind not in "iub":
        raise MalformedAnnotationError(f"{path}: pixels of type {array.dtype}, not integers; save the label image "
                                       "as integers.")
    if array.dtype.kind == "i" and (array < 0).any():
        raise MalformedAnnotationError(f"{path}: negative ids; an instance map holds 0 (background) and positive ids.")
    if array.dtype == np.uint64 and array.max(initial=0) > np.iinfo(np.int64).max:
        raise MalformedAnnotationError(f"{path}: ids beyond 2**63; relabel the map (skimage.segmentation."
                                       "relabel_sequential).")
    array = array.astype(np.int64, copy=False)
    check_nuclei(count_ids(array), path, "instance ids")
    return array


def _read_npy(path: Path) -> np.ndarray:
    try:
        shape, dtype, offset = npy_header(path)
    except (OSError, ValueError) as exc:
        raise CorruptArchiveError(f"{path}: not a readable .npy file ({exc}); save it again.") from None
    if dtype.hasobject:
        return _read_seg_npy(path)
    if len(shape) not in (2, 3) or dtype.kind not in "iubf":
        raise MalformedAnnotationError(f"{path}: holds a {dtype} array of shape {shape}, not a 2-D integer label "
                                       "image.")
    check_pixels(path, int(shape[-1] if len(shape) == 2 else shape[1]), int(shape[0]))
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise CorruptArchiveError(f"{path}: truncated or damaged .npy ({exc}); save it again.") from None


def _read_seg_npy(path: Path) -> np.ndarray:
    """Cellpose's ``_seg.npy``: the pickle after the .npy header, through the safe unpickler only."""
    try:
        _, _, offset = npy_header(path)
        with open(path, "rb") as fh:
            fh.seek(offset)
            payload = fh.read()
        value = safe_pickle.loads(payload, source=str(path))  # safe: nucdata's allow-list unpickler, plain data under size budgets
    except NucdataError as exc:
        raise UnsupportedFormatError(
            f"{path}: a Cellpose _seg.npy (a pickled dict of Python objects). nucdata unpickles only plain data "
            f"through its allow-list unpickler, which refused this file ({str(exc).splitlines()[0][:160]}). "
            f"Fix: {_EXPORT_FIX}.") from None
    except (OSError, ValueError) as exc:
        raise CorruptArchiveError(f"{path}: not a readable .npy file ({exc}).") from None
    masks = value.get("masks") if isinstance(value, dict) else None
    if not isinstance(masks, np.ndarray):
        raise UnsupportedFormatError(f"{path}: a pickled .npy without a 'masks' array; {_EXPORT_FIX}.")
    check_pixels(path, int(masks.shape[-1]), int(masks.shape[0]))
    return masks


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            shape = page.shape
            if len(shape) < 2:
                raise MalformedAnnotationError(f"{path}: a TIFF without a 2-D image.")
            check_pixels(path, int(shape[1]), int(shape[0]))
            return page.asarray()
    except NucdataError:
        raise
    except Exception as exc:  # noqa: BLE001 - tifffile raises many types for damaged files
        raise CorruptArchiveError(f"{path}: cannot be read as a TIFF label image ({type(exc).__name__}: {exc}); "
                                  "save it again.") from None


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    from nucdata._util.images import read_gray

    try:
        with Image.open(path) as im:
            check_pixels(path, im.size[0], im.size[1])
            colour = im.mode in ("RGB", "RGBA", "LA")
            if colour:
                im.load()
                rgb = np.asarray(im.convert("RGB"))
    except NucdataError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise CorruptArchiveError(f"{path}: cannot be read as an image ({exc}); save it again.") from None
    if colour:
        return rgb  # checked by _check_map: one channel repeated is accepted, colours refused
    return np.asarray(read_gray(path))


def read_instances(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an instance label image (PNG, TIFF, ``.npy``, Cellpose ``_seg.npy``) as an int64 map.

    Raises
    ------
    MalformedAnnotationError
        Not a single-channel integer label image.
    UnsupportedFormatError
        A Cellpose ``_seg.npy`` the allow-list unpickler refuses (the message says how to
        export PNG/TIFF masks).
    CorruptArchiveError
        Unreadable, or larger than the pixel limit.
    """
    path = existing_file(path, "instance label image")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        array = _read_npy(path)
    elif suffix in (".tif", ".tiff"):
        array = _read_tiff(path)
    else:
        array = _read_png(path)
    return _check_map(np.asarray(array), path)


def nuclei_from_instances(instance_map: np.ndarray, image: str, *, mpp: float | None = None,
                          labels: dict[int, int] | None = None) -> Nuclei:
    """The nuclei of an instance map: one per id (module docstring), in increasing id order.

    Parameters
    ----------
    instance_map
        (H, W) integer map, 0 background.
    image
        The image's name.
    mpp
        µm/px, when known.
    labels
        Optional id -> class code.
    """
    inst = np.asarray(instance_map)
    if inst.ndim != 2:
        raise InvalidArgumentError(f"an instance map is 2-D, got shape {inst.shape}")
    flat = inst.ravel()
    pos = np.flatnonzero(flat > 0)
    ids, inverse = np.unique(flat[pos], return_inverse=True)
    n = ids.size
    rows, cols = np.divmod(pos, inst.shape[1])
    area = np.bincount(inverse, minlength=n).astype(np.float64)
    cx = np.bincount(inverse, weights=cols, minlength=n) / np.maximum(area, 1)
    cy = np.bincount(inverse, weights=rows, minlength=n) / np.maximum(area, 1)
    bboxes = np.zeros((n, 4), np.int64)
    if n:
        for col, values, fn, init in ((0, cols, np.minimum, np.iinfo(np.int64).max),
                                      (1, rows, np.minimum, np.iinfo(np.int64).max),
                                      (2, cols + 1, np.maximum, -1), (3, rows + 1, np.maximum, -1)):
            acc = np.full(n, init, np.int64)
            fn.at(acc, inverse, values)
            bboxes[:, col] = acc
    codes = None
    if labels is not None:
        codes = np.array([int(labels.get(int(i), -1)) for i in ids.tolist()], np.int64)
    return Nuclei(image=image, ids=ids.astype(np.int64), centroids=np.stack([cx, cy], axis=1),
                  instance_map=inst, labels=codes, areas=area, bboxes=bboxes, mpp=mpp, shape=inst.shape)


def write_instances(path: str | os.PathLike[str], instance_map: np.ndarray) -> Path:
    """Write an instance map, atomically: ``.png`` (up to 65,535), ``.tif``/``.tiff`` (int32) or ``.npy``."""
    path = Path(path)
    inst = np.asarray(instance_map)
    if inst.ndim != 2 or inst.dtype.kind not in "iu" or (inst.size and inst.min() < 0):
        raise InvalidArgumentError(f"an instance map is a 2-D array of non-negative integers, got {inst.shape} "
                                   f"{inst.dtype}")
    suffix = path.suffix.lower()
    with atomic_path(path) as tmp:
        if suffix == ".png":
            from PIL import Image

            if inst.max(initial=0) > 65535:
                raise InvalidArgumentError(f"{path}: ids above 65,535 do not fit a 16-bit PNG; write a .tif")
            Image.fromarray(inst.astype(np.uint16)).save(tmp, format="PNG")
        elif suffix in (".tif", ".tiff"):
            import tifffile

            tifffile.imwrite(tmp, inst.astype(np.int32), photometric="minisblack", metadata=None)
        elif suffix == ".npy":
            with open(tmp, "wb") as fh:
                np.save(fh, inst.astype(np.int32), allow_pickle=False)
        else:
            raise InvalidArgumentError(f"{path}: write an instance map as .png, .tif or .npy")
    return path


def instance_stem(path: str | os.PathLike[str]) -> str:
    """The image stem an instance file belongs to (``a_cp_masks.png`` -> ``a``; ``a_seg.npy`` -> ``a``)."""
    stem = Path(path).name
    for ext in (".ome.tiff", ".ome.tif", ".tiff", ".tif", ".png", ".npy"):
        if stem.lower().endswith(ext):
            stem = stem[: -len(ext)]
            break
    for suffix in INSTANCE_SUFFIXES:
        if stem.endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    return stem
