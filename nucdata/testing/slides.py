"""Generated whole slides: pyramidal tiled TIFFs written tile by tile, with their ground truth.

:func:`write_pyramidal_tiff` writes any RGB source (an array, a painter of regions, or an
iterator of tiles) as a tiled, pyramidal TIFF through ``tifffile``, one tile at a time:
level 0 is written from the source, each lower level from 2x2 block means of the level
above, whose half-size tiles wait in a temporary file of fixed-size records (never in
memory). So a slide of any size is written with a few tiles in memory.

:func:`generate_slide` paints a slide of the demo world (:mod:`nucdata.testing.world`:
its latent cell types, their appearances, a dataset's stain and blur; the ellipses,
overlap rule and pixel rule of :mod:`nucdata.testing._draw`) at a realistic nucleus
density (``density`` nuclei per mm², 3,000 by default: thousands per mm², as in
tissue), and returns the ground truth as a :class:`SlideTruth`: every nucleus's id,
centroid, area, bounding box, outline, latent type and native label, measured from the
pixels it was given. It can also write the instance map as a tiled ``int32`` TIFF and
the nuclei as a QuPath GeoJSON.

Three ways of recording µm/px, as scanners write them (``metadata=``):

``"tags"``
    TIFF ``XResolution``/``YResolution`` in pixels per centimetre (``ResolutionUnit``
    3) on every level; lower levels as SubIFDs of the first page (the OME/tifffile
    pyramid layout).
``"ome"``
    OME-XML in the first page's ``ImageDescription`` (``PhysicalSizeX``/``Y`` in µm),
    lower levels as SubIFDs, and the resolution tags as well.
``"aperio"``
    Aperio SVS's layout: page 0 the full resolution with an ``ImageDescription`` that
    starts ``Aperio Image Library`` and holds ``|MPP = <µm/px>``, page 1 a strip-based
    thumbnail, pages 2... the lower levels (tiled, not marked reduced), no resolution
    tags.

Frames: pixel ``(row i, column j)`` has its centre at ``(x=j, y=i)`` in the pixel-centre
frame of the store and of :class:`SlideTruth`; outlines are stored in that frame too
(:func:`nucdata.testing.ellipse_polygon` draws in the pixel-corner frame; its vertices
minus 0.5).
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from nucdata._util.atomic import atomic_path
from nucdata.errors import InvalidArgumentError
from nucdata.testing._draw import (
    BACKGROUND,
    DEFAULT_APPEARANCE,
    draw_filled,
    ellipse_polygon,
    place_nuclei,
)
from nucdata.testing.world import World

__all__ = ["SlideTruth", "generate_slide", "write_pyramidal_tiff"]

#: The styles of µm/px metadata :func:`write_pyramidal_tiff` writes.
METADATA_STYLES = ("tags", "ome", "aperio")
#: Vertices of each nucleus's outline.
VERTICES = 16

Painter = Callable[[int, int, int, int], np.ndarray]


# -- the pyramid writer ----------------------------------------------------------------
class _Records:
    """Fixed-size records in an anonymous temporary file: tiles waiting for the next level."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype, folder: Path) -> None:
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self.size = int(np.prod(self.shape)) * self.dtype.itemsize
        self.fh = tempfile.TemporaryFile(dir=folder)  # noqa: SIM115  closed by close()

    def put(self, index: int, array: np.ndarray) -> None:
        self.fh.seek(index * self.size)
        self.fh.write(np.ascontiguousarray(array, self.dtype).tobytes())

    def get(self, index: int) -> np.ndarray:
        self.fh.seek(index * self.size)
        data = self.fh.read(self.size)
        if len(data) < self.size:  # never written: an empty record
            return np.zeros(self.shape, self.dtype)
        return np.frombuffer(data, self.dtype).reshape(self.shape).copy()

    def close(self) -> None:
        self.fh.close()


def _half(tile: np.ndarray) -> np.ndarray:
    """2x2 block mean of a (T, T, C) uint8 tile, rounded: (T/2, T/2, C)."""
    t = tile.astype(np.uint16)
    s = t[0::2, 0::2] + t[1::2, 0::2] + t[0::2, 1::2] + t[1::2, 1::2]
    return ((s + 2) // 4).astype(np.uint8)


def _level_shapes(height: int, width: int, levels: int) -> list[tuple[int, int]]:
    shapes = [(height, width)]
    while len(shapes) < levels and min(shapes[-1]) >= 2:
        h, w = shapes[-1]
        shapes.append((h // 2, w // 2))
    return shapes


def _base_tiles(image: np.ndarray | Painter | Iterable[np.ndarray], height: int, width: int,
                tile: int) -> Iterator[np.ndarray]:
    """Level-0 tiles in row-major order, each (tile, tile, 3) uint8, padded with zeros."""
    ny, nx = math.ceil(height / tile), math.ceil(width / tile)
    if isinstance(image, np.ndarray) or callable(image):
        for ty in range(ny):
            for tx in range(nx):
                y0, x0 = ty * tile, tx * tile
                h, w = min(tile, height - y0), min(tile, width - x0)
                part = image[y0:y0 + h, x0:x0 + w] if isinstance(image, np.ndarray) else image(y0, x0, h, w)
                part = np.asarray(part)
                if part.shape != (h, w, 3) or part.dtype != np.uint8:
                    raise InvalidArgumentError(
                        f"the slide's region at x={x0}, y={y0} is {part.shape} {part.dtype}; a painter must "
                        f"return ({h}, {w}, 3) uint8")
                if (h, w) == (tile, tile):
                    yield part
                else:
                    out = np.zeros((tile, tile, 3), np.uint8)
                    out[:h, :w] = part
                    yield out
        return
    count = 0
    for part in image:
        part = np.asarray(part)
        if part.shape != (tile, tile, 3) or part.dtype != np.uint8:
            raise InvalidArgumentError(f"tile {count} of the slide is {part.shape} {part.dtype}; every tile of an "
                                       f"iterator must be ({tile}, {tile}, 3) uint8 (edge tiles padded)")
        count += 1
        yield part
    if count != ny * nx:
        raise InvalidArgumentError(f"the iterator gave {count} tiles; a {width}x{height} slide in tiles of "
                                   f"{tile} needs {ny * nx} (row-major, edge tiles padded)")


def _aperio_description(width: int, height: int, tile: int, mpp: float, level: int) -> str:
    """An Aperio SVS ``ImageDescription`` (the fields a reader looks for: size, tile, MPP)."""
    head = "Aperio Image Library v12.0.15 \r\n"
    if level == 0:
        return (f"{head}{width}x{height} [0,0 {width}x{height}] ({tile}x{tile}) RAW|AppMag = 40"
                f"|Filename = nucdata-slide|MPP = {mpp:.4f}")
    return f"{head}{width}x{height} -> {width}x{height} ({tile}x{tile}) RAW|AppMag = 40|MPP = {mpp:.4f}"


def write_pyramidal_tiff(path: str | os.PathLike[str], image: np.ndarray | Painter | Iterable[np.ndarray], *,
                         mpp: float | None, levels: int = 3, tile: int = 256,
                         shape: tuple[int, int] | None = None, metadata: str = "tags",
                         compression: str | None = None) -> Path:
    """Write an RGB image as a tiled, pyramidal TIFF, one tile at a time; published atomically.

    Parameters
    ----------
    path
        The file to write (BigTIFF).
    image
        The level-0 pixels: a ``(H, W, 3)`` uint8 array; or a painter ``f(y, x, h, w) ->
        (h, w, 3)`` uint8 called once per tile in row-major order (``shape`` required);
        or an iterable of ``(tile, tile, 3)`` uint8 tiles in row-major order, edge tiles
        padded (``shape`` required).
    mpp
        µm/px of level 0 (level ``k`` has ``mpp * 2**k``); ``None`` writes no resolution.
    levels
        Pyramid levels including level 0 (fewer when the image gets too small).
    tile
        Tile side in pixels (a multiple of 16, as TIFF requires).
    shape
        ``(height, width)`` for a painter or an iterator.
    metadata
        How µm/px is recorded: ``"tags"``, ``"ome"`` or ``"aperio"`` (module docstring).
    compression
        A ``tifffile`` compression (``"zlib"``); ``None`` writes raw tiles.

    Returns
    -------
    Path
        ``path``.
    """
    import tifffile

    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise InvalidArgumentError(f"write_pyramidal_tiff takes (H, W, 3) uint8, got {image.shape} {image.dtype}")
        height, width = image.shape[:2]
    elif shape is None:
        raise InvalidArgumentError("write_pyramidal_tiff: a painter or an iterator of tiles needs shape=(height, width)")
    else:
        height, width = (int(v) for v in shape)
    if tile <= 0 or tile % 16:
        raise InvalidArgumentError(f"tile={tile}: a TIFF tile side is a positive multiple of 16")
    if metadata not in METADATA_STYLES:
        raise InvalidArgumentError(f"metadata={metadata!r}: choose one of {', '.join(METADATA_STYLES)}")
    if mpp is not None and not (math.isfinite(mpp) and mpp > 0):
        raise InvalidArgumentError(f"mpp={mpp!r} is not a positive number of µm per pixel")
    if height <= 0 or width <= 0:
        raise InvalidArgumentError(f"shape {(height, width)}: a slide has at least one pixel")
    shapes = _level_shapes(height, width, max(1, int(levels)))
    path = Path(path)
    half = tile // 2

    def resolution(k: int) -> dict:
        if mpp is None or metadata == "aperio":
            return {}
        per_cm = 1e4 / (mpp * 2 ** k)
        return {"resolution": (per_cm, per_cm), "resolutionunit": "CENTIMETER"}

    with atomic_path(path) as tmp:
        records: list[_Records] = []
        try:
            def level_tiles(k: int) -> Iterator[np.ndarray]:
                """Tiles of level ``k`` in row-major order; their halves go to the records of k + 1."""
                h, w = shapes[k]
                ny, nx = math.ceil(h / tile), math.ceil(w / tile)
                out = records[k] if k < len(records) else None
                if k == 0:
                    source = _base_tiles(image, height, width, tile)
                else:
                    below = records[k - 1]
                    ny0, nx0 = math.ceil(shapes[k - 1][0] / tile), math.ceil(shapes[k - 1][1] / tile)

                    def assemble() -> Iterator[np.ndarray]:
                        for ty in range(ny):
                            for tx in range(nx):
                                part = np.zeros((tile, tile, 3), np.uint8)
                                for dy in (0, 1):
                                    for dx in (0, 1):
                                        sy, sx = 2 * ty + dy, 2 * tx + dx
                                        if sy < ny0 and sx < nx0:
                                            part[dy * half:(dy + 1) * half, dx * half:(dx + 1) * half] = \
                                                below.get(sy * nx0 + sx)
                                rows, cols = min(tile, h - ty * tile), min(tile, w - tx * tile)
                                part[rows:], part[:, cols:] = 0, 0
                                yield part
                    source = assemble()
                for index, part in enumerate(source):
                    if out is not None:
                        out.put(index, _half(part))
                    if thumb is not None and k == 0:
                        thumb.add(index // nx, index % nx, part)
                    yield part

            for _ in shapes[1:]:
                records.append(_Records((half, half, 3), np.uint8, path.parent))
            thumb = _Thumbnail(height, width, tile) if metadata == "aperio" else None
            with tifffile.TiffWriter(tmp, bigtiff=True, ome=(metadata == "ome")) as tif:
                common = {"dtype": np.uint8, "tile": (tile, tile), "photometric": "rgb",
                          "compression": compression}
                if metadata == "aperio":
                    for k, (h, w) in enumerate(shapes):
                        tif.write(level_tiles(k), shape=(h, w, 3), metadata=None,
                                  description=_aperio_description(w, h, tile, (mpp or 0) * 2 ** k, k), **common)
                        if k == 0 and thumb is not None:
                            tif.write(thumb.image(), photometric="rgb", metadata=None,
                                      description=_aperio_description(*thumb.image().shape[1::-1], tile,
                                                                      (mpp or 0) * thumb.step, 1))
                else:
                    meta: dict | None = None
                    if metadata == "ome":
                        meta = {"axes": "YXS", "Name": path.stem}
                        if mpp is not None:
                            meta.update(PhysicalSizeX=mpp, PhysicalSizeXUnit="µm", PhysicalSizeY=mpp,
                                        PhysicalSizeYUnit="µm")
                    tif.write(level_tiles(0), shape=(height, width, 3), subifds=len(shapes) - 1,
                              metadata=meta, **resolution(0), **common)
                    for k in range(1, len(shapes)):
                        h, w = shapes[k]
                        tif.write(level_tiles(k), shape=(h, w, 3), subfiletype=1, metadata=None,
                                  **resolution(k), **common)
        finally:
            for r in records:
                r.close()
    return path


class _Thumbnail:
    """A small nearest-neighbour thumbnail gathered from the level-0 tiles as they pass."""

    def __init__(self, height: int, width: int, tile: int, side: int = 512) -> None:
        self.step = max(1, math.ceil(max(height, width) / side))
        self.tile = tile
        self.pixels = np.zeros((math.ceil(height / self.step), math.ceil(width / self.step), 3), np.uint8)

    def add(self, ty: int, tx: int, part: np.ndarray) -> None:
        y0, x0, s = ty * self.tile, tx * self.tile, self.step
        oy, ox = (-y0) % s, (-x0) % s
        sub = part[oy::s, ox::s]
        r0, c0 = (y0 + oy) // s, (x0 + ox) // s
        h = min(sub.shape[0], self.pixels.shape[0] - r0)
        w = min(sub.shape[1], self.pixels.shape[1] - c0)
        if h > 0 and w > 0:
            self.pixels[r0:r0 + h, c0:c0 + w] = sub[:h, :w]

    def image(self) -> np.ndarray:
        return self.pixels


def write_label_tiff(path: str | os.PathLike[str], tiles: Iterable[np.ndarray], shape: tuple[int, int], *,
                     tile: int = 256, mpp: float | None = None) -> Path:
    """Write an ``int32`` instance map as a tiled one-level TIFF from row-major tiles (atomic)."""
    import tifffile

    extra = {}
    if mpp is not None:
        extra = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"}
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=True) as tif:
        tif.write(iter(tiles), shape=tuple(shape), dtype=np.int32, tile=(tile, tile), photometric="minisblack",
                  metadata=None, **extra)
    return Path(path)


# -- a slide of the demo world ---------------------------------------------------------
@dataclass
class SlideTruth:
    """The ground truth of a generated slide, measured from the pixels each nucleus got.

    Attributes
    ----------
    path
        The pyramidal TIFF.
    width, height
        Level-0 size in pixels.
    mpp
        µm/px of level 0.
    ids
        (N,) the nuclei's ids: their values in the instance map (1..N, in drawing order).
    centroids
        (N, 2) float64 (x, y), the mean of each nucleus's pixel coordinates (pixel-centre
        frame: the top-left pixel's centre is (0, 0)).
    areas
        (N,) pixels per nucleus.
    bboxes
        (N, 4) int64 ``(x0, y0, x1, y1)``, pixel indices, ``x1``/``y1`` exclusive.
    polygons
        (N, V, 2) float64 outline vertices (x, y) in the pixel-centre frame; a pixel
        belongs to a nucleus when its centre lies inside its outline.
    kinds
        (N,) latent type index of each nucleus (:data:`nucdata.testing.world.TYPE_NAMES`).
    labels
        (N,) the native codes ``dataset``'s annotators write for them (``World.annotate``).
    dataset
        The dataset of the world whose types, stain and blur the slide was drawn with.
    instances_path, geojson_path
        The instance-map TIFF and the GeoJSON, when asked for.
    """

    path: Path
    width: int
    height: int
    mpp: float
    ids: np.ndarray
    centroids: np.ndarray
    areas: np.ndarray
    bboxes: np.ndarray
    polygons: np.ndarray
    kinds: np.ndarray
    labels: np.ndarray
    dataset: str
    instances_path: Path | None = None
    geojson_path: Path | None = None
    extra: dict = field(default_factory=dict)

    @property
    def density(self) -> float:
        """Nuclei per mm² of the slide."""
        return len(self.ids) / (self.width * self.height * (self.mpp / 1000.0) ** 2)


class _SlidePainter:
    """Paints regions of one slide from its nuclei; called once per tile, in any order."""

    def __init__(self, height: int, width: int, nuclei: list, appearances: dict, stain: tuple, blur: float,
                 seed: int, rng: np.random.Generator, tile: int) -> None:
        self.height, self.width, self.seed, self.tile = height, width, seed, tile
        self.stain = np.asarray(stain, np.float32)
        self.blur = float(blur)
        self.apron = int(math.ceil(4 * self.blur)) + 1
        n = len(nuclei)
        self.cx = np.array([c.cx for c in nuclei], np.float64)
        self.cy = np.array([c.cy for c in nuclei], np.float64)
        self.reach = np.array([max(c.rx, c.ry) for c in nuclei], np.float64) + 1.0
        self.outlines = np.stack([ellipse_polygon(c, VERTICES) for c in nuclei]) if n else np.zeros((0, VERTICES, 2))
        looks = [appearances.get(c.appearance_kind, DEFAULT_APPEARANCE) for c in nuclei]
        # one tone per nucleus (the world's colour of its look, N(0, 6) per channel), as paint() draws it
        self.tones = np.zeros((n + 1, 3), np.float32)
        self.textures = np.zeros(n + 1, np.float32)
        if n:
            self.tones[1:] = np.array([a.colour for a in looks], np.float32) + rng.normal(0, 6, (n, 3))
            self.textures[1:] = [a.texture for a in looks]
        self.order = np.argsort(self.cy, kind="stable")
        self.sorted_cy = self.cy[self.order]
        self.max_reach = float(self.reach.max(initial=0.0))
        # per-nucleus tallies over the pixels it gets
        self.count = np.zeros(n, np.int64)
        self.sum_x = np.zeros(n, np.float64)
        self.sum_y = np.zeros(n, np.float64)
        self.bbox = np.tile(np.array([np.iinfo(np.int64).max, np.iinfo(np.int64).max, -1, -1], np.int64), (n, 1))

    def _near(self, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
        """Indices (ascending: drawing order) of the nuclei that may reach the box."""
        lo = np.searchsorted(self.sorted_cy, y0 - self.max_reach - 1, "left")
        hi = np.searchsorted(self.sorted_cy, y1 + self.max_reach + 1, "right")
        cand = self.order[lo:hi]
        keep = ((self.cx[cand] + self.reach[cand] >= x0) & (self.cx[cand] - self.reach[cand] <= x1)
                & (self.cy[cand] + self.reach[cand] >= y0) & (self.cy[cand] - self.reach[cand] <= y1))
        return np.sort(cand[keep])

    def region(self, y0: int, x0: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        """RGB (h, w, 3) uint8 and instance map (h, w) int32 of a region inside the slide."""
        a = self.apron
        ry0, rx0, rh, rw = y0 - a, x0 - a, h + 2 * a, w + 2 * a
        near = self._near(ry0, rx0, ry0 + rh, rx0 + rw)
        shifted = [self.outlines[i] - (rx0, ry0) for i in near]
        local = draw_filled((rh, rw), shifted)
        inst = np.where(local > 0, near[np.maximum(local - 1, 0)] + 1, 0).astype(np.int32) if len(near) \
            else local
        rows = np.arange(ry0, ry0 + rh)[:, None]
        cols = np.arange(rx0, rx0 + rw)[None, :]
        outside = (rows < 0) | (rows >= self.height) | (cols < 0) | (cols >= self.width)
        inst[outside] = 0
        rng = np.random.default_rng([self.seed, 0x711E, y0, x0])
        img = np.empty((rh, rw, 3), np.float32)
        img[:] = BACKGROUND
        img += rng.standard_normal((rh, rw, 3), dtype=np.float32) * 6
        inside = inst > 0
        ids = inst[inside]
        img[inside] = (self.tones[ids]
                       + rng.standard_normal((ids.size, 1), dtype=np.float32) * self.textures[ids, None])
        img += self.stain
        img = ndimage.gaussian_filter(img, (self.blur, self.blur, 0))
        rgb = np.clip(img[a:a + h, a:a + w], 0, 255).astype(np.uint8)
        return rgb, inst[a:a + h, a:a + w]

    def tally(self, y0: int, x0: int, inst: np.ndarray) -> None:
        """Add a region's pixels to its nuclei's counts, sums and boxes (each pixel once)."""
        rr, cc = np.nonzero(inst)
        if not rr.size:
            return
        ids = inst[rr, cc] - 1
        uniq, inv = np.unique(ids, return_inverse=True)
        xs, ys = cc + x0, rr + y0
        self.count[uniq] += np.bincount(inv)
        self.sum_x[uniq] += np.bincount(inv, weights=xs)
        self.sum_y[uniq] += np.bincount(inv, weights=ys)
        for col, values, fn in ((0, xs, np.minimum), (1, ys, np.minimum), (2, xs + 1, np.maximum),
                                (3, ys + 1, np.maximum)):
            init = self.bbox[uniq, col].copy()
            fn.at(init, inv, values)
            self.bbox[uniq, col] = init


def generate_slide(path: str | os.PathLike[str], *, width: int, height: int, mpp: float = 0.25,
                   density: float = 3000.0, seed: int = 0, world: World | None = None, dataset: str = "pannuke",
                   levels: int = 3, tile: int = 256, metadata: str = "tags", compression: str | None = None,
                   instances: str | os.PathLike[str] | None = None,
                   geojson: str | os.PathLike[str] | None = None) -> SlideTruth:
    """Paint a whole slide of the demo world, tile by tile, and return its ground truth.

    Nuclei are scattered over the whole slide at ``density`` per mm² (their number is
    ``density * area``, fewer where they no longer fit apart), with latent types and
    looks drawn as ``dataset``'s fake writer draws them (``World.kinds_for``,
    ``looks_for``), ellipses of 16 vertices that never overlap, painted with the
    world's appearance of their look, ``dataset``'s stain and blur. Only the nuclei's
    parameters are held for the whole slide; pixels exist one tile (plus a blur apron)
    at a time, so the memory does not grow with the slide's area.

    Parameters
    ----------
    path
        The pyramidal TIFF to write (:func:`write_pyramidal_tiff`).
    width, height
        Level-0 size in pixels.
    mpp
        µm/px of level 0 (the world draws nuclei in pixels, as its datasets at 0.25).
    density
        Nuclei per mm².
    seed
        Reproduces the slide.
    world
        The demo world (``World(0)`` by default).
    dataset
        The dataset whose type mix, stain and blur the slide takes.
    levels, tile, metadata, compression
        As for :func:`write_pyramidal_tiff`.
    instances
        Also write the instance map here, a tiled ``int32`` TIFF (values: the ids).
    geojson
        Also write the nuclei here as a QuPath GeoJSON (``nucdata.formats.write_qupath``:
        detections with their outline, the native label as classification).

    Returns
    -------
    SlideTruth
    """
    world = world or World(0)
    if not (density > 0 and math.isfinite(density)):
        raise InvalidArgumentError(f"density={density!r} nuclei per mm² must be a positive number")
    rng = np.random.default_rng([seed, 0x511DE])
    area_mm2 = width * height * (mpp / 1000.0) ** 2
    count = int(round(density * area_mm2))
    kinds = world.kinds_for(dataset, rng, count) if count else []
    looks = world.looks_for(dataset, kinds)
    appearances = world.appearances(dataset)
    nuclei = place_nuclei(rng, height, width, count, kinds, appearances, margin=0.0, looks=looks)
    painter = _SlidePainter(height, width, nuclei, appearances, world.stain(dataset), world.blur(dataset),
                            seed, rng, tile)
    path = Path(path)
    inst_records = _Records((tile, tile), np.int32, path.parent) if instances is not None else None
    ny, nx = math.ceil(height / tile), math.ceil(width / tile)
    try:
        def paint(y0: int, x0: int, h: int, w: int) -> np.ndarray:
            rgb, inst = painter.region(y0, x0, h, w)
            painter.tally(y0, x0, inst)
            if inst_records is not None:
                padded = np.zeros((tile, tile), np.int32)
                padded[:h, :w] = inst
                inst_records.put((y0 // tile) * nx + x0 // tile, padded)
            return rgb

        write_pyramidal_tiff(path, paint, mpp=mpp, levels=levels, tile=tile, shape=(height, width),
                             metadata=metadata, compression=compression)
        instances_path = None
        if inst_records is not None:
            records = inst_records
            instances_path = write_label_tiff(instances, (records.get(i) for i in range(ny * nx)),
                                              (height, width), tile=tile, mpp=mpp)
    finally:
        if inst_records is not None:
            inst_records.close()
    n = len(nuclei)
    present = painter.count > 0
    if not present.all():  # never expected: nuclei are placed apart with their centre inside
        raise RuntimeError(f"{int((~present).sum())} generated nuclei got no pixel")
    counts = np.maximum(painter.count, 1)
    truth = SlideTruth(
        path=path, width=width, height=height, mpp=mpp,
        ids=np.arange(1, n + 1, dtype=np.int64),
        centroids=np.stack([painter.sum_x / counts, painter.sum_y / counts], axis=1) if n else np.zeros((0, 2)),
        areas=painter.count.copy(), bboxes=painter.bbox.copy(),
        polygons=painter.outlines - 0.5,
        kinds=np.asarray([c.kind for c in nuclei], np.int64),
        labels=np.asarray(world.annotate(dataset, [c.kind for c in nuclei]), np.int64),
        dataset=dataset, instances_path=instances_path,
    )
    if geojson is not None:
        truth.geojson_path = _write_truth_geojson(truth, Path(geojson))
    return truth


def _write_truth_geojson(truth: SlideTruth, path: Path) -> Path:
    """The slide's nuclei as a QuPath GeoJSON (through :mod:`nucdata.formats`)."""
    from nucdata.formats import Nuclei, write_qupath

    nuclei = Nuclei(image=truth.path.stem, ids=truth.ids, centroids=truth.centroids,
                    polygons=list(truth.polygons), labels=truth.labels, mpp=truth.mpp)
    return write_qupath(path, nuclei)
