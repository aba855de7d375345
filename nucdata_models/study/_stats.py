"""The method study's statistics: per-image confusions, clustered bootstrap weights, intervals, p-values.

Per arm and label set, the study reports the mean over runs of macro F1 and accuracy
(:data:`METRIC_FUNCTIONS`, the definitions of :mod:`nucdata_models.metrics`) with 95 %
percentile intervals (:func:`percentile_ci`) from a bootstrap clustered by image
(:func:`resample_weights`: images are drawn with replacement within each world and
every arm and run of that world sees the same draw, so differences are paired),
two-sided bootstrap p-values (:func:`bootstrap_p`) Holm-corrected across the label sets
(:func:`holm`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from nucdata.errors import InvalidArgumentError
from nucdata_models.metrics import accuracy_from_confusion, macro_f1_from_confusion

__all__ = ["METRICS", "METRIC_FUNCTIONS", "bootstrap_p", "cluster_confusions", "holm", "percentile_ci",
           "resample_weights"]

#: The metrics of the study; ``macro_f1`` is the primary endpoint.
METRICS = ("macro_f1", "accuracy")
#: Metric name -> its value on ``(..., K, K)`` confusions whose last column is "outside":
#: not a class of the set, so macro F1 averages the first ``K - 1`` classes.
METRIC_FUNCTIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "macro_f1": lambda cm: macro_f1_from_confusion(cm, cm.shape[-1] - 1),
    "accuracy": accuracy_from_confusion}


def cluster_confusions(truth: np.ndarray, guess: np.ndarray, cluster: np.ndarray, n_clusters: int,
                       n_classes: int) -> np.ndarray:
    """Confusion matrix of every cluster: ``(n_clusters, n_classes, n_classes)`` counts, rows = truth.

    Summing them with integer weights is the confusion matrix of a sample that holds
    each cluster (image) that many times, whole.
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


def resample_weights(n_clusters: int, draws: int, rng: np.random.Generator) -> np.ndarray:
    """``(draws, n_clusters)`` integer weights: how often each cluster is drawn in each resample.

    Each row is a draw of ``n_clusters`` clusters with replacement (a multinomial count
    vector summing to ``n_clusters``); a cluster enters whole or not at all.
    """
    if n_clusters <= 0:
        return np.zeros((draws, 0), np.int64)
    return rng.multinomial(n_clusters, np.full(n_clusters, 1.0 / n_clusters), size=draws)


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
