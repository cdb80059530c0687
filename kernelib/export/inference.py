"""The model as exported (float32, no augmentation layers) and its reference predictions."""

from __future__ import annotations

import numpy as np

from kernelib import runtimes
from kernelib.errors import ExportError
from kernelib.export.formats import BATCH
from kernelib.export.writers import quiet_logs
from kernelib.members import augmentation_layers, is_augmentation, walk_layers

_LOW_PRECISION = ("mixed_float16", "mixed_bfloat16", "float16", "bfloat16")


def inference_model(model):
    """`model` as exported: float32 throughout, augmentation layers removed.

    Mixed or half precision policies become float32 (same weights): the deployment formats
    get float32 graphs, and `tflite_fp16` is the half-precision one. Augmentation layers
    become identities (weights shared). Returns `(model, changes)`, `changes` a list of
    sentences saying what was done. Raises ExportError when the model holds augmentation
    layers but is not a functional or Sequential model, so they cannot be removed.
    """
    changes = []
    low = sorted({layer.dtype_policy.name for layer in [model, *walk_layers(model)]}
                 & set(_LOW_PRECISION))
    if low:
        model = _as_float32(model)
        changes.append(f"computes in float32 (the model used the {low} dtype policies)")
    found = augmentation_layers(model)
    if found:
        model = _without_augmentation(model, found)
        changes.append(f"augmentation layers {found} removed (training-only)")
    return model, changes


def _as_float32(model):

    def fix(obj):
        if isinstance(obj, dict):
            if obj.get("class_name") == "DTypePolicy" and obj["config"]["name"] in _LOW_PRECISION:
                return {**obj, "config": {**obj["config"], "name": "float32"}}
            return {k: ("float32" if k == "dtype" and v in _LOW_PRECISION else fix(v))
                    for k, v in obj.items()}
        return [fix(v) for v in obj] if isinstance(obj, list) else obj

    try:
        clone = type(model).from_config(fix(model.get_config()))
        clone.set_weights(model.get_weights())
    except Exception as err:  # subclassed models without a complete get_config
        raise ExportError(
            f"the model computes in reduced precision and kernelib could not rebuild it in "
            f"float32 ({type(err).__name__}: {str(err).splitlines()[0][:200]}). Rebuild it "
            "under keras.mixed_precision.set_global_policy('float32'), load its weights, and "
            "export that."
        ) from err
    return clone


def _without_augmentation(model, found: list[str]):
    import keras

    def replace(layer):
        if not is_augmentation(layer):
            return layer
        # no dtype argument: a DTypePolicy object made the clone fail to save as .keras
        return keras.layers.Identity(name=layer.name)

    try:
        stripped = keras.models.clone_model(model, clone_function=replace, recursive=True)
    except Exception as err:  # subclassed models cannot be cloned layer by layer
        raise ExportError(
            f"the model holds augmentation layers {found}; they are training-only and are not "
            "exported (tf2onnx cannot convert their random ops for ONNX, and LiteRT would "
            f"need select-TF ops), but kernelib could not remove them ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:200]}). Build the inference model without them "
            "(augmentation belongs to the training data pipeline) and export that."
        ) from err
    left = augmentation_layers(stripped)
    if left:
        raise ExportError(f"could not remove augmentation layers {left} from the model; build "
                          "the inference model without them and export that.")
    return stripped


def one_input_output(model) -> tuple[int, ...]:
    if getattr(model, "inputs", None) is None:
        found = augmentation_layers(model)
        if found:  # the more useful of the two reasons: it says what to leave out
            _without_augmentation(model, found)  # raises: a subclassed model cannot be cloned
        raise ExportError(
            f"kernelib exports functional or Sequential models, whose input is known; "
            f"received a subclassed model '{model.name}'. Wrap it first: "
            "inputs = keras.Input(shape); model = keras.Model(inputs, model(inputs))."
        )
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ExportError(f"an exported model takes one input and returns one output; received "
                          f"{len(model.inputs)} inputs and {len(model.outputs)} outputs.")
    return tuple(model.input_shape[1:])


def reference_predictions(model, x: np.ndarray) -> np.ndarray:
    """The in-memory model's probabilities on `x`, in the batches the verifier uses (float32).

    Computed on the CPU, where the verifying processes run too: a GPU's TF32 matrix
    products would differ from every CPU runtime by more than the tolerances.
    """
    from kernelib.train import import_tensorflow

    tf = import_tensorflow()
    runner = runtimes.Runner("keras", tuple(model.input_shape[1:]),
                             runtimes.keras_function(model, tf))
    # one new tf.function per model: TensorFlow warns about "retracing"
    with quiet_logs(), tf.device("/CPU:0"):
        return runtimes.predict_batched(runner, np.asarray(x, "float32"), batch_size=BATCH)
