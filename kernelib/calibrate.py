"""Temperature scaling (Guo et al. 2017): one scalar fitted on validation NLL.

A classifier that outputs probabilities `p` becomes `softmax(log(p) / T)`: `T > 1` softens
over-confident rows, `T < 1` sharpens, and the argmax (the accuracy) never changes. `T` is
fitted on `val` only. `TemperatureScaling` is a small Keras layer in `kernelib.layers`,
registered under the `kernelib` package.

Example::

    from kernelib.calibrate import calibrate
    calibrated = calibrate(model, (x_val, y_val))   # same argmax, lower val NLL
"""

from __future__ import annotations

import keras
import numpy as np

from kernelib.inference import predict_proba
from kernelib.layers import TemperatureScaling
from kernelib.metrics import EPS

BOUNDS = (0.05, 20.0)  # temperatures searched (a wider range only ever fits noise)


def log_scaled(p: np.ndarray, temperature: float) -> np.ndarray:
    """`log(softmax(log(p) / temperature))` row by row (what the layer computes, in logs)."""
    z = np.log(np.clip(np.asarray(p, dtype="float64"), EPS, 1.0)) / temperature
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def scaled_nll(p: np.ndarray, y: np.ndarray, temperature: float) -> float:
    """Validation NLL of `softmax(log(p) / temperature)` (what the layer computes)."""
    return float(-np.mean(log_scaled(p, temperature)[np.arange(len(y)), y]))


def fit_temperature(p: np.ndarray, y: np.ndarray) -> float:
    """The temperature in [0.05, 20] minimising `scaled_nll` (1.0 if nothing beats it)."""
    from scipy.optimize import minimize_scalar

    res = minimize_scalar(lambda t: scaled_nll(p, y, float(np.exp(t))),
                          bounds=tuple(np.log(BOUNDS)), method="bounded",
                          options={"xatol": 1e-6})
    t = float(np.exp(res.x))
    return t if scaled_nll(p, y, t) < scaled_nll(p, y, 1.0) else 1.0


def calibrate(model, val: tuple[np.ndarray, np.ndarray], *, name: str | None = None):
    """`model` followed by a `TemperatureScaling` layer whose temperature is fitted on `val`."""
    x, y = val
    t = fit_temperature(predict_proba(model, x), np.asarray(y))
    outputs = TemperatureScaling(t, dtype="float32", name="temperature")(model.outputs[0])
    return keras.Model(model.input, outputs, name=name or model.name)
