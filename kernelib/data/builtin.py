"""The built-in datasets: scikit-learn's digits and Fashion-MNIST (Debian's IDX files or
`keras.datasets`)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from kernelib.data.dataset import Dataset
from kernelib.errors import DataError

DATASETS = ("digits", "fashion_mnist")
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot"]
_FASHION_FILES = {"x_train": "train-images-idx3-ubyte.gz", "y_train": "train-labels-idx1-ubyte.gz",
                  "x_test": "t10k-images-idx3-ubyte.gz", "y_test": "t10k-labels-idx1-ubyte.gz"}
INFO = {"digits": {"input_shape": (8, 8, 1), "n_classes": 10, "train_rows": 1797,
                   "class_names": [str(d) for d in range(10)], "value_range": (0.0, 16.0)},
        "fashion_mnist": {"input_shape": (28, 28, 1), "n_classes": 10, "train_rows": 60000,
                          "class_names": FASHION_MNIST_CLASSES, "value_range": (0.0, 255.0)}}


def load_digits() -> Dataset:
    """scikit-learn's 8x8 handwritten digits, pixels 0..16, no splits of its own."""
    from sklearn import datasets

    bunch = datasets.load_digits()
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
