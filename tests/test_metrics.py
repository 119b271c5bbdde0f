"""Evaluation metrics against hand-computed values."""

import math

import pytest

from transferkit.evaluate.metrics import (confusion_matrix, expected_calibration_error, macro_f1, per_class,
                                          token_f1)

# gold:      0 0 0 1 1 2
# predicted: 0 0 1 1 2 2
PRED, GOLD = [0, 0, 1, 1, 2, 2], [0, 0, 0, 1, 1, 2]


def test_confusion_matrix_rows_are_gold_columns_predicted():
    assert confusion_matrix(PRED, GOLD, 3) == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]


def test_per_class_precision_recall_f1_by_hand():
    scores = per_class(PRED, GOLD, ["a", "b", "c"])
    # a: TP 2, predicted 2, support 3 → P 1, R 2/3, F1 0.8
    assert scores["a"] == pytest.approx({"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3})
    # b: TP 1, predicted 2, support 2 → P 0.5, R 0.5, F1 0.5
    assert scores["b"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    # c: TP 1, predicted 2, support 1 → P 0.5, R 1, F1 2/3
    assert scores["c"] == pytest.approx({"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1})
    assert macro_f1(PRED, GOLD) == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)


def test_a_class_never_predicted_has_zero_precision_not_an_error():
    assert per_class([0, 0], [0, 1], ["x", "y"])["y"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}


def test_expected_calibration_error_on_a_constructed_example():
    # Bin (0.9, 1.0]: confidences 0.95, 0.95, accuracy 1/2 → gap 0.45, weight 2/4.
    # Bin (0.5, 0.6]: confidences 0.55, 0.55, accuracy 1/2 → gap 0.05, weight 2/4.
    ece = expected_calibration_error([0.95, 0.95, 0.55, 0.55], [True, False, True, False])
    assert ece == pytest.approx(0.5 * 0.45 + 0.5 * 0.05)
    # Perfectly calibrated: confidence 1.0 and always right.
    assert expected_calibration_error([1.0, 1.0], [True, True]) == pytest.approx(0.0)
    assert math.isnan(expected_calibration_error([], []))


def test_token_f1_counts_overlap_as_a_multiset():
    assert token_f1("the cat sat", "the cat sat") == 1.0
    # overlap {the, cat} = 2; P 2/3, R 2/4 → F1 = 2·(2/3)(1/2)/(2/3 + 1/2) = 4/7
    assert token_f1("the cat sat", "the cat was here") == pytest.approx(4 / 7)
    assert token_f1("a a a", "a") == pytest.approx(2 * (1 / 3) * 1 / (1 / 3 + 1))
    assert token_f1("", "") == 1.0 and token_f1("x", "") == 0.0 and token_f1("x", "y") == 0.0
