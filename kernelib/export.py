"""Export writers (`.keras`, SavedModel in TF Serving layout) and verification in a fresh process.

Each written artifact is loaded back by its own runtime in a separate Python process
(`python -m kernelib.export verify ...`), its predictions compared with the in-memory model.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kernelib import io
from kernelib.errors import ExportError

FORMATS = ("keras", "saved_model")
TOLERANCE = {"keras": 1e-6, "saved_model": 1e-5}


def artifact_path(out_dir: str | Path, fmt: str, *, name: str, version: int) -> Path:
    """Where a format's artifact goes: `<name>.keras`, or `<name>/<version>/` for TF Serving."""
    out_dir = Path(out_dir)
    if fmt == "keras":
        return out_dir / f"{name}.keras"
    if fmt == "saved_model":
        return out_dir / name / str(version)
    raise ExportError(f"unknown export format '{fmt}'; valid formats: {list(FORMATS)}")


def write(model, fmt: str, path: Path) -> Path:
    """Write one format atomically."""
    with io.atomic_path(path) as tmp:
        if fmt == "keras":
            model.save(tmp)
        elif fmt == "saved_model":
            model.export(str(tmp), format="tf_saved_model", verbose=False)
        else:
            raise ExportError(f"unknown export format '{fmt}'; valid formats: {list(FORMATS)}")
    return path


def export(model, out_dir: str | Path, formats: Sequence[str] = FORMATS, *, name: str,
           version: int = 1, verify_x: np.ndarray, verify_y: np.ndarray | None = None,
           overwrite: bool = False) -> list[dict[str, Any]]:
    """Write `model` in each format under `out_dir` and verify each in a fresh process.

    Returns one entry per format: path, bytes, sha256, max |difference| with the in-memory
    model on `verify_x`, the tolerance, and accuracy on `verify_y` when given.
    Raises ExportError when a format fails its tolerance.
    """
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ExportError(f"unknown export format(s) {unknown}; valid formats: {list(FORMATS)}")
    out_dir = Path(out_dir)
    reference = np.asarray(model.predict(verify_x, batch_size=256, verbose=0), dtype="float32")
    entries = []
    for fmt in formats:
        path = artifact_path(out_dir, fmt, name=name, version=version)
        if path.exists() and not overwrite:
            raise ExportError(
                f"'{path}' already exists; refusing to replace an exported {fmt} model. "
                "Raise export.version or pass overwrite=True."
            )
        write(model, fmt, path)
        got = verify(path, fmt, verify_x)
        diff = float(np.max(np.abs(got - reference)))
        entry = {
            "format": fmt, "path": str(path.relative_to(out_dir)), "bytes": io.size_bytes(path),
            "sha256": io.sha256(path), "max_abs_diff": diff, "tolerance": TOLERANCE[fmt],
            "top1_agreement": float(np.mean(got.argmax(1) == reference.argmax(1))),
        }
        if verify_y is not None:
            entry["accuracy"] = float(np.mean(got.argmax(1) == np.asarray(verify_y)))
        entries.append(entry)
        if not diff <= TOLERANCE[fmt]:
            raise ExportError(
                f"{fmt} export failed verification: max |difference| from the Keras model is "
                f"{diff:.3g}, above the tolerance {TOLERANCE[fmt]:g} ({path})."
            )
    return entries


def verify(path: str | Path, fmt: str, x: np.ndarray) -> np.ndarray:
    """Predict `x` with the artifact at `path` in a separate Python process; return the outputs."""
    with tempfile.TemporaryDirectory() as tmp:
        x_path, out_path = Path(tmp) / "x.npy", Path(tmp) / "out.npy"
        np.save(x_path, np.asarray(x, dtype="float32"))
        proc = subprocess.run(
            [sys.executable, "-m", "kernelib.export", "predict", fmt, str(path), str(x_path),
             str(out_path)],
            capture_output=True, text=True, env=_quiet_env(),
        )
        if proc.returncode != 0 or not out_path.exists():
            tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
            raise ExportError(f"{fmt} export at '{path}' could not be loaded by its runtime in a "
                              f"fresh process:\n{tail}")
        return np.load(out_path)


def _quiet_env() -> dict[str, str]:
    import os

    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


def _predict_with_runtime(fmt: str, path: str, x: np.ndarray) -> np.ndarray:
    """Runs inside the verifying process: only the format's own loader, no kernelib models."""
    if fmt == "keras":
        import keras

        import kernelib.merge  # noqa: F401  registers kernelib's serializable layers

        model = keras.saving.load_model(path, compile=False, safe_mode=True)
        return np.asarray(model.predict(x, batch_size=256, verbose=0))
    if fmt == "saved_model":
        import tensorflow as tf

        loaded = tf.saved_model.load(path)
        fn = loaded.signatures["serving_default"]
        out = fn(tf.constant(x))
        if len(out) != 1:
            raise ExportError(f"serving_default returns {list(out)}; expected one output")
        return next(iter(out.values())).numpy()
    raise ExportError(f"unknown export format '{fmt}'; valid formats: {list(FORMATS)}")


def _main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kernelib.export")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("predict", help="predict an .npy array with an exported artifact")
    p.add_argument("format", choices=FORMATS)
    p.add_argument("path")
    p.add_argument("inputs")
    p.add_argument("output")
    args = ap.parse_args(argv)
    out = _predict_with_runtime(args.format, args.path, np.load(args.inputs))
    np.save(args.output, out.astype("float32"))
    return 0


def summary_table(entries: list[dict[str, Any]]):
    """The export entries as a DataFrame (size in KiB, parity, accuracy)."""
    import pandas as pd

    df = pd.DataFrame(entries).set_index("format")
    df["size_kib"] = (df.pop("bytes") / 1024).round(1)
    df["sha256"] = df["sha256"].str[:12]
    return df


if __name__ == "__main__":
    sys.exit(_main())
