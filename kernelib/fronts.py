"""Fronts: the fixed layers that turn a dataset's raw images into what a member or a backbone
takes (resize, grey<->RGB, `keras.applications`' value conventions).

A leaf module (NumPy and Keras only): `members` and `zoo` both build fronts.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kernelib.errors import IncompatibleMembersError, MemberError

# keras.applications' input conventions (keras/src/applications/imagenet_utils.py), each
# applied to images on the 0..255 scale: none = raw values as given.
PREPROCESS = ("none", "rescale", "tf", "caffe", "torch")
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)
_GREY = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as tf.image.rgb_to_grayscale


def _scaling(preprocess: str, value_range: tuple[float, float], channels: int, name: str):
    """(scale, offset) per channel mapping raw values to the member's convention, or None."""
    lo, hi = (float(v) for v in value_range)
    if preprocess == "none":
        return None
    if preprocess in ("caffe", "torch") and channels != 3:
        raise MemberError(f"member '{name}': preprocess '{preprocess}' is an RGB convention; the "
                          f"member takes {channels} channels. Use 'rescale', 'tf' or 'none'.")
    unit = 1.0 / (hi - lo)  # raw -> 0..1
    if preprocess == "rescale":
        return [unit] * channels, [-lo * unit] * channels
    if preprocess == "tf":
        return [2 * unit] * channels, [-2 * lo * unit - 1] * channels
    if preprocess == "torch":
        return ([unit / s for s in _TORCH_STD],
                [(-lo * unit - m) / s for m, s in zip(_TORCH_MEAN, _TORCH_STD, strict=True)])
    # caffe: 0..255 BGR minus the ImageNet means (the channel flip is a layer of its own)
    return [255 * unit] * 3, [-255 * lo * unit - m for m in _CAFFE_MEAN_BGR]


def fixed_dense(matrix: np.ndarray, name: str):
    """A frozen Dense layer on the last axis holding `matrix` (a channel mix or a permutation)."""
    import keras

    layer = keras.layers.Dense(matrix.shape[1], use_bias=False, trainable=False, name=name)
    layer.build((None, matrix.shape[0]))
    layer.set_weights([matrix.astype("float32")])
    return layer


def front_layers(raw_shape: tuple[int, ...], member_shape: tuple[int, ...], *, preprocess: str,
                 value_range: tuple[float, float], name: str) -> list[Any]:
    """The layers that turn the dataset's raw images into what the member takes."""
    import keras

    if preprocess not in PREPROCESS:
        raise MemberError(f"member '{name}': 'preprocess' must be one of {list(PREPROCESS)}; "
                          f"received {preprocess!r}")
    if raw_shape == member_shape and preprocess == "none":
        return []
    if len(raw_shape) != 3 or len(member_shape) != 3 or None in member_shape[:2]:
        raise IncompatibleMembersError(
            f"member '{name}' takes inputs of shape {member_shape}, which kernelib cannot build "
            f"from the dataset's raw input {raw_shape}: it adapts images (height, width, "
            "channels) only, by resizing, grey<->RGB and value scaling. Retrain the member on "
            "this data's input or drop it from 'members'.")
    (h, w, c), (mh, mw, mc) = raw_shape, member_shape
    if {c, mc} - {1, 3} and c != mc:
        raise IncompatibleMembersError(
            f"member '{name}' takes {mc} channels; the data has {c}. kernelib converts grey "
            "(1) and RGB (3) only. Retrain the member or drop it from 'members'.")
    layers = []
    if c == 3 and mc == 1:
        layers.append(fixed_dense(np.array(_GREY)[:, None], f"{name}_to_grey"))
    if (h, w) != (mh, mw):
        if mh % h == 0 and mw % w == 0 and mh // h == mw // w:
            layers.append(keras.layers.UpSampling2D(mh // h, interpolation="bilinear",
                                                    name=f"{name}_resize"))
        else:
            layers.append(keras.layers.Resizing(mh, mw, name=f"{name}_resize"))
    if c == 1 and mc == 3:
        layers.append(fixed_dense(np.ones((1, 3)), f"{name}_to_rgb"))
    if preprocess == "caffe":
        layers.append(fixed_dense(np.eye(3)[:, ::-1], f"{name}_to_bgr"))
    scaling = _scaling(preprocess, value_range, mc, name)
    if scaling:
        layers.append(keras.layers.Rescaling(scaling[0], offset=scaling[1],
                                             name=f"{name}_{preprocess}"))
    return layers
