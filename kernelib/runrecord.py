"""A run's record: its manifest (started, saved, read back), the run folder's checks, the
latest run."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from kernelib import io, params, paths
from kernelib.errors import PipelineError
from kernelib.rundir import RunDir
from kernelib.steps import Step, config_hash, versions


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def new_run_id(config: params.Config) -> str:
    return f"{config.run.name}-{dt.datetime.now():%Y%m%d-%H%M%S}"


def git_state(path: Path | None = None) -> dict[str, Any]:
    """Commit of the working tree kernelib runs from, and whether it has uncommitted changes."""
    path = path or Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True,
                                text=True, timeout=10)
        if commit.returncode != 0:
            return {"commit": None, "dirty": None}
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=path, capture_output=True, text=True, timeout=10)
        return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def preflight(runs_dir: str | Path, reports_dir: str | Path, run_id: str) -> tuple[Path, Path]:
    """Check every folder the run writes into before any stage runs (or anything is written):
    each is a folder or can become one, and is writable; an existing run folder's manifest is
    readable. Returns the run folder and its report folder."""
    runs_dir = paths.output_folder(runs_dir, what="--runs-dir")
    reports_dir = paths.output_folder(reports_dir, what="--reports-dir")
    run_root = paths.output_folder(paths.inside(runs_dir, run_id, what="--run-id"),
                                   what="run folder")
    report_dir = paths.output_folder(paths.inside(reports_dir, run_id, what="--run-id"),
                                     what="report folder")
    read_manifest(run_root, missing_ok=True)
    return run_root, report_dir


def read_manifest(run_root: Path, *, missing_ok: bool = False) -> dict[str, Any]:
    """A run folder's manifest.json; PipelineError when it is missing (unless `missing_ok`,
    then {}) or is not a manifest (a crash while writing it cannot cause that: it is written
    atomically, but a hand edit or a damaged disk can)."""
    path = run_root / "manifest.json"
    if not path.is_file():
        if missing_ok:
            return {}
        raise PipelineError(f"'{run_root}' has no manifest.json: expected a run folder written by "
                            "`kernelib run CONFIG`. Check the path, or run a config first.")
    try:
        manifest = io.read_json(path)
        if not isinstance(manifest, dict) or not isinstance(manifest.get("stages"), list):
            raise ValueError("not a mapping with a 'stages' list")
    except (OSError, ValueError) as err:
        raise PipelineError(f"'{path}' is not a readable run manifest ({err}); expected the JSON "
                            "file `kernelib run` writes. Restore it, or delete it to run this "
                            "run id from scratch (finished stages are then taken from the cache "
                            "of other runs).") from None
    return manifest


def start_manifest(rd: RunDir, config: params.Config, run_id: str,
                    steps: list[Step]) -> dict[str, Any]:
    """A fresh manifest, keeping earlier records of this run id (resume) where steps match."""
    old = read_manifest(rd.root, missing_ok=True)
    old_records = {s["label"]: s for s in old.get("stages", [])}
    cleaned = io.clean_leftovers(rd.root, recursive=True)  # a crashed attempt's temporary files
    io.write_text(rd.root / "config.yaml", yaml.safe_dump(config.model_dump(mode="json"),
                                                          sort_keys=False))
    manifest = {
        "run_id": run_id, "status": "running", "started": now(),
        "config": config.model_dump(mode="json"), "config_hash": config_hash(config),
        "seed": config.run.seed, "deterministic": config.run.deterministic,
        "versions": versions(), "git": git_state(), "command": " ".join(sys.argv),
        "resumed": bool(old), "stages": [],
    }
    if cleaned:
        manifest["cleaned"] = cleaned
    if old.get("status") == "running":  # its lock was free, so its process is gone
        manifest["previous_attempt"] = ("ended without a record (killed or crashed while "
                                        f"running, started {old.get('started')})")
    for s in steps:
        rec = {"stage": s.stage, "label": s.label, "notebook": f"notebooks/{s.output}",
               "status": "pending"}
        prev = old_records.get(s.label)
        if prev and prev.get("status") == "succeeded":
            rec["previous"] = {k: prev.get(k) for k in ("key", "outputs", "cached_from",
                                                        "report", "duration_s", "device")}
        manifest["stages"].append(rec)
    io.write_json(rd.manifest, manifest)
    return manifest


def save_manifest(rd: RunDir, manifest: dict[str, Any]) -> None:
    """Persist the manifest. A full disk becomes a PipelineError; the final record is still
    written by `run` from the space reserve."""
    try:
        io.write_json(rd.manifest, manifest)
    except OSError as err:
        raise PipelineError(
            f"cannot write '{rd.manifest}' ({err.strerror or err}); expected a run "
            "folder with free space. Free some space (or choose another --runs-dir), then "
            "resume with the same --run-id.") from None


def latest_run(runs_dir: str | Path = "runs") -> Path:
    """The most recently started run folder (folders whose manifest cannot be read are passed
    over)."""
    runs_dir = Path(runs_dir)
    if runs_dir.exists() and not runs_dir.is_dir():
        raise PipelineError(f"--runs-dir '{runs_dir}' is a file; expected the folder of runs.")
    started = {}
    for m in runs_dir.glob("*/manifest.json"):
        try:
            started[m.parent] = str(read_manifest(m.parent).get("started", ""))
        except PipelineError:
            continue
    if not started:
        raise PipelineError(f"no runs found in '{runs_dir}'; run `kernelib run CONFIG` first.")
    return max(started, key=started.get)
