"""Keras' own int8 quantization next to the exported TFLite variants."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np

from kernelib import io
from kernelib.export.api import ExportManifest
from kernelib.export.inference import reference_predictions
from kernelib.members import walk_layers


def compare_quantization(model, manifest: ExportManifest, test: tuple[np.ndarray, np.ndarray],
                         *, keras_int8: bool = True):
    """Keras' own `model.quantize("int8")` next to the TFLite variants of `manifest`.

    One row per variant: size, test accuracy and drop from the float Keras model. Keras
    quantizes Dense, EinsumDense and Embedding layers only; a model without them gets a row
    that says so. `keras_int8=False` leaves the Keras int8 row out.
    """
    import pandas as pd

    x, y = test
    # the export already predicted these rows and wrote the .keras file: reuse both
    ref_acc = next((e["reference_accuracy"] for e in manifest.entries
                    if "reference_accuracy" in e), None)
    if ref_acc is None:
        ref_acc = float(np.mean(reference_predictions(model, x).argmax(1) == y))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        float_path, int8_path = Path(tmp) / "float.keras", Path(tmp) / "int8.keras"
        if "keras" in manifest.formats:
            float_path = manifest.path("keras")
        else:
            model.save(float_path)
        rows.append({"variant": "keras float32", "runtime": "keras",
                     "bytes": io.size_bytes(float_path), "accuracy": ref_acc,
                     "note": "the model as exported"})
        if keras_int8:
            rows.append(_keras_int8_row(float_path, int8_path, x, y))
    notes = {"tflite": "float32", "tflite_fp16": "float16 weights",
             "tflite_dynamic": "int8 weights, float activations",
             "tflite_int8": "int8 weights and activations (calibrated on train rows)"}
    for e in manifest.entries:
        if e["format"] in notes:
            rows.append({"variant": e["format"], "runtime": "LiteRT", "bytes": e["bytes"],
                         "accuracy": e.get("accuracy"), "note": notes[e["format"]]})
    df = pd.DataFrame(rows).set_index("variant")
    df["size_kib"] = (df.pop("bytes") / 1024).round(1)
    df["accuracy_drop"] = ref_acc - df["accuracy"]
    return df[["runtime", "size_kib", "accuracy", "accuracy_drop", "note"]]


def _keras_int8_row(float_path: Path, int8_path: Path, x: np.ndarray, y: np.ndarray) -> dict:
    import keras

    row = {"variant": "keras int8 (model.quantize)", "runtime": "keras"}
    q = keras.saving.load_model(float_path, compile=False)
    supported = (keras.layers.Dense, keras.layers.EinsumDense, keras.layers.Embedding)
    n = sum(isinstance(layer, supported) for layer in walk_layers(q))
    if not n:
        return row | {"note": "no Dense, EinsumDense or Embedding layer to quantize"}
    with warnings.catch_warnings():  # one warning per layer that stays float
        warnings.filterwarnings("ignore", message=".*does not have a `quantize`")
        q.quantize("int8")
    q.save(int8_path)
    return row | {"bytes": io.size_bytes(int8_path),
                  "accuracy": float(np.mean(reference_predictions(q, x).argmax(1) == y)),
                  "note": f"{n} Dense/EinsumDense/Embedding layers int8, the rest float"}
