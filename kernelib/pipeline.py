"""The stage chain: validate a config, execute the notebooks with papermill, record a manifest.

`run(config_path)` reads as the sequence it performs: validate, check member files, create
the run folder, then for each stage execute its notebook, render its report and update the
manifest. A failing stage still leaves its executed notebook and HTML report.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import platform
import re
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from kernelib import io, params, report
from kernelib.errors import ConfigError, PipelineError, StageFailedError
from kernelib.rundir import RunDir, kernel_env

NOTEBOOKS = {
    "load": "01_load.ipynb",
    "preprocess": "02_preprocess.ipynb",
    "train": "03_train.ipynb",
    "merge": "04_merge.ipynb",
    "evaluate": "05_evaluate.ipynb",
    "export": "06_export.ipynb",
}


def notebooks_dir() -> Path:
    """The stage notebooks: `notebooks/` next to the package (a source checkout)."""
    here = Path(__file__).resolve().parent.parent / "notebooks"
    if (here / NOTEBOOKS["load"]).exists():
        return here
    cwd = Path.cwd() / "notebooks"
    if (cwd / NOTEBOOKS["load"]).exists():
        return cwd
    raise PipelineError(f"stage notebooks not found in '{here}' or '{cwd}'; run kernelib from "
                        "a checkout of the repository (or pass notebooks_dir).")


@dataclass(frozen=True)
class Step:
    """One notebook execution: a stage, its label, and its papermill parameters."""

    stage: str
    label: str
    notebook: str
    output: str
    parameters: dict[str, Any]


def resolve_member_paths(config: params.Config, base: Path) -> params.Config:
    """Make members' relative `path`s absolute (relative to the config file's folder)."""
    data = config.model_dump(mode="json")
    for m in data["load"]["members"]:
        if m.get("path"):
            m["path"] = str((base / m["path"]).expanduser().resolve())
    return params.Config.model_validate(data)


def check_member_files(config: params.Config) -> None:
    """Before any run folder exists: every member file loads and fits the dataset."""
    from kernelib import data, members

    given = [m for m in config.load.members if m.path]
    if not given:
        return
    info = data.dataset_info(config.load.dataset)
    for spec in given:
        member = members.load_member(spec.path, name=spec.name)
        members.check_compatible([member], input_shape=info["input_shape"],
                                 n_classes=info["n_classes"])


def plan(config: params.Config, run_root: Path) -> list[Step]:
    """The ordered notebook executions for a config (the train notebook once per recipe member)."""
    common = {"run_dir": str(run_root), "seed": config.run.seed,
              "deterministic": config.run.deterministic}
    section = {s: getattr(config, s).model_dump(mode="json") for s in params.STAGES}
    steps = []
    for i, stage in enumerate(params.STAGES, 1):
        nb = NOTEBOOKS[stage]
        if stage == "train":
            for m in config.load.members:
                if m.recipe:
                    steps.append(Step(stage, f"train:{m.name}", nb,
                                      f"{i:02d}_train_{m.name}.ipynb",
                                      {**common, **section["train"], "name": m.name}))
            continue
        steps.append(Step(stage, stage, nb, nb, {**common, **section[stage]}))
    return steps


def versions() -> dict[str, str]:
    """Versions of the pieces a result depends on (without importing TensorFlow)."""
    out = {"python": platform.python_version()}
    for pkg in ("kernelib", "tensorflow", "keras", "numpy", "scikit-learn", "papermill",
                "nbconvert"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def config_hash(config: params.Config) -> str:
    blob = json.dumps(config.model_dump(mode="json"), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def new_run_id(config: params.Config) -> str:
    return f"{config.run.name}-{dt.datetime.now():%Y%m%d-%H%M%S}"


def run(config_path: str | Path, *, runs_dir: str | Path = "runs",
        reports_dir: str | Path = "reports", run_id: str | None = None,
        kernel_name: str = "python3", nb_dir: str | Path | None = None,
        progress: bool = True) -> Path:
    """Run the whole chain for a config file; return the run folder.

    Raises ConfigError/MemberError before anything is created when the config or a member
    file is bad, and StageFailedError (after writing the failed notebook, its report and
    the manifest) when a stage fails.
    """
    config_path = Path(config_path)
    config = resolve_member_paths(params.load_config(config_path), config_path.parent.resolve())
    check_member_files(config)
    nb_dir = Path(nb_dir) if nb_dir else notebooks_dir()
    os.environ.update(kernel_env())  # kernels inherit it
    run_id = run_id or new_run_id(config)
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", run_id):
        raise ConfigError(f"run id must use letters, digits, '.', '_' or '-'; received {run_id!r}")
    run_root = Path(runs_dir).resolve() / run_id
    if run_root.exists():
        raise PipelineError(f"run folder '{run_root}' already exists; choose another --run-id "
                            "or remove the folder.")
    report_dir = Path(reports_dir).resolve() / run_id
    steps = plan(config, run_root)
    rd = RunDir(run_root)
    rd.notebooks.mkdir(parents=True)
    io.write_text(run_root / "config.yaml", yaml.safe_dump(config.model_dump(mode="json"),
                                                           sort_keys=False))
    manifest = {
        "run_id": run_id, "status": "running", "started": _now(), "config": config.model_dump(
            mode="json"), "config_hash": config_hash(config), "seed": config.run.seed,
        "versions": versions(), "command": " ".join(sys.argv), "stages": [
            {"stage": s.stage, "label": s.label, "notebook": f"notebooks/{s.output}",
             "status": "pending"} for s in steps],
    }
    io.write_json(rd.manifest, manifest)
    t_run = time.perf_counter()
    try:
        for i, (step, record) in enumerate(zip(steps, manifest["stages"], strict=True), 1):
            if progress:
                print(f"[{i}/{len(steps)}] {step.label}", flush=True)
            _run_step(step, record, nb_dir=nb_dir, rd=rd, report_dir=report_dir,
                      kernel_name=kernel_name, progress=progress)
            io.write_json(rd.manifest, manifest)
            if record["status"] == "failed":
                manifest["status"] = "failed"
                raise StageFailedError(
                    f"stage '{step.label}' failed: {record['error']}. The executed notebook is "
                    f"'{run_root / record['notebook']}', its report "
                    f"'{report_dir / record['report']}'."
                )
        manifest["status"] = "succeeded"
    except KeyboardInterrupt:
        manifest["status"] = "interrupted"
        raise
    finally:
        manifest["ended"] = _now()
        manifest["duration_s"] = round(time.perf_counter() - t_run, 2)
        manifest["artifacts"] = _artifacts(run_root)
        io.write_json(rd.manifest, manifest)
        report.write_index(run_root, report_dir)
        report.write_runs_index(report_dir.parent)
    return run_root


def _run_step(step: Step, record: dict[str, Any], *, nb_dir: Path, rd: RunDir,
              report_dir: Path, kernel_name: str, progress: bool) -> None:
    """Execute one notebook with papermill, render it, fill in its manifest record."""
    import papermill as pm

    out = rd.notebooks / step.output
    record.update(status="running", started=_now(), parameters=step.parameters)
    t0 = time.perf_counter()
    try:
        pm.execute_notebook(
            str(nb_dir / step.notebook), str(out), parameters=step.parameters,
            kernel_name=kernel_name, cwd=str(nb_dir), progress_bar=progress,
        )
        record["status"] = "succeeded"
    except pm.PapermillExecutionError as err:
        record["status"] = "failed"
        record["error"] = (f"cell {err.exec_count or err.cell_index}: {err.ename}: "
                           f"{str(err.evalue).splitlines()[0] if err.evalue else ''}")
    record["ended"] = _now()
    record["duration_s"] = round(time.perf_counter() - t0, 2)
    html_name = Path(step.output).with_suffix(".html").name
    report.render_notebook(out, report_dir / html_name)
    record["report"] = html_name


def _artifacts(run_root: Path) -> list[str]:
    skip = {"manifest.json"}
    files = []
    for p in sorted(run_root.rglob("*")):
        rel = p.relative_to(run_root)
        if p.is_file() and str(rel) not in skip and not any(s.startswith(".") for s in rel.parts):
            if "saved_model.pb" == p.name or p.suffix in {".keras", ".json", ".npz", ".csv",
                                                            ".yaml", ".ipynb"}:
                files.append(str(rel))
    return files


def latest_run(runs_dir: str | Path = "runs") -> Path:
    """The most recently started run folder."""
    runs = [p.parent for p in Path(runs_dir).glob("*/manifest.json")]
    if not runs:
        raise PipelineError(f"no runs found in '{runs_dir}'; run `kernelib run CONFIG` first.")
    return max(runs, key=lambda p: io.read_json(p / "manifest.json")["started"])


def rerender(run_root: str | Path, reports_dir: str | Path = "reports") -> Path:
    """Render every executed notebook of a run again, and its index; return the index path."""
    run_root = Path(run_root)
    manifest = io.read_json(run_root / "manifest.json")
    report_dir = Path(reports_dir) / manifest["run_id"]
    for st in manifest["stages"]:
        nb = run_root / st["notebook"]
        if nb.exists():
            report.render_notebook(nb, report_dir / Path(nb).with_suffix(".html").name)
    index = report.write_index(run_root, report_dir)
    report.write_runs_index(report_dir.parent)
    return index
