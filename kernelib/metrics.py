"""Classification metrics from predicted probabilities: accuracy, top-k, NLL, Brier, ECE/MCE, per-class.

A leaf module (NumPy only; pandas for the two tables), so the Keras layers and the merge
strategies can share its clip `EPS` without importing anything else of kernelib. The tests
compare every metric with scikit-learn's; the code stays ours because it clips before the log
like `TemperatureScaling`, counts ties as top-k hits and names the model in its errors.

Example::

    metrics(y_test, p_test, name="weighted")   # {"accuracy": ..., "nll": ..., ...}
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kernelib.errors import DataError

EPS = 1e-7  # the probability clip of every log kernelib takes


# --------------------------------------------------------------------------- checks

def check_proba(p: np.ndarray, *, name: str, n_rows: int | None = None) -> np.ndarray:
    """Refuse predictions that are not probability rows, naming the model."""
    p = np.asarray(p, dtype="float64")
    if p.ndim != 2:
        raise DataError(f"predictions of '{name}' must be a 2-D array (rows x classes); "
                        f"received shape {p.shape}")
    if n_rows is not None and len(p) != n_rows:
        raise DataError(f"predictions of '{name}' have {len(p)} rows; the labels have {n_rows}")
    if not np.isfinite(p).all():
        bad = int(np.argwhere(~np.isfinite(p))[0, 0])
        raise DataError(f"predictions of '{name}' contain NaN or infinity (first at row {bad}); "
                        "check the model's numerics (e.g. a float16 overflow) before "
                        "evaluating it.")
    sums = p.sum(axis=1)
    if np.any(p < -1e-6) or not np.allclose(sums, 1.0, atol=1e-3):
        bad = int(np.argmax(np.abs(sums - 1.0)))
        raise DataError(f"predictions of '{name}' must be probabilities summing to 1 per row; "
                        f"row {bad} sums to {sums[bad]:.4f}. Add a softmax to the model's end.")
    return p


def check_labels(y: np.ndarray, p: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Labels as int64 class indices of `p`'s columns, and `p` checked by `check_proba`."""
    y = np.asarray(y)
    if len(y) == 0:
        raise DataError(f"cannot evaluate '{name}' on an empty split; received 0 rows. "
                        "Give the split more rows (e.g. raise preprocess.test_fraction).")
    p = check_proba(p, name=name, n_rows=len(y))
    if y.min() < 0 or y.max() >= p.shape[1]:
        raise DataError(f"labels must be class indices 0..{p.shape[1] - 1} for '{name}'; "
                        f"received labels from {y.min()} to {y.max()}")
    return y.astype("int64"), p


# --------------------------------------------------------------------------- per-row values

def clipped(p: np.ndarray) -> np.ndarray:
    """Probabilities clipped to [1e-7, 1] and renormalised, so a log never sees zero."""
    pc = np.clip(np.asarray(p, dtype="float64"), EPS, 1.0)
    return pc / pc.sum(axis=1, keepdims=True)


def correct_rows(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """1.0 where the most probable class is the true one, else 0.0."""
    return (np.asarray(p).argmax(axis=1) == np.asarray(y)).astype("float64")


def nll_rows(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Negative log-likelihood of the true class per row (clipped probabilities), in nats."""
    return -np.log(clipped(p)[np.arange(len(y)), np.asarray(y)])


# The per-row values whose means get bootstrap intervals (`evaluate.interval_tables`).
ROW_VALUES = {"accuracy": correct_rows, "nll": nll_rows}


# --------------------------------------------------------------------------- point metrics

def top_k_accuracy(y: np.ndarray, p: np.ndarray, *, k: int) -> float:
    """Share of rows whose true class is among the `k` most probable (ties count as hits)."""
    p = np.asarray(p)
    true_p = p[np.arange(len(y)), np.asarray(y)]
    n_above = (p > true_p[:, None]).sum(axis=1)
    return float(np.mean(n_above < k))


def brier(y: np.ndarray, p: np.ndarray) -> float:
    """Multi-class Brier score: mean over rows of the squared distance to the one-hot label."""
    p = np.asarray(p, dtype="float64")
    onehot = np.eye(p.shape[1])[np.asarray(y)]
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


def _bins(y: np.ndarray, p: np.ndarray, n_bins: int):
    """Equal-width confidence bins (right-closed): count, mean confidence, accuracy per bin."""
    conf = np.asarray(p).max(axis=1)
    idx = np.clip(np.ceil(conf * n_bins).astype("int64") - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.bincount(idx, weights=conf, minlength=n_bins) / count
        accuracy = np.bincount(idx, weights=correct_rows(y, p), minlength=n_bins) / count
    return count, confidence, accuracy


def calibration_errors(y: np.ndarray, p: np.ndarray, *, n_bins: int = 15) -> tuple[float, float]:
    """Expected and maximum calibration error over `n_bins` equal-width confidence bins."""
    count, confidence, accuracy = _bins(y, p, n_bins)
    gap = np.abs(accuracy - confidence)[count > 0]
    weights = count[count > 0] / count.sum()
    return float(np.sum(weights * gap)), float(gap.max())


def reliability(y: np.ndarray, p: np.ndarray, *, n_bins: int = 15):
    """One row per confidence bin: its edges, rows, mean confidence and accuracy (NaN if empty)."""
    import pandas as pd

    count, confidence, accuracy = _bins(y, p, n_bins)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return pd.DataFrame({"bin": np.arange(1, n_bins + 1), "lower": edges[:-1],
                         "upper": edges[1:], "count": count, "confidence": confidence,
                         "accuracy": accuracy})


def per_class(y: np.ndarray, p: np.ndarray, class_names: Sequence[str] | None = None):
    """Precision, recall and F1 per class from confusion counts; undefined values are NaN.

    A class absent from the split has no recall (NaN) and its `note` says so.
    """
    import pandas as pd

    y, p = np.asarray(y), np.asarray(p)
    k = p.shape[1]
    pred = p.argmax(axis=1)
    tp = np.bincount(y[pred == y], minlength=k).astype("float64")
    support = np.bincount(y, minlength=k)
    predicted = np.bincount(pred, minlength=k)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, tp / predicted, np.nan)
        recall = np.where(support > 0, tp / support, np.nan)
        f1 = np.where(support + predicted > 0, 2 * tp / (support + predicted), np.nan)
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    notes = ["absent from this split" if s == 0 else ("never predicted" if q == 0 else "")
             for s, q in zip(support, predicted, strict=True)]
    return pd.DataFrame({"class": names, "support": support, "predicted": predicted,
                         "precision": precision, "recall": recall, "f1": f1, "note": notes})


def metrics(y: np.ndarray, p: np.ndarray, *, name: str = "model", top_k: int = 3,
            n_bins: int = 15) -> dict[str, float]:
    """Accuracy, top-k accuracy, NLL (clipped), Brier, ECE, MCE and macro-F1 of one model.

    Macro-F1 averages over the classes present in `y`, so a class missing from the split
    does not count as a zero.
    """
    y, p = check_labels(y, p, name)
    ece, mce = calibration_errors(y, p, n_bins=n_bins)
    f1 = per_class(y, p)["f1"].to_numpy()[np.unique(y)]
    return {
        "accuracy": float(correct_rows(y, p).mean()),
        f"top{top_k}_accuracy": top_k_accuracy(y, p, k=top_k),
        "nll": float(nll_rows(y, p).mean()),
        "brier": brier(y, p),
        "ece": ece,
        "mce": mce,
        "macro_f1": float(f1.mean()),
    }
