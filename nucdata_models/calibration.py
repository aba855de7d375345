"""Calibration of the published probability: temperature scaling per (source dataset, label set).

The probability published beside a merged label (field 3 of the published pickle, the
merged store's ``probability``) is the model's probability after **temperature
scaling**: ``softmax(log p / T)`` of the probabilities the model publishes (the mean of
its two modules' softmaxes, the outside column included; :func:`.fill.temperature_scale`),
with one temperature ``T`` per (source dataset, label set) pair.

**What it is fitted on.** Nuclei of the **validation** split whose class in the set is
known exactly without the model:

* *cross-domain* nuclei, labelled in a foreign set by an ``exact`` mapping row (provenance
  ``MAPPED``: CoNSeP inflammatory under PanNuke is PanNuke inflammatory), and, where the
  model has an outside output, nuclei an exact row puts outside the set (provenance
  ``OUTSIDE_LABEL``: their target is the outside output, the probability published
  beside their -2). These are the nuclei a merged dataset is about — a dataset's nuclei
  under another dataset's vocabulary — and the only ones on real data whose foreign
  class is known.
* *own-domain* nuclei (provenance ``ANNOTATED``), but only for their own pair (CoNSeP
  under CoNSeP): a temperature fitted on a dataset's own annotations is never applied to
  another pair, because it does not transfer (issue 20: fitted on own-domain validation,
  filled labels kept an ECE of 0.2-0.5).

The validation split, not the training split: the model was trained on those exact
labels (``mapped_labels`` trains on exact rows), so on training nuclei it is confidently
right by construction and a temperature fitted there would be too sharp. Never the
held-out split: it is where the calibration is scored.

A pair with at least :data:`MIN_NUCLEI` such nuclei gets its own temperature, which may
soften or sharpen. Any other pair (too few exact nuclei; an unlabelled dataset such as
MoNuSeg, Kumar or TNBC; a lab's own images) gets the set's **pooled** temperature, fitted
on every cross-domain nucleus of the set (own-domain nuclei never enter it), but only
where it softens: ``max(1, T_pooled)``. A pooled temperature is borrowed from other
pairs, and what it is fitted on is not what it is applied to: exact-row nuclei are the
cleanly mapped, easy classes, and on the demo world they are under-confident while the
predicted and ambiguous nuclei of other pairs are not (the unlabelled datasets are
over-confident), so a borrowed sharpening makes the labels that matter over-confident,
the failure that breaks a threshold (letting it sharpen for the labelled datasets whose
exact-row nuclei are in the pooled fit, with a minimum of 20, lowered ECE on the tuning
worlds and raised it on the acceptance worlds: docs/method-study.md). A set with fewer
than :data:`MIN_NUCLEI` cross-domain nuclei is left uncalibrated (``T = 1``).
:attr:`Calibration.uses` records which applies to each pair.

**Why one temperature per pair.** It has one parameter, so 50 nuclei fit it stably (with
a log-normal prior centred on ``T = 1``: 50 nuclei of an easy class are often all right,
and the likelihood alone then sends ``T`` to 0; :func:`fit_temperature` finds the most
probable ``T`` by golden-section search, deterministic and without a learning rate); and
a temperature never reorders a nucleus's classes, so calibration changes no predicted
label, only the probabilities beside them. It can change how an ambiguous row is resolved
when the row is resolved by ``p(c | x) T[s, c]`` (the transition weights): that product is
Bayes' rule only for a calibrated ``p(c | x)``, and the temperature sets how much the image
counts against the source class. Vector or matrix scaling would fit more parameters from
the same few exact-row nuclei and could reorder the classes.

:func:`calibrated_fill` fits and applies it in one call (build-merged and the method
study use it); :func:`calibration_scores` measures the expected calibration error
(:func:`.metrics.expected_calibration_error`: top-label, 15 equal-width bins) of the
published probability per label set and provenance.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from nucdata.errors import InvalidArgumentError
from nucdata_models.data import ANNOTATED, MAPPED, NO_LABEL, OUTSIDE_LABEL, TrainingData
from nucdata_models.fill import (
    PROVENANCE,
    FilledLabels,
    fill_labels,
    filled_nuclei,
    published_fields,
    scored_class,
    temperature_scale,
)
from nucdata_models.metrics import (
    ECE_BINS,
    calibration_tally,
    ece_floor_from_tally,
    ece_from_tally,
    expected_calibration_error,
    reliability_bins,
    reliability_from_tally,
)

__all__ = ["METHOD", "MIN_NUCLEI", "PRIOR_SD", "TEMPERATURE_BOUNDS", "USES", "VALIDATION", "Calibration", "calibrated_fill",
           "calibration_scores", "fit_calibration", "fit_temperature", "pair_key", "reading"]

#: The calibration method (the ``method`` of :meth:`Calibration.to_dict`).
METHOD = "temperature"
#: Nuclei with an exactly known class a (dataset, label set) pair needs for a
#: temperature of its own; fewer, and the set's pooled temperature applies.
MIN_NUCLEI = 50
#: The temperatures searched: from 20x sharper to 20x softer.
TEMPERATURE_BOUNDS = (0.05, 20.0)
#: Standard deviation of ``log T`` under the prior of :func:`fit_temperature` (centred on
#: ``T = 1``): a temperature beyond ``[0.37, 2.7]`` (two standard deviations) needs the
#: evidence of many nuclei.
PRIOR_SD = 0.5
#: ``TrainingData.split`` code of the validation split (``nucdata_models.merge.splits.VALIDATION``).
VALIDATION = 1
_SPLIT_NAMES = {0: "train", 1: "validation", 2: "held_out"}


def pair_key(dataset: str, label_set: str) -> str:
    """The key of a (source dataset, label set) pair: ``"consep->pannuke"``."""
    return f"{dataset}->{label_set}"


def fit_temperature(probs: torch.Tensor, target: torch.Tensor,
                    bounds: tuple[float, float] = TEMPERATURE_BOUNDS, prior_sd: float = PRIOR_SD) -> float:
    """The most probable temperature given ``target``: the likelihood times a log-normal prior on ``T``.

    Minimises ``sum_i NLL_i(T) + (log T)^2 / (2 prior_sd^2)`` by golden-section search
    over ``log T`` within ``bounds``. The negative log-likelihood alone is convex in
    ``1 / T`` but has no minimum when every nucleus is classified right (it falls
    towards ``T = 0``, probabilities of exactly 1), which a few dozen nuclei of an easy
    class often are; the prior, centred on ``T = 1``, keeps such a fit finite and
    moves a temperature fitted on few nuclei towards "as the model says". Its weight
    is that of one nucleus against ``N``: with hundreds, the data decide.

    Parameters
    ----------
    probs
        ``(N, K)`` probabilities as published (uncalibrated).
    target
        int64 ``(N,)``: the known class of each row, a column of ``probs``.
    bounds
        The smallest and largest temperature considered.
    prior_sd
        Standard deviation of ``log T`` under the prior (:data:`PRIOR_SD`; ``inf``:
        the maximum-likelihood temperature).

    Returns
    -------
    float
        ``T`` (1.0 for no rows).
    """
    if probs.ndim != 2 or target.shape != (probs.shape[0],):
        raise InvalidArgumentError(f"fit_temperature: probs must be (N, K) and target (N,), got "
                                   f"{tuple(probs.shape)} and {tuple(target.shape)}")
    if not prior_sd > 0:
        raise InvalidArgumentError(f"fit_temperature(prior_sd={prior_sd}): pass a positive spread (inf: none)")
    if probs.shape[0] == 0:
        return 1.0
    if int(target.min()) < 0 or int(target.max()) >= probs.shape[1]:
        raise InvalidArgumentError(f"fit_temperature: targets must be columns 0..{probs.shape[1] - 1} of probs; "
                                   "map outside (-2) to its column first (fill.scored_class)")
    log_p = probs.double().clamp_min(1e-300).log()
    own = log_p.gather(1, target[:, None].long())[:, 0]
    weight = 0.0 if math.isinf(prior_sd) else 1.0 / (2.0 * prior_sd**2)

    def loss(log_t: float) -> float:
        b = math.exp(-log_t)
        return float((torch.logsumexp(b * log_p, 1) - b * own).sum()) + weight * log_t**2

    a, d = math.log(bounds[0]), math.log(bounds[1])
    ratio = (math.sqrt(5) - 1) / 2
    b, c = d - ratio * (d - a), a + ratio * (d - a)
    fb, fc = loss(b), loss(c)
    for _ in range(80):
        if fb <= fc:
            d, c, fc = c, b, fb
            b = d - ratio * (d - a)
            fb = loss(b)
        else:
            a, b, fb = b, c, fc
            c = a + ratio * (d - a)
            fc = loss(c)
    return round(math.exp((a + d) / 2), 6)


#: What :meth:`Calibration.used` says of a pair: its own temperature, the set's
#: held-out-dataset one (a pair with no label information in the set), the set's pooled
#: one (softening only), or none.
USES = ("pair", "unseen", "pooled", "none")


@dataclass
class Calibration:
    """Temperatures per (source dataset, label set) pair, pooled per set, and what they were fitted on.

    Attributes
    ----------
    pairs
        ``"dataset->label_set"`` (:func:`pair_key`) -> temperature, for pairs with at
        least ``minimum`` nuclei of exactly known class.
    pooled
        Label set -> temperature fitted on all its cross-domain nuclei (as fitted; a
        pair that uses it gets ``max(1, T)``).
    fitted_on
        Pair key or label set -> nuclei available for the fit (also for pairs below
        ``minimum``).
    uses
        Pair key -> one of :data:`USES`, for every pair seen when fitting.
    minimum
        The :data:`MIN_NUCLEI` in force.
    split
        The split it was fitted on (``"validation"``).
    unseen
        Label set -> the held-out-dataset temperature (:func:`fit_calibration`'s
        ``unseen``): fitted on predictions of models that never saw the scored dataset's
        labels, for pairs whose dataset has no label information in the set. Empty
        when not fitted.
    unseen_fitted_on
        Label set -> nuclei the held-out-dataset fit had (also below ``minimum``).
    """

    pairs: dict[str, float] = field(default_factory=dict)
    pooled: dict[str, float] = field(default_factory=dict)
    fitted_on: dict[str, int] = field(default_factory=dict)
    uses: dict[str, str] = field(default_factory=dict)
    minimum: int = MIN_NUCLEI
    split: str = "validation"
    unseen: dict[str, float] = field(default_factory=dict)
    unseen_fitted_on: dict[str, int] = field(default_factory=dict)

    def used(self, dataset: str, label_set: str, informed: bool | None = None) -> str:
        """Which temperature a pair gets: one of :data:`USES`.

        The held-out-dataset temperature is for pairs whose dataset has no label
        information in the set. ``informed`` says whether it has (the fit knows);
        ``None``: a pair seen when fitting keeps what the fit decided, and a dataset
        never seen (a lab's own images) has none.
        """
        key = pair_key(dataset, label_set)
        if key in self.pairs:
            return "pair"
        if informed is None:
            informed = self.uses.get(key, "unseen") != "unseen"
        if label_set in self.unseen and not informed:
            return "unseen"
        return "pooled" if label_set in self.pooled else "none"

    def temperature(self, dataset: str, label_set: str) -> float:
        """The temperature of a pair: its own, else the held-out-dataset one (a pair without
        label information), else the set's pooled one where it softens, else 1.

        Any dataset name works: one never seen when fitting (a lab's own images) gets
        the held-out-dataset temperature, or without one the pooled temperature,
        softening only.
        """
        how = self.used(dataset, label_set)
        if how == "pair":
            return float(self.pairs[pair_key(dataset, label_set)])
        if how == "unseen":
            return float(self.unseen[label_set])
        return max(1.0, float(self.pooled[label_set])) if how == "pooled" else 1.0

    @property
    def pooled_pairs(self) -> list[str]:
        """The pairs seen when fitting that use their set's pooled temperature."""
        return sorted(k for k, v in self.uses.items() if v == "pooled")

    def temperatures(self, label_set: str, dataset_index: torch.Tensor, dataset_names: list[str]) -> torch.Tensor:
        """float64 ``(N,)``: the temperature of each nucleus under ``label_set`` (by its dataset)."""
        table = torch.tensor([self.temperature(name, label_set) for name in dataset_names] or [1.0],
                             dtype=torch.float64)
        return table[dataset_index.long().cpu()]

    def apply(self, probs: torch.Tensor, label_set: str, dataset_index: torch.Tensor,
              dataset_names: list[str]) -> torch.Tensor:
        """Calibrated ``(N, K)`` probabilities of ``label_set`` (:func:`.fill.temperature_scale`)."""
        return temperature_scale(probs, self.temperatures(label_set, dataset_index, dataset_names))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON (what ``model.json`` stores under ``calibration``)."""
        return {"method": METHOD, "split": self.split, "minimum": self.minimum,
                "pairs": dict(sorted(self.pairs.items())), "pooled": dict(sorted(self.pooled.items())),
                "unseen": dict(sorted(self.unseen.items())), "uses": dict(sorted(self.uses.items())),
                "pooled_pairs": self.pooled_pairs, "fitted_on": dict(sorted(self.fitted_on.items())),
                "unseen_fitted_on": dict(sorted(self.unseen_fitted_on.items()))}

    @classmethod
    def from_dict(cls, value: Mapping[str, Any], where: str = "calibration") -> Calibration:
        """Read :meth:`to_dict`'s JSON back; ``where`` names its source in errors."""
        fix = "refit it (nucdata build-merged without --checkpoint, or calibration.fit_calibration)"
        if not isinstance(value, Mapping) or value.get("method") != METHOD:
            method = value.get("method") if isinstance(value, Mapping) else type(value).__name__
            raise InvalidArgumentError(f"{where}: calibration method {method!r} is not {METHOD!r}; {fix}")
        temps: dict[str, dict[str, float]] = {}
        for part in ("pairs", "pooled", "unseen"):  # a calibration written before "unseen" has none
            table = value.get(part, {})
            if not isinstance(table, Mapping):
                raise InvalidArgumentError(f"{where}: {part!r} must map names to temperatures, got "
                                           f"{type(table).__name__}; {fix}")
            temps[part] = {}
            for key, t in table.items():
                if not isinstance(t, (int, float)) or isinstance(t, bool) or not math.isfinite(t) or t <= 0:
                    raise InvalidArgumentError(f"{where}: {part}[{key!r}] = {t!r} is not a positive temperature; "
                                               f"{fix}")
                temps[part][str(key)] = float(t)
        return cls(temps["pairs"], temps["pooled"],
                   {str(k): int(v) for k, v in value.get("fitted_on", {}).items()},
                   {str(k): str(v) for k, v in value.get("uses", {}).items()}, int(value.get("minimum", MIN_NUCLEI)),
                   str(value.get("split", "validation")), temps["unseen"],
                   {str(k): int(v) for k, v in value.get("unseen_fitted_on", {}).items()})


def _known_targets(p: torch.Tensor, data: TrainingData, spec, in_split: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Nuclei of ``in_split`` whose class in ``spec`` is known exactly, and their target column.

    ``cross``: through an exact row (and, with an outside output, an exact outside row,
    whose target is the outside column); ``own``: the dataset's own annotation.
    """
    labels, prov = data.labels[spec.name].cpu(), data.provenance[spec.name].cpu()
    known = in_split & (labels >= 0)
    cross = known & (prov == MAPPED)
    own = known & (prov == ANNOTATED)
    target = labels
    if p.shape[1] == spec.size + 1:  # an exact "outside" row: the outside output is the known target
        outside = in_split & (prov == OUTSIDE_LABEL)
        cross = cross | outside
        target = torch.where(outside, torch.full_like(labels, spec.size), labels)
    return cross, own, target


def fit_calibration(probs: Mapping[str, torch.Tensor], data: TrainingData, split: int = VALIDATION,
                    minimum: int = MIN_NUCLEI, unseen: Mapping[str, Mapping[str, torch.Tensor]] | None = None
                    ) -> Calibration:
    """Fit the temperatures of every (dataset, label set) pair of ``data`` (see the module docstring).

    Parameters
    ----------
    probs
        Per label set, ``(N, K)`` probabilities as published (``Prediction.probs``).
    data
        The training data: labels, provenance, split and dataset of every nucleus.
    split
        The split fitted on: :data:`VALIDATION` (never the held-out split).
    minimum
        Nuclei a pair needs for a temperature of its own (:data:`MIN_NUCLEI`).
    unseen
        Optional held-out-dataset predictions: labelled dataset name -> per set ``(N, K)``
        probabilities over every nucleus of ``data``, from a model trained on
        ``data.without_dataset(name)`` (:func:`.train.held_out_dataset_probs`). Per set,
        one temperature is fitted on the ``split`` nuclei of those datasets whose class
        is known exactly (own annotations, exact and exact-outside rows), each under the
        model that never saw its labels, and applied to the pairs whose dataset has no
        label information in the set (every nucleus :data:`NO_LABEL`): an unlabelled
        dataset, or a lab's own images. It may sharpen as well as soften: it is fitted on
        data like the data it is applied to. ``None``: such pairs take the pooled
        temperature (softening only).
    """
    if minimum < 1:
        raise InvalidArgumentError(f"fit_calibration(minimum={minimum}): a temperature needs at least one nucleus")
    result = Calibration(minimum=minimum, split=_SPLIT_NAMES.get(split, str(split)))
    in_split = data.split.cpu() == split
    index = data.dataset_index.cpu()
    for name in unseen or {}:
        if name not in data.dataset_names:
            raise InvalidArgumentError(f"fit_calibration: held-out predictions for {name!r}, which is not a dataset "
                                       f"of the data ({', '.join(data.dataset_names)})")
    for spec in data.label_sets:
        s = spec.name
        if s not in probs:
            continue
        p = probs[s].cpu()
        cross, own, target = _known_targets(p, data, spec, in_split)
        result.fitted_on[s] = int(cross.sum())
        if result.fitted_on[s] >= minimum:
            result.pooled[s] = fit_temperature(p[cross], target[cross])
        if unseen:
            rows, columns = [], []
            for name, held in unseen.items():
                q = held[s].cpu()
                if q.shape != p.shape:
                    raise InvalidArgumentError(f"fit_calibration: the held-out predictions for {name!r} under {s} are "
                                               f"{tuple(q.shape)}, the model's {tuple(p.shape)}; predict every "
                                               "nucleus with a model of the same configuration")
                mine = (index == data.dataset_names.index(name)) & (cross | own)
                rows.append(q[mine])
                columns.append(target[mine])
            result.unseen_fitted_on[s] = int(sum(c.numel() for c in columns))
            if result.unseen_fitted_on[s] >= minimum:
                result.unseen[s] = fit_temperature(torch.cat(rows), torch.cat(columns))
        prov = data.provenance[s].cpu()
        for d, name in enumerate(data.dataset_names):
            of_pair = (index == d) & (cross | own)
            key = pair_key(name, s)
            result.fitted_on[key] = int(of_pair.sum())
            if result.fitted_on[key] >= minimum:
                result.pairs[key] = fit_temperature(p[of_pair], target[of_pair])
            result.uses[key] = result.used(name, s, informed=not bool((prov[index == d] == NO_LABEL).all()))
    return result


def calibrated_fill(predictions: Mapping[str, Any], data: TrainingData, calibration: Calibration | None = None,
                    split: int = VALIDATION, minimum: int = MIN_NUCLEI,
                    weights: Mapping[str, torch.Tensor] | None = None,
                    unseen: Mapping[str, Mapping[str, torch.Tensor]] | None = None
                    ) -> tuple[dict[str, FilledLabels], Calibration]:
    """The published labels of every set with calibrated probabilities: fit (unless given) and apply.

    Parameters
    ----------
    predictions
        Per label set, a ``Prediction`` (its ``probs`` are used) or ``(N, K)`` probabilities,
        over every nucleus of ``data``.
    data
        The training data (labels, candidates, provenance, split, dataset of each nucleus).
    calibration
        A fitted calibration (a checkpoint's); ``None``: fit one on ``split``.
    split, minimum, unseen
        Passed to :func:`fit_calibration` (``unseen``: held-out-dataset predictions).
    weights
        Per set, the transition weights an ambiguous row is resolved by
        (:meth:`.train.CrossTrainer.candidate_weights`; the ``weights`` of
        :func:`.fill.fill_labels`), applied after the calibration; a set without
        them, or ``None``: the calibrated ``p(c | x)`` alone. The calibration is
        always fitted on the model's own probabilities.

    Returns
    -------
    filled
        Per set, :func:`.fill.fill_labels` with the calibration applied:
        ``label``/``probability`` the merged label and its calibrated probability,
        ``predicted``/``predicted_probability`` the model's own; :func:`.fill.published_fields`
        gives the pickle's fields 2 and 3.
    calibration
        The calibration applied.
    """
    probs = {s: getattr(p, "probs", p) for s, p in predictions.items()}
    if calibration is None:
        calibration = fit_calibration(probs, data, split, minimum, unseen)
    filled = {}
    for spec in data.label_sets:
        s = spec.name
        if s in probs:
            filled[s] = fill_labels(probs[s], data.labels[s], data.candidates[s], data.provenance[s], spec.size,
                                    calibration.temperatures(s, data.dataset_index, data.dataset_names),
                                    (weights or {}).get(s))
    return filled, calibration


def _bins_json(table: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    edges = table["edges"]
    return [{"lower": round(float(edges[i]), 4), "upper": round(float(edges[i + 1]), 4),
             "count": int(table["count"][i]),
             "confidence": None if table["count"][i] == 0 else float(table["confidence"][i]),
             "accuracy": None if table["count"][i] == 0 else float(table["accuracy"][i])}
            for i in range(len(edges) - 1)]


def _group_score(correct: np.ndarray, confidence: np.ndarray, before: np.ndarray | None) -> dict[str, Any]:
    tally = calibration_tally(correct, confidence, ECE_BINS)  # one tally: the diagram, the ECE, its floor
    table = reliability_from_tally(tally)
    out: dict[str, Any] = {"count": int(correct.size), "ece": float(ece_from_tally(tally)),
                           "ece_floor": float(ece_floor_from_tally(tally)), "bins": _bins_json(table)}
    if before is not None:
        out["ece_uncalibrated"] = expected_calibration_error(correct, before)
        out["bins_uncalibrated"] = _bins_json(reliability_bins(correct, before, ECE_BINS))
    out["reading"] = reading(out["bins"], out["ece"], floor=out["ece_floor"])
    return out


def calibration_scores(data: TrainingData, filled: Mapping[str, FilledLabels],
                       before: Mapping[str, FilledLabels] | None = None, split: int = 2) -> dict[str, Any]:
    """ECE and reliability bins of the published label and probability, per label set and provenance.

    The published pair is fields 2 and 3 of the pickle (:func:`.fill.published_fields`);
    NaN probabilities (outside, without an outside output) are left out.

    Where ``data.truth`` has the set (the demo world), each is scored against the truth
    (outside, -2, counts as one more class) on the nuclei of ``split`` whose truth is
    known: ``filled`` (every nucleus its own dataset did not annotate in the set,
    :func:`.fill.filled_nuclei`) and one group per provenance. Where the truth is
    unknown (real data), only what is known exactly is scored: ``annotated`` nuclei
    against their own annotation, ``mapped`` nuclei against their exact row's class.

    Parameters
    ----------
    data
        The training data (and its truth, when known).
    filled
        Per set, the calibrated labels (:func:`calibrated_fill`).
    before
        The same without calibration, for ``ece_uncalibrated``; optional.
    split
        The split scored: the held-out one (``2``), never the one fitted on.

    Returns
    -------
    dict
        Per set: ``scored_against`` (``"truth"`` or ``"labels"``) and ``groups``: per
        group ``count``, ``ece``, ``ece_floor`` (the ECE calibrated probabilities would show
        by chance on these nuclei, :func:`.metrics.ece_floor_from_tally`), ``bins`` (15 of ``lower``, ``upper``, ``count``,
        ``confidence``, ``accuracy``), ``reading`` and, with ``before``,
        ``ece_uncalibrated`` and ``bins_uncalibrated``.
    """
    out: dict[str, Any] = {}
    in_split = (data.split == split).cpu()
    for spec in data.label_sets:
        s = spec.name
        if s not in filled:
            continue
        f = filled[s]
        label, prob = published_fields(f)
        prior = published_fields(before[s])[1].numpy() if before is not None and s in before else None
        prov = data.provenance[s].cpu()
        truth = data.truth.get(s)
        groups: dict[str, torch.Tensor] = {}
        if truth is not None:
            correct = (scored_class(label, spec.size) == scored_class(truth.cpu(), spec.size)).numpy()
            known = in_split & (truth.cpu() >= -2)
            groups["filled"] = filled_nuclei(truth.cpu(), prov, "truth_known") & in_split
            for code, name in enumerate(PROVENANCE):
                groups[name] = known & (f.source == code)
        else:
            labels = data.labels[s].cpu()
            correct = (label == labels).numpy()
            groups["annotated"] = in_split & (prov == ANNOTATED) & (labels >= 0)
            groups["mapped"] = in_split & (prov == MAPPED) & (labels >= 0)
        scored = {}
        confidence = prob.numpy()
        for name, sel in groups.items():
            sel = sel.numpy() & ~np.isnan(confidence)
            if sel.any():
                scored[name] = _group_score(correct[sel], confidence[sel], None if prior is None else prior[sel])
        out[s] = {"scored_against": "truth" if truth is not None else "labels", "groups": scored}
    return out


def reading(bins: list[dict[str, Any]], ece: float, tolerance: float = 0.05, floor: float | None = None) -> str:
    """One line that reads a reliability diagram: which way it is off, and where.

    Within ``tolerance`` of ECE it is "close to the diagonal". With ``floor`` (the ECE
    calibrated probabilities would show by chance on these nuclei,
    :func:`.metrics.ece_floor_from_tally`) the line ends with it, so an ECE is read
    against what its count can show; the verdict itself stays on ``tolerance``. Otherwise the direction
    is the sign of the mean gap (confidence - accuracy), and "where" is the highest
    threshold above which (or the lowest below which) 60 % of that gap lies, with the
    mean confidence and accuracy of the bins there that are off that way; a gap whose
    sign is mixed names both sides.
    """
    scored = [b for b in bins if b["count"] and b["accuracy"] is not None]
    total = sum(b["count"] for b in scored)
    if total == 0 or ece != ece:
        return "nothing to read: no nuclei"
    chance = "" if floor is None or floor != floor else f" (chance alone at n={total:,}: {floor:.3f})"
    if ece <= tolerance:
        return f"ECE {ece:.3f}: close to the diagonal" + chance
    contribution = [b["count"] * (b["confidence"] - b["accuracy"]) / total for b in scored]
    signed = sum(contribution)

    def side(sign: int) -> str:
        mass = [max(0.0, sign * c) for c in contribution]
        whole = sum(mass)
        word = "over-confident" if sign > 0 else "under-confident"
        if whole <= 0:
            return word
        chosen = scored
        edges = sorted({b["lower"] for b in scored}, reverse=True)
        for t in edges:
            if sum(m for b, m in zip(scored, mass, strict=True) if b["lower"] >= t) >= 0.6 * whole:
                chosen, where = [b for b in scored if b["lower"] >= t], f"above {t:.2f}"
                break
        for t in sorted({b["upper"] for b in scored}):
            inside = [b for b in scored if b["upper"] <= t]
            if sum(m for b, m in zip(scored, mass, strict=True) if b["upper"] <= t) >= 0.6 * whole:
                if len(inside) < len(chosen):
                    chosen, where = inside, f"below {t:.2f}"
                break
        if chosen is scored:
            where = "across the range"
        chosen = [b for b in chosen if sign * (b["confidence"] - b["accuracy"]) > 0]  # the bins off that way
        n = sum(b["count"] for b in chosen)
        conf = sum(b["confidence"] * b["count"] for b in chosen) / n
        acc = sum(b["accuracy"] * b["count"] for b in chosen) / n
        return f"{word} {where} (confidence {conf:.2f}, accuracy {acc:.2f})"

    if abs(signed) >= 0.5 * ece:
        return f"ECE {ece:.3f}: " + side(1 if signed > 0 else -1) + chance
    return f"ECE {ece:.3f}: mixed: " + side(1) + "; " + side(-1) + chance
