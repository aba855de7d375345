"""Tissue images: PNG/JPEG/TIFF tiles, and whole slides read by region.

**Tiles** (:func:`read_image`): PNG, JPEG and plain TIFF through nucdata's one decoder
(:func:`nucdata._util.images.read_rgb`: one pixel limit, ``NUCDATA_MAX_IMAGE_PIXELS``,
checked from the header before decoding; alpha dropped, 16-bit scaled).

**Whole slides** (:func:`open_slide`, :class:`Slide`): pyramidal TIFFs (generic tiled
TIFF, OME-TIFF, Aperio SVS and other TIFF-based formats ``tifffile`` parses) are read
with ``tifffile`` **by region**: :meth:`Slide.read_region` decodes only the tiles (or
strips) that overlap the window, at level 0 or any pyramid level, never the whole slide;
the window's pixels are checked against the pixel limit first. Formats tifffile does not
read (MIRAX, Hamamatsu VMS, Philips iSyntax...) go through OpenSlide when the optional
extra ``nucdata[openslide]`` is installed, and are refused with a typed error naming the
extra otherwise. JPEG- or JPEG 2000-compressed tiles need the ``imagecodecs`` package
(``pip install imagecodecs``); the error says so.

**µm/px from the file** (:attr:`Slide.mpp`, :func:`image_mpp`), first that applies:

1. Aperio ``ImageDescription``: ``|MPP = 0.2500|``;
2. OME-XML ``PhysicalSizeX`` of the first image (its ``PhysicalSizeXUnit``: µm, nm, mm; µm
   when absent);
3. TIFF ``XResolution`` with ``ResolutionUnit`` centimetre or inch (pixels per unit);
   PNG's ``pHYs`` (pixels per metre).

A value outside 0.01-20 µm/px (a scanner's range) is not a pixel size (72 dpi is a screen
default, 353 µm/px) and is ignored: the file then has no µm/px, and a caller asks for one
(``--mpp``).

Frames: a region's pixel ``(r, c)`` is level-0 pixel ``(y + r, x + c)`` (level ``k``:
``(y + r * d, x + c * d)`` with ``d`` the level's downsample); coordinates of nuclei
found in it move by the region's ``(x, y)`` (:attr:`~nucdata.formats.Nuclei.offset`).
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from nucdata._util.images import check_pixels, read_rgb
from nucdata.errors import (
    CorruptArchiveError,
    InvalidArgumentError,
    MissingDependencyError,
    NucdataError,
    UnsupportedFormatError,
)
from nucdata.formats._limits import existing_file

__all__ = ["Slide", "image_mpp", "open_slide", "read_image"]

MPP_RANGE = (0.01, 20.0)
_APERIO_MPP = re.compile(r"\|\s*MPP\s*=\s*([0-9.eE+-]+)")
_OME_SIZE = re.compile(r"<Pixels\b[^>]*?\bPhysicalSizeX=\"([0-9.eE+-]+)\"(?:[^>]*?\bPhysicalSizeXUnit=\"([^\"]*)\")?")
_OME_UNIT = re.compile(r"<Pixels\b[^>]*?\bPhysicalSizeXUnit=\"([^\"]*)\"")
_UNITS = {"µm": 1.0, "um": 1.0, "\u03bcm": 1.0, "micron": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}
TIFF_SUFFIXES = (".tif", ".tiff", ".svs", ".ome.tif", ".ome.tiff", ".btf", ".tf8", ".ndpi", ".scn", ".bif")


def _plausible(mpp: float | None) -> float | None:
    if mpp is None or not math.isfinite(mpp):
        return None
    return float(mpp) if MPP_RANGE[0] <= mpp <= MPP_RANGE[1] else None


def _mpp_from_description(text: str) -> float | None:
    m = _APERIO_MPP.search(text)
    if m:
        try:
            return _plausible(float(m.group(1)))
        except ValueError:
            return None
    if "<OME" in text or "<Pixels" in text:
        m = _OME_SIZE.search(text)
        if m:
            unit_m = _OME_UNIT.search(text)
            unit = (unit_m.group(1) if unit_m else "µm").strip()
            try:
                return _plausible(float(m.group(1)) * _UNITS.get(unit, float("nan")))
            except ValueError:
                return None
    return None


def _mpp_from_tags(page: Any) -> float | None:
    try:
        x_res = page.tags.get("XResolution")
        unit = page.tags.get("ResolutionUnit")
        if x_res is None:
            return None
        num, den = x_res.value if isinstance(x_res.value, tuple) else (x_res.value, 1)
        per_unit = float(num) / float(den) if den else 0.0
        unit_value = int(unit.value) if unit is not None else 2  # TIFF's default is the inch
    except (TypeError, ValueError, ZeroDivisionError, AttributeError):
        return None
    if per_unit <= 0:
        return None
    if unit_value == 3:
        return _plausible(1e4 / per_unit)
    if unit_value == 2:
        return _plausible(25400.0 / per_unit)
    return None


def image_mpp(path: str | os.PathLike[str]) -> float | None:
    """µm/px recorded in an image file (module docstring), or ``None``."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith(TIFF_SUFFIXES):
        try:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                page = tif.pages.first
                return _mpp_from_description(str(page.description or "")) or _mpp_from_tags(page)
        except Exception:  # noqa: BLE001 - an unreadable file has no readable µm/px; reading it says why
            return None
    if name.endswith(".png"):
        from PIL import Image

        try:
            with Image.open(path) as im:
                dpi = im.info.get("dpi")
                if dpi and dpi[0]:
                    return _plausible(25400.0 / float(dpi[0]))
        except Exception:  # noqa: BLE001 - as above
            return None
    return None


def read_image(path: str | os.PathLike[str]) -> tuple[np.ndarray, float | None]:
    """An image tile as ``(H, W, 3)`` uint8 and its µm/px from the file (``None`` when absent).

    Raises
    ------
    CorruptArchiveError
        Missing, unreadable, or above the pixel limit.
    """
    path = existing_file(path, "image")
    return read_rgb(path), image_mpp(path)


class Slide:
    """A whole-slide image opened for reading by region (see :func:`open_slide`).

    Attributes
    ----------
    path
        The file.
    width, height
        Level-0 size in pixels.
    mpp
        µm/px of level 0 from the file, or ``None``.
    levels
        ``(width, height)`` of every level, level 0 first.
    downsamples
        Level-0 pixels per pixel of every level.
    backend
        ``"tifffile"`` or ``"openslide"``.
    """

    def __init__(self, path: Path, backend: str, handle: Any, levels: list[tuple[int, int]], mpp: float | None,
                 pages: list[Any] | None = None, samples: int = 3, dtype: Any = np.uint8) -> None:
        self.path = path
        self.backend = backend
        self._handle = handle
        self._pages = pages or []
        self.levels = levels
        self.width, self.height = levels[0]
        self.downsamples = [self.width / w for (w, _h) in levels]
        self.mpp = mpp
        self.samples = samples
        self.dtype = np.dtype(dtype)

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Close the file."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __repr__(self) -> str:
        return (f"Slide({self.path.name!r}, {self.width}x{self.height}, mpp={self.mpp}, "
                f"levels={len(self.levels)}, backend={self.backend!r})")

    def read_region(self, x: int, y: int, width: int, height: int, level: int = 0) -> np.ndarray:
        """The pixels of a window, decoding only the tiles it overlaps.

        Parameters
        ----------
        x, y
            The window's top-left corner in **level-0** pixels.
        width, height
            The window's size in pixels **of the level read**.
        level
            The pyramid level (0: full resolution).

        Returns
        -------
        numpy.ndarray
            ``(height, width, samples)`` (``(height, width)`` for one sample) in the
            file's dtype; parts of the window outside the slide are 0.

        Raises
        ------
        CorruptArchiveError
            A window above the pixel limit, or a damaged tile.
        UnsupportedFormatError
            A tile codec without its package (``imagecodecs``).
        """
        if self._handle is None:
            raise InvalidArgumentError(f"{self.path}: the slide is closed")
        if not 0 <= level < len(self.levels):
            raise InvalidArgumentError(f"{self.path}: level {level} does not exist (levels 0..{len(self.levels) - 1})")
        width, height = int(width), int(height)
        if width <= 0 or height <= 0:
            raise InvalidArgumentError(f"{self.path}: a region of {width}x{height} pixels is empty")
        check_pixels(self.path, width, height)
        if self.backend == "openslide":
            return self._read_openslide(x, y, width, height, level)
        return self._read_tiff(int(x), int(y), width, height, level)

    def read_rgb(self, x: int, y: int, width: int, height: int, level: int = 0) -> np.ndarray:
        """:meth:`read_region` as ``(height, width, 3)`` uint8 (grey repeated, alpha dropped)."""
        region = self.read_region(x, y, width, height, level)
        if region.ndim == 2:
            region = region[..., None]
        if region.shape[2] == 1:
            region = np.repeat(region, 3, axis=2)
        region = region[..., :3]
        if region.dtype != np.uint8:
            top = 65535.0 if region.dtype.itemsize == 2 else float(max(1, region.max(initial=0)))
            region = np.clip(np.rint(region.astype(np.float64) / top * 255), 0, 255).astype(np.uint8)
        return region

    # -- tifffile ----------------------------------------------------------------------
    def _read_tiff(self, x: int, y: int, width: int, height: int, level: int) -> np.ndarray:
        page = self._pages[level]
        d = self.downsamples[level]
        lx, ly = int(math.floor(x / d)), int(math.floor(y / d))
        lw, lh = self.levels[level]
        out = np.zeros((height, width, self.samples), self.dtype)
        if page.is_tiled:
            th, tw = int(page.tilelength), int(page.tilewidth)
        else:
            th, tw = int(page.rowsperstrip or lh), lw
        nx = math.ceil(lw / tw)
        y0, y1 = max(0, ly), min(lh, ly + height)
        x0, x1 = max(0, lx), min(lw, lx + width)
        if y1 <= y0 or x1 <= x0:
            return out[..., 0] if self.samples == 1 else out
        fh = self._handle.filehandle
        decode = page.decode
        extra: dict[str, Any] = {}
        if page.compression in (6, 7, 34892, 33007):
            extra = {"jpegtables": page.jpegtables, "jpegheader": getattr(page, "jpegheader", None)}
        for ty in range(y0 // th, (y1 - 1) // th + 1):
            for tx in range(x0 // tw, (x1 - 1) // tw + 1) if page.is_tiled else [0]:
                index = ty * nx + tx if page.is_tiled else ty
                offset, count = int(page.dataoffsets[index]), int(page.databytecounts[index])
                if count > 4 * th * tw * max(1, self.samples) * self.dtype.itemsize + 65536:
                    raise CorruptArchiveError(f"{self.path}: tile {index} claims {count:,} bytes, more than a tile "
                                              "of its size can hold; the file is damaged.")
                data = None
                if count:
                    fh.seek(offset)
                    data = fh.read(count)
                try:
                    segment, pos, _shape = decode(data, index, **extra)
                except (ValueError, NotImplementedError, KeyError) as exc:
                    text = str(exc)
                    if "imagecodecs" in text or "JPEG" in text.upper() or "not supported" in text:
                        raise UnsupportedFormatError(
                            f"{self.path}: its tiles are compressed with a codec that needs the imagecodecs "
                            f"package ({text}); pip install \"nucdata[codecs]\" (imagecodecs), or install nucdata[openslide].") from None
                    raise CorruptArchiveError(f"{self.path}: tile {index} cannot be decoded ({text}).") from None
                except Exception as exc:  # noqa: BLE001 - tifffile raises many types for damaged data
                    raise CorruptArchiveError(f"{self.path}: tile {index} cannot be decoded "
                                              f"({type(exc).__name__}: {exc}).") from None
                if segment is None:
                    continue
                seg = np.asarray(segment).reshape(segment.shape[-3], segment.shape[-2], -1)
                sy, sx = int(pos[-3]), int(pos[-2])
                # overlap of the segment [sy, sy+h) x [sx, sx+w) with the window
                a0, a1 = max(sy, y0), min(sy + seg.shape[0], y1, lh)
                b0, b1 = max(sx, x0), min(sx + seg.shape[1], x1, lw)
                if a1 > a0 and b1 > b0:
                    out[a0 - ly:a1 - ly, b0 - lx:b1 - lx] = seg[a0 - sy:a1 - sy, b0 - sx:b1 - sx, :self.samples]
        return out[..., 0] if self.samples == 1 else out

    # -- openslide ---------------------------------------------------------------------
    def _read_openslide(self, x: int, y: int, width: int, height: int, level: int) -> np.ndarray:
        image = self._handle.read_region((int(x), int(y)), level, (width, height))
        return np.asarray(image.convert("RGB"), np.uint8)


def _open_tiff(path: Path) -> Slide:
    import tifffile

    try:
        tif = tifffile.TiffFile(path)
    except Exception as exc:  # noqa: BLE001 - not a TIFF, or damaged
        raise CorruptArchiveError(f"{path}: not a readable TIFF ({type(exc).__name__}: {exc}).") from None
    try:
        series = tif.series[0]
        levels = list(series.levels) or [series]
        pages, sizes = [], []
        for lv in levels:
            page = lv.keyframe if hasattr(lv, "keyframe") else lv.pages[0]
            if page.planarconfig == 2 and page.samplesperpixel > 1:
                raise UnsupportedFormatError(f"{path}: samples stored as separate planes (PlanarConfiguration 2); "
                                             "convert the slide to contiguous RGB (e.g. with vips tiffsave).")
            if page.imagedepth > 1:
                raise UnsupportedFormatError(f"{path}: a volumetric TIFF page; nucdata reads 2-D slides.")
            pages.append(page)
            sizes.append((int(page.imagewidth), int(page.imagelength)))
        if sizes[0][0] <= 0 or sizes[0][1] <= 0:
            raise CorruptArchiveError(f"{path}: the slide has no pixels.")
        first = pages[0]
        description = str(tif.pages.first.description or "")
        mpp = _mpp_from_description(description) or _mpp_from_tags(first)
        return Slide(path, "tifffile", tif, sizes, mpp, pages, int(first.samplesperpixel), first.dtype)
    except NucdataError:
        tif.close()
        raise
    except Exception as exc:  # noqa: BLE001
        tif.close()
        raise CorruptArchiveError(f"{path}: its TIFF structure cannot be read ({type(exc).__name__}: {exc}).") from None


def _open_openslide(path: Path) -> Slide:
    try:
        import openslide
    except ImportError:
        raise MissingDependencyError(
            '"nucdata[openslide]"', f"{path.name}: a slide format tifffile does not read (or one it could not "
            "open)") from None
    try:
        handle = openslide.OpenSlide(str(path))
    except Exception as exc:  # noqa: BLE001 - openslide's own errors
        raise CorruptArchiveError(f"{path}: OpenSlide cannot open it ({type(exc).__name__}: {exc}).") from None
    props = handle.properties
    mpp = None
    try:
        mpp = _plausible(float(props.get("openslide.mpp-x", "nan")))
    except (TypeError, ValueError):
        mpp = None
    levels = [(int(w), int(h)) for (w, h) in handle.level_dimensions]
    return Slide(path, "openslide", handle, levels, mpp)


def open_slide(path: str | os.PathLike[str], *, backend: str | None = None) -> Slide:
    """Open a whole slide (or any large TIFF, an instance-map TIFF included) for reading by region.

    Parameters
    ----------
    path
        The slide.
    backend
        ``"tifffile"``, ``"openslide"`` or ``None``: tifffile for TIFF-based files, OpenSlide
        for others (and for a TIFF-like file tifffile cannot parse).

    Raises
    ------
    MissingDependencyError
        A format that needs OpenSlide without ``nucdata[openslide]``.
    CorruptArchiveError
        A damaged file.
    """
    path = existing_file(path, "slide")
    if backend not in (None, "tifffile", "openslide"):
        raise InvalidArgumentError(f"backend={backend!r}: choose 'tifffile' or 'openslide'")
    if backend == "openslide":
        return _open_openslide(path)
    if backend == "tifffile" or path.name.lower().endswith(TIFF_SUFFIXES):
        try:
            return _open_tiff(path)
        except CorruptArchiveError:
            if backend == "tifffile":
                raise
            try:
                import openslide  # noqa: F401
            except ImportError:
                raise
            return _open_openslide(path)
    return _open_openslide(path)
