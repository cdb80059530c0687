"""What an export folder records: `exports.json` (one record per file, with its sha256) and
`labels.json` (class names, input range and file versions for `kernelib predict`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kernelib import io, runtimes
from kernelib.errors import ExportError

EXPORTS_FILE = "exports.json"  # one record per exported file: what export() verified and wrote


def order_records(out_dir: Path, order: list[str]) -> None:
    """This call's records in the order its formats were asked for, after the earlier ones."""
    path = out_dir / EXPORTS_FILE
    records = io.read_json(path)
    mine = {r["path"]: r for r in records if r["path"] in order}
    io.write_json(path, [r for r in records if r["path"] not in mine]
                  + [mine[p] for p in order if p in mine])


def record(out_dir: Path, entry: dict[str, Any], *, drop: bool = False) -> None:
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


def read_labels(out_dir: Path) -> dict[str, Any]:
    path = out_dir / runtimes.LABELS_FILE
    return io.read_json(path) if path.is_file() else {}


def check_targets(out_dir: Path, targets: dict[str, Path], *, name: str, version: int,
                   overwrite: bool) -> None:
    """Refuse to replace existing artifacts unless `overwrite`; name the version they hold."""
    if overwrite:
        return
    held = read_labels(out_dir).get("files", {})
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


def write_labels(out_dir: Path, targets: dict[str, Path], *, name: str, version: int,
                  class_names: Sequence[str] | None, input_shape: tuple[int, ...],
                  input_range: tuple[float, float] | None) -> Path:
    """`labels.json`: class names and input range for `kernelib predict`, and file versions."""
    old = read_labels(out_dir)
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
