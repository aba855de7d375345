"""Several datasets at once: what nucdata_models trains on."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import torch

from nucdata.dataset import NucleusDataset, Transform, load
from nucdata.errors import InvalidArgumentError
from nucdata.views import CropDataset, TileDataset, crops_of


class DatasetCollection(torch.utils.data.ConcatDataset):
    """Image datasets side by side; ``crops()`` gives one crop dataset over all of them."""

    def __init__(self, datasets: Sequence[NucleusDataset]):
        super().__init__(list(datasets))
        self.members: list[NucleusDataset] = list(datasets)
        self.names = [d.name for d in self.members]

    def crops(self, size: int = 64, context: float | None = None, mpp: float | None = None,
              assume_mpp: float | None = None) -> CropDataset:
        """Crops of every nucleus of every member, with ``dataset_index`` per item.

        ``mpp`` resamples every image from its own mpp first (see
        :meth:`NucleusDataset.crops`).
        """
        return crops_of(self.members, size, context, mpp=mpp, assume_mpp=assume_mpp)

    def tiles(self, size: int = 256, stride: int | None = None, mpp: float | None = None,
              sampler: str = "grid", min_nuclei: int = 0,
              weights: Sequence[float] | Mapping[str, float] | None = None, **options) -> TileDataset:
        """Tiles of every member at one resolution (see :class:`nucdata.views.TileDataset`).

        ``weights`` (random sampler only): relative sampling weight per dataset, as a
        sequence in member order or a mapping from dataset name; default equal.
        """
        return TileDataset(self.members, size, stride, mpp, sampler, min_nuclei, weights=weights, **options)

    def __repr__(self) -> str:
        inner = ", ".join(f"{d.name}: {len(d)} images, {int(d.nucleus_rows().size):,} nuclei" for d in self.members)
        sets = sorted({str(d.label_set) for d in self.members})
        return f"DatasetCollection({inner}; label_set={sets[0]!r})" if len(sets) == 1 else \
            f"DatasetCollection({inner}; label sets {', '.join(sets)})"


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
        dataset name to split (datasets name their splits differently). A mapping must
        name every dataset of ``names``; map one to ``None`` to take all its images.
    label_set
        Express every dataset's labels in this set; ``None`` keeps native codes.
    root, download, transforms
        As for :func:`nucdata.load`.

    Raises
    ------
    InvalidArgumentError
        When ``split`` is a mapping that leaves out some of ``names`` (a silent default
        to every image would put test images into a training set), or names a dataset
        that is not in ``names``.

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
    if isinstance(split, Mapping):
        missing = [n for n in names if n not in split]
        extra = [n for n in split if n not in names]
        if missing or extra:
            problems = []
            if missing:
                problems.append(f"no split for {', '.join(missing)}")
            if extra:
                problems.append(f"splits given for datasets not loaded: {', '.join(extra)}")
            example = ", ".join(f"{n!r}: {split.get(n, 'train')!r}" for n in names)
            raise InvalidArgumentError(
                f"load_many: {'; '.join(problems)}. Give a split for every dataset, or None to take "
                f"all its images: split={{{example}}}"
            )
    members = []
    for name in names:
        part = split[name] if isinstance(split, Mapping) else split
        members.append(load(name, part, label_set, root=root, download=download, transforms=transforms))
    return DatasetCollection(members)
