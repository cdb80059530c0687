"""Merge several members into one Keras model: `merge(members, strategy, ...)`.

Example::

    from kernelib.merge import merge, STRATEGIES
    model = merge(members, "concat", train=(x_tr, y_tr), val=(x_val, y_val), seed=0)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from kernelib.errors import MergeError
from kernelib.merge.average import merge_average
from kernelib.merge.concat import merge_concat

_TABLE: dict[str, Callable] = {
    "average": merge_average,
    "concat": merge_concat,
}
STRATEGIES: tuple[str, ...] = tuple(_TABLE)
_DATA_ARGS = ("train", "val", "seed")


def merge(members: Sequence[Any], strategy: str, *, train: tuple | None = None,
          val: tuple | None = None, seed: int = 0, **options: Any):
    """Merge `members` (keras.Model or Member objects) into one `keras.Model` with `strategy`.

    `train` and `val` are `(x, y)` NumPy pairs with integer labels, used by strategies that
    fit something; options are the strategy's own keyword arguments. Unknown strategies
    and unknown options are refused with the valid ones listed.
    """
    if strategy not in _TABLE:
        raise MergeError(f"unknown merge strategy '{strategy}'; valid strategies: {list(STRATEGIES)}")
    fn = _TABLE[strategy]
    accepted = set(inspect.signature(fn).parameters) - {"members"}
    valid_options = sorted(accepted - set(_DATA_ARGS))
    unknown = sorted(set(options) - set(valid_options))
    if unknown:
        raise MergeError(f"strategy '{strategy}' does not take option(s) {unknown}; "
                         f"valid options: {valid_options}")
    data = {"train": train, "val": val, "seed": seed}
    kwargs = {k: v for k, v in data.items() if k in accepted}
    return fn(members, **kwargs, **options)


def merge_many(members: Sequence[Any], strategies: Sequence[str], *, train: tuple | None = None,
               val: tuple | None = None, seed: int = 0,
               options: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Build one merged model per strategy; `options[strategy]` holds that strategy's options."""
    options = options or {}
    return {s: merge(members, s, train=train, val=val, seed=seed, name=s, **options.get(s, {}))
            for s in strategies}


def save_all(merged: dict[str, Any], run, *, check_x: np.ndarray):
    """Save each merged model to `merged/<strategy>.keras`; table of size and reload parity."""
    import pandas as pd

    from kernelib import io
    from kernelib.members import count_params

    rows = []
    for strategy, model in merged.items():
        path = run.merged_model(strategy)
        diff = save(model, path, check_x=check_x)
        rows.append({"strategy": strategy, "params": count_params(model),
                     "file_kb": round(io.size_bytes(path) / 1024, 1),
                     "reload_max_abs_diff": diff})
    return pd.DataFrame(rows).set_index("strategy")


def save(model, path, *, check_x: np.ndarray) -> float:
    """Save a merged model to one `.keras` file atomically, reload it, return max |Δ| on `check_x`."""
    import keras

    from kernelib import io

    with io.atomic_path(path) as tmp:
        model.save(tmp)
    reloaded = keras.saving.load_model(path, compile=False)
    before = model.predict(check_x, batch_size=256, verbose=0)
    after = reloaded.predict(check_x, batch_size=256, verbose=0)
    return float(np.max(np.abs(np.asarray(before) - np.asarray(after))))


__all__ = ["STRATEGIES", "merge", "merge_many", "save", "save_all"]
