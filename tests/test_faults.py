"""Faults: SIGTERM to the runner, kill -9 of a stage's kernel and kill -9 of the runner during
every stage (stand-in notebooks), signals and kills on the smoke chain, a read-only reports
folder, a full disk, a crashed re-export, and the runner's cache keys of fine-tunes. Every run
must end `succeeded`, `failed` or `interrupted` with its lock gone, a resume must complete, and
every file that `manifest.json` or `exports.json` lists must have the sha256 recorded there.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
import yaml

from conftest import ROOT, smoke_config
from kernelib import cli, io, params, pipeline, steps
from kernelib.errors import PipelineError, StageFailedError
from kernelib.resources import NOTEBOOKS

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


# ---------------------------------------------------------------------------- fine-tune keys

_STAGE_CELL = """
import json, os, pathlib, time
root = pathlib.Path(run_dir)
label = f"train:{name}" if STAGE == "train" else STAGE
if STAGE == "train" and name == "crash":  # the kernel dies, leaving a line on its stderr
    os.write(2, b"crash-marker: the kernel is going down\\n")
    os.kill(os.getpid(), 9)
for i, rel in enumerate(FILES[STAGE]):  # non-deterministic results, as with deterministic: false
    out = root / rel.format(name=name)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"random": os.urandom(8).hex()}))
    if i == 0 and os.environ.get("KERNELIB_TEST_HOLD") == label:  # a fault arrives here
        held = pathlib.Path(os.environ["KERNELIB_TEST_HELD"])
        held.with_suffix(".tmp").write_text(str(os.getpid()))
        held.with_suffix(".tmp").rename(held)
        time.sleep(600)
"""

# what each stand-in writes: the paths its stage declares (kernelib.steps.declared)
_FILES = {"load": ["data/raw.npz", "data/card.json", "members/members.json"],
          "preprocess": ["data/splits.npz", "data/preprocess.keras", "data/augment.json"],
          "train": ["members/{name}/model.keras"],
          "merge": ["merged/stand_in.json", "metrics/merge.json"],
          "evaluate": ["metrics/stand_in.json", "timings/stand_in.json"],
          "export": ["export/stand_in.json"]}


def _stand_in_notebooks(folder: Path) -> Path:
    """Six tiny notebooks in place of the stage notebooks: each writes random bytes where its
    stage writes (no TensorFlow), so a re-executed step always produces a different file."""
    folder.mkdir()
    for stage, nb_name in NOTEBOOKS.items():
        params_cell = nbformat.v4.new_code_cell("run_dir = ''\nname = None")
        params_cell.metadata["tags"] = ["parameters"]
        nb = nbformat.v4.new_notebook(cells=[
            nbformat.v4.new_code_cell(f"STAGE = {stage!r}\nFILES = {_FILES!r}"), params_cell,
            nbformat.v4.new_code_cell(_STAGE_CELL)])
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                     "language": "python"}
        nbformat.write(nb, folder / nb_name)
    return folder


def _members_config(tmp_path: Path, members: list[dict]) -> Path:
    cfg = yaml.safe_load((ROOT / "configs" / "smoke.yaml").read_text())
    cfg["run"]["deterministic"] = False
    cfg["load"]["members"] = members
    config = tmp_path / "members.yaml"
    config.write_text(yaml.safe_dump(cfg))
    return config


def test_a_fine_tune_is_not_reused_when_its_base_trained_differently(tmp_path):
    """A fine-tune's key includes its base's trained file, in the runner as in `plan_keys`:
    after the base member is trained again (a different file, deterministic: false), the
    fine-tune starting from it must run again, not come from the cache."""
    config = _members_config(tmp_path, [
        {"name": "base", "recipe": "mlp", "seed": 0},
        {"name": "ft", "recipe": "mlp", "seed": 1, "finetune_from": "base"}])
    nb_dir = _stand_in_notebooks(tmp_path / "nbs")
    kw = dict(runs_dir=tmp_path / "runs", reports_dir=tmp_path / "reports", run_id="r",
              nb_dir=nb_dir, progress=False)
    root = pipeline.run(config, **kw)
    (root / "members" / "base" / "model.keras").unlink()  # the base must train again
    pipeline.run(config, **kw)
    m = io.read_json(root / "manifest.json")
    by = {s["label"]: s for s in m["stages"]}
    assert by["load"].get("cached_from") == "r" and by["preprocess"].get("cached_from") == "r"
    assert "cached_from" not in by["train:base"]
    assert "cached_from" not in by["train:ft"], "the fine-tune was reused although its base changed"
    outputs = {label: rec["outputs"] for label, rec in by.items()}
    expected = steps.plan_keys(params.load_config(config), root, nb_dir=nb_dir, outputs=outputs)
    assert {label: rec["key"] for label, rec in by.items()} == expected


def test_a_worker_whose_kernel_dies_fails_its_step_with_the_tail_of_its_stderr(tmp_path):
    """--jobs 2: the kernel of one training step is killed; the step fails, its worker's
    stderr is in the run folder, and its tail is in the manifest entry and the error."""
    config = _members_config(tmp_path, [{"name": "ok", "recipe": "mlp", "seed": 0},
                                        {"name": "crash", "recipe": "mlp", "seed": 1}])
    nb_dir = _stand_in_notebooks(tmp_path / "nbs")
    with pytest.raises(StageFailedError, match=r"(?s)'train:crash' failed.*crash-marker"):
        pipeline.run(config, runs_dir=tmp_path / "runs", reports_dir=tmp_path / "reports",
                     run_id="r", nb_dir=nb_dir, progress=False, jobs=2)
    m = io.read_json(tmp_path / "runs" / "r" / "manifest.json")
    by = {s["label"]: s for s in m["stages"]}
    assert m["status"] == "failed"
    assert by["train:ok"]["status"] == "succeeded" and "stderr_tail" not in by["train:ok"]
    crash = by["train:crash"]
    assert crash["status"] == "failed" and "crash-marker" in crash["stderr_tail"]
    assert len(crash["stderr_tail"]) <= 2000
    log = tmp_path / "runs" / "r" / crash["stderr"]
    assert "crash-marker" in log.read_text() and crash["stderr"] == "logs/train_crash.stderr"
    assert by["merge"]["status"] == "pending"


# ---------------------------------------------------------------------------- every stage

# the runner as `kernelib run` starts it, with the stand-in notebooks in place of the stages
_RUNNER = ("import pathlib, sys\nfrom kernelib import cli, pipeline\n"
           "pipeline.notebooks_dir = lambda: pathlib.Path(sys.argv[1])\n"
           "sys.exit(cli.main(sys.argv[2:]))")
_HOLD = {stage: "train:cnn_0" if stage == "train" else stage for stage in params.STAGES}
# the fault -> (the runner's exit status, the run's status, the held step's status)
_FAULTS = {"SIGTERM to the runner": (128 + signal.SIGTERM, "interrupted", "interrupted"),
           "kill -9 of the kernel": (1, "failed", "failed"),
           "kill -9 of the runner": (-signal.SIGKILL, "running", None)}  # nobody records


@pytest.fixture(scope="module")
def stand_in_run(tmp_path_factory):
    """A finished run of the smoke config (two members) through the stand-in notebooks."""
    tmp = tmp_path_factory.mktemp("stand_ins")
    nb_dir = _stand_in_notebooks(tmp / "nbs")
    config = tmp / "smoke.yaml"
    shutil.copy(ROOT / "configs" / "smoke.yaml", config)
    root = pipeline.run(config, runs_dir=tmp / "runs", reports_dir=tmp / "reports", run_id="r",
                        nb_dir=nb_dir, progress=False)
    return {"root": root, "nb_dir": nb_dir, "config": config}


def _gone(pid: int, timeout: float = 60) -> bool:
    """Whether process `pid` has ended (or is a zombie) within `timeout` seconds."""
    import psutil

    with contextlib.suppress(psutil.NoSuchProcess):
        proc = psutil.Process(pid)
        deadline = time.time() + timeout
        while proc.status() != psutil.STATUS_ZOMBIE:
            if time.time() > deadline:
                return False
            time.sleep(0.1)
    return True


@pytest.mark.parametrize("stage, fault, jobs", [
    # each stage meets one fault, the three in turn (each fault strikes two stages); the
    # pool's worker processes of train meet all three
    *[(stage, list(_FAULTS)[i % len(_FAULTS)], 1) for i, stage in enumerate(params.STAGES)],
    *[("train", fault, 2) for fault in _FAULTS]])  # members trained in worker processes
def test_a_fault_in_any_stage_leaves_a_consistent_run_and_a_resume_completes(
        stand_in_run, stage, fault, jobs, tmp_path):
    """A finished run is re-run from `stage` (`--from`); while that stage's kernel has written
    its first file, the fault strikes. The runner then records how the run ended (unless it was
    killed itself), its lock is gone, no kernel is left behind, every recorded sha256 holds; a
    plain resume completes, executing the stage again and keeping what came before it."""
    root, held, label = tmp_path / "runs" / "r", tmp_path / "held", _HOLD[stage]
    shutil.copytree(stand_in_run["root"], root)
    kw = dict(runs_dir=tmp_path / "runs", reports_dir=tmp_path / "reports", run_id="r",
              nb_dir=stand_in_run["nb_dir"], progress=False)
    proc = subprocess.Popen(
        [sys.executable, "-c", _RUNNER, str(kw["nb_dir"]),
         *_args(tmp_path, stand_in_run["config"], "--run-id", "r", "--from", stage, "--jobs",
                str(jobs))],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "KERNELIB_TEST_HOLD": label, "KERNELIB_TEST_HELD": str(held)},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    _wait_for(held.exists, proc)
    kernel = int(held.read_text())
    import psutil

    worker = psutil.Process(kernel).ppid()  # the runner itself, or its --jobs worker
    if fault == "SIGTERM to the runner":
        proc.send_signal(signal.SIGTERM)
    else:
        os.kill(kernel if fault == "kill -9 of the kernel" else proc.pid, signal.SIGKILL)
    code, run_status, step_status = _FAULTS[fault]
    assert proc.wait(timeout=300) == code, proc.stdout.read()[-3000:]
    assert _gone(kernel), f"the kernel of '{label}' outlived the run"
    assert _gone(worker), f"the worker of '{label}' outlived the run"
    m = io.read_json(root / "manifest.json") if code < 0 else _consistent(root)
    by = {s["label"]: s for s in m["stages"]}
    assert m["status"] == run_status
    assert step_status is None or by[label]["status"] == step_status
    later = [s["status"] for s in m["stages"][list(by).index(label) + 1:]]
    assert later == ["pending"] * len(later)

    pipeline.run(stand_in_run["config"], jobs=jobs, **kw)  # the resume
    m = _consistent(root)
    by = {s["label"]: s for s in m["stages"]}
    assert m["status"] == "succeeded" and {s["status"] for s in m["stages"]} == {"succeeded"}
    assert "cached_from" not in by[label], "the step the fault cut short was reused"
    before = [b for b, rec in by.items()
              if params.STAGES.index(rec["stage"]) < params.STAGES.index(stage)]
    assert all(by[b]["cached_from"] == "r" for b in before)
    if code < 0:
        assert "ended without a record" in m["previous_attempt"]
    assert not [p for p in root.rglob(".*")], "leftovers of the attempt the fault cut short"


# ---------------------------------------------------------------------------- the smoke chain


def _args(tmp: Path, config: Path, *args: str) -> list[str]:
    return ["run", str(config), *args, "--runs-dir", str(tmp / "runs"), "--reports-dir",
            str(tmp / "reports"), "--quiet"]


def _popen(tmp: Path, config: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "kernelib.cli", *_args(tmp, config, *args)],
                            cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for(what, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not what():
        assert proc.poll() is None, "the run ended first: " + proc.stdout.read()[-2000:]
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def _consistent(root: Path) -> dict:
    """The run's manifest, after checking its end state, its lock, and every recorded sha256."""
    m = io.read_json(root / "manifest.json")
    assert m["status"] in ("succeeded", "failed", "interrupted"), m["status"]
    assert not (root / ".lock").exists()
    for rel, sha in m.get("artifacts", {}).items():
        assert io.sha256(root / rel) == sha, rel
    exports = root / "export" / "exports.json"
    for e in io.read_json(exports) if exports.exists() else []:
        assert io.sha256(root / "export" / e["path"]) == e["sha256"], e["path"]
    return m


def test_sigterm_during_training_records_interrupted_and_a_resume_completes(runs):
    cfg = smoke_config(runs, train={"epochs": 10, "patience": 10})
    proc = _popen(runs, cfg, "--run-id", "term", "--only", "train")
    backup = runs / "runs" / "term" / "members" / "mlp_0" / "backup"
    _wait_for(backup.exists, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    m = _consistent(runs / "runs" / "term")
    assert m["status"] == "interrupted" and m["interrupted_by"] == "SIGTERM"
    assert (runs / "reports" / "term" / "index.html").exists()  # the index was updated
    again = cli.main(_args(runs, cfg, "--run-id", "term", "--only", "train"))
    assert again == 0
    assert _consistent(runs / "runs" / "term")["status"] == "succeeded"


def test_kill_9_during_a_re_export_leaves_consistent_records_and_a_resume_completes(runs):
    """kill -9 of the runner and its kernel while export files are replaced: exports.json and
    the model card never describe a file that is not there; the resume cleans up, finishes,
    and its pages run no script from the config (intended_use holds some)."""
    hostile = "<script>window.__pwned=1</script><img src=x onerror=\"window.__pwned=2\">"
    cfg = smoke_config(runs, export={"formats": ["saved_model", "keras"],
                                "prune_sparsities": [], "export_pruned": None,
                                "intended_use": hostile})
    root = runs / "runs" / "smoke-test"
    proc = _popen(runs, cfg, "--run-id", "smoke-test", "--only", "export")
    _wait_for(lambda: any(p.name.startswith(".digits-smoke") for p in (root / "export").iterdir()),
              proc)
    import psutil

    family = [proc.pid] + [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    for pid in family:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()
    exports = io.read_json(root / "export" / "exports.json")
    for e in exports:  # consistent although killed mid-write
        assert io.sha256(root / "export" / e["path"]) == e["sha256"], e["path"]
    assert io.read_json(root / "manifest.json")["status"] == "running"  # nobody could say else

    assert cli.main(_args(runs, cfg, "--run-id", "smoke-test", "--only", "export")) == 0
    m = _consistent(root)
    assert m["status"] == "succeeded" and "ended without a record" in m["previous_attempt"]
    assert not [p for p in (root / "export").rglob(".*")], "leftovers of the killed export"
    card = (root / "export" / "MODEL_CARD.md").read_text()
    assert hostile in card  # the card keeps the text; the pages must not run it
    _no_script_runs(runs / "reports" / "smoke-test" / "06_export.html")
    _no_script_runs(runs / "reports" / "smoke-test" / "06_export.share.html")


def _no_script_runs(page: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path("/usr/bin/chromium").exists():
        pytest.skip("Chromium is not installed: run `make browser`")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                     args=["--no-sandbox", "--disable-gpu"])
        tab = browser.new_page()
        dialogs = []
        tab.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        tab.goto(page.as_uri())
        tab.wait_for_load_state("load")
        assert tab.evaluate("window.__pwned") is None and not dialogs, page.name
        assert "window.__pwned=1" in tab.inner_text("body")  # shown as text
        browser.close()


def _read_only_folder(tmp: Path) -> Path:
    folder = tmp / "ro"
    folder.mkdir()
    if os.geteuid() == 0:  # permission bits do not bind root: a read-only mount does
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)],
                          capture_output=True).returncode != 0:
            pytest.skip("cannot mount a read-only tmpfs here")
    else:
        folder.chmod(0o555)
    return folder


@pytest.mark.parametrize("how", ["read-only", "a file"])
def test_a_bad_reports_folder_leaves_a_finished_run_untouched(runs, how):
    """Resuming a finished run with an unusable --reports-dir is refused before any stage:
    the run stays `succeeded`, nothing in it changes."""
    root = runs / "runs" / "smoke-test"
    bad = _read_only_folder(runs) if how == "read-only" else runs / "reports-file"
    if how == "a file":
        bad.write_text("x")
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    try:
        with pytest.raises(PipelineError, match="--reports-dir"):
            pipeline.run(ROOT / "configs" / "smoke.yaml", runs_dir=runs / "runs",
                         reports_dir=bad, run_id="smoke-test", progress=False)
    finally:
        if how == "read-only" and os.geteuid() == 0:
            subprocess.run(["umount", str(bad)], check=False)
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before
    assert _consistent(root)["status"] == "succeeded"


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_a_full_disk_fails_the_stage_records_it_and_a_resume_completes(tmp_path):
    """The runs folder on a small tmpfs filled up to about 1.1 MiB: the load stage cannot write
    its arrays; the run still records `failed` (the 1 MiB reserve is released for the final
    manifest), its lock is gone, and once space is back a resume completes."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        free = shutil.disk_usage(disk).free
        (disk / "filler").write_bytes(b"\0" * (free - 1_150_000))
        args = ["run", str(ROOT / "configs" / "smoke.yaml"), "--run-id", "full", "--only", "load",
                "--runs-dir", str(disk / "runs"), "--reports-dir", str(tmp_path / "reports"),
                "--quiet"]
        assert cli.main(args) == 1
        m = _consistent(disk / "runs" / "full")
        assert m["status"] == "failed"
        assert "No space left" in next(s for s in m["stages"] if s["label"] == "load")["error"]
        (disk / "filler").unlink()
        assert cli.main(args) == 0
        assert _consistent(disk / "runs" / "full")["status"] == "succeeded"
    finally:
        subprocess.run(["umount", str(disk)], check=False)
