"""The runner: cache keys, step selection, the run lock (fast checks without notebooks)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import ROOT
from kernelib import params, pipeline, steps
from kernelib.errors import ConfigError, PipelineError, StageFailedError
from kernelib.executor import Executor
from kernelib.rundir import RunDir
from kernelib.runlock import RunLock


def _config(**changes) -> params.Config:
    cfg = params.load_config(ROOT / "configs" / "smoke.yaml").model_dump(mode="json")
    for path, value in changes.items():
        section, key = path.split("__")
        cfg[section][key] = value
    return params.Config.model_validate(cfg)


FAKE_OUTPUTS = {"load": {"data/raw.npz": "1"}, "preprocess": {"data/splits.npz": "2"},
                "train:mlp_0": {"members/mlp_0/model.keras": "3"},
                "train:cnn_0": {"members/cnn_0/model.keras": "4"},
                "merge": {"merged/average.keras": "5"}, "evaluate": {"metrics/summary.json": "6"}}


def _keys(config, tmp_path, *, nb_dir=ROOT / "notebooks", package_dir=None, outputs=None):
    return steps.plan_keys(config, tmp_path / "runs" / "x", nb_dir=nb_dir,
                           package_dir=package_dir, outputs=outputs or FAKE_OUTPUTS)


def test_keys_ignore_the_run_folder(tmp_path):
    a = steps.plan_keys(_config(), tmp_path / "a", nb_dir=ROOT / "notebooks",
                        outputs=FAKE_OUTPUTS)
    b = steps.plan_keys(_config(), tmp_path / "b", nb_dir=ROOT / "notebooks",
                        outputs=FAKE_OUTPUTS)
    assert a == b


def test_export_parameter_changes_only_the_export_key(tmp_path):
    before = _keys(_config(), tmp_path)
    after = _keys(_config(export__version=7), tmp_path)
    assert [k for k in before if before[k] != after[k]] == ["export"]


def test_train_parameter_changes_train_keys_and_through_outputs_the_rest(tmp_path):
    before = _keys(_config(), tmp_path)
    after = _keys(_config(train__epochs=4), tmp_path)
    assert [k for k in before if before[k] != after[k]] == ["train:mlp_0", "train:cnn_0"]
    # retrained members produce different files, so everything downstream re-runs
    changed = {**FAKE_OUTPUTS, "train:mlp_0": {"members/mlp_0/model.keras": "other"}}
    downstream = _keys(_config(train__epochs=4), tmp_path, outputs=changed)
    assert [k for k in before if before[k] != downstream[k]] == [
        "train:mlp_0", "train:cnn_0", "merge", "evaluate", "export"]


def test_editing_a_notebook_changes_its_stage_key_only(tmp_path):
    nb_dir = tmp_path / "nb"
    shutil.copytree(ROOT / "notebooks", nb_dir)
    before = _keys(_config(), tmp_path, nb_dir=nb_dir)
    text = (nb_dir / "05_evaluate.ipynb").read_text()
    (nb_dir / "05_evaluate.ipynb").write_text(text.replace("# 5 · Evaluate", "# 5 · Evaluation"))
    after = _keys(_config(), tmp_path, nb_dir=nb_dir)
    assert [k for k in before if before[k] != after[k]] == ["evaluate"]


def test_notebook_outputs_do_not_change_the_key(tmp_path):
    import nbformat

    nb_dir = tmp_path / "nb"
    shutil.copytree(ROOT / "notebooks", nb_dir)
    before = _keys(_config(), tmp_path, nb_dir=nb_dir)
    nb = nbformat.read(nb_dir / "06_export.ipynb", as_version=4)
    nb.cells[-1].outputs = [nbformat.v4.new_output("stream", text="hello")]
    nbformat.write(nb, nb_dir / "06_export.ipynb")
    assert _keys(_config(), tmp_path, nb_dir=nb_dir) == before


def test_touching_a_kernelib_source_file_changes_every_key(tmp_path):
    pkg = tmp_path / "kernelib"
    shutil.copytree(Path(steps.__file__).parent, pkg,
                    ignore=shutil.ignore_patterns("__pycache__"))
    before = _keys(_config(), tmp_path, package_dir=pkg)
    with open(pkg / "plots.py", "a") as fh:
        fh.write("\n# an edit\n")
    after = _keys(_config(), tmp_path, package_dir=pkg)
    assert all(before[k] != after[k] for k in before)


def test_given_member_file_content_is_part_of_the_load_key(tmp_path):
    f = tmp_path / "m.keras"
    f.write_bytes(b"one")
    members = [{"name": "mlp_0", "recipe": "mlp"}, {"name": "given", "path": str(f)}]
    cfg = _config(load__members=members)
    before = _keys(cfg, tmp_path)
    f.write_bytes(b"two")
    after = _keys(cfg, tmp_path)
    assert before["load"] != after["load"]


@pytest.mark.parametrize("kwargs, match", [
    ({"from_stage": "deploy"}, r"--from 'deploy' is not a step of this run; valid: .*'export'"),
    ({"only": "train:nobody"}, r"--only 'train:nobody' is not a step.*'train:mlp_0'"),
    ({"from_stage": "merge", "only": "merge"}, r"either --from or --only"),
])
def test_bad_step_selection(tmp_path, kwargs, match):
    planned = steps.plan(_config(), tmp_path)
    with pytest.raises(ConfigError, match=match):
        steps.select_steps(planned, **{"from_stage": None, "only": None, **kwargs})


def test_step_selection():
    planned = steps.plan(_config(), Path("/r"))
    assert steps.select_steps(planned, from_stage="merge", only=None) == {
        "merge", "evaluate", "export"}
    assert steps.select_steps(planned, from_stage=None, only="train") == {
        "train:mlp_0", "train:cnn_0"}
    assert steps.select_steps(planned, from_stage=None, only="train:cnn_0") == {"train:cnn_0"}


def test_lock_refuses_a_second_run_and_takes_over_a_stale_one(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(PipelineError, match=r"in use by process \d+"):
            with RunLock(tmp_path):
                pass
    assert not (tmp_path / ".lock").exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    (tmp_path / ".lock").write_text(dead)
    with RunLock(tmp_path):
        assert (tmp_path / ".lock").read_text() == str(os.getpid())


def test_bad_jobs_value(tmp_path):
    with pytest.raises(ConfigError, match="--jobs must be at least 1; received 0"):
        pipeline.run(ROOT / "configs" / "smoke.yaml", runs_dir=tmp_path, jobs=0)
    assert not list(tmp_path.iterdir())


def test_fine_tunes_wait_for_their_base_member_in_parallel_jobs():
    cfg = params.load_config(ROOT / "configs" / "default.yaml")
    needs = {s.label: s.needs for s in steps.plan(cfg, Path("/r")) if s.stage == "train"}
    assert needs["train:convnet_0_ft1"] == ("train:convnet_0",) and needs["train:convnet_0"] == ()


def test_only_with_force_still_runs_only_the_named_stage(tmp_path):
    """--force with --only re-runs just that stage; without a cache for the rest it refuses."""
    with pytest.raises(PipelineError, match=r"--only: step 'load' has no cached result"):
        pipeline.run(ROOT / "configs" / "smoke.yaml", runs_dir=tmp_path / "runs",
                     reports_dir=tmp_path / "reports", only="train", force=True, progress=False)


_RACER = """
import os, sys, time
from pathlib import Path
from kernelib.errors import PipelineError
from kernelib.runlock import RunLock
root, log, until = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
while time.time() < until:
    try:
        with RunLock(root):
            with open(log, "a") as fh:
                fh.write(f"in {os.getpid()}\\n")
                fh.flush()
                time.sleep(0.0005)
                fh.write(f"out {os.getpid()}\\n")
    except PipelineError:
        pass
"""


def test_two_processes_racing_for_the_lock_never_both_hold_it(tmp_path):
    """Two real processes take and release the lock of one run folder for two seconds; the
    log of who holds it must never show two holders at once (the O_EXCL-then-write lock let a
    reader of the still-empty file take it over as stale)."""
    log = tmp_path / "holders.log"
    until = str(__import__("time").time() + 4.0)
    procs = [subprocess.Popen([sys.executable, "-c", _RACER, str(tmp_path), str(log), until])
             for _ in range(2)]
    for p in procs:
        assert p.wait(timeout=60) == 0
    lines = log.read_text().split("\n")[:-1]
    holders = {line.split()[1] for line in lines}
    assert len(holders) == 2, "both processes must have held the lock at some point"
    for i in range(0, len(lines), 2):  # every "in" is directly followed by its own "out"
        assert lines[i].split()[0] == "in" and lines[i + 1] == f"out {lines[i].split()[1]}", \
            f"two holders at once near line {i}: {lines[i:i + 3]}"
    assert not (tmp_path / ".lock").exists()


# ---------------------------------------------------------------------------- declared outputs


def _write(root: Path, *rels: str) -> None:
    for rel in rels:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(rel)


def test_each_step_owns_the_files_under_the_paths_it_declares(tmp_path):
    """The files of a smoke run, laid out by hand: every file belongs to exactly one step;
    TensorBoard logs, training backups, logs and hidden files belong to none."""
    rd = RunDir(tmp_path)
    owned = {
        "load": ["data/raw.npz", "data/card.json", "members/members.json"],
        "preprocess": ["data/splits.npz", "data/preprocess.keras", "data/augment.json"],
        "train:mlp_0": ["members/mlp_0/model.keras", "members/mlp_0/history.csv"],
        "train:cnn_0": ["members/cnn_0/model.keras"],
        "merge": ["merged/average.keras", "merged/models.json", "metrics/merge.json"],
        "evaluate": ["metrics/summary.json", "metrics/comparison.json", "timings/cost.json"],
        "export": ["export/exports.json", "export/digits/1/saved_model.pb"],
    }
    _write(tmp_path, *(f for files in owned.values() for f in files))
    _write(tmp_path, "tensorboard/mlp_0/train/events", "members/mlp_0/backup/meta.json",
           "logs/train_mlp_0.stderr", "export/.digits.tmp", "notebooks/01_load.ipynb")
    for step in steps.plan(_config(), tmp_path):
        assert steps.output_files(step, rd) == sorted(owned[step.label]), step.label
        assert steps.missing_outputs(step, rd) == []
    assert sorted(steps.artifact_files(tmp_path)) == sorted(
        f for files in owned.values() for f in files)


def test_a_step_that_leaves_a_declared_path_unwritten_is_caught(tmp_path):
    rd = RunDir(tmp_path)
    _write(tmp_path, "data/raw.npz", "members/members.json")
    load = steps.plan(_config(), tmp_path)[0]
    assert steps.missing_outputs(load, rd) == ["data/card.json"]


def test_given_members_are_outputs_of_the_load_step(tmp_path):
    f = tmp_path / "m.keras"
    f.write_bytes(b"x")
    cfg = _config(load__members=[{"name": "mlp_0", "recipe": "mlp"},
                                 {"name": "given", "path": str(f)}])
    rd = RunDir(tmp_path / "run")
    load = steps.plan(cfg, rd.root)[0]
    _write(rd.root, "data/raw.npz", "data/card.json", "members/members.json",
           "members/given/model.keras", "members/mlp_0/model.keras")
    assert "members/given/model.keras" in steps.output_files(load, rd)
    assert "members/mlp_0/model.keras" not in steps.output_files(load, rd)


# ---------------------------------------------------------------------------- the executor


class _FakePool:
    """A pool whose steps end when the test says so: records starts and the most at once."""

    def __init__(self, slots, fail=()):
        self.slots, self.fail = slots, set(fail)
        self.started, self.running, self.most = [], 0, 0
        self.lock = threading.Lock()

    def describe(self, step):
        return "fake"

    def start(self, step, rd, nb_dir, kernel_name):
        with self.lock:
            self.started.append(step.label)
            self.running += 1
            self.most = max(self.most, self.running)
        return step

    def wait(self, step):
        time.sleep(0.05)  # long enough for another start to overlap, if the slots allow it
        with self.lock:
            self.running -= 1
        return {"status": "failed" if step.label in self.fail else "succeeded",
                "error": "boom", "outputs": {}}

    def stop(self, handles):
        pass


def _train_config():
    members = [{"name": "a", "recipe": "mlp"}, {"name": "b", "recipe": "mlp"},
               {"name": "a_ft", "recipe": "mlp", "finetune_from": "a"},
               {"name": "c", "recipe": "mlp"}]
    return _config(load__members=members)


def _execute(tmp_path, pool, *, decide=lambda k: True):
    planned = [s for s in steps.plan(_train_config(), tmp_path) if s.stage == "train"]
    records = [{"label": s.label, "notebook": "x", "status": "pending"} for s in planned]
    finished = []

    def finish(k):
        finished.append(planned[k].label)
        if records[k]["status"] == "failed":
            raise StageFailedError(planned[k].label)

    Executor(RunDir(tmp_path), tmp_path, "python3", False, pool).run(planned, records, decide,
                                                                     finish)
    return finished


def test_the_executor_runs_pool_steps_in_dependency_order_within_its_slots(tmp_path):
    pool = _FakePool(slots=2)
    finished = _execute(tmp_path, pool)
    assert sorted(finished) == ["train:a", "train:a_ft", "train:b", "train:c"]
    assert finished.index("train:a") < pool.started.index("train:a_ft")  # after its base
    assert pool.most == 2


def test_after_a_failure_the_executor_starts_nothing_and_raises_it(tmp_path):
    pool = _FakePool(slots=1, fail={"train:a"})
    with pytest.raises(StageFailedError, match="train:a"):
        _execute(tmp_path, pool)
    assert pool.started == ["train:a"]


def test_cached_steps_are_not_executed(tmp_path):
    pool = _FakePool(slots=4)
    _execute(tmp_path, pool, decide=lambda k: k == 2)  # only train:a_ft runs
    assert pool.started == ["train:a_ft"]


def test_a_step_copied_from_another_run_takes_its_reports_unless_they_are_older(tmp_path):
    """Rendering was most of a warm run's time: a step copied from another run takes that
    run's two HTML reports when both are newer than its notebook, else renders the notebook."""
    import nbformat

    from kernelib import report
    from kernelib.cache import Cache
    from kernelib.rundir import RunDir
    from kernelib.steps import Step

    step = Step(stage="load", label="load", notebook="01_load.ipynb", output="01_load.ipynb",
                parameters={})
    reports = tmp_path / "reports"
    old_nb = tmp_path / "runs" / "old" / "notebooks" / "01_load.ipynb"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# Load")])
    for path in (old_nb, tmp_path / "runs" / "new" / "notebooks" / "01_load.ipynb"):
        path.parent.mkdir(parents=True)
        nbformat.write(nb, str(path))
    old_html = reports / "old" / "01_load.html"
    old_html.parent.mkdir(parents=True)
    for p in (old_html, report.share_path(old_html)):
        p.write_text(f"<p>rendered for the old run: {p.name}</p>")
    (reports / "new").mkdir()
    cache = Cache(RunDir(tmp_path / "runs" / "new"), reports / "new", tmp_path / "runs", "new")
    new_html = reports / "new" / "01_load.html"

    cache._ensure_report(step, rec := {}, copied=("old", old_nb))
    assert rec["report"] == "01_load.html"
    assert new_html.read_text() == "<p>rendered for the old run: 01_load.html</p>"
    assert report.share_path(new_html).read_text() == "<p>rendered for the old run: 01_load.share.html</p>"

    later = old_html.stat().st_mtime + 10
    os.utime(old_nb, (later, later))  # the old run's notebook was written after its reports
    cache._ensure_report(step, {}, copied=("old", old_nb))
    assert "rendered for the old run" not in new_html.read_text()
    assert "Load" in new_html.read_text() and "Load" in report.share_path(new_html).read_text()
    for bad in ("../old", ".", ""):  # a run id from a manifest names one folder, or nothing
        new_html.unlink()
        cache._ensure_report(step, {}, copied=(bad, old_nb))
        assert "rendered for the old run" not in new_html.read_text()
