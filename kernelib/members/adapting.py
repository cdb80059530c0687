"""`adapt`: a member behind its front, a softmax for logits and its classes in the dataset's
order, so it takes the dataset's raw input and predicts the dataset's classes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kernelib.errors import IncompatibleMembersError, MemberError
from kernelib.fronts import fixed_dense, front_layers
from kernelib.members.inside import CLASS_ORDER, output_kind, without_augmentation

OUTPUTS = ("probabilities", "logits")


def input_shape_of(model, name: str) -> tuple[int, ...]:
    """The member's one input shape (without the batch axis); refuse several inputs/outputs."""
    if getattr(model, "inputs", None) is None:
        raise MemberError(f"member '{name}' is a subclassed model whose input is unknown; wrap "
                          "it first: inputs = keras.Input(shape); "
                          "model = keras.Model(inputs, model(inputs)).")
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise IncompatibleMembersError(
            f"member '{name}' must have one input and one output; received "
            f"{len(model.inputs)} inputs {model.input_shape} and {len(model.outputs)} outputs "
            f"{model.output_shape}. Wrap it in a model with one image input and one output.")
    return tuple(model.input_shape[1:])


def class_order(member_classes: Sequence[str] | None, dataset_classes: Sequence[str] | None,
                name: str) -> list[int] | None:
    """Index into the member's outputs for each dataset class (None: already in order)."""
    if member_classes is None:
        return None
    member_classes, dataset_classes = [str(c) for c in member_classes], list(dataset_classes or [])
    if sorted(member_classes) != sorted(dataset_classes) or len(set(member_classes)) != len(
            member_classes):
        raise IncompatibleMembersError(
            f"member '{name}': 'class_names' must be the dataset's classes, each once, in the "
            f"order the member predicts them; received {member_classes}, the dataset has "
            f"{dataset_classes}. Fix 'class_names' or drop the member.")
    order = [member_classes.index(c) for c in dataset_classes]
    return None if order == list(range(len(order))) else order


def adapt(model, raw_input_shape: Sequence[int], *, preprocess: str = "none",
          class_names: Sequence[str] | None = None,
          dataset_class_names: Sequence[str] | None = None, output: str | None = None,
          value_range: tuple[float, float] = (0.0, 255.0), name: str | None = None):
    """`model` behind a front that takes the dataset's raw input and predicts its classes in order.

    The front resizes to the member's input size, converts grey<->RGB, scales raw values
    (in `value_range`) to the member's `preprocess` convention (`keras.applications`':
    rescale = 0..1, tf = -1..1, caffe = BGR minus ImageNet means, torch = ImageNet mean/std;
    none = the raw values), adds a softmax when `output="logits"` (None: detected from the
    model's final layer) and reorders outputs from the member's `class_names` to
    `dataset_class_names`. Augmentation layers are removed and every layer runs with
    `training=False`. A model that needs none of this comes back without its augmentation.

    Example::

        cnn = members.adapt(keras.saving.load_model("cnn.keras"), (8, 8, 1),
                            preprocess="rescale", class_names=["1", "0", ...],
                            dataset_class_names=splits.class_names, value_range=(0, 16))
    """
    import keras

    name = name or model.name
    if output not in (None, *OUTPUTS):
        raise MemberError(f"member '{name}': 'output' must be one of {list(OUTPUTS)}; "
                          f"received {output!r}")
    raw_shape, shape = tuple(raw_input_shape), input_shape_of(model, name)
    model = without_augmentation(model)
    front = front_layers(raw_shape, shape, preprocess=preprocess, value_range=value_range,
                         name=name)
    softmax = (output or output_kind(model)) == "logits"
    order = class_order(class_names, dataset_class_names, name)
    if class_names is not None and len(class_names) != model.output_shape[-1]:
        raise IncompatibleMembersError(
            f"member '{name}' predicts {model.output_shape[-1]} classes but its 'class_names' "
            f"lists {len(class_names)}. Give one name per output, in the member's order.")
    if not front and not softmax and order is None:
        model.name = name
        return model
    inputs = keras.Input(shape=raw_shape, name=f"{name}_image")
    x = inputs
    for layer in front:
        # Resizing defaults to training=True, which a nested backbone then inherits (batch
        # norm in training mode: the exported SavedModel disagreed by 0.4): always say False
        x = layer(x, training=False)
    model.name = f"{name}_core"
    x = model(x, training=False)
    if softmax:
        x = keras.layers.Softmax(dtype="float32", name=f"{name}_softmax")(x)
    if order is not None:
        x = fixed_dense(np.eye(len(order))[order].T, f"{name}{CLASS_ORDER}")(x)
    return keras.Model(inputs, x, name=name)
