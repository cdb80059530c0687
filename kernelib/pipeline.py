"""The stage chain: validate a config, execute the notebooks with papermill, cache, record a manifest.

`run(config_path)` reads as the sequence it performs: validate the config and the member files,
take the run folder's lock, then for each step either reuse a cached result (same cache key in
this or an earlier run) or execute its notebook, render its report and record it in the manifest.
A failing stage still leaves its executed notebook and HTML report.

A step's cache key hashes the notebook (code and markdown, not outputs), the step's parameters
(without the run folder), every source file of the installed `kernelib` package, the versions
of the libraries results depend on, member files given by path, and the hashes of everything
earlier steps produced. Any edit of a kernelib source file therefore re-runs every stage: the
notebooks import kernelib lazily inside functions, so a per-module import graph would miss
dependencies (the gap Ploomber's cache has); re-running all is the safe answer.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from kernelib import data, io, params, paths, report
from kernelib.errors import ConfigError, PipelineError, StageFailedError
from kernelib.resources import NOTEBOOKS, notebooks_dir  # noqa: F401  (lab and tests import them here)
from kernelib.rundir import DEVICE_FILE, RunDir, kernel_env

LOCK = ".lock"


@dataclass(frozen=True)
class Step:
    """One notebook execution: a stage, its label, and its papermill parameters."""

    stage: str
    label: str
    notebook: str
    output: str
    parameters: dict[str, Any]
    needs: tuple[str, ...] = ()  # labels of steps that must finish first (parallel jobs)

    @property
    def output_scope(self) -> str:
        """Folder the step's outputs are looked for in ('' = the whole run folder)."""
        return f"members/{self.parameters['name']}" if self.stage == "train" else ""


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

    inside = {"concat": config.merge.concat_members, "soup": config.merge.soup_ingredients}
    members.preflight(config.load.members, info or data.dataset_info(config.load.dataset),
                      inside={s: n for s, n in inside.items() if s in config.merge.strategies})


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
                    needs = (f"train:{m.finetune_from}",) if m.finetune_from else ()
                    steps.append(Step(stage, f"train:{m.name}", nb,
                                      f"{i:02d}_train_{m.name}.ipynb",
                                      {**common, **section["train"], "name": m.name}, needs))
            continue
        # concat heads and distill students train under the members' distribution strategy
        extra = {"distribution": config.train.distribution} if stage == "merge" else {}
        steps.append(Step(stage, stage, nb, nb, {**common, **section[stage], **extra}))
    return steps


def select_steps(steps: list[Step], *, from_stage: str | None, only: str | None) -> set[str]:
    """Labels of the steps that must execute regardless of the cache (`--from`, `--only`)."""
    def matching(name: str, option: str) -> list[int]:
        idx = [i for i, s in enumerate(steps) if name in (s.stage, s.label)]
        if not idx:
            valid = sorted({s.stage for s in steps} | {s.label for s in steps})
            raise ConfigError(f"{option} '{name}' is not a step of this run; valid: {valid}")
        return idx

    if from_stage and only:
        raise ConfigError("use either --from or --only, not both")
    if from_stage:
        first = matching(from_stage, "--from")[0]
        return {s.label for s in steps[first:]}
    if only:
        return {steps[i].label for i in matching(only, "--only")}
    return set()


# ---------------------------------------------------------------------------- hashing


def versions() -> dict[str, str]:
    """Versions of the pieces a result depends on (without importing TensorFlow)."""
    return io.package_versions(("kernelib", "tensorflow", "keras", "numpy", "scikit-learn",
                                "papermill", "nbconvert"))


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def config_hash(config: params.Config) -> str:
    return _digest(config.model_dump(mode="json"))


def notebook_hash(path: Path) -> str:
    """Hash of a notebook's code and markdown (cell types and sources), not its outputs."""
    nb = json.loads(path.read_text())
    return _digest([(c["cell_type"], "".join(c["source"]) if isinstance(c["source"], list)
                     else c["source"]) for c in nb["cells"]])


def sources_hash(package_dir: Path | None = None) -> str:
    """Hash of every source file of the installed kernelib package."""
    package_dir = package_dir or Path(__file__).resolve().parent
    h = hashlib.sha256()
    for f in sorted(package_dir.rglob("*.py")):
        h.update(str(f.relative_to(package_dir)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def step_key(step: Step, *, notebook: str, sources: str, upstream: dict[str, str],
             env: dict[str, str]) -> str:
    """The cache key of one step (see the module docstring for what goes in)."""
    p = {k: v for k, v in step.parameters.items() if k != "run_dir"}
    given = {}
    if step.stage == "load":
        for m in p.get("members", []):
            if m.get("path") and Path(m["path"]).exists():  # a SavedModel folder too
                given[m["name"]] = io.sha256(m["path"])
        if isinstance(p.get("dataset"), dict):
            given["dataset"] = data.source_hash(p["dataset"]["path"])
    return _digest({"label": step.label, "notebook": notebook, "params": p, "sources": sources,
                    "versions": env, "given_files": given, "upstream": upstream})


def step_upstream(step: Step, steps: list[Step],
                  outputs: dict[str, dict[str, str]]) -> dict[str, str]:
    """The earlier results a step's key hashes: every output of the steps of earlier stages,
    and the trained files of the steps it starts from (a fine-tune's base member)."""
    rank = params.STAGES.index(step.stage)
    upstream: dict[str, str] = {}
    for s in steps:
        if params.STAGES.index(s.stage) < rank or s.label in step.needs:
            upstream |= outputs.get(s.label, {})
    return upstream


def plan_keys(config: params.Config, run_root: Path, *, nb_dir: Path,
              package_dir: Path | None = None,
              outputs: dict[str, dict[str, str]] | None = None) -> dict[str, str]:
    """Cache keys of every step, given the outputs each step produced: the keys the runner
    computes (both use `step_upstream` and `step_key`)."""
    outputs = outputs or {}
    sources, env = sources_hash(package_dir), versions()
    steps = plan(config, run_root)
    return {step.label: step_key(step, notebook=notebook_hash(nb_dir / step.notebook),
                                 sources=sources, upstream=step_upstream(step, steps, outputs),
                                 env=env)
            for step in steps}


def _snapshot(root: Path, scope: str = "") -> dict[str, tuple[int, int]]:
    """(size, mtime) of every artifact file under `root/scope` (hidden files, notebooks excluded;
    TensorBoard logs too: they hold timestamps, so they must not enter downstream cache keys)."""
    base = root / scope if scope else root
    out = {}
    if not base.exists():
        return out
    for p in base.rglob("*"):
        rel = p.relative_to(root)
        if p.is_file() and not any(part.startswith(".") for part in rel.parts) \
                and rel.parts[0] not in ("notebooks", "manifest.json", "tensorboard") \
                and "backup" not in rel.parts:
            st = p.stat()
            out[str(rel)] = (st.st_size, st.st_mtime_ns)
    return out


def _changed(root: Path, before: dict, scope: str = "") -> dict[str, str]:
    after = _snapshot(root, scope)
    return {rel: io.sha256(root / rel) for rel, stat in sorted(after.items())
            if before.get(rel) != stat}


def _intact(root: Path, outputs: dict[str, str]) -> bool:
    return all((root / rel).is_file() and io.sha256(root / rel) == sha
               for rel, sha in outputs.items())


# ---------------------------------------------------------------------------- the run


def _now() -> str:
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


class RunLock:
    """An exclusive lock on a run folder: a second run with the same run id is refused.

    `fcntl.flock` on `.lock`: the kernel holds the lock, so there is no window between taking
    it and writing the PID, and a process killed with -9 releases it. The file is removed on
    release; a holder checks that the file it locked is still the one at the path (another
    process may have removed it in between) and otherwise tries again.
    """

    def __init__(self, root: Path):
        self.path = root / LOCK
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        import fcntl

        for _ in range(20):
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                pid = self._holder()
                raise PipelineError(
                    f"run folder '{self.path.parent}' is in use by process "
                    f"{pid or '(starting)'}; wait for that run to finish or choose another "
                    "--run-id.") from None
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if not same:  # removed by the holder that released it just now
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
            self._fd = fd
            return self
        raise PipelineError(f"could not lock run folder '{self.path.parent}'")

    def _holder(self) -> int | None:
        try:
            return int(self.path.read_text().strip() or 0) or None
        except (OSError, ValueError):
            return None

    def __exit__(self, *exc) -> None:
        self.path.unlink(missing_ok=True)  # while still holding it: nobody locks a removed file
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


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


@contextlib.contextmanager
def _space_reserve(run_root: Path, size: int = 1 << 20):
    """A hidden 1 MiB file in the run folder, released just before the final manifest is
    written, so a run that filled its disk can still record how it ended."""
    path = run_root / ".space-reserve"
    try:
        with open(path, "wb") as fh:
            fh.truncate(0)
            os.posix_fallocate(fh.fileno(), 0, size)
    except OSError:
        path.unlink(missing_ok=True)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


class Interrupted(KeyboardInterrupt):
    """A run stopped by SIGINT (Ctrl-C) or SIGTERM (a scheduler, `kill`, a container stop)."""

    def __init__(self, name: str, signum: int = signal.SIGINT):
        super().__init__(name)
        self.signum = int(signum)


@contextlib.contextmanager
def interrupts():
    """One handler for SIGINT and SIGTERM while a run holds its folder: the first signal raises
    `Interrupted` (so the manifest records `interrupted`, the lock is released and the index
    updated); further ones are noted and ignored until the run has written its records.
    Yields the list of signal numbers received."""
    received: list[int] = []

    def handler(signum, frame):
        received.append(signum)
        if len(received) == 1:
            raise Interrupted(signal.Signals(signum).name, signum)

    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


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
    only_mode = bool(only)
    run_root, report_dir = preflight(runs_dir, reports_dir, run_id)
    check_member_files(config, data.check_dataset(config.load.dataset,
                                                  train_rows=config.load.train_rows))
    nb_dir = Path(nb_dir) if nb_dir else notebooks_dir()
    os.environ.update(kernel_env())  # kernels inherit it
    rd = RunDir(run_root)
    rd.notebooks.mkdir(parents=True, exist_ok=True)
    with RunLock(run_root), interrupts() as received, _space_reserve(run_root) as reserve:
        manifest = _start_manifest(rd, config, run_id, steps)
        runner = _Runner(rd, report_dir, nb_dir, run_root.parent, kernel_name, progress,
                         manifest, pool)
        manifest["executor"] = pool.describe_run() if pool else {"name": "local", "jobs": jobs}
        t_run = time.perf_counter()
        try:
            runner.run_all(steps, forced=forced, only_mode=only_mode, jobs=jobs)
            manifest["status"] = "succeeded"
        except KeyboardInterrupt:
            manifest["status"] = "interrupted"
            signum = received[0] if received else signal.SIGINT
            manifest["interrupted_by"] = signal.Signals(signum).name
            raise Interrupted(signal.Signals(signum).name, signum) from None
        except StageFailedError:
            manifest["status"] = "failed"
            raise
        except BaseException:
            manifest["status"] = "failed"
            raise
        finally:
            manifest["ended"] = _now()
            manifest["duration_s"] = round(time.perf_counter() - t_run, 2)
            for st in manifest["stages"]:
                st["provenance"] = report.provenance(st) or st["status"]
            ran_on = [st["device"] for st in manifest["stages"] if st.get("device")]
            if ran_on:
                manifest["devices"] = ran_on[-1]["devices"]
                manifest["gpu_determinism"] = ran_on[-1]["deterministic"] \
                    if ran_on[-1].get("gpus") else None
            manifest["artifacts"] = {rel: io.sha256(run_root / rel)
                                     for rel in sorted(_snapshot(run_root))}
            card = run_root / "data" / "card.json"
            if card.exists():
                manifest["data_hash"] = io.read_json(card).get("sha256")
            reserve.unlink(missing_ok=True)  # a full disk still takes the final manifest
            io.write_json(rd.manifest, manifest)
            report.write_index(run_root, report_dir)
            report.write_runs_index(report_dir.parent)
            if pool is not None:
                pool.close()
    return run_root


def _start_manifest(rd: RunDir, config: params.Config, run_id: str,
                    steps: list[Step]) -> dict[str, Any]:
    """A fresh manifest, keeping earlier records of this run id (resume) where steps match."""
    old = read_manifest(rd.root, missing_ok=True)
    old_records = {s["label"]: s for s in old.get("stages", [])}
    cleaned = io.clean_leftovers(rd.root, recursive=True)  # a crashed attempt's temporary files
    io.write_text(rd.root / "config.yaml", yaml.safe_dump(config.model_dump(mode="json"),
                                                          sort_keys=False))
    manifest = {
        "run_id": run_id, "status": "running", "started": _now(),
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


@dataclass
class _Runner:
    rd: RunDir
    report_dir: Path
    nb_dir: Path
    runs_dir: Path
    kernel_name: str
    progress: bool
    manifest: dict[str, Any]
    pool: Any = None  # an executor of every step (cluster.RayExecutor); None: this process

    def run_all(self, steps: list[Step], *, forced: set[str], only_mode: bool, jobs: int):
        """Each step in order: reuse a cached result or execute it (train steps as one group).

        With `only_mode`, steps before the selected ones must come from the cache and steps
        after them are skipped.
        """
        sources, env = sources_hash(), versions()
        records = self.manifest["stages"]
        last = max(k for k, s in enumerate(steps) if s.label in forced) if only_mode else None
        done: dict[str, dict[str, str]] = {}  # label -> outputs of the steps decided so far
        i = 0
        while i < len(steps):
            j = i + 1
            while steps[i].stage == "train" and j < len(steps) and steps[j].stage == "train":
                j += 1
            pending = []
            for k in range(i, j):
                if last is not None and k > last:
                    records[k].update(status="skipped", outputs={})
                else:
                    pending.append(k)
            while pending:  # in waves: a fine-tune's key needs its base member's trained file
                wave = [k for k in pending if not any(
                    steps[d].label in steps[k].needs for d in pending)]
                pending = [k for k in pending if k not in wave]
                to_execute = []
                for k in wave:
                    step, rec = steps[k], records[k]
                    rec["key"] = step_key(step, notebook=notebook_hash(self.nb_dir / step.notebook),
                                          sources=sources, env=env,
                                          upstream=step_upstream(step, steps, done))
                    if step.label not in forced and self._reuse(step, rec):
                        self._say(k, steps, f"cached (from run {rec['cached_from']})")
                    elif only_mode and step.label not in forced:
                        raise PipelineError(
                            f"--only: step '{step.label}' has no cached result to reuse (no "
                            "earlier run with the same inputs); run the chain without --only "
                            "first.")
                    else:
                        self._say(k, steps, "running")
                        to_execute.append(k)
                self._execute(steps, to_execute, jobs)
                for k in wave:
                    done[steps[k].label] = records[k].get("outputs", {})
            i = j

    def _save(self) -> None:
        """Persist the manifest. A full disk becomes a PipelineError; the final record is still
        written by `run` from the space reserve."""
        try:
            io.write_json(self.rd.manifest, self.manifest)
        except OSError as err:
            raise PipelineError(
                f"cannot write '{self.rd.manifest}' ({err.strerror or err}); expected a run "
                "folder with free space. Free some space (or choose another --runs-dir), then "
                "resume with the same --run-id.") from None

    def _say(self, k: int, steps: list[Step], what: str) -> None:
        if self.progress:
            print(f"[{k + 1}/{len(steps)}] {steps[k].label}: {what}", flush=True)

    def _reuse(self, step: Step, rec: dict[str, Any]) -> bool:
        """Reuse this run's earlier result, or copy one from another run with the same key."""
        prev = rec.pop("previous", None)
        if prev and prev.get("key") == rec["key"] and _intact(self.rd.root, prev["outputs"]):
            rec.update(status="succeeded", outputs=prev["outputs"], report=prev.get("report"),
                       cached_from=prev.get("cached_from") or self.manifest["run_id"],
                       duration_s=0.0, device=prev.get("device"))
            self._ensure_report(step, rec)
            return True
        for other in self._other_runs():
            for srec in other["manifest"].get("stages", []):
                if srec.get("key") == rec["key"] and srec.get("status") == "succeeded" \
                        and _intact(other["root"], srec.get("outputs", {})):
                    self._copy(other["root"], srec, step)
                    rec.update(status="succeeded", outputs=srec["outputs"], duration_s=0.0,
                               cached_from=srec.get("cached_from") or other["manifest"]["run_id"],
                               device=srec.get("device"))
                    self._ensure_report(step, rec, source=other)
                    return True
        return False

    def _other_runs(self) -> Iterable[dict[str, Any]]:
        """Earlier runs in the runs folder, newest first."""
        found = []
        for m in self.runs_dir.glob("*/manifest.json"):
            if m.parent == self.rd.root:
                continue
            try:
                found.append({"root": m.parent, "manifest": io.read_json(m)})
            except (OSError, ValueError):
                continue
        return sorted(found, key=lambda r: r["manifest"].get("started", ""), reverse=True)

    def _copy(self, src_root: Path, srec: dict[str, Any], step: Step) -> None:
        for rel in srec["outputs"]:
            dest = self.rd.root / rel
            with io.atomic_path(dest) as tmp:
                shutil.copy2(src_root / rel, tmp)
        nb = src_root / srec["notebook"]
        if nb.exists():
            with io.atomic_path(self.rd.notebooks / step.output) as tmp:
                shutil.copy2(nb, tmp)

    def _ensure_report(self, step: Step, rec: dict[str, Any], source: dict | None = None):
        html_name = Path(step.output).with_suffix(".html").name
        rec["report"] = html_name
        if (self.report_dir / html_name).exists() and source is None:
            return
        nb = self.rd.notebooks / step.output
        if nb.exists():
            report.render_notebook(nb, self.report_dir / html_name)

    def _execute(self, steps: list[Step], indices: list[int], jobs: int) -> None:
        records = self.manifest["stages"]
        if self.pool is not None and indices:
            self._execute_parallel(steps, indices, self.pool)
        elif jobs > 1 and len(indices) > 1:
            self._execute_parallel(steps, indices, LocalPool(jobs))
        else:
            for k in indices:
                _execute_step(steps[k], records[k], nb_dir=self.nb_dir, rd=self.rd,
                              kernel_name=self.kernel_name, progress=self.progress)
                self._finish(steps[k], records[k])
        self._save()

    def _finish(self, step: Step, rec: dict[str, Any]) -> None:
        """Render the report and persist the manifest; raise when the step failed."""
        html_name = Path(step.output).with_suffix(".html").name
        out = self.rd.notebooks / step.output
        if out.exists():
            try:
                report.render_notebook(out, self.report_dir / html_name)
                rec["report"] = html_name
            except Exception as err:  # noqa: BLE001  a notebook cut short (disk full, killed)
                rec["report_error"] = f"{type(err).__name__}: {str(err)[:300]}"
        self._save()
        if rec["status"] == "failed":
            raise StageFailedError(
                f"stage '{step.label}' failed: {rec['error']}. The executed notebook is "
                f"'{self.rd.root / rec['notebook']}', its report "
                f"'{self.report_dir / html_name}'."
            )
        if rec["status"] == "interrupted":
            raise KeyboardInterrupt

    def _execute_parallel(self, steps: list[Step], indices: list[int], pool) -> None:
        """Up to `pool.slots` steps at once, each started by the pool (`LocalPool`: a process
        of its own; `cluster.RayExecutor`: a Ray task), a fine-tune after its base member."""
        records = self.manifest["stages"]
        pending, running = list(indices), {}
        failed = None
        try:
            while pending or running:
                while len(running) < pool.slots and failed is None:
                    # a fine-tune starts once the member it starts from is trained
                    ready = [k for k in pending if all(
                        records[d]["status"] == "succeeded" for d in
                        (i for i, s in enumerate(steps) if s.label in steps[k].needs))]
                    if not ready:
                        break
                    k = ready[0]
                    pending.remove(k)
                    handle = pool.start(steps[k], self.rd, self.nb_dir, self.kernel_name)
                    if self.progress:
                        print(f"  started {steps[k].label} ({pool.describe(steps[k])})",
                              flush=True)
                    running[k] = handle
                if pending and not running and failed is None:
                    raise PipelineError(f"steps {[steps[k].label for k in pending]} wait for "
                                        "steps that did not succeed")
                for k, handle in list(running.items()):
                    result = pool.poll(handle)
                    if result is None:
                        continue
                    del running[k]
                    rec = records[k]
                    rec.update(result)
                    if self.progress:
                        print(f"  finished {steps[k].label}: {rec['status']}", flush=True)
                    try:
                        self._finish(steps[k], rec)
                    except StageFailedError as err:
                        failed = failed or err
                if failed is not None and not running:
                    raise failed
                time.sleep(0.2)
        except KeyboardInterrupt:
            pool.stop(list(running.values()))
            for k in running:
                records[k]["status"] = "interrupted"
            raise


class LocalPool:
    """`--jobs N`: each step in its own `python -m kernelib.pipeline` process on this machine,
    with a share of the cores."""

    def __init__(self, jobs: int):
        self.slots = jobs
        self.threads = max(1, (os.cpu_count() or 1) // jobs)

    def describe(self, step: Step) -> str:
        return f"{self.threads} thread(s)"

    def start(self, step: Step, rd: RunDir, nb_dir: Path, kernel_name: str):
        return _spawn_step(step, rd, nb_dir, kernel_name, self.threads)

    def poll(self, handle) -> dict[str, Any] | None:
        """The step's manifest record once its process has ended, else None."""
        proc, result = handle
        if proc.poll() is None:
            return None
        return io.read_json(result) if result.exists() else {
            "status": "failed", "error": f"worker exited with code {proc.returncode}"}

    def stop(self, handles: list) -> None:
        """Ctrl-C: SIGINT to every running step (its kernel stops), kill what does not end."""
        for proc, _ in handles:
            proc.send_signal(signal.SIGINT)
        for proc, _ in handles:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()


def _execute_step(step: Step, record: dict[str, Any], *, nb_dir: Path, rd: RunDir,
                  kernel_name: str, progress: bool) -> None:
    """Execute one notebook with papermill and fill in its manifest record."""
    import papermill as pm

    out = rd.notebooks / step.output
    before = _snapshot(rd.root, step.output_scope)
    (rd.root / DEVICE_FILE.format(label=step.label.replace(":", "_"))).unlink(missing_ok=True)
    record.update(status="running", started=_now(), parameters=step.parameters)
    record.pop("cached_from", None)
    record.pop("error", None)
    t0 = time.perf_counter()
    try:
        pm.execute_notebook(
            str(nb_dir / step.notebook), str(out), parameters=step.parameters,
            kernel_name=kernel_name, cwd=str(nb_dir), progress_bar=progress,
        )
        record["status"] = "succeeded"
    except pm.PapermillExecutionError as err:
        first = str(err.evalue).splitlines()[0] if err.evalue else ""
        record.update(status="failed", error_type=err.ename, error_message=first,
                      error=f"cell {err.exec_count or err.cell_index}: {err.ename}: {first}")
    except KeyboardInterrupt as err:
        record.update(status="interrupted", error=f"interrupted ({err or 'SIGINT'})")
    except Exception as err:  # noqa: BLE001  e.g. the kernel died (out of memory, killed)
        record.update(status="failed", error_type=type(err).__name__,
                      error=f"{type(err).__name__}: {err}")
    record["ended"] = _now()
    record["duration_s"] = round(time.perf_counter() - t0, 2)
    record["outputs"] = _changed(rd.root, before, step.output_scope) \
        if record["status"] == "succeeded" else {}
    device = rd.root / DEVICE_FILE.format(label=step.label.replace(":", "_"))
    if device.exists():
        record["device"] = io.read_json(device)
        device.unlink()


def job_of(step: Step, nb_dir: Path, kernel_name: str, threads: int) -> dict[str, Any]:
    """What a worker needs to execute one step (`run_job`): plain JSON."""
    return {"step": asdict(step), "nb_dir": str(nb_dir), "kernel_name": kernel_name,
            "env": kernel_env(threads)}


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Execute one step of a job (`job_of`) and return its manifest record: the step runner
    of every executor (a `--jobs` process, a Ray task)."""
    os.environ.update(job["env"])  # the kernel inherits it
    step = Step(**{**job["step"], "needs": tuple(job["step"]["needs"])})
    record: dict[str, Any] = {}
    _execute_step(step, record, nb_dir=Path(job["nb_dir"]),
                  rd=RunDir(Path(step.parameters["run_dir"])), kernel_name=job["kernel_name"],
                  progress=False)
    return record


def _spawn_step(step: Step, rd: RunDir, nb_dir: Path, kernel_name: str, threads: int):
    """Start `python -m kernelib.pipeline` for one step in its own process."""
    job = rd.root / f".job-{step.label.replace(':', '_')}.json"
    result = job.with_suffix(".result.json")
    result.unlink(missing_ok=True)
    io.write_json(job, {**job_of(step, nb_dir, kernel_name, threads), "result": str(result)})
    env = {**os.environ, **kernel_env(threads)}
    proc = subprocess.Popen([sys.executable, "-m", "kernelib.pipeline", str(job)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, result


def _worker(job_path: str) -> int:
    """Entry point of a parallel step: execute it and write its record to the result file."""
    job = io.read_json(job_path)
    io.write_json(job["result"], run_job(job))
    Path(job_path).unlink(missing_ok=True)
    return 0


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


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1]))
