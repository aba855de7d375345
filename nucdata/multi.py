"""Several datasets at once: what nucdata_models trains on."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from .crops import CropDataset, build_bank
from .dataset import NucleusDataset, Transform, load


class DatasetCollection(torch.utils.data.ConcatDataset):
    """Image datasets side by side; ``crops()`` gives one crop dataset over all of them."""

    def __init__(self, datasets: Sequence[NucleusDataset]):
        super().__init__(list(datasets))
        self.members: list[NucleusDataset] = list(datasets)
        self.names = [d.name for d in self.members]

    def crops(self, size: int = 64, context: float | None = None) -> CropDataset:
        """Crops of every nucleus of every member, with ``dataset_index`` per item."""
        return crops_of(self.members, size, context)

    def __repr__(self) -> str:
        inner = ", ".join(f"{d.name}: {len(d)} images" for d in self.members)
        return f"DatasetCollection({inner})"


def crops_of(datasets: Sequence[NucleusDataset], size: int = 64, context: float | None = None) -> CropDataset:
    """One :class:`CropDataset` over the selected nuclei of ``datasets``.

    Parameters
    ----------
    datasets
        Image datasets; their splits choose the nuclei and their label sets the labels
        (``label_set`` of the result is set only when they all agree).
    size, context
        See :meth:`NucleusDataset.crops`; one bank per store is cut if needed.

    Returns
    -------
    CropDataset
        Items in dataset order, then store order; ``dataset_index`` says which.
    """
    banks, rows, labels, candidates, images = [], [], [], [], []
    for ds in datasets:
        banks.append(build_bank(ds.store, size, context))
        sel = ds._nucleus_selector()
        all_rows = np.arange(ds.store.n_nuclei)
        rows.append(all_rows[sel])
        labels.append(ds._labels)
        candidates.append(ds._candidates)
        images.append(np.asarray(ds.store.column("nuclei", "image")))
    label_sets = {ds.label_set for ds in datasets}
    return CropDataset(banks, [d.name for d in datasets], labels, candidates, images, rows,
                       label_set=label_sets.pop() if len(label_sets) == 1 else None)


def load_many(
    names: Sequence[str],
    split: str | None | Mapping[str, str | None] = None,
    label_set: str | None = None,
    *,
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    transforms: Transform | None = None,
) -> DatasetCollection:
    """Load several prepared datasets under one label set.

    Parameters
    ----------
    names
        Dataset names.
    split
        One split name for every dataset, ``None`` for every image, or a mapping from
        dataset name to split (datasets name their splits differently).
    label_set
        Express every dataset's labels in this set; ``None`` keeps native codes.
    root, download, transforms
        As for :func:`nucdata.load`.

    Returns
    -------
    DatasetCollection
        A ``ConcatDataset`` of the image datasets; ``.crops(size)`` gives one
        :class:`CropDataset` over all their nuclei with ``dataset_index`` per item.

    Examples
    --------
    >>> many = nucdata.load_many(["consep", "monusac"], label_set="pannuke")  # doctest: +SKIP
    >>> bank = many.crops(size=64).tensor("cuda")  # uint8 (N, 4, 64, 64)  # doctest: +SKIP
    """
    members = []
    for name in names:
        part = split.get(name) if isinstance(split, Mapping) else split
        members.append(load(name, part, label_set, root=root, download=download, transforms=transforms))
    return DatasetCollection(members)
