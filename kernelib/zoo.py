"""Member recipes: small classifiers for the built-in data and `keras.applications` backbones.

Every recipe puts the run's preprocessing model in front (so a member takes raw inputs),
names its penultimate layer `features` and ends in a float32 softmax layer `probs`
(float32 even under mixed precision).

Backbones (`mobilenet_v3_small`, `efficientnet_b0`, `vgg16`, `resnet50`) get a resizing front: the
preprocessed image is upsampled (bilinear, by a whole factor) to `image_size` x
`image_size` (default 32, the smallest size these networks accept) and a one-channel
image is repeated to three channels, so
8x8x1 digits work and a local ImageNet `.weights.h5` file fits. Without a weights file the
backbone starts from a random initialisation (no download ever happens).

Soup ingredients: `finetune(base, ...)` builds a member of the base's recipe that starts
from the base's trained weights (a member spec's `finetune_from`), so several fine-tunes
share one initialisation and can be weight-averaged.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from kernelib.errors import ConfigError
from kernelib.fronts import front_layers


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


def _convnet(x, keras, *, filters=(32, 64), kernel=3, batch_norm=False):
    """Conv (+BN) + pooling blocks, then a dense `features` layer: the "2 Conv+pooling" family of
    the Fashion-MNIST benchmark table, cheap at 28x28 because every block halves the image."""
    for f in filters:
        x = keras.layers.Conv2D(f, kernel, padding="same", use_bias=not batch_norm,
                                activation=None if batch_norm else "relu")(x)
        if batch_norm:
            x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM)(x)
            x = keras.layers.Activation("relu")(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dropout(0.3)(x)
    return keras.layers.Dense(128, activation="relu", name="features")(x)


RECIPES: dict[str, Callable] = {
    "mlp": _mlp, "cnn": _cnn, "resnet": _resnet,
    "convnet": _convnet,
    "convnet5": lambda x, keras: _convnet(x, keras, filters=(24, 48), kernel=5),
    "convnet_bn": lambda x, keras: _convnet(x, keras, filters=(48, 96), batch_norm=True),
    "convnet3": lambda x, keras: _convnet(x, keras, filters=(32, 64, 128)),
}

# keras.applications constructor and its keyword arguments for a headless, pooled backbone.
BACKBONES: dict[str, tuple[str, dict]] = {
    "mobilenet_v3_small": ("MobileNetV3Small", {"include_preprocessing": False}),
    "efficientnet_b0": ("EfficientNetB0", {}),
    "vgg16": ("VGG16", {}),
    "resnet50": ("ResNet50", {}),
}
# Each backbone's own input convention (keras.applications' preprocess_input), used in front
# of a pretrained or frozen backbone; "0..255" = raw pixels (EfficientNet rescales inside).
CONVENTIONS = {"mobilenet_v3_small": "tf", "efficientnet_b0": "0..255", "vgg16": "caffe",
               "resnet50": "caffe"}
DEFAULT_IMAGE_SIZE = 32
BN_MOMENTUM = 0.9


def _backbone(x, keras, *, recipe: str, image_size: int, weights: str | None,
              trainable: bool = True, value_range: tuple[float, float] | None = None):
    constructor, kwargs = BACKBONES[recipe]
    height, width = x.shape[1:3]
    if height != width or image_size % height:
        raise ConfigError(
            f"backbone recipe '{recipe}' resizes square images by a whole factor; received "
            f"{height}x{width} images and image_size={image_size}. Use a multiple of "
            f"{height} (e.g. {height * max(1, -(-32 // height))})."
        )
    # UpSampling2D, not Resizing: with Resizing in front of a nested backbone, the exported
    # SavedModel computed different outputs from the Keras model (Keras 3.15, measured)
    x = keras.layers.UpSampling2D(image_size // height, interpolation="bilinear",
                                  name="resize")(x)
    if x.shape[-1] == 1:
        x = keras.layers.Concatenate(name="to_rgb")([x, x, x])
    if x.shape[-1] != 3:
        raise ConfigError(f"backbone recipe '{recipe}' needs 1- or 3-channel images; received "
                          f"{x.shape[-1]} channels. Use a recipe from {sorted(RECIPES)}.")
    if value_range is not None:  # raw pixels -> the backbone's own convention
        x = _convention(x, keras, recipe, value_range)
    backbone = getattr(keras.applications, constructor)(
        input_shape=(image_size, image_size, 3), include_top=False, weights=weights,
        pooling="avg", **kwargs)
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            # ImageNet momenta (0.99-0.999) leave the moving statistics near their start after
            # the few hundred steps a small dataset gives: validation then sees chance level
            layer.momentum = BN_MOMENTUM
    backbone.trainable = trainable
    x = backbone(x, training=False) if not trainable else backbone(x)
    x = keras.layers.Dropout(0.2)(x)
    return keras.layers.Dense(64, activation="relu", name="features")(x)


def _convention(x, keras, recipe: str, value_range: tuple[float, float]):
    lo, hi = value_range
    if CONVENTIONS[recipe] == "0..255":
        return keras.layers.Rescaling(255.0 / (hi - lo), offset=-255.0 * lo / (hi - lo),
                                      name="to_0_255")(x)
    shape = tuple(x.shape[1:])
    for layer in front_layers(shape, shape, preprocess=CONVENTIONS[recipe],
                              value_range=value_range, name=recipe):
        x = layer(x)
    return x


def build(recipe: str, *, preprocessor, n_classes: int, name: str, seed: int = 0,
          image_size: int | None = None, weights: str | None = None, trainable: bool = True,
          value_range: tuple[float, float] = (0.0, 255.0)):
    """Build an untrained member: preprocessing -> recipe body -> `features` -> softmax `probs`.

    `preprocessor` is the run's preprocessing `keras.Model` (its input shape is the member's).
    `image_size`, `weights` (a local `.weights.h5` file) and `trainable` apply to backbone
    recipes only. A pretrained (`weights`) or frozen (`trainable=False`) backbone takes the
    raw input (in `value_range`) through its own convention (`CONVENTIONS`) instead of the
    run's normalisation, as its weights expect; a frozen one runs in inference mode and only
    the new head trains.
    """
    import keras

    valid = sorted(RECIPES) + sorted(BACKBONES)
    if recipe not in valid:
        raise ConfigError(f"unknown recipe '{recipe}'; valid recipes: {valid}")
    if recipe not in BACKBONES and (image_size or weights or not trainable):
        raise ConfigError(f"'image_size' and 'weights' apply to backbone recipes "
                          f"{sorted(BACKBONES)} only; received recipe '{recipe}'.")
    if weights is not None and not Path(weights).is_file():
        raise ConfigError(f"backbone weights file not found: expected a local .weights.h5 "
                          f"file, received '{weights}'. Give an existing file or weights=None.")
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=preprocessor.input_shape[1:], name="image")
    pretrained = recipe in BACKBONES and (weights is not None or not trainable)
    # each member owns its copy of the run's normalisation
    x = inputs if pretrained else keras.models.clone_model(preprocessor)(inputs)
    if recipe in BACKBONES:
        x = _backbone(x, keras, recipe=recipe, image_size=image_size or DEFAULT_IMAGE_SIZE,
                      weights=weights, trainable=trainable,
                      value_range=value_range if pretrained else None)
    else:
        x = RECIPES[recipe](x, keras)
    outputs = keras.layers.Dense(n_classes, activation="softmax", dtype="float32", name="probs")(x)
    return keras.Model(inputs, outputs, name=name)


def finetune(base, recipe: str, *, preprocessor, n_classes: int, name: str, seed: int = 0,
             image_size: int | None = None, trainable: bool = True,
             value_range: tuple[float, float] = (0.0, 255.0)):
    """A member of `recipe` that starts from the trained `base` member's weights (an ingredient).

    The architecture is rebuilt from the recipe (so it is the base's), then every weight is
    copied from `base`; `seed` still sets dropout and, in training, the data order.
    """
    model = build(recipe, preprocessor=preprocessor, n_classes=n_classes, name=name, seed=seed,
                  image_size=image_size, trainable=trainable, value_range=value_range)
    mine, theirs = model.get_weights(), base.get_weights()
    shapes = [w.shape for w in mine], [w.shape for w in theirs]
    if shapes[0] != shapes[1]:
        raise ConfigError(f"member '{name}' cannot start from '{base.name}': a '{recipe}' member "
                          f"has weight shapes {shapes[0][:3]}..., '{base.name}' has "
                          f"{shapes[1][:3]}... Fine-tune from a member of the same recipe.")
    model.set_weights(theirs)
    return model
