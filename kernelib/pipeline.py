"""The stage chain: validate a config, execute the notebooks with papermill, cache, record a manifest.

`run(config_path)` reads as the sequence it performs: validate the config and the member files,
take the run folder's lock, then for each step in dependency order either reuse a cached
result (same cache key in this or an earlier run; `kernelib.cache`) or execute its notebook
(`kernelib.executor`), render its report and record it in the manifest. A failing stage still
leaves its executed notebook and HTML report. What goes into a cache key, and what each step
declares it writes, is in `kernelib.steps`.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kernelib import data, io, params, paths, report
from kernelib.cache import Cache
from kernelib.errors import ConfigError, PipelineError, StageFailedError
from kernelib.executor import Executor, LocalPool
from kernelib.resources import notebooks_dir
from kernelib.rundir import RunDir, kernel_env
from kernelib.runlock import Interrupted, RunLock, interrupts, space_reserve
from kernelib.runrecord import latest_run as latest_run  # `kernelib report` finds it here
from kernelib.runrecord import (
    new_run_id,
    now,
    preflight,
    read_manifest,
    save_manifest,
    start_manifest,
)
from kernelib.steps import (
    Keys,
    Step,
    artifact_files,
    hash_outputs,
    plan,
    select_steps,
)

# ---------------------------------------------------------------------------- configuration


def resolve_member_paths(config: params.Config, base: Path) -> params.Config:
    """Make members' relative `path`s absolute (relative to the config file's folder)."""
    data = config.model_dump(mode="json")
    for m in data["load"]["members"]:
        if m.get("path"):
            m["path"] = str((base / m["path"]).expanduser().resolve())
    if isinstance(data["load"]["dataset"], dict):  # a folder or an array file: the same rule
        spec = data["load"]["dataset"]
        spec["path"] = str((base / spec["path"]).expanduser().resolve())
    return params.Config.model_validate(data)


def check_member_files(config: params.Config, info: dict[str, Any] | None = None) -> None:
    """Before any run folder exists: every member file loads, adapts to the dataset's input
    and outputs finite class probabilities."""
    if not any(m.path for m in config.load.members):
        return
    from kernelib import members

    inside = {"concat": config.merge.concat.include, "soup": config.merge.soup.ingredients}
    members.preflight(config.load.members, info or data.dataset_info(config.load.dataset),
                      inside={s: n for s, n in inside.items() if s in config.merge.strategies})


def run(config_path: str | Path, *, runs_dir: str | Path = "runs",
        reports_dir: str | Path = "reports", run_id: str | None = None,
        kernel_name: str = "python3", nb_dir: str | Path | None = None,
        progress: bool = True, force: bool = False, from_stage: str | None = None,
        only: str | None = None, jobs: int = 1, executor: str = "local",
        address: str | None = None) -> Path:
    """Run the whole chain for a config file; return the run folder.

    Steps whose cache key matches a succeeded step of this run or of an earlier run in
    `runs_dir` are reused ("cached (from run X)"); `force` re-runs everything, `from_stage`
    re-runs from that stage on, `only` runs one stage (or one `train:<member>`) and takes
    every other step from the cache. `jobs` trains up to that many members at once.
    `executor="ray"` runs every step as a Ray task instead (`kernelib.cluster`): in a Ray
    instance started inside this call, or on the cluster at `address` (`auto`, `ray://...`).

    Raises ConfigError/MemberError before anything is created when the config or a member
    file is bad, and StageFailedError (after writing the failed notebook, its report and
    the manifest) when a stage fails.
    """
    config_path = Path(config_path)
    config = resolve_member_paths(params.load_config(config_path), config_path.parent.resolve())
    if jobs < 1:
        raise ConfigError(f"--jobs must be at least 1; received {jobs}")
    pool = None
    if executor != "local" or address is not None:
        from kernelib import cluster

        pool = cluster.make_executor(executor, address=address, jobs=jobs, config=config)
    run_id = paths.safe_name(run_id or new_run_id(config), what="--run-id (the run folder name)")
    steps = plan(config, Path(runs_dir).resolve() / run_id)
    # --from/--only name what runs regardless of the cache; --force alone means every step
    forced = select_steps(steps, from_stage=from_stage, only=only) or (
        {s.label for s in steps} if force else set())
    run_root, report_dir = preflight(runs_dir, reports_dir, run_id)
    check_member_files(config, data.check_dataset(config.load.dataset,
                                                  train_rows=config.load.train_rows))
    nb_dir = Path(nb_dir) if nb_dir else notebooks_dir()
    os.environ.update(kernel_env())  # kernels inherit it
    rd = RunDir(run_root)
    rd.notebooks.mkdir(parents=True, exist_ok=True)
    with RunLock(run_root), interrupts() as received, space_reserve(run_root) as reserve:
        manifest = start_manifest(rd, config, run_id, steps)
        manifest["executor"] = pool.describe_run() if pool else {"name": "local", "jobs": jobs}
        runner = _Runner(rd, report_dir, nb_dir, manifest, steps,
                         Cache(rd, report_dir, run_root.parent, run_id), progress, forced,
                         only=bool(only))
        executor_ = Executor(rd, nb_dir, kernel_name, progress, pool) if pool else Executor(
            rd, nb_dir, kernel_name, progress, LocalPool(jobs) if jobs > 1 else None,
            pooled=lambda s: s.stage == "train" and sum(t.stage == "train" for t in steps) > 1)
        try:
            _run_steps(runner, executor_, manifest, received)
        finally:
            _end_manifest(rd, manifest, steps, reserve)
            report.write_index(run_root, report_dir)
            report.write_runs_index(report_dir.parent)
            if pool is not None:
                pool.close()
    return run_root


def _run_steps(runner: _Runner, executor: Executor, manifest: dict[str, Any],
               received: list[int]) -> None:
    """Every step, with the run's status recorded however it ends."""
    t_run = time.perf_counter()
    try:
        executor.run(runner.steps, manifest["stages"], runner.decide, runner.finish)
        manifest["status"] = "succeeded"
    except KeyboardInterrupt:
        manifest["status"] = "interrupted"
        signum = received[0] if received else signal.SIGINT
        manifest["interrupted_by"] = signal.Signals(signum).name
        raise Interrupted(signal.Signals(signum).name, signum) from None
    except BaseException:
        manifest["status"] = "failed"
        raise
    finally:
        manifest["ended"] = now()
        manifest["duration_s"] = round(time.perf_counter() - t_run, 2)


def _end_manifest(rd: RunDir, manifest: dict[str, Any], steps: list[Step], reserve: Path):
    """The final record: provenance, devices, every artifact's hash (the files the steps
    declare, and the config), written from the space reserve (a full disk still takes it)."""
    for st in manifest["stages"]:
        st["provenance"] = report.provenance(st) or st["status"]
    ran_on = [st["device"] for st in manifest["stages"] if st.get("device")]
    if ran_on:
        manifest["devices"] = ran_on[-1]["devices"]
        manifest["gpu_determinism"] = ran_on[-1]["deterministic"] \
            if ran_on[-1].get("gpus") else None
    artifacts = {"config.yaml": io.sha256(rd.root / "config.yaml")}
    for step in steps:
        artifacts |= hash_outputs(step, rd)
    manifest["artifacts"] = dict(sorted(artifacts.items()))
    undeclared = sorted(set(artifact_files(rd.root)) - set(artifacts))
    if undeclared:  # written by a stage that does not declare them: not hashed, not cached
        manifest["undeclared"] = undeclared
    card = rd.data_card
    if card.exists():
        manifest["data_hash"] = io.read_json(card).get("sha256")
    reserve.unlink(missing_ok=True)
    io.write_json(rd.manifest, manifest)


@dataclass
class _Runner:
    """What the executor asks about each step: reuse it or execute it (`decide`), and, once it
    ended, its report and record (`finish`)."""

    rd: RunDir
    report_dir: Path
    nb_dir: Path
    manifest: dict[str, Any]
    steps: list[Step]
    cache: Cache
    progress: bool
    forced: set[str]  # labels that execute regardless of the cache
    only: bool = False  # --only: steps before the forced ones must come from the cache

    def __post_init__(self):
        self.keys = Keys(self.steps, nb_dir=self.nb_dir)
        self.done: dict[str, dict[str, str]] = {}  # label -> outputs of the steps ended so far

    def decide(self, k: int) -> bool:
        """True when step k must execute; else it is cached or (after --only's steps) skipped."""
        step, rec = self.steps[k], self.manifest["stages"][k]
        last = max(i for i, s in enumerate(self.steps) if s.label in self.forced) \
            if self.only else None
        if last is not None and k > last:
            rec.update(status="skipped", outputs={})
        else:
            rec["key"] = self.keys(step, self.done)
            if step.label in self.forced or not self.cache.reuse(step, rec):
                if self.only and step.label not in self.forced:
                    raise PipelineError(
                        f"--only: step '{step.label}' has no cached result to reuse (no "
                        "earlier run with the same inputs); run the chain without --only "
                        "first.")
                self._say(k, "running")
                return True
            self._say(k, f"cached (from run {rec['cached_from']})")
        self.done[step.label] = rec.get("outputs", {})
        save_manifest(self.rd, self.manifest)
        return False

    def _say(self, k: int, what: str) -> None:
        if self.progress:
            print(f"[{k + 1}/{len(self.steps)}] {self.steps[k].label}: {what}", flush=True)

    def finish(self, k: int) -> None:
        """Render the report and persist the manifest; raise when the step failed."""
        step, rec = self.steps[k], self.manifest["stages"][k]
        html_name = Path(step.output).with_suffix(".html").name
        out = self.rd.notebooks / step.output
        if out.exists():
            try:
                report.render_notebook(out, self.report_dir / html_name)
                rec["report"] = html_name
            except Exception as err:  # noqa: BLE001  a notebook cut short (disk full, killed)
                rec["report_error"] = f"{type(err).__name__}: {str(err)[:300]}"
        self.done[step.label] = rec.get("outputs", {})
        save_manifest(self.rd, self.manifest)
        if rec["status"] == "failed":
            tail = f" Its stderr ends:\n{rec['stderr_tail']}" if rec.get("stderr_tail") else ""
            raise StageFailedError(
                f"stage '{step.label}' failed: {rec['error']}. The executed notebook is "
                f"'{self.rd.root / rec['notebook']}', its report "
                f"'{self.report_dir / html_name}'.{tail}")
        if rec["status"] == "interrupted":
            raise KeyboardInterrupt


def rerender(run_root: str | Path, reports_dir: str | Path = "reports") -> Path:
    """Render every executed notebook of a run again, and its index; return the index path.

    A folder without a manifest (`runs/lab`, filled by running the notebooks by hand in
    JupyterLab) gets an index of what it holds.
    """
    run_root = Path(run_root)
    if not run_root.is_dir():
        raise PipelineError(f"run folder '{run_root}' not found: expected a folder under the runs "
                            "folder (see `ls runs/`), or no argument for the latest run.")
    manifest = read_manifest(run_root, missing_ok=True)
    run_id = paths.safe_name(manifest.get("run_id", run_root.name), what="run id",
                             error=PipelineError)
    report_dir = paths.output_folder(paths.inside(reports_dir, run_id, what="run id",
                                                  error=PipelineError), what="report folder")
    notebooks = ([run_root / st["notebook"] for st in manifest["stages"]] if manifest
                 else sorted((run_root / "notebooks").glob("*.ipynb")))
    for nb in notebooks:
        if nb.exists():
            report.render_notebook(nb, report_dir / Path(nb).with_suffix(".html").name)
    index = report.write_index(run_root, report_dir)
    report.write_runs_index(report_dir.parent)
    return index
