"""Fixed-size tiles with instance and type maps, at one resolution, for segmenters.

``ds.tiles(size=256, mpp=0.25)`` (and ``load_many(...).tiles(...)``) gives a
:class:`TileDataset`: a map-style dataset whose items are ``S x S`` tiles cut from the
store's memory-mapped pixels. Only the tile's window is read; the instance ids inside
it are relabelled ``1..K`` with one lookup table, so a tile costs about the same
whatever the image's size.

Geometry
--------
A tile lives in the *output frame* of its image: the image resampled by ``scale`` =
``mpp / image_mpp`` native pixels per output pixel (``scale`` is 1 without ``mpp``).
The resampled image is ``round(H / scale) x round(W / scale)`` pixels. Output pixel
``g`` (row or column) is centred on the native coordinate ``(g + 0.5) * scale - 0.5``
(pixel-centre coordinates, as in the store), so a tile whose top-left output pixel is
``(tx, ty)`` has ``origin = (tx * scale, ty * scale)``: its top-left corner in native
pixels (corner frame). At ``scale == 1`` tile pixel ``(u, v)`` is native pixel
``(origin_x + u, origin_y + v)``.

Resampling (``mpp=``) follows :func:`skimage.transform.rescale` with
``anti_aliasing=True``: a Gaussian of sigma ``max(0, (scale - 1) / 2)`` (truncated at
4 sigma) then bilinear interpolation, borders mirrored; both are folded into two
sparse per-axis weight matrices. Instance maps are resampled with nearest neighbour
(the native pixel containing the output pixel's centre), so ids stay ids; a nucleus
too small to own an output pixel is absent from that tile. Each process resamples an
image once, whole, and keeps it in a cache of ``resample_cache_mb`` (least recently
used out first), so later tiles of it are cut like native ones; images the cache
cannot hold are resampled per tile, reading only the window (plus the filter's reach).
Both give the same pixels.

Which nuclei a tile holds: every id of the window, found from the ids where the window's
flattened rows change. An image that has given :data:`_RUNS_AFTER` tiles in this process
is indexed once instead (its instance map, native or resampled whole, as runs of one id
along each row; at most ``_RUNS_MB`` MiB of these per process, least recently used out
first), and later tiles
select the runs that cross the window: the same ids, without a pass over the window.

Grid tiles start at ``0, stride, 2 * stride, ...`` along each axis until the image is
covered; with ``stride == size`` they cover every output pixel exactly once. Tiles
that run past the image are padded (zeros in the image, 0 in the instance map, 0 in
the type map) and ``padding`` marks those pixels. ``edge="shift"`` instead moves the
last tile of a row or column back inside the image when the image is at least one tile
wide (what exports use: no black margins, some overlap).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch

from nucdata.errors import InvalidArgumentError
from nucdata.views._loaders import batch_loader, collate_into
from nucdata.views._resample import (
    image_scales,
    nearest_window,
    output_length,
    resample_planes,
)

if TYPE_CHECKING:
    from nucdata.dataset import NucleusDataset

Sample = dict[str, Any]


# --------------------------------------------------------------------------------------
# The dataset
# --------------------------------------------------------------------------------------
def _grid_starts(n_out: int, size: int, stride: int, edge: str) -> np.ndarray:
    """Tile starts along one axis that cover ``[0, n_out)``."""
    if edge == "shift" and n_out >= size:
        starts = list(range(0, n_out - size + 1, stride))
        if starts[-1] + size < n_out:
            starts.append(n_out - size)
        return np.asarray(starts, np.int64)
    starts = list(range(0, max(n_out - size, 0) + 1, stride))
    while starts[-1] + size < n_out:
        starts.append(starts[-1] + stride)
    return np.asarray(starts, np.int64)


#: random tiles are drawn in blocks of this many (one generator and a few array operations
#: per block, not per tile); at most ``_DRAW_CACHE`` blocks are kept per process
_DRAW_BLOCK = 256
_DRAW_CACHE = 64


#: dtype of a tile's ``type_map`` (class ids and -1: any label set, and native codes, fit)
TYPE_DTYPE = np.int16

#: output rows resampled at once when a whole image is resampled into the cache (bounds
#: the float32 temporaries whatever the image's size)
_RESAMPLE_BAND = 256
#: Tiles of one image (native, or resampled whole) after which this process indexes its runs of ids.
_RUNS_AFTER = 32
#: MiB of run indexes each process keeps.
_RUNS_MB = 128


class _Runs(NamedTuple):
    """An instance map as runs of one non-zero id along each row (for the ids a window holds)."""

    ids: np.ndarray      # int32 (R,): each run's id
    x0: np.ndarray       # int32 (R,): first column
    x1: np.ndarray       # int32 (R,): one past the last column
    row: np.ndarray      # int64 (H + 1,): runs of row y are row[y]:row[y + 1]

    @classmethod
    def of(cls, instances: np.ndarray) -> _Runs:
        h, w = instances.shape
        flat = np.ascontiguousarray(instances).ravel()
        start = np.empty(flat.size, bool)
        start[:1] = True
        np.not_equal(flat[1:], flat[:-1], out=start[1:])
        start[::w] = True  # a run never crosses a row's end
        starts = np.flatnonzero(start)
        ends = np.append(starts[1:], flat.size)
        ids = flat[starts]
        keep = ids != 0
        starts, ends, ids = starts[keep], ends[keep], ids[keep]
        y = starts // w
        x0 = (starts - y * w).astype(np.int32)
        return cls(ids.astype(np.int32), x0, (x0 + (ends - starts)).astype(np.int32),
                   np.searchsorted(y, np.arange(h + 1)).astype(np.int64))

    @property
    def nbytes(self) -> int:
        return self.ids.nbytes + self.x0.nbytes + self.x1.nbytes + self.row.nbytes

    def present(self, ty: int, tx: int, rows: int, cols: int, size: int) -> np.ndarray:
        """bool ``(size,)``: which ids have a pixel in the window (id 0 never)."""
        a, b = self.row[ty], self.row[ty + rows]
        x0, x1 = self.x0[a:b], self.x1[a:b]
        hit = self.ids[a:b][np.flatnonzero((x1 > tx) & (x0 < tx + cols))]
        present = np.zeros(max(size, int(hit.max(initial=0)) + 1), bool)
        present[hit] = True
        return present


class _ImageView(NamedTuple):
    """One image's pixels (plain array views) and nucleus range."""

    planes: np.ndarray
    instances: np.ndarray
    index: int
    start: int
    count: int
    name: str


class _MemberView(NamedTuple):
    """One member's per-nucleus columns (plain arrays) and labels, with their type codes."""

    centroid: np.ndarray  # float64 (N, 2)
    bbox: np.ndarray
    labels: np.ndarray
    candidates: np.ndarray
    types: np.ndarray  # int64 (N,): the type map's value of each nucleus (label + 1, or -1)
    reach: int  # 1 + the largest |type|: what the packed lookup must hold


class TileDataset(torch.utils.data.Dataset):
    """Fixed-size tiles of one or more datasets, at one resolution, for segmenters.

    Use :meth:`nucdata.NucleusDataset.tiles` or :meth:`nucdata.DatasetCollection.tiles`
    rather than the constructor. Each sample is a dict::

        image          uint8 (3, S, S); zeros where padded
        instance_map   int32 (S, S); 0 background, 1..K the nuclei of this tile
        type_map       int16 (S, S); 0 background, c + 1 for class c of the label set,
                       -1 inside nuclei without a label there (missing, or outside the
                       set): ready for ``ignore_index=-1``
        padding        bool (S, S); true outside the image
        centroids      float32 (K, 2); x, y of nucleus k+1's centroid (the whole
                       nucleus's, from the store) in tile pixel coordinates
        labels         int64 (K,); class under the label set (-1 missing, -2 outside),
                       native codes without one
        candidates     int64 (K,); bitmask over the label set's classes
        cut            bool (K,); the nucleus crosses the tile's border
        nucleus_index  int64 (K,); rows in the dataset's store
        origin         float64 (2,); x, y of the tile's top-left corner, native pixels
        scale          float; native pixels per tile pixel
        image_id, dataset  str; image_index int (row in the store)

    (``type_map`` is int16 since store schema 2, int64 before: ``.long()`` it for
    ``torch.nn.functional.cross_entropy``.)

    Nuclei known only by a bounding box (``has_mask`` false, NuCLS) have no pixels and
    are in neither map nor list. Per-nucleus fields differ in length between tiles:
    batch with :func:`nucdata.collate`.

    Parameters
    ----------
    datasets
        Image datasets; their splits choose the images, their label sets the labels.
    size
        Tile side ``S`` in output pixels.
    stride
        Grid step (default ``size``: every pixel exactly once).
    mpp
        Resample every image to this many microns per pixel (``None``: native).
    sampler
        ``"grid"``: every grid tile of every image, in order. ``"random"``: ``length``
        tiles at uniformly random positions, the dataset drawn by ``weights`` and the
        image in proportion to its area; tile ``i`` is a function of ``(seed, epoch,
        i)``, so workers agree and :meth:`set_epoch` gives new draws.
    min_nuclei
        Keep only tiles in which at least this many nuclei (with a mask) have their
        centroid. Random tiles are redrawn until one qualifies (up to 100 draws).
    weights
        Random sampler: relative weight of each dataset (default: equal).
    length
        Random sampler: tiles per epoch (default: the number of grid tiles).
    seed
        Random sampler's seed.
    edge
        ``"pad"`` or ``"shift"`` (see the module docstring).
    assume_mpp
        mpp for images that have none (see :func:`image_scales`).
    transforms
        ``dict -> dict`` callable applied to every tile, last (for instance
        :class:`nucdata.views.HoVerNetTargets`).
    resample_cache_mb
        With ``mpp``: MiB of resampled whole images each process keeps (7 bytes per
        output pixel). An image is cached when the whole selection fits, or when it is
        at most four tiles in area (resampling it whole costs about one tile); others
        are resampled per tile. ``0`` resamples every tile afresh.
    """

    def __init__(
        self,
        datasets: Sequence[NucleusDataset],
        size: int = 256,
        stride: int | None = None,
        mpp: float | None = None,
        sampler: str = "grid",
        min_nuclei: int = 0,
        weights: Sequence[float] | Mapping[str, float] | None = None,
        length: int | None = None,
        seed: int = 0,
        edge: str = "pad",
        assume_mpp: float | None = None,
        transforms: Callable[[Sample], Sample] | None = None,
        resample_cache_mb: float = 256,
    ):
        if int(size) != size or size < 1:
            raise InvalidArgumentError(f"tile size must be a positive integer, got {size!r}")
        stride = size if stride is None else stride
        if int(stride) != stride or stride < 1:
            raise InvalidArgumentError(f"stride must be a positive integer, got {stride!r}")
        if stride > size:
            raise InvalidArgumentError(f"stride {stride} > size {size} would leave pixels uncovered")
        if sampler not in ("grid", "random"):
            raise InvalidArgumentError(f"unknown sampler {sampler!r}; valid samplers: 'grid', 'random'")
        if edge not in ("pad", "shift"):
            raise InvalidArgumentError(f"unknown edge rule {edge!r}; valid rules: 'pad', 'shift'")
        if weights is not None and sampler != "random":
            raise InvalidArgumentError("weights choose datasets for sampler='random'; the grid visits every tile")
        self.members = list(datasets)
        if not self.members:
            raise InvalidArgumentError("tiles need at least one dataset")
        self.size, self.stride, self.mpp = int(size), int(stride), mpp
        self.sampler, self.min_nuclei, self.seed, self.edge = sampler, int(min_nuclei), int(seed), edge
        self.transforms = transforms
        if not (isinstance(resample_cache_mb, (int, float)) and resample_cache_mb >= 0):
            raise InvalidArgumentError(f"resample_cache_mb must be a non-negative number, got {resample_cache_mb!r}")
        self.resample_cache_mb = float(resample_cache_mb)
        self.epoch = 0
        label_sets = {d.label_set for d in self.members}
        self.label_set = label_sets.pop() if len(label_sets) == 1 else None
        # Per member, per selected image: store row, native size, scale, output size.
        self._image = [np.asarray(d.indices, np.int64) for d in self.members]
        self._scale = [image_scales(d, mpp, assume_mpp) for d in self.members]
        self._hw = [np.stack([np.asarray(d.store.column("images", "height"))[d.indices],
                              np.asarray(d.store.column("images", "width"))[d.indices]], 1).astype(np.int64)
                    for d in self.members]
        self._out = [np.stack([[output_length(int(h), s), output_length(int(w), s)]
                               for (h, w), s in zip(hw, sc, strict=True)]).reshape(-1, 2).astype(np.int64)
                     for hw, sc in zip(self._hw, self._scale, strict=True)]
        self._scale_list = [sc.tolist() for sc in self._scale]  # plain floats and ints for tile()
        self._out_list = [o.tolist() for o in self._out]
        # 7 bytes per output pixel: uint8 RGB and the int32 instance map
        self._out_bytes = [7 * o[:, 0] * o[:, 1] for o in self._out]
        grid = self._grid()
        if sampler == "grid":
            self._tiles = grid
        else:
            self._weights = self._member_weights(weights)
            self.length = int(length if length is not None else max(1, grid.shape[0]))
            self._eligible = [self._eligible_images(m) for m in range(len(self.members))]

    # -- construction ------------------------------------------------------------------
    def _member_weights(self, weights: Sequence[float] | Mapping[str, float] | None) -> np.ndarray:
        names = [d.name for d in self.members]
        if weights is None:
            w = np.ones(len(names))
        elif isinstance(weights, Mapping):
            unknown = set(weights) - set(names)
            if unknown:
                raise InvalidArgumentError(f"weights for datasets not in the collection: {sorted(unknown)}; datasets: {names}")
            w = np.asarray([float(weights.get(n, 0.0)) for n in names])
        else:
            w = np.asarray(list(weights), np.float64)
            if w.shape != (len(names),):
                raise InvalidArgumentError(f"{w.size} weights for {len(names)} datasets ({names})")
        empty = np.asarray([len(d) == 0 for d in self.members])
        w = np.where(empty, 0.0, w)
        if (w < 0).any() or not np.isfinite(w).all() or w.sum() <= 0:
            raise InvalidArgumentError(f"weights must be non-negative with a positive sum over non-empty datasets, got {w.tolist()}")
        return w / w.sum()

    def _count_in(self, m: int, j: int, ty: np.ndarray, tx: np.ndarray) -> np.ndarray:
        """Masked nuclei of image ``j`` of member ``m`` centred in each tile (ty, tx)."""
        ds = self.members[m]
        rows = ds.store.nucleus_slice(int(self._image[m][j]))
        has_mask = np.asarray(ds.store.column("nuclei", "has_mask")[rows])
        c = np.asarray(ds.store.column("nuclei", "centroid")[rows], np.float64)[has_mask]
        if c.shape[0] == 0:
            return np.zeros(ty.shape, np.int64)
        s = self._scale[m][j]
        out = (c + 0.5) / s - 0.5  # output-frame pixel-centre coordinates
        px = np.floor(out[:, 0] + 0.5)
        py = np.floor(out[:, 1] + 0.5)
        inside = ((px[None, :] >= tx[:, None]) & (px[None, :] < tx[:, None] + self.size)
                  & (py[None, :] >= ty[:, None]) & (py[None, :] < ty[:, None] + self.size))
        return inside.sum(1)

    def _grid(self) -> np.ndarray:
        """``(N, 4)`` int64: member, image position, ty, tx of every grid tile kept."""
        parts = []
        for m in range(len(self.members)):
            for j, (ho, wo) in enumerate(self._out[m]):
                ys = _grid_starts(int(ho), self.size, self.stride, self.edge)
                xs = _grid_starts(int(wo), self.size, self.stride, self.edge)
                ty, tx = (a.ravel() for a in np.meshgrid(ys, xs, indexing="ij"))
                if self.min_nuclei > 0:
                    keep = self._count_in(m, j, ty, tx) >= self.min_nuclei
                    ty, tx = ty[keep], tx[keep]
                parts.append(np.stack([np.full(ty.size, m), np.full(ty.size, j), ty, tx], 1))
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros((0, 4), np.int64)

    def _eligible_images(self, m: int) -> tuple[np.ndarray, np.ndarray]:
        """Images of member ``m`` a random tile may come from, and their probabilities."""
        count = np.asarray(self.members[m].store.column("images", "nucleus_count"))[self._image[m]]
        area = self._out[m][:, 0].astype(np.float64) * self._out[m][:, 1]
        keep = np.flatnonzero(count >= self.min_nuclei) if self.min_nuclei > 0 else np.arange(area.size)
        if keep.size == 0:
            return keep, np.zeros(0)
        return keep, area[keep] / area[keep].sum()

    # -- sampling ----------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Random sampler: draw a different set of tiles (call before each epoch)."""
        self.epoch = int(epoch)
        self.__dict__.pop("_draw_cache", None)

    def __len__(self) -> int:
        return int(self._tiles.shape[0]) if self.sampler == "grid" else self.length

    def _draw(self, i: int) -> tuple[int, int, int, int]:
        """Random tile ``i``: looked up in its block of draws (drawn together, cached)."""
        block, k = divmod(i, _DRAW_BLOCK)
        cache = self.__dict__.setdefault("_draw_cache", {})
        table = cache.get((self.epoch, block))
        if table is None:
            if len(cache) >= _DRAW_CACHE:
                cache.clear()
            table = cache[(self.epoch, block)] = self._draw_block(block).tolist()
        m, j, ty, tx = table[k]
        return m, j, ty, tx

    def _draw_block(self, block: int) -> np.ndarray:
        """``(_DRAW_BLOCK, 4)`` draws (member, image, ty, tx) of tiles ``block * _DRAW_BLOCK ...``.

        Attempt ``a`` of tile ``i`` uses row ``i % _DRAW_BLOCK`` of the uniform numbers
        seeded by ``(seed, epoch, block, a)``: a function of ``(seed, epoch, i)`` alone,
        so every worker agrees. With ``min_nuclei``, tiles that fall short are redrawn
        (up to 100 attempts; the best draw is kept when none qualifies).
        """
        candidates = np.flatnonzero([e[0].size > 0 for e in self._eligible])
        if candidates.size == 0:
            raise InvalidArgumentError(f"no image has {self.min_nuclei} nuclei or more; lower min_nuclei")
        weights = self._weights[candidates]
        if weights.sum() <= 0:
            raise InvalidArgumentError(f"no dataset with a positive weight has an image with {self.min_nuclei} nuclei or more")
        cumulative = np.cumsum(weights / weights.sum())
        n = _DRAW_BLOCK
        out = np.zeros((n, 4), np.int64)
        best = np.full(n, -1, np.int64)
        pending = np.arange(n)
        for attempt in range(100 if self.min_nuclei > 0 else 1):
            u = np.random.default_rng([self.seed, self.epoch, block, attempt]).random((n, 4))[pending]
            pick = np.searchsorted(cumulative, u[:, 0] * cumulative[-1], "right")
            m = candidates[np.minimum(pick, candidates.size - 1)]
            j = np.zeros_like(m)
            size = np.zeros((m.size, 2), np.int64)
            for member in np.unique(m).tolist():
                sel = m == member
                images = self._eligible[member][0]
                cum_images = self._cumulative(member)
                at = np.searchsorted(cum_images, u[sel, 1] * cum_images[-1], "right")
                j[sel] = images[np.minimum(at, images.size - 1)]
                size[sel] = self._out[member][j[sel]]
            ty = (u[:, 2] * (np.maximum(size[:, 0] - self.size, 0) + 1)).astype(np.int64)
            tx = (u[:, 3] * (np.maximum(size[:, 1] - self.size, 0) + 1)).astype(np.int64)
            draws = np.stack([m, j, ty, tx], 1)
            if self.min_nuclei <= 0:
                out[pending] = draws
                break
            count = np.zeros(m.size, np.int64)
            for member, image in {(int(a), int(b)) for a, b in zip(m, j, strict=True)}:
                sel = (m == member) & (j == image)
                count[sel] = self._count_in(member, image, ty[sel], tx[sel])
            better = count > best[pending]
            out[pending[better]] = draws[better]
            best[pending[better]] = count[better]
            pending = pending[count < self.min_nuclei]
            if pending.size == 0:
                break
        return out

    def _cumulative(self, m: int) -> np.ndarray:
        cache = self.__dict__.setdefault("_cum_cache", {})
        if m not in cache:
            cache[m] = np.cumsum(self._eligible[m][1])
        return cache[m]

    def locate(self, i: int) -> tuple[int, int, int, int]:
        """``(member, image position in its split, ty, tx)`` of tile ``i`` (output frame)."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} tiles")
        i = i % len(self)
        if self.sampler == "grid":
            m, j, ty, tx = self._tiles[i].tolist()
            return m, j, ty, tx
        return self._draw(i)

    # -- reading -----------------------------------------------------------------------
    def __getitem__(self, i: int) -> Sample:
        m, j, ty, tx = self.locate(int(i))
        sample = self.tile(m, j, ty, tx)
        return self.transforms(sample) if self.transforms is not None else sample

    def _image_view(self, member: int, position: int) -> _ImageView:
        """Pixels and nucleus range of one image, as plain arrays (cached per process)."""
        cache = self.__dict__.setdefault("_view_cache", {})
        view = cache.get((member, position))
        if view is None:
            store = self.members[member].store
            index = int(self._image[member][position])
            rows = store.nucleus_slice(index)
            view = cache[(member, position)] = _ImageView(
                planes=store.planes(index).view(np.ndarray),  # plain views: a memmap's slicing is slow
                instances=store.instance_map(index).view(np.ndarray),
                index=index, start=rows.start, count=rows.stop - rows.start,
                name=str(store.column("images", "name")[index]),
            )
        return view

    def _member_view(self, member: int) -> _MemberView:
        """Per-nucleus columns of one member, as plain arrays (cached per process)."""
        cache = self.__dict__.setdefault("_member_cache", {})
        view = cache.get(member)
        if view is None:
            ds = self.members[member]
            labels = np.asarray(ds.labels, np.int64)
            types = np.where(labels >= 0, labels + 1, -1)
            view = cache[member] = _MemberView(
                centroid=np.asarray(ds.store.column("nuclei", "centroid"), np.float64),
                bbox=ds.store.column("nuclei", "bbox").view(np.ndarray),
                labels=labels, candidates=np.asarray(ds.candidates, np.int64),
                types=types, reach=int(np.abs(types).max(initial=0)) + 1,
            )
        return view

    @property
    def grid(self) -> np.ndarray:
        """Grid tiles as int64 rows ``(member, image position, y, x)``, in item order (grid sampler only)."""
        if self.sampler != "grid":
            raise InvalidArgumentError("only a grid sampler has a fixed list of tiles; use sampler='grid'")
        view = self._tiles.view()
        view.flags.writeable = False
        return view

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for cache in ("_view_cache", "_member_cache", "_draw_cache", "_resampled", "_runs", "_run_counts"):  # per process
            state.pop(cache, None)
        return state

    def _resampled_image(self, member: int, position: int) -> tuple[np.ndarray, np.ndarray] | None:
        """The whole image resampled (planes, instance map), from this process's cache; ``None``: per tile."""
        cache: OrderedDict = self.__dict__.setdefault("_resampled", OrderedDict())
        key = (member, position)
        hit = cache.get(key)
        if hit is not None:
            cache.move_to_end(key)
            return hit
        budget = self.resample_cache_mb * 2**20
        need = int(self._out_bytes[member][position])
        ho, wo = self._out[member][position].tolist()
        total = sum(int(b.sum()) for b in self._out_bytes)
        if need > budget or not (total <= budget or ho * wo <= 4 * self.size * self.size):
            return None
        view = self._image_view(member, position)
        scale = float(self._scale[member][position])
        planes = np.empty((view.planes.shape[0], ho, wo), np.uint8)
        instances = np.empty((ho, wo), np.int32)
        for y in range(0, ho, _RESAMPLE_BAND):  # bands: bounded temporaries, the same pixels
            band = min(_RESAMPLE_BAND, ho - y)
            planes[:, y : y + band] = resample_planes(view.planes, y, 0, band, wo, scale)
            instances[y : y + band] = nearest_window(view.instances, y, 0, band, wo, scale)
        used = sum(p.nbytes + i.nbytes for p, i in cache.values())
        while cache and used + need > budget:
            _, (p, i) = cache.popitem(last=False)
            used -= p.nbytes + i.nbytes
        cache[key] = (planes, instances)
        return planes, instances

    def _runs_of(self, key: tuple, instances: np.ndarray) -> _Runs | None:
        """The run index of ``instances`` (an image's, native or resampled whole) once ``key`` has given
        :data:`_RUNS_AFTER` tiles here; else ``None``."""
        cache: OrderedDict[tuple, _Runs] = self.__dict__.setdefault("_runs", OrderedDict())
        seen: dict[tuple, int | None] = self.__dict__.setdefault("_run_counts", {})  # None: too large, never
        hit = cache.get(key)
        if hit is not None:
            cache.move_to_end(key)
            return hit
        count = seen.get(key, 0)
        if count is None or count + 1 < _RUNS_AFTER:
            if count is not None:
                seen[key] = count + 1
            return None
        runs = _Runs.of(instances)
        budget = _RUNS_MB * 2**20
        if runs.nbytes > budget:
            seen[key] = None
            return None
        used = sum(v.nbytes for v in cache.values())
        while used + runs.nbytes > budget:
            old, evicted = cache.popitem(last=False)
            seen.pop(old, None)  # counted afresh before it is indexed again
            used -= evicted.nbytes
        seen.pop(key, None)
        cache[key] = runs
        return runs

    def tile(self, member: int, position: int, ty: int, tx: int) -> Sample:
        """The tile of image ``position`` of ``member`` whose top-left output pixel is (tx, ty)."""
        view = self._image_view(member, position)
        nuclei = self._member_view(member)
        scale = self._scale_list[member][position]
        ho, wo = self._out_list[member][position]
        s = self.size
        rows, cols = max(0, min(s, ho - ty)), max(0, min(s, wo - tx))
        full = rows == s and cols == s
        fresh = False  # pixels already a new array of this tile's own
        indexed = None  # the whole instance map the window is cut from, and its key (for a run index)
        if rows == 0 or cols == 0:
            pixels, window = np.zeros((3, rows, cols), np.uint8), np.zeros((rows, cols), np.int32)
        elif scale == 1.0:  # views of the window (planar store: already channels first)
            pixels = view.planes[:, ty : ty + rows, tx : tx + cols]
            window = view.instances[ty : ty + rows, tx : tx + cols]
            indexed = (member, position), view.instances
        else:
            whole = self._resampled_image(member, position)
            if whole is not None:
                pixels = whole[0][:, ty : ty + rows, tx : tx + cols]
                window = whole[1][ty : ty + rows, tx : tx + cols]
                indexed = (member, position, scale), whole[1]
            else:
                pixels = resample_planes(view.planes, ty, tx, rows, cols, scale)
                window = nearest_window(view.instances, ty, tx, rows, cols, scale)
                fresh = True
        flat = window.ravel()  # one contiguous copy of the window's ids
        if not flat.flags.writeable:  # a window of whole rows: ravel gave a view of the store
            flat = flat.copy()
        # Relabel 1..K. Every id of the window occurs at its start or where the id changes
        # along the flattened rows: far fewer values to look at than the window's pixels.
        runs = self._runs_of(*indexed) if indexed is not None and flat.size else None
        if runs is not None:  # the same ids from the image's run index
            present = runs.present(ty, tx, rows, cols, view.count + 1)
        elif flat.size:
            after = flat[1:]
            changes = after[np.flatnonzero(after != flat[:-1])]  # faster than a boolean mask's gather
            present = np.zeros(max(view.count, int(changes.max(initial=0)), int(flat[0])) + 1, bool)
            present[changes] = True
            present[flat[0]] = True
            present[0] = False
        else:
            present = np.zeros(view.count + 1, bool)
        original = np.flatnonzero(present)
        k = original.size
        rows_k = view.start + original - 1
        labels = nuclei.labels[rows_k]
        types = nuclei.types[rows_k]
        # One lookup gives both maps: the new id in the low bits, the type above them
        # (arithmetic shifts keep the -1 of unlabelled nuclei).
        shift = max(1, k.bit_length())
        reach = nuclei.reach
        if reach >= 2**15:
            raise InvalidArgumentError(
                f"{self.members[member].name}: native class code {reach - 2} does not fit the tiles' int16 "
                "type_map; choose a label set (label_set=...) for this dataset")
        if reach << shift < 2**31:
            lut = np.zeros(present.size, np.int32)
            lut[original] = np.arange(1, k + 1, dtype=np.int64) + (types << shift)
            # torch's index_select takes int32 indices as they are (np.take converts them
            # to intp first): the faster lookup here
            packed = torch.index_select(torch.from_numpy(lut), 0, torch.from_numpy(flat)).numpy()
            type_flat = np.right_shift(packed, shift, out=np.empty(flat.size, TYPE_DTYPE), casting="unsafe")
            inst_flat = np.bitwise_and(packed, (1 << shift) - 1, out=packed)
        else:  # more nuclei or larger codes than the packing holds: two lookups
            lut = np.zeros(present.size, np.int32)
            lut[original] = np.arange(1, k + 1, dtype=np.int32)
            inst_flat = np.take(lut, flat)
            type_lut = np.zeros(k + 1, np.int64)
            type_lut[1:] = types
            type_flat = np.take(type_lut, inst_flat).astype(TYPE_DTYPE)
        if full:
            image = pixels if fresh else np.array(pixels)
            inst = inst_flat.reshape(s, s)
            type_map = type_flat.reshape(s, s)
            padding = np.zeros((s, s), bool)
        else:  # padded: zeros outside the image, and the padding map marks them
            image = np.zeros((3, s, s), np.uint8)
            image[:, :rows, :cols] = pixels
            inst = np.zeros((s, s), np.int32)
            inst[:rows, :cols] = inst_flat.reshape(rows, cols)
            type_map = np.zeros((s, s), TYPE_DTYPE)
            type_map[:rows, :cols] = type_flat.reshape(rows, cols)
            padding = np.ones((s, s), bool)
            padding[:rows, :cols] = False
        if scale == 1.0:
            centroids = nuclei.centroid[rows_k] - np.array([tx, ty], np.float64)
        else:
            centroids = (nuclei.centroid[rows_k] + 0.5) / scale - 0.5 - np.array([tx, ty], np.float64)
        ox, oy = tx * scale, ty * scale
        h, w = view.instances.shape
        cut = self._cut(nuclei.bbox[rows_k], ox, oy, s * scale, h, w)
        return {
            "image": torch.from_numpy(image),
            "instance_map": torch.from_numpy(inst),
            "type_map": torch.from_numpy(type_map),
            "padding": torch.from_numpy(padding),
            "centroids": torch.from_numpy(centroids.astype(np.float32)),
            "labels": torch.from_numpy(labels),
            "candidates": torch.from_numpy(nuclei.candidates[rows_k]),
            "cut": torch.from_numpy(cut),
            "nucleus_index": torch.from_numpy(rows_k.astype(np.int64, copy=False)),
            "origin": torch.from_numpy(np.array([ox, oy], np.float64)),
            "scale": scale,
            "image_id": view.name,
            "image_index": view.index,
            "dataset": self.members[member].name,
        }

    @staticmethod
    def _cut(bbox: np.ndarray, ox: float, oy: float, side: float, h: int, w: int) -> np.ndarray:
        """Nuclei whose box crosses a tile border that lies inside the image."""
        right, bottom = ox + side, oy + side
        cut = (bbox[:, 0] < ox) | (bbox[:, 1] < oy)
        if right < w:
            cut |= bbox[:, 2] > right
        if bottom < h:
            cut |= bbox[:, 3] > bottom
        return cut

    def loader(self, batch_size: int = 16, shuffle: bool = False, num_workers: int = 0,
               **options: Any) -> torch.utils.data.DataLoader:
        """Batches of these tiles (see :func:`tile_loader`)."""
        return tile_loader(self, batch_size, shuffle, num_workers, **options)

    def __repr__(self) -> str:
        names = ", ".join(d.name for d in self.members)
        return (f"TileDataset({names}; tiles={len(self)}, size={self.size}, stride={self.stride}, "
                f"mpp={self.mpp}, sampler={self.sampler!r}, label_set={self.label_set!r})")


def _tile_batch(tiles: TileDataset, indices: Sequence[int], empty: Any) -> Sample:
    """tile_loader's batch function (:func:`nucdata.views._loaders.batch_loader`).

    The batch's tiles, collated (:func:`nucdata.collate` layout) with the pixel fields
    stacked straight into the tensors ``empty`` gives (in a worker, its reusable slot).
    """
    return collate_into([tiles[int(i)] for i in indices], empty)


def tile_loader(tiles: TileDataset, batch_size: int = 16, shuffle: bool = False, num_workers: int = 0,
                drop_last: bool = False, generator: torch.Generator | None = None,
                pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """Batches of tiles (:func:`nucdata.collate` layout), made in-process or by workers.

    The views' one loader path (shared with :func:`nucdata.crop_loader`): with workers,
    each worker makes a whole batch and stacks its pixel fields into one of a few
    shared-memory slots that it reuses (the main process copies a batch out when it
    arrives), and the small per-nucleus fields travel inline: no new segment or page
    faults per batch, one file-descriptor handshake. Workers are persistent and see
    :meth:`TileDataset.set_epoch` (the epoch is sent with every batch).

    Parameters
    ----------
    tiles
        The tiles.
    batch_size, shuffle, num_workers, drop_last, generator, pin_memory
        As for :class:`torch.utils.data.DataLoader`. ``num_workers=0`` (the default)
        makes tiles in the calling process: on two cores that was the faster path for
        native and for resampled tiles alike (``benchmarks/tiles.py``: two workers gave
        0.6-0.8 of its rate; resampled tiles come from each process's cache of resampled
        images, so they cost about what native ones do). Workers pay off for costly
        transforms when cores are free.

    Returns
    -------
    torch.utils.data.DataLoader
        Iterate it for batch dicts.
    """
    if int(batch_size) != batch_size or batch_size < 1:
        raise InvalidArgumentError(f"batch_size must be a positive integer, got {batch_size!r}")
    if int(num_workers) != num_workers or num_workers < 0:
        raise InvalidArgumentError(f"num_workers must be a non-negative integer, got {num_workers!r}")
    base = (torch.utils.data.RandomSampler(tiles, generator=generator) if shuffle
            else torch.utils.data.SequentialSampler(tiles))
    batches = torch.utils.data.BatchSampler(base, int(batch_size), drop_last)
    return batch_loader(tiles, _tile_batch, batches, int(num_workers), pin_memory)


def tiles_of(datasets: Sequence[NucleusDataset], size: int = 256, stride: int | None = None,
             mpp: float | None = None, sampler: str = "grid", min_nuclei: int = 0,
             **options: Any) -> TileDataset:
    """A :class:`TileDataset` over ``datasets`` (see its parameters)."""
    return TileDataset(datasets, size, stride, mpp, sampler, min_nuclei, **options)
