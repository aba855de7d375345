"""Classification metrics per label set: accuracy, macro F1, weighted F1.

Weighted F1 weighs each class by its **true** count (support). The reference code calls
``f1_score(y_pred, y_true)``, which weighs by predicted counts; that variant is
available as ``weighted_f1_swapped`` for comparison with the published numbers.
"""

from __future__ import annotations

import numpy as np


def per_class_f1(y_true: np.ndarray, y_pred: np.ndarray, n: int) -> np.ndarray:
    f1 = np.zeros(n)
    for c in range(n):
        tp = np.sum((y_pred == c) & (y_true == c))
        fp = np.sum((y_pred == c) & (y_true != c))
        fn = np.sum((y_pred != c) & (y_true == c))
        f1[c] = 2 * tp / (2 * tp + fp + fn) if (tp + fp + fn) else 0.0
    return f1


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> dict[str, float]:
    """Accuracy, macro F1 (over classes present in truth or prediction), weighted F1."""
    y_true = np.asarray(y_true, np.int64)
    y_pred = np.asarray(y_pred, np.int64)
    if y_true.size == 0:
        return {"count": 0, "accuracy": float("nan"), "macro_f1": float("nan"), "weighted_f1": float("nan"),
                "weighted_f1_swapped": float("nan")}
    f1 = per_class_f1(y_true, y_pred, n_classes)
    support = np.bincount(y_true, minlength=n_classes)[:n_classes]
    predicted = np.bincount(y_pred, minlength=n_classes)[:n_classes]
    present = (support + predicted) > 0
    return {
        "count": int(y_true.size),
        "accuracy": float(np.mean(y_true == y_pred)),
        "macro_f1": float(f1[present].mean()),
        "weighted_f1": float((f1 * support).sum() / support.sum()),
        "weighted_f1_swapped": float((f1 * predicted).sum() / max(predicted.sum(), 1)),
    }
