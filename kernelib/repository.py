"""The model repository behind `kernelib serve`: an export folder watched for new versions.

An export folder (what the export stage writes) holds one TF Serving model folder per name,
`<name>/<version>/` (a SavedModel), and next to it the unversioned `<name>.onnx` and
`<name>.tflite` files, whose version `labels.json` records, and `exports.json` with each
runtime's verified speed. The policy is TF Serving's default (`latest`, one version): of each
name the newest *complete* version is served, a version dropped in later replaces it without a
restart, and the version before keeps serving until the new one has loaded.

A version is complete when its SavedModel files are all there (`saved_model.pb`,
`variables/variables.index` and every `variables.data-*-of-N` shard), their sizes and times
have not changed between two scans, and its runtime loaded it. A version being copied in is
therefore never served half-copied; one that fails to load is reported, not retried until its
files change.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kernelib import runtimes
from kernelib.errors import ExportError

log = logging.getLogger("kernelib.serve")

# --runtime name -> export format (the `.tflite` file is the float32 LiteRT export)
RUNTIMES = {"onnx": "onnx", "litert": "tflite", "saved_model": "saved_model"}
PLATFORMS = {"onnx": "onnxruntime_onnx", "tflite": "tensorflow_lite",
             "saved_model": "tensorflow_savedmodel"}
_SHARD = re.compile(r"variables\.data-(\d+)-of-(\d+)$")


@dataclass
class Version:
    """One loaded, servable version of a model."""

    name: str
    version: int
    fmt: str  # export format of the runtime that serves it (see RUNTIMES)
    path: Path
    runner: runtimes.Runner
    class_names: list[str] | None
    batch_rows: int = 0  # dynamic batches of this version stop here (0: the batcher's limit)
    n_classes: int = field(init=False)

    def __post_init__(self):
        import numpy as np

        probe = self.runner(np.zeros((1, *self.runner.input_shape), "float32"))
        self.n_classes = int(probe.shape[-1])  # also warms the runtime up

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.runner.input_shape


def preferred_rows(runner: runtimes.Runner, max_rows: int, repeats: int = 5) -> tuple[int, dict]:
    """The batch size to cap a version's dynamic batches at, and rows/s per size measured.

    Rows/s at 1, 2, 4, ... `max_rows` rows (the fastest of `repeats` calls, the figure other
    processes on the machine disturb least); the smallest size within 10% of the best wins.
    A compute-bound model can run slower per row in large batches (its activations leave the
    caches), so batching it to `max_rows` would lose throughput.
    """
    import time

    import numpy as np

    rates = {}
    for n in sorted({min(2 ** i, max_rows) for i in range(max_rows.bit_length() + 1)}):
        x = np.zeros((n, *runner.input_shape), "float32")
        runner(x)  # warm-up at this shape
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            runner(x)
            times.append(time.perf_counter() - start)
        rates[n] = n / min(times)
    best = max(rates.values())
    return min(n for n, rate in rates.items() if rate >= 0.9 * best), rates


def export_dir_of(path: str | Path) -> Path:
    """The export folder of a run folder (`RUN_DIR/export`) or the export folder itself."""
    path = Path(path)
    for folder in (path / "export", path):
        if (folder / runtimes.LABELS_FILE).is_file():
            return folder
    raise ExportError(f"'{path}' is neither a run folder with an export/ stage nor an export "
                      f"folder: no {runtimes.LABELS_FILE} found in it. Run the export stage "
                      "first, or pass the folder that holds labels.json.")


def check_runtime(runtime: str) -> str:
    """Refuse an unknown `--runtime`, listing the valid ones."""
    if runtime != "auto" and runtime not in RUNTIMES:
        raise ExportError(f"unknown runtime '{runtime}'; valid: {['auto', *RUNTIMES]}")
    return runtime


def saved_model_files(folder: Path) -> tuple | None:
    """Sizes and times of a complete SavedModel's files, or None while any file is missing."""
    variables = folder / "variables"
    if not (folder / "saved_model.pb").is_file() or not (variables / "variables.index").is_file():
        return None
    shards = [m for p in variables.iterdir() if (m := _SHARD.match(p.name))]
    wanted = {int(m.group(2)) for m in shards}
    if len(wanted) != 1 or {int(m.group(1)) for m in shards} != set(range(wanted.pop())):
        return None
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return tuple((str(p.relative_to(folder)), s.st_size, s.st_mtime_ns)
                 for p in files if (s := p.stat()))


def _read_json(path: Path, default):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # absent, or being replaced
        return default


class Repository:
    """The served versions of every model in an export folder; `scan()` picks up changes."""

    def __init__(self, export_dir: str | Path, *, runtime: str = "auto", max_batch_size: int = 0):
        self.root = export_dir_of(export_dir)
        self.runtime = check_runtime(runtime)
        self.max_batch_size = max_batch_size  # > 1: each version's batch_rows is measured
        self.served: dict[str, Version] = {}
        self.failed: dict[tuple[str, int], str] = {}  # load errors, until the files change
        self._seen: dict[tuple[str, int], tuple] = {}  # files at the previous scan
        self._tried: dict[tuple[str, int], tuple] = {}
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir()
                      if p.is_dir() and any(v.name.isdigit() for v in p.iterdir()))

    def scan(self, *, first: bool = False) -> None:
        """Load the newest complete version of each model where it changed.

        On the first scan the files present are taken as complete; later, a version's files
        must be unchanged since the previous scan (a copy in progress changes them).
        """
        with self._lock:
            for name in self.names():
                self._scan_model(name, first=first)

    def _scan_model(self, name: str, *, first: bool) -> None:
        current = self.served.get(name)
        folders = sorted((int(p.name), p) for p in (self.root / name).iterdir()
                         if p.name.isdigit() and p.is_dir())
        for number, folder in reversed(folders):
            if current is not None and number <= current.version:
                return
            key = (name, number)
            files = saved_model_files(folder)
            stable = files is not None and (first or self._seen.get(key) == files)
            self._seen[key] = files
            if not stable or self._tried.get(key) == files:
                continue  # being copied, or it failed to load with these very files
            self._tried[key] = files
            try:
                version = self._load(name, number, folder)
            except Exception as err:  # noqa: BLE001 - any runtime's load error is reported
                self.failed[key] = f"{type(err).__name__}: {err}"
                log.warning("model %s version %d not served: %s", name, number, err)
                continue
            self.failed.pop(key, None)
            self.served[name] = version
            log.info("serving model %s version %d with %s (%s)", name, number,
                     runtimes.RUNTIMES[runtimes.runtime_kind(version.fmt)], version.path)
            return

    def artifacts(self, name: str, number: int, folder: Path) -> dict[str, Path]:
        """The files that hold this version, per export format."""
        held = _read_json(self.root / runtimes.LABELS_FILE, {}).get("files", {})
        found = {"saved_model": folder}
        for fmt in ("onnx", "tflite"):
            rel = f"{name}.{fmt}"
            if held.get(rel) == {"name": name, "version": number} and (self.root / rel).is_file():
                found[fmt] = self.root / rel
        return found

    def choose(self, name: str, number: int, found: dict[str, Path]) -> str:
        """The export format to serve: `--runtime`, or the verified fastest (`exports.json`)."""
        if self.runtime != "auto":
            fmt = RUNTIMES[self.runtime]
            if fmt not in found:
                raise ExportError(f"version {number} of '{name}' has no {self.runtime} export "
                                  f"(it has {sorted(found)}); export it in that format or "
                                  "serve with --runtime auto.")
            return fmt
        records = [r for r in _read_json(self.root / "exports.json", [])
                   if isinstance(r, dict) and r.get("name") == name
                   and r.get("version") == number and r.get("format") in found]
        if records:  # batch-1 latency: what one request costs, batched or not
            return min(records, key=lambda r: r.get("latency_ms", float("inf")))["format"]
        return next(f for f in ("onnx", "tflite", "saved_model") if f in found)

    def _load(self, name: str, number: int, folder: Path) -> Version:
        found = self.artifacts(name, number, folder)
        fmt = self.choose(name, number, found)
        runner = runtimes.load(found[fmt], runtimes.runtime_kind(fmt))
        labels = _read_json(self.root / runtimes.LABELS_FILE, {})
        version = Version(name, number, fmt, found[fmt], runner, labels.get("class_names"))
        if self.max_batch_size > 1:
            version.batch_rows, rates = preferred_rows(runner, self.max_batch_size)
            log.info("model %s version %d: dynamic batches of up to %d rows (rows/s by batch "
                     "size: %s)", name, number, version.batch_rows,
                     ", ".join(f"{n}: {r:,.0f}" for n, r in rates.items()))
        return version

    def status(self, name: str) -> list[dict[str, Any]]:
        """TF Serving's `model_version_status` of a model: served, and failed versions."""
        rows = [(v, "END", "UNKNOWN", msg) for (n, v), msg in self.failed.items() if n == name]
        if name in self.served:
            rows.append((self.served[name].version, "AVAILABLE", "OK", ""))
        return [{"version": str(v), "state": state,
                 "status": {"error_code": code, "error_message": msg}}
                for v, state, code, msg in sorted(rows, reverse=True)]

    def watch(self, every_s: float, stop: threading.Event) -> threading.Thread:
        """Scan every `every_s` seconds in a background thread until `stop` is set."""
        def loop():
            while not stop.wait(every_s):
                try:
                    self.scan()
                except OSError as err:  # a folder removed while scanning: next scan
                    log.warning("scan of %s failed: %s", self.root, err)

        thread = threading.Thread(target=loop, name="kernelib-serve-watch", daemon=True)
        thread.start()
        return thread
