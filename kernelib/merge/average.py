"""`average`: soft voting, the (weighted) mean of member probabilities."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

from kernelib.errors import MergeError
from kernelib.merge.base import model_input, prepare


@keras.saving.register_keras_serializable(package="kernelib")
class WeightedAverage(keras.layers.Layer):
    """Weighted mean of same-shaped inputs with fixed, non-negative weights summing to 1."""

    def __init__(self, weights: Sequence[float], **kwargs):
        super().__init__(**kwargs)
        w = np.asarray(weights, dtype="float64")
        if w.ndim != 1 or len(w) == 0 or np.any(w < 0) or not np.isfinite(w).all() or w.sum() <= 0:
            raise MergeError(
                "weights must be finite, non-negative and not all zero; "
                f"received weights={list(map(float, np.atleast_1d(w)))}"
            )
        self.member_weights = [float(v) for v in w / w.sum()]

    def call(self, inputs):
        if len(inputs) != len(self.member_weights):
            raise MergeError(f"expected {len(self.member_weights)} inputs (one per weight); "
                             f"received {len(inputs)}")
        out = inputs[0] * self.member_weights[0]
        for x, w in zip(inputs[1:], self.member_weights[1:], strict=True):
            out = out + x * w
        return out

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), "weights": self.member_weights}


def merge_average(members: Sequence[Any], *, weights: Sequence[float] | None = None,
                  name: str = "average"):
    """Mean of member probabilities, uniform or with fixed `weights` (one per member)."""
    models = prepare(members, "average")
    if weights is None:
        weights = [1.0] * len(models)
    if len(weights) != len(models):
        raise MergeError(f"'weights' needs one value per member ({len(models)}); "
                         f"received {len(weights)}.")
    inputs = model_input(models)
    outputs = WeightedAverage(weights, name="weighted_average", dtype="float32")(
        [m(inputs) for m in models]
    )
    return keras.Model(inputs, outputs, name=name)
