"""A user's own data: an image folder (indexed, not decoded) or an `.npz` file of arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kernelib.data.dataset import PARTS, Dataset, Images
from kernelib.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
MIN_PER_CLASS = 3


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
    parts, order = _class_folders(root, class_names)
    rows, bad = _index_files(root, parts, order)
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


def _class_folders(root: Path, class_names: list[str] | None) -> tuple[dict[str, Path],
                                                                       list[str]]:
    """The split folders (`{"train": root}` when there are none) and the class order."""
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
    return parts, order


def _index_files(root: Path, parts: dict[str, Path], order: list[str]) -> tuple[list, list]:
    """`(path, label, split)` of every readable image, and the files that are not."""
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
    return rows, bad


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
    arrays = _load_npz(path)
    xs, ys, part = _split_arrays(path, arrays)
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


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of the file, refused when it is missing, unreadable or lacks x or y."""
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
    return arrays


def _split_arrays(path: Path, arrays: dict[str, np.ndarray]) -> tuple[list, list, list]:
    """Each split's images (float32, checked), labels and split names, train first."""
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
    return xs, ys, part
