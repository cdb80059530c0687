"""Datasets, the seeded stratified split, tf.data pipelines and the preprocessing model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kernelib import io
from kernelib.errors import DataError

DATASETS = ("digits",)


@dataclass(frozen=True)
class Dataset:
    """Raw arrays: `x` as the models see them (N, H, W, C) float32, `y` integer labels."""

    name: str
    x: np.ndarray
    y: np.ndarray
    class_names: list[str]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    @property
    def n_classes(self) -> int:
        return len(self.class_names)


@dataclass(frozen=True)
class Splits:
    """Seeded stratified train/val/test split of one dataset."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list[str]

    @property
    def train(self) -> tuple[np.ndarray, np.ndarray]:
        return self.x_train, self.y_train

    @property
    def val(self) -> tuple[np.ndarray, np.ndarray]:
        return self.x_val, self.y_val

    @property
    def test(self) -> tuple[np.ndarray, np.ndarray]:
        return self.x_test, self.y_test

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def n_classes(self) -> int:
        return len(self.class_names)


def dataset_info(name: str) -> dict[str, Any]:
    """Input shape and classes of a built-in dataset, without loading TensorFlow."""
    if name == "digits":
        return {"input_shape": (8, 8, 1), "n_classes": 10}
    raise DataError(f"unknown dataset '{name}'; built-in datasets: {list(DATASETS)}")


def load_dataset(name: str) -> Dataset:
    """Load a built-in dataset. `digits`: scikit-learn's 8x8 handwritten digits, pixels 0..16."""
    if name != "digits":
        raise DataError(f"unknown dataset '{name}'; built-in datasets: {list(DATASETS)}")
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.images.astype("float32")[..., None]
    y = bunch.target.astype("int64")
    return Dataset(name=name, x=x, y=y, class_names=[str(c) for c in bunch.target_names])


def data_card(ds: Dataset) -> dict[str, Any]:
    """A short description of a dataset: size, shape, value range, class balance."""
    counts = np.bincount(ds.y, minlength=ds.n_classes)
    return {
        "name": ds.name,
        "rows": int(len(ds.y)),
        "input_shape": list(ds.input_shape),
        "dtype": str(ds.x.dtype),
        "min": float(ds.x.min()),
        "max": float(ds.x.max()),
        "class_names": ds.class_names,
        "class_counts": {c: int(n) for c, n in zip(ds.class_names, counts, strict=True)},
        "sha256": _array_hash(ds.x, ds.y),
    }


def _array_hash(*arrays: np.ndarray) -> str:
    import hashlib

    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def save_dataset(ds: Dataset, path: str | Path) -> Path:
    return io.save_npz(path, x=ds.x, y=ds.y, class_names=np.array(ds.class_names))


def read_dataset(path: str | Path, name: str = "data") -> Dataset:
    with np.load(path) as f:
        return Dataset(name=name, x=f["x"], y=f["y"], class_names=[str(c) for c in f["class_names"]])


def split(ds: Dataset, *, val_fraction: float, test_fraction: float, seed: int) -> Splits:
    """Seeded stratified split into train/val/test (fractions of the whole dataset)."""
    from sklearn.model_selection import train_test_split

    if not (0 < val_fraction and 0 < test_fraction and val_fraction + test_fraction < 1):
        raise DataError(
            "val_fraction and test_fraction must be positive and sum to less than 1; "
            f"received val_fraction={val_fraction}, test_fraction={test_fraction}"
        )
    counts = np.bincount(ds.y, minlength=ds.n_classes)
    if counts.min() < 3:
        raise DataError(
            "every class needs at least 3 rows for a stratified train/val/test split; "
            f"class '{ds.class_names[int(counts.argmin())]}' has {int(counts.min())}. "
            "Add rows or drop the class."
        )
    x_rest, x_test, y_rest, y_test = train_test_split(
        ds.x, ds.y, test_size=test_fraction, stratify=ds.y, random_state=seed
    )
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=val_fraction / (1 - test_fraction), stratify=y_rest,
        random_state=seed + 1,
    )
    return Splits(x_train, y_train, x_val, y_val, x_test, y_test, ds.class_names)


def save_splits(s: Splits, path: str | Path) -> Path:
    return io.save_npz(
        path, x_train=s.x_train, y_train=s.y_train, x_val=s.x_val, y_val=s.y_val,
        x_test=s.x_test, y_test=s.y_test, class_names=np.array(s.class_names),
    )


def read_splits(path: str | Path) -> Splits:
    with np.load(path) as f:
        return Splits(
            f["x_train"], f["y_train"], f["x_val"], f["y_val"], f["x_test"], f["y_test"],
            [str(c) for c in f["class_names"]],
        )


def split_table(s: Splits):
    """Rows per split and class, as a DataFrame (a quick check that stratification held)."""
    import pandas as pd

    rows = {}
    for part, y in (("train", s.y_train), ("val", s.y_val), ("test", s.y_test)):
        rows[part] = np.bincount(y, minlength=s.n_classes)
    df = pd.DataFrame(rows, index=pd.Index(s.class_names, name="class"))
    df.loc["total"] = df.sum()
    return df


def make_dataset(x: np.ndarray, y: np.ndarray, *, batch_size: int, shuffle: bool = False,
                 seed: int = 0):
    """A cached, (optionally) shuffled, batched and prefetched `tf.data.Dataset`."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x, y)).cache()
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def build_preprocessor(x_train: np.ndarray, name: str = "preprocess"):
    """A Keras model holding a `Normalization` layer adapted on the training rows only.

    The fitted mean and variance are stored in the layer's config (not only as weights),
    so `keras.models.clone_model` reproduces the preprocessing exactly.
    """
    import keras

    fitted = keras.layers.Normalization()
    fitted.adapt(x_train)
    mean, variance = (np.asarray(v).reshape(-1).tolist() for v in fitted.get_weights()[:2])
    inputs = keras.Input(shape=x_train.shape[1:], name="image")
    norm = keras.layers.Normalization(mean=mean, variance=variance, name="normalize")
    return keras.Model(inputs, norm(inputs), name=name)


def preprocessing_summary(preprocessor, splits: Splits):
    """Mean and standard deviation of each split before and after preprocessing."""
    import pandas as pd

    rows = {}
    for part, x in (("train", splits.x_train), ("val", splits.x_val), ("test", splits.x_test)):
        z = np.asarray(preprocessor.predict(x, batch_size=512, verbose=0))
        rows[part] = {"raw_mean": float(x.mean()), "raw_std": float(x.std()),
                      "normalised_mean": float(z.mean()), "normalised_std": float(z.std())}
    return pd.DataFrame(rows).T
