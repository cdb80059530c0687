"""`stacking`: a softmax meta-learner (multinomial logistic regression) on member probabilities.

Which rows it learns from: only `val`. The members were trained on the training split and
never on `val`, so their `val` probabilities are held-out predictions; the meta-learner is
fitted on those. Its L2 strength is chosen by stratified k-fold cross-validation over
`val` (out-of-fold NLL of the meta-learner itself), then it is refitted on all of `val`.
It takes no training or test rows at all. With `passthrough=True` it also sees the raw
input, flattened and standardised with statistics of the `val` rows.

The merged model is members -> `Concatenate` -> `Dense(softmax)` (plus `Flatten` and
`Normalization` for passthrough): Keras layers only, loadable without kernelib.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kernelib.errors import MergeError
from kernelib.merge.base import model_input, n_classes, nll
from kernelib.merge.strategy import Strategy
from kernelib.merge_params import StackingParams

C_GRID = tuple(np.logspace(-2, 4, 7))  # inverse L2 strengths tried by the k-fold search


def meta_features(probs: np.ndarray, x: np.ndarray | None = None, *,
                  mean: np.ndarray | None = None, variance: np.ndarray | None = None):
    """Rows of concatenated member probabilities (member-major), plus standardised raw input."""
    feats = probs.transpose(1, 0, 2).reshape(probs.shape[1], -1)
    if x is None:
        return feats
    raw = x.reshape(len(x), -1).astype("float64")
    return np.hstack([feats, (raw - mean) / np.sqrt(variance)])


def fit_meta_learner(features: np.ndarray, y: np.ndarray, *, k: int, folds: int = 5,
                     seed: int = 0, grid: Sequence[float] = C_GRID):
    """Pick C by stratified k-fold out-of-fold NLL on (features, y), refit on all rows.

    Returns the fitted `LogisticRegression` and a table of the k-fold NLL per C.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from threadpoolctl import threadpool_limits

    counts = np.bincount(y, minlength=k)
    if counts.min() < 2:
        raise MergeError(f"strategy 'stacking' needs at least 2 'val' rows of every class (to "
                         f"fit and cross-validate the meta-learner); class {int(counts.argmin())} "
                         f"has {int(counts.min())}. Use a larger validation split.")
    cv = StratifiedKFold(n_splits=int(min(folds, counts.min())), shuffle=True, random_state=seed)
    grid = sorted(float(c) for c in grid)
    oof = {c: np.zeros((len(y), k)) for c in grid}
    # One BLAS thread: these fits are tiny, and next to TensorFlow's threads a multi-threaded
    # BLAS spends its time handing work between threads (measured 20x slower on 2 cores).
    with threadpool_limits(1):
        for fit_rows, held_out in cv.split(features, y):
            # along the path of growing C, each fit starts from the last one's coefficients,
            # as LogisticRegressionCV does (3.4x faster on the demo's val rows, same C chosen)
            clf = LogisticRegression(max_iter=2000, warm_start=True)
            for c in grid:
                clf.set_params(C=c).fit(features[fit_rows], y[fit_rows])
                oof[c][held_out] = clf.predict_proba(features[held_out])
        scores = {c: nll(oof[c], y) for c in grid}
        best = min(scores, key=scores.get)
        return LogisticRegression(C=best, max_iter=2000).fit(features, y), scores


def standardiser(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-input mean and variance of the flattened raw rows `x` (passthrough features);
    a constant input gets variance 1, so it stays constant instead of dividing by zero."""
    raw = x.reshape(len(x), -1).astype("float64")
    variance = raw.var(axis=0)
    return raw.mean(axis=0), np.where(variance < 1e-12, 1.0, variance)


class Stacking(Strategy):
    """A logistic-regression meta-learner on member probabilities, fitted on val only."""

    strategy, options, runtime, fits_on_val = "stacking", StackingParams, {"seed": 0}, True

    @property
    def needs_x(self) -> bool:
        return self.passthrough

    def fit(self, probs, y, *, x=None):
        if not isinstance(self.folds, int | np.integer) or self.folds < 2:
            raise MergeError(f"strategy 'stacking': 'folds' must be an integer >= 2; received "
                             f"folds={self.folds!r}")
        self.mean_, self.variance_ = standardiser(x) if self.passthrough else (None, None)
        self.meta_learner_, self.scores_ = fit_meta_learner(
            self._features(probs, x), y, k=probs.shape[-1], folds=int(self.folds), seed=self.seed)
        return self

    def _features(self, probs, x):
        return meta_features(probs, x if self.passthrough else None, mean=self.mean_,
                             variance=self.variance_)

    def predict(self, probs, *, x=None):
        return self.meta_learner_.predict_proba(self._features(probs, x))

    def to_keras(self, models):
        import keras

        inputs = model_input(models)
        parts = [m(inputs, training=False) for m in models]
        if self.passthrough:
            raw = keras.layers.Flatten(name="raw")(inputs)
            parts.append(keras.layers.Normalization(
                mean=self.mean_.tolist(), variance=self.variance_.tolist(), dtype="float32",
                name="raw_standardise")(raw))
        feats = keras.layers.Concatenate(dtype="float32", name="meta_features")(parts)
        k = n_classes(models)
        head = keras.layers.Dense(k, activation="softmax", dtype="float32", name="meta")
        outputs = head(feats)
        clf = self.meta_learner_
        head.set_weights([clf.coef_.T.astype("float32"), clf.intercept_.astype("float32")])
        return keras.Model(inputs, outputs, name=self.name)
