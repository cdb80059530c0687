"""`select`: Caruana et al. (2004) greedy forward ensemble selection with replacement.

Start from an empty ensemble; `size` times, add the member (possibly again) whose addition
gives the best validation score of the averaged ensemble. Ties go to the member listed
first; with `metric="accuracy"` ties in accuracy are first broken by NLL. The merged model
is the weighted mean with weights `counts / size` (as AutoGluon's `EnsembleSelection`),
built from Keras layers only; members never picked are left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from kernelib.errors import MergeError
from kernelib.merge.average import weighted_model
from kernelib.merge.base import (
    accuracy,
    check_choice,
    check_val,
    member_probabilities,
    nll,
    prepare,
)

METRICS = ("nll", "accuracy")


def _score(p: np.ndarray, y: np.ndarray, metric: str) -> tuple[float, ...]:
    """Lower is better: (NLL,) or (error, NLL)."""
    return (nll(p, y),) if metric == "nll" else (1.0 - accuracy(p, y), nll(p, y))


def greedy_selection(probs: np.ndarray, y: np.ndarray, *, size: int,
                     metric: str = "nll") -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Pick counts per member and the trace (step, member index, score of the ensemble so far).

    `probs` is (members, rows, classes) on the validation rows, `y` their labels.
    """
    total = np.zeros(probs.shape[1:])
    counts = np.zeros(len(probs), dtype="int64")
    trace = []
    for step in range(1, size + 1):
        scores = [_score((total + p) / step, y, metric) for p in probs]
        best = min(range(len(probs)), key=lambda i: scores[i])  # first index on ties
        counts[best] += 1
        total += probs[best]
        trace.append({"step": step, "member": best, "score": scores[best][0]})
    return counts, trace


def merge_select(members: Sequence[Any], *, val: tuple | None = None, size: int = 25,
                 metric: str = "nll", val_probs: np.ndarray | None = None,
                 name: str = "select"):
    """Weighted mean of the members picked by greedy forward selection on `val`."""
    models = prepare(members, "select")
    check_choice(metric, METRICS, "metric", "select")
    if not isinstance(size, int | np.integer) or size < 1:
        raise MergeError(f"strategy 'select': 'size' must be a positive integer (the number of "
                         f"greedy picks); received size={size!r}")
    x_val, y_val = check_val(models, val, "select")
    probs = member_probabilities(models, x_val, given=val_probs)
    counts, _ = greedy_selection(probs, y_val, size=int(size), metric=metric)
    return weighted_model(models, (counts / counts.sum()).tolist(), name)
