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
_INFO = {"digits": {"input_shape": (8, 8, 1), "n_classes": 10, "train_rows": 1797,
                    "class_names": [str(d) for d in range(10)], "value_range": (0.0, 16.0)},
         "fashion_mnist": {"input_shape": (28, 28, 1), "n_classes": 10, "train_rows": 60000,
                           "class_names": FASHION_MNIST_CLASSES, "value_range": (0.0, 255.0)}}


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


def dataset_info(spec: Any) -> dict[str, Any]:
    """Input shape, classes and training rows of a dataset, without loading TensorFlow.

    A folder or array file is read and checked whole (every bad input ends in a DataError
    here); a built-in's numbers are known.
    """
    if isinstance(spec, str):
        if spec not in _INFO:
            raise DataError(f"unknown dataset '{spec}'; built-in datasets: {list(DATASETS)}")
        return _INFO[spec]
    ds = load_dataset(spec)
    folder = getattr(spec, "kind", None) == "folder" or (isinstance(spec, dict)
                                                         and spec.get("kind") == "folder")
    return {"input_shape": ds.input_shape, "n_classes": ds.n_classes,
            "train_rows": int((ds.part == "train").sum()), "class_names": ds.class_names,
            # decoded images hold 0..255; arrays hold what the user stored
            "value_range": (0.0, 255.0) if folder else (float(ds.x.min()), float(ds.x.max()))}


def check_dataset(spec: Any, *, train_rows: int | None = None) -> dict[str, Any]:
    """`dataset_info`, and `train_rows` within the training rows: the checks `kernelib run`
    makes before any stage runs."""
    info = dataset_info(spec)
    if train_rows is not None and not info["n_classes"] <= train_rows <= info["train_rows"]:
        raise DataError(f"load.train_rows must lie between the number of classes "
                        f"({info['n_classes']}) and the {info['train_rows']} training rows of "
                        f"the dataset; received {train_rows}. Lower it, or remove it to use "
                        "every training row.")
    return info


def source_hash(path: str | Path) -> str:
    """What a run's cache key knows of a dataset file or folder: a file's sha256, a folder's
    file names, sizes and modification times (reading 100,000 images per run would not pay)."""
    path = Path(path)
    if path.is_file():
        return io.sha256(path)
    files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else []
    return _array_hash(_fingerprint(Images(np.array([str(f) for f in files], dtype=str), (1, 1),
                                           1)))


def load_dataset(spec: Any, *, train_rows: int | None = None, seed: int = 0) -> Dataset:
    """Load a dataset: a built-in name, or a folder or arrays spec (a `params` model or the
    same mapping). With `train_rows`, keep a seeded stratified subset of its training rows
    (given val/test rows are always kept whole).

    Example::

        ds = load_dataset({"kind": "folder", "path": "photos", "image_size": [64, 64]})

    `digits`: scikit-learn's 8x8 handwritten digits, pixels 0..16, no splits of its own.
    `fashion_mnist`: 28x28 grey images, pixels 0..255, 60,000 train and the official 10,000
    test rows (see `load_fashion_mnist`).
    """
    if isinstance(spec, dict):
        from kernelib import params  # params imports this module

        spec = params.dataset_spec(spec)
    if spec == "digits":
        ds = _load_digits()
    elif spec == "fashion_mnist":
        ds = load_fashion_mnist()
    elif isinstance(spec, str):
        raise DataError(f"unknown dataset '{spec}'; built-in datasets: {list(DATASETS)}")
    else:
        ds = _source_dataset(spec, seed=seed)
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
    return Dataset(name=ds.name, x=take(ds.x, keep), y=ds.y[keep], class_names=ds.class_names,
                   part=ds.part[keep], source={**ds.source, "train_rows": rows})


def take(x, rows: np.ndarray):
    """Rows of an array, or of an `Images` index without decoding them."""
    return x.subset(rows) if isinstance(x, Images) else x[rows]


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
MIN_PER_CLASS = 3


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

    return _decode(tf.io.read_file(str(path)), image_size, channels).numpy()


def _decode(raw, image_size, channels):
    import tensorflow as tf

    img = tf.io.decode_image(raw, channels=channels, expand_animations=False)
    img = tf.image.resize(img, image_size, method="bilinear")
    img.set_shape((*image_size, channels))
    return img


def batches(x, batch_size: int = 256):
    """Rows of `x` (an array or `Images`) as float32 NumPy batches; files decode in tf.data."""
    if isinstance(x, Images):
        for xb in make_dataset(x, None, batch_size=batch_size):
            yield xb.numpy()
        return
    x = np.asarray(x, dtype="float32")
    for i in range(0, len(x), batch_size):
        yield x[i:i + batch_size]


def _source_dataset(spec: Any, *, seed: int) -> Dataset:
    kind = getattr(spec, "kind", None)
    if kind == "folder":
        return read_folder(spec.path, image_size=tuple(spec.image_size),
                           color_mode=spec.color_mode, class_names=spec.class_names,
                           skip_unreadable=spec.skip_unreadable)
    if kind == "arrays":
        return read_arrays(spec.path)
    raise DataError(f"a dataset is a built-in name {list(DATASETS)}, {{kind: folder, ...}} or "
                    f"{{kind: arrays, ...}}; received {spec!r}")


def _folder_error(path: Path, what: str, fix: str) -> DataError:
    return DataError(f"image folder '{path}': {what}. {fix}")


def read_folder(path: str | Path, *, image_size: tuple[int, int], color_mode: str = "rgb",
                class_names: list[str] | None = None, skip_unreadable: bool = False) -> Dataset:
    """An image folder as an index (paths, labels, given split); nothing is decoded here.

    Either one sub-folder per class, or `train/` (and `test/`, optionally `val/`) each holding
    the same class sub-folders: those splits are kept as given. Class order: `class_names`
    where given, else the sorted folder names (as `keras.utils.image_dataset_from_directory`).
    Every file is checked to be a readable image first; unreadable ones are listed and
    refused, or skipped and recorded in the data card with `skip_unreadable`.
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise _folder_error(root, "does not exist or is not a folder",
                            "Check load.dataset.path (relative paths start at the config's "
                            "folder).")
    split_dirs = {p: root / p for p in PARTS if (root / p).is_dir()}
    if split_dirs and "train" not in split_dirs:
        raise _folder_error(root, f"has split folders {sorted(split_dirs)} but no 'train/'",
                            "Add train/ (class sub-folders inside) or drop the split folders.")
    parts = split_dirs or {"train": root}
    classes = {p: sorted(d.name for d in folder.iterdir()
                         if d.is_dir() and not d.name.startswith("."))
               for p, folder in parts.items()}
    found = classes["train"]
    if not found:
        raise _folder_error(parts["train"], "is empty: expected one sub-folder of images per "
                            "class", "Put each class's images in a folder named after it.")
    for p, names in classes.items():
        if names != found:
            raise _folder_error(root, f"'{p}/' has class folders {names}, 'train/' has {found}",
                                "Give every split folder the same class sub-folders.")
    if class_names is not None and sorted(class_names) != found:
        raise _folder_error(root, f"class_names {list(class_names)} do not match the class "
                            f"folders {found}", "List each folder name once, in the order the "
                            "labels should have.")
    order = list(class_names) if class_names is not None else found
    if len(order) < 2:
        raise _folder_error(root, f"has one class ({order}); a classifier needs at least two",
                            "Add a folder per class.")
    rows, bad = [], []
    for p, folder in parts.items():
        for label, name in enumerate(order):
            for f in sorted((folder / name).rglob("*")):
                if not f.is_file() or f.name.startswith("."):
                    continue
                if f.suffix.lower() in IMAGE_SUFFIXES and _readable(f):
                    rows.append((str(f.resolve()), label, p))
                else:
                    bad.append(str(f.relative_to(root)))
    if bad and not skip_unreadable:
        shown = ", ".join(bad[:10]) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
        raise _folder_error(root, f"{len(bad)} file(s) are not readable images "
                            f"({', '.join(IMAGE_SUFFIXES)}): {shown}",
                            "Remove or fix them, or set skip_unreadable: true to skip them "
                            "(the data card lists what was skipped).")
    paths = np.array([r[0] for r in rows], dtype=str)
    y = np.array([r[1] for r in rows], dtype="int64")
    part = np.array([r[2] for r in rows], dtype="U5")
    counts = np.bincount(y[part == "train"], minlength=len(order))
    if counts.min() < MIN_PER_CLASS:
        raise _folder_error(root, f"class '{order[int(counts.argmin())]}' has "
                            f"{int(counts.min())} training image(s); at least {MIN_PER_CLASS} "
                            "are needed per class", "Add images or drop the class folder.")
    images = Images(paths, tuple(int(v) for v in image_size), 1 if color_mode == "grayscale"
                    else 3)
    return Dataset(name=root.name, x=images, y=y, class_names=order, part=part,
                   source={"reader": "folder", "path": str(root.resolve()),
                           "image_size": list(images.image_size), "color_mode": color_mode,
                           "skipped": bad})


def _readable(path: Path) -> bool:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.verify()
        return True
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError):
        return False


def read_arrays(path: str | Path) -> Dataset:
    """An `.npz` file: `x`, `y`, optional `class_names`, `x_val`/`y_val`, `x_test`/`y_test`.

    Images are (N, H, W, C) or (N, H, W) of any numeric dtype (kept as float32 values);
    labels integers 0..K-1. Given val/test arrays are kept as those splits.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"array file '{path}' does not exist; expected an .npz file with 'x' and "
                        "'y'. Check load.dataset.path (relative paths start at the config's "
                        "folder).")
    try:
        f = np.load(path, allow_pickle=False)
        arrays = {k: f[k] for k in f.files}
    except Exception as err:  # not a zip, truncated, pickled objects: one answer for all
        raise DataError(f"'{path}' is not a readable .npz file ({type(err).__name__}: {err}); "
                        "write it with numpy.savez(path, x=..., y=...).") from None
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        raise DataError(f"'{path}' needs arrays 'x' and 'y'; it has no {missing} (found "
                        f"{sorted(arrays)}). Save images as x and integer labels as y.")
    xs, ys, part = [], [], []
    for p, kx, ky in (("train", "x", "y"), ("val", "x_val", "y_val"), ("test", "x_test", "y_test")):
        if (kx in arrays) != (ky in arrays):
            raise DataError(f"'{path}' has '{kx if kx in arrays else ky}' without "
                            f"'{ky if kx in arrays else kx}'; give both or neither.")
        if kx not in arrays:
            continue
        x, y = arrays[kx], arrays[ky]
        if x.ndim == 3:
            x = x[..., None]
        if x.ndim != 4 or not np.issubdtype(x.dtype, np.number) or np.iscomplexobj(x):
            raise DataError(f"'{path}': '{kx}' must be numeric images (N, H, W, C) or (N, H, W); "
                            f"received shape {x.shape}, dtype {x.dtype}.")
        if len(x) != len(y) or y.ndim != 1:
            raise DataError(f"'{path}': '{kx}' has {len(x)} rows but '{ky}' has shape "
                            f"{y.shape}; give one integer label per image.")
        x = x.astype("float32")
        if not np.isfinite(x).all():
            row = int(np.argwhere(~np.isfinite(x.reshape(len(x), -1)))[0, 0])
            raise DataError(f"'{path}': '{kx}' has NaN or infinite pixels (first in row {row}); "
                            "fix or drop those rows.")
        xs.append(x), ys.append(y), part.append(np.full(len(y), p, dtype="U5"))
    if len({x.shape[1:] for x in xs}) > 1:
        raise DataError(f"'{path}': the splits have different image shapes "
                        f"{[x.shape[1:] for x in xs]}; resize them to one shape.")
    y = np.concatenate(ys)
    k = len(arrays["class_names"]) if "class_names" in arrays else int(y.max(initial=0)) + 1
    if not (np.issubdtype(y.dtype, np.integer) or (np.issubdtype(y.dtype, np.floating)
            and np.all(np.mod(y, 1) == 0))) or y.min(initial=0) < 0 or y.max(initial=0) >= k:
        raise DataError(f"'{path}': labels must be integers 0..K-1 (K = {k} classes); received "
                        f"dtype {y.dtype}, values {np.unique(y)[:10].tolist()}. Encode the "
                        "classes as 0..K-1 (and list their names in class_names).")
    y = y.astype("int64")
    names = [str(c) for c in arrays["class_names"]] if "class_names" in arrays \
        else [str(c) for c in range(k)]
    counts = np.bincount(y[np.concatenate(part) == "train"], minlength=k)
    if k < 2 or counts.min() < MIN_PER_CLASS:
        raise DataError(f"'{path}': every one of at least 2 classes needs {MIN_PER_CLASS} training "
                        f"rows; class counts in 'y' are {counts.tolist()}. Add rows or drop "
                        "the class.")
    return Dataset(name=path.stem, x=np.concatenate(xs), y=y, class_names=names,
                   part=np.concatenate(part), source={"reader": "arrays",
                                                      "path": str(path.resolve())})


def data_card(ds: Dataset) -> dict[str, Any]:
    """A short description of a dataset: size, shape, value range, class balance."""
    counts = np.bincount(ds.y, minlength=ds.n_classes)
    files = isinstance(ds.x, Images)
    return {
        "name": ds.name,
        "rows": int(len(ds.y)),
        "input_shape": list(ds.input_shape),
        "dtype": str(ds.x.dtype),
        "min": 0.0 if files else float(ds.x.min()),  # decoded image files: 0..255
        "max": 255.0 if files else float(ds.x.max()),
        "class_names": ds.class_names,
        "class_counts": {c: int(n) for c, n in zip(ds.class_names, counts, strict=True)},
        "splits": {p: ("given" if p in ds.given else "carved") for p in PARTS},
        "given_rows": {p: int((ds.part == p).sum()) for p in ds.given},
        "source": ds.source,
        "sha256": _array_hash(_fingerprint(ds.x) if files else ds.x, ds.y, ds.part.astype("U5")),
    }


def _fingerprint(images: Images) -> np.ndarray:
    """What identifies a folder's contents cheaply: each file's path, size and mtime."""
    stats = [Path(p).stat() for p in images.paths]
    return np.array([f"{p}|{st.st_size}|{st.st_mtime_ns}" for p, st in zip(images.paths, stats,
                                                                           strict=True)])


def _array_hash(*arrays: np.ndarray) -> str:
    import hashlib

    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _x_arrays(key: str, x) -> dict[str, np.ndarray]:
    """`x` as npz entries: the array itself, or a folder's index (paths, image size, channels)."""
    if isinstance(x, Images):
        return {f"{key}_paths": x.paths, f"{key}_image": np.array([*x.image_size, x.channels])}
    if x.size and x.dtype == np.float32 and x.min() >= 0 and x.max() <= 255 \
            and np.array_equal(x, np.round(x)):
        return {f"{key}_uint8": x.astype("uint8")}  # whole pixel values: 4x smaller, lossless
    return {key: x}


def _x_read(f, key: str):
    if f"{key}_paths" in f:
        h, w, c = (int(v) for v in f[f"{key}_image"])
        return Images(f[f"{key}_paths"], (h, w), c)
    if f"{key}_uint8" in f:
        return f[f"{key}_uint8"].astype("float32")
    return f[key]


def save_dataset(ds: Dataset, path: str | Path) -> Path:
    """`data/raw.npz`: the arrays, or for a folder only its index (paths, labels, split)."""
    return io.save_npz(path, **_x_arrays("x", ds.x), y=ds.y,
                       class_names=np.array(ds.class_names), part=ds.part.astype("U5"))


def read_dataset(path: str | Path, name: str = "data") -> Dataset:
    with np.load(path) as f:
        return Dataset(name=name, x=_x_read(f, "x"), y=f["y"],
                       class_names=[str(c) for c in f["class_names"]],
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
    return Splits(*(a for p in PARTS for a in (take(ds.x, idx[p]), ds.y[idx[p]])), ds.class_names,
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
    xs = {k: v for p in PARTS for k, v in _x_arrays(f"x_{p}", getattr(s, f"x_{p}")).items()}
    return io.save_npz(
        path, **xs, y_train=s.y_train, y_val=s.y_val, y_test=s.y_test,
        class_names=np.array(s.class_names), origin=np.array([s.origin[p] for p in PARTS]),
    )


def read_splits(path: str | Path) -> Splits:
    with np.load(path) as f:
        return Splits(
            *(a for p in PARTS for a in (_x_read(f, f"x_{p}"), f[f"y_{p}"])),
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
            img = _decode(tf.io.read_file(path), x.image_size, x.channels)
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


# ---------------------------------------------------------------------------- augmentation

AUGMENT_FILE = "augment.json"


def augment_spec(augment: Any, x_train) -> dict[str, Any] | None:
    """What the preprocess stage records in `data/augment.json` for the training stages: the
    non-default settings of `params.AugmentParams` and the pixel range of the training rows
    (brightness, contrast and erasing act on it). None where nothing is augmented."""
    settings = augment.model_dump(exclude_defaults=True) if hasattr(augment, "model_dump") \
        else dict(augment or {})
    if not settings:
        return None
    if isinstance(x_train, Images):
        value_range = [0.0, 255.0]
    else:
        value_range = [float(np.min(x_train)), float(np.max(x_train))]
    return {"settings": settings, "value_range": value_range}


def save_augment(spec: dict[str, Any] | None, data_dir: str | Path) -> Path:
    return io.write_json(Path(data_dir) / AUGMENT_FILE, spec)


def read_augment(data_dir: str | Path) -> dict[str, Any] | None:
    """The augmentation the preprocess stage recorded (None: none, or an older run folder)."""
    return io.read_json_if_exists(Path(data_dir) / AUGMENT_FILE)


def augmenter(spec: dict[str, Any] | None, *, seed: int):
    """The Keras 3 `Random*` layers for an augmentation spec, each seeded (None for no spec).

    ImageDataGenerator's names map onto: rotation_range (degrees) -> RandomRotation,
    width/height_shift_range -> RandomTranslation, shear_range (degrees) -> RandomShear,
    zoom_range -> RandomZoom, horizontal/vertical_flip -> RandomFlip, brightness_range ->
    RandomBrightness, contrast -> RandomContrast, erasing -> RandomErasing.
    """
    if not spec or not spec.get("settings"):
        return None
    import math

    import keras

    a, lo_hi = spec["settings"], tuple(spec["value_range"])
    L, fill = keras.layers, {"fill_mode": "constant", "fill_value": lo_hi[0]}
    made = []  # (layer class, its arguments), in ImageDataGenerator's order
    if a.get("rotation_range"):
        made.append((L.RandomRotation, {"factor": a["rotation_range"] / 360.0, **fill}))
    if a.get("width_shift_range") or a.get("height_shift_range"):
        made.append((L.RandomTranslation, {"height_factor": a.get("height_shift_range", 0.0),
                                           "width_factor": a.get("width_shift_range", 0.0),
                                           **fill}))
    if a.get("shear_range"):  # RandomShear draws the sign itself
        made.append((L.RandomShear, {"x_factor": min(math.tan(math.radians(a["shear_range"])),
                                                     1.0), **fill}))
    if a.get("zoom_range"):
        made.append((L.RandomZoom, {"height_factor": a["zoom_range"], **fill}))
    flips = [m for m in ("horizontal", "vertical") if a.get(f"{m}_flip")]
    if flips:
        made.append((L.RandomFlip, {"mode": "_and_".join(flips)}))
    if a.get("brightness_range"):
        low, high = a["brightness_range"]
        made.append((L.RandomBrightness, {"factor": (low - 1.0, high - 1.0),
                                          "value_range": lo_hi}))
    if a.get("contrast"):
        made.append((L.RandomContrast, {"factor": a["contrast"], "value_range": lo_hi}))
    if a.get("erasing"):
        made.append((L.RandomErasing, {"factor": a["erasing"], "value_range": lo_hi}))
    # a seed each, so switching one setting on does not change the draws of the others
    order = ["RandomRotation", "RandomTranslation", "RandomShear", "RandomZoom", "RandomFlip",
             "RandomBrightness", "RandomContrast", "RandomErasing"]
    layers = [cls(**kw, seed=seed + 1000 * (1 + order.index(cls.__name__))) for cls, kw in made]
    return keras.Sequential(layers, name="augment")


def augment_draws(x, spec: dict[str, Any] | None, *, draws: int = 4, seed: int = 0) -> np.ndarray:
    """`draws` augmented copies of the rows `x` as (draws + 1, rows, H, W, C): the originals
    first, then one fresh draw per copy (the preview grid of the preprocess notebook)."""
    x = np.asarray(x, dtype="float32")
    layer = augmenter(spec, seed=seed)
    out = [x] + [np.asarray(layer(x, training=True)) if layer is not None else x
                 for _ in range(draws)]
    return np.stack(out)


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
