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

Where the truth is known (generated data), :func:`score_filled` is the one way filled
labels are scored, on the nuclei :func:`filled_nuclei` selects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from nucdata._util.codes import PROVENANCE
from nucdata.errors import InvalidArgumentError
from nucdata_models.data import (
    AMBIGUOUS,
    ANNOTATED,
    MAPPED,
    OUTSIDE,
    OUTSIDE_LABEL,
    TrainingData,
    candidate_mask,
)
from nucdata_models.metrics import classification_metrics

__all__ = ["FILLED_SELECTIONS", "PROVENANCE", "FilledLabels", "fill_labels", "filled_nuclei", "score_filled",
           "scored_class"]

#: The nuclei a filled-label score counts (:func:`filled_nuclei`): always those their
#: own dataset did not annotate in the set, whose truth is known, and then:
FILLED_SELECTIONS = {
    "class_in_set": "whose true class lies in the set; an outside (-2) prediction is a miss of the true class "
                    "and F1 is averaged over the set's classes",
    "truth_known": "outside the set included (true -2): outside is scored as one more class, so a model that "
                   "must name a class of the set gets every one of them wrong",
}


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


def filled_nuclei(truth: torch.Tensor, provenance: torch.Tensor, select: str = "class_in_set") -> torch.Tensor:
    """Which nuclei of one set a filled-label score counts: bool ``(N,)``.

    Parameters
    ----------
    truth
        int64 ``(N,)``: the true class, -2 outside the set, -3 unknown.
    provenance
        The set's provenance codes (:attr:`.data.TrainingData.provenance`).
    select
        A key of :data:`FILLED_SELECTIONS`: ``"class_in_set"`` (true class in the set)
        or ``"truth_known"`` (outside the set included).
    """
    if select not in FILLED_SELECTIONS:
        raise InvalidArgumentError(f"select={select!r} is no filled-label selection; pass one of "
                                   f"{', '.join(FILLED_SELECTIONS)}")
    lowest = 0 if select == "class_in_set" else OUTSIDE
    return (provenance != ANNOTATED) & (truth >= lowest)


def score_filled(data: TrainingData, labels: dict[str, torch.Tensor], confidence: dict[str, torch.Tensor],
                 split: int | None = None, select: str = "class_in_set") -> dict[str, dict[str, Any]]:
    """Metrics of labels against ``data.truth`` on the filled nuclei, per label set.

    Parameters
    ----------
    data
        The training data with ``truth``; sets without truth or without ``labels`` are
        left out.
    labels, confidence
        Per set, int64 ``(N,)`` labels to score (-2 outside) and their probability
        (NaN counts as 1).
    split
        Only nuclei of this split code (``None``: every nucleus).
    select
        Which nuclei (:func:`filled_nuclei`, :data:`FILLED_SELECTIONS`).

    Returns
    -------
    dict
        Per set, :func:`.metrics.classification_metrics` of the selected nuclei, with
        outside as class ``size`` (:func:`scored_class`).
    """
    out = {}
    for spec in data.label_sets:
        truth = data.truth.get(spec.name)
        if truth is None or spec.name not in labels:
            continue
        sel = filled_nuclei(truth, data.provenance[spec.name], select)
        if split is not None:
            sel &= data.split == split
        sel = sel.numpy()
        out[spec.name] = classification_metrics(
            scored_class(truth, spec.size).numpy()[sel], scored_class(labels[spec.name], spec.size).numpy()[sel],
            spec.size + 1, confidence[spec.name].nan_to_num(1.0).numpy()[sel],
            spec.size if select == "class_in_set" else None)
    return out
