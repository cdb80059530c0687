"""Verification: each artifact run by its own runtime in a fresh process, judged against the
Keras model (`python -m kernelib.export predict ...` is that process)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kernelib import runtimes
from kernelib.errors import ExportError
from kernelib.export.formats import AT_MOST, BATCH, CRITERIA, FORMATS, check_formats


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
    passed = value <= tolerance if criterion in AT_MOST else value >= tolerance
    if not passed:
        side = "above" if criterion in AT_MOST else "below"
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


def main(argv: Sequence[str] | None = None) -> int:
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
    seconds: list[float] = []
    np.save(args.output, runtimes.predict_batched(runner, x, batch_size=BATCH, seconds=seconds))
    if args.timing:
        Path(args.timing).write_text(json.dumps(runtimes.measure(
            runner, x, repeats=args.repeats, batch_size=BATCH, batch_seconds=seconds)))
    return 0
