"""Figures: each function returns a matplotlib Figure (never calls plt.show)."""

from __future__ import annotations

import functools
import io
from collections.abc import Mapping

import numpy as np

# Okabe-Ito: distinguishable with the common forms of colour blindness.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]


@functools.cache
def _figure_class():
    from matplotlib.figure import Figure

    class PngFigure(Figure):
        """A Figure that shows itself as a PNG in Jupyter even when pyplot was never imported
        (only pyplot's import turns on the inline backend's display hook)."""

        def _repr_png_(self) -> bytes:
            buf = io.BytesIO()
            self.savefig(buf, format="png", bbox_inches="tight")
            return buf.getvalue()

    return PngFigure


def _figure(*args, **kwargs):
    return _figure_class()(*args, layout="constrained", **kwargs)


def training_curves(histories: Mapping[str, object]):
    """Loss and accuracy per epoch for each member (train dashed, val solid)."""
    fig = _figure(figsize=(10, 4))
    ax_loss, ax_acc = fig.subplots(1, 2)
    if not histories:
        for ax in (ax_loss, ax_acc):
            ax.text(0.5, 0.5, "no member was trained in this run", ha="center", va="center",
                    transform=ax.transAxes)
    for i, (name, h) in enumerate(histories.items()):
        c = PALETTE[i % len(PALETTE)]
        epochs = np.arange(1, len(h) + 1)
        ax_loss.plot(epochs, h["loss"], "--", color=c, alpha=0.6)
        ax_loss.plot(epochs, h["val_loss"], "-", color=c, label=name)
        ax_acc.plot(epochs, h["accuracy"], "--", color=c, alpha=0.6)
        ax_acc.plot(epochs, h["val_accuracy"], "-", color=c, label=name)
    ax_loss.set(title="Loss (val solid, train dashed)", xlabel="epoch",
                ylabel="cross-entropy (nats)")
    ax_acc.set(title="Accuracy (val solid, train dashed)", xlabel="epoch",
               ylabel="accuracy (fraction)")
    if histories:
        ax_acc.legend(loc="lower right", fontsize="small")
    fig.suptitle("Member training curves")
    return fig


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str], *,
                     title: str = "Confusion matrix"):
    """Row-normalised confusion matrix with class names on both axes."""
    from sklearn.metrics import confusion_matrix as cm

    m = cm(y_true, y_pred, labels=np.arange(len(class_names))).astype("float64")
    support = m.sum(axis=1, keepdims=True)
    m = np.divide(m, support, out=np.zeros_like(m), where=support > 0)
    fig = _figure(figsize=(5.5, 5))
    ax = fig.subplots()
    im = ax.imshow(m, cmap="Blues", vmin=0, vmax=1)
    ticks = np.arange(len(class_names))
    long_names = max((len(str(c)) for c in class_names), default=0) > 3
    ax.set_xticks(ticks, class_names, rotation=30 if long_names else 0,
                  ha="right" if long_names else "center")
    ax.set_yticks(ticks, [f"{c} (absent)" if n == 0 else str(c)
                          for c, n in zip(class_names, support[:, 0], strict=True)])
    for i in range(len(class_names)):
        for j in range(len(class_names)):
            if m[i, j] >= 0.005:
                ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if m[i, j] > 0.5 else "black")
    ax.set(title=title, xlabel="predicted class", ylabel="true class")
    fig.colorbar(im, ax=ax, label="fraction of the true class")
    return fig


_UNITS = {"accuracy": "fraction", "nll": "nats", "brier": "squared error, 0-2",
          "ece": "fraction", "mce": "fraction", "macro_f1": "fraction"}


def _unit(metric: str) -> str:
    base = metric.split("_", 1)[1] if metric.startswith(("val_", "test_")) else metric
    return _UNITS.get(base, "fraction" if base.endswith("accuracy") else "value")


def _kind_colour(kind: str) -> str:
    return PALETTE[0] if kind == "member" else PALETTE[1]


def _kind_legend(ax, loc: str = "lower right", *, outside: bool = False) -> None:
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color=PALETTE[0], label="member"),
                       Patch(color=PALETTE[1], label="merged")], loc=loc, fontsize="small",
              bbox_to_anchor=(1.01, 1.0) if outside else None)


def comparison_bars(table, *, metric: str = "test_accuracy", intervals=None):
    """One bar per model (members and merged models in different colours) for `metric`.

    With `intervals` (a table holding `<metric>_lo` and `<metric>_hi` per model, such as
    `Evaluation.intervals`) each bar carries its confidence interval as an error bar.
    """
    fig = _figure(figsize=(max(5, 0.8 * len(table) + 2), 4))
    ax = fig.subplots()
    values = table[metric].to_numpy(dtype="float64")
    x = np.arange(len(table))
    ax.bar(x, values, color=[_kind_colour(k) for k in table["kind"]])
    lo, hi = values, values
    if intervals is not None:
        lo = intervals.loc[table.index, f"{metric}_lo"].to_numpy(dtype="float64")
        hi = intervals.loc[table.index, f"{metric}_hi"].to_numpy(dtype="float64")
        ax.errorbar(x, values, yerr=[values - lo, hi - values], fmt="none", ecolor="black",
                    capsize=4, linewidth=1)
    ax.set_xticks(x, table.index, rotation=30, ha="right")
    top = float(np.max(hi))
    if _unit(metric) == "fraction":
        ax.set_ylim(max(0.0, float(np.min(lo)) - 0.05), min(1.0, top) + 0.06)
    for i, (v, h) in enumerate(zip(values, hi, strict=True)):
        ax.annotate(f"{v:.3f}", (i, h), textcoords="offset points", xytext=(0, 3),
                    ha="center", va="bottom", fontsize=8)
    _kind_legend(ax, loc="upper left", outside=True)
    ci = " with 95% bootstrap intervals" if intervals is not None else ""
    ax.set(title=f"Members vs merged models: {metric}{ci}",
           ylabel=f"{metric} ({_unit(metric)})", xlabel="model")
    return fig


def reliability_diagram(reliability, *, models, ece, split: str = "test"):
    """Accuracy against confidence per bin for `models`, the diagonal, and each ECE in the legend.

    `reliability` is the long table of `evaluate.reliability` rows with a `model` column;
    `ece[name]` is the model's expected calibration error.
    """
    fig = _figure(figsize=(6, 6.5))
    ax, ax_n = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfect calibration")
    markers = "osD^v<>p"
    width = 1.0 / max(1, reliability["bin"].nunique()) / (len(models) + 1)
    for i, name in enumerate(models):
        c = PALETTE[i % len(PALETTE)]
        rows = reliability[reliability["model"] == name]
        r = rows[rows["count"] > 0]
        ax.plot(r["confidence"], r["accuracy"], marker=markers[i % len(markers)], color=c,
                label=f"{name} (ECE {float(ece[name]):.3f})")
        share = rows["count"] / max(1, rows["count"].sum())
        ax_n.bar(rows["lower"] + (i + 0.5) * width, share, width=width, color=c)
    ax.set(xlim=(0, 1), ylim=(-0.03, 1.03), ylabel="accuracy in bin (fraction)",
           title=f"Reliability diagram ({split} split, {reliability['bin'].nunique()} bins)")
    ax.legend(loc="upper left", fontsize="small")
    ax_n.set(xlabel="mean confidence in bin (probability)", ylabel="rows (fraction, log)",
             yscale="log")
    return fig


def diversity_heatmap(diversity):
    """Two member-by-member matrices: disagreement rate and correlation of errors."""
    names = list(dict.fromkeys(diversity["model_a"]))
    fig = _figure(figsize=(max(10, 1.6 * len(names) + 5), max(4.5, 0.6 * len(names) + 2.5)))
    axes = fig.subplots(1, 2)
    panels = [("disagreement", "cividis", 0.0, None, "fraction of rows"),
              ("error_correlation", "PuOr_r", -1.0, 1.0, "Pearson r")]
    for ax, (col, cmap, vmin, vmax, label) in zip(axes, panels, strict=True):
        m = diversity.pivot(index="model_a", columns="model_b", values=col).loc[names, names]
        values = m.to_numpy(dtype="float64")
        top = vmax if vmax is not None else max(float(np.nanmax(values)), 1e-9)
        im = ax.imshow(values, cmap=cmap, vmin=vmin, vmax=top)
        ticks = np.arange(len(names))
        ax.set_xticks(ticks, names, rotation=30, ha="right")
        ax.set_yticks(ticks, names)
        for i in range(len(names)):
            for j in range(len(names)):
                v = values[i, j]
                ax.text(j, i, "n/a" if np.isnan(v) else f"{v:.2f}", ha="center", va="center",
                        fontsize=8, color="black",
                        bbox={"boxstyle": "round,pad=0.1", "fc": "white", "alpha": 0.6,
                              "lw": 0})
        ax.set(title=col.replace("_", " "), xlabel="member", ylabel="member")
        fig.colorbar(im, ax=ax, label=label, shrink=0.8)
    fig.suptitle("Member diversity on the test split")
    return fig


def accuracy_vs_latency(table, cost, *, metric: str = "test_accuracy"):
    """Each model as a point: batch-1 latency of its compiled forward pass against `metric`."""
    fig = _figure(figsize=(6.5, 4.5))
    ax = fig.subplots()
    names = [n for n in table.index if n in cost.index]
    lat = cost.loc[names, "latency_ms_b1"].to_numpy(dtype="float64")
    val = table.loc[names, metric].to_numpy(dtype="float64")
    kinds = table.loc[names, "kind"]
    ax.scatter(lat, val, c=[_kind_colour(k) for k in kinds], s=60, edgecolors="black",
               linewidths=0.5, zorder=3)
    for x, y, n in zip(lat, val, names, strict=True):
        ax.annotate(n, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    if len(lat) and np.nanmin(lat) > 0 and np.nanmax(lat) / np.nanmin(lat) > 20:
        ax.set_xscale("log")
    device = str(cost["device"].iloc[0]) if "device" in cost.columns and len(cost) else "?"
    ax.set(xlabel=f"batch-1 latency (ms, compiled forward pass, {device})",
           ylabel=f"{metric} ({_unit(metric)})", title=f"{metric} against latency")
    ax.grid(True, which="both", alpha=0.3)
    _kind_legend(ax)
    return fig


def sample_grid(x: np.ndarray, y: np.ndarray, class_names: list[str], *, n: int = 20):
    """A grid of input images with their labels (a look at the data)."""
    n = min(n, len(x))
    cols = min(10, n)
    rows = int(np.ceil(n / cols))
    fig = _figure(figsize=(cols * 1.0, rows * 1.2))
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax, i in zip(axes, range(n), strict=False):
        ax.imshow(x[i].squeeze(), cmap="gray_r")
        ax.set_title(class_names[int(y[i])], fontsize=8)
        ax.axis("off")
    for ax in axes[n:]:
        ax.axis("off")
    fig.suptitle("Sample inputs with their labels")
    return fig


def augmentation_grid(draws: np.ndarray):
    """Augmentation preview: one column per row of data, the original on top, then one random
    draw per line (`data.augment_draws`)."""
    n_draws, n_rows = draws.shape[:2]
    fig = _figure(figsize=(n_rows * 1.0, n_draws * 1.0))
    axes = np.asarray(fig.subplots(n_draws, n_rows, squeeze=False))
    lo, hi = float(draws[0].min()), float(draws[0].max())
    for d in range(n_draws):
        for r in range(n_rows):
            img = draws[d, r]
            ax = axes[d, r]
            if img.shape[-1] == 1:
                ax.imshow(img[..., 0], cmap="gray_r", vmin=lo, vmax=hi)
            else:
                ax.imshow(np.clip((img - lo) / max(hi - lo, 1e-12), 0, 1))
            ax.axis("off")
        axes[d, 0].set_title("original" if d == 0 else f"draw {d}", fontsize=7, loc="left")
    fig.suptitle("Training-time augmentation: the same rows, several draws")
    return fig
