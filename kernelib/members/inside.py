"""Looking inside a Keras model: its nested layers, augmentation layers, final layer, output
kind and penultimate features."""

from __future__ import annotations

from kernelib.errors import MemberError

# Keras augmentation layers that are not named Random* (those all are).
_AUGMENTATION = ("AugMix", "CutMix", "MixUp", "RandAugment", "Solarization")
CLASS_ORDER = "_class_order"  # the suffix of adapt's output reordering layer


def named_layers(model, prefix: str = ""):
    """`(path, layer)` for every layer inside `model`, nested models and their layers included
    (depth first); paths name the nested models (`backbone/conv1`)."""
    for layer in getattr(model, "layers", []):
        yield prefix + layer.name, layer
        yield from named_layers(layer, f"{prefix}{layer.name}/")


def walk_layers(model):
    """Every layer inside `model`, nested models and their layers included (depth first)."""
    return (layer for _, layer in named_layers(model))


def is_opaque(model) -> bool:
    """True when `model` holds a `TFSMLayer` (a SavedModel kernelib cannot look inside)."""
    return any(type(layer).__name__ == "TFSMLayer" for layer in walk_layers(model))


def is_augmentation(layer) -> bool:
    """A Keras augmentation layer (training-only: Random*, AugMix, CutMix, MixUp, ...)."""
    cls = type(layer)
    return cls.__module__.startswith("keras") and (
        cls.__name__.startswith("Random") or cls.__name__ in _AUGMENTATION)


def augmentation_layers(model) -> list[str]:
    """Names of the augmentation layers inside `model` (nested models included)."""
    return [layer.name for layer in walk_layers(model) if is_augmentation(layer)]


def without_augmentation(model):
    """`model` with its augmentation layers (nested ones too) replaced by identities.

    The other layers are shared, not copied (same weights). A model without augmentation
    comes back as it is.
    """
    import keras

    if not any(is_augmentation(layer) for layer in walk_layers(model)):
        return model

    def replace(layer):
        return keras.layers.Identity(name=layer.name) if is_augmentation(layer) else layer

    try:
        stripped = keras.models.clone_model(model, clone_function=replace, recursive=True)
    except Exception as err:  # subclassed models cannot be cloned layer by layer
        raise MemberError(
            f"member '{model.name}' holds augmentation layers, which are training-only, and "
            f"kernelib could not remove them ({type(err).__name__}: {str(err).splitlines()[0]}). "
            "Save the member without its augmentation layers (they belong to the data pipeline)."
        ) from err
    stripped.name = model.name
    return stripped


def final_layer(model):
    """The layer that computes `model`'s output, looking into nested models."""
    layer = model.outputs[0]._keras_history.operation
    return final_layer(layer) if getattr(layer, "outputs", None) else layer


def output_kind(model) -> str | None:
    """'probabilities' (a final softmax), 'logits' (a final linear layer) or None (cannot tell)."""
    if getattr(model, "outputs", None) is None:
        return None
    layer = final_layer(model)
    if type(layer).__name__ == "Softmax":
        return "probabilities"
    activation = getattr(layer, "activation", None)
    name = getattr(activation, "__name__", None)
    return {"softmax": "probabilities", "linear": "logits"}.get(name)


def features(model, name: str | None = None):
    """`model` up to its penultimate features: the input of its final classifier layer.

    Nested models (an adapted member, a member wrapping a backbone) are looked into, and
    final layers without weights (a `Softmax` after logits) or adapt's class reordering are
    stepped over. For a flat model the result shares its layers (same weights).
    """
    import keras

    name = name or f"{model.name}_features"
    tensor, nested = _penultimate(model)
    if nested is None:
        return keras.Model(model.inputs, tensor, name=name)
    inputs = keras.Input(shape=tuple(model.input_shape[1:]), name=f"{name}_input")
    x = inputs
    if tensor is not model.inputs[0]:  # layers between the input and the nested model
        x = keras.Model(model.inputs, tensor, name=f"{name}_front")(x, training=False)
    x = features(nested, f"{name}_inner")(x, training=False)
    return keras.Model(inputs, x, name=name)


def _penultimate(model):
    """(tensor, None): the input of `model`'s final weighted layer; or (tensor, nested): a
    nested model computes the output from `tensor`."""
    tensor = model.outputs[0]
    while True:
        history = tensor._keras_history
        op = history.operation
        (inner,) = op._inbound_nodes[history.node_index].input_tensors
        if getattr(op, "outputs", None):
            return inner, op
        if op.weights and not op.name.endswith(CLASS_ORDER):
            return inner, None
        tensor = inner
