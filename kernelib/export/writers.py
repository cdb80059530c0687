"""One writer per format: `.keras`/`.h5`, SavedModel, the LiteRT converter's variants, tf2onnx."""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path

import numpy as np

from kernelib.errors import ExportError


def write_file(model, fmt: str, dest: Path, *, saved_model: str | Path | None = None,
                calibration_data: np.ndarray | None = None) -> Path:
    with quiet_logs():
        if fmt in ("keras", "h5"):  # h5: legacy HDF5, by the suffix
            model.save(dest)
            if fmt == "h5":
                _check_h5_loads(dest)
        elif fmt == "saved_model":
            model.export(str(dest), format="tf_saved_model", verbose=False)
        elif fmt == "onnx":
            _write_onnx(model, dest)
        else:
            dest.write_bytes(_convert_tflite(Path(saved_model), fmt, calibration_data))
    return dest


def _check_h5_loads(path: Path) -> None:
    """Legacy HDF5 cannot hold every model Keras 3 builds; say why instead of a verifier's tail."""
    from kernelib.members import load_keras

    try:
        load_keras(path)
    except Exception as err:  # Keras' legacy loader raises anything
        raise ExportError(
            f"the legacy HDF5 format (h5) cannot hold this model: Keras' legacy loader fails "
            f"to read it back ({type(err).__name__}: {str(err).splitlines()[0]}). Known "
            "case: MobileNetV3 backbones (scalar operations in their graph). Export it as "
            "'keras' (or saved_model, onnx, tflite), or leave 'h5' out of export.formats."
        ) from err


@contextlib.contextmanager
def quiet_logs():
    """TensorFlow's and tf2onnx's INFO and WARNING lines and NumPy-2 FutureWarnings off."""
    loggers = [logging.getLogger(n) for n in ("tensorflow", "tf2onnx")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _convert_tflite(saved_model: Path, fmt: str, calibration_data: np.ndarray | None) -> bytes:
    from kernelib.train import _quiet_stderr, import_tensorflow

    tf = import_tensorflow()
    conv = tf.lite.TFLiteConverter.from_saved_model(str(saved_model),
                                                    signature_keys=["serving_default"])
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if fmt != "tflite":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    if fmt == "tflite_fp16":
        conv.target_spec.supported_types = [tf.float16]
    elif fmt == "tflite_int8":
        rows = calibration_rows(calibration_data)
        conv.representative_dataset = lambda: ([rows[i:i + 1]] for i in range(len(rows)))
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    try:
        with _quiet_stderr():
            return conv.convert()
    except Exception as err:  # the converter raises ConverterError and others
        raise ExportError(f"{fmt}: the LiteRT converter could not convert the model with "
                          f"builtin ops only ({type(err).__name__}: "
                          f"{str(err).strip().splitlines()[0][:300]})") from err


def calibration_rows(calibration_data: np.ndarray | None) -> np.ndarray:
    if calibration_data is None or len(calibration_data) == 0:
        raise ExportError("tflite_int8 needs a representative dataset to set its int8 ranges: "
                          "pass calibration_data (e.g. 200 rows of the train split, raw "
                          "inputs); received none.")
    return np.asarray(calibration_data, dtype="float32")


def _write_onnx(model, dest: Path) -> None:
    """tf2onnx on the model's inference function with every captured tensor frozen in.

    `model.export(format="onnx")` leaves constants captured by the traced function (those
    of `Normalization(mean=..., variance=...)`, for example) as extra graph inputs, so
    onnxruntime refuses to run it; freezing the concrete function first makes them constants.
    """
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    from kernelib.train import import_tensorflow

    tf = import_tensorflow()
    import tf2onnx
    from keras.src.export.tf2onnx_lib import patch_tf2onnx  # tf2onnx fixes for NumPy 2

    patch_tf2onnx()
    spec = tf.TensorSpec((None, *model.input_shape[1:]), tf.float32,
                         name=model.inputs[0].name or "input")
    frozen = convert_variables_to_constants_v2(
        tf.function(lambda x: model(x, training=False)).get_concrete_function(spec))

    @tf.function(input_signature=[spec])
    def serve(x):
        return {"probs": frozen(x)[0]}

    tf2onnx.convert.from_function(serve, input_signature=[spec], output_path=str(dest))
