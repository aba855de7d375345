"""The one place where nucdata_models meets nucdata: crop banks to :class:`TrainingData`.

``nucdata`` is imported inside the functions only, so ``import nucdata_models`` never
imports it; everything else in this package works on plain tensors.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .data import LabelSetSpec, TrainingData

__all__ = ["from_crop_dataset"]


def from_crop_dataset(crops, label_sets: Sequence[str], splits: torch.Tensor | None = None) -> TrainingData:
    """Build :class:`TrainingData` from a ``nucdata`` crop dataset (all its label sets).

    ``crops`` is a :class:`nucdata.CropDataset` over several datasets (``load_many(...)
    .crops()``); labels and candidates are computed under every set in ``label_sets``
    from each nucleus's native label.
    """
    import numpy as np

    from nucdata.labelsets import label_set, translate

    bank = crops.tensor()
    specs = [LabelSetSpec(ls.name, ls.version, tuple(ls.names)) for ls in map(label_set, label_sets)]
    labels: dict[str, torch.Tensor] = {}
    cands: dict[str, torch.Tensor] = {}
    natives = []
    for d, bank_ in enumerate(crops.banks):
        rows = crops.rows[d]
        store_labels = np.asarray(_store_of(bank_).column("nuclei", "label"))[rows]
        natives.append((crops.datasets[d], store_labels))
    for spec in specs:
        per_l, per_c = [], []
        for name, native in natives:
            lab, cand = translate(name, native, spec.name)
            per_l.append(lab)
            per_c.append(cand)
        labels[spec.name] = torch.from_numpy(np.concatenate(per_l))
        cands[spec.name] = torch.from_numpy(np.concatenate(per_c))
    n = len(crops)
    return TrainingData(
        crops=bank, label_sets=specs, labels=labels, candidates=cands,
        dataset_index=torch.from_numpy(crops.dataset_index.copy()), dataset_names=list(crops.datasets),
        split=splits if splits is not None else torch.zeros(n, dtype=torch.int64),
    )


def _store_of(bank):
    from nucdata.store import Store

    return Store(bank.path.parent.parent)
