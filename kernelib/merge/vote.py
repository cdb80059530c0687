"""`vote`: hard majority vote; ties broken by the mean member probability.

Each member votes for its most probable class; the class with most votes wins, and among
classes with equally many votes the one with the highest mean probability wins (then the
lowest class index). The output is the winner's one-hot row, a valid probability row, so
the model composes with everything that reads probabilities (`calibrate=True` turns the
one-hot rows into fitted, smoothed probabilities).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras

from kernelib.merge.base import model_input, prepare


@keras.saving.register_keras_serializable(package="kernelib")
class MajorityVote(keras.layers.Layer):
    """One-hot row of the majority class over a list of member probability tensors."""

    def call(self, inputs):
        # TensorFlow's own argmax: keras.ops.argmax adds bitcast/bitwise ops (for -0.0) that
        # the TFLite converter and onnxruntime reject, so the exported vote model would fail.
        import tensorflow as tf

        stacked = tf.stack([tf.cast(p, "float32") for p in inputs], axis=1)  # (rows, m, k)
        k = stacked.shape[-1]
        votes = tf.reduce_sum(tf.one_hot(tf.math.argmax(stacked, axis=-1), k), axis=1)
        # a mean probability is at most 1, so half of it separates equal vote counts only
        score = votes + 0.5 * tf.reduce_mean(stacked, axis=1)
        return tf.one_hot(tf.math.argmax(score, axis=-1), k)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0])


def merge_vote(members: Sequence[Any], *, name: str = "vote"):
    """Hard majority vote of the members, as one-hot probability rows."""
    models = prepare(members, "vote")
    inputs = model_input(models)
    outputs = MajorityVote(dtype="float32", name="majority_vote")([m(inputs, training=False) for m in models])
    return keras.Model(inputs, outputs, name=name)
