"""Metrics against hand-worked values, scikit-learn and SciPy; the evaluate stage's tables, files and sentences."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn import metrics as skm

from conftest import synthetic_run
from kernelib import bootstrap, evaluate, headline, inference, metrics, selection
from kernelib.errors import DataError

Y = np.array([0, 1, 2, 1])
P = np.array([[0.7, 0.2, 0.1],
              [0.1, 0.8, 0.1],
              [0.3, 0.4, 0.3],   # wrong: predicts 1
              [0.0, 1.0, 0.0]])


def test_metrics_hand_worked():
    m = metrics.metrics(Y, P, top_k=2)
    assert m["accuracy"] == 0.75
    # NLL: mean of -log p(true); probabilities are clipped at 1e-7 before the log
    expected_nll = -(math.log(0.7) + math.log(0.8) + math.log(0.3) + math.log(1.0)) / 4
    assert m["nll"] == pytest.approx(expected_nll, rel=1e-6)
    # per-class F1: class 0 1.0; class 1: tp=2, fp=1, fn=0 -> 0.8; class 2: 0 -> macro 0.6
    assert m["macro_f1"] == pytest.approx((1.0 + 0.8 + 0.0) / 3)
    # Brier: squared distances to the one-hot rows 0.14, 0.06, 0.74, 0.0
    assert m["brier"] == pytest.approx((0.14 + 0.06 + 0.74 + 0.0) / 4)
    # top-2: row 3's true class (p=0.3) ties with class 0 for second place -> a hit
    assert m["top2_accuracy"] == 1.0


def test_nll_clips_zero_probability():
    p = np.array([[1.0, 0.0], [1.0, 0.0]])
    m = metrics.metrics(np.array([0, 1]), p)
    assert np.isfinite(m["nll"]) and m["nll"] == pytest.approx(-math.log(1e-7) / 2, rel=1e-3)


@pytest.mark.parametrize("seed, k", [(0, 3), (1, 10), (2, 10)])
def test_metrics_match_scikit_learn(seed, k):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, size=300)
    p = rng.dirichlet(np.full(k, 0.3), size=300)  # many probabilities below the 1e-7 clip
    p[np.arange(150), y[:150]] += 1.0  # half the rows lean towards the truth
    p /= p.sum(axis=1, keepdims=True)
    m = metrics.metrics(y, p, top_k=2)
    labels = np.arange(k)
    clipped = np.clip(p, 1e-7, 1.0)
    clipped /= clipped.sum(axis=1, keepdims=True)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, p.argmax(1)))
    assert m["top2_accuracy"] == pytest.approx(skm.top_k_accuracy_score(y, p, k=2, labels=labels))
    assert m["nll"] == pytest.approx(skm.log_loss(y, clipped, labels=labels), rel=1e-9)
    assert m["brier"] == pytest.approx(
        skm.brier_score_loss(y, p, labels=labels, scale_by_half=False), rel=1e-9)
    assert m["macro_f1"] == pytest.approx(
        skm.f1_score(y, p.argmax(1), labels=np.unique(y), average="macro"))
    table = metrics.per_class(y, p)
    prec, rec, f1, support = skm.precision_recall_fscore_support(
        y, p.argmax(1), labels=labels, zero_division=np.nan)
    np.testing.assert_allclose(table["precision"], prec)
    np.testing.assert_allclose(table["recall"], rec)
    np.testing.assert_allclose(table["f1"], f1)
    np.testing.assert_array_equal(table["support"], support)


def _two_class(conf_correct: list[tuple[float, bool]]):
    """Rows predicting class 0 with confidence c; the label is 0 when `correct`, else 1."""
    p = np.array([[c, 1 - c] for c, _ in conf_correct])
    y = np.array([0 if ok else 1 for _, ok in conf_correct])
    return y, p


def test_ece_and_mce_on_a_constructed_case():
    # 15 bins of width 1/15: 0.95 falls in (14/15, 1], 0.55 in (8/15, 9/15], 0.70 in (10/15, 11/15]
    rows = ([(0.95, True)] * 3 + [(0.95, False)]          # acc 0.75 vs conf 0.95: gap 0.20
            + [(0.55, True)] * 2                           # acc 1.00 vs conf 0.55: gap 0.45
            + [(0.70, True)] * 2 + [(0.70, False)] * 2)    # acc 0.50 vs conf 0.70: gap 0.20
    y, p = _two_class(rows)
    m = metrics.metrics(y, p, n_bins=15)
    assert m["ece"] == pytest.approx(0.4 * 0.20 + 0.2 * 0.45 + 0.4 * 0.20)  # 0.25
    assert m["mce"] == pytest.approx(0.45)
    r = metrics.reliability(y, p, n_bins=15)
    assert r.loc[r["count"] > 0, "bin"].tolist() == [9, 11, 15]
    assert r.loc[r["bin"] == 15, "accuracy"].item() == 0.75
    assert r["count"].sum() == len(y) and r["confidence"].isna().sum() == 12


@pytest.mark.parametrize("n_bins", [5, 15])
def test_ece_matches_a_loop_over_bin_edges(n_bins):
    rng = np.random.default_rng(3)
    p = rng.dirichlet(np.ones(4), size=500)
    y = rng.integers(0, 4, size=500)
    conf, correct = p.max(1), p.argmax(1) == y
    edges = np.linspace(0, 1, n_bins + 1)
    ece, gaps = 0.0, []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            gap = abs(correct[inside].mean() - conf[inside].mean())
            ece += inside.mean() * gap
            gaps.append(gap)
    m = metrics.metrics(y, p, n_bins=n_bins)
    assert m["ece"] == pytest.approx(ece) and m["mce"] == pytest.approx(max(gaps))


def test_bootstrap_interval_contains_the_estimate_and_shrinks_with_more_data():
    rng = np.random.default_rng(0)
    widths = []
    for n in (100, 10_000):
        values = (rng.random(n) < 0.8).astype(float)
        lo, hi = bootstrap.bootstrap_ci(values, n_resamples=1000, seed=0)
        assert lo <= values.mean() <= hi
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 5  # about 1/sqrt(100) of it


def test_bootstrap_matches_scipy_and_is_seeded():
    values = (np.random.default_rng(1).random(300) < 0.9).astype(float)
    mine = bootstrap.bootstrap_ci(values, n_resamples=4000, seed=7)
    ref = stats.bootstrap((values,), np.mean, method="percentile", n_resamples=4000,
                          random_state=1).confidence_interval
    assert mine == pytest.approx((ref.low, ref.high), abs=0.01)
    assert bootstrap.bootstrap_ci(values, n_resamples=500, seed=7) == \
        bootstrap.bootstrap_ci(values, n_resamples=500, seed=7)
    assert bootstrap.bootstrap_ci(values, n_resamples=500, seed=7) != \
        bootstrap.bootstrap_ci(values, n_resamples=500, seed=8)


def test_paired_bootstrap():
    rng = np.random.default_rng(2)
    shared = rng.random(400) < 0.85          # rows both models get right...
    a = (shared | (rng.random(400) < 0.3)).astype(float)   # ...and a few more for `a`
    b = shared.astype(float)
    same = bootstrap.paired_bootstrap(b, b, n_resamples=500, seed=0)
    assert same == {"diff": 0.0, "lo": 0.0, "hi": 0.0}
    got = bootstrap.paired_bootstrap(a, b, n_resamples=4000, seed=0)
    ref = stats.bootstrap((a, b), lambda u, v: np.mean(u) - np.mean(v), paired=True,
                          vectorized=False, method="percentile", n_resamples=2000,
                          random_state=0).confidence_interval
    assert got["diff"] == pytest.approx(a.mean() - b.mean())
    assert (got["lo"], got["hi"]) == pytest.approx((ref.low, ref.high), abs=0.01)
    # resampling the two models independently ignores that they err on the same rows
    ia, ib = rng.integers(0, 400, size=(2, 2000, 400))
    unpaired = np.quantile(a[ia].mean(1) - b[ib].mean(1), [0.025, 0.975])
    assert got["hi"] - got["lo"] < 0.75 * (unpaired[1] - unpaired[0])


def test_diversity_hand_made():
    y = np.array([0, 0, 1, 1])
    onehot = np.eye(2)
    preds = {"a": onehot[[0, 0, 1, 0]], "b": onehot[[0, 1, 1, 0]], "c": onehot[[0, 0, 1, 1]]}
    d = evaluate.diversity(y, preds).set_index(["model_a", "model_b"])
    assert d.loc[("a", "b"), "disagreement"] == 0.25
    assert d.loc[("a", "c"), "disagreement"] == 0.25
    assert d.loc[("b", "c"), "disagreement"] == 0.5
    assert d.loc[("a", "a"), "disagreement"] == 0.0
    # errors a = [0,0,0,1], b = [0,1,0,1]: Pearson r = 0.125 / sqrt(0.1875 * 0.25) = 1/sqrt(3)
    assert d.loc[("a", "b"), "error_correlation"] == pytest.approx(1 / math.sqrt(3))
    assert d.loc[("b", "a"), "error_correlation"] == pytest.approx(1 / math.sqrt(3))
    assert d.loc[("a", "a"), "error_correlation"] == pytest.approx(1.0)
    assert np.isnan(d.loc[("a", "c"), "error_correlation"])  # c makes no error


@pytest.mark.parametrize("p, match", [
    (np.array([[0.5, 0.4, 0.0]] * 4), r"'m' must be probabilities summing to 1"),
    (np.array([[np.nan, 0.5, 0.5]] * 4), r"'m' contain NaN or infinity \(first at row 0\)"),
    (np.ones((3, 3)) / 3, r"'m' have 3 rows; the labels have 4"),
])
def test_bad_predictions_name_the_model(p, match):
    with pytest.raises(DataError, match=match):
        metrics.metrics(Y, p, name="m")
    with pytest.raises(DataError, match=match):
        evaluate.comparison_table({"test": {"good": P, "m": p}}, {"test": Y}, {})


def test_empty_split():
    with pytest.raises(DataError, match="empty split"):
        metrics.metrics(np.array([], dtype=int), np.zeros((0, 3)), name="m")
    with pytest.raises(DataError, match=r"the 'test' split is empty \(0 rows\)"):
        evaluate.comparison_table({"test": {"m": np.zeros((0, 3))}},
                                  {"test": np.array([], dtype=int)}, {"m": "member"})


def test_class_absent_from_the_split_keeps_metrics_defined():
    y = np.array([0, 0, 1, 1, 0])  # class 2 never occurs
    p = np.array([[0.8, 0.1, 0.1], [0.2, 0.2, 0.6], [0.1, 0.8, 0.1], [0.3, 0.6, 0.1],
                  [0.6, 0.3, 0.1]])
    table = evaluate.comparison_table({"test": {"m": p}}, {"test": y}, {"m": "member"},
                                      class_names=["zero", "one", "two"])
    row = table.loc["m"]
    assert np.isfinite(row[["test_accuracy", "test_nll", "test_brier", "test_ece"]].astype(float)).all()
    assert row["test_macro_f1"] == pytest.approx(
        skm.f1_score(y, p.argmax(1), labels=[0, 1], average="macro"))
    assert row["note"] == "test: 1 of 3 classes absent (two); macro-F1 over the others"
    pc = metrics.per_class(y, p, ["zero", "one", "two"]).set_index("class")
    assert pc.loc["two", "note"] == "absent from this split" and np.isnan(pc.loc["two", "recall"])
    assert pc.loc["two", "precision"] == 0.0  # predicted once, wrongly


def test_comparison_table_selection_and_gain():
    good = np.eye(3)[Y] * 0.9 + 0.1 / 3
    preds = {"val": {"a": P, "b": good}, "test": {"a": P, "b": good}}
    table = evaluate.comparison_table(preds, {"val": Y, "test": Y}, {"a": "member", "b": "merged"})
    assert isinstance(table, pd.DataFrame)
    assert table.loc["a", "test_accuracy"] == 0.75 and table.loc["b", "test_accuracy"] == 1.0
    assert selection.select(table, by="val_nll") == "b"
    s = selection.gain_summary(table, "b")
    assert s["best_member"] == s["picked_member"] == "a"
    assert s["accuracy_gain"] == pytest.approx(0.25)
    assert s["test_error_ratio"] == 0.0


def test_gain_is_measured_against_the_member_validation_picks():
    # x is best on test, z on validation: a user without kernelib ships z, so the gain is vs z
    table = pd.DataFrame({
        "kind": ["member", "member", "merged"],
        "val_nll": [0.30, 0.20, 0.25],
        "test_accuracy": [0.90, 0.85, 0.88],
        "test_nll": [0.31, 0.35, 0.29],
    }, index=["x", "z", "m"])
    s = selection.gain_summary(table, "m", by="val_nll")
    assert (s["picked_member"], s["best_member"]) == ("z", "x")
    assert s["accuracy_gain"] == pytest.approx(0.03)
    assert s["picked_member_test_nll"] == 0.35 and s["best_member_test_accuracy"] == 0.90
    assert s["test_error_ratio"] == pytest.approx(0.12 / 0.15)


def test_benchmark_rows_for_fashion_mnist_only():
    from kernelib.benchmarks import benchmark_summary, benchmark_table

    assert benchmark_summary("digits", 0.99) == {}
    b = benchmark_summary("fashion_mnist", 0.93)["benchmarks"]
    assert "zalandoresearch/fashion-mnist" in b["source"]
    above = {r["model"]: r["this_run_above"] for r in b["rows"]}
    assert above["2 Conv+pooling"] and above["3 Conv+pooling+2 FC+dropout"]
    assert not above["Google AutoML Vision, 24 compute hours"]
    t = benchmark_table({"benchmarks": b, "selected": "weighted", "test_accuracy": 0.93})
    assert list(t.index)[2:4] == ["3 Conv+pooling+2 FC+dropout", "this run: weighted (kernelib)"]


def test_merged_versus_best_hand_worked():
    # 200 test rows: the best member makes 10 errors, merged m1 makes 7, m2 makes 12
    table = pd.DataFrame({
        "kind": ["member", "member", "merged", "merged"],
        "test_accuracy": [0.95, 0.90, 0.965, 0.94],
        "test_nll": [0.20, 0.30, 0.15, 0.18],
    }, index=["best", "weak", "m1", "m2"])
    s = selection.merged_versus_best(table, "best")
    assert s["best_merged"] == "m1" and s["best_merged_error_ratio"] == pytest.approx(0.7)
    assert s["best_member_test_nll"] == 0.20 and s["best_merged_test_nll"] == 0.15
    assert [r["model"] for r in s["merged_below_best"]] == ["m2"]
    assert s["merged_below_best"][0]["accuracy_diff"] == pytest.approx(-0.01)
    assert s["merged_below_best"][0]["nll_diff"] == pytest.approx(-0.02)
    assert headline.below_best_sentence(s) == (
        "below the best member best on test accuracy or NLL: m2 (-1.00 points, NLL -0.0200)")
    # a merged model with the same accuracy but a higher NLL loses too; a perfect member: no ratio
    table.loc["m1", "test_nll"] = 0.25
    table.loc["best", "test_accuracy"] = 1.0
    s = selection.merged_versus_best(table, "best")
    assert s["best_merged_error_ratio"] is None
    assert [r["model"] for r in s["merged_below_best"]] == ["m1", "m2"]
    assert selection.merged_versus_best(table[table["kind"] == "member"], "best") == {}
    assert headline.below_best_sentence({}) is None


HEADLINE_LABELS = ["selected model", "test accuracy", "member validation picks",
                   "accuracy gain over it", "NLL difference to it",
                   "best member on test (optimistic)", "best merged model",
                   "merged models that lose"]
SUMMARY = {
    "selected": "weighted", "selected_kind": "merged", "selected_by": "val_nll",
    "ci_level": 0.95, "test_accuracy": 0.9123, "test_accuracy_lo": 0.9051,
    "test_accuracy_hi": 0.9188, "picked_member": "cnn_0", "picked_member_test_accuracy": 0.8975,
    "accuracy_gain": 0.0148, "accuracy_gain_lo": 0.0061, "accuracy_gain_hi": 0.0232,
    "verdict": "more accurate", "nll_diff": -0.0321, "nll_diff_lo": -0.0455,
    "nll_diff_hi": -0.019, "best_member": "cnn_1", "best_member_test_accuracy": 0.9002,
    "best_merged": "weighted", "best_merged_test_accuracy": 0.9123,
    "best_merged_test_nll": 0.2567, "best_merged_error_ratio": 0.8778,
    "merged_below_best": [{"model": "average", "accuracy_diff": -0.0031, "nll_diff": 0.0042},
                          {"model": "vote", "accuracy_diff": 0.001, "nll_diff": 0.5}],
}


def test_headline_sentences_literal():
    assert headline.headline_rows(SUMMARY) == {
        "selected model": "weighted (merged, chosen by val_nll)",
        "test accuracy": "0.9123 (95% CI 0.9051 to 0.9188)",
        "member validation picks": "cnn_0 (0.8975)",
        "accuracy gain over it": "+1.48 points (paired 95% CI +0.61 to +2.32): more accurate",
        "NLL difference to it": "-0.0321 nats (95% CI -0.0455 to -0.0190)",
        "best member on test (optimistic)": "cnn_1 (0.9002)",
        "best merged model": "weighted (test accuracy 0.9123, NLL 0.2567; test error ratio to "
                             "the best member 0.88)",
        "merged models that lose": "below the best member cnn_1 on test accuracy or NLL: "
                                   "average (-0.31 points, NLL +0.0042); "
                                   "vote (+0.10 points, NLL +0.5000)",
    }


@pytest.mark.parametrize("change, label, sentence", [
    ({"best_merged_error_ratio": None}, "best merged model",
     "weighted (test accuracy 0.9123, NLL 0.2567; test error ratio to the best member n/a, "
     "the best member makes no error)"),
    ({"merged_below_best": []}, "merged models that lose",
     "every merged model is at or above the best member cnn_1 on test accuracy and NLL"),
    ({"note": "test: 1 of 3 classes absent (b); macro-F1 over the others"}, "note",
     "test: 1 of 3 classes absent (b); macro-F1 over the others"),
])
def test_headline_sentence_variants_literal(change, label, sentence):
    assert headline.headline_rows(SUMMARY | change)[label] == sentence


def test_headline_without_merged_models():
    members_only = {k: v for k, v in SUMMARY.items()
                    if not k.startswith(("best_merged", "merged_"))}
    assert list(headline.headline_rows(members_only)) == HEADLINE_LABELS[:6]
    assert headline.below_best_sentence(members_only) is None


@pytest.mark.parametrize("by, best", [("val_nll", "min"), ("val_brier", "min"), ("val_ece", "min"),
                                      ("val_accuracy", "max"), ("val_macro_f1", "max")])
def test_select_direction(by, best):
    table = pd.DataFrame({"kind": ["member"] * 3, by: [0.3, 0.1, 0.2]}, index=["x", "y", "z"])
    assert selection.select(table, by=by) == ("y" if best == "min" else "x")


def test_select_refuses_unknown_column():
    table = pd.DataFrame({"kind": ["member"], "val_nll": [0.1]}, index=["x"])
    with pytest.raises(DataError, match=r"cannot select by 'val_f2'; valid columns: \['val_nll'\]"):
        selection.select(table, by="val_f2")


def test_prediction_cache_round_trip(tmp_path):
    preds = {"val": {"a": P, "b/c": P[::-1]}}
    inference.save_predictions(tmp_path / "p.npz", preds, {"a": "member", "b/c": "merged"})
    back, kinds = inference.read_predictions(tmp_path / "p.npz")
    np.testing.assert_array_equal(back["val"]["b/c"], P[::-1])
    assert kinds == {"a": "member", "b/c": "merged"}


def test_cache_predictions_writes_the_cache_models_json_and_the_val_table(tmp_path):
    from types import SimpleNamespace

    from kernelib.merge.cache import cache_predictions
    from kernelib.rundir import RunDir

    def fixed(p):  # a "model" that returns the same probability row for every input row
        return lambda x, training=False: np.tile(p, (len(x), 1))

    run = RunDir(tmp_path / "run")
    members = [SimpleNamespace(name="a", model=fixed([0.7, 0.2, 0.1]))]
    merged = {"w": fixed([0.1, 0.8, 0.1])}
    splits = SimpleNamespace(x_val=np.zeros((4, 2)), y_val=Y, x_test=np.zeros((3, 2)),
                             y_test=Y[:3])
    table = cache_predictions(run, members, merged, splits, val_out_of_fold={"w": P})
    preds, kinds = inference.read_predictions(run.predictions)
    np.testing.assert_array_equal(preds["val"]["w"], P)  # out-of-fold replaces the direct ones
    np.testing.assert_array_equal(preds["test"]["w"], [[0.1, 0.8, 0.1]] * 3)
    assert kinds == {"a": "member", "w": "merged"}
    assert json.loads((run.merged / "models.json").read_text()) == {
        "a": {"kind": "member", "path": "members/a/model.keras", "val_predictions": "direct"},
        "w": {"kind": "merged", "path": "merged/w.keras", "val_predictions": "out-of-fold"}}
    assert table.loc["a", "val_accuracy"] == 0.25 and table.loc["w", "val_accuracy"] == 0.75
    assert [r["model"] for r in _strict_json(run.metrics / "merge.json")] == list(table.index)


def _strict_json(path):
    """Parse JSON refusing NaN/Infinity (not valid JSON for other tools)."""
    def refuse(token):
        raise ValueError(f"{path.name}: {token}")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_run_evaluation_writes_deterministic_tables(tmp_path):
    run, splits = synthetic_run(tmp_path, class_names=["a", "b", "c", "d"])
    ev = evaluate.run_evaluation(run, splits, bootstrap_resamples=300, seed=0)
    files = sorted(p.name for p in run.metrics.glob("*.json"))
    assert files == ["comparison.json", "data.json", "diversity.json", "gains.json",
                     "intervals.json", "per_class.json", "reliability.json", "summary.json"]
    first = {f: (run.metrics / f).read_bytes() for f in files}
    evaluate.run_evaluation(run, splits, bootstrap_resamples=300, seed=0)
    assert first == {f: (run.metrics / f).read_bytes() for f in files}
    for f in files:
        text = json.dumps(_strict_json(run.metrics / f))
        assert "latency" not in text and "throughput" not in text
    s = ev.summary
    assert s["selected"] == selection.select(ev.comparison, by="val_nll")
    assert s["best_member"] == ev.comparison.query("kind == 'member'")["test_accuracy"].idxmax()
    assert s["test_accuracy_lo"] <= s["test_accuracy"] <= s["test_accuracy_hi"]
    assert s["bootstrap_resamples"] == 300 and s["ci_level"] == 0.95
    assert list(ev.intervals.index) == list(ev.comparison.index)
    members = ev.comparison.query("kind == 'member'")
    assert s["picked_member"] == members["val_nll"].idxmin()
    assert set(ev.gains.index) == {"average", "member_a", "member_b"} - {s["picked_member"]}
    assert set(ev.gains["versus"]) == {s["picked_member"]}
    g = ev.gains.iloc[0]
    assert g["test_accuracy_diff_lo"] <= g["test_accuracy_diff"] <= g["test_accuracy_diff_hi"]
    assert ev.compared == [s["picked_member"], "average"]
    head = ev.headline["value"]  # the sentences themselves: test_headline_sentences_literal
    assert list(head.index) == HEADLINE_LABELS
    assert head["selected model"] == f"{s['selected']} ({s['selected_kind']}, chosen by val_nll)"
    assert re.fullmatch(r"0\.\d{4} \(95% CI 0\.\d{4} to 0\.\d{4}\)", head["test accuracy"])
    assert len(ev.per_class_of("average")) == 4 and len(ev.reliability) == 3 * 15
    assert len(ev.diversity) == 4  # the two members, every ordered pair


def test_run_evaluation_with_a_class_absent(tmp_path):
    run, splits = synthetic_run(tmp_path, class_names=["a", "b", "c"], absent=1)
    ev = evaluate.run_evaluation(run, splits, bootstrap_resamples=200)
    assert ev.data.loc["test", "classes_absent"] == "b"
    assert ev.data.loc["val", "classes_absent"] == "none"
    assert "1 of 3 classes absent (b)" in ev.summary["note"]
    assert ev.per_class_of(ev.selected).loc["b", "note"] == "absent from this split"
    assert _strict_json(run.metrics / "per_class.json")  # NaN written as null


def test_run_evaluation_refuses_an_empty_test_split(tmp_path):
    run, splits = synthetic_run(tmp_path, class_names=["a", "b"], n_test=0)
    with pytest.raises(DataError, match=r"the 'test' split is empty"):
        evaluate.run_evaluation(run, splits)


def test_cost_table_times_every_model_file(tmp_path, tiny_members):
    from kernelib import io, members
    from kernelib.rundir import RunDir

    run = RunDir(tmp_path / "run")
    files = {}
    for m in tiny_members:
        members.save_model(m.model, run.member_model(m.name))
        files[m.name] = {"kind": "member", "path": str(run.member_model(m.name).relative_to(run.root))}
    io.write_json(run.merged / "models.json", files)
    cost = evaluate.cost_table(run, repeats=3)
    assert sorted(cost.index) == sorted(m.name for m in tiny_members)
    for m in tiny_members:
        row = cost.loc[m.name]
        assert row["params"] == sum(int(np.prod(w.shape)) for w in m.model.weights)
        assert row["file_kb"] == pytest.approx(run.member_model(m.name).stat().st_size / 1024,
                                               abs=0.1)
        assert row["latency_ms_b1"] > 0 and row["throughput_b256"] > 0
        assert row["compiled"] == "xla" and row["device"].startswith(("CPU", "GPU"))
    assert [r["model"] for r in _strict_json(run.timings / "cost.json")] == list(cost.index)
