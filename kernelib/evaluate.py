"""Metrics from predicted probabilities, and the member-vs-merged table."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from kernelib.errors import DataError

EPS = 1e-7


def predict_proba(model, x: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
    """Class probabilities of `model` on `x` (float64, rows sum to 1)."""
    return np.asarray(model.predict(x, batch_size=batch_size, verbose=0), dtype="float64")


def check_proba(p: np.ndarray, *, name: str, n_rows: int | None = None) -> np.ndarray:
    """Refuse predictions that are not probability rows, naming the model."""
    p = np.asarray(p, dtype="float64")
    if p.ndim != 2:
        raise DataError(f"predictions of '{name}' must be a 2-D array (rows x classes); "
                        f"received shape {p.shape}")
    if n_rows is not None and len(p) != n_rows:
        raise DataError(f"predictions of '{name}' have {len(p)} rows; the labels have {n_rows}")
    if not np.isfinite(p).all():
        raise DataError(f"predictions of '{name}' contain NaN or infinity; check the model's "
                        "numerics (e.g. a float16 overflow) before evaluating it.")
    sums = p.sum(axis=1)
    if np.any(p < -1e-6) or not np.allclose(sums, 1.0, atol=1e-3):
        bad = int(np.argmax(np.abs(sums - 1.0)))
        raise DataError(f"predictions of '{name}' must be probabilities summing to 1 per row; "
                        f"row {bad} sums to {sums[bad]:.4f}. Add a softmax to the model's end.")
    return p


def metrics(y: np.ndarray, p: np.ndarray, *, name: str = "model") -> dict[str, float]:
    """Accuracy, negative log-likelihood (clipped probabilities) and macro-F1."""
    from sklearn.metrics import accuracy_score, f1_score, log_loss

    y = np.asarray(y)
    if len(y) == 0:
        raise DataError(f"cannot evaluate '{name}' on an empty split; received 0 rows.")
    p = check_proba(p, name=name, n_rows=len(y))
    labels = np.arange(p.shape[1])
    pred = p.argmax(axis=1)
    pc = np.clip(p, EPS, 1.0)
    pc = pc / pc.sum(axis=1, keepdims=True)
    return {
        "accuracy": float(accuracy_score(y, pred)),
        "nll": float(log_loss(y, pc, labels=labels)),
        "macro_f1": float(f1_score(y, pred, labels=labels, average="macro", zero_division=0)),
    }


def comparison_table(predictions: Mapping[str, Mapping[str, np.ndarray]],
                     labels: Mapping[str, np.ndarray], kinds: Mapping[str, str]):
    """One row per model: its kind (member/merged) and metrics on every split.

    `predictions[split][model]` are probabilities; `labels[split]` the true classes.
    """
    import pandas as pd

    rows: dict[str, dict[str, Any]] = {}
    for split, preds in predictions.items():
        for model, p in preds.items():
            row = rows.setdefault(model, {"model": model, "kind": kinds.get(model, "?")})
            for k, v in metrics(labels[split], p, name=model).items():
                row[f"{split}_{k}"] = v
    df = pd.DataFrame(list(rows.values())).set_index("model")
    return df.sort_values(["kind", df.columns[1]], ascending=[False, False])


def select(table, *, by: str = "val_nll") -> str:
    """Name of the model with the best validation metric (lowest NLL or highest accuracy)."""
    if by not in table.columns:
        raise DataError(f"cannot select by '{by}'; available columns: {list(table.columns)}")
    col = table[by]
    return str(col.idxmin() if by.endswith("nll") else col.idxmax())


def gain_summary(table, selected: str, *, split: str = "test") -> dict[str, Any]:
    """How the selected model compares with the best member on one split."""
    members = table[table["kind"] == "member"]
    best = str(members[f"{split}_accuracy"].idxmax())
    acc_sel = float(table.loc[selected, f"{split}_accuracy"])
    acc_best = float(members.loc[best, f"{split}_accuracy"])
    return {
        "selected": selected,
        "best_member": best,
        f"{split}_accuracy": acc_sel,
        f"best_member_{split}_accuracy": acc_best,
        "accuracy_gain": acc_sel - acc_best,
        f"{split}_error_ratio": (1 - acc_sel) / (1 - acc_best) if acc_best < 1 else None,
    }


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


def write_metrics(out_dir, table, summary: Mapping[str, Any]) -> None:
    """`metrics/comparison.json` (one record per model) and `metrics/summary.json`."""
    from pathlib import Path

    from kernelib import io

    out_dir = Path(out_dir)
    io.write_json(out_dir / "comparison.json", table.reset_index().to_dict(orient="records"))
    io.write_json(out_dir / "summary.json", dict(summary))


def cache_predictions(run, members, merged: Mapping[str, Any], splits):
    """Predict val and test once with every member and merged model; cache them; val table.

    Writes `merged/predictions.npz`, `merged/models.json` (each model's kind and file) and
    `metrics/merge.json`. Returns the validation comparison table.
    """
    from kernelib import io

    models = {m.name: m.model for m in members} | dict(merged)
    kinds = {m.name: "member" for m in members} | {s: "merged" for s in merged}
    files = {m.name: str(run.member_model(m.name).relative_to(run.root)) for m in members}
    files |= {s: str(run.merged_model(s).relative_to(run.root)) for s in merged}
    preds = predict_all(models, {"val": splits.x_val, "test": splits.x_test})
    save_predictions(run.predictions, preds, kinds)
    io.write_json(run.merged / "models.json",
                  {n: {"kind": kinds[n], "path": files[n]} for n in models})
    table = comparison_table({"val": preds["val"]}, {"val": splits.y_val}, kinds)
    io.write_json(run.metrics / "merge.json", table.reset_index().to_dict(orient="records"))
    return table


def evaluate_run(run, splits, *, select_by: str = "val_nll"):
    """Member-vs-merged table on val and test from the cache, the selected model and its gain.

    Writes `metrics/comparison.json` and `metrics/summary.json`.
    """
    preds, kinds = read_predictions(run.require(run.predictions, "merge"))
    table = comparison_table(preds, {"val": splits.y_val, "test": splits.y_test}, kinds)
    selected = select(table, by=select_by)
    summary = {**gain_summary(table, selected), "selected_by": select_by,
               "selected_kind": kinds[selected]}
    write_metrics(run.metrics, table, summary)
    return table, summary


def cached(run, split: str, name: str) -> np.ndarray:
    """One model's cached probabilities on one split."""
    preds, _ = read_predictions(run.require(run.predictions, "merge"))
    return preds[split][name]


def load_selected(run):
    """The model chosen by the evaluate stage: `(name, keras.Model)`."""
    import keras

    import kernelib.merge  # noqa: F401  registers kernelib's layers for loading
    from kernelib import io

    summary = io.read_json(run.require(run.metrics / "summary.json", "evaluate"))
    files = io.read_json(run.require(run.merged / "models.json", "merge"))
    name = summary["selected"]
    return name, keras.saving.load_model(run.root / files[name]["path"], compile=False)
