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
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kernelib import io, paths, runtimes
from kernelib.errors import ExportError
from kernelib.members import augmentation_layers, is_augmentation  # one definition of both

FORMATS = ("keras", "saved_model", "tflite", "tflite_fp16", "tflite_dynamic", "tflite_int8",
           "onnx", "h5")
# format -> (figure it is judged by, tolerance); "max" figures must stay at or below it.
CRITERIA: dict[str, tuple[str, float]] = {
    "keras": ("max_abs_diff", 1e-6),
    "saved_model": ("max_abs_diff", 1e-5),
    "tflite": ("max_abs_diff", 1e-4),
    "tflite_fp16": ("top1_agreement", 0.995),
    "tflite_dynamic": ("top1_agreement", 0.99),
    "tflite_int8": ("accuracy_drop", 0.01),
    "onnx": ("max_abs_diff", 1e-4),
    "h5": ("max_abs_diff", 1e-6),
}
_AT_MOST = ("max_abs_diff", "accuracy_drop")
_FILE_SUFFIX = {"keras": ".keras", "tflite": ".tflite", "tflite_fp16": "_fp16.tflite",
                "tflite_dynamic": "_dynamic.tflite", "tflite_int8": "_int8.tflite",
                "onnx": ".onnx", "h5": ".h5"}
# Keras augmentation layers that are not named Random* (those all are).
_LOW_PRECISION = ("mixed_float16", "mixed_bfloat16", "float16", "bfloat16")
_BATCH = 256
EXPORTS_FILE = "exports.json"  # one record per exported file: what export() verified and wrote


def check_formats(formats: Sequence[str]) -> list[str]:
    """Refuse unknown format names, listing the valid ones; drop repeats, keep the order."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ExportError(f"unknown export format(s) {unknown}; valid formats: {list(FORMATS)}")
    if not formats:
        raise ExportError(f"no export format given; valid formats: {list(FORMATS)}")
    return list(dict.fromkeys(formats))


def artifact_path(out_dir: str | Path, fmt: str, *, name: str, version: int) -> Path:
    """Where a format goes: `<name>/<version>/` (TF Serving) or `<name><suffix>` next to it.

    `name` must be one plain name and `version` a whole number >= 1, so the path stays
    inside `out_dir` (`paths.safe_name`, `paths.inside`).
    """
    check_formats([fmt])
    paths.safe_name(name, what="export name", error=ExportError)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ExportError(f"export version must be a whole number >= 1 (TF Serving's version "
                          f"folder); received {version!r}")
    if fmt == "saved_model":
        return paths.inside(out_dir, name, str(version), what="export name", error=ExportError)
    return paths.inside(out_dir, f"{name}{_FILE_SUFFIX[fmt]}", what="export name",
                        error=ExportError)


# ---------------------------------------------------------------------------- the model


def named_layers(model, prefix: str = ""):
    """`(path, layer)` for every layer inside `model`, nested models and their layers included
    (depth first); paths name the nested models (`backbone/conv1`)."""
    for layer in getattr(model, "layers", []):
        yield prefix + layer.name, layer
        yield from named_layers(layer, f"{prefix}{layer.name}/")


def walk_layers(model):
    """Every layer inside `model`, nested models and their layers included (depth first)."""
    return (layer for _, layer in named_layers(model))


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


def _one_input_output(model) -> tuple[int, ...]:
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
    with _quiet_logs(), tf.device("/CPU:0"):
        return runtimes.predict_batched(runner, np.asarray(x, "float32"), batch_size=_BATCH)


# ---------------------------------------------------------------------------- writers


def _write_file(model, fmt: str, dest: Path, *, saved_model: str | Path | None = None,
                calibration_data: np.ndarray | None = None) -> Path:
    with _quiet_logs():
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
def _quiet_logs():
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
        rows = _calibration_rows(calibration_data)
        conv.representative_dataset = lambda: ([rows[i:i + 1]] for i in range(len(rows)))
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    try:
        with _quiet_stderr():
            return conv.convert()
    except Exception as err:  # the converter raises ConverterError and others
        raise ExportError(f"{fmt}: the LiteRT converter could not convert the model with "
                          f"builtin ops only ({type(err).__name__}: "
                          f"{str(err).strip().splitlines()[0][:300]})") from err


def _calibration_rows(calibration_data: np.ndarray | None) -> np.ndarray:
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


# ---------------------------------------------------------------------------- verification


def figures(got: np.ndarray, reference: np.ndarray, y: np.ndarray | None = None) -> dict:
    """Parity of a runtime's outputs with the in-memory model, and accuracy when `y` is given."""
    got, reference = np.asarray(got, "float64"), np.asarray(reference, "float64")
    if got.shape != reference.shape:
        raise ExportError(f"the runtime returned shape {got.shape}; the Keras model returns "
                          f"{reference.shape}")
    out = {"max_abs_diff": float(np.max(np.abs(got - reference))),
           "top1_agreement": float(np.mean(got.argmax(1) == reference.argmax(1)))}
    if y is not None:
        y = np.asarray(y)
        out["accuracy"] = float(np.mean(got.argmax(1) == y))
        out["reference_accuracy"] = float(np.mean(reference.argmax(1) == y))
        out["accuracy_drop"] = out["reference_accuracy"] - out["accuracy"]
    return out


def verify(path: str | Path, fmt: str, *, x: np.ndarray, reference: np.ndarray,
           y: np.ndarray | None = None, repeats: int = 20) -> dict[str, Any]:
    """Run the artifact at `path` in a fresh process with its own runtime and judge it.

    Returns the figures (parity, accuracy, latency, throughput, TFLite ops). Raises
    ExportError naming the format and the figure when it misses its tolerance.
    """
    check_formats([fmt])
    criterion, tolerance = CRITERIA[fmt]
    if criterion == "accuracy_drop" and y is None:
        raise ExportError(f"{fmt} is judged by its accuracy drop on the test split; pass the "
                          "test labels (test=(x, y)).")
    entry: dict[str, Any] = {"format": fmt, "runtime": runtimes.RUNTIMES[runtimes.runtime_kind(fmt)],
                             "criterion": criterion, "tolerance": tolerance}
    if fmt.startswith("tflite"):
        entry["ops"] = _check_builtin_ops(Path(path), fmt)
    got, timing = run_runtime(path, fmt, x, repeats=repeats)
    entry |= figures(got, reference, y) | timing
    value = entry[criterion]
    passed = value <= tolerance if criterion in _AT_MOST else value >= tolerance
    if not passed:
        side = "above" if criterion in _AT_MOST else "below"
        raise ExportError(
            f"{fmt} export failed verification: {criterion} = {value:.4g}, {side} the "
            f"tolerance {tolerance:g} (runtime: {entry['runtime']}, '{path}'). The artifact "
            "does not compute what the Keras model computes; check the converter options."
        )
    entry["parity"] = value
    return entry


def _check_builtin_ops(path: Path, fmt: str) -> list[str]:
    try:
        ops = runtimes.tflite_ops(path)
    except Exception as err:  # flatbuffers raises anything on a damaged file
        raise ExportError(f"{fmt} export at '{path}' is not a readable TFLite file "
                          f"({type(err).__name__}); it may be truncated or corrupted.") from err
    bad = runtimes.non_builtin_ops(ops)
    if bad:
        raise ExportError(
            f"{fmt} export failed verification: builtin_ops; it uses ops a plain LiteRT "
            f"interpreter lacks: {bad} (Flex/select-TF or custom). Replace the layers that "
            "need them, or remove them from the inference model."
        )
    return ops


def run_runtime(path: str | Path, fmt: str, x: np.ndarray, *,
                repeats: int = 20) -> tuple[np.ndarray, dict[str, float]]:
    """Predictions and timings of the artifact, from a separate Python process."""
    with tempfile.TemporaryDirectory() as tmp:
        x_path, out_path, t_path = (Path(tmp) / n for n in ("x.npy", "out.npy", "timing.json"))
        np.save(x_path, np.asarray(x, dtype="float32"))
        proc = subprocess.run(
            [sys.executable, "-m", "kernelib.export", "predict", fmt, str(path), str(x_path),
             str(out_path), "--timing", str(t_path), "--repeats", str(repeats)],
            capture_output=True, text=True,  # on the CPU, as the reference (see there)
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""},
        )
        if proc.returncode != 0 or not out_path.exists():
            tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
            kind = runtimes.runtime_kind(fmt)
            raise ExportError(f"{fmt} export at '{path}' could not be loaded by its runtime "
                              f"({runtimes.RUNTIMES[kind]}) in a fresh process:\n{tail}")
        return np.load(out_path), json.loads(t_path.read_text())


# ---------------------------------------------------------------------------- export


@dataclass
class ExportManifest:
    """What `export` wrote: one verified entry per format (see `FORMATS`)."""

    name: str
    version: int
    out_dir: Path
    entries: list[dict[str, Any]]
    changes: list[str] = field(default_factory=list)  # what inference_model did

    def __getitem__(self, fmt: str) -> dict[str, Any]:
        for e in self.entries:
            if e["format"] == fmt:
                return e
        raise KeyError(f"format '{fmt}' was not exported; exported: {self.formats}")

    @property
    def formats(self) -> list[str]:
        return [e["format"] for e in self.entries]

    def path(self, fmt: str) -> Path:
        return self.out_dir / self[fmt]["path"]

    def records(self) -> list[dict[str, Any]]:
        """JSON-ready entries (what `export/exports.json` holds)."""
        return [dict(e) for e in self.entries]

    def table(self):
        """One row per format: size, parity against its tolerance, accuracy, speed."""
        import pandas as pd

        df = pd.DataFrame(self.entries).set_index("format")
        df["size_kib"] = (df["bytes"] / 1024).round(1)
        df["sha256"] = df["sha256"].str[:12]
        cols = ["size_kib", "criterion", "parity", "tolerance", "max_abs_diff",
                "top1_agreement", "accuracy", "accuracy_drop", "latency_ms",
                "throughput_per_s", "runtime", "path", "sha256"]
        return df[[c for c in cols if c in df.columns]]


def export(model, out_dir: str | Path, formats: Sequence[str] = ("keras", "saved_model"), *,
           name: str, version: int = 1, test: tuple[np.ndarray, np.ndarray | None] | None = None,
           calibration_data: np.ndarray | None = None, class_names: Sequence[str] | None = None,
           overwrite: bool = False, repeats: int = 20) -> ExportManifest:
    """Write `model` in each format under `out_dir` and verify each with its own runtime.

    `test` is `(x, y)` of the test split (raw inputs; `y` may be None except for
    `tflite_int8`). Without `test` the files are written but not verified: each record then
    says `"verified": false` and why, and `tflite_int8` (judged by its accuracy drop) is
    refused. `calibration_data` are raw train rows for `tflite_int8`. `class_names` and the
    input range of `x` go to `labels.json` for `kernelib predict`. An existing artifact is
    replaced only with `overwrite=True`; other SavedModel versions are never touched.
    `repeats` is how often each timing is repeated (median reported).

    `out_dir/exports.json` lists every file exported there with its sha256. Before a file is
    replaced its record (and a model card describing it) is removed, and the new record is
    added once the new file is in place, so after a crash at any point every listed file has
    the recorded sha256.
    """
    formats = check_formats(formats)
    out_dir = Path(out_dir)
    targets = {f: artifact_path(out_dir, f, name=name, version=version) for f in formats}
    if "tflite_int8" in formats:
        _calibration_rows(calibration_data)
        if test is None:
            raise ExportError("tflite_int8 is judged by its accuracy drop on test rows; pass "
                              "test=(x, y), or leave tflite_int8 out of the formats.")
    input_shape = _one_input_output(model)
    x, y = _test_rows(test, input_shape)
    exported, changes = inference_model(model)
    _check_targets(out_dir, targets, name=name, version=version, overwrite=overwrite)
    reference = reference_predictions(exported, x) if x is not None else None
    if exported is not model and x is not None:  # how far the exported model is from the given
        f = figures(reference, reference_predictions(model, x))
        changes.append(f"exported model vs the given one: max |difference| "
                       f"{f['max_abs_diff']:.2g}, top-1 agreement {f['top1_agreement']:.2%}")
    order = sorted(formats, key=lambda f: f != "saved_model")  # the TFLite formats convert it
    entries: dict[str, dict[str, Any]] = {}
    try:
        with tempfile.TemporaryDirectory() as scratch:
            source = None
            for fmt in order:
                if fmt.startswith("tflite") and source is None:
                    source = _write_file(exported, "saved_model", Path(scratch) / "saved_model")
                path = targets[fmt]
                with io.atomic_path(path) as tmp:
                    _write_file(exported, fmt, tmp, saved_model=source,
                                calibration_data=calibration_data)
                    entry = (verify(tmp, fmt, x=x, reference=reference, y=y, repeats=repeats)
                             if x is not None else _unverified(fmt))
                    entry |= {"name": name, "version": version,
                              "path": str(path.relative_to(out_dir)),
                              "bytes": io.size_bytes(tmp), "sha256": io.sha256(tmp)}
                    _record(out_dir, entry, drop=True)  # the old file's record goes first
                _record(out_dir, entry)
                if fmt == "saved_model":
                    source = path
                entries[fmt] = entry
        _order_records(out_dir, [entries[f]["path"] for f in formats])
    finally:  # record what did land, even when a later format fails
        if entries:
            _write_labels(out_dir, {f: targets[f] for f in entries}, name=name,
                          version=version, class_names=class_names, input_shape=input_shape,
                          input_range=(float(x.min()), float(x.max())) if x is not None
                          else None)
    return ExportManifest(name, version, out_dir, [entries[f] for f in formats], changes)


def _test_rows(test, input_shape: tuple[int, ...]) -> tuple[np.ndarray | None, Any]:
    """`(x, y)` checked against the model's input, or `(None, None)` without test rows."""
    if test is None:
        return None, None
    try:
        x, y = test
    except (TypeError, ValueError):
        raise ExportError(f"test must be a pair (x, y) of test rows and labels (y may be None); "
                          f"received {type(test).__name__}") from None
    x = np.asarray(x, dtype="float32")
    if x.ndim < 1 or len(x) == 0:
        raise ExportError(f"the test split is empty (x of shape {x.shape}); verification needs "
                          "test rows: pass the test split of the model's data, or test=None "
                          "to export without verification.")
    if tuple(x.shape[1:]) != input_shape:
        raise ExportError(f"the model takes inputs of shape {input_shape}; the test rows have "
                          f"shape {tuple(x.shape[1:])}. Pass the test split of its data.")
    if not np.isfinite(x).all():
        raise ExportError("the test rows hold NaN or infinite values; verification needs finite "
                          "raw inputs. Fix or drop those rows.")
    return x, y


def _unverified(fmt: str) -> dict[str, Any]:
    return {"format": fmt, "runtime": runtimes.RUNTIMES[runtimes.runtime_kind(fmt)],
            "verified": False,
            "note": "not verified: export() was called without test rows (pass test=(x, y))"}


def _order_records(out_dir: Path, order: list[str]) -> None:
    """This call's records in the order its formats were asked for, after the earlier ones."""
    path = out_dir / EXPORTS_FILE
    records = io.read_json(path)
    mine = {r["path"]: r for r in records if r["path"] in order}
    io.write_json(path, [r for r in records if r["path"] not in mine]
                  + [mine[p] for p in order if p in mine])


def _record(out_dir: Path, entry: dict[str, Any], *, drop: bool = False) -> None:
    """Add `entry` to `exports.json` (replacing the record of the same path); with `drop`,
    remove that path's record and the model card first, as the file is about to change."""
    from kernelib import modelcard

    path = out_dir / EXPORTS_FILE
    try:
        records = io.read_json(path) if path.is_file() else []
    except ValueError:
        records = []  # unreadable: rebuilt from what lands from now on
    records = [r for r in records if r.get("path") != entry["path"]
               and (out_dir / r.get("path", "")).exists()]
    if drop:
        for card in (modelcard.CARD_MD, modelcard.CARD_JSON):
            (out_dir / card).unlink(missing_ok=True)
    else:
        records.append(entry)
    io.write_json(path, records)


def _read_labels(out_dir: Path) -> dict[str, Any]:
    path = out_dir / runtimes.LABELS_FILE
    return io.read_json(path) if path.is_file() else {}


def _check_targets(out_dir: Path, targets: dict[str, Path], *, name: str, version: int,
                   overwrite: bool) -> None:
    """Refuse to replace existing artifacts unless `overwrite`; name the version they hold."""
    if overwrite:
        return
    held = _read_labels(out_dir).get("files", {})
    for fmt, path in targets.items():
        if not path.exists():
            continue
        if fmt == "saved_model":
            raise ExportError(
                f"'{path}' already exists; refusing to replace an exported {fmt} model (a "
                f"served version). Raise export.version (TF Serving then serves version "
                f"{version + 1}) or pass overwrite=True to replace version {version}."
            )
        rel = str(path.relative_to(out_dir))
        prev = held.get(rel, {}).get("version")
        if prev is not None and prev != version:
            raise ExportError(
                f"'{out_dir}' already holds version {prev} of '{name}' ({rel}); exporting "
                f"version {version} would replace it. Export into another folder, or pass "
                f"overwrite=True to replace the unversioned files (the SavedModel versions "
                f"under '{name}/' are never deleted)."
            )
        raise ExportError(f"'{path}' already exists; refusing to replace an exported {fmt} "
                          "model. Export into another folder or pass overwrite=True.")


def _write_labels(out_dir: Path, targets: dict[str, Path], *, name: str, version: int,
                  class_names: Sequence[str] | None, input_shape: tuple[int, ...],
                  input_range: tuple[float, float] | None) -> Path:
    """`labels.json`: class names and input range for `kernelib predict`, and file versions."""
    old = _read_labels(out_dir)
    files = {rel: v for rel, v in old.get("files", {}).items() if (out_dir / rel).exists()}
    files |= {str(p.relative_to(out_dir)): {"name": name, "version": version}
              for p in targets.values()}
    return io.write_json(out_dir / runtimes.LABELS_FILE, {
        "class_names": list(class_names) if class_names is not None else old.get("class_names"),
        "input_shape": list(input_shape),
        "input_range": list(input_range) if input_range else old.get("input_range"),
        "image_rule": "grayscale (1 channel) or RGB (3), resized to the input height x width "
                      "(area average), pixels 0..255 mapped linearly onto input_range",
        "files": files,
    })


# ---------------------------------------------------------------------------- quantization


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


# ---------------------------------------------------------------------------- verifying process


def _main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kernelib.export")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("predict", help="predict an .npy array with an exported artifact")
    p.add_argument("format", choices=FORMATS)
    p.add_argument("path")
    p.add_argument("inputs")
    p.add_argument("output")
    p.add_argument("--timing", default=None, help="also time it; write the figures here (JSON)")
    p.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args(argv)
    runner = runtimes.load(args.path, runtimes.runtime_kind(args.format))
    x = np.load(args.inputs)
    np.save(args.output, runtimes.predict_batched(runner, x, batch_size=_BATCH))
    if args.timing:
        Path(args.timing).write_text(json.dumps(runtimes.measure(runner, x, repeats=args.repeats,
                                                                 batch_size=_BATCH)))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
