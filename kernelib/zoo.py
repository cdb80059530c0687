"""Member recipes: small classifiers for the built-in data, each taking raw inputs.

Every recipe puts the run's preprocessing model in front (so a member takes raw inputs),
names its penultimate layer `features` and ends in a float32 softmax layer `probs`
(float32 even under mixed precision).
"""

from __future__ import annotations

from collections.abc import Callable

from kernelib.errors import ConfigError


def _mlp(x, keras):
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(128, activation="relu")(x)
    x = keras.layers.Dropout(0.2)(x)
    return keras.layers.Dense(64, activation="relu", name="features")(x)


def _cnn(x, keras):
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(x)
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(64, 3, padding="same", activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    return keras.layers.Dense(64, activation="relu", name="features")(x)


def _resnet(x, keras):
    x = keras.layers.Conv2D(32, 3, padding="same", use_bias=False)(x)
    x = keras.layers.BatchNormalization(momentum=0.9)(x)
    x = keras.layers.Activation("relu")(x)
    for _ in range(2):
        shortcut = x
        y = keras.layers.Conv2D(32, 3, padding="same", use_bias=False)(x)
        y = keras.layers.BatchNormalization(momentum=0.9)(y)
        y = keras.layers.Activation("relu")(y)
        y = keras.layers.Conv2D(32, 3, padding="same", use_bias=False)(y)
        y = keras.layers.BatchNormalization(momentum=0.9)(y)
        x = keras.layers.Activation("relu")(keras.layers.Add()([shortcut, y]))
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.layers.Dense(64, activation="relu", name="features")(x)


RECIPES: dict[str, Callable] = {"mlp": _mlp, "cnn": _cnn, "resnet": _resnet}


def build(recipe: str, *, preprocessor, n_classes: int, name: str, seed: int = 0):
    """Build an untrained member: preprocessing -> recipe body -> `features` -> softmax `probs`.

    `preprocessor` is the run's preprocessing `keras.Model` (its input shape is the member's).
    """
    import keras

    if recipe not in RECIPES:
        raise ConfigError(f"unknown recipe '{recipe}'; valid recipes: {sorted(RECIPES)}")
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=preprocessor.input_shape[1:], name="image")
    front = keras.models.clone_model(preprocessor)  # each member owns its copy
    x = front(inputs)
    x = RECIPES[recipe](x, keras)
    outputs = keras.layers.Dense(n_classes, activation="softmax", dtype="float32", name="probs")(x)
    return keras.Model(inputs, outputs, name=name)
