"""Checks and helpers shared by every merge strategy."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from kernelib.errors import MergeError
from kernelib.members import as_models, check_compatible


def prepare(members: Sequence[Any], strategy: str, *, min_members: int = 2) -> list[Any]:
    """Members as uniquely named, mutually compatible models; at least `min_members`."""
    if len(members) < min_members:
        raise MergeError(
            f"strategy '{strategy}' needs at least {min_members} members; received "
            f"{len(members)}. Add members to 'load.members'."
        )
    models = as_models(members)
    check_compatible(models)
    return models


def check_xy(data: Any, what: str, strategy: str, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate an `(x, y)` pair of NumPy arrays with integer labels in range."""
    if data is None:
        raise MergeError(f"strategy '{strategy}' needs '{what}=(x, y)'; received None.")
    try:
        x, y = data
    except (TypeError, ValueError):
        raise MergeError(f"'{what}' must be a pair (x, y); received {type(data).__name__}") from None
    x, y = np.asarray(x), np.asarray(y)
    if len(x) != len(y) or len(y) == 0:
        raise MergeError(f"'{what}' needs as many labels as rows (and at least one); "
                         f"received {len(x)} rows and {len(y)} labels.")
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise MergeError(f"'{what}' labels must be a 1-D integer array; received dtype "
                         f"{y.dtype} with shape {y.shape}.")
    if y.min() < 0 or y.max() >= n_classes:
        raise MergeError(f"'{what}' labels must lie in [0, {n_classes - 1}]; received values "
                         f"from {y.min()} to {y.max()}.")
    return x, y


def model_input(models: Sequence[Any]):
    """A fresh `keras.Input` matching the members' shared input."""
    import keras

    return keras.Input(shape=tuple(models[0].input_shape[1:]), name="image")
