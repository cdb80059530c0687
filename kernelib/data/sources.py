"""One entry for every dataset source: a built-in name or a validated folder/arrays spec
(`params.dataset_spec` turns a mapping into one), its facts without TensorFlow, subsets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from kernelib import io
from kernelib.data.builtin import DATASETS, INFO, load_digits, load_fashion_mnist
from kernelib.data.dataset import Dataset, Images, take
from kernelib.data.readers import read_arrays, read_folder
from kernelib.data.store import array_hash, fingerprint
from kernelib.errors import DataError


def dataset_info(spec: Any) -> dict[str, Any]:
    """Input shape, classes and training rows of a dataset, without loading TensorFlow.

    A folder or array file is read and checked whole (every bad input ends in a DataError
    here); a built-in's numbers are known.
    """
    if isinstance(spec, str):
        if spec not in INFO:
            raise DataError(f"unknown dataset '{spec}'; built-in datasets: {list(DATASETS)}")
        return INFO[spec]
    ds = load_dataset(spec)
    folder = getattr(spec, "kind", None) == "folder"
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
    return array_hash(fingerprint(Images(np.array([str(f) for f in files], dtype=str), (1, 1),
                                         1)))


def load_dataset(spec: Any, *, train_rows: int | None = None, seed: int = 0) -> Dataset:
    """Load a dataset: a built-in name, or a folder or arrays spec (`params.FolderSpec`,
    `params.ArraysSpec`). With `train_rows`, keep a seeded stratified subset of its training
    rows (given val/test rows are always kept whole).

    Example::

        spec = params.dataset_spec({"kind": "folder", "path": "photos", "image_size": [64, 64]})
        ds = load_dataset(spec)

    `digits`: scikit-learn's 8x8 handwritten digits, pixels 0..16, no splits of its own.
    `fashion_mnist`: 28x28 grey images, pixels 0..255, 60,000 train and the official 10,000
    test rows (see `load_fashion_mnist`).
    """
    if spec == "digits":
        ds = load_digits()
    elif spec == "fashion_mnist":
        ds = load_fashion_mnist()
    elif isinstance(spec, str):
        raise DataError(f"unknown dataset '{spec}'; built-in datasets: {list(DATASETS)}")
    else:
        ds = _source_dataset(spec, seed=seed)
    return ds if train_rows is None else subset_train(ds, train_rows, seed=seed)


def _source_dataset(spec: Any, *, seed: int) -> Dataset:
    kind = getattr(spec, "kind", None)
    if kind == "folder":
        return read_folder(spec.path, image_size=tuple(spec.image_size),
                           color_mode=spec.color_mode, class_names=spec.class_names,
                           skip_unreadable=spec.skip_unreadable)
    if kind == "arrays":
        return read_arrays(spec.path)
    if isinstance(spec, dict):  # validating it is params' job (params imports this package)
        raise DataError(f"a dataset spec mapping must be validated first: "
                        f"load_dataset(params.dataset_spec({spec!r})).")
    raise DataError(f"a dataset is a built-in name {list(DATASETS)}, {{kind: folder, ...}} or "
                    f"{{kind: arrays, ...}}; received {spec!r}")


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
