"""`export()`: write, verify and record every format; the `ExportManifest` it returns."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kernelib import io, runtimes
from kernelib.errors import ExportError
from kernelib.export.formats import artifact_path, check_formats
from kernelib.export.inference import inference_model, one_input_output, reference_predictions
from kernelib.export.records import check_targets, order_records, record, write_labels
from kernelib.export.verification import figures, verify
from kernelib.export.writers import calibration_rows, write_file


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
        _check_int8_inputs(calibration_data, test)
    input_shape = one_input_output(model)
    x, y = _test_rows(test, input_shape)
    exported, changes = inference_model(model)
    check_targets(out_dir, targets, name=name, version=version, overwrite=overwrite)
    reference = reference_predictions(exported, x) if x is not None else None
    if exported is not model and x is not None:  # how far the exported model is from the given
        f = figures(reference, reference_predictions(model, x))
        changes.append(f"exported model vs the given one: max |difference| "
                       f"{f['max_abs_diff']:.2g}, top-1 agreement {f['top1_agreement']:.2%}")
    entries: dict[str, dict[str, Any]] = {}
    try:
        for fmt, entry in _write_each(exported, out_dir, targets, x=x, y=y, reference=reference,
                                      calibration_data=calibration_data, name=name,
                                      version=version, repeats=repeats):
            entries[fmt] = entry
        order_records(out_dir, [entries[f]["path"] for f in formats])
    finally:  # record what did land, even when a later format fails
        if entries:
            write_labels(out_dir, {f: targets[f] for f in entries}, name=name,
                         version=version, class_names=class_names, input_shape=input_shape,
                         input_range=(float(x.min()), float(x.max())) if x is not None
                         else None)
    return ExportManifest(name, version, out_dir, [entries[f] for f in formats], changes)


def _check_int8_inputs(calibration_data: np.ndarray | None, test) -> None:
    """tflite_int8 needs calibration rows to convert and test rows to be judged."""
    calibration_rows(calibration_data)
    if test is None:
        raise ExportError("tflite_int8 is judged by its accuracy drop on test rows; pass "
                          "test=(x, y), or leave tflite_int8 out of the formats.")


def _write_each(model, out_dir: Path, targets: dict[str, Path], *, x, y, reference,
                calibration_data, name: str, version: int, repeats: int):
    """Write, verify and record each format in turn; yields `(format, record)` as each lands.

    The SavedModel goes first: the TFLite formats convert it (a scratch copy when it is not
    one of the formats).
    """
    order = sorted(targets, key=lambda f: f != "saved_model")
    with tempfile.TemporaryDirectory() as scratch:
        source = None
        for fmt in order:
            if fmt.startswith("tflite") and source is None:
                source = write_file(model, "saved_model", Path(scratch) / "saved_model")
            path = targets[fmt]
            with io.atomic_path(path) as tmp:
                write_file(model, fmt, tmp, saved_model=source, calibration_data=calibration_data)
                entry = (verify(tmp, fmt, x=x, reference=reference, y=y, repeats=repeats)
                         if x is not None else _unverified(fmt))
                entry |= {"name": name, "version": version,
                          "path": str(path.relative_to(out_dir)),
                          "bytes": io.size_bytes(tmp), "sha256": io.sha256(tmp)}
                record(out_dir, entry, drop=True)  # the old file's record goes first
            record(out_dir, entry)
            if fmt == "saved_model":
                source = path
            yield fmt, entry

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
