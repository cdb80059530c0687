"""`concat`: frozen members' penultimate features, concatenated, with a new softmax head.

With `fine_tune_layers=k > 0`, after the head is fitted the last `k` layers with weights of
each member (nested models such as `keras.applications` backbones looked into; batch
normalisation left frozen, in inference mode) are unfrozen and trained together with the
head at `fine_tune_learning_rate`. Fine-tuning works on copies, so the members passed in
never change. Without fine-tuning, the head is fitted on the members' features in inference
mode, computed once when no augmentation applies.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras

from kernelib.errors import MergeError
from kernelib.members import features
from kernelib.merge.base import check_xy, leaf_layers, model_input, pick, prepare
from kernelib.merge.strategy import Strategy
from kernelib.merge_params import ConcatParams


def feature_extractor(model):
    """The member up to its penultimate features (the input of its final classifier layer),
    nested models (a member's front, a backbone) looked into."""
    return features(model, f"{model.name}_features")


def unfreeze_last(model, k: int) -> list[str]:
    """Make only the last `k` weighted, non-batch-norm layers of `model` trainable; their names."""
    leaves = leaf_layers(model)
    tunable = [la for la in leaves
               if la.weights and not isinstance(la, keras.layers.BatchNormalization)][-k:]
    model.trainable = True
    for layer in leaves:
        layer.trainable = any(layer is t for t in tunable)
    return [la.name for la in tunable]


_FEATURE_BYTES = 1 << 30  # features computed once up to 1 GiB a split; past it, per batch


def _head_on_features(extract, head, train, val, *, batch_size, seed, augment):
    """The head alone (the merged model's own layer) and datasets of the frozen members'
    features, computed in inference mode: inside `fit`, Keras 3 runs a nested model in
    training mode whatever its call said, so the members' dropout would noise the features.

    Without augmentation the features of a split are computed once (the members see the same
    rows every epoch); with it, or past `_FEATURE_BYTES`, batch by batch as tf.data draws them.
    """
    import numpy as np

    from kernelib.data import batches, make_dataset

    width = int(extract.output_shape[-1])

    def features_of(x):
        return np.concatenate([np.asarray(extract(xb, training=False), dtype="float32")
                               for xb in batches(x)])

    def dataset(x, y, *, shuffle: bool, spec):
        if not (spec or {}).get("settings") and len(x) * width * 4 <= _FEATURE_BYTES:
            return make_dataset(features_of(x), y, batch_size=batch_size, shuffle=shuffle,
                                seed=seed)
        return make_dataset(x, y, batch_size=batch_size, shuffle=shuffle, seed=seed,
                            augment=spec).map(lambda xb, yb: (extract(xb, training=False), yb))

    f_in = keras.Input(shape=(width,), name="features")
    return (keras.Model(f_in, head(f_in)), dataset(*train, shuffle=True, spec=augment),
            dataset(*val, shuffle=False, spec=None))


def _copy(model):
    clone = keras.models.clone_model(model, recursive=True)  # nested members copied too
    clone.set_weights(model.get_weights())
    clone.name = model.name
    return clone


def _build(models, n_classes: int, name: str, *, copy: bool):
    """The merged model (frozen feature extractors, `features`, a new `head`) and extractors."""
    from kernelib.train import replicas, strategy_scope

    with strategy_scope():  # under tf.distribute, the members' copies become its variables
        if copy or replicas() > 1:
            models = [_copy(m) for m in models]
        extractors = [feature_extractor(m) for m in models]
        for e in extractors:
            e.trainable = False
        inputs = model_input(models)
        feats = keras.layers.Concatenate(name="features")([e(inputs, training=False)
                                                              for e in extractors])
        outputs = keras.layers.Dense(n_classes, activation="softmax", dtype="float32",
                                     name="head")(feats)
        return keras.Model(inputs, outputs, name=name), extractors


def merge_concat(members: Sequence[Any], *, train: tuple | None = None, val: tuple | None = None,
                 seed: int = 0, epochs: int = 20, learning_rate: float = 1e-3,
                 batch_size: int = 64, patience: int = 3, fine_tune_layers: int = 0,
                 fine_tune_learning_rate: float = 1e-4, augment: dict | None = None,
                 include: Sequence[str] | None = None, name: str = "concat",
                 log_dir: str | None = None):
    """Concatenate the frozen members' features and fit a new softmax head on `train`.

    `include` names the members to concatenate (default: all; a SavedModel member, which
    cannot be looked inside, must be left out).
    `val` drives early stopping (best weights restored). `fine_tune_layers=k` then trains
    the last `k` weighted layers of each member too, at `fine_tune_learning_rate`.
    `augment` (`data.read_augment`) transforms the training batches (never part of the model).
    With `log_dir`, TensorBoard scalars go there (the fine-tuning phase into `fine_tune/`).
    """
    from kernelib.data import make_dataset
    from kernelib.train import compile_model, replicas, strategy_scope, tensorboard_callbacks

    models = prepare(pick(members, include, "concat", "include"), "concat")
    if not isinstance(fine_tune_layers, int) or fine_tune_layers < 0:
        raise MergeError(f"strategy 'concat': 'fine_tune_layers' must be an integer >= 0; "
                         f"received {fine_tune_layers!r}")
    n_classes = models[0].output_shape[-1]
    shape = tuple(models[0].input_shape[1:])
    x_train, y_train = check_xy(train, "train", "concat", n_classes, input_shape=shape)
    x_val, y_val = check_xy(val, "val", "concat", n_classes, input_shape=shape)
    keras.utils.set_random_seed(seed)
    model, extractors = _build(models, n_classes, name, copy=bool(fine_tune_layers))
    batch_size *= replicas()
    if not fine_tune_layers and replicas() == 1:  # frozen members: only the head trains
        fitted, train_ds, val_ds = _head_on_features(
            keras.Model(model.inputs, model.get_layer("features").output),
            model.get_layer("head"), (x_train, y_train),
            (x_val, y_val), batch_size=batch_size, seed=seed, augment=augment)
    else:  # end to end (members' dropout in training mode: they are trained too, or mirrored)
        fitted = model
        train_ds = make_dataset(x_train, y_train, batch_size=batch_size, shuffle=True,
                                seed=seed, augment=augment)
        val_ds = make_dataset(x_val, y_val, batch_size=batch_size)

    def fit(lr: float, logs: str | None) -> None:
        with strategy_scope():
            compile_model(fitted, learning_rate=lr)
        fitted.fit(
            train_ds, validation_data=val_ds, epochs=epochs, verbose=0, shuffle=False,
            callbacks=[keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience,
                                                     restore_best_weights=True),
                       *tensorboard_callbacks(logs)],
        )

    fit(learning_rate, log_dir)
    if fine_tune_layers:
        for e in extractors:
            unfreeze_last(e, fine_tune_layers)
        fit(fine_tune_learning_rate, log_dir and f"{log_dir}/fine_tune")
    return model


class Concat(Strategy):
    """A new softmax head on the frozen members' concatenated features, trained on data."""

    strategy, options = "concat", ConcatParams
    runtime = {"seed": 0, "augment": None, "log_dir": None}

    def fit(self, members, *, train=None, val=None):
        """Train the head on `train` (early-stopped on `val`) into `model_`: `merge_concat`."""
        self.model_ = merge_concat(members, train=train, val=val, **self.get_params())
        return self

    def to_keras(self, models):
        return self.model_

    def merge(self, members, *, train=None, val=None, val_probs=None, build=None):
        return self.fit(members, train=train, val=val).to_keras(members)
