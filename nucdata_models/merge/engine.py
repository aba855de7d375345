"""Crops of a lab's nuclei, cut exactly as ``build-merged`` cut its training crops, tile by tile.

The one path from an image (an array in memory, or a slide read by region) and a
segmenter's nuclei to the crops the classifier sees; :mod:`.classify` (one image) and
:mod:`.slides` (whole slides, streamed) both go through it.

**Geometry.** Nuclei are a :class:`Nuclei` table in the image's own pixels (centroid x, y
with the origin at the top-left pixel's centre, ``bbox`` x0, y0, x1, y1 with exclusive
ends: the store's conventions). At ``scale`` (native pixels per model pixel; 1 when the
image's µm/px lies in the model's training range) the image, the nuclei and their masks
are mapped into the model's frame as :func:`nucdata.views.build_bank` maps a store image
(``(c + 0.5) / scale - 0.5``; boxes floored and ceiled), pixels resampled by
:func:`nucdata.views.axis_weights` (anti-aliased bilinear, borders mirrored), masks by
the nearest native pixel. Crops are then :func:`nucdata.views.cut_image`: the window of
``crop_size`` centred on the centroid's pixel, or on the box (resized) when the nucleus
does not fit, the mask as the fourth channel.

**Tiles.** The model frame is cut into square tiles of ``tile`` pixels; each nucleus
belongs to the tile holding its centroid. A tile's region is the union of its nuclei's
windows, clipped to the image; pixels beyond the image's edge are mirrored, as
``build-merged`` mirrors them, so a nucleus's crop does not depend on the tiling. An
image that fits in one tile is cut whole (what ``build-merged`` does). Masks of
overlapping outlines are painted in the order of the table, every nucleus whose box
meets the region included, so the owner of a pixel does not depend on the tiling either.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from nucdata.errors import InvalidArgumentError, MalformedAnnotationError

__all__ = ["ArraySource", "InstanceMasks", "NoMasks", "Nuclei", "PolygonMasks", "RegionSource", "Tile",
           "cut_tile", "model_frame", "plan_tiles"]


class RegionSource(Protocol):
    """Pixels read by region: ``width``, ``height`` and ``read(x0, y0, x1, y1)`` -> ``(h, w, 3)`` uint8."""

    width: int
    height: int

    def read(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray: ...


class ArraySource:
    """A region source over an ``(H, W, 3)`` uint8 array (or memory map)."""

    def __init__(self, rgb: np.ndarray):
        rgb = np.asarray(rgb)
        if rgb.ndim == 3 and rgb.shape[2] == 4:  # RGBA: the alpha channel is not an input
            rgb = rgb[:, :, :3]
        if rgb.ndim == 2:
            rgb = np.repeat(rgb[:, :, None], 3, axis=2)
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise InvalidArgumentError(f"image must be (H, W, 3) RGB, got shape {rgb.shape}; pass the image as "
                                       "RGB pixels (grey and RGBA are converted)")
        if rgb.dtype != np.uint8:
            if np.issubdtype(rgb.dtype, np.floating) and rgb.size and float(np.nanmax(rgb)) <= 1.0:
                rgb = np.clip(np.rint(rgb * 255), 0, 255).astype(np.uint8)
            else:
                rgb = np.clip(rgb, 0, 255).astype(np.uint8)
        self.rgb = rgb
        self.height, self.width = rgb.shape[:2]

    def read(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        return self.rgb[y0:y1, x0:x1]


@dataclass
class Nuclei:
    """A segmenter's nuclei in one image, in its own pixels (the store's conventions), as flat arrays.

    Attributes
    ----------
    ids
        int64 ``(N,)``: stable ids (the instance value, the feature's or file's id, the
        CSV's id column, or the row + 1).
    centroid
        float64 ``(N, 2)``: x, y, origin at the top-left pixel's centre.
    bbox
        int64 ``(N, 4)``: x0, y0, x1, y1, exclusive ends.
    area
        float64 ``(N,)``: pixels of the nucleus's mask (NaN for a point).
    has_mask
        bool ``(N,)``: false where the nucleus is a point or a box (its mask channel is
        its box, as for box-only nuclei in training).
    vertices, ring_starts, ring_of
        Outlines (x, y at pixel centres), flat: ring ``r`` is
        ``vertices[ring_starts[r]:ring_starts[r + 1]]`` and nucleus ``i`` owns rings
        ``ring_of[i]:ring_of[i + 1]`` (its outline, then holes or further parts; a pixel is
        inside by the even-odd rule, :func:`nucdata.formats.ring_pixels`). ``None``
        without outlines.
    annotation
        int64 ``(N,)``: the nucleus's own class code in the input (-1 none), or ``None``;
        ``class_names`` names the codes where the input does.
    uuids
        The ids the input gave as text (QuPath's UUIDs), kept for the outputs.
    """

    ids: np.ndarray
    centroid: np.ndarray
    bbox: np.ndarray
    area: np.ndarray
    has_mask: np.ndarray
    vertices: np.ndarray | None = None
    ring_starts: np.ndarray | None = None
    ring_of: np.ndarray | None = None
    annotation: np.ndarray | None = None
    class_names: dict[int, str] = field(default_factory=dict)
    uuids: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.ids)
        self.ids = np.asarray(self.ids, np.int64).reshape(n)
        self.centroid = np.asarray(self.centroid, np.float64).reshape(n, 2)
        self.bbox = np.asarray(self.bbox, np.int64).reshape(n, 4)
        self.area = np.asarray(self.area, np.float64).reshape(n)
        self.has_mask = np.asarray(self.has_mask, bool).reshape(n)
        if not np.isfinite(self.centroid).all():
            bad = int(np.flatnonzero(~np.isfinite(self.centroid).all(1))[0])
            raise MalformedAnnotationError(f"nucleus id {int(self.ids[bad])}: centroid {self.centroid[bad].tolist()} "
                                           "is not finite; correct or drop it in the segmenter's output")
        if len(np.unique(self.ids)) != n:
            values, counts = np.unique(self.ids, return_counts=True)
            raise MalformedAnnotationError(f"nucleus ids repeat ({values[counts > 1][:5].tolist()}); every nucleus "
                                           "needs its own id: renumber them, or leave ids out (row numbers are used)")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def has_outlines(self) -> bool:
        return self.vertices is not None

    def rings(self, i: int) -> list[np.ndarray]:
        """Nucleus ``i``'s rings (outline first), ``(m, 2)`` x, y at pixel centres; empty without one."""
        if self.vertices is None:
            return []
        s, r = self.ring_starts, self.ring_of
        return [self.vertices[s[k] : s[k + 1]] for k in range(int(r[i]), int(r[i + 1]))]

    def take(self, rows: np.ndarray) -> Nuclei:
        """The nuclei ``rows`` (outlines and annotations kept)."""
        rows = np.asarray(rows, np.int64)
        vertices = ring_starts = ring_of = None
        if self.vertices is not None:
            vertices, ring_starts, ring_of = _flat([self.rings(int(i)) for i in rows])
        return Nuclei(self.ids[rows], self.centroid[rows], self.bbox[rows], self.area[rows], self.has_mask[rows],
                      vertices, ring_starts, ring_of, None if self.annotation is None else self.annotation[rows],
                      dict(self.class_names), None if self.uuids is None else self.uuids[rows])

    @classmethod
    def from_instances(cls, instance_map: np.ndarray) -> tuple[Nuclei, np.ndarray]:
        """Nuclei of an instance label image (0 background, any positive ids), and its sequential map.

        Returns the table (ids in increasing order) and the map relabelled so that
        nucleus row ``k`` has value ``k + 1`` (:func:`nucdata._util.instances.relabel_sequential`).
        """
        from nucdata._util.instances import nucleus_properties, relabel_sequential

        inst = np.asarray(instance_map)
        if inst.ndim == 3 and inst.shape[2] == 1:
            inst = inst[:, :, 0]
        if inst.ndim != 2 or not (np.issubdtype(inst.dtype, np.integer) or inst.dtype == bool):
            raise MalformedAnnotationError(f"an instance map must be a 2-D integer image, got shape {inst.shape} "
                                           f"{inst.dtype}; save the segmenter's labels as integers (0 background)")
        try:
            seq, original = relabel_sequential(inst.astype(np.int64, copy=False))
        except ValueError as exc:
            raise MalformedAnnotationError(f"instance map: {exc}; background is 0, nuclei positive ids") from None
        props = nucleus_properties(seq, int(original.size))
        return cls(original, props["centroid"].astype(np.float64), props["bbox"], props["area"].astype(np.float64),
                   np.ones(original.size, bool)), seq

    @classmethod
    def from_centroids(cls, centroids: np.ndarray, ids: np.ndarray | None = None,
                       bboxes: np.ndarray | None = None) -> Nuclei:
        """Points (x, y, pixel centres): the mask channel is the one-pixel box at each point (as
        point-annotated training nuclei are stored), or ``bboxes`` where given."""
        xy = np.asarray(centroids, np.float64).reshape(-1, 2)
        n = xy.shape[0]
        if bboxes is None:
            corner = np.floor(xy + 0.5).astype(np.int64)
            box = np.concatenate([corner, corner + 1], 1)
        else:
            box = np.asarray(bboxes, np.int64).reshape(n, 4)
        ids = np.arange(1, n + 1) if ids is None else ids
        return cls(ids, xy, box, np.full(n, np.nan), np.zeros(n, bool))

    @classmethod
    def from_polygons(cls, polygons: Sequence[Sequence[np.ndarray] | np.ndarray], ids: np.ndarray | None = None,
                      centroids: np.ndarray | None = None, shape: tuple[int, int] | None = None) -> Nuclei:
        """Outlines (each a ``(m, 2)`` ring or a list of rings, x, y at pixel centres).

        Area, centroid and box come from the pixels the outline covers
        (:func:`nucdata.formats.ring_pixels`: centres inside or on it) within the image
        (``shape``, ``(height, width)``: an outline reaching past its edge keeps the pixels
        inside), as the instance map it was traced from gives them; a nucleus whose outline
        covers no pixel centre is a point at ``centroids[i]`` (default: its vertices' mean).
        """
        from nucdata.formats import ring_pixels

        per = [[np.asarray(r, np.float64).reshape(-1, 2) for r in ([p] if isinstance(p, np.ndarray) and p.ndim == 2 else p)]
               for p in polygons]
        n = len(per)
        centroid = np.zeros((n, 2))
        bbox = np.zeros((n, 4), np.int64)
        area = np.zeros(n)
        has_mask = np.zeros(n, bool)
        for i, rings in enumerate(per):
            rings = [r for r in rings if len(r)]
            allv = np.concatenate(rings) if rings else np.zeros((0, 2))
            if not np.isfinite(allv).all():
                raise MalformedAnnotationError(f"outline {i} (id {None if ids is None else ids[i]}) has non-finite "
                                               "vertices; correct or drop it in the segmenter's output")
            rr = cc = np.zeros(0, np.int64)
            if len(allv):
                x0, y0 = np.floor(allv.min(0)).astype(np.int64)
                x1, y1 = np.ceil(allv.max(0)).astype(np.int64) + 1
                if shape is not None:
                    x0, y0 = max(int(x0), 0), max(int(y0), 0)
                    x1, y1 = max(min(int(x1), int(shape[1])), x0), max(min(int(y1), int(shape[0])), y0)
                rr, cc = ring_pixels([r - (x0, y0) for r in rings], (int(y1 - y0), int(x1 - x0)))
                rr, cc = rr + y0, cc + x0
            if len(rr):
                area[i] = rr.size
                centroid[i] = (cc.mean(), rr.mean())
                bbox[i] = (cc.min(), rr.min(), cc.max() + 1, rr.max() + 1)
                has_mask[i] = True
            else:  # covers no pixel centre: a point
                if centroids is not None:
                    centroid[i] = centroids[i]
                else:
                    centroid[i] = allv.mean(0) if len(allv) else (np.nan, np.nan)
                corner = np.floor(centroid[i] + 0.5).astype(np.int64)
                bbox[i] = (*corner, *(corner + 1))
                area[i] = np.nan
        vertices, ring_starts, ring_of = _flat(per)
        return cls(np.arange(1, n + 1) if ids is None else ids, centroid, bbox, area, has_mask, vertices,
                   ring_starts, ring_of)

    @classmethod
    def from_record(cls, record, shape: tuple[int, int] | None = None) -> Nuclei:
        """The table of a :class:`nucdata.formats.Nuclei` record (what every reader of
        :mod:`nucdata.formats` returns): outlines where it has them (masks and centroids from
        their pixels within the image of ``shape``), else its boxes or points; its labels as
        the annotation."""
        n = len(record)
        if record.polygons is not None:
            rings = [record.rings(i) for i in range(n)]
            nuclei = cls.from_polygons(rings, record.ids, record.centroids, shape)
            if record.bboxes is not None:  # a point with a box in the file: the file's box
                points = ~nuclei.has_mask
                nuclei.bbox[points] = record.bboxes[points]
        else:
            nuclei = cls.from_centroids(record.centroids, record.ids, record.bboxes)
        if record.labels is not None:
            nuclei.annotation = np.asarray(record.labels, np.int64)
            nuclei.class_names = dict(record.class_names)
        nuclei.uuids = None if record.uuids is None else np.asarray(record.uuids, dtype=object)
        return nuclei


def _flat(per: Sequence[Sequence[np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rings per nucleus as flat vertices, ring starts and each nucleus's ring range."""
    rings = [np.asarray(r, np.float64).reshape(-1, 2) for p in per for r in p]
    counts = np.array([len(p) for p in per], np.int64)
    ring_of = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    lengths = np.array([len(r) for r in rings], np.int64)
    ring_starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    vertices = np.concatenate(rings) if rings else np.zeros((0, 2))
    return vertices, ring_starts, ring_of


class NoMasks:
    """Points or boxes: no mask to paint (the mask channel is each nucleus's box)."""

    def paint(self, x0: int, y0: int, x1: int, y1: int, rows: np.ndarray) -> np.ndarray:
        return np.zeros((y1 - y0, x1 - x0), np.int32)


class InstanceMasks:
    """Masks from an instance map (array or region reader) whose values are ``value_ids``.

    ``value_ids`` (sorted) names the nucleus row of each value: row ``r`` is painted with
    ``value_ids[r]``. For the sequential map of :meth:`Nuclei.from_instances` that is
    ``1..K``; for a slide-sized label image, the nuclei's own ids.
    """

    def __init__(self, instance_map, value_ids: np.ndarray):
        self.map = instance_map
        self.value_ids = np.asarray(value_ids, np.int64)

    def paint(self, x0: int, y0: int, x1: int, y1: int, rows: np.ndarray) -> np.ndarray:
        read = getattr(self.map, "read", None)
        region = np.asarray(read(x0, y0, x1, y1) if read is not None else self.map[y0:y1, x0:x1]).astype(np.int64)
        if region.ndim == 3:
            region = region[:, :, 0]
        out = np.zeros(region.shape, np.int32)
        if not len(rows) or not region.size:
            return out
        wanted = self.value_ids[rows]  # the values of the tile's nuclei, in local order
        order = np.argsort(wanted, kind="stable")
        pos = np.clip(np.searchsorted(wanted[order], region), 0, len(wanted) - 1)
        hit = wanted[order][pos] == region
        out[hit] = order[pos[hit]] + 1
        return out


class PolygonMasks:
    """Masks painted from the nuclei's outlines, as :func:`nucdata.formats.rasterize` paints them
    (pixels whose centres lie inside or on an outline; where outlines overlap, the earlier one
    in the table keeps the pixel)."""

    def __init__(self, nuclei: Nuclei):
        self.nuclei = nuclei

    def paint(self, x0: int, y0: int, x1: int, y1: int, rows: np.ndarray) -> np.ndarray:
        from nucdata.formats import ring_pixels

        nuc = self.nuclei
        out = np.zeros((y1 - y0, x1 - x0), np.int32)
        box = nuc.bbox
        meets = np.flatnonzero((box[:, 0] < x1) & (box[:, 2] > x0) & (box[:, 1] < y1) & (box[:, 3] > y0) & nuc.has_mask)
        local = np.full(len(meets), -1, np.int64)  # nuclei of other tiles own their pixels too
        rows = np.asarray(rows, np.int64)
        if len(rows):
            by_row = np.argsort(rows, kind="stable")
            pos = np.clip(np.searchsorted(rows[by_row], meets), 0, len(rows) - 1)
            mine = rows[by_row][pos] == meets
            local[mine] = by_row[pos[mine]] + 1
        for row, value in zip(meets, local, strict=True):  # table order: the earlier outline keeps a pixel
            rr, cc = ring_pixels([r - (x0, y0) for r in nuc.rings(int(row))], out.shape)
            if rr.size:
                free = out[rr, cc] == 0
                out[rr[free], cc[free]] = value
        return out


def model_frame(nuclei: Nuclei | _Geometry, scale: float, width: int, height: int) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Centroids and boxes in the model's frame, and its size (as ``build_bank`` maps a store image)."""
    from nucdata.views import output_length

    if scale == 1.0:
        return nuclei.centroid, nuclei.bbox, width, height
    w, h = output_length(width, scale), output_length(height, scale)
    cen = (nuclei.centroid + 0.5) / scale - 0.5
    box = nuclei.bbox.astype(np.float64)
    box = np.stack([np.floor(box[:, 0] / scale), np.floor(box[:, 1] / scale),
                    np.ceil(box[:, 2] / scale), np.ceil(box[:, 3] / scale)], 1)
    box = np.clip(box, 0, [w, h, w, h]).astype(np.int64)
    box[:, 2:] = np.maximum(box[:, 2:], box[:, :2] + 1)
    return cen, box, w, h


@dataclass
class Tile:
    """One tile of the model frame: its index in raster order and its nuclei (rows of the table)."""

    index: int
    rows: np.ndarray


def plan_tiles(centroid_model: np.ndarray, width: int, height: int, tile: int) -> tuple[list[Tile], int]:
    """Nuclei by tile (the tile holding each centroid), tiles in raster order; and the tile count."""
    tile = max(int(tile), 1)
    nx, ny = -(-width // tile), -(-height // tile)
    if not len(centroid_model):
        return [], nx * ny
    cell = np.floor(np.clip(centroid_model, 0, [width - 1, height - 1]) / tile).astype(np.int64)
    index = cell[:, 1] * nx + cell[:, 0]
    order = np.argsort(index, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(index[order]) != 0])
    bounds = np.r_[starts, len(order)]
    tiles = [Tile(int(index[order[a]]), order[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    return tiles, nx * ny


def _resample_region(source: RegionSource, x0: int, y0: int, x1: int, y1: int, scale: float) -> np.ndarray:
    """Model-frame pixels ``[x0, x1) x [y0, y1)`` of ``source`` resampled by ``scale``, reading one native region."""
    from nucdata.views import axis_weights

    ly, wy = axis_weights(source.height, y0, y1 - y0, scale)
    lx, wx = axis_weights(source.width, x0, x1 - x0, scale)
    native = np.asarray(source.read(lx, ly, lx + wx.shape[1], ly + wy.shape[1]), np.float32)
    h, w = native.shape[:2]
    rows = wy @ native.reshape(h, w * 3)  # (y1 - y0, w * 3)
    out = np.stack([(wx @ rows.reshape(-1, w, 3)[:, :, c].T).T for c in range(3)], 2)
    out += 0.5
    np.clip(out, 0, 255, out=out)
    return out.astype(np.uint8)


def _nearest_region(masks, x0: int, y0: int, x1: int, y1: int, scale: float, width: int, height: int,
                    rows: np.ndarray) -> np.ndarray:
    """Model-frame masks: the native pixel holding each output pixel's centre."""
    ny = np.clip(np.floor((np.arange(y0, y1) + 0.5) * scale).astype(np.int64), 0, height - 1)
    nx = np.clip(np.floor((np.arange(x0, x1) + 0.5) * scale).astype(np.int64), 0, width - 1)
    native = masks.paint(int(nx[0]), int(ny[0]), int(nx[-1]) + 1, int(ny[-1]) + 1, rows)
    return native[np.ix_(ny - ny[0], nx - nx[0])]


def cut_tile(source: RegionSource, masks, nuclei: Nuclei, rows: np.ndarray, size: int, scale: float,
             whole: bool = False) -> np.ndarray:
    """The crops ``(k, 4, size, size)`` uint8 of nuclei ``rows``, cut as ``build-merged`` cuts them.

    Parameters
    ----------
    source, masks
        The image (:class:`RegionSource`) and where the masks come from
        (:class:`InstanceMasks`, :class:`PolygonMasks` or :class:`NoMasks`).
    nuclei, rows
        The table and the rows to cut (one tile's).
    size, scale
        Crop side and native pixels per model pixel.
    whole
        Cut from the whole image (one tile holds every nucleus), as ``build-merged`` does.
    """
    from nucdata.views import cut_image, place_windows

    rows = np.asarray(rows, np.int64)
    if not len(rows):
        return np.zeros((0, 4, size, size), np.uint8)
    cen, box, w, h = model_frame(_Geometry(nuclei.centroid[rows], nuclei.bbox[rows]), scale,
                                 source.width, source.height)
    if whole:
        x0, y0, x1, y1 = 0, 0, w, h
    else:
        origin, side = place_windows(cen, box, size)
        x0, y0 = (int(v) for v in np.maximum(origin.min(0), 0))
        x1 = int(min(w, (origin[:, 0] + side).max()))
        y1 = int(min(h, (origin[:, 1] + side).max()))
    if scale == 1.0:
        rgb = np.asarray(source.read(x0, y0, x1, y1))
        inst = masks.paint(x0, y0, x1, y1, rows)
    else:
        rgb = _resample_region(source, x0, y0, x1, y1, scale)
        inst = _nearest_region(masks, x0, y0, x1, y1, scale, source.width, source.height, rows)
    shift = np.array([x0, y0], np.float64)
    crops, _, _ = cut_image(rgb, inst, cen - shift, box - np.array([x0, y0, x0, y0]), nuclei.has_mask[rows], size)
    return crops


@dataclass
class _Geometry:
    """Centroids and boxes only (what :func:`model_frame` reads)."""

    centroid: np.ndarray
    bbox: np.ndarray
