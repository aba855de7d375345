"""Loaders for a training loop: :class:`NucleusLoaders`, and :class:`NucleusDataModule` for Lightning.

:class:`NucleusLoaders` holds what a ``LightningDataModule`` holds (a dataset per split,
one view of them, the batch and worker settings) and makes the loaders, in plain Python:
it needs no Lightning and is what the tests exercise. :class:`NucleusDataModule` is the
same class as a ``lightning.LightningDataModule`` (the ``nucdata[lightning]`` extra):
Lightning is imported when one is made, never when nucdata is, and the instance is a
subclass of both, so ``Trainer.fit(model, datamodule=dm)`` takes it.

The splits are datasets the caller loaded (``nucdata.load(...)``, ``nucdata.load_many(...)``,
or a zero-argument callable returning one, called in :meth:`NucleusLoaders.setup`): this
layer knows views, not names, and a memory-mapped dataset is cheap to hold.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from nucdata.errors import InvalidArgumentError, MissingDependencyError
from nucdata.views._crops import crop_loader
from nucdata.views._loaders import collate
from nucdata.views._tiles import tile_loader

#: The views a module serves: per-nucleus crops, fixed-size tiles, or whole images.
VIEWS = ("crops", "tiles", "images")
SPLITS = ("train", "val", "test", "predict")
#: Lightning's stages -> the splits each needs.
STAGES = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",)}
_DEFAULT_SIZE = {"crops": 64, "tiles": 256}


class NucleusLoaders:
    """A dataset per split, one view of them, and their loaders: a DataModule without Lightning.

    Parameters
    ----------
    train, val, test, predict
        The split's data: a :class:`nucdata.NucleusDataset` or
        :class:`nucdata.DatasetCollection` (anything with ``crops()`` and ``tiles()``), a
        zero-argument callable returning one (called in :meth:`setup`), or ``None``.
    view
        ``"crops"`` (per-nucleus crops, :func:`nucdata.crop_loader`), ``"tiles"``
        (:func:`nucdata.tile_loader`) or ``"images"`` (whole image samples, collated by
        :func:`nucdata.collate`).
    size
        Crop or tile side in pixels (default 64 for crops, 256 for tiles).
    batch_size, num_workers
        As for a ``DataLoader``.
    shuffle_train
        Shuffle the training split (the others never are).
    view_options
        Keyword arguments of ``crops()`` or ``tiles()`` (``context``, ``mpp``, ``stride``, ``sampler`` ...).
    loader_options
        Keyword arguments of the loader (``drop_last``, ``pin_memory``, ``generator`` ...).

    Raises
    ------
    InvalidArgumentError
        For an unknown view, a batch size below 1, or negative workers.
    """

    def __init__(self, train: Any = None, val: Any = None, test: Any = None, predict: Any = None, *,
                 view: str = "crops", size: int | None = None, batch_size: int = 256, num_workers: int = 0,
                 shuffle_train: bool = True, view_options: Mapping[str, Any] | None = None,
                 loader_options: Mapping[str, Any] | None = None):
        super().__init__()  # cooperative: LightningDataModule.__init__ in NucleusDataModule
        if view not in VIEWS:
            raise InvalidArgumentError(f"view={view!r}: choose one of {', '.join(VIEWS)}")
        if int(batch_size) < 1 or int(num_workers) < 0:
            raise InvalidArgumentError(f"batch_size={batch_size}, num_workers={num_workers}: a batch holds at "
                                       "least one item and workers are 0 or more")
        self._arguments = {"train": train, "val": val, "test": test, "predict": predict, "view": view,
                           "size": size, "batch_size": batch_size, "num_workers": num_workers,
                           "shuffle_train": shuffle_train, "view_options": view_options,
                           "loader_options": loader_options}
        self.sources: dict[str, Any] = {"train": train, "val": val, "test": test, "predict": predict}
        self.view = view
        self.size = int(size) if size is not None else _DEFAULT_SIZE.get(view)
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.shuffle_train = bool(shuffle_train)
        self.view_options = dict(view_options or {})
        self.loader_options = dict(loader_options or {})
        #: The views made by :meth:`setup`, per split.
        self.datasets: dict[str, Any] = {}

    def setup(self, stage: str | None = None) -> None:
        """Make the views of the splits ``stage`` needs (every split given when ``None``); once each."""
        if stage is not None and stage not in STAGES:
            raise InvalidArgumentError(f"setup(stage={stage!r}): one of {', '.join(STAGES)} or None")
        for split in STAGES[stage] if stage is not None else SPLITS:
            if self.sources[split] is not None and split not in self.datasets:
                self.datasets[split] = self._make_view(split)

    def _make_view(self, split: str) -> Any:
        source = self.sources[split]
        if callable(source) and not hasattr(source, "crops"):
            source = source()
        if not (hasattr(source, "crops") and hasattr(source, "tiles")):
            raise InvalidArgumentError(f"{split}: a {type(source).__name__} is not a nucdata dataset; pass "
                                       "nucdata.load(...) or nucdata.load_many(...), or a callable returning one")
        if self.view == "crops":
            return source.crops(self.size, **self.view_options)
        if self.view == "tiles":
            return source.tiles(self.size, **self.view_options)
        return source

    def loader(self, split: str, shuffle: bool = False) -> Any:
        """The loader of one split (its view made first if needed).

        Returns
        -------
        nucdata.views.CropLoader or torch.utils.data.DataLoader
            Batches of crops (:func:`nucdata.crop_loader`), of tiles
            (:func:`nucdata.tile_loader`) or of image samples (:func:`nucdata.collate`).
        """
        if split not in SPLITS:
            raise InvalidArgumentError(f"split {split!r}: one of {', '.join(SPLITS)}")
        if self.sources[split] is None:
            raise InvalidArgumentError(f"no {split} data: pass {split}=nucdata.load(...) to "
                                       f"{type(self).__name__}")
        if split not in self.datasets:
            self.datasets[split] = self._make_view(split)
        data = self.datasets[split]
        if self.view == "crops":
            return crop_loader(data, self.batch_size, shuffle, self.num_workers, **self.loader_options)
        if self.view == "tiles":
            return tile_loader(data, self.batch_size, shuffle, self.num_workers, **self.loader_options)
        return torch.utils.data.DataLoader(data, batch_size=self.batch_size, shuffle=shuffle,
                                           num_workers=self.num_workers, collate_fn=collate, **self.loader_options)

    def train_dataloader(self) -> Any:
        """The training split's loader (shuffled unless ``shuffle_train=False``)."""
        return self.loader("train", self.shuffle_train)

    def val_dataloader(self) -> Any:
        """The validation split's loader, in order."""
        return self.loader("val")

    def test_dataloader(self) -> Any:
        """The test split's loader, in order."""
        return self.loader("test")

    def predict_dataloader(self) -> Any:
        """The prediction split's loader, in order."""
        return self.loader("predict")

    def __repr__(self) -> str:
        given = ", ".join(f"{s}={self.datasets.get(s, self.sources[s])!r}" for s in SPLITS
                          if self.sources[s] is not None)
        size = f", size={self.size}" if self.size is not None else ""
        return (f"{type(self).__name__}({given or 'no splits'}; view={self.view!r}{size}, "
                f"batch_size={self.batch_size}, num_workers={self.num_workers})")


def _lightning_base() -> type:
    """``LightningDataModule`` from ``lightning`` (or the older ``pytorch_lightning``)."""
    try:
        from lightning.pytorch import LightningDataModule
    except ImportError:
        try:
            from pytorch_lightning import LightningDataModule
        except ImportError:
            raise MissingDependencyError(
                "lightning", "nucdata.NucleusDataModule (`pip install nucdata[lightning]`; NucleusLoaders gives "
                "the same loaders without Lightning)") from None
    return LightningDataModule


_CLASSES: dict[tuple[type, type], type] = {}


def _with_lightning(cls: type, base: type) -> type:
    key = (cls, base)
    if key not in _CLASSES:
        _CLASSES[key] = type(cls.__name__, (cls, base), {"__module__": cls.__module__, "__qualname__": cls.__qualname__,
                                                           "__doc__": cls.__doc__})
    return _CLASSES[key]


def _rebuild(arguments: dict[str, Any]) -> NucleusDataModule:
    return NucleusDataModule(**arguments)


class NucleusDataModule(NucleusLoaders):
    """:class:`NucleusLoaders` as a ``lightning.LightningDataModule`` (the ``nucdata[lightning]`` extra).

    Made with :class:`NucleusLoaders`' parameters; the instance is also a
    ``LightningDataModule``, so ``lightning.Trainer`` calls its ``setup(stage)`` and
    ``*_dataloader()``. Crop and tile batches come from nucdata's own loaders (iterables of
    batch dicts, which Lightning 2 accepts); Lightning does not insert its distributed
    sampler into them: with several processes, give each its share of the data.

    Examples
    --------
    >>> dm = nucdata.NucleusDataModule(                                   # doctest: +SKIP
    ...     train=nucdata.load("consep", split="train", label_set="pannuke"),
    ...     val=nucdata.load("consep", split="test", label_set="pannuke"), view="crops", size=64)
    >>> lightning.Trainer(max_epochs=1).fit(model, datamodule=dm)          # doctest: +SKIP

    Raises
    ------
    MissingDependencyError
        When neither ``lightning`` nor ``pytorch_lightning`` is installed.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> NucleusDataModule:
        base = _lightning_base()
        return super().__new__(cls if issubclass(cls, base) else _with_lightning(cls, base))

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return _rebuild, (self._arguments,)
