"""`distill`: one small student trained on the soft targets of a merged teacher.

The teacher is another strategy's merged model (by name, built here from the same members,
or a `keras.Model` already built, as `merge_many` passes it). The student is a fresh zoo
recipe behind a preprocessing model fitted on the training rows. The loop is the classic
one (Hinton et al. 2015) at temperature 1, written as a plain `fit` on soft targets:
cross-entropy to `alpha * onehot(y) + (1 - alpha) * teacher(x)` on the training rows, and
to `teacher(x)` alone on `mixup_copies` seeded mixup blends of training rows (inputs the
teacher has not memorised, where its soft targets carry the most information). Early
stopping watches the NLL of the hard `val` labels. The student is a normal member-shaped
model: one file, plain Keras, one network's cost at inference.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from kernelib.errors import MergeError
from kernelib.merge.base import check_xy, n_classes, predict, prepare
from kernelib.merge.strategy import Strategy
from kernelib.merge_params import MERGE_STRATEGIES, DistillParams


def transfer_set(x: np.ndarray, y: np.ndarray, teacher_probs_fn, *, k: int, alpha: float,
                 mixup_copies: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and soft targets the student learns from (training rows plus mixup blends)."""
    rng = np.random.default_rng(seed)
    xs = [x]
    for _ in range(mixup_copies):
        lam = rng.uniform(0.0, 1.0, size=(len(x),) + (1,) * (x.ndim - 1)).astype(x.dtype)
        xs.append(lam * x + (1 - lam) * x[rng.permutation(len(x))])
    inputs = np.concatenate(xs)
    targets = teacher_probs_fn(inputs)
    targets[:len(x)] = alpha * np.eye(k)[y] + (1 - alpha) * targets[:len(x)]
    return inputs, targets.astype("float32")


def _teacher(teacher: Any, models: Sequence[Any], build: Callable[[str], Any] | None):
    if isinstance(teacher, str):
        valid = [s for s in MERGE_STRATEGIES if s != "distill"]
        if teacher not in valid:
            raise MergeError(f"strategy 'distill': 'teacher' must be one of {valid} or a "
                             f"keras.Model; received {teacher!r}")
        if build is None:
            raise MergeError(f"strategy 'distill': teacher {teacher!r} is a strategy name, "
                             "which needs build=; use kernelib.merge.merge, or pass the built "
                             "keras.Model as the teacher")
        return build(teacher)
    shapes = (tuple(getattr(teacher, "input_shape", (None,))[1:]),
              getattr(teacher, "output_shape", (None,))[-1])
    if shapes != (tuple(models[0].input_shape[1:]), n_classes(models)):
        raise MergeError(f"strategy 'distill': the teacher must take the members' input "
                         f"{tuple(models[0].input_shape[1:])} and predict {n_classes(models)} "
                         f"classes; received a teacher with input {shapes[0]} and "
                         f"{shapes[1]} classes.")
    return teacher


def merge_distill(members: Sequence[Any], *, train: tuple | None = None,
                  val: tuple | None = None, seed: int = 0, teacher: Any = "weighted",
                  student: str = "cnn", epochs: int = 30, learning_rate: float = 1e-3,
                  batch_size: int = 64, patience: int = 5, alpha: float = 0.5,
                  mixup_copies: int = 1, augment: dict | None = None, name: str = "distill",
                  log_dir: str | None = None, build: Callable[[str], Any] | None = None):
    """Train a `student` zoo recipe on the soft targets of the `teacher` merged model (or
    strategy name: `build(teacher)` makes it); `augment` (`data.read_augment`) transforms its
    training batches. With `log_dir`, the student's TensorBoard scalars go there.
    """
    import keras

    from kernelib import data, zoo
    from kernelib.train import replicas, strategy_scope, tensorboard_callbacks

    models = prepare(members, "distill")
    k = n_classes(models)
    shape = tuple(models[0].input_shape[1:])
    x_train, y_train = check_xy(train, "train", "distill", k, input_shape=shape)
    x_val, y_val = check_xy(val, "val", "distill", k, input_shape=shape)
    if not 0.0 <= alpha <= 1.0:
        raise MergeError(f"strategy 'distill': 'alpha' (weight of the hard labels) must lie in "
                         f"[0, 1]; received alpha={alpha!r}")
    teacher_model = _teacher(teacher, models, build)
    inputs, targets = transfer_set(
        x_train.astype("float32"), y_train,
        lambda x: predict(teacher_model, x),
        k=k, alpha=alpha, mixup_copies=int(mixup_copies), seed=seed)
    with strategy_scope():
        model = zoo.build(student, preprocessor=data.build_preprocessor(x_train), n_classes=k,
                          name=name, seed=seed)
        model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                      loss="categorical_crossentropy", metrics=["accuracy"])
    batch_size *= replicas()
    model.fit(
        data.make_dataset(inputs, targets, batch_size=batch_size, shuffle=True, seed=seed,
                          augment=augment),
        validation_data=data.make_dataset(x_val, np.eye(k, dtype="float32")[y_val],
                                          batch_size=batch_size),
        epochs=epochs, verbose=0, shuffle=False,
        callbacks=[keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience,
                                                 restore_best_weights=True),
                   *tensorboard_callbacks(log_dir)],
    )
    return model


class Distill(Strategy):
    """One small student network trained on a merged teacher's soft targets."""

    strategy, options = "distill", DistillParams
    runtime = {"seed": 0, "augment": None, "log_dir": None}

    def fit(self, members, *, train=None, val=None, build=None):
        """Train the student on `train` (early-stopped on `val`) into `model_`: `merge_distill`."""
        self.model_ = merge_distill(members, train=train, val=val, build=build,
                                    **self.get_params())
        return self

    def to_keras(self, models):
        return self.model_

    def merge(self, members, *, train=None, val=None, val_probs=None, build=None):
        return self.fit(members, train=train, val=val, build=build).to_keras(members)
