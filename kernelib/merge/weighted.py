"""`weighted`: member weights on the probability simplex that minimise the validation NLL.

The NLL of a mixture `sum_i w_i p_i` is convex in `w`, and the EM update for mixture
weights (`w_i <- mean over rows of w_i p_i(y) / sum_j w_j p_j(y)`) never increases it, so
starting from uniform weights the result is never worse than the uniform average. The
single members (the simplex's corners) are checked too, so the result is never worse on
val than the best member. Weights under `min_weight` are dropped (and the rest
renormalised) to keep the merged model small. Built from Keras layers only, like `average`.

Weights fitted on a few thousand validation rows overfit them (on digits the plain average of
five seeds beat the fitted weights on test NLL in 4 of 4 re-splits), so the fitted weights are
shrunk toward uniform: `w = (1 - s) * w_fit + s / M`. `shrinkage="auto"` picks `s` from
`SHRINKAGE_GRID` by the out-of-fold NLL of k stratified folds of the validation rows (each
fold scored by weights fitted on the others); a number fixes it; `0` is the plain fit.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kernelib.errors import MergeError
from kernelib.merge.average import WeightedMean
from kernelib.merge.base import EPS, nll
from kernelib.merge_params import WeightedParams

SHRINKAGE_GRID = (0.0, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0)


def fit_simplex_weights(probs: np.ndarray, y: np.ndarray, *, max_iter: int = 5000,
                        tol: float = 1e-10, min_weight: float = 1e-3) -> np.ndarray:
    """Weights (non-negative, summing to 1) minimising the NLL of `sum_i w_i probs[i]` on `y`.

    `probs` is (members, rows, classes). Returns the lowest-NLL of: the EM fit (tiny
    weights dropped) and each single member.
    """
    m, n = probs.shape[:2]
    lik = np.clip(probs[:, np.arange(n), y], EPS, None)  # (members, rows): p_i(true class)
    w = np.full(m, 1.0 / m)
    previous = np.inf
    for _ in range(max_iter):
        mix = w @ lik
        current = -np.mean(np.log(mix))
        if previous - current < tol:
            break
        previous = current
        w = w * np.mean(lik / mix, axis=1)
    w = np.where(w < min_weight, 0.0, w)
    candidates = [w / w.sum(), *np.eye(m)]
    scores = [nll(np.tensordot(c, probs, axes=1), y) for c in candidates]
    return candidates[int(np.argmin(scores))]


def shrink(w: np.ndarray, s: float) -> np.ndarray:
    """`w` moved a share `s` of the way to uniform weights."""
    return (1.0 - s) * np.asarray(w, dtype="float64") + s / len(w)


def pick_shrinkage(probs: np.ndarray, y: np.ndarray, *, folds: int = 5, seed: int = 0,
                   grid: Sequence[float] = SHRINKAGE_GRID) -> float:
    """The share of `grid` with the lowest out-of-fold NLL (ties: the smaller share).

    Each of `folds` stratified folds of the rows is scored with the weights fitted on the
    other folds, shrunk by each share. With fewer than 2 rows in some class there are no
    folds, and the plain fit (0) is returned.
    """
    from sklearn.model_selection import StratifiedKFold

    k = int(min(folds, np.bincount(y).min()))
    if k < 2:
        return 0.0
    n = probs.shape[1]
    lik = np.clip(probs[:, np.arange(n), y], EPS, None)
    loss = np.zeros(len(grid))
    cv = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    for fit_rows, held_out in cv.split(np.zeros(n), y):
        w = fit_simplex_weights(probs[:, fit_rows], y[fit_rows])
        for j, s in enumerate(grid):
            loss[j] -= np.sum(np.log(shrink(w, s) @ lik[:, held_out]))
    return float(grid[int(np.argmin(loss))])


def fit_weights(probs: np.ndarray, y: np.ndarray, *, shrinkage: float | str = "auto",
                folds: int = 5, seed: int = 0) -> np.ndarray:
    """The strategy's weights on (members, rows, classes) `probs`: the simplex fit, shrunk."""
    if shrinkage == "auto":
        shrinkage = pick_shrinkage(probs, y, folds=folds, seed=seed)
    elif isinstance(shrinkage, bool) or not isinstance(shrinkage, int | float) \
            or not 0.0 <= shrinkage <= 1.0:
        raise MergeError("strategy 'weighted': 'shrinkage' must be 'auto' or a number in "
                         f"[0, 1] (0 = the plain fit, 1 = uniform); received {shrinkage!r}")
    return shrink(fit_simplex_weights(probs, y), float(shrinkage))


class Weighted(WeightedMean):
    """Weighted mean of member probabilities, weights fitted on val by minimising NLL, shrunk
    toward uniform by `shrinkage` ('auto': picked out-of-fold over `folds`)."""

    strategy, options, runtime, fits_on_val = "weighted", WeightedParams, {"seed": 0}, True

    def fit(self, probs, y, *, x=None):
        self.weights_ = fit_weights(probs, y, shrinkage=self.shrinkage, folds=int(self.folds),
                                    seed=self.seed)
        return self
