"""The evaluate stage's tables, from the prediction cache, and the model it selects.

Every table but `cost_table` works from `merged/predictions.npz` written by the merge stage
(`kernelib.merge.cache`), so evaluating never runs a model again; `cost_table` loads each model
file only to time it (`kernelib.cost`, into `timings/cost.json`). Tables are tidy pandas DataFrames;
`run_evaluation` writes them to `metrics/*.json`, byte-identical between runs of the same
config and seed. The metrics themselves live in `kernelib.metrics`, the intervals in
`kernelib.bootstrap`, the headline's sentences in `kernelib.headline`.

Example::

    ev = run_evaluation(run, splits, select_by="val_nll", bootstrap_resamples=1000, seed=0)
    ev.summary["selected"], ev.intervals, ev.gains
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kernelib.bootstrap import CI_LEVEL, bootstrap_means, percentile_interval
from kernelib.errors import DataError, MemberError
from kernelib.headline import headline_rows
from kernelib.inference import read_predictions
from kernelib.metrics import ROW_VALUES, metrics, per_class, reliability
from kernelib.selection import best_member, picked_member, select, summary

# --------------------------------------------------------------------------- intervals

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
    for metric, fn in ROW_VALUES.items():
        values = np.stack([fn(y, preds[n]) for n in names], axis=1)
        boots[metric] = (values.mean(axis=0),
                         bootstrap_means(values, n_resamples=n_resamples, seed=seed))
    for j, name in enumerate(names):
        row: dict[str, Any] = {"model": name, "kind": kinds.get(name, "?")}
        for metric, (point, samples) in boots.items():
            lo, hi = percentile_interval(samples[:, j], level)
            row |= {f"{split}_{metric}": float(point[j]), f"{split}_{metric}_lo": lo,
                    f"{split}_{metric}_hi": hi}
        rows.append(row)
    b = names.index(reference)
    for j, name in enumerate(names):
        if j == b:
            continue
        row = {"model": name, "kind": kinds.get(name, "?"), "versus": reference}
        for metric, (point, samples) in boots.items():
            lo, hi = percentile_interval(samples[:, j] - samples[:, b], level)
            row |= {f"{split}_{metric}_diff": float(point[j] - point[b]),
                    f"{split}_{metric}_diff_lo": lo, f"{split}_{metric}_diff_hi": hi}
        row["verdict"] = _verdict(row[f"{split}_accuracy_diff_lo"],
                                  row[f"{split}_accuracy_diff_hi"])
        gains.append(row)
    intervals = pd.DataFrame(rows).set_index("model")
    gain_cols = ["model", "kind", "versus"] + [
        f"{split}_{m}_diff{s}" for m in ROW_VALUES for s in ("", "_lo", "_hi")] + ["verdict"]
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

        return pd.DataFrame({"value": headline_rows(self.summary)}).rename_axis("headline")

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
        summary=summary(table, intervals, gains, selected, best, select_by=select_by,
                         kinds=kinds, resamples=bootstrap_resamples, seed=seed)
        | benchmark_summary(dataset, float(table.loc[selected, "test_accuracy"])),
    )
    write_metrics(run.metrics, table, ev.summary)
    for name in ("intervals", "gains", "per_class", "reliability", "diversity", "data"):
        df = getattr(ev, name)
        io.write_json(run.metrics / f"{name}.json",
                      records(df, index=name not in ("per_class", "reliability", "diversity")))
    return ev


def cost_table(run, *, repeats: int = 30):
    """Parameters, file size, batch-1 latency and batch-256 throughput of every model file.

    Loads each model listed in `merged/models.json` and times its compiled forward pass
    (`kernelib.cost`). Timings vary between runs, so they go to `timings/cost.json`, not metrics/.
    """
    from kernelib import cost, io

    files = io.read_json(run.require(run.merged / "models.json", "merge"))
    df = cost.cost_table(_loaded(run, files), repeats=repeats)
    io.write_json(run.timings / "cost.json", records(df))
    return df


def _loaded(run, files: Mapping[str, Mapping[str, str]]):
    """`(name, kind, path, model)` of every model in `files`, loaded one at a time."""
    from kernelib.members import load_keras

    for name, info in files.items():
        path = run.root / info["path"]
        try:
            model = load_keras(run.require(path, "merge"))
        except (TypeError, ValueError, OSError) as err:
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise MemberError(f"cannot load '{name}' from '{path}' to time it: {first}. "
                              "Run the merge stage again with this kernelib version.") from None
        yield name, info["kind"], path, model


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
