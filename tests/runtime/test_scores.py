"""Evaluation figures: golden values on tiny fixed predictions."""

from __future__ import annotations

import numpy as np
import pytest

from cmcd_edge.runtime.scores import confusions, macro_f1, per_class

CLASSES = ("a", "b", "c")
Y = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
PRED = np.array([0, 0, 1, 2, 1, 2, 2, 2, 2, 1])


def test_macro_f1_golden_value():
    # 2TP / (2TP + FP + FN): a: tp 2 fp 0 fn 2 -> 4/6; b: tp 1 fp 2 fn 2 -> 2/6; c: tp 2 fp 3 fn 1 -> 4/8
    assert macro_f1(PRED, Y, 3) == pytest.approx((4 / 6 + 2 / 6 + 4 / 8) / 3)


def test_per_class_golden_value():
    assert per_class(PRED, Y, CLASSES) == {"a": {"rows": 4, "top1": 0.5}, "b": {"rows": 3, "top1": pytest.approx(1 / 3)},
                                           "c": {"rows": 3, "top1": pytest.approx(2 / 3)}}


def test_per_class_lists_only_classes_the_labels_hold():
    assert list(per_class(np.array([2, 0]), np.array([2, 2]), CLASSES)) == ["c"]


def test_confusions_golden_value_most_rows_first_then_class_order():
    assert confusions(PRED, Y, CLASSES) == [{"true": "b", "pred": "c", "rows": 2},
                                            {"true": "a", "pred": "b", "rows": 1},
                                            {"true": "a", "pred": "c", "rows": 1},
                                            {"true": "c", "pred": "b", "rows": 1}]


def test_confusions_sum_to_the_errors_and_are_empty_without_any():
    assert sum(c["rows"] for c in confusions(PRED, Y, CLASSES)) == int((PRED != Y).sum())
    assert confusions(Y, Y, CLASSES) == []
