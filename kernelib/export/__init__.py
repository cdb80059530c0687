"""Export a model in every format a deployment target reads, each verified by its own runtime.

| format | written with | verified with | passes when |
|---|---|---|---|
| `keras` | `model.save` | `keras.saving.load_model` (safe mode) | max abs diff <= 1e-6 |
| `saved_model` | `model.export(format="tf_saved_model")` into `<name>/<version>/` | `tf.saved_model.load`, `serving_default` | <= 1e-5 |
| `tflite` | LiteRT converter on that SavedModel, float32 | `ai_edge_litert` interpreter | <= 1e-4 |
| `tflite_fp16` | float16 weights | LiteRT | top-1 agreement >= 99.5% |
| `tflite_dynamic` | dynamic-range int8 weights | LiteRT | top-1 agreement >= 99% |
| `tflite_int8` | full int8, representative rows from the train split | LiteRT | accuracy drop <= 1 point |
| `onnx` | tf2onnx on the frozen inference function | `onnxruntime` | <= 1e-4 |

Each artifact is written under a temporary name, verified in a separate Python process that
imports only the format's runtime (`python -m kernelib.export predict ...`), and renamed into
place only when it passes, so a failing export never replaces anything. The verifying process
also times the artifact (median batch-1 latency, batch-256 throughput). TFLite files must use
builtin ops only. Augmentation layers are training-only: they are removed before export.

Example::

    manifest = export(model, "export", ["keras", "tflite_int8", "onnx"], name="digits",
                      version=1, test=(x_test, y_test), calibration_data=x_train[:200],
                      class_names=names)
    manifest.table()

| module | holds |
|---|---|
| `formats` | `FORMATS`, `CRITERIA`, where each format's file goes |
| `inference` | the model as exported (float32, no augmentation) and its reference predictions |
| `writers` | one writer per format |
| `verification` | `verify`: each file run by its own runtime in a fresh process |
| `records` | `exports.json` and `labels.json` |
| `api` | `export()` and the `ExportManifest` it returns |
| `quantization` | `compare_quantization`: Keras' int8 next to the TFLite variants |
"""

from kernelib.export.api import ExportManifest, export
from kernelib.export.formats import CRITERIA, FORMATS, artifact_path, check_formats
from kernelib.export.inference import inference_model, reference_predictions
from kernelib.export.quantization import compare_quantization
from kernelib.export.records import EXPORTS_FILE
from kernelib.export.verification import figures, run_runtime, verify

__all__ = [
    "CRITERIA", "EXPORTS_FILE", "FORMATS", "ExportManifest", "artifact_path", "check_formats",
    "compare_quantization", "export", "figures", "inference_model", "reference_predictions",
    "run_runtime", "verify",
]
