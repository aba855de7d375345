"""From the model's predictions to the merged label of every nucleus, and where it came from.

For one label set and one nucleus, the merged label is, by the nucleus's provenance
(:data:`.data.PROVENANCE_NAMES`):

========================  ===============================================================
source                    merged label
========================  ===============================================================
``annotated``             its own dataset's annotation in this vocabulary
``mapped``                the class an exact mapping row gives
``outside``               -2: the mapping says no class of this set describes it
``ambiguous-resolved``    the most probable candidate of the ambiguous row (``weights``)
``predicted``             the model's prediction (-2 when an outside output wins)
========================  ===============================================================

The probability beside a merged label is the model's probability of that label, after
the calibration passed in (``temperature``: :mod:`.calibration` fits it): for an
``ambiguous-resolved`` label it is renormalised over the row's candidates (the
probability of the label *given* the candidate set the table says the nucleus is in,
and, with ``weights``, given the source class its dataset wrote: ``p(c | x) T[s, c]``);
for ``annotated`` and ``mapped`` labels it is the model's calibrated probability of the
label the annotation or table gives (how much the model agrees); for a -2 the model
predicts, that of the outside output. A -2 an exact outside row gives is decided by the
table alone, as an ambiguous row's candidate set is: its probability is renormalised
over its one candidate, the outside output, and so is 1 (NaN when the model has no
outside output). The outside output's own probability is no estimate of it: the model is
trained towards outside only on other datasets' images, and at the quick budget it gave
on average 0.27 (easy demo worlds 1-4) and 0.53 (hard 1-2) to such labels, right 100 %
and 93 % of the time. The model's own, unrestricted prediction and its calibrated
probability are kept beside it in every case, and :func:`published_fields` gives fields
2 and 3 of the published pickle.

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

__all__ = ["FILLED_SELECTIONS", "PROVENANCE", "FilledLabels", "fill_labels", "filled_nuclei", "published_fields",
           "score_filled", "scored_class", "temperature_scale"]

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
        float32 ``(N,)``: the (calibrated) probability of ``label``; renormalised over
        the candidates for ``ambiguous-resolved`` labels.
    source
        int8 ``(N,)``: index into :data:`PROVENANCE`.
    predicted
        int64 ``(N,)``: the model's own, unrestricted prediction (-2 where the outside
        output wins); ``None`` when not computed.
    predicted_probability
        float32 ``(N,)``: its (calibrated) probability; ``None`` when not computed.
    """

    label: torch.Tensor
    probability: torch.Tensor
    source: torch.Tensor
    predicted: torch.Tensor | None = None
    predicted_probability: torch.Tensor | None = None

    def subset(self, rows: slice | torch.Tensor) -> FilledLabels:
        """The same labels for the nuclei ``rows`` only."""
        return FilledLabels(*(None if t is None else t[rows] for t in
                              (self.label, self.probability, self.source, self.predicted,
                               self.predicted_probability)))


def temperature_scale(probs: torch.Tensor, temperature: float | torch.Tensor) -> torch.Tensor:
    """Temperature scaling of probabilities: ``softmax(log p / T)`` per row.

    The published probabilities are the mean of two modules' softmaxes, not one softmax
    of logits, so the temperature acts on their logarithm (the logits of the published
    distribution, up to a constant per row) and the result is renormalised. ``T > 1``
    softens, ``T < 1`` sharpens; the order of the classes, hence every argmax and every
    label, is unchanged.

    Parameters
    ----------
    probs
        ``(N, K)`` probabilities (the outside column included where the model has one).
    temperature
        A positive float, or one per row ``(N,)``.
    """
    t = torch.as_tensor(temperature, dtype=torch.float64)
    if t.ndim == 0 and float(t) == 1.0:
        return probs
    if not bool((t > 0).all()) or not bool(torch.isfinite(t).all()):
        raise InvalidArgumentError(f"temperature must be positive and finite, got {t.flatten()[:5].tolist()}; "
                                   "fit it with nucdata_models.calibration.fit_temperature")
    if t.ndim == 1:
        if t.shape[0] != probs.shape[0]:
            raise InvalidArgumentError(f"temperature has {t.shape[0]} entries for {probs.shape[0]} rows; pass one "
                                       "per row or one float")
        t = t[:, None]
    log_p = probs.double().clamp_min(1e-300).log()
    return (log_p / t).softmax(1).to(probs.dtype)


def fill_labels(probs: torch.Tensor, labels: torch.Tensor, candidates: torch.Tensor,
                provenance: torch.Tensor, size: int,
                temperature: float | torch.Tensor | None = None,
                weights: torch.Tensor | None = None) -> FilledLabels:
    """Choose the merged label of every nucleus under one set, with its probability.

    Parameters
    ----------
    probs
        ``(N, size)`` or ``(N, size + 1)`` model probabilities; the extra column is the
        outside output.
    labels, candidates, provenance
        The set's columns of :class:`.data.TrainingData`.
    size
        The set's number of classes.
    temperature
        The calibration (:func:`temperature_scale`): a float or one per nucleus, as
        :meth:`.calibration.Calibration.temperatures` gives; ``None``: the model's
        probabilities as they are. Predicted labels never depend on it; an ambiguous row
        resolved with ``weights`` can (``p(c | x) T[s, c]`` with the calibrated ``p``).
    weights
        ``(N, outputs)`` non-negative: for an ambiguous row, the likelihood of the source
        class its own dataset wrote given each output, ``T[s, c]`` up to a factor per row
        (:meth:`.train.CrossTrainer.candidate_weights`, the transition estimate the
        candidate likelihood was trained with). The row is then resolved by the
        posterior given both the image and the source class, ``p(c | x) T[s, c]``
        (calibrated ``p``) renormalised over its candidates, and that posterior is the
        label's probability; a row whose weights leave no mass on its candidates keeps
        ``p(c | x)``. Other provenances ignore it. ``None``: ``p(c | x)`` alone (the
        uniform candidate likelihood's rule).
    """
    if temperature is not None:
        probs = temperature_scale(probs, temperature)
    outputs = probs.shape[1]
    ambiguous = provenance == AMBIGUOUS
    has_outside = outputs == size + 1

    def as_label(index: torch.Tensor) -> torch.Tensor:
        return torch.where(index == size, torch.full_like(index, OUTSIDE), index)

    top, top_index = probs.max(1)
    predicted = as_label(top_index)
    allowed = candidates if has_outside else candidates & ((1 << size) - 1)
    allowed_mask = candidate_mask(allowed, outputs)
    given = probs  # what an ambiguous row is resolved by
    if weights is not None:
        if weights.shape != probs.shape:
            raise InvalidArgumentError(f"fill_labels: weights have shape {tuple(weights.shape)} for probabilities "
                                       f"{tuple(probs.shape)}; pass CrossTrainer.candidate_weights of this data")
        weighted = probs * weights.to(probs.dtype).clamp_min(0)
        usable = ambiguous & ((weighted * allowed_mask).sum(1) > 0)
        given = torch.where(usable[:, None], weighted, probs)
    restricted = given.masked_fill(~allowed_mask, -1.0).argmax(1)
    resolved = torch.where(allowed != 0, as_label(restricted), predicted)

    label = predicted.clone()
    source = torch.zeros_like(labels, dtype=torch.int8)
    for code, name in ((ANNOTATED, "annotated"), (MAPPED, "mapped")):
        take = provenance == code
        label = torch.where(take, labels, label)
        source[take] = PROVENANCE.index(name)
    label = torch.where(ambiguous, resolved, label)
    source[ambiguous] = PROVENANCE.index("ambiguous-resolved")
    table_outside = provenance == OUTSIDE_LABEL
    label = torch.where(table_outside, torch.full_like(label, OUTSIDE), label)
    source[table_outside] = PROVENANCE.index("outside")

    column = scored_class(label, size)
    probability = probs.gather(1, column.clamp_max(outputs - 1)[:, None])[:, 0].float()
    # an ambiguous-resolved label: its probability given the row's candidate set (and source class)
    chosen = given.gather(1, column.clamp_max(outputs - 1)[:, None])[:, 0].float()
    mass = (given.float() * allowed_mask).sum(1)
    share = torch.where(mass > 0, chosen / mass.clamp_min(torch.finfo(torch.float32).tiny),
                        1.0 / allowed_mask.sum(1).clamp_min(1))
    probability = torch.where(ambiguous & (allowed != 0), share.clamp_max(1.0), probability)
    if has_outside:  # an exact outside row: one candidate, the outside output, so probability 1 given it
        probability = torch.where(table_outside, torch.ones_like(probability), probability)
    else:
        probability = torch.where(label == OUTSIDE, torch.full_like(probability, float("nan")), probability)
    return FilledLabels(label, probability, source, predicted, top.float())


def published_fields(filled: FilledLabels) -> tuple[torch.Tensor, torch.Tensor]:
    """Fields 2 and 3 of the published pickle: a label and its calibrated probability.

    The model's own prediction, except where the nucleus's annotation decides the
    candidate set (``ambiguous-resolved``: the best candidate, its probability
    renormalised over the candidates) or says outside (-2 with probability 1, renormalised
    over its one candidate; NaN without an outside output). Annotated and mapped nuclei
    carry the model's prediction too: their annotation or mapped class is field 4 (or the
    merged store's ``label``), never field 2.
    """
    if filled.predicted is None or filled.predicted_probability is None:
        raise InvalidArgumentError("published_fields: these FilledLabels carry no prediction; make them with "
                                   "fill_labels")
    decided = ((filled.source == PROVENANCE.index("ambiguous-resolved"))
               | (filled.source == PROVENANCE.index("outside")))
    return (torch.where(decided, filled.label, filled.predicted),
            torch.where(decided, filled.probability, filled.predicted_probability))


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
