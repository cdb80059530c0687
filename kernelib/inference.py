"""Model probabilities: batched inference, and the cache file the merge stage writes them to.

The merge stage predicts val and test once with every model and saves them
(`merged/predictions.npz`); the evaluate stage only reads that file, so it never runs a model
again.

Example::

    preds = predict_all({"mlp_0": model}, {"val": x_val, "test": x_test})
    save_predictions(run.predictions, preds, {"mlp_0": "member"})
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from kernelib.errors import DataError


def predict_proba(model, x: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
    """`model(x)` in inference mode, batch by batch, as float64 class probabilities.

    Eager calls instead of `model.predict`: the merge and evaluate stages call many models
    once each on small arrays, where `predict` would trace a new graph function per model.
    """
    from kernelib.data import batches  # an image folder's rows decode batch by batch

    return np.concatenate([np.asarray(model(xb, training=False), dtype="float64")
                           for xb in batches(x, batch_size)])


def predict_all(models: Mapping[str, Any], inputs: Mapping[str, np.ndarray]):
    """Probabilities of every model on every split: `{split: {model: probs}}` (one pass each)."""
    return {split: {name: predict_proba(m, x) for name, m in models.items()}
            for split, x in inputs.items()}


def save_predictions(path, predictions, kinds: Mapping[str, str]):
    """The prediction cache: one array per (split, model), plus each model's kind."""
    from kernelib import io

    arrays = {f"{split}/{name}": p for split, preds in predictions.items()
              for name, p in preds.items()}
    arrays["__kinds__"] = np.array([f"{k}={v}" for k, v in kinds.items()])
    return io.save_npz(path, **arrays)


def read_predictions(path) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, str]]:
    """Read the prediction cache written by `save_predictions`."""
    preds: dict[str, dict[str, np.ndarray]] = {}
    with np.load(path) as f:
        kinds = dict(str(s).split("=", 1) for s in f["__kinds__"])
        for key in f.files:
            if key != "__kinds__":
                split, name = key.split("/", 1)
                preds.setdefault(split, {})[name] = f[key]
    return preds, kinds


def cached(run, split: str, name: str) -> np.ndarray:
    """One model's cached probabilities on one split."""
    preds, _ = read_predictions(run.require(run.predictions, "merge"))
    if name not in preds.get(split, {}):
        raise DataError(f"no cached '{split}' predictions for '{name}'; cached models: "
                        f"{sorted(preds.get(split, {}))}")
    return preds[split][name]
