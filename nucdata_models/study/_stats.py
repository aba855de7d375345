"""The method study's statistics: per-group tallies, the hierarchical bootstrap, intervals, tests.

**What is counted.** Per run (one arm, one world, one training seed) and label set, the
held-out nuclei are tallied per image group (the group the split uses: hospital,
patient or slide where the data carries them, else the image): a confusion matrix per
group and provenance (:func:`cluster_confusions`, ``(G, P, K + 1, K + 1)``, the last
class "outside") and calibration bins per group (:func:`nucdata_models.metrics.calibration_tally`). A sum of
tallies with integer weights is the tally of a sample that holds each group that many
times, whole; every metric (:data:`METRIC_SPECS`) is a function of such a sum.

**The hierarchical bootstrap** (:func:`hierarchical_resamples`, :func:`resampled_mean`),
levels nested as the study is: world seeds are drawn with replacement; within each
drawn world (each draw of it separately), its training seeds and its image groups are
drawn with replacement, independently (every seed's model is scored on the same
images, so seeds and groups are crossed within a world). A replicate is the mean over
the drawn worlds of the mean over the drawn seeds of the metric on the drawn groups.
Every arm sees the same resamples, so a paired difference's replicates are the
difference of the two arms' replicates, and its p-values come from the same draws.

**Tests.** Intervals are 95 % percentiles of the replicates (:func:`percentile_ci`);
"the difference is 0" has the two-sided bootstrap p-value :func:`bootstrap_p`;
equivalence within a margin is two one-sided tests on the same replicates
(:func:`tost_p`); both families are Holm-corrected (:func:`holm`) over every
comparison and label set declared (:data:`nucdata_models.study.FAMILY`), and
:func:`verdict` turns a corrected row into the words the write-up may use.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from nucdata.errors import InvalidArgumentError
from nucdata_models.data import AMBIGUOUS, MAPPED, NO_LABEL
from nucdata_models.metrics import (
    ECE_BINS,
    accuracy_from_confusion,
    ece_floor_from_tally,
    ece_from_tally,
    macro_f1_from_confusion,
)

__all__ = ["ALPHA", "CALIBRATION_BINS", "ENDPOINT", "EQUIVALENCE_MARGIN", "LEVELS", "METRICS", "METRIC_FUNCTIONS",
           "METRIC_SPECS", "N_PROVENANCE", "MetricSpec", "Resamples", "bootstrap_p", "cluster_confusions",
           "hierarchical_resamples", "holm", "percentile_ci", "resample_weights", "resampled_mean", "tost_p",
           "verdict"]

#: Provenance codes a confusion tally is split by (:data:`nucdata_models.data.PROVENANCE_NAMES`).
N_PROVENANCE = 5
#: Equal-width confidence bins of the expected calibration error (top label; :data:`.metrics.ECE_BINS`).
CALIBRATION_BINS = ECE_BINS
#: Level of every test, after Holm's correction.
ALPHA = 0.05
#: Equivalence margin of the TOST, in macro F1 of the endpoint.
EQUIVALENCE_MARGIN = 0.02
#: The bootstrap's levels, outermost first.
LEVELS = ("world", "seed", "group")


# -- tallies ------------------------------------------------------------------------------
def cluster_confusions(truth: np.ndarray, guess: np.ndarray, cluster: np.ndarray, n_clusters: int,
                       n_classes: int) -> np.ndarray:
    """Confusion matrix of every cluster: ``(n_clusters, n_classes, n_classes)`` counts, rows = truth.

    Summing them with integer weights is the confusion matrix of a sample that holds
    each cluster (image group) that many times, whole. The study passes
    ``cluster = group * N_PROVENANCE + provenance`` to split each group by provenance.
    """
    truth, guess, cluster = (np.asarray(a, np.int64) for a in (truth, guess, cluster))
    if not truth.shape == guess.shape == cluster.shape:
        raise InvalidArgumentError(f"truth, guess and cluster differ in shape: {truth.shape}, {guess.shape}, "
                                   f"{cluster.shape}; pass one guess and one cluster id per true label")
    if truth.size and (min(truth.min(), guess.min()) < 0 or max(truth.max(), guess.max()) >= n_classes):
        raise InvalidArgumentError(f"class ids must lie in [0, {n_classes}); map outside (-2) to a class first "
                                   "(fill.scored_class) or pass a larger n_classes")
    if cluster.size and (cluster.min() < 0 or cluster.max() >= n_clusters):
        raise InvalidArgumentError(f"cluster ids must lie in [0, {n_clusters}); pass the number of clusters")
    flat = (cluster * n_classes + truth) * n_classes + guess
    return np.bincount(flat, minlength=n_clusters * n_classes * n_classes).reshape(n_clusters, n_classes, n_classes)


# -- metrics: functions of a (weighted) sum of tallies -------------------------------------
def _in_set(cm: np.ndarray) -> np.ndarray:
    """The confusion with the truth-outside row zeroed: nuclei whose true class is in the set."""
    out = np.array(cm, np.float64)
    out[..., -1, :] = 0
    return out


def _endpoint_confusion(tally: np.ndarray) -> np.ndarray:
    return _in_set(tally[..., NO_LABEL, :, :] + tally[..., AMBIGUOUS, :, :])


def _share(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    return np.divide(numerator, denominator, out=np.full(np.shape(denominator), np.nan), where=denominator > 0)


def _endpoint_f1(tally: np.ndarray) -> np.ndarray:
    cm = _endpoint_confusion(tally)
    return macro_f1_from_confusion(cm, cm.shape[-1] - 1, fixed=True)


def _accuracy(tally: np.ndarray) -> np.ndarray:
    return accuracy_from_confusion(_endpoint_confusion(tally))


def _ambiguous_accuracy(tally: np.ndarray) -> np.ndarray:
    return accuracy_from_confusion(tally[..., AMBIGUOUS, :, :])


def _exact_accuracy(tally: np.ndarray) -> np.ndarray:
    return accuracy_from_confusion(tally[..., MAPPED, :, :])


def _outside_rate_in_set(tally: np.ndarray) -> np.ndarray:
    cm = _in_set(tally.sum(-3))
    return _share(cm[..., -1].sum(-1), cm.sum((-2, -1)))


def _outside_recall(tally: np.ndarray) -> np.ndarray:
    row = np.asarray(tally, np.float64).sum(-3)[..., -1, :]
    return _share(row[..., -1], row.sum(-1))


@dataclass(frozen=True)
class MetricSpec:
    """One metric of the study: what it computes, on which nuclei, from which tally.

    The words are the metric's definition in ``results.json`` and ``results.md``
    (:meth:`describe`), written beside the function that computes it.

    Attributes
    ----------
    name
        Its key in ``results.json``.
    value
        What is computed, in words.
    nuclei
        Which held-out nuclei it counts, in words.
    tally
        ``"confusion"`` (per group and provenance, :func:`cluster_confusions`),
        ``"calibration"`` (:func:`nucdata_models.metrics.calibration_tally` of the published
        probability) or ``"calibration_raw"`` (the same before calibration).
    compute
        ``(..., *tally) -> (...)``: its value on summed tallies (NaN where it counts no nucleus).
    """

    name: str
    value: str
    nuclei: str
    tally: str
    compute: Callable[[np.ndarray], np.ndarray]

    def describe(self) -> str:
        """The metric in one sentence."""
        return f"{self.value}; over {self.nuclei}"

    def __call__(self, tally: np.ndarray) -> np.ndarray:
        return self.compute(tally)


_HELD_OUT = "held-out nuclei (split TEST: images no stage sees) that their own dataset did not annotate in the set"
_NOT_DECIDED = ("whose true class lies in the set and whose label the tables do not decide: provenance 'predicted' "
                "(no mapping information) or 'ambiguous' (a candidate set the model resolves); exact-table and "
                "table-outside nuclei are not counted")

#: The primary endpoint.
ENDPOINT = MetricSpec(
    "macro_f1",
    "macro F1 of the published label over the label set's fixed class list (every class of the set, in every "
    "bootstrap draw; a class with neither a true nucleus nor a prediction in a sample counts F1 0, as "
    "f1_score(labels=range(k), average='macro', zero_division=0)); an 'outside' prediction is a miss of the true "
    "class, not a class of its own",
    f"{_HELD_OUT}, {_NOT_DECIDED}", "confusion", _endpoint_f1)

#: Every metric of the study, the endpoint first.
METRIC_SPECS: dict[str, MetricSpec] = {m.name: m for m in (
    ENDPOINT,
    MetricSpec("accuracy", "accuracy of the published label (an 'outside' prediction is wrong)",
               f"the endpoint's nuclei ({_HELD_OUT}, {_NOT_DECIDED})", "confusion", _accuracy),
    MetricSpec("ambiguous_accuracy", "accuracy of the published label, 'outside' counted as one more class",
               f"{_HELD_OUT}, whose row is ambiguous (a candidate set) and whose truth is known (a class of the set "
               "or outside it)", "confusion", _ambiguous_accuracy),
    MetricSpec("exact_accuracy", "accuracy of the published label, 'outside' counted as one more class",
               f"{_HELD_OUT}, whose class an exact table row gives and whose truth is known", "confusion",
               _exact_accuracy),
    MetricSpec("outside_rate_in_set", "share published as 'outside'",
               f"{_HELD_OUT}, whose true class lies in the set (any provenance)", "confusion", _outside_rate_in_set),
    MetricSpec("outside_recall", "share published as 'outside'",
               f"{_HELD_OUT}, whose true class lies outside the set (any provenance)", "confusion", _outside_recall),
    MetricSpec("ece", f"expected calibration error of the published probability (top label, {CALIBRATION_BINS} "
               "equal-width bins, nucdata_models.metrics.ece_from_tally; 'outside' counted as one more class): "
               "pickle fields 2 and 3 (nucdata_models.fill.published_fields, calibrated by "
               "nucdata_models.calibration) for an arm that publishes the merged label, the model's prediction "
               "and its calibrated probability for one that publishes its model's",
               f"{_HELD_OUT}, whose truth is known and whose published probability is finite", "calibration",
               ece_from_tally),
    MetricSpec("ece_uncalibrated", "the same expected calibration error before calibration (temperature 1)",
               f"{_HELD_OUT}, whose truth is known and whose probability is finite", "calibration_raw",
               ece_from_tally),
    MetricSpec("ece_floor", "the expected calibration error that perfectly calibrated probabilities would show "
               "by chance on the same nuclei at the same confidences (per bin the binomial mean absolute "
               "deviation, nucdata_models.metrics.ece_floor_from_tally): the binned ECE's upward bias; an ECE "
               "at or below it is within sampling noise of calibrated",
               f"the nuclei of 'ece' ({_HELD_OUT}, whose truth is known and whose published probability is "
               "finite)", "calibration", ece_floor_from_tally),
)}

#: The metrics reported in every view (published, model, merged) with intervals; ``macro_f1`` is the endpoint.
METRICS = ("macro_f1", "accuracy")
#: Metric name -> its value on summed tallies (:attr:`MetricSpec.compute`).
METRIC_FUNCTIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {n: m.compute for n, m in METRIC_SPECS.items()}


# -- the hierarchical bootstrap -------------------------------------------------------------
def resample_weights(n_clusters: int, draws: int, rng: np.random.Generator) -> np.ndarray:
    """``(draws, n_clusters)`` integer weights: how often each cluster is drawn in each resample.

    Each row is a draw of ``n_clusters`` clusters with replacement (a multinomial count
    vector summing to ``n_clusters``); a cluster enters whole or not at all.
    """
    if n_clusters <= 0:
        return np.zeros((draws, 0), np.int64)
    return rng.multinomial(n_clusters, np.full(n_clusters, 1.0 / n_clusters), size=draws)


@dataclass
class Resamples:
    """Draws of the hierarchical bootstrap, shared by every arm (so differences are paired).

    Each draw ``b`` holds ``J = len(worlds)`` world slots; slot ``j`` is world
    ``worlds[world_of[b, j]]`` with its own seed counts and group weights.

    Attributes
    ----------
    levels
        The levels resampled (a subset of :data:`LEVELS`); a level left out keeps every
        unit once.
    worlds
        The world seeds, sorted.
    seeds
        Per world seed, its training seeds (the order of the seed axis).
    world_of
        int ``(B, J)``: index into ``worlds`` of every slot.
    seed_counts
        Per world seed, int ``(B, J, T)``: how often each training seed is drawn in each
        slot (used where the slot is that world).
    group_weights
        Per world seed, int ``(B, J, G)``: how often each image group is drawn.
    """

    levels: tuple[str, ...]
    worlds: tuple[int, ...]
    seeds: dict[int, tuple[int, ...]]
    world_of: np.ndarray
    seed_counts: dict[int, np.ndarray]
    group_weights: dict[int, np.ndarray]

    @property
    def draws(self) -> int:
        """Number of resamples ``B``."""
        return int(self.world_of.shape[0])


def hierarchical_resamples(design: Mapping[int, tuple[Sequence[int], int]], draws: int, seed: int = 0,
                           levels: Sequence[str] = LEVELS) -> Resamples:
    """Draw ``draws`` resamples of worlds, then within each drawn world its seeds and its groups.

    Parameters
    ----------
    design
        World seed -> (its training seeds, its number of image groups).
    draws
        Number of resamples ``B``.
    seed
        Seed of the resampling.
    levels
        Which of :data:`LEVELS` to resample (``("group",)``: the images-only bootstrap
        over fixed worlds and seeds).
    """
    unknown = sorted(set(levels) - set(LEVELS))
    if unknown:
        raise InvalidArgumentError(f"unknown bootstrap levels {unknown}; pass a subset of {', '.join(LEVELS)}")
    if not design:
        raise InvalidArgumentError("hierarchical_resamples: no worlds; pass world seed -> (seeds, groups)")
    rng = np.random.default_rng(seed)
    worlds = tuple(sorted(design))
    n = len(worlds)
    if "world" in levels:
        world_of = rng.integers(0, n, size=(draws, n))
    else:
        world_of = np.broadcast_to(np.arange(n), (draws, n)).copy()
    seeds, counts, weights = {}, {}, {}
    for w in worlds:
        train_seeds, groups = design[w]
        seeds[w] = tuple(sorted(train_seeds))
        t = len(seeds[w])
        if t == 0:
            raise InvalidArgumentError(f"world {w} has no training seed; run every world with at least one")
        counts[w] = (rng.multinomial(t, np.full(t, 1.0 / t), size=(draws, n)) if "seed" in levels
                     else np.ones((draws, n, t), np.int64))
        weights[w] = (rng.multinomial(groups, np.full(groups, 1.0 / groups), size=(draws, n))
                      if "group" in levels and groups > 0 else np.ones((draws, n, groups), np.int64))
    return Resamples(tuple(levels), worlds, seeds, world_of, counts, weights)


def _weighted_nanmean(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    ok = np.isfinite(values) & (weights > 0)
    total = np.where(ok, weights, 0).sum(-1)
    summed = np.where(ok, values * weights, 0.0).sum(-1)
    return np.divide(summed, total, out=np.full(total.shape, np.nan), where=total > 0)


def resampled_mean(tallies: Mapping[tuple[int, int], np.ndarray], metric: Callable[[np.ndarray], np.ndarray],
                   resamples: Resamples) -> tuple[float, dict[tuple[int, int], float], np.ndarray]:
    """A metric's mean over worlds and seeds, per run, and its bootstrap replicates.

    Parameters
    ----------
    tallies
        ``(world seed, training seed) -> (G, ...)`` per-group tally of one arm and set,
        for every run of ``resamples``.
    metric
        Function of a summed tally (a :class:`MetricSpec`).
    resamples
        The draws (:func:`hierarchical_resamples`).

    Returns
    -------
    tuple
        The point estimate (mean over worlds of the mean over seeds of the metric on all
        groups), the value per run, and ``(B,)`` replicates (NaN where a draw counts no
        nucleus).
    """
    per_run = {key: float(metric(t.sum(0))) for key, t in tallies.items()}
    world_means = []
    for w in resamples.worlds:
        values = np.array([per_run[w, t] for t in resamples.seeds[w]])
        world_means.append(float(np.nanmean(values)) if np.isfinite(values).any() else np.nan)
    finite = [v for v in world_means if np.isfinite(v)]
    point = float(np.mean(finite)) if finite else float("nan")
    slots = np.full(resamples.world_of.shape, np.nan)
    for index, w in enumerate(resamples.worlds):
        here = resamples.world_of == index
        if not here.any():
            continue
        groups = resamples.group_weights[w][here].astype(np.float64)  # (M, G)
        values = []
        for t in resamples.seeds[w]:
            tally = np.asarray(tallies[w, t], np.float64)
            if tally.shape[0] != groups.shape[1]:
                raise InvalidArgumentError(f"run (world {w}, seed {t}) has {tally.shape[0]} groups, the resamples "
                                           f"{groups.shape[1]}; tally every run of a world over its groups")
            summed = (groups @ tally.reshape(tally.shape[0], -1)).reshape(groups.shape[0], *tally.shape[1:])
            values.append(np.asarray(metric(summed), np.float64))
        slots[here] = _weighted_nanmean(np.stack(values, -1), resamples.seed_counts[w][here])
    ok = np.isfinite(slots)
    count = ok.sum(1)
    replicates = np.divide(np.where(ok, slots, 0.0).sum(1), count, out=np.full(count.shape, np.nan),
                           where=count > 0)
    return point, per_run, replicates


# -- intervals and tests -------------------------------------------------------------------
def percentile_ci(replicates: np.ndarray, level: float = 0.95) -> list[float]:
    """Percentile interval of bootstrap replicates (NaN replicates left out)."""
    values = np.asarray(replicates, np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return [float("nan"), float("nan")]
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return [float(low), float(high)]


def bootstrap_p(replicates: np.ndarray) -> float:
    """Two-sided bootstrap p-value of "the difference is 0" from replicates of the difference.

    ``min(1, 2 * (1 + min(#{d <= 0}, #{d >= 0})) / (B + 1))``: twice the smaller tail,
    counted with the usual +1 so that a finite number of draws never gives 0.
    """
    values = np.asarray(replicates, np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan")
    tail = min(int((values <= 0).sum()), int((values >= 0).sum()))
    return float(min(1.0, 2 * (1 + tail) / (values.size + 1)))


def tost_p(replicates: np.ndarray, margin: float = EQUIVALENCE_MARGIN) -> float:
    """p-value of "the difference lies outside ``(-margin, margin)``" (two one-sided tests).

    ``max((1 + #{d <= -margin}), (1 + #{d >= margin})) / (B + 1)``: the larger of the two
    one-sided bootstrap p-values. Below ``alpha``, the ``1 - 2 alpha`` percentile
    interval of the difference lies inside the margin (equivalence).
    """
    values = np.asarray(replicates, np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan")
    tail = max(int((values <= -margin).sum()), int((values >= margin).sum()))
    return float(min(1.0, (1 + tail) / (values.size + 1)))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order (NaN stays NaN, not counted).

    The i-th smallest of m p-values becomes ``max_{j <= i} min(1, (m - j + 1) p_(j))``.
    """
    p = np.asarray(pvalues, np.float64)
    out = np.full(p.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    m = finite.size
    running = 0.0
    for rank, index in enumerate(finite[np.argsort(p[finite], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[index]))
        out[index] = running
    return [float(v) for v in out]


def verdict(row: Mapping[str, float], alpha: float = ALPHA) -> str:
    """What a paired difference may be called: ``gain``, ``loss``, ``equivalent`` or ``inconclusive``.

    A gain or loss only when Holm-significant (``p_holm < alpha``); "equivalent" only
    when the Holm-corrected TOST passes (``p_tost_holm < alpha``); else inconclusive.
    A difference both significant and inside the margin is a gain or loss.
    """
    p, tost = row.get("p_holm", np.nan), row.get("p_tost_holm", np.nan)
    if np.isfinite(p) and p < alpha:
        return "gain" if row["mean"] > 0 else "loss"
    if np.isfinite(tost) and tost < alpha:
        return "equivalent"
    return "inconclusive"
