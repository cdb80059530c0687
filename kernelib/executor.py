"""Executing steps: one notebook with papermill (`execute_step`), and the scheduler that runs a
plan's steps in dependency order (`Executor`), serially in this process or several at once in
a pool (`LocalPool`: a `python -m kernelib.executor` process per step; `cluster.RayExecutor`:
a Ray task per step).

Every pool has the same four methods: `describe(step)`, `start(step, rd, nb_dir, kernel_name)`
(returns a handle at once), `wait(handle)` (blocks; returns the step's manifest record) and
`stop(handles)` (Ctrl-C), and a `slots` attribute: how many steps it runs at once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from graphlib import TopologicalSorter
from pathlib import Path
from typing import Any

from kernelib import io
from kernelib.errors import StageFailedError
from kernelib.rundir import DEVICE_FILE, RunDir, kernel_env
from kernelib.runrecord import now
from kernelib.steps import Step, depends_on, hash_outputs, missing_outputs

STDERR_TAIL = 2000  # characters of a worker's stderr kept in its record and error message


def _label_file(step: Step) -> str:
    return step.label.replace(":", "_")


def log_path(rd: RunDir, step: Step) -> Path:
    """`logs/<step>.stderr` in the run folder: the step's worker's stderr and its kernel's."""
    log = rd.root / "logs" / f"{_label_file(step)}.stderr"
    log.parent.mkdir(exist_ok=True)
    return log


@contextlib.contextmanager
def stderr_into(path: Path):
    """This process's file descriptor 2 (inherited by the kernel it starts) into `path`, then
    back: how a worker that did not start with its stderr there (a Ray task) logs the step."""
    saved = os.dup(2)
    try:
        with open(path, "wb") as err:
            os.dup2(err.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def execute_step(step: Step, record: dict[str, Any], *, nb_dir: Path, rd: RunDir,
                 kernel_name: str, progress: bool) -> None:
    """Execute one notebook with papermill and fill in its manifest record."""
    import papermill as pm

    device = rd.root / DEVICE_FILE.format(label=_label_file(step))
    device.unlink(missing_ok=True)
    record.update(status="running", started=now(), parameters=step.parameters)
    record.pop("cached_from", None)
    record.pop("error", None)
    t0 = time.perf_counter()
    try:
        pm.execute_notebook(
            str(nb_dir / step.notebook), str(rd.notebooks / step.output),
            parameters=step.parameters, kernel_name=kernel_name, cwd=str(nb_dir),
            progress_bar=progress,
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
    record["ended"] = now()
    record["duration_s"] = round(time.perf_counter() - t0, 2)
    missing = missing_outputs(step, rd) if record["status"] == "succeeded" else []
    if missing:
        record.update(status="failed", error_type="MissingOutputs",
                      error=f"the notebook ended without writing {missing}, which the "
                            f"'{step.stage}' stage declares")
    record["outputs"] = hash_outputs(step, rd) if record["status"] == "succeeded" else {}
    if device.exists():
        record["device"] = io.read_json(device)
        device.unlink()


def job_of(step: Step, nb_dir: Path, kernel_name: str, threads: int) -> dict[str, Any]:
    """What a worker needs to execute one step (`run_job`): plain JSON."""
    return {"step": asdict(step), "nb_dir": str(nb_dir), "kernel_name": kernel_name,
            "env": kernel_env(threads)}


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Execute one step of a job (`job_of`) and return its manifest record: the step runner
    of every pool (a `--jobs` process, a Ray task)."""
    os.environ.update(job["env"])  # the kernel inherits it
    step = step_of(job)
    record: dict[str, Any] = {}
    execute_step(step, record, nb_dir=Path(job["nb_dir"]),
                 rd=RunDir(Path(step.parameters["run_dir"])), kernel_name=job["kernel_name"],
                 progress=False)
    return record


def step_of(job: dict[str, Any]) -> Step:
    """The `Step` a job (`job_of`) carries as plain JSON."""
    return Step(**{**job["step"], "needs": tuple(job["step"]["needs"])})


def with_log(record: dict[str, Any], log: Path) -> dict[str, Any]:
    """`record` with its step's log (relative to the run folder), and the log's tail when the
    step failed: what every pool adds once a step has ended."""
    record["stderr"] = str(log.relative_to(log.parent.parent))
    if record["status"] == "failed":
        record["stderr_tail"] = stderr_tail(log)
    return record


def stderr_tail(path: Path, size: int = STDERR_TAIL) -> str:
    """The last `size` characters of a log file ('' when there is none)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, fh.seek(0, os.SEEK_END) - 4 * size))
            return fh.read().decode(errors="replace")[-size:]
    except OSError:
        return ""


class LocalPool:
    """`--jobs N`: each step in its own `python -m kernelib.executor` process on this machine,
    with a share of the cores; its stderr (and its kernel's) goes to `logs/<step>.stderr`."""

    def __init__(self, jobs: int):
        self.slots = jobs
        self.threads = max(1, (os.cpu_count() or 1) // jobs)

    def describe(self, step: Step) -> str:
        return f"{self.threads} thread(s)"

    def start(self, step: Step, rd: RunDir, nb_dir: Path, kernel_name: str):
        """Start the step's worker process; returns (process, result file, stderr file)."""
        job = rd.root / f".job-{_label_file(step)}.json"
        result = job.with_suffix(".result.json")
        result.unlink(missing_ok=True)
        log = log_path(rd, step)
        io.write_json(job, {**job_of(step, nb_dir, kernel_name, self.threads),
                            "result": str(result), "runner": os.getpid()})
        env = {**os.environ, **kernel_env(self.threads)}
        with open(log, "wb") as err:
            proc = subprocess.Popen([sys.executable, "-m", "kernelib.executor", str(job)],
                                    env=env, stdout=subprocess.DEVNULL, stderr=err)
        return proc, result, log

    def wait(self, handle) -> dict[str, Any]:
        """The step's manifest record once its process has ended, with the tail of its stderr
        when it failed."""
        proc, result, log = handle
        proc.wait()
        record = io.read_json(result) if result.exists() else {
            "status": "failed", "error": f"worker exited with code {proc.returncode}"}
        result.unlink(missing_ok=True)
        return with_log(record, log)

    def stop(self, handles: list) -> None:
        """Ctrl-C: SIGINT to every running step (its kernel stops), kill what does not end."""
        for proc, *_ in handles:
            proc.send_signal(signal.SIGINT)
        for proc, *_ in handles:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()


@dataclass
class Executor:
    """Runs a plan's steps in dependency order (`graphlib.TopologicalSorter`): each ready step
    is first offered to `decide` (the cache; False: it needs no execution), then executed in
    this process, or in `pool` when it is a pool step, several at once (`concurrent.futures`
    threads wait on the pool). `finish(k)` records a step that ended and raises when it failed;
    after a failure no step starts, the running ones end, and the first failure is raised."""

    rd: RunDir
    nb_dir: Path
    kernel_name: str
    progress: bool
    pool: Any = None  # LocalPool or cluster.RayExecutor; None: every step in this process
    pooled: Callable[[Step], bool] = lambda step: True  # which steps the pool executes

    def run(self, steps: list[Step], records: list[dict[str, Any]],
            decide: Callable[[int], bool], finish: Callable[[int], None]) -> None:
        index = {s.label: k for k, s in enumerate(steps)}
        order = TopologicalSorter({k: [index[d] for d in depends_on(s, steps)]
                                   for k, s in enumerate(steps)})
        order.prepare()
        self._running: dict[Future, tuple[int, Any]] = {}
        self._failed: StageFailedError | None = None
        threads = ThreadPoolExecutor(max_workers=max(1, min(len(steps), 64)))
        try:
            while order.is_active():
                todo = [k for k in sorted(order.get_ready()) if self._failed is None]
                for k in [k for k in todo if not decide(k)]:
                    order.done(k)
                    todo.remove(k)
                for k in todo:
                    self._start(k, steps, records, threads, order, finish)
                if self._running:
                    self._collect(steps, records, order, finish)
                elif self._failed is not None:
                    raise self._failed
        except KeyboardInterrupt:
            if self._running:
                self.pool.stop([h for _, h in self._running.values()])
                for k, _ in self._running.values():
                    records[k]["status"] = "interrupted"
            raise
        finally:
            threads.shutdown(wait=True)

    def _start(self, k, steps, records, threads, order, finish) -> None:
        """Execute step k here (blocking), or start it in the pool."""
        step = steps[k]
        if self.pool is None or not self.pooled(step):
            execute_step(step, records[k], nb_dir=self.nb_dir, rd=self.rd,
                         kernel_name=self.kernel_name, progress=self.progress)
            finish(k)
            order.done(k)
            return
        while len(self._running) >= self.pool.slots:
            self._collect(steps, records, order, finish)
        if self._failed is not None:
            return
        handle = self.pool.start(step, self.rd, self.nb_dir, self.kernel_name)
        records[k].update(status="running", started=now())  # once started (a probe may fail)
        if self.progress:
            print(f"  started {step.label} ({self.pool.describe(step)})", flush=True)
        self._running[threads.submit(self.pool.wait, handle)] = (k, handle)

    def _collect(self, steps, records, order, finish) -> None:
        """Wait for a pool step to end, record it; a failure stops further starts."""
        ended, _ = wait(self._running, return_when=FIRST_COMPLETED)
        for fut in ended:
            k, _ = self._running.pop(fut)
            records[k].update(fut.result())
            if self.progress:
                print(f"  finished {steps[k].label}: {records[k]['status']}", flush=True)
            try:
                finish(k)
                order.done(k)
            except StageFailedError as err:
                self._failed = self._failed or err


def _worker(job_path: str) -> int:
    """Entry point of a pool step: execute it and write its record to the result file."""
    job = io.read_json(job_path)
    _end_with_runner(job["runner"])
    record = run_job(job)
    if os.getppid() != job["runner"]:  # the runner is gone: nobody reads the record
        return 1
    io.write_json(job["result"], record)
    Path(job_path).unlink(missing_ok=True)
    return 0


def _end_with_runner(runner: int) -> None:
    """Have the kernel send this worker SIGINT when its runner ends, as Ctrl-C does (Linux
    `prctl(PR_SET_PDEATHSIG)`): a runner killed with -9 leaves no step running on into its run
    folder beside the resume. Kernels end with their parent on their own (ipykernel's
    parent poller); a worker would not."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGINT)  # 1: PR_SET_PDEATHSIG
    if os.getppid() != runner:  # it ended before the request took effect
        raise SystemExit(1)


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1]))
