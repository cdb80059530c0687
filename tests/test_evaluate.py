"""Metrics against hand-worked values and scikit-learn's definitions."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from kernelib import evaluate
from kernelib.errors import DataError

Y = np.array([0, 1, 2, 1])
P = np.array([[0.7, 0.2, 0.1],
              [0.1, 0.8, 0.1],
              [0.3, 0.4, 0.3],   # wrong: predicts 1
              [0.0, 1.0, 0.0]])


def test_metrics_hand_worked():
    m = evaluate.metrics(Y, P)
    assert m["accuracy"] == 0.75
    # NLL: mean of -log p(true); probabilities are clipped at 1e-7 before the log
    expected_nll = -(math.log(0.7) + math.log(0.8) + math.log(0.3) + math.log(1.0)) / 4
    assert m["nll"] == pytest.approx(expected_nll, rel=1e-6)
    # per-class F1: class 0 1.0; class 1: tp=2, fp=1, fn=0 -> 0.8; class 2: 0 -> macro 0.6
    assert m["macro_f1"] == pytest.approx((1.0 + 0.8 + 0.0) / 3)


def test_nll_clips_zero_probability():
    p = np.array([[1.0, 0.0], [1.0, 0.0]])
    m = evaluate.metrics(np.array([0, 1]), p)
    assert np.isfinite(m["nll"]) and m["nll"] == pytest.approx(-math.log(1e-7) / 2, rel=1e-3)


@pytest.mark.parametrize("p, match", [
    (np.array([[0.5, 0.4, 0.0]] * 4), r"'m' must be probabilities summing to 1"),
    (np.array([[np.nan, 0.5, 0.5]] * 4), r"'m' contain NaN"),
    (np.ones((3, 3)) / 3, r"'m' have 3 rows; the labels have 4"),
])
def test_bad_predictions_name_the_model(p, match):
    with pytest.raises(DataError, match=match):
        evaluate.metrics(Y, p, name="m")


def test_empty_split():
    with pytest.raises(DataError, match="empty split"):
        evaluate.metrics(np.array([], dtype=int), np.zeros((0, 3)), name="m")


def test_comparison_table_selection_and_gain():
    good = np.eye(3)[Y] * 0.9 + 0.1 / 3
    preds = {"val": {"a": P, "b": good}, "test": {"a": P, "b": good}}
    table = evaluate.comparison_table(preds, {"val": Y, "test": Y}, {"a": "member", "b": "merged"})
    assert isinstance(table, pd.DataFrame)
    assert table.loc["a", "test_accuracy"] == 0.75 and table.loc["b", "test_accuracy"] == 1.0
    assert evaluate.select(table, by="val_nll") == "b"
    s = evaluate.gain_summary(table, "b")
    assert s["best_member"] == "a" and s["accuracy_gain"] == pytest.approx(0.25)
    assert s["test_error_ratio"] == 0.0


def test_prediction_cache_round_trip(tmp_path):
    preds = {"val": {"a": P, "b/c": P[::-1]}}
    evaluate.save_predictions(tmp_path / "p.npz", preds, {"a": "member", "b/c": "merged"})
    back, kinds = evaluate.read_predictions(tmp_path / "p.npz")
    np.testing.assert_array_equal(back["val"]["b/c"], P[::-1])
    assert kinds == {"a": "member", "b/c": "merged"}
