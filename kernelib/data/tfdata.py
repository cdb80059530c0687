"""tf.data pipelines over arrays or image files, and the preprocessing (normalisation) model."""

from __future__ import annotations

from typing import Any

import numpy as np

from kernelib.data.augment import augmenter
from kernelib.data.dataset import Images, Splits, decode_tensor


def batches(x, batch_size: int = 256):
    """Rows of `x` (an array or `Images`) as float32 NumPy batches; files decode in tf.data."""
    if isinstance(x, Images):
        for xb in make_dataset(x, None, batch_size=batch_size):
            yield xb.numpy()
        return
    x = np.asarray(x, dtype="float32")
    for i in range(0, len(x), batch_size):
        yield x[i:i + batch_size]


def make_dataset(x, y: np.ndarray | None, *, batch_size: int, shuffle: bool = False,
                 seed: int = 0, augment: dict[str, Any] | None = None):
    """A (optionally) shuffled, batched and prefetched `tf.data.Dataset` of `(x, y)`, or of `x`
    alone when `y` is None. Arrays are cached in memory; `Images` are read, decoded and resized
    on the fly, batch by batch, so a folder never sits decoded in memory. `augment` (see
    `read_augment`) draws new random transformations of every training batch, every epoch,
    seeded by `seed`; it is only for training data."""
    import tensorflow as tf

    files = isinstance(x, Images)
    cols = x.paths if files else x
    ds = tf.data.Dataset.from_tensor_slices(cols if y is None else (cols, y))
    if not files:
        ds = ds.cache()
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    if files:
        def load(path, *label):
            img = decode_tensor(tf.io.read_file(path), x.image_size, x.channels)
            return (img, *label) if label else img

        ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(batch_size)
    layer = augmenter(augment, seed=seed)
    if layer is not None:
        def draw(xb, *label):
            out = layer(xb, training=True)
            return (out, *label) if label else out

        ds = ds.map(draw, num_parallel_calls=None)  # one stream of draws: reproducible
    return ds.prefetch(tf.data.AUTOTUNE)


def build_preprocessor(x_train: np.ndarray, name: str = "preprocess"):
    """A Keras model holding a `Normalization` layer adapted on the training rows only.

    The fitted mean and variance are stored in the layer's config (not only as weights),
    so `keras.models.clone_model` reproduces the preprocessing exactly.
    """
    import keras

    fitted = keras.layers.Normalization()
    fitted.adapt(make_dataset(x_train, None, batch_size=256) if isinstance(x_train, Images)
                 else x_train)
    mean, variance = (np.asarray(v).reshape(-1).tolist() for v in fitted.get_weights()[:2])
    inputs = keras.Input(shape=x_train.shape[1:], name="image")
    norm = keras.layers.Normalization(mean=mean, variance=variance, name="normalize")
    return keras.Model(inputs, norm(inputs), name=name)


def preprocessing_summary(preprocessor, splits: Splits):
    """Mean and standard deviation of each split before and after preprocessing."""
    import pandas as pd

    rows = {}
    for part, x in (("train", splits.x_train), ("val", splits.x_val), ("test", splits.x_test)):
        raw, z = _moments(x), _moments(x, preprocessor)
        rows[part] = {"raw_mean": raw[0], "raw_std": raw[1],
                      "normalised_mean": z[0], "normalised_std": z[1]}
    return pd.DataFrame(rows).T


def _moments(x, model=None) -> tuple[float, float]:
    """Mean and standard deviation of all values of `x` (or of `model(x)`), batch by batch."""
    n = total = squares = 0.0
    for xb in batches(x, 512):
        v = np.asarray(xb if model is None else model(xb, training=False), dtype="float64")
        n, total, squares = n + v.size, total + v.sum(), squares + np.square(v).sum()
    mean = total / n
    return float(mean), float(np.sqrt(max(squares / n - mean * mean, 0.0)))
