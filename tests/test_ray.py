"""The Ray executor and the tf.distribute strategies, with a real local Ray and real training.

The smoke chain runs once with `--executor ray` (Ray started inside the command) into its own
runs folder, so nothing comes from the local executor's cache; its metrics must equal the local
executor's session smoke run byte for byte. A blind node (a second Ray node whose view of the
runs folder is an empty tmpfs, in a mount namespace of its own) must stop a run before any step.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from conftest import ROOT, kernelib_cli, run_python

pytest.importorskip("ray")
pytestmark = [pytest.mark.e2e, pytest.mark.ray]

SMOKE = ROOT / "configs" / "smoke.yaml"


def _run(tmp: Path, *args: str, config: Path = SMOKE) -> subprocess.CompletedProcess:
    return kernelib_cli("run", str(config), *args, "--runs-dir", str(tmp / "runs"),
                        "--reports-dir", str(tmp / "reports"), cwd=tmp)


def _manifest(tmp: Path, run_id: str) -> dict:
    return json.loads((tmp / "runs" / run_id / "manifest.json").read_text())


def _smoke_with(tmp: Path, **sections) -> Path:
    cfg = yaml.safe_load(SMOKE.read_text())
    for name, values in sections.items():
        cfg[name] = {**cfg.get(name, {}), **values}
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def ray_run(tmp_path_factory):
    """configs/smoke.yaml with --executor ray, Ray embedded, in a runs folder of its own.

    Each step reserves every core, so its TensorFlow thread pools are as large as a step's
    of the local executor (floating-point sums depend on how work is split over threads);
    `run.resources` is not part of any step's cache key."""
    tmp = tmp_path_factory.mktemp("ray")
    config = _smoke_with(tmp, run={"resources": {"num_cpus": os.cpu_count() or 1}})
    proc = _run(tmp, "--run-id", "ray", "--executor", "ray", config=config)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {"proc": proc, "tmp": tmp, "run": tmp / "runs" / "ray"}


def test_ray_chain_succeeds_with_the_local_executors_metrics(smoke, ray_run):
    m = _manifest(ray_run["tmp"], "ray")
    assert m["status"] == "succeeded" and m["executor"]["name"] == "ray"
    assert [s["status"] for s in m["stages"]] == ["succeeded"] * 7
    assert not any(s.get("cached_from") for s in m["stages"])
    assert all(s["node"]["node_id"] for s in m["stages"])  # each step ran as a Ray task
    for s in m["stages"]:  # each task's stderr, its kernel's included, is in the run folder
        log = ray_run["run"] / s["stderr"]
        assert log.parent.name == "logs" and log.stat().st_size > 0, s["label"]
    train = {s["label"]: s for s in m["stages"]}["train:mlp_0"]
    assert train["device"]["distribution"] == {"strategy": None, "replicas": 1}
    local = sorted((smoke["run"] / "metrics").glob("*.json"))
    assert local
    for f in local:
        assert (ray_run["run"] / "metrics" / f.name).read_bytes() == f.read_bytes(), f.name
    assert (ray_run["tmp"] / "reports" / "ray" / "index.html").exists()
    assert not list(ray_run["run"].glob(".probe-*"))  # the probe cleans up after itself


def test_warm_ray_rerun_is_fully_cached(ray_run):
    proc = _run(ray_run["tmp"], "--run-id", "ray-warm", "--executor", "ray",
                config=ray_run["tmp"] / "config.yaml")
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = _manifest(ray_run["tmp"], "ray-warm")
    assert [s.get("cached_from") for s in m["stages"]] == ["ray"] * 7
    assert "cached (from run ray)" in proc.stdout and "started" not in proc.stdout  # no task
    def results(artifacts: dict) -> dict:  # TensorBoard logs are no step's result
        return {rel: sha for rel, sha in artifacts.items() if not rel.startswith("tensorboard/")}

    first = _manifest(ray_run["tmp"], "ray")["artifacts"]
    assert results(m["artifacts"]) == results(first)  # byte for byte, from the first run


def _ray_worker_of_kernel(root: psutil.Process) -> psutil.Process | None:
    """The Ray worker whose child is a running Jupyter kernel (the step's papermill kernel)."""
    for child in root.children(recursive=True):
        try:
            if "ipykernel_launcher" in " ".join(child.cmdline()):
                return child.parent()
        except psutil.Error:
            continue
    return None


def test_sigkilled_ray_worker_is_retried_and_the_run_succeeds(ray_run, tmp_path):
    shutil.copytree(ray_run["run"], tmp_path / "runs" / "ray")  # load/preprocess from cache
    # 40 epochs of the digits MLP: a window of seconds between its second backup and the end
    # of fit (with 8 the first attempt could finish before the kill, and the retry start over)
    config = _smoke_with(tmp_path, train={"epochs": 40, "patience": 40})
    cmd = [sys.executable, "-m", "kernelib.cli", "run", str(config), "--executor", "ray",
           "--run-id", "kill", "--only", "train:mlp_0", "--runs-dir", str(tmp_path / "runs"),
           "--reports-dir", str(tmp_path / "reports"), "--quiet"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    meta = tmp_path / "runs" / "kill" / "members" / "mlp_0" / "backup" / "training_metadata.json"
    worker, deadline = None, time.time() + 300
    while time.time() < deadline:
        try:
            if json.loads(meta.read_text())["epoch"] >= 2:
                worker = _ray_worker_of_kernel(psutil.Process(proc.pid))
                if worker is not None:
                    break
        except (OSError, ValueError):
            pass
        assert proc.poll() is None, "the run ended before its worker could be killed"
        time.sleep(0.05)
    assert worker is not None, "no Ray worker running a kernel was found"
    assert "ray" in " ".join(worker.cmdline()).lower()
    os.kill(worker.pid, signal.SIGKILL)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    m = _manifest(tmp_path, "kill")
    by = {s["label"]: s for s in m["stages"]}
    assert m["status"] == "succeeded" and by["train:mlp_0"]["status"] == "succeeded"
    executed = (tmp_path / "runs" / "kill" / "notebooks" / "03_train_mlp_0.ipynb").read_text()
    first_epoch = int(executed.split("Epoch ")[1].split("/")[0])
    assert first_epoch >= 3, "the retry trained from scratch instead of resuming its backup"
    history = (tmp_path / "runs" / "kill" / "members" / "mlp_0" / "history.csv").read_text()
    assert len(history.strip().splitlines()) == 1 + 40


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _can_unshare() -> bool:
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "true"],
                           capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(shutil.which("unshare") is None or not _can_unshare(),
                    reason="needs `unshare -m` (root) for a node with its own view of the disk")
def test_a_node_that_cannot_see_the_run_folder_fails_the_run_before_any_stage(tmp_path,
                                                                               monkeypatch):
    import ray

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # a test cluster on loopback: no token

    runs = tmp_path / "runs"
    runs.mkdir()
    port = _free_port()
    ray_bin = str(Path(sys.executable).parent / "ray")
    common = ["--num-cpus", "1", "--block", "--disable-usage-stats"]
    head = subprocess.Popen([ray_bin, "start", "--head", "--port", str(port),
                             "--include-dashboard=false", *common],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    blind = None
    try:
        address = f"127.0.0.1:{port}"
        # the second node sees an empty tmpfs where the runs folder is
        blind = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "sh", "-c",
             f"mount -t tmpfs tmpfs '{runs}' && exec '{ray_bin}' start --address {address} "
             + " ".join(common)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + 120
        while True:
            try:
                ray.init(address=address, log_to_driver=False, logging_level="error")
                alive = [n for n in ray.nodes() if n["Alive"]]
                ray.shutdown()
                if len(alive) == 2:
                    break
            except (ConnectionError, RuntimeError):
                ray.shutdown()
            assert time.time() < deadline, "the two Ray nodes did not come up"
            time.sleep(1)
        proc = _run(tmp_path, "--run-id", "blind", "--executor", "ray", "--address", address)
        assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
        err = proc.stderr
        assert "cannot see the run folder" in err and str(runs / "blind") in err, err[-2000:]
        assert re.search(r"Ray node [0-9.]+ \(\S+, node id [0-9a-f]{12}\)", err), err[-2000:]
        assert "shared storage" in err
        m = _manifest(tmp_path, "blind")
        assert m["status"] == "failed"
        assert {s["status"] for s in m["stages"]} == {"pending"}  # no stage ran
        assert not list((runs / "blind" / "notebooks").glob("*.ipynb"))
    finally:
        for p in (blind, head):
            if p is not None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in (blind, head):
            if p is not None:
                try:
                    p.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)


def test_without_ray_the_executor_says_how_to_install_it(tmp_path):
    code = ("import sys; sys.modules['ray'] = None; from kernelib.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    proc = run_python(code, "run", str(SMOKE), "--executor", "ray", "--runs-dir",
                      str(tmp_path / "runs"), "--reports-dir", str(tmp_path / "reports"))
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "pip install 'kernelib[ray]'" in proc.stderr and "PipelineError" in proc.stderr
    assert not (tmp_path / "runs").exists()  # refused before anything was written


@pytest.mark.parametrize("args, match", [
    (["--jobs", "2", "--executor", "ray"], "drop it"),
    (["--address", "auto"], "needs --executor ray"),
])
def test_executor_options_that_do_not_fit_are_refused(tmp_path, args, match):
    proc = _run(tmp_path, *args)
    assert proc.returncode == 2 and match in proc.stderr, proc.stderr[-2000:]


# ---------------------------------------------------------------------------- tf.distribute

_TRAIN_ONE = r"""
import json, os, sys
import numpy as np
devices, distribution, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
import tensorflow as tf
if devices > 1:  # before TensorFlow's runtime starts
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * devices)
from kernelib import data, train, zoo
device = train.setup(seed=0, distribution=distribution)
splits = data.split(data.load_dataset("digits"), val_fraction=0.15, test_fraction=0.2, seed=0)
with train.strategy_scope():
    model = zoo.build("mlp", preprocessor=data.build_preprocessor(splits.x_train),
                      n_classes=splits.n_classes, name="mlp", seed=0)
    variable = type(model.trainable_variables[0].value).__name__
hist = train.fit(model, splits.train, splits.val, out_dir=os.path.join(out, "member"), epochs=12,
                 batch_size=32, learning_rate=3e-3, patience=12, seed=0)
proba = model.predict(splits.x_test, verbose=0)
res = {"device": device, "variable": variable,
       "test_accuracy": float((proba.argmax(1) == splits.y_test).mean()),
       "weights_sum": float(sum(np.abs(w).sum() for w in model.get_weights()))}
if distribution == "mirrored":  # a concat head is built and trained in the same scope
    from kernelib.merge.concat import merge_concat
    with train.strategy_scope():  # a second, untrained member: concat needs two
        other = zoo.build("mlp", preprocessor=data.build_preprocessor(splits.x_train),
                          n_classes=splits.n_classes, name="mlp_b", seed=1)
    head = merge_concat([model, other], train=splits.train, val=splits.val, epochs=3,
                        learning_rate=1e-2, batch_size=32)
    res["concat_variable"] = type(head.get_layer("head").kernel.value).__name__
    res["concat_accuracy"] = float((head.predict(splits.x_test, verbose=0).argmax(1)
                                    == splits.y_test).mean())
json.dump(res, open(os.path.join(out, "result.json"), "w"))
"""


def _train_one(tmp: Path, devices: int, distribution: str, env: dict | None = None):
    out = tmp / f"{distribution}-{devices}"
    out.mkdir()
    cmd = [sys.executable, "-c", _TRAIN_ONE, str(devices), distribution, str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})})
    return proc, out


def _result(proc, out: Path) -> dict:
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, log[-3000:]
    return json.loads((out / "result.json").read_text())


def test_mirrored_over_two_cpu_devices_trains_to_the_one_device_band(tmp_path):
    one = _train_one(tmp_path, 1, "none")
    two = _train_one(tmp_path, 2, "mirrored")
    one, two = _result(*one), _result(*two)
    assert one["device"]["distribution"] == {"strategy": None, "replicas": 1}
    assert two["device"]["distribution"] == {"strategy": "MirroredStrategy", "replicas": 2}
    assert two["variable"] == "MirroredVariable" and two["concat_variable"] == "MirroredVariable"
    # digits, 12 epochs: an MLP reaches ~0.95 test accuracy; the global batch doubles (32 per
    # replica), so the mirrored run takes half the steps but stays in the band
    assert one["test_accuracy"] > 0.9 and two["test_accuracy"] > 0.9
    assert abs(one["test_accuracy"] - two["test_accuracy"]) < 0.05
    assert two["concat_accuracy"] > 0.5  # a head over the features, 3 epochs; chance is 0.1


def test_two_process_multi_worker_mirrored_run_trains_one_member(tmp_path):
    ports = [_free_port(), _free_port()]
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    procs = []
    for i in range(2):
        (tmp_path / str(i)).mkdir()
        tf_config = {"cluster": cluster, "task": {"type": "worker", "index": i}}
        procs.append(_train_one(tmp_path / str(i), 1, "multi_worker",
                                env={"TF_CONFIG": json.dumps(tf_config)}))
    results = [_result(*p) for p in procs]
    for r in results:
        assert r["device"]["distribution"] == {"strategy": "MultiWorkerMirroredStrategy",
                                               "replicas": 2}
        assert r["test_accuracy"] > 0.9
    # synchronous training: both workers end with the same weights
    assert results[0]["weights_sum"] == pytest.approx(results[1]["weights_sum"], rel=1e-6)
    assert (tmp_path / "0" / "multi_worker-1" / "member" / "history.csv").exists()


def test_step_resources_come_from_the_member_else_from_run_resources():
    from kernelib import cluster, params, pipeline

    cfg = yaml.safe_load(SMOKE.read_text())
    cfg["run"]["resources"] = {"num_cpus": 2}
    cfg["load"]["members"][1]["resources"] = {"num_cpus": 0.5, "num_gpus": 1}
    config = params.validate_config(cfg)
    steps = {s.label: s for s in pipeline.plan(config, Path("/runs/x"))}
    got = {label: cluster.step_resources(s, config).model_dump() for label, s in steps.items()}
    assert got["train:cnn_0"] == {"num_cpus": 0.5, "num_gpus": 1.0}
    assert got["train:mlp_0"] == got["merge"] == {"num_cpus": 2.0, "num_gpus": 0.0}
    assert steps["merge"].parameters["distribution"] == "none"  # train.distribution, passed on


@pytest.mark.parametrize("member, match", [
    ({"name": "f", "path": "/m.keras", "resources": {"num_cpus": 1}}, "'resources' are what"),
    ({"name": "r", "recipe": "mlp", "resources": {"num_cpus": 0}}, "greater than 0"),
    ({"name": "r", "recipe": "mlp", "resources": {"gpus": 1}}, "unknown key"),
])
def test_bad_resources_are_refused(member, match):
    from kernelib import params
    from kernelib.errors import ConfigError

    with pytest.raises(ConfigError, match=match):
        params.validate_config({"load": {"members": [member]}})
