"""Seeded percentile bootstrap of means over rows, single and paired.

Resampling draws row indices with `numpy.random.default_rng(seed)` and turns them into counts,
so every column of a values matrix sees the same resampled rows (differences of columns are
paired). `scipy.stats.bootstrap` draws differently, so its intervals differ in the last digits;
the tests compare the two within their sampling error.

Example::

    lo, hi = bootstrap_ci(correct_rows(y, p), n_resamples=1000, seed=0)
"""

from __future__ import annotations

import numpy as np

from kernelib.errors import DataError

CI_LEVEL = 0.95


def bootstrap_means(values: np.ndarray, *, n_resamples: int, seed: int) -> np.ndarray:
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


def percentile_interval(samples: np.ndarray, level: float = CI_LEVEL) -> tuple[float, float]:
    """The central `level` interval of bootstrap `samples` (their quantiles)."""
    alpha = (1.0 - level) / 2
    lo, hi = np.quantile(samples, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def bootstrap_ci(values: np.ndarray, *, n_resamples: int = 1000, seed: int = 0,
                 level: float = CI_LEVEL) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-row `values` (e.g. `correct_rows`)."""
    means = bootstrap_means(values, n_resamples=n_resamples, seed=seed)
    return percentile_interval(means[:, 0], level)


def paired_bootstrap(a: np.ndarray, b: np.ndarray, *, n_resamples: int = 1000, seed: int = 0,
                     level: float = CI_LEVEL) -> dict[str, float]:
    """Mean of `a - b` over the same rows, with a bootstrap interval that resamples rows jointly."""
    a, b = np.asarray(a, dtype="float64"), np.asarray(b, dtype="float64")
    means = bootstrap_means(np.stack([a, b], axis=1), n_resamples=n_resamples, seed=seed)
    lo, hi = percentile_interval(means[:, 0] - means[:, 1], level)
    return {"diff": float(np.mean(a - b)), "lo": lo, "hi": hi}
