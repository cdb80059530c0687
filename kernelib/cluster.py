"""`kernelib run --executor ray`: every step of the plan as a Ray task.

The runner's scheduling (`executor.Executor`: cache, dependency order, manifest, reports) stays
the one the local `--jobs` pool uses; `RayExecutor` only starts, waits for and stops steps.
Each task calls `executor.run_job`, the step runner a `--jobs` process calls too, which
executes the step's notebook with papermill on whichever node Ray picks.

Ray starts inside the command when no address is given (a local instance, stopped at the end),
or joins a cluster (`--address auto`, `ray://head:10001`). The run folder must be on storage
every node sees at the same path: before the first step a probe task on every node reads a file
the command wrote there and writes one back. Training steps resume from their backup
(`keras.callbacks.BackupAndRestore`), so Ray retries them when their worker dies; the other
steps are not retried.
"""

from __future__ import annotations

import math
import secrets
import socket
from pathlib import Path
from typing import Any

from kernelib import io, params
from kernelib.errors import ConfigError, PipelineError

TRAIN_RETRIES = 3  # a training step whose worker died starts again from its last epoch
PROBE_TIMEOUT_S = 120
START_ATTEMPTS = 3  # the embedded start, on a busy machine (see RayExecutor._connect)


def make_executor(name: str, *, address: str | None, jobs: int, config: params.Config):
    """The executor `kernelib run --executor NAME` asks for (the local one is the runner)."""
    if name != "ray":
        if address is not None:
            raise ConfigError(f"--address joins a Ray cluster and needs --executor ray; "
                              f"received --executor {name} --address {address}.")
        raise ConfigError(f"unknown --executor {name!r}; valid: local, ray")
    if jobs > 1:
        raise ConfigError(f"--jobs sizes the local process pool; with --executor ray the "
                          f"resources of each step decide how many run at once (run.resources, "
                          f"members' resources). Received --jobs {jobs}: drop it.")
    return RayExecutor(address=address, config=config)


def _import_ray():
    try:
        import ray
    except ImportError as err:
        raise PipelineError(
            f"--executor ray needs the Ray package, which is not installed here ({err}). "
            "Install it with: pip install 'kernelib[ray]' (or pip install 'ray>=2.40'), on the "
            "machine that runs `kernelib run` and on every node of the cluster.") from None
    return ray


def step_resources(step, config: params.Config) -> params.Resources:
    """What a step reserves: its member's `resources` for a training step, else run.resources."""
    if step.stage == "train":
        spec = next(m for m in config.load.members if m.name == step.parameters["name"])
        if spec.resources is not None:
            return spec.resources
    return config.run.resources


def probe_storage(run_root: str, token: str, node_id: str) -> dict[str, Any]:
    """On one node: read the command's token in the run folder, write this node's own back."""
    root = Path(run_root)
    where = {"host": socket.gethostname(), "node_id": node_id}
    try:
        seen = (root / ".probe-driver").read_text()
    except OSError as err:
        return {**where, "ok": False, "why": f"cannot read '{root / '.probe-driver'}' "
                                             f"({type(err).__name__}: {err})"}
    if seen != token:
        return {**where, "ok": False, "why": f"'{root}' on this node is another folder (it "
                                             "holds a different probe file)"}
    try:
        io.write_text(root / f".probe-{node_id}", token)
    except OSError as err:
        return {**where, "ok": False, "why": f"cannot write into '{root}' "
                                             f"({type(err).__name__}: {err})"}
    return {**where, "ok": True}


def ray_step(job: dict[str, Any]) -> dict[str, Any]:
    """The Ray task of one step: `executor.run_job` with its stderr (and its kernel's) in the
    run folder's `logs/<step>.stderr`, as with the local pool, and where it ran."""
    import ray

    from kernelib import executor
    from kernelib.rundir import RunDir

    step = executor.step_of(job)
    log = executor.log_path(RunDir(Path(step.parameters["run_dir"])), step)
    with executor.stderr_into(log):
        record = executor.with_log(executor.run_job(job), log)
    ctx = ray.get_runtime_context()
    record["node"] = {"host": socket.gethostname(), "node_id": ctx.get_node_id()}
    return record


class RayExecutor:
    """Starts each step as a Ray task with the resources the config declares; the runner's
    `executor.Executor` drives it like the local pool (`start`, `wait`, `stop`)."""

    slots = 1 << 30  # no cap of our own: Ray queues tasks until their resources are free

    def __init__(self, *, address: str | None, config: params.Config):
        self.ray = _import_ray()
        self.address = address
        self.config = config
        self._connected = False
        self._started_here = False
        self._probed: set[str] = set()

    def describe_run(self) -> dict[str, Any]:
        return {"name": "ray", "address": self.address or "embedded",
                "ray": self.ray.__version__}

    def describe(self, step) -> str:
        r = step_resources(step, self.config)
        return f"Ray task, num_cpus={r.num_cpus:g}, num_gpus={r.num_gpus:g}"

    def _connect(self) -> None:
        """Start a local Ray instance (no address) or join the cluster, once, on first use."""
        if self._connected:
            return
        ray = self.ray
        if ray.is_initialized():  # a caller's own ray.init (a notebook, a test): use it
            self._connected = True
            return
        if self.address is not None:
            try:
                ray.init(address=self.address, log_to_driver=False, logging_level="warning")
            except (ConnectionError, RuntimeError, ValueError) as err:
                raise PipelineError(
                    f"could not join the Ray cluster at --address {self.address!r} ({err}); "
                    "expected a running cluster (`ray start --head` on the head node, then "
                    "--address auto there, or ray://HEAD:10001 from elsewhere). Check the "
                    "address, or drop --address to start Ray inside this command.") from None
        else:
            for attempt in range(START_ATTEMPTS):
                try:
                    # "local": a new instance, even where a `ray start` cluster left its
                    # address file (ray.init() would join that one, or hang on a dead one)
                    ray.init(address="local", include_dashboard=False, log_to_driver=False,
                             logging_level="warning")
                    break
                except Exception as err:  # noqa: BLE001  Ray raises a bare Exception here
                    ray.shutdown()
                    if attempt + 1 == START_ATTEMPTS:
                        raise PipelineError(
                            f"Ray could not start a local instance ({err}), {START_ATTEMPTS} "
                            "tries. Its raylet gives its agents a fixed 15 s to start, which a "
                            "busy machine can miss (see /tmp/ray/session_latest/logs/"
                            "raylet.err). Try again when the machine is less loaded, or start "
                            "Ray yourself (`ray start --head`) and pass --address auto.") \
                            from None
        self._started_here = True
        self._connected = True

    def check_storage(self, run_root: Path) -> None:
        """Fail unless every alive node reads and writes the run folder at the same path."""
        ray = self.ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        token = secrets.token_hex(16)
        mark = run_root / ".probe-driver"
        io.write_text(mark, token)
        probe = ray.remote(probe_storage)
        try:
            refs = {}
            for node in ray.nodes():
                if not node.get("Alive"):
                    continue
                nid = node["NodeID"]
                refs[nid] = (node, probe.options(
                    num_cpus=0, max_retries=0,
                    scheduling_strategy=NodeAffinitySchedulingStrategy(nid, soft=False),
                ).remote(str(run_root), token, nid))
            for nid, (node, ref) in refs.items():
                try:
                    seen = ray.get(ref, timeout=PROBE_TIMEOUT_S)
                except ray.exceptions.GetTimeoutError:
                    seen = {"ok": False, "why": f"no answer from its probe task within "
                                                f"{PROBE_TIMEOUT_S} s"}
                back = run_root / f".probe-{nid}"
                if seen["ok"] and not (back.is_file() and back.read_text() == token):
                    seen = {"ok": False, "why": f"its file '{back}' is not in the run folder "
                                                "this command sees"}
                back.unlink(missing_ok=True)
                if not seen["ok"]:
                    raise PipelineError(
                        f"Ray node {node.get('NodeManagerAddress')} "
                        f"({seen.get('host') or node.get('NodeManagerHostname')}, node id "
                        f"{nid[:12]}) cannot see the run folder '{run_root}': {seen['why']}. "
                        "Every node must see the runs folder at the same path: put --runs-dir "
                        "on shared storage (NFS, or a ReadWriteMany volume under KubeRay) "
                        "mounted at that path on every node.")
        finally:
            mark.unlink(missing_ok=True)

    def start(self, step, rd, nb_dir: Path, kernel_name: str):
        """Submit one step; returns its object ref."""
        from kernelib import executor

        self._connect()
        if str(rd.root) not in self._probed:
            self.check_storage(rd.root)
            self._probed.add(str(rd.root))
        r = step_resources(step, self.config)
        threads = max(1, math.floor(r.num_cpus))
        task = self.ray.remote(ray_step).options(
            num_cpus=r.num_cpus, num_gpus=r.num_gpus, name=step.label,
            max_retries=TRAIN_RETRIES if step.stage == "train" else 0, retry_exceptions=False)
        return task.remote(executor.job_of(step, nb_dir, kernel_name, threads))

    def wait(self, ref) -> dict[str, Any]:
        """The step's manifest record once its task has ended (a failed record when Ray gave
        up on it or it was cancelled)."""
        ray = self.ray
        try:
            return ray.get(ref)
        except ray.exceptions.RayError as err:
            first = (str(err).strip().splitlines() or [""])[0]
            return {"status": "failed", "error_type": type(err).__name__,
                    "error": f"Ray task failed: {type(err).__name__}: {first}"}

    def stop(self, refs: list) -> None:
        """Ctrl-C: cancel the running tasks (their workers, and so their kernels, end)."""
        for ref in refs:
            self.ray.cancel(ref, force=True)

    def close(self) -> None:
        if self._started_here:
            self.ray.shutdown()
        self._connected = self._started_here = False
