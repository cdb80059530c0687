"""Figures: each function returns a matplotlib Figure (never calls plt.show)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

# Okabe-Ito: distinguishable with the common forms of colour blindness.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]


def _figure(*args, **kwargs):
    from matplotlib.figure import Figure

    return Figure(*args, layout="constrained", **kwargs)


def training_curves(histories: Mapping[str, object]):
    """Loss and accuracy per epoch for each member (train dashed, val solid)."""
    fig = _figure(figsize=(10, 4))
    ax_loss, ax_acc = fig.subplots(1, 2)
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
    ax_acc.legend(loc="lower right", fontsize="small")
    fig.suptitle("Member training curves")
    return fig


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str], *,
                     title: str = "Confusion matrix"):
    """Row-normalised confusion matrix with class names on both axes."""
    from sklearn.metrics import confusion_matrix as cm

    m = cm(y_true, y_pred, labels=np.arange(len(class_names))).astype("float64")
    m = np.divide(m, m.sum(axis=1, keepdims=True), out=np.zeros_like(m),
                  where=m.sum(axis=1, keepdims=True) > 0)
    fig = _figure(figsize=(5.5, 5))
    ax = fig.subplots()
    im = ax.imshow(m, cmap="Blues", vmin=0, vmax=1)
    ticks = np.arange(len(class_names))
    ax.set_xticks(ticks, class_names)
    ax.set_yticks(ticks, class_names)
    for i in range(len(class_names)):
        for j in range(len(class_names)):
            if m[i, j] >= 0.005:
                ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if m[i, j] > 0.5 else "black")
    ax.set(title=title, xlabel="predicted class", ylabel="true class")
    fig.colorbar(im, ax=ax, label="fraction of the true class")
    return fig


def comparison_bars(table, *, metric: str = "test_accuracy"):
    """One bar per model (members and merged models in different colours) for `metric`."""
    fig = _figure(figsize=(max(5, 0.8 * len(table) + 2), 4))
    ax = fig.subplots()
    colours = [PALETTE[0] if k == "member" else PALETTE[1] for k in table["kind"]]
    ax.bar(range(len(table)), table[metric], color=colours)
    ax.set_xticks(range(len(table)), table.index, rotation=30, ha="right")
    lo = float(table[metric].min())
    ax.set_ylim(max(0.0, lo - 0.05), min(1.0, float(table[metric].max()) + 0.02))
    for i, v in enumerate(table[metric]):
        ax.text(i, v, f"{v:.3f}", ha="center", va="bottom", fontsize=8)
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color=PALETTE[0], label="member"),
                       Patch(color=PALETTE[1], label="merged")], loc="lower right")
    ax.set(title=f"Members vs merged models: {metric}", ylabel=f"{metric} (fraction)",
           xlabel="model")
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
