"""From the model's predictions to the merged label of every nucleus, and where it came from.

For one label set and one nucleus, the merged label is, by the nucleus's provenance
(:data:`.data.PROVENANCE_NAMES`):

========================  ===============================================================
source                    merged label
========================  ===============================================================
``annotated``             its own dataset's annotation in this vocabulary
``mapped``                the class an exact mapping row gives
``outside``               -2: the mapping says no class of this set describes it
``ambiguous-resolved``    the model's most probable candidate of the ambiguous row
``predicted``             the model's prediction (-2 when an outside output wins)
========================  ===============================================================

The probability beside a merged label is the model's probability of that label
(of the outside output for -2; NaN when the label is -2 and the model has no outside
output). The model's own, unrestricted prediction is kept beside it in every case.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nucdata._util.codes import PROVENANCE
from nucdata_models.data import AMBIGUOUS, ANNOTATED, MAPPED, OUTSIDE, OUTSIDE_LABEL, candidate_mask

__all__ = ["PROVENANCE", "FilledLabels", "fill_labels", "scored_class"]



@dataclass
class FilledLabels:
    """Merged labels of one label set.

    Attributes
    ----------
    label
        int64 ``(N,)``: class id, or -2 outside the set.
    probability
        float32 ``(N,)``: the model's probability of ``label``.
    source
        int8 ``(N,)``: index into :data:`PROVENANCE`.
    """

    label: torch.Tensor
    probability: torch.Tensor
    source: torch.Tensor


def fill_labels(probs: torch.Tensor, labels: torch.Tensor, candidates: torch.Tensor,
                provenance: torch.Tensor, size: int) -> FilledLabels:
    """Choose the merged label of every nucleus under one set.

    Parameters
    ----------
    probs
        ``(N, size)`` or ``(N, size + 1)`` model probabilities; the extra column is the
        outside output.
    labels, candidates, provenance
        The set's columns of :class:`.data.TrainingData`.
    size
        The set's number of classes.
    """
    outputs = probs.shape[1]
    has_outside = outputs == size + 1

    def as_label(index: torch.Tensor) -> torch.Tensor:
        return torch.where(index == size, torch.full_like(index, OUTSIDE), index)

    predicted = as_label(probs.argmax(1))
    allowed = candidates if has_outside else candidates & ((1 << size) - 1)
    restricted = probs.masked_fill(~candidate_mask(allowed, outputs), -1.0).argmax(1)
    resolved = torch.where(allowed != 0, as_label(restricted), predicted)

    label = predicted.clone()
    source = torch.zeros_like(labels, dtype=torch.int8)
    for code, name in ((ANNOTATED, "annotated"), (MAPPED, "mapped")):
        take = provenance == code
        label = torch.where(take, labels, label)
        source[take] = PROVENANCE.index(name)
    take = provenance == AMBIGUOUS
    label = torch.where(take, resolved, label)
    source[take] = PROVENANCE.index("ambiguous-resolved")
    take = provenance == OUTSIDE_LABEL
    label = torch.where(take, torch.full_like(label, OUTSIDE), label)
    source[take] = PROVENANCE.index("outside")

    column = scored_class(label, size)
    probability = probs.gather(1, column.clamp_max(outputs - 1)[:, None])[:, 0].float()
    if not has_outside:
        probability = torch.where(label == OUTSIDE, torch.full_like(probability, float("nan")), probability)
    return FilledLabels(label, probability, source)


def scored_class(label: torch.Tensor, size: int) -> torch.Tensor:
    """Labels as class indices for scoring: -2 (outside) becomes ``size``, one past the classes."""
    return torch.where(label == OUTSIDE, torch.full_like(label, size), label)
