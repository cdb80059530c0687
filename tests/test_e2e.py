"""End to end: the real `kernelib run` (papermill kernels, nbconvert HTML, real exports)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nbformat
import numpy as np
import pytest
import yaml
from direct_runtimes import assert_record_agrees, parity, predict_direct

from conftest import ROOT, kernelib_cli, predict_in_fresh_process
from kernelib import pipeline
from kernelib.errors import StageFailedError

pytestmark = pytest.mark.e2e


def test_progress_and_report_location_are_printed(smoke):
    out = smoke["proc"].stdout
    assert "[1/7] load: running" in out and "[7/7] export: running" in out
    assert f"report:     {smoke['reports'] / 'index.html'}" in out


def test_run_folder_holds_every_artifact(smoke):
    run = smoke["run"]
    for rel in ["config.yaml", "data/raw.npz", "data/splits.npz", "data/preprocess.keras",
                "data/card.json", "members/members.json", "members/mlp_0/model.keras",
                "members/mlp_0/history.csv", "members/cnn_0/model.keras",
                "merged/average.keras", "merged/concat.keras", "merged/predictions.npz",
                "metrics/comparison.json", "metrics/summary.json", "export/exports.json",
                "export/digits-smoke.keras", "export/digits-smoke/1/saved_model.pb",
                "export/digits-smoke.tflite", "export/digits-smoke_int8.tflite",
                "export/digits-smoke.onnx",
                "export/digits-smoke-pruned.tflite", "export/labels.json",
                "export/MODEL_CARD.md", "export/model_card.json"]:
        assert (run / rel).exists(), rel
    for nb in sorted((run / "notebooks").glob("*.ipynb")):
        for cell in nbformat.read(nb, as_version=4).cells:
            for out in cell.get("outputs", []):
                assert out.get("output_type") != "error", f"{nb.name}: {out.get('evalue')}"
    assert not [p for p in run.rglob(".*")], "no temporary files left behind"


def test_manifest(smoke):
    m = json.loads((smoke["run"] / "manifest.json").read_text())
    assert m["status"] == "succeeded" and m["run_id"] == "smoke-test"
    assert [s["label"] for s in m["stages"]] == [
        "load", "preprocess", "train:mlp_0", "train:cnn_0", "merge", "evaluate", "export"]
    assert all(s["status"] == "succeeded" and s["duration_s"] > 0 for s in m["stages"])
    assert set(m["versions"]) >= {"python", "tensorflow", "keras", "kernelib", "papermill"}
    assert m["config"]["train"]["epochs"] == 3 and m["seed"] == 0
    assert len(m["config_hash"]) == 64
    assert set(m["versions"]) >= {"nbconvert"} and m["deterministic"] is True
    assert set(m["git"]) == {"commit", "dirty"}
    from kernelib import data, io

    assert m["data_hash"] == data.data_card(data.load_dataset("digits"))["sha256"]
    assert any("CPU" in d for d in m["devices"])
    for s in m["stages"]:
        assert len(s["key"]) == 64 and s["provenance"] == "ran" and s["outputs"]
        assert s["started"] <= s["ended"] and s["device"]["seed"] == 0
    for rel, sha in m["artifacts"].items():
        assert io.sha256(smoke["run"] / rel) == sha, rel
    assert {"data/splits.npz", "members/cnn_0/model.keras", "merged/predictions.npz"} <= set(
        m["artifacts"])
    executed = nbformat.read(smoke["run"] / "notebooks" / "03_train_cnn_0.ipynb", as_version=4)
    assert executed.metadata.papermill.parameters["name"] == "cnn_0"


def test_html_reports(smoke):
    reports = smoke["reports"]
    pages = sorted(p.name for p in reports.glob("*.html") if not p.name.endswith(".share.html"))
    assert pages == ["01_load.html", "02_preprocess.html", "03_train_cnn_0.html",
                     "03_train_mlp_0.html", "04_merge.html", "05_evaluate.html",
                     "06_export.html", "index.html"]
    shared = sorted(p.name for p in reports.glob("*.share.html"))
    assert shared == [p.replace(".html", ".share.html") for p in pages if p != "index.html"]
    for name in ["01_load.html", "03_train_mlp_0.html", "04_merge.html", "05_evaluate.html"]:
        assert "data:image/png;base64," in (reports / name).read_text(), name
    index = (reports / "index.html").read_text()
    assert "Members vs merged models" in index and "Selected model" in index
    for model in ["mlp_0", "cnn_0", "average", "concat"]:
        assert f"<td>{model}</td>" in index
    assert (reports.parent / "index.html").read_text().count("smoke-test/index.html") == 1


def test_saved_model_matches_keras_model_in_fresh_processes(smoke, tmp_path):
    from kernelib import data

    x = data.read_splits(smoke["run"] / "data" / "splits.npz").x_test
    export_dir = smoke["run"] / "export"
    from_keras = predict_in_fresh_process(export_dir / "digits-smoke.keras", x, tmp_path, "keras")
    from_sm = predict_in_fresh_process(export_dir / "digits-smoke" / "1", x, tmp_path,
                                       "saved_model")
    assert np.max(np.abs(from_keras - from_sm)) <= 1e-5
    summary = json.loads((smoke["run"] / "metrics" / "summary.json").read_text())
    y = data.read_splits(smoke["run"] / "data" / "splits.npz").y_test
    assert float(np.mean(from_sm.argmax(1) == y)) == pytest.approx(summary["test_accuracy"])


def test_exports_are_verified_and_described_by_the_model_card(smoke):
    from kernelib import data
    from kernelib.members import load_keras

    run = smoke["run"]
    entries = json.loads((run / "export" / "exports.json").read_text())
    assert [(e["name"], e["format"]) for e in entries] == [
        *[("digits-smoke", f) for f in ("keras", "saved_model", "tflite", "tflite_fp16",
                                        "tflite_dynamic", "tflite_int8", "onnx")],
        ("digits-smoke-pruned", "tflite")]
    splits = data.read_splits(run / "data" / "splits.npz")
    summary = json.loads((run / "metrics" / "summary.json").read_text())
    files = json.loads((run / "merged" / "models.json").read_text())
    selected = load_keras(run / files[summary["selected"]]["path"])
    reference = np.asarray(selected.predict(splits.x_test, verbose=0), dtype="float64")
    for e in entries:
        got = predict_direct(run / "export" / e["path"], e["format"], splits.x_test)
        assert e["accuracy"] == pytest.approx(np.mean(got.argmax(1) == splits.y_test))
        assert e["latency_ms"] > 0, e["format"]
        if e["name"] == "digits-smoke":  # the pruned variant's Keras model is not kept
            assert_record_agrees(e, parity(got, reference, splits.y_test), len(splits.y_test))
    card = json.loads((run / "export" / "model_card.json").read_text())
    manifest = json.loads((run / "manifest.json").read_text())
    assert card["config_hash"] == manifest["config_hash"]
    assert card["model"]["selected"] == json.loads(
        (run / "metrics" / "summary.json").read_text())["selected"]
    md = (run / "export" / "MODEL_CARD.md").read_text()
    for heading in ["## Intended use", "## Data", "## Members and strategy", "## Metrics",
                    "## Exports", "## Pruning sweep", "## Quantization", "## Environment"]:
        assert heading in md, heading
    page = (smoke["reports"] / "06_export.html").read_text()
    assert "Pruning sweep" in page and "throughput_per_s" in page


def test_report_rerenders_latest_run(smoke):
    index = smoke["reports"] / "index.html"
    index.unlink()
    proc = kernelib_cli("report", "--runs-dir", str(smoke["tmp"] / "runs"), "--reports-dir",
                        str(smoke["tmp"] / "reports"), cwd=smoke["tmp"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert index.exists()


def _write_config(tmp: Path, **changes) -> Path:
    cfg = yaml.safe_load((ROOT / "configs" / "smoke.yaml").read_text())
    for section, values in changes.items():
        cfg[section] = {**cfg.get(section, {}), **values} if isinstance(values, dict) else values
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _make_member(path: Path, input_shape, n_classes):
    import keras

    inp = keras.Input(input_shape)
    out = keras.layers.Dense(n_classes, activation="softmax")(keras.layers.Flatten()(inp))
    keras.Model(inp, out).save(path)


@pytest.mark.parametrize("case, code, match", [
    ("unknown_key", 2, r"train\.epohcs: unknown key"),
    ("wrong_type", 2, r"train\.batch_size: .*integer"),
    ("missing_file", 1, r"MemberError: member file not found.*ghost\.keras"),
    ("wrong_shape", 1, r"member 'seq' takes inputs of shape \(12, 4\).*cannot build"),
    ("wrong_classes", 1, r"member 'five' predicts 5 classes.*has 10"),
])
def test_bad_input_fails_before_any_run_folder(tmp_path, case, code, match):
    members = [{"name": "mlp_0", "recipe": "mlp"}]
    if case == "unknown_key":
        cfg = _write_config(tmp_path, train={"epohcs": 1})
    elif case == "wrong_type":
        cfg = _write_config(tmp_path, train={"batch_size": "big"})
    elif case == "missing_file":
        cfg = _write_config(tmp_path, load={"members": members + [{"name": "g", "path": "ghost.keras"}]})
    elif case == "wrong_shape":
        _make_member(tmp_path / "seq.keras", (12, 4), 10)  # an RGB member would be adapted
        cfg = _write_config(tmp_path, load={"members": members + [{"name": "seq", "path": "seq.keras"}]})
    else:
        _make_member(tmp_path / "five.keras", (8, 8, 1), 5)
        cfg = _write_config(tmp_path, load={"members": members + [{"name": "five", "path": "five.keras"}]})
    proc = kernelib_cli("run", str(cfg), "--runs-dir", "runs", "--reports-dir", "reports",
                        cwd=tmp_path)
    assert proc.returncode == code, proc.stderr[-2000:]
    assert __import__("re").search(match, proc.stderr), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "reports").exists()


def test_failing_stage_stops_the_chain_and_still_reports(tmp_path):
    nb_dir = tmp_path / "notebooks"
    shutil.copytree(ROOT / "notebooks", nb_dir)
    nb = nbformat.read(nb_dir / "02_preprocess.ipynb", as_version=4)
    nb.cells.insert(3, nbformat.v4.new_code_cell('raise RuntimeError("planted failure")'))
    nbformat.write(nb, nb_dir / "02_preprocess.ipynb")
    with pytest.raises(StageFailedError, match=r"stage 'preprocess' failed: cell \d+: "
                                               r"RuntimeError: planted failure"):
        pipeline.run(ROOT / "configs" / "smoke.yaml", runs_dir=tmp_path / "runs",
                     reports_dir=tmp_path / "reports", run_id="broken", nb_dir=nb_dir,
                     progress=False)
    m = json.loads((tmp_path / "runs" / "broken" / "manifest.json").read_text())
    assert m["status"] == "failed"
    failed = m["stages"][1]
    assert failed["error_type"] == "RuntimeError" and failed["error_message"] == "planted failure"
    assert [s["status"] for s in m["stages"]][:3] == ["succeeded", "failed", "pending"]
    page = (tmp_path / "reports" / "broken" / "02_preprocess.html").read_text()
    assert "An Exception was encountered at" in page and "planted failure" in page
    assert "failed" in (tmp_path / "reports" / "broken" / "index.html").read_text()
    assert not (tmp_path / "runs" / "broken" / "members" / "mlp_0").exists()
