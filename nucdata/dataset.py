"""The PyTorch dataset over one store, with xarray views of its tables."""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
import xarray as xr

from nucdata._util.codes import PROVENANCE
from nucdata._util.deprecation import renamed_keywords
from nucdata.catalog import get_card
from nucdata.errors import DatasetNotFoundError, InvalidArgumentError, MissingDependencyError
from nucdata.store import MergedLabels, Store

Sample = dict[str, Any]
Transform = Callable[[Sample], Sample]


def _read_only(array: np.ndarray) -> np.ndarray:
    view = array.view()
    view.flags.writeable = False
    return view


def _contiguous(indices: np.ndarray) -> slice | None:
    if indices.size == 0:
        return slice(0, 0)
    if indices[-1] - indices[0] + 1 == indices.size:
        return slice(int(indices[0]), int(indices[-1]) + 1)
    return None


def select_images(
    store: Store, split: str | None, protocols: dict[str, dict[str, list[str]]] | None = None
) -> np.ndarray:
    """Indices of the images of ``split``.

    ``split`` is a stored split name, ``None`` for every image, or
    ``"<protocol>/<part>"`` for a protocol of the card (PanNuke's fold rotations:
    ``"rotation1/train"`` is fold 1), which may join several stored splits.
    """
    splits = np.asarray(store.column("images", "split"))
    if split is None:
        return np.arange(splits.shape[0])
    known = list(dict.fromkeys(splits.tolist()))
    protocols = protocols or {}
    choices = known + [f"{p}/{part}" for p, parts in protocols.items() for part in parts]
    if split in known:
        return np.flatnonzero(splits == split)
    protocol, _, part = split.partition("/")
    if part and part in protocols.get(protocol, {}):
        return np.flatnonzero(np.isin(splits, protocols[protocol][part]))
    import difflib

    close = difflib.get_close_matches(str(split), choices, n=1)
    raise InvalidArgumentError(
        f"{store.dataset}: unknown split {split!r}{f' (did you mean {close[0]!r}?)' if close else ''}; valid splits: "
        f"{', '.join(choices)} (leave the split out for every image: no --split, or split=None)"
    )


class NucleusDataset(torch.utils.data.Dataset):
    """Map-style dataset of images, each with its nuclei, from one store.

    Each sample is a dict::

        image         uint8 tensor (3, H, W)
        instance_map  int32 tensor (H, W); 0 background, k the k-th nucleus
        centroids     float32 (K, 2), x then y, pixel units
        labels        int64 (K,); native code, or the class under ``label_set``
                      (-1 missing, -2 outside the set)
        candidates    int64 (K,); bitmask over the label set's classes, bit len(set)
                      meaning "possibly outside the set" (0: no information)
        image_id      str
        dataset       str

    Use :func:`nucdata.load` rather than the constructor.
    """

    def __init__(
        self,
        store: Store,
        split: str | None = None,
        label_set: str | None = None,
        transforms: Transform | None = None,
        protocols: dict[str, dict[str, list[str]]] | None = None,
        *,
        merged: MergedLabels | None = None,
    ):
        self.store = store
        self.name = store.dataset
        self.split = split
        self.label_set = label_set
        self.transforms = transforms
        self.indices = select_images(store, split, protocols)
        self._merged: dict[str, np.ndarray] | None = None
        if merged is not None:  # labels from a build-merged output (nucdata.store)
            from nucdata.labels import label_set as get_label_set

            vocabulary = get_label_set(merged.label_set)
            self.label_set = vocabulary.name
            self._merged = merged.columns
            self._labels = np.asarray(merged.label, np.int64)
            bits = np.left_shift(np.int64(1), np.clip(self._labels, 0, 62))
            outside = np.int64(1) << np.int64(len(vocabulary))
            self._candidates = np.where(self._labels >= 0, bits, np.where(self._labels == -2, outside, 0))
        else:  # native codes, or the one tissue-aware translation of the store's labels
            from nucdata.labels import translate_store_labels

            self._labels, self._candidates = translate_store_labels(store, label_set)

    # -- torch Dataset ---------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.indices.size)

    def __getitem__(self, i: int) -> Sample:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} images")
        index = int(self.indices[i])
        rows = self.store.nucleus_slice(index)
        sample: Sample = {
            "image": torch.from_numpy(np.array(self.store.planes(index))),  # planar in the store: one copy
            "instance_map": torch.from_numpy(np.array(self.store.instance_map(index))),
            "centroids": torch.from_numpy(np.array(self.store.column("nuclei", "centroid")[rows])),
            "labels": torch.from_numpy(self._labels[rows].copy()),
            "candidates": torch.from_numpy(self._candidates[rows].copy()),
            "image_id": str(self.store.column("images", "name")[index]),
            "dataset": self.name,
        }
        if self._merged is not None:  # a merged dataset: where each label came from, and how sure
            source = np.array(self._merged["source"][rows], np.int64)
            sample["probabilities"] = torch.from_numpy(np.array(self._merged["probability"][rows]))
            sample["sources"] = torch.from_numpy(source)
            sample["annotated"] = torch.from_numpy(source == PROVENANCE.index("annotated"))
        return self.transforms(sample) if self.transforms is not None else sample

    def __repr__(self) -> str:
        names = [name for name, _ in self.classes.values()]
        shown = ", ".join(names[:8]) + (f", ... ({len(names)} classes)" if len(names) > 8 else "")
        merged = ", merged" if self._merged is not None else ""
        return (
            f"NucleusDataset({self.name!r}, split={self.split!r}, label_set={self.label_set!r}{merged}, "
            f"images={len(self)}, nuclei={int(self.nucleus_rows().size):,}, classes=[{shown}], "
            f"store={str(self.store.path)!r})"
        )

    def ignore_mask(self, i: int) -> np.ndarray:
        """``(H, W)`` bool mask of the areas to ignore in sample ``i`` (all False if none).

        Built from the image column ``ignore_polygons`` (docs/store-format.md; MoNuSAC's
        Ambiguous regions): predictions inside these areas are not scored by the
        official protocol, and tiles can mask them. A pixel is inside when its centre is
        (the ImageScope corner convention).
        """
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} images")
        index = int(self.indices[i])
        h = int(self.store.column("images", "height")[index])
        w = int(self.store.column("images", "width")[index])
        mask = np.zeros((h, w), bool)
        if "ignore_polygons" not in self.store.image_columns():
            return mask
        import json

        from skimage.draw import polygon as fill_polygon

        for vertices in json.loads(str(self.store.column("images", "ignore_polygons")[index]) or "[]"):
            v = np.asarray(vertices, np.float64).reshape(-1, 2)
            rr, cc = fill_polygon(v[:, 1] - 0.5, v[:, 0] - 0.5, shape=(h, w))
            mask[rr, cc] = True
        return mask

    # -- crops and plots --------------------------------------------------------------
    def crops(self, size: int = 64, context: float | None = None, mpp: float | None = None,
              assume_mpp: float | None = None):
        """Per-nucleus crops of this dataset's nuclei (see :mod:`nucdata.views`).

        The crops are cut once into a memory-mapped bank beside the store and served
        from it; the bank is cut again only when the store is rebuilt.

        Parameters
        ----------
        size
            Crop side in pixels (at ``mpp`` when given, else at the native resolution).
        context
            ``None``: a fixed ``size`` window around each centroid (nuclei that do not
            fit are cut as their enclosing square and resized). A number: every crop
            covers ``context`` times the nucleus's bounding-box side, resized to ``size``.
        mpp
            Cut from the images resampled to this many microns per pixel (anti-aliased
            pixels, nearest-neighbour masks; see :mod:`nucdata.views`). ``scale`` then
            counts output pixels per native pixel.
        assume_mpp
            mpp for images that have none (else such images raise
            :class:`nucdata.views.MissingMppError`).

        Returns
        -------
        nucdata.CropDataset
            A map-style dataset over this split's nuclei, labels under this label set.
        """
        from nucdata.views import crops_of

        return crops_of([self], size, context, mpp=mpp, assume_mpp=assume_mpp)

    def tiles(self, size: int = 256, stride: int | None = None, mpp: float | None = None,
              sampler: str = "grid", min_nuclei: int = 0, **options: Any):
        """Fixed-size tiles with instance and type maps, for segmenters (:mod:`nucdata.views`).

        Parameters
        ----------
        size
            Tile side in pixels (at ``mpp`` when given).
        stride
            Grid step; default ``size`` (every pixel exactly once, edge tiles padded).
        mpp
            Resample each image from its own mpp to this one (``None``: native).
        sampler
            ``"grid"`` or ``"random"``.
        min_nuclei
            Keep only tiles with at least this many nuclei centred in them.
        **options
            ``length``, ``seed``, ``edge``, ``assume_mpp``, ``transforms``: see
            :class:`nucdata.views.TileDataset`.

        Returns
        -------
        nucdata.views.TileDataset
            Map-style dataset of tile dicts (``image``, ``instance_map``, ``type_map``, ...).
        """
        from nucdata.views import tiles_of

        return tiles_of([self], size, stride, mpp, sampler, min_nuclei, **options)

    def patches(self, size: int = 256, mpp: float | None = None, labels: Any = None,
                label_set: str | None = None, assume_mpp: float | None = None):
        """Grid patches with their class-presence flags (:class:`nucdata.views.PatchDataset`).

        Parameters
        ----------
        size
            Patch side in pixels (at ``mpp`` when given).
        mpp
            Resample each image to this many microns per pixel (``None``: native).
        labels
            A :class:`nucdata.views.PatchLabels` table (imported, or derived before);
            ``None`` derives the flags from this dataset's nucleus labels on the same grid
            (:func:`nucdata.views.derive_patch_labels`).
        label_set
            The flags' label set when they are derived (default: this dataset's).
        assume_mpp
            µm/px for images that have none.

        Returns
        -------
        nucdata.views.PatchDataset
            Map-style dataset of patch dicts: the tile (``image``, ``instance_map``, ...),
            every nucleus in it (``point_*``, masked or a point) and ``flags``.
        """
        from nucdata.views import PatchDataset

        return PatchDataset(self, size, mpp, labels, label_set, assume_mpp)

    def plot(self, sample_or_index: int | Mapping[str, Any], prediction: Any = None, ax: Any = None,
             show_titles: bool = True, suptitle: str | None = None) -> Any:
        """Draw one image with nucleus outlines coloured by class; a prediction beside it (needs matplotlib).

        Parameters
        ----------
        sample_or_index
            The image's position in this dataset, or a sample ``ds[i]`` returned.
        prediction
            Optional predicted class per nucleus of that image (array or tensor ``(K,)``
            in the sample's nucleus order, or a dict with ``labels``): drawn with dashed
            outlines on a second panel, to the right of the dataset's labels.
        ax
            A matplotlib axis, or two with ``prediction``; a new figure when ``None``.
        show_titles, suptitle
            Panel titles (the image's name) and a figure title.

        Returns
        -------
        matplotlib.figure.Figure

        Raises
        ------
        nucdata.MissingDependencyError
            Without matplotlib (``nucdata overlay`` and :func:`nucdata.views.render_overlay`
            draw the same with Pillow).
        """
        from nucdata.views import plot_sample

        if ax is None and hasattr(prediction, "imshow"):  # the old plot(index, ax) call
            prediction, ax = None, prediction
        return plot_sample(self, sample_or_index, prediction, ax, show_titles, suptitle)

    @property
    def classes(self) -> dict[int, tuple[str, tuple[int, int, int]]]:
        """The classes this dataset's labels name: id (or native code) -> (name, RGB colour).

        Under a label set, its classes and their colours; with native labels, the
        dataset's native vocabulary (codes as its files define them) with a fixed palette.
        The one home of class names and colours for exports and overlays.
        """
        from nucdata.labels import label_set, native_vocabulary

        if self.label_set is not None:
            return {c.id: (c.name, tuple(int(v) for v in c.rgb)) for c in label_set(self.label_set)}
        rng = np.random.default_rng(7)
        palette = [tuple(int(v) for v in c) for c in rng.integers(40, 230, (32, 3))]
        return {code: (name, palette[i % 32]) for i, (code, name, _) in enumerate(native_vocabulary(self.name))}

    @property
    def vocabulary(self) -> str:
        """The name of the vocabulary :attr:`classes` come from (a label set, or ``<dataset> (native)``)."""
        from nucdata.labels import label_set

        return label_set(self.label_set).name if self.label_set is not None else f"{self.name} (native)"

    # -- tables ----------------------------------------------------------------------
    @property
    def manifest(self) -> dict[str, Any]:
        return self.store.manifest

    @property
    def card(self):
        return get_card(self.name)

    # -- the public, read-only surface other modules use -----------------------------
    @property
    def labels(self) -> np.ndarray:
        """Per-nucleus labels of the whole store, in store order (read-only).

        Native codes without a label set; the class under it (-1 missing, -2 outside);
        the merged label for a dataset loaded with ``merged=``. Index with
        :meth:`nucleus_rows` or :meth:`nucleus_selector` for this selection's nuclei.
        """
        return _read_only(self._labels)

    @property
    def candidates(self) -> np.ndarray:
        """Per-nucleus candidate bitmasks of the whole store, in store order (read-only)."""
        return _read_only(self._candidates)

    @property
    def provenance(self) -> np.ndarray | None:
        """For a merged dataset, where each nucleus's label came from; else None.

        Per-nucleus codes in store order (read-only), indices into
        ``nucdata.PROVENANCE`` (``"annotated"``, ``"mapped"``, ...; the merged output's
        ``source`` column).
        """
        return None if self._merged is None else _read_only(np.asarray(self._merged["source"]))

    @property
    def sources(self) -> np.ndarray | None:
        """Deprecated alias of :attr:`provenance` (it will be removed in the next release)."""
        warnings.warn("NucleusDataset.sources is deprecated; use NucleusDataset.provenance (it will be "
                      "removed in the next release)", DeprecationWarning, stacklevel=2)
        return self.provenance

    @property
    def merged_columns(self) -> dict[str, np.ndarray] | None:
        """For a merged dataset, its per-nucleus columns in store order; else None."""
        return None if self._merged is None else {k: _read_only(np.asarray(v)) for k, v in self._merged.items()}

    def nucleus_selector(self) -> slice | np.ndarray:
        """Store rows of the selected images' nuclei, as a slice when contiguous."""
        return self._nucleus_selector()

    def nucleus_rows(self) -> np.ndarray:
        """Store rows of the selected images' nuclei, in order."""
        return self._nucleus_rows()

    def image_rows(self) -> np.ndarray:
        """Store rows of the selected images, in order."""
        return self._image_rows()

    def subset(self, positions: Any) -> NucleusDataset:
        """A view of some of this dataset's images (positions, a slice or a mask), same labels."""
        view = copy.copy(self)
        view.indices = np.asarray(self.indices)[positions].astype(np.int64).reshape(-1)
        return view

    def _image_selector(self) -> slice | np.ndarray:
        run = _contiguous(self.indices)
        return run if run is not None else self.indices

    def _nucleus_selector(self) -> slice | np.ndarray:
        sel = self._image_selector()
        start = np.asarray(self.store.column("images", "nucleus_start"))
        count = np.asarray(self.store.column("images", "nucleus_count"))
        if isinstance(sel, slice):
            if sel.stop <= sel.start:
                return slice(0, 0)
            return slice(int(start[sel.start]), int(start[sel.stop - 1] + count[sel.stop - 1]))
        return np.concatenate([np.arange(start[i], start[i] + count[i]) for i in sel]).astype(np.int64)

    def _image_rows(self) -> np.ndarray:
        """Store rows of the selected images, in order."""
        return np.asarray(self.indices, np.int64)

    def _nucleus_rows(self) -> np.ndarray:
        """Store rows of the selected nuclei, in order."""
        return np.arange(self.store.n_nuclei, dtype=np.int64)[self._nucleus_selector()]

    @property
    def images(self) -> xr.Dataset:
        """Per-image table (dim ``image``), memory-mapped views when the split is contiguous.

        The coordinate ``image`` counts from 0 within this selection, so
        ``ds.images.sel(image=i)`` describes ``ds[i]``; ``store_row`` is the image's row
        in the store (what crops call ``image_index``). ``nucleus_start`` is the
        position of the image's first nucleus in :attr:`nuclei` (the store's own
        offset is kept as ``store_nucleus_start``).
        """
        sel = self._image_selector()
        data: dict[str, Any] = {key: ("image", self.store.column("images", key)[sel]) for key in self.store.image_columns()}
        if "nucleus_start" in data and "nucleus_count" in data:
            count = np.asarray(data["nucleus_count"][1], np.int64)
            data["store_nucleus_start"] = data["nucleus_start"]
            data["nucleus_start"] = ("image", np.concatenate([[0], np.cumsum(count)[:-1]]).astype(np.int64)[:count.size])
        data["store_row"] = ("image", self._image_rows())
        return xr.Dataset(
            data,
            coords={"image": np.arange(len(self))},
            attrs={"dataset": self.name, "split": str(self.split)},
        )

    @property
    def nuclei(self) -> xr.Dataset:
        """Per-nucleus table (dim ``nucleus``), memory-mapped views when possible.

        The coordinate ``nucleus`` counts from 0 within this selection; ``store_row`` is
        the nucleus's row in the store (what crops call ``nucleus_index``). ``image`` is
        the position of the nucleus's image in this selection — ``ds[image]`` holds the
        nucleus and ``ds.images.sel(image=...)`` describes it — and ``image_store_row``
        its row in the store.

        Under a label set, ``label`` and ``candidates`` are in that set and the
        native code is kept as ``native_label``.

        ``centroid`` (dims ``nucleus, xy``) and ``bbox`` (dims ``nucleus, corner``) are
        two-dimensional, so ``to_dataframe()`` of the whole table repeats every nucleus
        once per coordinate pair; :meth:`nuclei_frame` gives one row per nucleus.
        """
        sel = self._nucleus_selector()
        data: dict[str, Any] = {}
        for key in self.store.nucleus_columns():
            column = self.store.column("nuclei", key)[sel]
            if key == "centroid":
                data[key] = (("nucleus", "xy"), column)
            elif key == "bbox":
                data[key] = (("nucleus", "corner"), column)
            elif column.ndim == 1:
                data[key] = ("nucleus", column)
            else:
                data[key] = (("nucleus", *(f"{key}_dim{d}" for d in range(1, column.ndim))), column)
        if "image" in data:
            store_image = np.asarray(data["image"][1], np.int64)
            data["image_store_row"] = ("nucleus", store_image)
            data["image"] = ("nucleus", np.searchsorted(self._image_rows(), store_image).astype(np.int64))
        data["store_row"] = ("nucleus", self._nucleus_rows())
        if self.label_set is not None:
            data["native_label"] = data.pop("label")
            data["label"] = ("nucleus", self._labels[sel])
            data["candidates"] = ("nucleus", self._candidates[sel])
        for key, column in (self._merged or {}).items():
            if key != "label":
                data[key] = ("nucleus", column[sel])
        return xr.Dataset(
            data,
            coords={
                "nucleus": np.arange(data["store_row"][1].size),
                "xy": ["x", "y"],
                "corner": ["x0", "y0", "x1", "y1"],
            },
            attrs={"dataset": self.name, "split": str(self.split), "label_set": str(self.label_set)},
        )

    def nuclei_frame(self) -> Any:
        """:attr:`nuclei` as a pandas DataFrame with one row per nucleus.

        ``centroid`` becomes the columns ``x`` and ``y``, ``bbox`` the columns ``x0``,
        ``y0``, ``x1``, ``y1``; every other per-nucleus variable keeps its name (other
        multi-dimensional columns, if any, are left out). The index is the ``nucleus``
        coordinate (0-based within this selection).

        Returns
        -------
        pandas.DataFrame
        """
        import pandas as pd

        table = self.nuclei
        columns: dict[str, Any] = {}
        for name, var in table.data_vars.items():
            if var.dims == ("nucleus",):
                columns[str(name)] = var.values
            elif name == "centroid":
                columns.update({axis: var.sel(xy=axis).values for axis in ("x", "y")})
            elif name == "bbox":
                columns.update({corner: var.sel(corner=corner).values for corner in ("x0", "y0", "x1", "y1")})
        return pd.DataFrame(columns, index=pd.Index(table.nucleus.values, name="nucleus"))

    def chunked(self, table: str = "nuclei", chunks: int | dict[str, int] | None = None) -> xr.Dataset:
        """:attr:`nuclei` or :attr:`images` as dask-backed arrays, without copying the memory map.

        The same as ``ds.nuclei.chunk(chunks)``, but says how to install dask when it
        is missing (it is the optional extra ``nucdata[dask]``).

        Parameters
        ----------
        table
            ``"nuclei"`` or ``"images"``.
        chunks
            Passed to :meth:`xarray.Dataset.chunk`, e.g. ``{"nucleus": 100_000}``;
            ``None`` chunks 100,000 rows at a time.

        Raises
        ------
        MissingDependencyError
            When dask is not installed.
        InvalidArgumentError
            For a table other than ``"nuclei"`` or ``"images"``.
        """

        if table not in ("nuclei", "images"):
            raise InvalidArgumentError(f"unknown table {table!r}; valid tables: nuclei, images")
        try:
            import dask.array  # noqa: F401
        except ImportError:
            raise MissingDependencyError(
                '"nucdata[dask]"', f"ds.chunked({table!r}) (dask-backed xarray tables)"
            ) from None
        dim = "nucleus" if table == "nuclei" else "image"
        return getattr(self, table).chunk(chunks if chunks is not None else {dim: 100_000})


@renamed_keywords(source="merged")
def load(
    name: str,
    split: str | None = None,
    label_set: str | None = None,
    *,
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    transforms: Transform | None = None,
    merged: str | os.PathLike[str] | None = None,
) -> NucleusDataset:
    """Open a prepared dataset as a PyTorch map-style dataset.

    Parameters
    ----------
    name
        Dataset name (see ``nucdata.list_datasets()``).
    split
        One of the card's splits, or ``None`` for every image.
    label_set
        Express labels in this label set (``nucdata.list_label_sets()``); ``None``
        keeps native codes.
    root
        Data home; defaults to ``$NUCDATA_HOME`` or the platform cache folder.
    download
        Fetch and prepare the dataset when it is not prepared yet. Without it,
        ``load`` never touches the network and never re-hashes anything.
    transforms
        ``dict -> dict`` callable applied to every sample, last.
    merged
        A ``nucdata build-merged`` output folder: labels under ``label_set`` are then the
        merged ones (annotated, mapped, ambiguous-resolved, outside or predicted — see
        :mod:`nucdata.store`); each sample gains ``probabilities``, ``sources`` (indices
        into ``nucdata.store.PROVENANCE``) and ``annotated``. The output folder stands
        alone: it carries its own copy of the store. (``source=`` is its deprecated old
        name.)

    Raises
    ------
    DatasetNotFoundError
        When the dataset is not prepared and ``download`` is false; says how to get it.
    """
    from nucdata.acquire import is_prepared, prepare, store_path

    if merged is not None:
        return _load_merged(name, split, label_set, root, transforms, merged)
    card = get_card(name, root)
    if not is_prepared(card.name, root):
        if not download:
            raise DatasetNotFoundError(
                f"{card.name} is not prepared in {store_path(card.name, root).parent}. Run "
                f"`nucdata prepare {card.name}` (or load(..., download=True)). "
                f"Manual route: {card.instructions(root)}"
            )
        prepare(card.name, root=root)
    store = Store(store_path(card.name, root))
    # Protocols come from the card, or from the native files themselves (NuCLS folds).
    protocols = {**card.extra.get("protocols", {}), **store.manifest.get("extra", {}).get("protocols", {})}
    return NucleusDataset(store, split, label_set, transforms, protocols=protocols)


def _load_merged(name, split, label_set, root, transforms, source) -> NucleusDataset:
    from nucdata.labels import label_set as get_label_set
    from nucdata.store import check_format, read_merged_labels

    if label_set is None:
        raise InvalidArgumentError("a merged dataset is read under a label set: pass label_set=")
    check_format(source)  # nucdata's output, of this format version
    card = get_card(name, root)
    vocabulary = get_label_set(get_label_set_name(label_set))  # codes must be its classes' (issue 21)
    store_dir, merged = read_merged_labels(source, card.name, vocabulary.name, n_classes=len(vocabulary))
    store = Store(store_dir)
    if merged.label.shape[0] != store.n_nuclei:
        raise DatasetNotFoundError(f"{store_dir}: {store.n_nuclei} nuclei but {merged.label.shape[0]} merged "
                                   f"labels; the output {source} is damaged — rerun nucdata build-merged.")
    protocols = {**card.extra.get("protocols", {}), **store.manifest.get("extra", {}).get("protocols", {})}
    return NucleusDataset(store, split, None, transforms, protocols=protocols, merged=merged)


def get_label_set_name(name: str) -> str:
    """The canonical name of a label set (raises a typed error for an unknown one)."""
    from nucdata.labels import label_set

    return label_set(name).name
