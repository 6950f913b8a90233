"""GLUE metric functions against values worked out by hand."""

import math

import pytest

from sora.metrics import compute_metrics


def test_classification_metrics_by_hand():
    y = [1, 1, 1, 0, 0, 0]
    p = [1, 1, 0, 0, 0, 1]
    # TP=2 FN=1 TN=2 FP=1: acc 4/6; precision = recall = 2/3 -> F1 2/3; MCC = (2*2 - 1*1) / sqrt(3*3*3*3) = 1/3
    m = compute_metrics(["accuracy", "f1", "mcc"], p, y)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["mcc"] == pytest.approx(1 / 3)


def test_regression_metrics_by_hand():
    y = [1.0, 2.0, 3.0, 4.0]
    p = [2.0, 4.0, 6.0, 9.0]
    # spearman: same order -> 1; pearson: cov/sd: x=[1,2,3,4], y'=[2,4,6,9]
    xm, ym = 2.5, 5.25
    cov = sum((a - xm) * (b - ym) for a, b in zip(y, p))
    sd = math.sqrt(sum((a - xm) ** 2 for a in y) * sum((b - ym) ** 2 for b in p))
    m = compute_metrics(["pearson", "spearman"], p, y)
    assert m["spearman"] == pytest.approx(1.0)
    assert m["pearson"] == pytest.approx(cov / sd)


def test_constant_predictions_are_recorded_not_crashed():
    m = compute_metrics(["mcc", "accuracy", "f1"], [1, 1, 1, 1], [1, 0, 1, 0])
    assert m["mcc"] == 0.0 and m["accuracy"] == 0.5
    r = compute_metrics(["pearson", "spearman"], [2.5, 2.5, 2.5], [1.0, 2.0, 3.0])
    assert math.isnan(r["pearson"]) and math.isnan(r["spearman"])
