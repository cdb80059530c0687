"""Given and carved train/val/test splits, bagged rows, the split table."""

from __future__ import annotations

import numpy as np

from kernelib.data.dataset import PARTS, Dataset, Splits, take
from kernelib.errors import DataError


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
