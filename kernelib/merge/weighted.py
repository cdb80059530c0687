"""`weighted`: member weights on the probability simplex that minimise the validation NLL.

The NLL of a mixture `sum_i w_i p_i` is convex in `w`, and the EM update for mixture
weights (`w_i <- mean over rows of w_i p_i(y) / sum_j w_j p_j(y)`) never increases it, so
starting from uniform weights the result is never worse than the uniform average. The
single members (the simplex's corners) are checked too, so the result is never worse on
val than the best member. Weights under `min_weight` are dropped (and the rest
renormalised) to keep the merged model small. Built from Keras layers only, like `average`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from kernelib.merge.average import weighted_model
from kernelib.merge.base import EPS, check_val, member_probabilities, nll, prepare


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


def merge_weighted(members: Sequence[Any], *, val: tuple | None = None,
                   val_probs: np.ndarray | None = None, name: str = "weighted"):
    """Weighted mean of member probabilities, weights fitted on `val` by minimising NLL."""
    models = prepare(members, "weighted")
    x_val, y_val = check_val(models, val, "weighted")
    probs = member_probabilities(models, x_val, given=val_probs)
    return weighted_model(models, fit_simplex_weights(probs, y_val).tolist(), name)
