"""Each export format run by its own runtime, called directly (not through kernelib), and the
parity figures recomputed with NumPy: what the export tests hold kernelib's records against."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def predict_direct(path: Path, fmt: str, x: np.ndarray) -> np.ndarray:
    """Probabilities of the exported file at `path` on `x`, from the format's own runtime."""
    x = np.asarray(x, dtype="float32")
    if fmt == "onnx":
        import onnxruntime as ort

        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return sess.run(None, {sess.get_inputs()[0].name: x})[0]
    if fmt.startswith("tflite"):
        from ai_edge_litert.interpreter import Interpreter

        it = Interpreter(model_path=str(path))
        inp = it.get_input_details()[0]
        it.resize_tensor_input(inp["index"], list(x.shape))
        it.allocate_tensors()
        it.set_tensor(inp["index"], x)
        it.invoke()
        return it.get_tensor(it.get_output_details()[0]["index"])
    if fmt == "saved_model":
        import tensorflow as tf

        serve = tf.saved_model.load(str(path)).signatures["serving_default"]
        (arg,) = serve.structured_input_signature[1]
        return next(iter(serve(**{arg: tf.constant(x)}).values())).numpy()
    import keras  # keras, h5

    from kernelib.layers import CUSTOM_OBJECTS  # the registry only, no kernelib computation

    model = keras.saving.load_model(path, compile=False, custom_objects=CUSTOM_OBJECTS)
    return model.predict(x, verbose=0)


def parity(got: np.ndarray, reference: np.ndarray, y: np.ndarray | None = None) -> dict:
    """max |got - reference|, top-1 agreement and (with labels) the accuracy drop."""
    got, reference = np.asarray(got, "float64"), np.asarray(reference, "float64")
    out = {"max_abs_diff": float(np.abs(got - reference).max()),
           "top1_agreement": float(np.mean(got.argmax(1) == reference.argmax(1)))}
    if y is not None:
        out["accuracy"] = float(np.mean(got.argmax(1) == y))
        out["accuracy_drop"] = float(np.mean(reference.argmax(1) == y)) - out["accuracy"]
    return out


def assert_record_agrees(entry: dict, mine: dict, rows: int) -> None:
    """The recorded criterion and parity match the recomputed figure (up to the float32
    noise of a differently batched reference, or one row's top-1 flip) and pass."""
    criterion, tolerance = entry["criterion"], entry["tolerance"]
    slack = 2e-6 if criterion == "max_abs_diff" else 1.0 / rows + 1e-12
    assert abs(entry[criterion] - mine[criterion]) <= slack, (entry["format"], criterion)
    assert abs(entry["parity"] - mine[criterion]) <= slack, entry["format"]
    if criterion == "top1_agreement":
        assert mine[criterion] >= tolerance - slack, entry["format"]
    else:
        assert mine[criterion] <= tolerance + slack, entry["format"]
