"""The runner end to end: cache reuse, partial re-runs, determinism, kill -9 resume, Ctrl-C, jobs.

Each test copies the session's smoke run into its own runs folder, so cached stages come
from it ("cached (from run smoke-test)") and the tests do not see each other's runs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from conftest import ROOT, kernelib_cli, smoke_config

pytestmark = pytest.mark.e2e


def _run(tmp: Path, *args: str, config: Path | None = None) -> subprocess.CompletedProcess:
    return kernelib_cli("run", str(config or ROOT / "configs" / "smoke.yaml"), *args,
                        "--runs-dir", str(tmp / "runs"), "--reports-dir", str(tmp / "reports"),
                        cwd=tmp)


def _manifest(tmp: Path, run_id: str) -> dict:
    return json.loads((tmp / "runs" / run_id / "manifest.json").read_text())


def _popen(tmp: Path, *args: str, config: Path | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "kernelib.cli", "run",
           str(config or ROOT / "configs" / "smoke.yaml"), *args, "--runs-dir",
           str(tmp / "runs"), "--reports-dir", str(tmp / "reports"), "--quiet"]
    # Ctrl-C as from a terminal: a shell starts background jobs (`make test &`, a CI runner)
    # with SIGINT ignored, and the child would inherit that
    return subprocess.Popen(cmd, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _kernels(proc: subprocess.Popen) -> set[int]:
    found = set()
    try:
        for child in psutil.Process(proc.pid).children(recursive=True):
            try:
                if "ipykernel_launcher" in " ".join(child.cmdline()):
                    found.add(child.pid)
            except psutil.Error:
                continue
    except psutil.Error:
        pass
    return found


def _alive(pids: set[int]) -> list[int]:
    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            continue
    return out


def test_unchanged_config_reuses_every_stage(smoke, runs):
    proc = _run(runs, "--run-id", "again")
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = _manifest(runs, "again")
    assert [s["cached_from"] for s in m["stages"]] == ["smoke-test"] * 7
    assert "[7/7] export: cached (from run smoke-test)" in proc.stdout
    # no kernel ran: no step has an execution record, and every executed notebook is the
    # cached run's, byte for byte (an execution writes new timestamps into it)
    assert not [s["label"] for s in m["stages"] if "started" in s or s["duration_s"] != 0.0]
    for s in m["stages"]:
        copy, cached = runs / "runs" / "again" / s["notebook"], smoke["run"] / s["notebook"]
        assert copy.read_bytes() == cached.read_bytes(), s["notebook"]
    assert m["artifacts"] == _manifest(runs, "smoke-test")["artifacts"]  # byte for byte
    assert all(s["provenance"] == "cached (from run smoke-test)" for s in m["stages"])
    assert "cached (from run smoke-test)" in (runs / "reports" / "again" / "index.html").read_text()


def test_export_change_reruns_only_export_and_leaves_no_kernel(runs):
    cfg = smoke_config(runs, export={"version": 2})
    proc = _popen(runs, "--run-id", "v2", config=cfg)
    kernels: set[int] = set()
    while proc.poll() is None:
        kernels |= _kernels(proc)
        time.sleep(0.2)
    assert proc.returncode == 0, proc.stdout.read()[-3000:]
    m = _manifest(runs, "v2")
    ran = [s["label"] for s in m["stages"] if not s.get("cached_from")]
    assert ran == ["export"]
    assert (runs / "runs" / "v2" / "export").exists()
    assert kernels and not _alive(kernels)


def test_export_stage_runs_again_in_the_same_run_folder(runs):
    export_dir = runs / "runs" / "smoke-test" / "export"
    before = {p.name: p.read_bytes() for p in export_dir.glob("*.onnx")}
    assert before
    refused = _run(runs, "--run-id", "smoke-test", "--only", "export",
                   config=smoke_config(runs, export={"overwrite": False}))
    assert refused.returncode == 1 and "already exists; refusing to replace" in refused.stderr
    assert {p.name: p.read_bytes() for p in export_dir.glob("*.onnx")} == before  # untouched
    again = _run(runs, "--run-id", "smoke-test", "--only", "export")  # the default replaces
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    stage = {s["label"]: s for s in _manifest(runs, "smoke-test")["stages"]}["export"]
    assert stage["status"] == "succeeded" and "cached_from" not in stage
    assert sorted(p.name for p in export_dir.glob("*.onnx")) == sorted(before)
    assert not [p for p in export_dir.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_same_seed_gives_byte_identical_metrics(smoke, runs):
    proc = _run(runs, "--run-id", "forced", "--force")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not any(s.get("cached_from") for s in _manifest(runs, "forced")["stages"])
    first = sorted((smoke["run"] / "metrics").glob("*.json"))
    assert first
    for f in first:
        again = runs / "runs" / "forced" / "metrics" / f.name
        assert again.read_bytes() == f.read_bytes(), f.name


def test_kill_9_during_training_then_resume(runs):
    cfg = smoke_config(runs, train={"epochs": 12, "patience": 12})
    proc = _popen(runs, "--run-id", "crash", config=cfg)
    meta = runs / "runs" / "crash" / "members" / "mlp_0" / "backup" / "training_metadata.json"
    kernels: set[int] = set()
    deadline = time.time() + 300
    while time.time() < deadline:
        kernels |= _kernels(proc)
        try:
            if json.loads(meta.read_text())["epoch"] >= 3:
                break
        except (OSError, ValueError):
            pass
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    for pid in [proc.pid, *kernels]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    assert _manifest(runs, "crash")["status"] == "running"  # killed: nobody could say otherwise

    again = _run(runs, "--run-id", "crash", config=cfg)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    m = _manifest(runs, "crash")
    assert m["status"] == "succeeded" and m["resumed"] is True
    by = {s["label"]: s for s in m["stages"]}
    assert by["load"]["cached_from"] == "smoke-test" and by["preprocess"]["cached_from"]
    assert "cached_from" not in by["train:mlp_0"]
    executed = (runs / "runs" / "crash" / "notebooks" / "03_train_mlp_0.ipynb").read_text()
    first_epoch = int(executed.split("Epoch ")[1].split("/")[0])
    assert first_epoch >= 4, "training restarted instead of resuming from its backup"
    history = (runs / "runs" / "crash" / "members" / "mlp_0" / "history.csv").read_text()
    assert len(history.strip().splitlines()) == 1 + 12
    hidden = [p for p in (runs / "runs" / "crash").rglob(".*")]
    assert not hidden, hidden


def test_ctrl_c_stops_kernels_and_a_second_run_is_locked_out(runs):
    proc = _popen(runs, "--run-id", "busy", "--only", "train")
    kernels: set[int] = set()
    deadline = time.time() + 120
    while not kernels and time.time() < deadline:
        kernels |= _kernels(proc)
        time.sleep(0.1)
    assert kernels, "no kernel started"
    t_kernel = time.time()
    second = _run(runs, "--run-id", "busy", "--only", "train")
    t_second = time.time() - t_kernel
    assert second.returncode == 1 and "in use by process" in second.stderr
    time.sleep(2)
    proc.send_signal(signal.SIGINT)
    t_sigint = time.time() - t_kernel
    rc = proc.wait(timeout=120)
    assert rc == 130, (f"exit {rc}; second run took {t_second:.1f} s, SIGINT sent "
                       f"{t_sigint:.1f} s after the first kernel appeared; "
                       f"manifest {_manifest(runs, 'busy')}; output {proc.stdout.read()[-2000:]}")
    time.sleep(1)
    assert not _alive(kernels)
    m = _manifest(runs, "busy")
    assert m["status"] == "interrupted"
    assert "interrupted" in [s["status"] for s in m["stages"]]
    assert not (runs / "runs" / "busy" / ".lock").exists()


def test_jobs_trains_members_in_parallel_processes(runs):
    proc = _run(runs, "--run-id", "par", "--only", "train", "--jobs", "2")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    m = _manifest(runs, "par")
    by = {s["label"]: s for s in m["stages"]}
    assert by["train:mlp_0"]["status"] == by["train:cnn_0"]["status"] == "succeeded"
    assert by["train:mlp_0"]["device"]["intra_op_threads"] == max(1, (os.cpu_count() or 2) // 2)
    assert by["merge"]["status"] == "skipped"
    mlp, cnn = by["train:mlp_0"], by["train:cnn_0"]  # at once: each started before the other ended
    assert mlp["started"] < cnn["ended"] and cnn["started"] < mlp["ended"], (mlp, cnn)
    for rec in (mlp, cnn):  # each worker's stderr is kept in the run folder, outside artifacts
        assert (runs / "runs" / "par" / rec["stderr"]).is_file()
        assert not [a for a in m["artifacts"] if a.startswith("logs/")]
