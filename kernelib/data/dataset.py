"""The in-memory rows: `Dataset` (rows with the split their source gave), `Splits`, and
`Images`, image files seen as an array and decoded on demand."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

PARTS = ("train", "val", "test")


@dataclass(frozen=True)
class Dataset:
    """Raw rows: `x` as the models see them (N, H, W, C) float32, `y` integer labels, and
    `part`, the split each row's source gave it ("train" for rows with no split of their own)."""

    name: str
    x: np.ndarray
    y: np.ndarray
    class_names: list[str]
    part: np.ndarray | None = None
    source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.part is None:
            object.__setattr__(self, "part", np.full(len(self.y), "train"))

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def given(self) -> list[str]:
        """The splits the source defines itself ([] when every split is carved)."""
        held = [p for p in ("val", "test") if (self.part == p).any()]
        return ["train", *held] if held else []


@dataclass(frozen=True)
class Splits:
    """Train/val/test rows of one dataset; `origin` says which split was given, which carved."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list[str]
    origin: dict[str, str] = field(default_factory=lambda: dict.fromkeys(PARTS, "carved"))

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


def take(x, rows: np.ndarray):
    """Rows of an array, or of an `Images` index without decoding them."""
    return x.subset(rows) if isinstance(x, Images) else x[rows]


@dataclass(frozen=True)
class Images:
    """Image files seen as a (N, H, W, C) float32 array, decoded on demand (pixels 0..255).

    A folder dataset keeps only this index in memory: `make_dataset` decodes, resizes and
    batches in tf.data, `batches` feeds prediction, and indexing decodes just the rows asked for.
    Decoding is `keras.utils.image_dataset_from_directory`'s: `tf.io.decode_image`, then a
    bilinear `tf.image.resize` to `image_size`.
    """

    paths: np.ndarray
    image_size: tuple[int, int]
    channels: int

    dtype = np.dtype("float32")
    ndim = 4

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.paths), *self.image_size, self.channels)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, rows) -> np.ndarray | Images:
        if isinstance(rows, (int, np.integer)):
            return self[[rows]][0]
        picked = self.paths[rows]
        return np.stack([decode_image(p, self.image_size, self.channels) for p in picked]) \
            if len(picked) else np.zeros((0, *self.shape[1:]), "float32")

    def subset(self, rows: np.ndarray) -> Images:
        return Images(self.paths[rows], self.image_size, self.channels)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        # every row decoded at once: for small uses only (the hot paths stream instead)
        out = self[np.arange(len(self))]
        return out if dtype is None else out.astype(dtype)

    def astype(self, dtype, copy: bool = True) -> np.ndarray | Images:
        return self if np.dtype(dtype) == self.dtype else np.asarray(self).astype(dtype)

    def reshape(self, *shape) -> np.ndarray:
        # the pixels as a matrix (stacking's passthrough): decodes every row
        return np.asarray(self).reshape(*shape)


def decode_image(path: str | Path, image_size: tuple[int, int], channels: int) -> np.ndarray:
    """One image file as (H, W, C) float32, decoded exactly as the tf.data pipeline does."""
    import tensorflow as tf

    return decode_tensor(tf.io.read_file(str(path)), image_size, channels).numpy()


def decode_tensor(raw, image_size, channels):
    import tensorflow as tf

    img = tf.io.decode_image(raw, channels=channels, expand_animations=False)
    img = tf.image.resize(img, image_size, method="bilinear")
    img.set_shape((*image_size, channels))
    return img
