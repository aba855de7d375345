"""The one place where nucdata_models meets nucdata's datasets: crop banks to :class:`TrainingData`.

``nucdata`` is imported inside the functions only; everything else in this package
works on plain tensors.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from nucdata.errors import InvalidArgumentError
from nucdata_models.data import (
    AMBIGUOUS,
    ANNOTATED,
    MAPPED,
    NO_LABEL,
    OUTSIDE_LABEL,
    LabelSetSpec,
    TrainingData,
)

__all__ = ["from_crop_dataset", "label_columns", "source_columns", "training_data"]


def label_columns(store, label_set: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, candidates and provenance of one store's nuclei under one label set.

    The labels and candidates are :func:`nucdata.labels.translate_store_labels` (the
    one tissue-aware translation of a store, so they equal ``nucdata.load(name,
    label_set=...)``'s). A nucleus is *annotated* in a set when the set is its own
    dataset's vocabulary (``nucdata.labels.OWN_LABEL_SET``) and it has a label;
    otherwise its label comes from the mapping tables: *mapped* (an exact row),
    *ambiguous* (a candidate set), *outside*, or none.

    Parameters
    ----------
    store
        A ``nucdata.store.Store`` (``NucleusDataset.store``), every nucleus in store order.
    label_set
        The label set's name.
    """
    from nucdata.labels import OWN_LABEL_SET, translate_store_labels

    labels, candidates = translate_store_labels(store, label_set)
    own = OWN_LABEL_SET.get(store.dataset) == label_set
    provenance = np.full(labels.shape, NO_LABEL, np.int8)
    provenance[candidates != 0] = AMBIGUOUS
    provenance[labels >= 0] = ANNOTATED if own else MAPPED
    provenance[labels == -2] = OUTSIDE_LABEL
    return labels.astype(np.int64), candidates.astype(np.int64), provenance


def source_columns(store) -> tuple[np.ndarray, dict[int, str]]:
    """The native class code of each of a store's nuclei and the names of its dataset's codes.

    The codes are what the dataset's annotators wrote (``nuclei/label``, -1 none),
    the source the mapping tables translate; :attr:`TrainingData.source_class` holds
    them. Which *row* of a table a code took (PanNuke's tissue-conditional rows) is
    told apart by the candidate set it gave (:func:`nucdata_models.data.source_rows`),
    so the tissue is not needed here.
    """
    from nucdata.errors import UnknownDatasetError
    from nucdata.labels import native_vocabulary, translate_store_labels

    codes, _ = translate_store_labels(store, None)
    try:
        names = {int(code): str(name) for code, name, _ in native_vocabulary(store.dataset)}
    except UnknownDatasetError:  # a dataset without a mapping file has no vocabulary to name
        names = {}
    return codes.astype(np.int64), names


def training_data(members: Sequence, crops, label_sets: Sequence[str], split: torch.Tensor | None = None
                  ) -> TrainingData:
    """Build :class:`TrainingData` from whole-store datasets and their crop bank.

    Parameters
    ----------
    members
        ``nucdata.NucleusDataset`` objects loaded with ``split=None`` (every nucleus, in
        store order), in the order of ``crops``.
    crops
        ``nucdata.collection.crops_of(members, size)``.
    label_sets
        Label-set names, in head order.
    split
        Per nucleus: 0 train, 1 validation, 2 test, 3 neither; default all 0.
    """
    from nucdata.labels import label_set

    specs = [LabelSetSpec(ls.name, ls.version, tuple(ls.names)) for ls in map(label_set, label_sets)]
    columns: dict[str, list[list[np.ndarray]]] = {s.name: [[], [], []] for s in specs}
    sources, source_names = [], {}
    for member in members:
        codes, names = source_columns(member.store)
        sources.append(codes)
        source_names[member.name] = names
        for spec in specs:
            for part, column in zip(columns[spec.name], label_columns(member.store, spec.name), strict=True):
                part.append(column)
    n = len(crops)
    joined = {name: [torch.from_numpy(np.concatenate(part)) for part in parts] for name, parts in columns.items()}
    mpps = {float(m) for member in members for m in np.asarray(member.store.column("images", "mpp"))
            if np.isfinite(m) and m > 0}
    return TrainingData(
        crops=crops.tensor(), label_sets=specs,
        labels={k: v[0] for k, v in joined.items()}, candidates={k: v[1] for k, v in joined.items()},
        provenance={k: v[2] for k, v in joined.items()},
        dataset_index=torch.from_numpy(np.asarray(crops.dataset_index, np.int64).copy()),
        dataset_names=[m.name for m in members],
        split=split if split is not None else torch.zeros(n, dtype=torch.int64),
        mpp=mpps.pop() if len(mpps) == 1 else None,
        source_class=torch.from_numpy(np.concatenate(sources)) if sources else None,
        source_names=source_names,
    )


def from_crop_dataset(crops, label_sets: Sequence[str], splits: torch.Tensor | None = None,
                      members: Sequence | None = None) -> TrainingData:
    """:func:`training_data` for a crop dataset of whole stores (``load_many(...).crops()``).

    ``members`` are the image datasets the crops were cut from; without them, the
    crop dataset's own ``members`` are used.
    """
    members = members if members is not None else getattr(crops, "members", None)
    if members is None:
        raise InvalidArgumentError("from_crop_dataset needs the image datasets: pass members=[...] "
                         "(the datasets given to crops_of)")
    return training_data(members, crops, label_sets, splits)
