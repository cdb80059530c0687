"""Figures: a title, labelled axes with units, the colour-blind-safe palette, and PNG display."""

from __future__ import annotations

import re

import matplotlib.colors as mcolors
import numpy as np
import pandas as pd
import pytest

from conftest import synthetic_run
from kernelib import evaluate, plots
from kernelib.merge.compare import tradeoff_figure


@pytest.fixture(scope="module")
def ev(tmp_path_factory):
    run, splits = synthetic_run(tmp_path_factory.mktemp("plots"), class_names=list("abcd"))
    return evaluate.run_evaluation(run, splits, bootstrap_resamples=200), splits


@pytest.fixture(scope="module")
def cost(ev):
    e, _ = ev
    return pd.DataFrame({"kind": e.comparison["kind"], "latency_ms_b1": [0.3, 0.2, 0.5],
                         "device": "CPU"}, index=e.comparison.index)


def _figures(ev, cost):
    e, splits = ev
    return {
        "training_curves": plots.training_curves({"m": pd.DataFrame(
            {"loss": [1.0, 0.5], "val_loss": [1.1, 0.6], "accuracy": [0.5, 0.8],
             "val_accuracy": [0.4, 0.7]})}),
        "confusion_matrix": plots.confusion_matrix(splits.y_test, splits.y_test, splits.class_names),
        "comparison_bars": plots.comparison_bars(e.comparison, metric="test_accuracy",
                                                 intervals=e.intervals),
        "reliability_diagram": plots.reliability_diagram(
            e.reliability, models=e.compared, ece=e.comparison["test_ece"]),
        "diversity_heatmap": plots.diversity_heatmap(e.diversity),
        "accuracy_vs_latency": plots.accuracy_vs_latency(e.comparison, cost),
        "tradeoff_figure": tradeoff_figure(
            e.comparison[["kind", "val_accuracy", "val_nll"]].assign(params=[1200, 800, 2000])),
    }


UNIT = re.compile(r"\(.+\)")  # every axis label names its unit in parentheses


@pytest.mark.parametrize("name", ["training_curves", "confusion_matrix", "comparison_bars",
                                  "reliability_diagram", "diversity_heatmap",
                                  "accuracy_vs_latency", "tradeoff_figure"])
def test_every_figure_has_title_labels_units_and_renders(ev, cost, name):
    fig = _figures(ev, cost)[name]
    titled = fig._suptitle is not None or any(ax.get_title() for ax in fig.axes)
    assert titled, name
    main_axes = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    for ax in main_axes:
        if ax.get_xlabel():  # shared x axes label only the bottom panel
            assert UNIT.search(ax.get_xlabel()) or ax.get_xlabel() in (
                "model", "member", "predicted class", "epoch"), ax.get_xlabel()
        assert ax.get_ylabel(), f"{name}: unlabelled y axis"
    png = fig._repr_png_()
    assert png.startswith(b"\x89PNG") and len(png) > 5000


def test_figures_use_the_okabe_ito_palette(ev, cost):
    palette = {mcolors.to_hex(c) for c in plots.PALETTE}
    bars = _figures(ev, cost)["comparison_bars"].axes[0].patches
    assert {mcolors.to_hex(b.get_facecolor()) for b in bars} <= palette
    lines = _figures(ev, cost)["reliability_diagram"].axes[0].get_lines()[1:]
    assert {mcolors.to_hex(line.get_color()) for line in lines} <= palette


def test_reliability_legend_shows_each_ece(ev, cost):
    e, _ = ev
    legend = _figures(ev, cost)["reliability_diagram"].axes[0].get_legend()
    texts = [t.get_text() for t in legend.get_texts()]
    for name in e.compared:
        assert f"{name} (ECE {e.comparison.loc[name, 'test_ece']:.3f})" in texts


def test_comparison_bars_draw_the_intervals(ev, cost):
    e, _ = ev
    ax = _figures(ev, cost)["comparison_bars"].axes[0]
    segments = ax.collections[0].get_segments()  # one vertical error bar per model
    lows = sorted(round(float(s[0][1]), 9) for s in segments)
    assert lows == sorted(round(float(v), 9) for v in e.intervals["test_accuracy_lo"])


def test_diversity_heatmap_marks_undefined_correlation():
    y = np.array([0, 1, 0, 1])
    onehot = np.eye(2)
    div = evaluate.diversity(y, {"perfect": onehot[y], "other": onehot[[0, 0, 0, 1]]})
    fig = plots.diversity_heatmap(div)
    texts = [t.get_text() for t in fig.axes[1].texts]
    assert "n/a" in texts  # the perfect member makes no error: correlation undefined


def test_training_curves_without_trained_members():
    fig = plots.training_curves({})
    assert "no member was trained" in fig.axes[0].texts[0].get_text()


def test_confusion_matrix_marks_absent_classes():
    fig = plots.confusion_matrix(np.array([0, 0, 1]), np.array([0, 1, 1]), ["cat", "dog", "eel"])
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == ["cat", "dog", "eel (absent)"]
