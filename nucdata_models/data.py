"""The training data contract: crops plus, per label set, labels and candidate bitmasks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class LabelSetSpec:
    """A label set as the models see it: name, version and class names in id order."""

    name: str
    version: str
    class_names: tuple[str, ...]

    @property
    def size(self) -> int:
        return len(self.class_names)


@dataclass
class TrainingData:
    """Everything the three stages train on, as tensors.

    Attributes
    ----------
    crops
        uint8 ``(N, C, S, S)``; C = 3 (RGB) or 4 (RGB + nucleus mask).
    label_sets
        The label sets, in head order.
    labels
        Per set, int64 ``(N,)``: class id, -1 missing, -2 outside the set.
    candidates
        Per set, int64 ``(N,)`` bitmask over the set's classes; 0 = no information,
        one bit = exact, several = ambiguous (a partial label).
    dataset_index, dataset_names
        Source dataset of each nucleus.
    split
        int ``(N,)``: 0 train, 1 validation, 2 neither (e.g. test, only predicted).
    """

    crops: torch.Tensor
    label_sets: list[LabelSetSpec]
    labels: dict[str, torch.Tensor]
    candidates: dict[str, torch.Tensor]
    dataset_index: torch.Tensor
    dataset_names: list[str]
    split: torch.Tensor
    truth: dict[str, torch.Tensor] = field(default_factory=dict)  # known truth (demo worlds only)

    def __post_init__(self) -> None:
        n = self.crops.shape[0]
        if self.crops.dtype != torch.uint8 or self.crops.ndim != 4:
            raise ValueError(f"crops must be uint8 (N, C, S, S), got {tuple(self.crops.shape)} {self.crops.dtype}")
        for spec in self.label_sets:
            for table in (self.labels, self.candidates):
                if spec.name not in table or table[spec.name].shape != (n,):
                    raise ValueError(f"labels and candidates for {spec.name!r} must be ({n},) tensors")
        if self.dataset_index.shape != (n,) or self.split.shape != (n,):
            raise ValueError("dataset_index and split must have one entry per crop")

    def __len__(self) -> int:
        return int(self.crops.shape[0])

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.label_sets]


def candidate_mask(bits: torch.Tensor, size: int) -> torch.Tensor:
    """Bitmasks ``(N,)`` to a boolean ``(N, size)`` table of candidate classes."""
    shifts = torch.arange(size, device=bits.device)
    return ((bits.unsqueeze(1) >> shifts) & 1).bool()


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
