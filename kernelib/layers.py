"""kernelib's own Keras layers, in one leaf module (it imports no model code).

Both are registered under the `kernelib` package, so `keras.saving.load_model` finds them once
this module is imported; `members.load_keras` also passes them as `custom_objects`. A model
saved before they moved here loads the same: the registered names did not change.
"""

from __future__ import annotations

import keras
import numpy as np

from kernelib.errors import MergeError
from kernelib.metrics import EPS  # the probability clip of every log kernelib takes


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


@keras.saving.register_keras_serializable(package="kernelib")
class TemperatureScaling(keras.layers.Layer):
    """`softmax(log(clip(p, 1e-7, 1)) / temperature)` on probability rows `p`."""

    def __init__(self, temperature: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        if not np.isfinite(temperature) or temperature <= 0:
            raise MergeError(f"temperature must be a positive finite number; received "
                             f"{temperature!r}")
        self.temperature = float(temperature)

    def call(self, p):
        from keras import ops

        logp = ops.log(ops.clip(ops.cast(p, "float32"), EPS, 1.0))
        return ops.softmax(logp / self.temperature, axis=-1)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature}


CUSTOM_OBJECTS = {"kernelib>MajorityVote": MajorityVote,
                  "kernelib>TemperatureScaling": TemperatureScaling}
