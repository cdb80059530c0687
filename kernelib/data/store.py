"""A dataset and its splits in the run folder (`data/raw.npz`, `data/splits.npz`), and the data
card with its fingerprint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from kernelib import io
from kernelib.data.dataset import PARTS, Dataset, Images, Splits


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
        "sha256": array_hash(fingerprint(ds.x) if files else ds.x, ds.y, ds.part.astype("U5")),
    }


def fingerprint(images: Images) -> np.ndarray:
    """What identifies a folder's contents cheaply: each file's path, size and mtime."""
    stats = [Path(p).stat() for p in images.paths]
    return np.array([f"{p}|{st.st_size}|{st.st_mtime_ns}" for p, st in zip(images.paths, stats,
                                                                          strict=True)])


def array_hash(*arrays: np.ndarray) -> str:
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
