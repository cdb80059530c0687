"""`average`: soft voting, the (weighted) mean of member probabilities.

Built from Keras' own layers only (`Rescaling` per member, then `Add`), so the merged file
loads with plain Keras, without kernelib installed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

from kernelib.errors import MergeError
from kernelib.merge.base import model_input
from kernelib.merge.strategy import Strategy
from kernelib.merge_params import AverageParams


def normalise_weights(weights: Sequence[float], n: int) -> list[float]:
    """Check one finite, non-negative weight per member (not all zero); scale them to sum to 1."""
    w = np.asarray(weights, dtype="float64").ravel()
    if len(w) != n:
        raise MergeError(f"'weights' needs one value per member ({n}); received {len(w)}.")
    if not np.isfinite(w).all() or np.any(w < 0) or w.sum() <= 0:
        raise MergeError("weights must be finite, non-negative and not all zero; "
                         f"received weights={w.tolist()}")
    return (w / w.sum()).tolist()


def weighted_sum(probabilities: Sequence[Any], weights: Sequence[float], names: Sequence[str]):
    """`sum_i w_i * p_i` as Keras layers (float32 even under mixed precision)."""
    scaled = [keras.layers.Rescaling(w, dtype="float32", name=f"weight_{n}")(p)
              for p, w, n in zip(probabilities, weights, names, strict=True)]
    if len(scaled) == 1:
        return scaled[0]
    return keras.layers.Add(dtype="float32", name="weighted_average")(scaled)


def weighted_model(models: Sequence[Any], weights: Sequence[float], name: str):
    """The model `sum_i w_i * member_i(x)` over the members with a non-zero weight."""
    kept = [(m, w) for m, w in zip(models, weights, strict=True) if w > 0]
    inputs = model_input(models)
    outputs = weighted_sum([m(inputs, training=False) for m, _ in kept], [float(w) for _, w in kept],
                           [m.name for m, _ in kept])
    return keras.Model(inputs, outputs, name=name)


class WeightedMean(Strategy):
    """`sum_i w_i p_i` with the weights `weights_` (one per member, summing to 1)."""

    def predict(self, probs, *, x=None):
        return np.tensordot(self.weights_, probs, axes=1)

    def to_keras(self, models):
        return weighted_model(models, self.weights_.tolist(), self.name)


class Average(WeightedMean):
    """Mean of member probabilities, uniform or with fixed `weights` (one per member)."""

    strategy, options = "average", AverageParams

    def to_keras(self, models):
        w = [1.0] * len(models) if self.weights is None else self.weights
        self.weights_ = np.asarray(normalise_weights(w, len(models)))
        return super().to_keras(models)
