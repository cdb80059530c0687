"""Model probabilities: batched inference, and the cache file the merge stage writes them to.

The merge stage predicts val and test once with every model and saves them
(`merged/predictions.npz`); the evaluate stage only reads that file, so it never runs a model
again.

Example::

    preds = predict_all({"mlp_0": model}, {"val": x_val, "test": x_test})
    save_predictions(run.predictions, preds, {"mlp_0": "member"})
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from typing import Any

import numpy as np

from kernelib.errors import DataError


def predict_proba(model, x: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
    """`model(x)` in inference mode, batch by batch, as float64 class probabilities.

    More rows than one batch run through one traced `tf.function` per model, kept while the
    model lives; a single batch (the probes) runs eagerly. On the demo's six-member `select`
    model, 15,000 rows took 6.8 s traced (0.4 s of it the trace) against 14.5 s in eager
    calls; `bench/inference.py` sets the two side by side.
    """
    from kernelib.data import batches  # an image folder's rows decode batch by batch

    call = traced(model) if len(x) > batch_size else _eager(model)
    return np.concatenate([np.asarray(call(xb), dtype="float64")
                           for xb in batches(x, batch_size)])


_TRACED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def traced(model):
    """`inference_function(model)`, made once and kept with the model (the cache holds the
    model weakly: a dropped model frees it)."""
    fn = _TRACED.get(model)
    if fn is None:
        fn = _TRACED[model] = inference_function(model)
    return fn


def inference_function(model):
    """The model's inference pass as a `tf.function` over any batch size (float32 rows),
    traced on its first call. It holds the model weakly: the caller keeps the model."""
    import tensorflow as tf

    ref = weakref.ref(model)  # a strong reference would keep a cached model forever
    spec = tf.TensorSpec((None, *model.input_shape[1:]), tf.float32)
    return tf.function(lambda xb: ref()(xb, training=False), input_signature=[spec])


def _eager(model):
    return lambda xb: model(xb, training=False)


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
