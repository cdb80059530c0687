"""Metrics from cached predicted probabilities, confidence intervals, diversity and cost tables.

Everything but `cost_table` works from the prediction cache `merged/predictions.npz` written by
the merge stage, so evaluating never runs a model again; `cost_table` loads each model file only
to time its compiled forward pass. Tables are tidy pandas DataFrames; `run_evaluation` writes
them to `metrics/*.json` for machines (timings go to `timings/cost.json` only, so that
`metrics/*.json` are byte-identical between runs of the same config and seed).

Example::

    ev = run_evaluation(run, splits, select_by="val_nll", bootstrap_resamples=1000, seed=0)
    ev.summary["selected"], ev.intervals, ev.gains
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kernelib.errors import DataError, MemberError

EPS = 1e-7
CI_LEVEL = 0.95
# Metrics where a smaller value is better (all others: larger is better).
LOWER_IS_BETTER = ("nll", "brier", "ece", "mce")


# --------------------------------------------------------------------------- checks

def predict_proba(model, x: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
    """`model(x)` in inference mode, batch by batch, as float64 class probabilities.

    Eager calls instead of `model.predict`: the merge and evaluate stages call many models
    once each on small arrays, where `predict` would trace a new graph function per model.
    """
    from kernelib.data import batches  # an image folder's rows decode batch by batch

    return np.concatenate([np.asarray(model(xb, training=False), dtype="float64")
                           for xb in batches(x, batch_size)])


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


def _checked(y: np.ndarray, p: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
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


_ROW_VALUES = {"accuracy": correct_rows, "nll": nll_rows}


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
    y, p = _checked(y, p, name)
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


# --------------------------------------------------------------------------- bootstrap

def _bootstrap_means(values: np.ndarray, *, n_resamples: int, seed: int) -> np.ndarray:
    """Means of `values` (rows x columns) over seeded resamples of the rows: (resamples, columns).

    Every column sees the same resampled rows, which makes differences of columns paired.
    """
    values = np.asarray(values, dtype="float64")
    values = values[:, None] if values.ndim == 1 else values
    n = len(values)
    if n == 0:
        raise DataError("cannot bootstrap an empty split; received 0 rows.")
    if n_resamples < 1:
        raise DataError(f"n_resamples must be at least 1; received {n_resamples}")
    rng = np.random.default_rng(seed)
    chunk = max(1, 2_000_000 // n)  # bounds the (chunk x rows) count matrix to ~16 MB
    out = []
    for start in range(0, n_resamples, chunk):
        c = min(chunk, n_resamples - start)
        idx = rng.integers(0, n, size=(c, n))
        counts = np.bincount((np.arange(c)[:, None] * n + idx).ravel(), minlength=c * n)
        out.append(counts.reshape(c, n) @ values / n)
    return np.concatenate(out)


def _interval(samples: np.ndarray, level: float) -> tuple[float, float]:
    alpha = (1.0 - level) / 2
    lo, hi = np.quantile(samples, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def bootstrap_ci(values: np.ndarray, *, n_resamples: int = 1000, seed: int = 0,
                 level: float = CI_LEVEL) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-row `values` (e.g. `correct_rows`)."""
    return _interval(_bootstrap_means(values, n_resamples=n_resamples, seed=seed)[:, 0], level)


def paired_bootstrap(a: np.ndarray, b: np.ndarray, *, n_resamples: int = 1000, seed: int = 0,
                     level: float = CI_LEVEL) -> dict[str, float]:
    """Mean of `a - b` over the same rows, with a bootstrap interval that resamples rows jointly."""
    a, b = np.asarray(a, dtype="float64"), np.asarray(b, dtype="float64")
    means = _bootstrap_means(np.stack([a, b], axis=1), n_resamples=n_resamples, seed=seed)
    lo, hi = _interval(means[:, 0] - means[:, 1], level)
    return {"diff": float(np.mean(a - b)), "lo": lo, "hi": hi}


def interval_tables(y: np.ndarray, preds: Mapping[str, np.ndarray], kinds: Mapping[str, str],
                    *, reference: str, n_resamples: int = 1000, seed: int = 0,
                    level: float = CI_LEVEL, split: str = "test"):
    """Bootstrap intervals of accuracy and NLL per model, and paired differences to `reference`.

    Returns `(intervals, gains)`: `intervals` one row per model; `gains` one row per model
    other than `reference` (the member validation picks, in the evaluate stage), the paired
    difference "model minus reference" on the same resampled rows (accuracy: positive is
    better; NLL: negative is better).
    """
    import pandas as pd

    names = list(preds)
    rows, gains = [], []
    boots = {}
    for metric, fn in _ROW_VALUES.items():
        values = np.stack([fn(y, preds[n]) for n in names], axis=1)
        boots[metric] = (values.mean(axis=0),
                         _bootstrap_means(values, n_resamples=n_resamples, seed=seed))
    for j, name in enumerate(names):
        row: dict[str, Any] = {"model": name, "kind": kinds.get(name, "?")}
        for metric, (point, samples) in boots.items():
            lo, hi = _interval(samples[:, j], level)
            row |= {f"{split}_{metric}": float(point[j]), f"{split}_{metric}_lo": lo,
                    f"{split}_{metric}_hi": hi}
        rows.append(row)
    b = names.index(reference)
    for j, name in enumerate(names):
        if j == b:
            continue
        row = {"model": name, "kind": kinds.get(name, "?"), "versus": reference}
        for metric, (point, samples) in boots.items():
            lo, hi = _interval(samples[:, j] - samples[:, b], level)
            row |= {f"{split}_{metric}_diff": float(point[j] - point[b]),
                    f"{split}_{metric}_diff_lo": lo, f"{split}_{metric}_diff_hi": hi}
        row["verdict"] = _verdict(row[f"{split}_accuracy_diff_lo"],
                                  row[f"{split}_accuracy_diff_hi"])
        gains.append(row)
    intervals = pd.DataFrame(rows).set_index("model")
    gain_cols = ["model", "kind", "versus"] + [
        f"{split}_{m}_diff{s}" for m in _ROW_VALUES for s in ("", "_lo", "_hi")] + ["verdict"]
    gains_df = pd.DataFrame(gains, columns=gain_cols).set_index("model")
    return intervals, gains_df


def _verdict(lo: float, hi: float) -> str:
    if lo > 0:
        return "more accurate"
    if hi < 0:
        return "less accurate"
    return "no clear difference"


# --------------------------------------------------------------------------- diversity

def diversity(y: np.ndarray, preds: Mapping[str, np.ndarray]):
    """Every ordered pair of models: disagreement rate and Pearson correlation of their errors.

    The correlation is NaN when a model makes no error (or only errors) on the split.
    """
    import pandas as pd

    names = list(preds)
    labels = np.stack([np.asarray(preds[n]).argmax(axis=1) for n in names])
    errors = (labels != np.asarray(y)[None, :]).astype("float64")
    disagree = (labels[:, None, :] != labels[None, :, :]).mean(axis=2)
    centred = errors - errors.mean(axis=1, keepdims=True)
    norms = np.sqrt((centred ** 2).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = (centred @ centred.T) / np.outer(norms, norms)
    rows = [{"model_a": a, "model_b": b, "disagreement": float(disagree[i, j]),
             "error_correlation": float(corr[i, j])}
            for i, a in enumerate(names) for j, b in enumerate(names)]
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- tables

def _absent(y: np.ndarray, n_classes: int) -> list[int]:
    return sorted(set(range(n_classes)) - set(np.asarray(y).tolist()))


def comparison_table(predictions: Mapping[str, Mapping[str, np.ndarray]],
                     labels: Mapping[str, np.ndarray], kinds: Mapping[str, str], *,
                     top_k: int = 3, n_bins: int = 15,
                     class_names: Sequence[str] | None = None):
    """One row per model: its kind (member/merged) and metrics on every split.

    `predictions[split][model]` are probabilities; `labels[split]` the true classes. When a
    class is missing from a split, a `note` column says which, and macro-F1 covers the rest.
    """
    import pandas as pd

    rows: dict[str, dict[str, Any]] = {}
    notes = []
    for split, preds in predictions.items():
        if len(labels[split]) == 0:
            raise DataError(f"the '{split}' split is empty (0 rows); evaluation needs "
                            f"held-out rows: give the '{split}' split a larger fraction.")
        for model, p in preds.items():
            row = rows.setdefault(model, {"model": model, "kind": kinds.get(model, "?")})
            for k, v in metrics(labels[split], p, name=model, top_k=top_k,
                                n_bins=n_bins).items():
                row[f"{split}_{k}"] = v
        n_classes = np.asarray(next(iter(preds.values()))).shape[1]
        absent = _absent(labels[split], n_classes)
        if absent:
            shown = [class_names[i] for i in absent] if class_names is not None else absent
            notes.append(f"{split}: {len(absent)} of {n_classes} classes absent "
                         f"({', '.join(map(str, shown))}); macro-F1 over the others")
    df = pd.DataFrame(list(rows.values())).set_index("model")
    if notes:
        df["note"] = "; ".join(notes)
    return df.sort_values(["kind", df.columns[1]], ascending=[False, False])


def data_table(labels: Mapping[str, np.ndarray], class_names: Sequence[str]):
    """One row per evaluated split: rows, classes present, and the names of absent classes."""
    import pandas as pd

    rows = []
    for split, y in labels.items():
        absent = _absent(y, len(class_names))
        rows.append({"split": split, "rows": int(len(y)),
                     "classes_present": len(class_names) - len(absent),
                     "classes_absent": ", ".join(str(class_names[i]) for i in absent) or "none"})
    return pd.DataFrame(rows).set_index("split")


def select(table, *, by: str = "val_nll") -> str:
    """Name of the model with the best value of `by` (lowest for NLL/Brier/ECE/MCE, else highest)."""
    if by not in table.columns:
        valid = [c for c in table.columns if c.startswith("val_")]
        raise DataError(f"cannot select by '{by}'; valid columns: {valid}")
    col = table[by]
    return str(col.idxmin() if by.endswith(LOWER_IS_BETTER) else col.idxmax())


def _members(table):
    members = table[table["kind"] == "member"]
    if members.empty:
        raise DataError(f"no member in the table; models: {list(table.index)}")
    return members


def best_member(table, *, split: str = "test") -> str:
    """The member with the highest accuracy on `split`: on test, an optimistic reference (no
    user could have known it before seeing the test rows)."""
    return str(_members(table)[f"{split}_accuracy"].idxmax())


def picked_member(table, *, by: str = "val_nll") -> str:
    """The member the validation metric `by` picks: what a user without kernelib would ship,
    so the fair reference of every gain."""
    return select(_members(table), by=by)


def gain_summary(table, selected: str, *, by: str = "val_nll",
                 split: str = "test") -> dict[str, Any]:
    """How the selected model compares on one split with the member validation picks (the
    reference of the gain) and with the member best on that split (shown, optimistic)."""
    best, picked = best_member(table, split=split), picked_member(table, by=by)
    acc_sel = float(table.loc[selected, f"{split}_accuracy"])
    acc_ref = float(table.loc[picked, f"{split}_accuracy"])
    return {
        "selected": selected,
        "picked_member": picked,
        "best_member": best,
        f"{split}_accuracy": acc_sel,
        f"picked_member_{split}_accuracy": acc_ref,
        f"picked_member_{split}_nll": float(table.loc[picked, f"{split}_nll"]),
        f"best_member_{split}_accuracy": float(table.loc[best, f"{split}_accuracy"]),
        "accuracy_gain": acc_sel - acc_ref,
        f"{split}_error_ratio": (1 - acc_sel) / (1 - acc_ref) if acc_ref < 1 else None,
    }


# --------------------------------------------------------------------------- prediction cache

def predict_all(models: Mapping[str, Any], inputs: Mapping[str, np.ndarray]):
    """Probabilities of every model on every split: `{split: {model: probs}}` (one pass each)."""
    return {split: {name: predict_proba(m, x) for name, m in models.items()}
            for split, x in inputs.items()}


def save_predictions(path, predictions, kinds: Mapping[str, str]):
    """The prediction cache: one array per (split, model), plus each model's kind."""
    from kernelib import io

    arrays = {f"{split}/{name}": p for split, preds in predictions.items()
              for name, p in preds.items()}
    arrays["__kinds__"] = np.array([f"{k}={v}" for k, v in kinds.items()])
    return io.save_npz(path, **arrays)


def read_predictions(path) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, str]]:
    """Read the prediction cache written by `save_predictions`."""
    preds: dict[str, dict[str, np.ndarray]] = {}
    with np.load(path) as f:
        kinds = dict(str(s).split("=", 1) for s in f["__kinds__"])
        for key in f.files:
            if key != "__kinds__":
                split, name = key.split("/", 1)
                preds.setdefault(split, {})[name] = f[key]
    return preds, kinds


def records(df, *, index: bool = True) -> list[dict[str, Any]]:
    """A DataFrame as JSON-ready records: NaN becomes None, NumPy scalars plain Python."""
    df = df.reset_index() if index else df
    out = []
    for rec in df.to_dict(orient="records"):
        out.append({k: (None if isinstance(v, float) and np.isnan(v) else
                        v.item() if isinstance(v, np.generic) else v) for k, v in rec.items()})
    return out


def write_metrics(out_dir, table, summary: Mapping[str, Any]) -> None:
    """`metrics/comparison.json` (one record per model) and `metrics/summary.json`."""
    from pathlib import Path

    from kernelib import io

    out_dir = Path(out_dir)
    io.write_json(out_dir / "comparison.json", records(table))
    io.write_json(out_dir / "summary.json", _plain(dict(summary)))


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    return {k: None if isinstance(v, float) and np.isnan(v) else v for k, v in d.items()}


def cache_predictions(run, members, merged: Mapping[str, Any], splits, *,
                      val_out_of_fold: Mapping[str, np.ndarray] | None = None):
    """Predict val and test once with every member and merged model; cache them; val table.

    `val_out_of_fold` replaces the val predictions of strategies fitted on val by their
    out-of-fold ones (`kernelib.merge.out_of_fold`), so val comparisons and the evaluate
    stage's selection are not flattered by in-sample fits.
    Writes `merged/predictions.npz`, `merged/models.json` (each model's kind, file and how
    its val predictions were made) and `metrics/merge.json`. Returns the val table.
    """
    from kernelib import io

    models = {m.name: m.model for m in members} | dict(merged)
    kinds = {m.name: "member" for m in members} | {s: "merged" for s in merged}
    files = {m.name: str(run.member_model(m.name).relative_to(run.root)) for m in members}
    files |= {s: str(run.merged_model(s).relative_to(run.root)) for s in merged}
    preds = predict_all(models, {"val": splits.x_val, "test": splits.x_test})
    oof = dict(val_out_of_fold or {})
    preds["val"] |= {n: check_proba(p, name=n, n_rows=len(splits.y_val)) for n, p in oof.items()}
    save_predictions(run.predictions, preds, kinds)
    io.write_json(run.merged / "models.json",
                  {n: {"kind": kinds[n], "path": files[n],
                       "val_predictions": "out-of-fold" if n in oof else "direct"}
                   for n in models})
    table = comparison_table({"val": preds["val"]}, {"val": splits.y_val}, kinds)
    io.write_json(run.metrics / "merge.json", records(table))
    return table


# --------------------------------------------------------------------------- the stage

@dataclass(frozen=True)
class Evaluation:
    """Every table of the evaluate stage (test split unless a column says otherwise)."""

    comparison: Any   # model -> kind, val_* and test_* metrics
    intervals: Any    # model -> test accuracy and NLL with bootstrap interval
    gains: Any        # model -> paired difference to the best member, with interval
    per_class: Any    # (model, class) -> support, precision, recall, F1, note
    reliability: Any  # (model, bin) -> edges, rows, mean confidence, accuracy
    diversity: Any    # (member, member) -> disagreement, error correlation
    data: Any         # split -> rows, classes present/absent
    summary: dict[str, Any]

    @property
    def selected(self) -> str:
        return self.summary["selected"]

    @property
    def compared(self) -> list[str]:
        """The member validation picks and the merged model to compare it with (a reliability
        diagram's lines): the selected model, or when a member was selected, the merged model
        that the same validation metric ranks first."""
        best, selected = self.summary["picked_member"], self.summary["selected"]
        if self.summary.get("selected_kind") != "member":
            return [best, selected]
        merged = self.comparison[self.comparison["kind"] != "member"]
        if merged.empty:
            return [best] if best == selected else [best, selected]
        return [best, select(merged, by=self.summary["selected_by"])]

    @property
    def headline(self):
        """The summary as a readable two-column table (what the run index shows first)."""
        import pandas as pd

        s = self.summary
        level = f"{round(100 * s['ci_level'])}%"
        rows = {
            "selected model": f"{s['selected']} ({s['selected_kind']}, chosen by "
                              f"{s['selected_by']})",
            "test accuracy": f"{s['test_accuracy']:.4f} ({level} CI {s['test_accuracy_lo']:.4f}"
                             f" to {s['test_accuracy_hi']:.4f})",
            "member validation picks": f"{s['picked_member']} "
                                      f"({s['picked_member_test_accuracy']:.4f})",
            "accuracy gain over it": f"{100 * s['accuracy_gain']:+.2f} points (paired {level} CI "
                                     f"{100 * s['accuracy_gain_lo']:+.2f} to "
                                     f"{100 * s['accuracy_gain_hi']:+.2f}): {s['verdict']}",
            "NLL difference to it": f"{s['nll_diff']:+.4f} nats ({level} CI "
                                    f"{s['nll_diff_lo']:+.4f} to {s['nll_diff_hi']:+.4f})",
            "best member on test (optimistic)": f"{s['best_member']} "
                                                f"({s['best_member_test_accuracy']:.4f})",
        }
        if s.get("best_merged"):
            rows["best merged model"] = best_merged_sentence(s)
            rows["merged models that lose"] = below_best_sentence(s)
        if s.get("note"):
            rows["note"] = s["note"]
        return pd.DataFrame({"value": rows}).rename_axis("headline")

    def per_class_of(self, model: str):
        """The per-class table of one model."""
        if model not in self.comparison.index:
            raise DataError(f"unknown model '{model}'; models: {list(self.comparison.index)}")
        return self.per_class[self.per_class["model"] == model].drop(columns="model") \
            .set_index("class")


def run_evaluation(run, splits, *, select_by: str = "val_nll", top_k: int = 3,
                   ece_bins: int = 15, bootstrap_resamples: int = 1000,
                   seed: int = 0) -> Evaluation:
    """All evaluate-stage tables from the prediction cache; the model chosen on validation.

    Writes `metrics/{comparison,summary,intervals,gains,per_class,reliability,diversity,
    data}.json` (deterministic for a given cache and seed; no timings).
    """
    import pandas as pd

    from kernelib import io
    from kernelib.benchmarks import benchmark_summary

    preds, kinds = read_predictions(run.require(run.predictions, "merge"))
    dataset = (io.read_json_if_exists(run.data_card) or {}).get("name")
    labels = {"val": splits.y_val, "test": splits.y_test}
    table = comparison_table(preds, labels, kinds, top_k=top_k, n_bins=ece_bins,
                             class_names=splits.class_names)
    selected = select(table, by=select_by)
    test = preds["test"]
    best, picked = best_member(table), picked_member(table, by=select_by)
    intervals, gains = interval_tables(splits.y_test, test, kinds, reference=picked,
                                       n_resamples=bootstrap_resamples, seed=seed)
    intervals = intervals.loc[table.index]
    pc = pd.concat([per_class(splits.y_test, p, splits.class_names).assign(model=n)
                    for n, p in test.items()], ignore_index=True)
    rel = pd.concat([reliability(splits.y_test, p, n_bins=ece_bins).assign(model=n)
                     for n, p in test.items()], ignore_index=True)
    members = {n: p for n, p in test.items() if kinds.get(n) == "member"}
    ev = Evaluation(
        comparison=table, intervals=intervals,
        gains=gains.loc[[n for n in table.index if n in gains.index]],
        per_class=pc[["model", *pc.columns[:-1]]],
        reliability=rel[["model", *rel.columns[:-1]]],
        diversity=diversity(splits.y_test, members),
        data=data_table(labels, splits.class_names),
        summary=_summary(table, intervals, gains, selected, best, select_by=select_by,
                         kinds=kinds, resamples=bootstrap_resamples, seed=seed)
        | benchmark_summary(dataset, float(table.loc[selected, "test_accuracy"])),
    )
    write_metrics(run.metrics, table, ev.summary)
    for name in ("intervals", "gains", "per_class", "reliability", "diversity", "data"):
        df = getattr(ev, name)
        io.write_json(run.metrics / f"{name}.json",
                      records(df, index=name not in ("per_class", "reliability", "diversity")))
    return ev


def _summary(table, intervals, gains, selected: str, best: str, *, select_by: str,
             kinds: Mapping[str, str], resamples: int, seed: int) -> dict[str, Any]:
    s = {**gain_summary(table, selected, by=select_by), "selected_by": select_by,
         "selected_kind": kinds[selected], "ci_level": CI_LEVEL,
         "bootstrap_resamples": resamples, "bootstrap_seed": seed,
         "test_accuracy_lo": float(intervals.loc[selected, "test_accuracy_lo"]),
         "test_accuracy_hi": float(intervals.loc[selected, "test_accuracy_hi"]),
         "test_nll": float(table.loc[selected, "test_nll"])}
    if selected == s["picked_member"]:
        s |= {"accuracy_gain_lo": 0.0, "accuracy_gain_hi": 0.0, "nll_diff": 0.0,
              "nll_diff_lo": 0.0, "nll_diff_hi": 0.0,
              "verdict": "is the member validation picks"}
    else:
        g = gains.loc[selected]
        s |= {"accuracy_gain_lo": float(g["test_accuracy_diff_lo"]),
              "accuracy_gain_hi": float(g["test_accuracy_diff_hi"]),
              "nll_diff": float(g["test_nll_diff"]), "nll_diff_lo": float(g["test_nll_diff_lo"]),
              "nll_diff_hi": float(g["test_nll_diff_hi"]), "verdict": str(g["verdict"])}
    s |= merged_versus_best(table, best)
    if "note" in table.columns:
        s["note"] = str(table["note"].iloc[0])
    return s


def merged_versus_best(table, best: str, *, split: str = "test") -> dict[str, Any]:
    """Every merged model against the best member on `split`, in plain terms.

    `best_merged` is the merged model with the highest accuracy (lowest NLL on ties) and
    `best_merged_error_ratio` its error over the best member's (None when the member makes no
    error); `merged_below_best` names each merged model with lower accuracy or higher NLL
    than the best member, with both differences.
    """
    merged = table[table["kind"] != "member"]
    if merged.empty:
        return {}
    acc, nll_ = f"{split}_accuracy", f"{split}_nll"
    ranked = merged.sort_values([acc, nll_], ascending=[False, True], kind="stable")
    top, b = ranked.index[0], table.loc[best]
    err_best = 1 - float(b[acc])
    below = [{"model": str(n), "accuracy_diff": float(r[acc] - b[acc]),
              "nll_diff": float(r[nll_] - b[nll_])}
             for n, r in merged.iterrows() if r[acc] < b[acc] or r[nll_] > b[nll_]]
    return {"best_member": best, "best_merged": str(top),
            f"best_merged_{split}_accuracy": float(ranked.iloc[0][acc]),
            f"best_merged_{split}_nll": float(ranked.iloc[0][nll_]),
            "best_merged_error_ratio": (1 - float(ranked.iloc[0][acc])) / err_best
            if err_best > 0 else None,
            f"best_member_{split}_nll": float(b[nll_]),
            "merged_below_best": below}


def best_merged_sentence(s: Mapping[str, Any]) -> str:
    """'weighted (test accuracy 0.9972, NLL 0.0194; test error ratio to the best member 1.00)'."""
    ratio = s["best_merged_error_ratio"]
    return (f"{s['best_merged']} (test accuracy {s['best_merged_test_accuracy']:.4f}, NLL "
            f"{s['best_merged_test_nll']:.4f}; test error ratio to the best member "
            + ("n/a, the best member makes no error" if ratio is None else f"{ratio:.2f}") + ")")


def below_best_sentence(s: Mapping[str, Any]) -> str | None:
    """'weighted is below the best member X: accuracy -0.28 points, NLL +0.0012' or None."""
    below = s.get("merged_below_best")
    if below is None:
        return None
    if not below:
        return (f"every merged model is at or above the best member {s['best_member']} on "
                "test accuracy and NLL")
    parts = [f"{r['model']} ({100 * r['accuracy_diff']:+.2f} points, NLL "
             f"{r['nll_diff']:+.4f})" for r in below]
    return (f"below the best member {s['best_member']} on test accuracy or NLL: "
            + "; ".join(parts))


def cost_table(run, *, repeats: int = 30):
    """Parameters, file size, batch-1 latency and batch-256 throughput of every model file.

    Loads each model listed in `merged/models.json` and times its compiled forward pass
    (`kernelib.cost`). Timings vary between runs, so they go to `timings/cost.json`, not metrics/.
    """
    import pandas as pd

    from kernelib import cost, io
    from kernelib.members import load_keras

    files = io.read_json(run.require(run.merged / "models.json", "merge"))
    rows = []
    for name, info in files.items():
        path = run.root / info["path"]
        try:
            model = load_keras(run.require(path, "merge"))
        except (TypeError, ValueError, OSError) as err:
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise MemberError(f"cannot load '{name}' from '{path}' to time it: {first}. "
                              "Run the merge stage again with this kernelib version.") from None
        rows.append({"model": name, "kind": info["kind"], **cost.cost(model, path,
                                                                      repeats=repeats)})
    df = pd.DataFrame(rows).set_index("model")
    io.write_json(run.timings / "cost.json", records(df))
    return df


def cached(run, split: str, name: str) -> np.ndarray:
    """One model's cached probabilities on one split."""
    preds, _ = read_predictions(run.require(run.predictions, "merge"))
    if name not in preds.get(split, {}):
        raise DataError(f"no cached '{split}' predictions for '{name}'; cached models: "
                        f"{sorted(preds.get(split, {}))}")
    return preds[split][name]


def load_selected(run, name: str | None = None):
    """The model chosen by the evaluate stage, or the member or merged model `name`:
    `(name, keras.Model)`."""
    from kernelib import io
    from kernelib.members import load_keras

    files = io.read_json(run.require(run.merged / "models.json", "merge"))
    if name is None:
        name = io.read_json(run.require(run.metrics / "summary.json", "evaluate"))["selected"]
    if name not in files:
        raise MemberError(f"'{name}' is neither a member nor a merged model of this run; "
                          f"valid: {sorted(files)}. Set export.model to one of them (or null "
                          "for the model the evaluate stage selected).")
    return name, load_keras(run.root / files[name]["path"])
