"""Datasets, their given and carved splits, tf.data pipelines and the preprocessing model.

A dataset source yields rows with a `part` each: the split the source itself assigns
("train", "val" or "test"; Fashion-MNIST's official test set, a folder's `test/`). `split`
keeps every given split as it is and carves only the missing ones out of the training rows,
seeded and stratified; the data card and `Splits.origin` say which were given, which carved.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kernelib import io
from kernelib.errors import DataError

DATASETS = ("digits", "fashion_mnist")
PARTS = ("train", "val", "test")

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot"]
_FASHION_FILES = {"x_train": "train-images-idx3-ubyte.gz", "y_train": "train-labels-idx1-ubyte.gz",
                  "x_test": "t10k-images-idx3-ubyte.gz", "y_test": "t10k-labels-idx1-ubyte.gz"}
_INFO = {"digits": {"input_shape": (8, 8, 1), "n_classes": 10},
         "fashion_mnist": {"input_shape": (28, 28, 1), "n_classes": 10}}


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


def dataset_info(name: str) -> dict[str, Any]:
    """Input shape and classes of a built-in dataset, without loading TensorFlow."""
    if name not in _INFO:
        raise DataError(f"unknown dataset '{name}'; built-in datasets: {list(DATASETS)}")
    return _INFO[name]


def load_dataset(name: str, *, train_rows: int | None = None, seed: int = 0) -> Dataset:
    """Load a built-in dataset; with `train_rows`, keep a seeded stratified subset of its
    training rows (given val/test rows are always kept whole).

    `digits`: scikit-learn's 8x8 handwritten digits, pixels 0..16, no splits of its own.
    `fashion_mnist`: 28x28 grey images, pixels 0..255, 60,000 train and the official 10,000
    test rows (see `load_fashion_mnist`).
    """
    if name == "digits":
        ds = _load_digits()
    elif name == "fashion_mnist":
        ds = load_fashion_mnist()
    else:
        raise DataError(f"unknown dataset '{name}'; built-in datasets: {list(DATASETS)}")
    return ds if train_rows is None else subset_train(ds, train_rows, seed=seed)


def _load_digits() -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.images.astype("float32")[..., None]
    y = bunch.target.astype("int64")
    return Dataset(name="digits", x=x, y=y, class_names=[str(c) for c in bunch.target_names],
                   source={"reader": "sklearn.datasets.load_digits"})


def read_idx(path: str | Path) -> np.ndarray:
    """One IDX file (gzip or plain): a big-endian header of dimension sizes, then uint8 values."""
    path = Path(path)
    raw = (gzip.open if path.suffix == ".gz" else open)(path, "rb").read()
    ndim = raw[3] if len(raw) >= 4 else 0
    if len(raw) < 4 + 4 * ndim or raw[:3] != b"\x00\x00\x08" or ndim == 0:
        raise DataError(f"'{path}' is not an IDX file of unsigned bytes (magic 0x0008, then the "
                        f"number of dimensions); received header {raw[:4].hex() or 'empty'}. "
                        "Reinstall the package the file comes from.")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">i4", count=ndim, offset=4))
    body = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DataError(f"'{path}' declares shape {shape} ({int(np.prod(shape))} values) but "
                        f"holds {body.size}; the file is truncated or corrupt. Reinstall it.")
    return body.reshape(shape)


def load_fashion_mnist(root: str | Path = FASHION_MNIST_DIR) -> Dataset:
    """Fashion-MNIST with its official split: Debian's `dataset-fashion-mnist` IDX files under
    `root`, or else `keras.datasets.fashion_mnist` (a download, so only when online)."""
    root = Path(root)
    if all((root / f).is_file() for f in _FASHION_FILES.values()):
        arrays = {k: read_idx(root / f) for k, f in _FASHION_FILES.items()}
        source = {"reader": "Debian package dataset-fashion-mnist", "path": str(root)}
    else:
        try:
            import keras

            (xa, ya), (xb, yb) = keras.datasets.fashion_mnist.load_data()
        except Exception as err:  # offline, proxy, disk full: all mean "not available here"
            raise DataError(
                "fashion_mnist could not be read: tried the IDX files of the Debian package "
                f"dataset-fashion-mnist under '{root}' (missing), then the download of "
                f"keras.datasets.fashion_mnist ({type(err).__name__}: {err}). Install the "
                "package: `sudo apt-get install dataset-fashion-mnist` (or `make setup`), or "
                "run once where the download works."
            ) from None
        arrays = {"x_train": xa, "y_train": ya, "x_test": xb, "y_test": yb}
        source = {"reader": "keras.datasets.fashion_mnist"}
    n_train, n_test = len(arrays["y_train"]), len(arrays["y_test"])
    x = np.concatenate([arrays["x_train"], arrays["x_test"]]).astype("float32")[..., None]
    y = np.concatenate([arrays["y_train"], arrays["y_test"]]).astype("int64")
    part = np.array(["train"] * n_train + ["test"] * n_test)
    return Dataset(name="fashion_mnist", x=x, y=y, class_names=list(FASHION_MNIST_CLASSES),
                   part=part, source=source)


def subset_train(ds: Dataset, rows: int, *, seed: int) -> Dataset:
    """Keep a seeded, stratified subset of `rows` training rows; given val/test rows stay."""
    pool = np.flatnonzero(ds.part == "train")
    if not ds.n_classes <= rows <= len(pool):
        raise DataError(f"train_rows must lie between the number of classes ({ds.n_classes}) "
                        f"and the {len(pool)} training rows of '{ds.name}'; received {rows}. "
                        "Lower it, or leave it unset to use every training row.")
    if rows < len(pool):
        from sklearn.model_selection import train_test_split

        pool, _ = train_test_split(pool, train_size=rows, stratify=ds.y[pool], random_state=seed)
    keep = np.sort(np.concatenate([np.sort(pool), np.flatnonzero(ds.part != "train")]))
    return Dataset(name=ds.name, x=ds.x[keep], y=ds.y[keep], class_names=ds.class_names,
                   part=ds.part[keep], source={**ds.source, "train_rows": rows})


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
        "splits": {p: ("given" if p in ds.given else "carved") for p in PARTS},
        "given_rows": {p: int((ds.part == p).sum()) for p in ds.given},
        "source": ds.source,
        "sha256": _array_hash(ds.x, ds.y, ds.part.astype("U5")),
    }


def _array_hash(*arrays: np.ndarray) -> str:
    import hashlib

    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def save_dataset(ds: Dataset, path: str | Path) -> Path:
    return io.save_npz(path, x=ds.x, y=ds.y, class_names=np.array(ds.class_names),
                       part=ds.part.astype("U5"))


def read_dataset(path: str | Path, name: str = "data") -> Dataset:
    with np.load(path) as f:
        return Dataset(name=name, x=f["x"], y=f["y"], class_names=[str(c) for c in f["class_names"]],
                       part=f["part"] if "part" in f else None)


def split(ds: Dataset, *, val_fraction: float, test_fraction: float, seed: int) -> Splits:
    """Keep the splits the source gives; carve the missing ones out of its training rows,
    seeded and stratified.

    Fractions are shares of the rows the source left unassigned (the whole dataset when it
    gives no split): with nothing given, test is `test_fraction` and val `val_fraction` of all
    rows; with a given test split (Fashion-MNIST), val is `val_fraction` of the training rows.
    """
    from sklearn.model_selection import train_test_split

    if not (0 < val_fraction and 0 < test_fraction and val_fraction + test_fraction < 1):
        raise DataError(
            "val_fraction and test_fraction must be positive and sum to less than 1; "
            f"received val_fraction={val_fraction}, test_fraction={test_fraction}"
        )
    rest = np.flatnonzero(ds.part == "train")
    carve = [p for p in ("test", "val") if not (ds.part == p).any()]
    counts = np.bincount(ds.y[rest], minlength=ds.n_classes)
    if carve and counts.min() < len(carve) + 1:
        raise DataError(
            f"every class needs at least {len(carve) + 1} training rows for a stratified "
            f"{'/'.join(['train', *carve])} split; class "
            f"'{ds.class_names[int(counts.argmin())]}' has {int(counts.min())}. "
            "Add rows or drop the class."
        )
    idx = {p: np.flatnonzero(ds.part == p) for p in ("val", "test") if p not in carve}
    share = {"test": test_fraction,
             "val": val_fraction / (1 - test_fraction) if "test" in carve else val_fraction}
    for p, offset in (("test", 0), ("val", 1)):
        if p in carve:
            rest, idx[p] = train_test_split(rest, test_size=share[p], stratify=ds.y[rest],
                                            random_state=seed + offset)
    idx["train"] = rest
    return Splits(*(a for p in PARTS for a in (ds.x[idx[p]], ds.y[idx[p]])), ds.class_names,
                  origin={p: ("carved" if p in carve or not ds.given else "given")
                          for p in PARTS})


def bag_rows(n: int, share: float | None, *, seed: int) -> np.ndarray:
    """Sorted indices of a seeded random `share` of `n` rows (without replacement; all rows
    for None): the rows one bagged member trains on."""
    if share is None:
        return np.arange(n)
    rows = np.random.default_rng(seed).permutation(n)
    return np.sort(rows[: max(1, round(share * n))])


def save_splits(s: Splits, path: str | Path) -> Path:
    return io.save_npz(
        path, x_train=s.x_train, y_train=s.y_train, x_val=s.x_val, y_val=s.y_val,
        x_test=s.x_test, y_test=s.y_test, class_names=np.array(s.class_names),
        origin=np.array([s.origin[p] for p in PARTS]),
    )


def read_splits(path: str | Path) -> Splits:
    with np.load(path) as f:
        return Splits(
            f["x_train"], f["y_train"], f["x_val"], f["y_val"], f["x_test"], f["y_test"],
            [str(c) for c in f["class_names"]],
            **({"origin": dict(zip(PARTS, (str(o) for o in f["origin"]), strict=True))}
               if "origin" in f else {}),
        )


def split_table(s: Splits):
    """Rows per split and class, as a DataFrame (a quick check that stratification held);
    each column says whether the source gave its split or it was carved out of train."""
    import pandas as pd

    rows = {}
    for part, y in (("train", s.y_train), ("val", s.y_val), ("test", s.y_test)):
        rows[f"{part} ({s.origin[part]})"] = np.bincount(y, minlength=s.n_classes)
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
