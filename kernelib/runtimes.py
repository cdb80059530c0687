"""Exported artifacts run by their own runtime, timed, and fed images for `kernelib predict`.

Only the format's runtime is imported (Keras, TensorFlow's `tf.saved_model`, `onnxruntime` or
`ai_edge_litert`), never kernelib's model code, so what runs here is what a deployment target
runs. The `.tflite` and `.onnx` paths do not import TensorFlow at all.

Example::

    runner = load("export/digits.onnx")
    probs = predict_batched(runner, x)                     # float32 (rows x classes)
    rows = predict_top_k("export/digits/1", "scans/", k=3)  # what `kernelib predict` prints

Images given to `predict` are mapped to the model input by one rule (`image_to_input`):
converted to grayscale (one channel) or RGB (three), resized to the input height x width with
Pillow's area-averaging `BOX` filter, and pixel values 0..255 mapped linearly onto the training
range recorded in `labels.json` (`input_range`; 0..16 for the built-in digits, where 0 is the
background and 16 full ink). Digits are light strokes on a dark background, so scans of dark
ink on white paper need `invert=True` (`--invert`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kernelib.errors import ConfigError, DataError, ExportError

RUNTIMES = {
    "keras": "keras.saving.load_model (safe_mode)",
    "saved_model": "tf.saved_model.load (serving_default)",
    "tflite": "ai_edge_litert Interpreter",
    "onnx": "onnxruntime InferenceSession",
}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
LABELS_FILE = "labels.json"


@dataclass
class Runner:
    """A loaded artifact: `fn` maps a float32 batch to class probabilities."""

    kind: str
    input_shape: tuple[int, ...]
    fn: Callable[[np.ndarray], np.ndarray]
    keep: Any = None  # objects the function needs alive (a loaded SavedModel)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.fn(np.ascontiguousarray(x, dtype="float32"))


def runtime_kind(fmt: str) -> str:
    """The runtime family of an export format (`tflite_int8` -> `tflite`)."""
    return "tflite" if fmt.startswith("tflite") else "keras" if fmt == "h5" else fmt


def detect_format(path: str | Path) -> tuple[str, Path]:
    """The runtime kind of an artifact path, and the path to load.

    A TF Serving model folder (`<name>/` holding numbered versions) resolves to its highest
    version, as TF Serving does.
    """
    path = Path(path)
    if not path.exists():
        raise ExportError(f"exported model not found: expected a .keras, .tflite or .onnx file "
                          f"or a SavedModel folder, received '{path}'")
    if path.is_dir():
        if (path / "saved_model.pb").is_file():
            return "saved_model", path
        versions = sorted((int(p.name), p) for p in path.iterdir()
                          if p.name.isdigit() and (p / "saved_model.pb").is_file())
        if versions:
            return "saved_model", versions[-1][1]
        raise ExportError(f"'{path}' is a folder without saved_model.pb or numbered version "
                          "folders; pass a SavedModel folder (e.g. export/digits/1).")
    kinds = {".keras": "keras", ".h5": "keras", ".tflite": "tflite", ".onnx": "onnx"}
    if path.suffix not in kinds:
        raise ExportError(f"cannot tell the format of '{path.name}'; valid: .keras, .h5, "
                          ".tflite, .onnx files or a SavedModel folder")
    return kinds[path.suffix], path


def load(path: str | Path, kind: str | None = None) -> Runner:
    """Load an exported artifact with its own runtime (format detected from the path if None)."""
    if kind is None:
        kind, path = detect_format(path)
    loaders = {"keras": _keras, "saved_model": _saved_model, "tflite": _tflite, "onnx": _onnx}
    if kind not in loaders:
        raise ExportError(f"unknown runtime '{kind}'; valid: {sorted(loaders)}")
    return loaders[kind](str(path))


def _quiet_stderr():
    from kernelib.train import _quiet_stderr

    return _quiet_stderr()


def _tensorflow():
    from kernelib.train import import_tensorflow  # TensorFlow without its start-up noise

    return import_tensorflow()


def _keras(path: str) -> Runner:
    tf = _tensorflow()

    from kernelib.members import load_keras

    model = load_keras(path)  # safe mode; a SavedModel member's TFSMLayer allowed
    return Runner("keras", tuple(model.input_shape[1:]), keras_function(model, tf), keep=model)


def keras_function(model, tf=None) -> Callable[[np.ndarray], np.ndarray]:
    """The model's inference pass as one `tf.function` over any batch size (traced once), to
    NumPy; a new one per call (not `predict_proba`'s cached one: the export's reference traces
    on the CPU). The caller keeps `model` alive (a `Runner`'s `keep`)."""
    from kernelib.inference import inference_function

    if tf is None:
        _tensorflow()  # imported quietly before `inference_function` imports it
    fn = inference_function(model)
    return lambda x: fn(x).numpy()


def _saved_model(path: str) -> Runner:
    tf = _tensorflow()

    loaded = tf.saved_model.load(path)
    if "serving_default" not in loaded.signatures:
        raise ExportError(f"SavedModel '{path}' has no 'serving_default' signature; "
                          f"it has {list(loaded.signatures)}")
    fn = loaded.signatures["serving_default"]
    (key, spec), = fn.structured_input_signature[1].items()

    def run(x: np.ndarray) -> np.ndarray:
        out = fn(**{key: tf.constant(x)})
        return next(iter(out.values())).numpy()

    return Runner("saved_model", tuple(spec.shape[1:]), run, keep=loaded)


def _tflite(path: str) -> Runner:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=path)
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    state = {"shape": None}

    def run(x: np.ndarray) -> np.ndarray:
        if state["shape"] != x.shape:
            it.resize_tensor_input(inp["index"], list(x.shape))
            with _quiet_stderr():  # LiteRT prints an INFO line about its CPU delegate
                it.allocate_tensors()
            state["shape"] = x.shape
        it.set_tensor(inp["index"], _quantize(x, inp))
        it.invoke()
        return _dequantize(it.get_tensor(out["index"]), out)

    return Runner("tflite", tuple(int(d) for d in inp["shape"][1:]), run, keep=it)


def _quantize(x: np.ndarray, detail: dict) -> np.ndarray:
    """Float input to an integer input tensor's scale and zero point (float passes through)."""
    dtype = np.dtype(detail["dtype"])
    if dtype.kind == "f":
        return x.astype(dtype)
    scale, zero = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale + zero), info.min, info.max).astype(dtype)


def _dequantize(y: np.ndarray, detail: dict) -> np.ndarray:
    if np.dtype(detail["dtype"]).kind == "f":
        return y.astype("float32")
    scale, zero = detail["quantization"]
    return ((y.astype("float32") - zero) * scale).astype("float32")


def _onnx(path: str) -> Runner:
    import onnxruntime as ort

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    inputs = sess.get_inputs()
    if len(inputs) != 1:
        raise ExportError(f"ONNX model '{path}' takes {len(inputs)} inputs "
                          f"{[i.name for i in inputs]}; a kernelib export takes exactly one.")
    name = inputs[0].name
    shape = tuple(int(d) for d in inputs[0].shape[1:])
    return Runner("onnx", shape, lambda x: sess.run(None, {name: x})[0], keep=sess)


def predict_batched(runner: Runner, x: np.ndarray, *, batch_size: int = 256,
                    seconds: list[float] | None = None) -> np.ndarray:
    """Probabilities for every row of `x`, in batches of `batch_size` (float32). With
    `seconds` (a list), the wall time of each full batch's call is appended to it."""
    parts = []
    for i in range(0, len(x), batch_size):
        t = time.perf_counter()
        parts.append(runner(x[i:i + batch_size]))
        if seconds is not None and len(parts[-1]) == batch_size:
            seconds.append(time.perf_counter() - t)
    return np.concatenate(parts).astype("float32")


WARM_UP = 3  # calls before a timing counts: tracing, allocation, thread pools


def measure(runner: Runner, x: np.ndarray, *, repeats: int, batch_size: int = 256,
            batch_seconds: list[float] | None = None) -> dict:
    """Median batch-1 latency (ms) and batch-`batch_size` throughput (rows/s) over `repeats`.

    `batch_seconds` are the times of full-batch calls already made (`predict_batched`'s
    `seconds`): when there are at least `repeats` after the first `WARM_UP`, the throughput is
    their median and no batch runs again (on a large test split, most of the time the
    verification of an ensemble took went to those repeated batches)."""
    one = x[:1]
    timed = list(batch_seconds or [])[WARM_UP:]
    if len(timed) >= repeats:
        throughput = batch_size / float(np.median(timed))
    else:
        big = np.resize(x, (batch_size, *x.shape[1:])).astype("float32")  # rows repeated
        throughput = batch_size / _median_seconds(runner, big, repeats)
    return {"latency_ms": 1e3 * _median_seconds(runner, one, repeats),
            "throughput_per_s": throughput, "timing_repeats": repeats}


def _median_seconds(runner: Runner, x: np.ndarray, repeats: int) -> float:
    for _ in range(WARM_UP):
        runner(x)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        runner(x)
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def tflite_ops(path: str | Path) -> list[str]:
    """Operator names in a `.tflite` file: builtin names, or the custom code (`FlexXxx`)."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAsModel(Path(path).read_bytes(), 0)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    ops = set()
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if builtin == schema.BuiltinOperator.CUSTOM:
            ops.add((code.CustomCode() or b"?").decode())
        else:
            ops.add(names.get(builtin, str(builtin)))
    return sorted(ops)


def non_builtin_ops(ops: list[str]) -> list[str]:
    """The ops of `tflite_ops` that a plain LiteRT interpreter lacks (Flex/select-TF, custom)."""
    from ai_edge_litert import schema_py_generated as schema

    builtin = {k for k in vars(schema.BuiltinOperator) if not k.startswith("_")} - {"CUSTOM"}
    return [op for op in ops if op not in builtin]


# ---------------------------------------------------------------------------- kernelib predict


def find_labels(path: str | Path) -> dict[str, Any] | None:
    """The `labels.json` written next to the exports: the artifact's folder or one above it."""
    path = Path(path).resolve()
    start = path if path.is_dir() else path.parent
    for folder in [start, *start.parents][:4]:  # covers export/<name>/<version>/
        f = folder / LABELS_FILE
        if f.is_file():
            return json.loads(f.read_text())
    return None


def image_to_input(image, input_shape: tuple[int, ...], input_range: tuple[float, float], *,
                   invert: bool = False) -> np.ndarray:
    """One PIL image as one model input row (see the module docstring for the rule)."""
    from PIL import Image

    h, w, c = input_shape
    if c not in (1, 3):
        raise DataError(f"images can feed models with 1 or 3 input channels; this model takes "
                        f"{c}. Pass an .npy array instead.")
    img = image.convert("L" if c == 1 else "RGB").resize((w, h), Image.Resampling.BOX)
    v = np.asarray(img, dtype="float32").reshape(h, w, c)
    if invert:
        v = 255.0 - v
    lo, hi = input_range
    return lo + (hi - lo) * v / 255.0


def read_inputs(source: str | Path, input_shape: tuple[int, ...], *,
                input_range: tuple[float, float] = (0.0, 255.0),
                invert: bool = False) -> tuple[list[str], np.ndarray]:
    """Rows for the model from an `.npy` array, one PNG/JPEG file, or a folder of them.

    Returns `(row labels, float32 array of shape (n, *input_shape))`.
    """
    source = Path(source)
    if not source.exists():
        raise DataError(f"input not found: expected an .npy file, an image or a folder of "
                        f"images, received '{source}'")
    if source.suffix == ".npy":
        return _read_npy(source, input_shape)
    files = ([source] if source.is_file() else
             sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
    if not files:
        raise DataError(f"no images in '{source}'; expected files ending in "
                        f"{list(IMAGE_SUFFIXES)}")
    if files[0].suffix.lower() not in IMAGE_SUFFIXES:
        raise DataError(f"cannot read '{source.name}': expected an .npy array or an image "
                        f"ending in {list(IMAGE_SUFFIXES)}")
    return [f.name for f in files], np.stack(
        [image_to_input(_open_image(f), input_shape, input_range, invert=invert)
         for f in files])


def _open_image(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            return img.copy()
    except Image.DecompressionBombError as err:
        raise DataError(f"image '{path}' is too large to decode safely ({err}); expected an "
                        "image of at most a few megapixels. Resize it first.") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(f"could not read image '{path}' ({type(err).__name__}: {err}); expected "
                        "a valid PNG or JPEG file. The file may be truncated or corrupted.") from None


def _read_npy(path: Path, input_shape: tuple[int, ...]) -> tuple[list[str], np.ndarray]:
    try:
        x = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise DataError(f"could not read '{path}' as a NumPy array ({err}); expected an .npy "
                        "file written by numpy.save.") from None
    x = np.asarray(x, dtype="float32")
    size = int(np.prod(input_shape))
    if x.size == 0 or x.size % size:
        raise DataError(f"'{path.name}' holds an array of shape {x.shape}; expected rows of shape "
                        f"{tuple(input_shape)} (or a single row).")
    x = x.reshape(-1, *input_shape)
    return [f"{path.name}[{i}]" for i in range(len(x))], x


def predict_top_k(export_path: str | Path, inputs: str | Path | np.ndarray, *, k: int = 3,
                  invert: bool = False) -> list[dict[str, Any]]:
    """Top-k classes with probabilities for every input row, with the exported artifact only.

    `inputs` is a path (see `read_inputs`) or an array of raw input rows. Class names and
    the input range come from `labels.json` next to the export when present (otherwise
    class indices, and images taken as 0..255).
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"--top-k (k) must be a whole number of at least 1; received {k!r}")
    kind, path = detect_format(export_path)
    meta = find_labels(path) or {}
    if not isinstance(inputs, np.ndarray) and not Path(inputs).exists():
        raise DataError(f"input not found: expected an .npy file, an image or a folder of "
                        f"images, received '{inputs}'")
    runner = load(path, kind)
    if isinstance(inputs, np.ndarray):
        x = np.asarray(inputs, dtype="float32").reshape(-1, *runner.input_shape)
        names = [f"row {i}" for i in range(len(x))]
    else:
        names, x = read_inputs(inputs, runner.input_shape,
                               input_range=tuple(meta.get("input_range") or (0.0, 255.0)),
                               invert=invert)
    bad = [names[i] for i in np.flatnonzero(~np.isfinite(x).reshape(len(x), -1).all(axis=1))]
    if bad:
        source = "the array" if isinstance(inputs, np.ndarray) else f"'{inputs}'"
        raise DataError(f"inputs {bad[:5]}{' ...' if len(bad) > 5 else ''} hold NaN or infinite "
                        f"values ({len(bad)} of {len(x)} rows of {source}); expected finite raw "
                        "values. Fix or drop those rows.")
    probs = predict_batched(runner, x)
    classes = meta.get("class_names") or [str(i) for i in range(probs.shape[1])]
    k = min(k, probs.shape[1])
    rows = []
    for name, p in zip(names, probs, strict=True):
        top = np.argsort(-p, kind="stable")[:k]
        rows.append({"input": name, "top": [(classes[i], float(p[i])) for i in top]})
    return rows


def format_top_k(rows: list[dict[str, Any]]) -> str:
    """The lines `kernelib predict` prints: input, then class (probability) best first."""
    width = max(len(r["input"]) for r in rows)
    return "\n".join(f"{r['input']:<{width}}  " + "  ".join(f"{c} ({p:.3f})" for c, p in r["top"])
                     for r in rows)
