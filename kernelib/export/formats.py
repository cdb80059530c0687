"""The export formats, where each goes, and the figure and tolerance each is judged by."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from kernelib import paths
from kernelib.errors import ExportError

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
AT_MOST = ("max_abs_diff", "accuracy_drop")
_FILE_SUFFIX = {"keras": ".keras", "tflite": ".tflite", "tflite_fp16": "_fp16.tflite",
                "tflite_dynamic": "_dynamic.tflite", "tflite_int8": "_int8.tflite",
                "onnx": ".onnx", "h5": ".h5"}


BATCH = 256


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
