"""Magnitude pruning for Keras 3: Dense and Conv kernels to a target sparsity while fine-tuning.

Keras 3 has no pruning, and tensorflow-model-optimization supports only Keras 2 models, so
kernelib keeps it small. A callback (`Pruner`) holds one mask per kernel; on a polynomial
schedule it raises the sparsity and re-ranks the weights by magnitude, and after every
training batch it multiplies the masks in, so a pruned weight is zero whenever the model is
used and stays zero. Kernels under `MIN_WEIGHTS` weights stay dense. No layer is wrapped,
so `copy_model` only copies the result into a plain model without optimizer state, which saves
and exports like any other.

Example::

    pruned, history = prune(model, (x_train, y_train), sparsity=0.75, epochs=2)
    sparsity(pruned)          # about 0.75 of the Dense/Conv kernel weights are zero
    table, models = sparsity_sweep(model, train, test, sparsities=[0, 0.5, 0.75, 0.9])
"""

from __future__ import annotations

import gzip
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from kernelib.errors import ConfigError
from kernelib.export import reference_predictions
from kernelib.members import named_layers, walk_layers

# Kernels smaller than this stay dense: the first convolution and the classifier layers are
# small and sensitive (pruning them 90% collapsed a stacked digits model to chance) and hold
# little of the model's size.
MIN_WEIGHTS = 1024
PRUNABLE = (keras.layers.Dense, keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D,
            keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose,
            keras.layers.Conv3DTranspose)


def prunable_kernels(model, *, min_weights: int = 0) -> list[tuple[str, keras.Variable]]:
    """`(layer path, kernel variable)` of every Dense and Conv layer inside `model`, once each.

    Kernels with fewer than `min_weights` weights are left out.
    """
    out, seen = [], set()
    for path, layer in named_layers(model):
        if not isinstance(layer, PRUNABLE):
            continue
        for v in layer.weights:
            if (v.name == "kernel" and id(v) not in seen
                    and int(np.prod(v.shape)) >= min_weights):
                seen.add(id(v))
                out.append((f"{path}/kernel", v))
    return out


@dataclass(frozen=True)
class PolynomialDecay:
    """Sparsity rising from `initial` to `target` between two steps, as in TFMOT.

    `s(t) = target + (initial - target) * (1 - (t - begin) / (end - begin)) ** power`,
    held at `initial` before `begin_step` and at `target` after `end_step`; masks are
    recomputed every `frequency` steps in between and at `end_step`.
    """

    target: float
    begin_step: int
    end_step: int
    initial: float = 0.0
    power: float = 3.0
    frequency: int = 1

    def __post_init__(self):
        if not 0.0 <= self.initial <= self.target < 1.0:
            raise ConfigError("pruning needs 0 <= initial sparsity <= target sparsity < 1; "
                              f"received initial={self.initial}, target={self.target}")
        if not 0 <= self.begin_step < self.end_step or self.frequency < 1:
            raise ConfigError("pruning needs 0 <= begin_step < end_step and frequency >= 1; "
                              f"received begin_step={self.begin_step}, "
                              f"end_step={self.end_step}, frequency={self.frequency}")

    def __call__(self, step: int) -> float:
        t = min(max(step, self.begin_step), self.end_step)
        left = 1.0 - (t - self.begin_step) / (self.end_step - self.begin_step)
        return self.target + (self.initial - self.target) * left ** self.power

    def updates_at(self, step: int) -> bool:
        """Whether masks are recomputed after training step `step`."""
        inside = self.begin_step <= step <= self.end_step
        return inside and ((step - self.begin_step) % self.frequency == 0
                           or step == self.end_step)


def magnitude_mask(w: np.ndarray, sparsity: float, keep: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask (True = kept) zeroing the `round(sparsity * w.size)` smallest |w|.

    Weights already pruned (`keep` False) go first, so a mask only ever grows.
    """
    w = np.asarray(w)
    keep = np.ones(w.shape, bool) if keep is None else np.asarray(keep, bool)
    k = int(round(sparsity * w.size))
    order = np.lexsort((np.abs(w).ravel(), keep.ravel()))  # pruned first, then by magnitude
    mask = np.ones(w.size, bool)
    mask[order[:k]] = False
    return mask.reshape(w.shape)


class Pruner(keras.callbacks.Callback):
    """Keeps the Dense/Conv kernels of `model` pruned to `schedule`'s sparsity during `fit`.

    Kernels smaller than `min_weights` stay dense (see `MIN_WEIGHTS`).
    """

    def __init__(self, model, schedule: PolynomialDecay, *, min_weights: int = 0):
        super().__init__()
        self.kernels = prunable_kernels(model, min_weights=min_weights)
        if not self.kernels:
            raise ConfigError(f"model '{model.name}' has no Dense or Conv kernel with at least "
                              f"{min_weights} weights to prune; prunable layers: "
                              f"{[c.__name__ for c in PRUNABLE]}")
        self.schedule = schedule
        self.masks = [np.ones(v.shape, bool) for _, v in self.kernels]
        self._factors: list = []
        self.step = 0

    def on_train_begin(self, logs=None):
        self._update(self.schedule(self.step))

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self.schedule.updates_at(self.step):
            self._update(self.schedule(self.step))
        else:
            self._apply()

    def _update(self, sparsity: float) -> None:
        for i, (_, v) in enumerate(self.kernels):
            self.masks[i] = magnitude_mask(np.asarray(v.numpy()), sparsity, self.masks[i])
        self._factors = [keras.ops.convert_to_tensor(m, dtype=v.dtype)
                         for m, (_, v) in zip(self.masks, self.kernels, strict=True)]
        self._apply()

    def _apply(self) -> None:
        for factor, (_, v) in zip(self._factors, self.kernels, strict=True):
            v.assign(v * factor)

    def sparsity(self) -> float:
        """Share of kernel weights the masks remove."""
        return 1.0 - sum(int(m.sum()) for m in self.masks) / sum(m.size for m in self.masks)


def copy_model(model):
    """An independent copy of `model` (same architecture and weights, nothing compiled)."""
    clone = type(model).from_config(model.get_config())  # clone_model would compile it again
    clone.set_weights(model.get_weights())
    return clone


def prune(model, train: tuple[np.ndarray, np.ndarray], *, sparsity: float, epochs: int = 2,
          batch_size: int = 64, learning_rate: float = 1e-3, end_fraction: float = 0.7,
          min_weights: int = MIN_WEIGHTS, seed: int = 0):
    """Fine-tune a copy of `model` on `train` while pruning its Dense/Conv kernels.

    The sparsity rises polynomially over the first `end_fraction` of the training steps and
    is held at `sparsity` for the rest, so the model recovers at its final sparsity. Kernels
    with fewer than `min_weights` weights stay dense. Every layer is trained (frozen ones
    too), then the original trainable flags are restored. Returns `(plain pruned model,
    history DataFrame)`; `model` itself is not changed.
    """
    import pandas as pd

    from kernelib.data import make_dataset
    from kernelib.train import compile_model

    if not 0.0 <= sparsity < 1.0:
        raise ConfigError(f"target sparsity must be in [0, 1); received {sparsity}")
    if not 0.0 < end_fraction <= 1.0:
        raise ConfigError(f"end_fraction must be in (0, 1]; received {end_fraction}")
    x, y = train
    steps = math.ceil(len(x) / batch_size) * epochs
    end = max(1, int(end_fraction * steps))
    schedule = PolynomialDecay(target=sparsity, begin_step=0, end_step=end,
                               frequency=max(1, end // 10))
    work = copy_model(model)
    pruner = Pruner(work, schedule, min_weights=min_weights)
    flags = [(layer, layer.trainable) for layer in [work, *walk_layers(work)]]
    work.trainable = True
    keras.utils.set_random_seed(seed)
    compile_model(work, learning_rate=learning_rate)
    hist = work.fit(make_dataset(x, y, batch_size=batch_size, shuffle=True, seed=seed),
                    epochs=epochs, callbacks=[pruner], verbose=0, shuffle=False)
    for layer, trainable in flags:
        layer.trainable = trainable
    return copy_model(work), pd.DataFrame(hist.history).rename_axis("epoch")


def sparsity(model) -> float:
    """Share of zero weights over all Dense/Conv kernels of `model` (small ones included)."""
    ws = [np.asarray(v.numpy()) for _, v in prunable_kernels(model)]
    return float(sum(int((w == 0).sum()) for w in ws) / sum(w.size for w in ws))


def compressed_size(model) -> tuple[int, int]:
    """Bytes of the model's `.keras` file, and of that file gzip-compressed (level 9)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.keras"
        model.save(path)
        raw = path.read_bytes()
    return len(raw), len(gzip.compress(raw, compresslevel=9, mtime=0))


def sparsity_sweep(model, train: tuple[np.ndarray, np.ndarray],
                   test: tuple[np.ndarray, np.ndarray], *, sparsities: Sequence[float],
                   epochs: int = 2, batch_size: int = 64, learning_rate: float = 1e-3,
                   seed: int = 0):
    """Prune `model` to each sparsity; test accuracy and compressed size of each.

    Sparsity 0 is a plain copy of `model` (not fine-tuned), so sizes compare like for like;
    `sparsity` is the share of zeros over all Dense/Conv kernels, including the small ones
    left dense (`MIN_WEIGHTS`). Returns `(table, {sparsity: model})`.
    """
    import pandas as pd

    x_test, y_test = test
    rows, models = [], {}
    for target in sparsities:
        pruned = copy_model(model) if target == 0 else prune(
            model, train, sparsity=target, epochs=epochs, batch_size=batch_size,
            learning_rate=learning_rate, seed=seed)[0]
        raw, packed = compressed_size(pruned)
        p = reference_predictions(pruned, x_test)
        rows.append({"target_sparsity": float(target), "sparsity": sparsity(pruned),
                     "test_accuracy": float(np.mean(p.argmax(1) == y_test)),
                     "keras_kib": round(raw / 1024, 1), "gzip_kib": round(packed / 1024, 1),
                     "fine_tuned": target != 0})
        models[float(target)] = pruned
    cols = ["target_sparsity", "sparsity", "test_accuracy", "keras_kib", "gzip_kib", "fine_tuned"]
    return pd.DataFrame(rows, columns=cols).set_index("target_sparsity"), models
