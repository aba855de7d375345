"""Metrics on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nucdata_models.metrics import classification_metrics, confusion_matrix


def test_metrics_on_a_hand_computed_case():
    truth = np.array([0, 0, 0, 0, 1, 1, 2])
    pred = np.array([0, 0, 0, 1, 1, 2, 2])
    m = classification_metrics(truth, pred, 3)
    # class 0: TP 3, FP 0, FN 1 -> 6/7; class 1: TP 1, FP 1, FN 1 -> 1/2; class 2: TP 1, FP 1, FN 0 -> 2/3
    f1 = np.array([6 / 7, 1 / 2, 2 / 3])
    assert m["count"] == 7
    assert m["accuracy"] == pytest.approx(5 / 7)
    assert m["macro_f1"] == pytest.approx(f1.mean())
    assert m["weighted_f1"] == pytest.approx((6 / 7 * 4 + 1 / 2 * 2 + 2 / 3 * 1) / 7)  # true counts 4, 2, 1
    assert m["weighted_f1_swapped"] == pytest.approx((6 / 7 * 3 + 1 / 2 * 2 + 2 / 3 * 2) / 7)  # predicted 3, 2, 2
    assert m["weighted_f1"] != pytest.approx(m["weighted_f1_swapped"])


def test_absent_classes_and_empty_input():
    m = classification_metrics(np.array([1, 1, 1]), np.array([1, 1, 3]), 5)
    # class 1: TP 2, FN 1 -> 4/5; class 3 predicted only -> 0; classes 0, 2, 4 neither -> not in macro
    assert m["macro_f1"] == pytest.approx((0.8 + 0.0) / 2)
    assert m["weighted_f1"] == pytest.approx(0.8)
    assert m["weighted_f1_swapped"] == pytest.approx(0.8 * 2 / 3)
    empty = classification_metrics(np.zeros(0), np.zeros(0), 3)
    assert empty["count"] == 0 and math.isnan(empty["accuracy"])


def test_confusion_matrix_and_bad_ids():
    cm = confusion_matrix(np.array([0, 1, 1]), np.array([1, 1, 0]), 2)
    assert cm.tolist() == [[0, 1], [1, 1]]
    with pytest.raises(ValueError):
        confusion_matrix(np.array([0, 2]), np.array([0, 1]), 2)


def test_an_outside_column_is_a_miss_not_a_class():
    from nucdata_models.metrics import classification_metrics

    truth = np.array([0, 0, 1, 1])
    guess = np.array([0, 2, 1, 1])  # one nucleus predicted outside (column 2)
    m = classification_metrics(truth, guess, 3, set_classes=2)
    # class 0: TP 1, FN 1 -> F1 2/3; class 1: F1 1; the outside column is not averaged in
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1) / 2)
    assert m["accuracy"] == pytest.approx(0.75)
    assert classification_metrics(truth, guess, 3)["macro_f1"] == pytest.approx((2 / 3 + 1 + 0) / 3)
