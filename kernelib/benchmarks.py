"""Published test accuracies to read a run's figure against: one small table per dataset.

Fashion-MNIST rows are from the benchmark table of the zalandoresearch/fashion-mnist README
(shipped as /usr/share/doc/dataset-fashion-mnist/README.md.gz by Debian's package), all on the
official 10,000 test images. A range is the spread the table lists for one architecture.
"""

from __future__ import annotations

from typing import Any

FASHION_MNIST_SOURCE = ("zalandoresearch/fashion-mnist README, benchmark table "
                        "(Debian: /usr/share/doc/dataset-fashion-mnist/README.md.gz)")
# (model, test accuracy low, high)
BENCHMARKS: dict[str, dict[str, Any]] = {
    "fashion_mnist": {
        "source": FASHION_MNIST_SOURCE,
        "rows": [
            ("2 Conv+pooling", 0.876, 0.916),
            ("2 Conv <100K parameters", 0.925, 0.925),
            ("3 Conv+pooling+2 FC+dropout", 0.926, 0.926),
            ("Google AutoML Vision, 24 compute hours", 0.939, 0.939),
            ("ResNet18 (with augmentation)", 0.949, 0.949),
            ("WRN-28-10 (with augmentation)", 0.959, 0.959),
        ],
    },
}


def benchmark_summary(dataset: str | None, accuracy: float) -> dict[str, Any]:
    """`{"benchmarks": {...}}` for a dataset with published rows (else `{}`): each row with
    whether `accuracy` is above it, for the evaluate summary and the run index."""
    table = BENCHMARKS.get(dataset or "")
    if table is None:
        return {}
    rows = [{"model": m, "test_accuracy": lo if lo == hi else f"{lo:.3f}-{hi:.3f}",
             "this_run_above": bool(accuracy > hi)} for m, lo, hi in table["rows"]]
    return {"benchmarks": {"dataset": dataset, "source": table["source"], "rows": rows}}


def benchmark_table(summary: dict[str, Any]):
    """The benchmark rows with the selected model placed among them, as a DataFrame (or None)."""
    import pandas as pd

    b = summary.get("benchmarks")
    if not b:
        return None
    rows = [(r["model"], r["test_accuracy"]) for r in b["rows"]]
    rows.append((f"this run: {summary['selected']} (kernelib)", round(summary["test_accuracy"], 4)))
    high = [float(str(a).split("-")[-1]) for _, a in rows]
    order = sorted(range(len(rows)), key=lambda i: high[i])
    df = pd.DataFrame([rows[i] for i in order], columns=["model", "test accuracy"])
    return df.set_index("model")
