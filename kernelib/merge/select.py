"""`select`: Caruana et al. (2004) greedy forward ensemble selection with replacement.

Start from an empty ensemble; `size` times, add the member (possibly again) whose addition
gives the best validation score of the averaged ensemble. Ties go to the member listed
first; with `metric="accuracy"` ties in accuracy are first broken by NLL. The merged model
is the weighted mean with weights `counts / size` (as AutoGluon's `EnsembleSelection`),
built from Keras layers only; members never picked are left out.

Two remedies against overfitting the validation rows (Caruana et al. 2004 and 2006):
`init_size=N` starts the ensemble from the N best single members (sorted initialisation)
before the greedy picks; `bags=B` repeats the selection on B bootstrap resamples of the
validation rows (seeded) and averages the B weight vectors (bagged ensemble selection; the
papers bag the model library, this bags the rows, which needs no extra parameter).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kernelib.errors import MergeError
from kernelib.merge.average import WeightedMean
from kernelib.merge.base import accuracy, check_choice, nll
from kernelib.merge_params import SelectParams

METRICS = ("nll", "accuracy")


def _score(p: np.ndarray, y: np.ndarray, metric: str) -> tuple[float, ...]:
    """Lower is better: (NLL,) or (error, NLL)."""
    return (nll(p, y),) if metric == "nll" else (1.0 - accuracy(p, y), nll(p, y))


def greedy_selection(probs: np.ndarray, y: np.ndarray, *, size: int, metric: str = "nll",
                     init_size: int = 0) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Pick counts per member and the trace (step, member index, score of the ensemble so far).

    `probs` is (members, rows, classes) on the validation rows, `y` their labels. The first
    `init_size` of the `size` picks are the best single members by `metric`, best first.
    """
    total = np.zeros(probs.shape[1:])
    counts = np.zeros(len(probs), dtype="int64")
    alone = [_score(p, y, metric) for p in probs]
    initial = sorted(range(len(probs)), key=lambda i: alone[i])[:init_size]
    trace = []
    for step in range(1, size + 1):
        scores = [_score((total + p) / step, y, metric) for p in probs]
        if step <= len(initial):
            best = initial[step - 1]
        else:
            best = min(range(len(probs)), key=lambda i: scores[i])  # first index on ties
        counts[best] += 1
        total += probs[best]
        trace.append({"step": step, "member": best, "score": scores[best][0]})
    return counts, trace


def fit_select_weights(probs: np.ndarray, y: np.ndarray, *, size: int, metric: str = "nll",
                       init_size: int = 0, bags: int = 0, seed: int = 0) -> np.ndarray:
    """The strategy's weights: pick counts / size, averaged over `bags` bootstrap row bags."""
    def weights(rows):
        counts, _ = greedy_selection(probs[:, rows], y[rows], size=size, metric=metric,
                                     init_size=init_size)
        return counts / counts.sum()

    n = probs.shape[1]
    if bags == 0:
        return weights(np.arange(n))
    rng = np.random.default_rng(seed)
    return np.mean([weights(rng.integers(0, n, n)) for _ in range(bags)], axis=0)


def _check_counts(size, init_size, bags, n_members: int) -> None:
    for key, value, low in (("size", size, 1), ("init_size", init_size, 0), ("bags", bags, 0)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
            raise MergeError(f"strategy 'select': '{key}' must be an integer >= {low}; "
                             f"received {key}={value!r}")
    if init_size > min(size, n_members):
        raise MergeError(f"strategy 'select': 'init_size' starts from that many distinct best "
                         f"members, so it must be at most size ({size}) and the number of "
                         f"members ({n_members}); received init_size={init_size}")


class Select(WeightedMean):
    """Weighted mean of the members picked by greedy forward selection on val (optionally
    from the `init_size` best members, and bagged over `bags` row resamples)."""

    strategy, options, runtime, fits_on_val = "select", SelectParams, {"seed": 0}, True

    def fit(self, probs, y, *, x=None):
        check_choice(self.metric, METRICS, "metric", "select")
        _check_counts(self.size, self.init_size, self.bags, len(probs))
        self.weights_ = fit_select_weights(probs, y, size=int(self.size), metric=self.metric,
                                           init_size=int(self.init_size), bags=int(self.bags),
                                           seed=self.seed)
        return self
