"""Shared fixtures: the digits split and two tiny trained members, built once per session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def splits():
    from kernelib import data

    return data.split(data.load_dataset("digits"), val_fraction=0.15, test_fraction=0.2, seed=0)


@pytest.fixture(scope="session")
def tiny_members(splits, tmp_path_factory):
    """Two real, briefly trained members of different architectures (mlp, cnn)."""
    from kernelib import data, members, train, zoo

    train.setup(seed=0)
    pre = data.build_preprocessor(splits.x_train)
    out = []
    for i, recipe in enumerate(["mlp", "cnn"]):
        model = zoo.build(recipe, preprocessor=pre, n_classes=splits.n_classes,
                          name=f"{recipe}_{i}", seed=i)
        train.fit(model, splits.train, splits.val, out_dir=tmp_path_factory.mktemp(recipe),
                  epochs=3, batch_size=128, learning_rate=3e-3, patience=2, seed=i)
        out.append(members.Member(model.name, model))
    return out


def epoch_scalars(log_dir: Path, tag: str) -> dict[int, float]:
    """`{epoch: value}` of one scalar in a TensorBoard log folder, read by TensorBoard's own reader.

    Keras' TensorBoard callback writes TF2 summaries, which the reader keeps as tensors."""
    from tensorboard.backend.event_processing import event_accumulator as ea
    from tensorboard.util import tensor_util

    acc = ea.EventAccumulator(str(log_dir), size_guidance={ea.TENSORS: 0, ea.SCALARS: 0})
    acc.Reload()
    if tag in acc.Tags()["scalars"]:
        return {e.step: e.value for e in acc.Scalars(tag)}
    if tag not in acc.Tags()["tensors"]:
        return {}
    return {e.step: float(tensor_util.make_ndarray(e.tensor_proto))
            for e in acc.Tensors(tag)}


def run_python(code: str, *args: str) -> subprocess.CompletedProcess:
    """Run Python code in a fresh interpreter (an independent process, as a user would)."""
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=300)


def predict_in_fresh_process(path: Path, x: np.ndarray, tmp_path: Path, kind: str) -> np.ndarray:
    """Load a `.keras` file or a SavedModel in a fresh process (plain Keras/TF only) and predict."""
    x_path, out = tmp_path / f"x_{kind}.npy", tmp_path / f"out_{kind}.npy"
    np.save(x_path, x.astype("float32"))
    loaders = {
        "keras": "import keras; m = keras.saving.load_model(p); "
                 "y = m.predict(x, verbose=0)",
        "saved_model": "import tensorflow as tf; f = tf.saved_model.load(p).signatures"
                       "['serving_default']; y = list(f(tf.constant(x)).values())[0].numpy()",
    }
    code = ("import sys, numpy as np; p, x = sys.argv[1], np.load(sys.argv[2]); "
            f"{loaders[kind]}; np.save(sys.argv[3], y)")
    proc = run_python(code, str(path), str(x_path), str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return np.load(out)


def kernelib_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The `kernelib` command in a fresh process, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "kernelib.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=900,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})


@pytest.fixture(scope="session")
def smoke(tmp_path_factory):
    """One real run of configs/smoke.yaml into a temporary folder, shared by every test file."""
    tmp = tmp_path_factory.mktemp("smoke")
    proc = kernelib_cli("run", str(ROOT / "configs" / "smoke.yaml"), "--run-id", "smoke-test",
                        "--runs-dir", str(tmp / "runs"), "--reports-dir", str(tmp / "reports"),
                        cwd=tmp)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {"proc": proc, "run": tmp / "runs" / "smoke-test",
            "reports": tmp / "reports" / "smoke-test", "tmp": tmp}


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def synthetic_run(root: Path, *, class_names: list[str], run_id: str = "synthetic",
                  seed: int = 0, absent: int | None = None, n_test: int = 120):
    """A run folder with a prediction cache and a manifest, without training anything.

    Two members of different skill and their merged `average`, on seeded random labels
    (class `absent`, if given, never occurs in the test split). Returns `(RunDir, Splits)`.
    """
    from kernelib import data, inference, io
    from kernelib.rundir import RunDir

    rng = np.random.default_rng(seed)
    k = len(class_names)

    def labels(n: int, drop: int | None) -> np.ndarray:
        y = rng.permutation(np.arange(n) % k)
        if drop is not None:
            y[y == drop] = (drop + 1) % k
        return y

    def proba(y: np.ndarray, skill: float) -> np.ndarray:
        z = rng.normal(size=(len(y), k))
        z[np.arange(len(y)), y] += skill
        return _softmax(z)

    y_val, y_test = labels(90, None), labels(n_test, absent)
    preds = {}
    for split, y in (("val", y_val), ("test", y_test)):
        a, b = proba(y, 2.0), proba(y, 1.5)
        preds[split] = {"member_a": a, "member_b": b, "average": (a + b) / 2}
    kinds = {"member_a": "member", "member_b": "member", "average": "merged"}
    run = RunDir(root / run_id)
    inference.save_predictions(run.predictions, preds, kinds)
    splits = data.Splits(
        x_train=np.zeros((k, 8, 8, 1), "float32"), y_train=np.arange(k),
        x_val=np.zeros((len(y_val), 8, 8, 1), "float32"), y_val=y_val,
        x_test=np.zeros((len(y_test), 8, 8, 1), "float32"), y_test=y_test,
        class_names=list(class_names))
    io.write_json(run.manifest, {
        "run_id": run_id, "status": "succeeded", "started": "2026-01-02T03:04:05+00:00",
        "duration_s": 12.5, "config": {"run": {"name": run_id}, "class_names": class_names},
        "versions": {"python": "3.11", "kernelib": "0.1.0"},
        "stages": [
            {"stage": "merge", "label": "merge", "notebook": "notebooks/04_merge.ipynb",
             "status": "succeeded", "duration_s": 0.0, "cached_from": "an-earlier-run"},
            {"stage": "evaluate", "label": "evaluate", "notebook": "notebooks/05_evaluate.ipynb",
             "status": "succeeded", "duration_s": 3.25, "report": "05_evaluate.html"},
        ],
        "artifacts": {"merged/predictions.npz": "0" * 64},
    })
    return run, splits


def executed_notebook(path: Path, *, title: str, table, figure) -> Path:
    """An executed-looking notebook: a markdown title, a hidden-input cell showing `table`
    (pandas' own HTML), a visible code cell showing `figure` as a PNG, and a stream output."""
    import base64

    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    hidden = nbformat.v4.new_code_cell("SECRET_INPUT = ev.per_class_of(ev.selected)",
                                       execution_count=1)
    hidden.metadata["tags"] = ["remove_input"]
    hidden.outputs = [nbformat.v4.new_output(
        "execute_result", {"text/html": table._repr_html_(), "text/plain": repr(table)},
        execution_count=1)]
    shown = nbformat.v4.new_code_cell("VISIBLE_INPUT = plots.confusion_matrix(...)",
                                      execution_count=2)
    shown.outputs = [
        nbformat.v4.new_output("stream", name="stdout", text="done\n"),
        nbformat.v4.new_output("display_data", {
            "image/png": base64.b64encode(figure._repr_png_()).decode(),
            "text/plain": "<Figure>"})]
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {title}"), hidden, shown]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


HOSTILE = "<script>window.__pwned=1</script>"


def hostile_reports(tmp: Path) -> dict:
    """A synthetic run whose class names hold HTML (a `<script>` among them), evaluated, its
    evaluate page rendered, its index and the runs list written. Returns the pieces."""
    from kernelib import evaluate, plots, report

    classes = ["cat", HOSTILE, "a & b", 'q"uote']
    run, splits = synthetic_run(tmp / "runs", class_names=classes, run_id="hostile-run")
    ev = evaluate.run_evaluation(run, splits, bootstrap_resamples=200)
    nb = executed_notebook(run.notebooks / "05_evaluate.ipynb", title="Evaluate",
                           table=ev.per_class_of(ev.selected),
                           figure=plots.confusion_matrix(splits.y_test, splits.y_test, classes))
    report_dir = tmp / "reports" / "hostile-run"
    report.render_notebook(nb, report_dir / "05_evaluate.html")
    report.write_index(run.root, report_dir)
    report.write_runs_index(report_dir.parent)
    return {"run": run, "ev": ev, "dir": report_dir, "classes": classes}


@pytest.fixture
def runs(smoke, tmp_path):
    """A runs folder holding a copy of the session's smoke run (its stages are the cache)."""
    import shutil

    shutil.copytree(smoke["run"], tmp_path / "runs" / "smoke-test")
    return tmp_path


def smoke_config(tmp: Path, **sections) -> Path:
    """configs/smoke.yaml with some sections' keys replaced, written into `tmp`."""
    import yaml

    cfg = yaml.safe_load((ROOT / "configs" / "smoke.yaml").read_text())
    for name, values in sections.items():
        cfg[name] = {**cfg.get(name, {}), **values}
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path
