"""Classification metrics per label set: accuracy, macro F1, weighted F1 (numpy only).

The one home of these definitions: F1 per class, macro F1 and accuracy are computed
from confusion matrices here (:func:`f1_from_confusion`, :func:`macro_f1_from_confusion`,
:func:`accuracy_from_confusion`, vectorised over leading axes, so the method study's
bootstrap uses them on thousands of resampled matrices at once), and everything else
(:func:`classification_metrics`, the study) calls them. Calibration likewise: the
top-label expected calibration error over 15 equal-width bins: one binning
(:func:`confidence_bin`), tallies per bin that a bootstrap can add up
(:func:`calibration_tally`), the ECE of tallies (:func:`ece_from_tally`), and from them
:func:`expected_calibration_error` and :func:`reliability_bins` (what reliability
diagrams draw). :func:`ece_floor_from_tally` is the ECE that perfectly calibrated
probabilities would show on the same tally by chance: the binned estimator is biased
upwards, and on a few hundred nuclei that bias alone is several points.

Weighted F1 weighs each class's F1 by its **true** count (support), as
``sklearn.metrics.f1_score(y_true, y_pred, average="weighted")`` does. The reference
code calls ``f1_score(y_pred, y_true, ...)``, which weighs by the **predicted** counts;
that variant is reported as ``weighted_f1_swapped`` to compare with published numbers.
"""

from __future__ import annotations

import math

import numpy as np

from nucdata.errors import InvalidArgumentError

__all__ = ["ECE_BINS", "accuracy_from_confusion", "calibration_tally", "classification_metrics", "confidence_bin",
           "confusion_matrix", "ece_floor_from_tally", "ece_from_tally", "expected_calibration_error", "f1_from_confusion",
           "macro_f1_from_confusion", "per_class_f1", "reliability_bins", "reliability_from_tally"]


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """``(n_classes, n_classes)`` counts, rows = truth, columns = prediction."""
    y_true = np.asarray(y_true, np.int64)
    y_pred = np.asarray(y_pred, np.int64)
    if y_true.shape != y_pred.shape:
        raise InvalidArgumentError(f"y_true and y_pred differ in shape: {y_true.shape} vs {y_pred.shape}; "
                                   "pass one prediction per true label")
    if y_true.size and (min(y_true.min(), y_pred.min()) < 0 or max(y_true.max(), y_pred.max()) >= n_classes):
        raise InvalidArgumentError(f"class ids must lie in [0, {n_classes}), got [{min(y_true.min(), y_pred.min())}, "
                                   f"{max(y_true.max(), y_pred.max())}]; map outside (-2) to a class first "
                                   "(fill.scored_class) or pass a larger n_classes")
    return np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def f1_from_confusion(confusion: np.ndarray) -> np.ndarray:
    """F1 of each class of ``(..., K, K)`` confusion matrices (rows = truth): ``(..., K)``.

    ``2 TP / (2 TP + FP + FN)``; 0 for a class never seen nor predicted.
    """
    cm = np.asarray(confusion, np.float64)
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    denominator = cm.sum(-2) + cm.sum(-1)  # (TP + FP) + (TP + FN)
    return np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)


def macro_f1_from_confusion(confusion: np.ndarray, classes: int | None = None, fixed: bool = False) -> np.ndarray:
    """Macro F1 of ``(..., K, K)`` confusion matrices: mean F1 over the classes in truth or prediction.

    With ``classes=k``, only the first ``k`` classes are averaged: a label set of ``k``
    classes scored with one more column for "outside" predictions, which are errors (a
    miss of the true class) but not a class of the set. Averaging that column in would
    add a class whose F1 is 0 whenever any nucleus is predicted outside, cutting macro
    F1 by a factor ``k / (k + 1)`` for a single such prediction. NaN for an empty matrix.

    With ``fixed=True`` the mean is over a fixed class list, every one of the first
    ``classes`` classes (all ``K`` without ``classes``), whether or not it occurs: a class
    with neither a true nucleus nor a prediction contributes F1 0, as
    ``sklearn.metrics.f1_score(labels=range(k), average="macro", zero_division=0)``
    does, so the class set cannot change between bootstrap resamples (the method study).
    """
    cm = np.asarray(confusion, np.float64)
    f1 = f1_from_confusion(cm)
    present = (cm.sum(-2) + cm.sum(-1)) > 0
    if classes is not None:
        f1, present = f1[..., :classes], present[..., :classes]
    if fixed:
        total = cm.sum((-2, -1))
        return np.divide(f1.sum(-1), f1.shape[-1], out=np.full(total.shape, np.nan), where=total > 0)
    count = present.sum(-1)
    return np.divide(f1.sum(-1), count, out=np.full(count.shape, np.nan), where=count > 0)


def accuracy_from_confusion(confusion: np.ndarray) -> np.ndarray:
    """Accuracy of ``(..., K, K)`` confusion matrices; NaN for an empty matrix."""
    cm = np.asarray(confusion, np.float64)
    total = cm.sum((-2, -1))
    correct = np.trace(cm, axis1=-2, axis2=-1)
    return np.divide(correct, total, out=np.full(total.shape, np.nan), where=total > 0)


def per_class_f1(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """F1 of each class, 2 TP / (2 TP + FP + FN); 0 for a class never seen nor predicted."""
    return f1_from_confusion(confusion_matrix(y_true, y_pred, n_classes))


#: Bins of the expected calibration error and of reliability diagrams: 15 of equal width on [0, 1].
ECE_BINS = 15


def confidence_bin(confidence: np.ndarray, bins: int = ECE_BINS) -> np.ndarray:
    """The equal-width bin of each confidence: int64 ``floor(c * bins)`` (1.0 in the last bin), -1 if not finite.

    The one binning of calibration in nucdata_models: :func:`calibration_tally`,
    :func:`reliability_bins` and :func:`expected_calibration_error` use it. Confidences
    are clipped to [0, 1] first.
    """
    if int(bins) < 1:
        raise InvalidArgumentError(f"confidence bins={bins}: pass at least one bin (the default is {ECE_BINS})")
    c = np.asarray(confidence, np.float64)
    finite = np.isfinite(c)
    clipped_confidence = np.clip(np.where(finite, c, 0.0), 0.0, 1.0)
    index = np.minimum((clipped_confidence * bins).astype(np.int64), bins - 1)
    return np.where(finite, index, -1)


def calibration_tally(correct: np.ndarray, confidence: np.ndarray, bins: int = ECE_BINS,
                      group: np.ndarray | None = None, n_groups: int | None = None) -> np.ndarray:
    """Per equal-width confidence bin: count, sum of confidence, number correct.

    Sums of tallies are tallies, so a bootstrap can resample groups (images, seeds) and
    add their tallies; :func:`ece_from_tally` then gives the ECE of every draw at once.

    Parameters
    ----------
    correct
        Boolean ``(N,)``: was the label right.
    confidence
        ``(N,)``: the probability given to that label; non-finite entries are left out.
    bins
        Number of equal-width bins (:func:`confidence_bin`).
    group, n_groups
        Optional int64 ``(N,)`` group of each entry in ``[0, n_groups)``: one tally per group.

    Returns
    -------
    numpy.ndarray
        float64 ``(bins, 3)``, or ``(n_groups, bins, 3)`` with ``group``.
    """
    correct = np.asarray(correct, bool).ravel()
    confidence = np.asarray(confidence, np.float64).ravel()
    if correct.shape != confidence.shape:
        raise InvalidArgumentError(f"correct and confidence differ in shape: {correct.shape} vs {confidence.shape}; "
                                   "pass one confidence per scored label")
    which = confidence_bin(confidence, bins)
    keep = which >= 0
    groups = 1
    if group is not None:
        group = np.asarray(group, np.int64).ravel()
        if group.shape != correct.shape or n_groups is None or (group.size and (group.min() < 0
                                                                                  or group.max() >= n_groups)):
            raise InvalidArgumentError(f"calibration_tally: group must be one id in [0, n_groups) per entry "
                                       f"(got shape {group.shape}, n_groups={n_groups})")
        groups = int(n_groups)
        which = group * bins + which
    which, c, hit = which[keep], np.clip(confidence[keep], 0.0, 1.0), correct[keep].astype(np.float64)
    size = groups * bins
    out = np.stack([np.bincount(which, minlength=size), np.bincount(which, weights=c, minlength=size),
                    np.bincount(which, weights=hit, minlength=size)], -1).astype(np.float64)
    return out.reshape(groups, bins, 3) if group is not None else out


def ece_from_tally(tally: np.ndarray) -> np.ndarray:
    """Top-label ECE of ``(..., bins, 3)`` tallies (:func:`calibration_tally`): ``sum_b |correct_b - conf_b| / N``.

    Vectorised over leading axes; NaN where nothing is counted.
    """
    t = np.asarray(tally, np.float64)
    total = t[..., 0].sum(-1)
    gap = np.abs(t[..., 2] - t[..., 1]).sum(-1)
    return np.divide(gap, total, out=np.full(np.shape(total), np.nan), where=total > 0)


_log_gamma = np.vectorize(math.lgamma, otypes=[np.float64])


def ece_floor_from_tally(tally: np.ndarray) -> np.ndarray:
    """The ECE perfectly calibrated probabilities would show in expectation on ``(..., bins, 3)`` tallies.

    The binned ECE of :func:`ece_from_tally` is ``sum_b |correct_b - n_b c_b| / N``
    (``c_b`` the bin's mean confidence). Were the probabilities calibrated, each bin's
    number correct would be a count with mean ``n_b c_b``, and the absolute value makes
    its chance deviation count as miscalibration: the estimator is biased upwards, by
    about ``sqrt(2 c (1 - c) / (pi n_b))`` per bin. The floor is that bias, exactly:
    ``sum_b E|X_b - n_b c_b| / N`` with ``X_b ~ Binomial(n_b, c_b)``, whose mean absolute
    deviation has de Moivre's closed form ``2 (m + 1) C(n, m + 1) c^(m+1) (1 - c)^(n - m)``,
    ``m = floor(n c)``. (Within a bin the confidences differ a little, and a sum of
    Bernoulli draws with unequal means varies slightly less than the binomial, so the
    floor is a shade high.) An ECE at or below the floor is within sampling noise of
    calibrated; 15 bins over 250 nuclei with confidences spread over [0.25, 0.85] give a
    floor of about 0.07, over 1,000 about 0.036.

    Vectorised over leading axes (bootstrap draws); NaN where nothing is counted.
    """
    t = np.asarray(tally, np.float64)
    n = np.rint(t[..., 0])
    total = n.sum(-1)
    p = np.clip(np.divide(t[..., 1], t[..., 0], out=np.zeros_like(n), where=t[..., 0] > 0), 0.0, 1.0)
    m = np.floor(n * p)
    k = m + 1
    live = (n > 0) & (p > 0) & (p < 1) & (k <= n)
    n_, p_, k_ = np.where(live, n, 1.0), np.where(live, p, 0.5), np.where(live, k, 1.0)
    log_choose = _log_gamma(n_ + 1) - _log_gamma(k_ + 1) - _log_gamma(n_ - k_ + 1)
    deviation = 2 * k_ * np.exp(log_choose + k_ * np.log(p_) + (n_ - k_ + 1) * np.log1p(-p_))
    gap = np.where(live, deviation, 0.0).sum(-1)
    return np.divide(gap, total, out=np.full(np.shape(total), np.nan), where=total > 0)


def reliability_bins(correct: np.ndarray, confidence: np.ndarray, bins: int = ECE_BINS) -> dict[str, np.ndarray]:
    """Counts, mean confidence and accuracy per equal-width confidence bin: a reliability diagram.

    Parameters
    ----------
    correct
        Boolean ``(N,)``: was the label right.
    confidence
        ``(N,)``: the probability given to that label (non-finite: left out).
    bins
        Number of equal-width bins on [0, 1] (:func:`confidence_bin`).

    Returns
    -------
    dict
        ``edges`` ``(bins + 1,)``; per bin ``count`` (int64), ``confidence`` (mean
        confidence) and ``accuracy`` (share correct), NaN for an empty bin.
    """
    return reliability_from_tally(calibration_tally(correct, confidence, bins))


def reliability_from_tally(tally: np.ndarray) -> dict[str, np.ndarray]:
    """:func:`reliability_bins` of a ``(bins, 3)`` tally (:func:`calibration_tally`), so one
    tally can give the diagram, the ECE and its chance floor."""
    tally = np.asarray(tally, np.float64)
    bins = tally.shape[0]
    count = tally[:, 0]
    return {"edges": np.linspace(0.0, 1.0, bins + 1), "count": count.astype(np.int64),
            "confidence": np.divide(tally[:, 1], count, out=np.full(bins, np.nan), where=count > 0),
            "accuracy": np.divide(tally[:, 2], count, out=np.full(bins, np.nan), where=count > 0)}


def expected_calibration_error(correct: np.ndarray, confidence: np.ndarray, bins: int = ECE_BINS) -> float:
    """Top-label expected calibration error over 15 equal-width bins (the one definition in nucdata_models).

    ``sum_b (n_b / N) |accuracy_b - confidence_b|`` over the bins of
    :func:`confidence_bin` (:func:`ece_from_tally` of :func:`calibration_tally`).
    *Top-label*: each nucleus contributes one label, the one that is published or
    predicted, and the probability given to it (not every class's probability, as in
    classwise ECE).

    Parameters
    ----------
    correct
        Boolean ``(N,)``: was the prediction right.
    confidence
        ``(N,)`` the probability the model gave its prediction (non-finite: left out).
    bins
        Number of equal-width confidence bins on [0, 1].

    Returns
    -------
    float
        NaN when nothing is scored.
    """
    return float(ece_from_tally(calibration_tally(correct, confidence, bins)))


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int,
                           confidence: np.ndarray | None = None, set_classes: int | None = None) -> dict:
    """Accuracy, macro and weighted F1, per-class recall, the confusion matrix and calibration.

    Parameters
    ----------
    y_true, y_pred
        Class ids in ``[0, n_classes)``, one per nucleus.
    n_classes
        Size of the label set (plus one when an outside output is scored as a class).
    confidence
        Optional ``(N,)`` probability of each prediction, for the calibration error.
    set_classes
        When the last column stands for "outside the set" predictions (``n_classes =
        set_classes + 1``): F1 is averaged over the set's classes only, so an outside
        prediction counts as a miss of the true class, not as a class whose F1 is 0.

    Returns
    -------
    dict
        ``count``; ``accuracy``; ``macro_f1`` (mean over the classes present in truth
        or prediction); ``weighted_f1`` (weights = true counts); ``weighted_f1_swapped``
        (weights = predicted counts, the reference code's variant); ``per_class_recall``
        (list, NaN for a class absent from the truth); ``confusion`` (list of rows, rows
        = truth); ``ece`` (NaN without ``confidence``). NaN when empty.
    """
    y_true = np.asarray(y_true, np.int64)
    y_pred = np.asarray(y_pred, np.int64)
    if y_true.size == 0:
        nan = float("nan")
        return {"count": 0, "accuracy": nan, "macro_f1": nan, "weighted_f1": nan, "weighted_f1_swapped": nan,
                "per_class_recall": [nan] * n_classes, "confusion": np.zeros((n_classes, n_classes), int).tolist(),
                "ece": nan}
    cm = confusion_matrix(y_true, y_pred, n_classes)
    f1 = f1_from_confusion(cm)
    support = cm.sum(1)
    predicted = cm.sum(0)
    if set_classes is not None:
        f1_for_weights = np.where(np.arange(n_classes) < set_classes, f1, 0.0)
    else:
        f1_for_weights = f1
    recall = np.divide(np.diag(cm), support, out=np.full(n_classes, np.nan), where=support > 0)
    ece = (expected_calibration_error(y_true == y_pred, confidence) if confidence is not None else float("nan"))
    return {
        "count": int(y_true.size),
        "accuracy": float(accuracy_from_confusion(cm)),
        "macro_f1": float(macro_f1_from_confusion(cm, set_classes)),
        "weighted_f1": float((f1_for_weights * support).sum() / support.sum()),
        "weighted_f1_swapped": float((f1_for_weights * predicted).sum() / predicted.sum()),
        "per_class_recall": [float(r) for r in recall],
        "confusion": cm.tolist(),
        "ece": ece,
    }
