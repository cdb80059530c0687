"""`concat`: frozen members' penultimate features, concatenated, with a new softmax head."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras

from kernelib.merge.base import check_xy, model_input, prepare


def feature_extractor(model):
    """The member up to its penultimate layer (the input of its final classifier layer)."""
    return keras.Model(model.inputs, model.layers[-1].input, name=f"{model.name}_features")


def merge_concat(members: Sequence[Any], *, train: tuple | None = None, val: tuple | None = None,
                 seed: int = 0, epochs: int = 20, learning_rate: float = 1e-3,
                 batch_size: int = 64, patience: int = 3, name: str = "concat"):
    """Concatenate the frozen members' features and fit a new softmax head on `train`.

    `val` drives early stopping (best weights restored). Members stay frozen.
    """
    from kernelib.data import make_dataset
    from kernelib.train import compile_model

    models = prepare(members, "concat")
    n_classes = models[0].output_shape[-1]
    x_train, y_train = check_xy(train, "train", "concat", n_classes)
    x_val, y_val = check_xy(val, "val", "concat", n_classes)
    keras.utils.set_random_seed(seed)
    extractors = [feature_extractor(m) for m in models]
    for e in extractors:
        e.trainable = False
    inputs = model_input(models)
    feats = keras.layers.Concatenate(name="features")([e(inputs) for e in extractors])
    outputs = keras.layers.Dense(n_classes, activation="softmax", dtype="float32",
                                 name="head")(feats)
    model = keras.Model(inputs, outputs, name=name)
    compile_model(model, learning_rate=learning_rate)
    model.fit(
        make_dataset(x_train, y_train, batch_size=batch_size, shuffle=True, seed=seed),
        validation_data=make_dataset(x_val, y_val, batch_size=batch_size),
        epochs=epochs, verbose=0, shuffle=False,
        callbacks=[keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience,
                                                 restore_best_weights=True)],
    )
    return model
