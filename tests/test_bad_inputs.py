"""Bad inputs, as a careless or hostile user types them: one table, each row refused with the
right KernelibError subclass, a message that names the input, and nothing changed outside
the run folder (the checkout and the runs/reports folders are snapshot before and after).

CLI rows run in-process through the parser and the command functions `kernelib.cli.main`
calls (so the exception itself is checked); almost every row fails before TensorFlow is
imported. Predict rows use a tiny ONNX model written with `onnx.helper` (no TensorFlow).
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import ROOT
from kernelib import cli
from kernelib.errors import (
    ConfigError,
    DataError,
    ExportError,
    KernelibError,
    MemberError,
    PipelineError,
)

SMOKE = yaml.safe_load((ROOT / "configs" / "smoke.yaml").read_text())
_SKIP = {".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache"}


def _snapshot(*roots: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime) of every file and folder under `roots` (the virtualenv and caches left out)."""
    out = {}
    for root in roots:
        for folder, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if d not in _SKIP]
            out[folder] = (-1, 0)
            for f in files:
                st = os.lstat(os.path.join(folder, f))
                out[os.path.join(folder, f)] = (st.st_size, st.st_mtime_ns)
    return out


class Workspace:
    """A temporary folder with runs/ and reports/ in it, and helpers that write inputs."""

    def __init__(self, tmp: Path):
        self.tmp, self.runs, self.reports = tmp, tmp / "runs", tmp / "reports"
        self.inputs = tmp / "inputs"
        self.inputs.mkdir()

    def config(self, text: str | None = None, **sections) -> Path:
        """configs/smoke.yaml with `sections` merged in (a key set to None is removed)."""
        path = self.inputs / "config.yaml"
        if text is not None:
            path.write_text(text)
            return path
        cfg = yaml.safe_load(yaml.safe_dump(SMOKE))
        for name, values in sections.items():
            if not isinstance(values, dict):
                cfg[name] = values
                continue
            cfg.setdefault(name, {}).update(values)
            for k in [k for k, v in values.items() if v is None]:
                cfg[name].pop(k)
        path.write_text(yaml.safe_dump(cfg))
        return path

    def file(self, name: str, data: bytes = b"not what it claims") -> Path:
        path = self.inputs / name
        path.write_bytes(data)
        return path

    def run(self, *args: str, config: Path | None = None) -> list[str]:
        return ["run", str(config or self.config()), "--runs-dir", str(self.runs),
                "--reports-dir", str(self.reports), "--quiet", *args]

    def onnx_model(self) -> Path:
        """A softmax over 10 classes of 8x8x1 inputs (the digits shape), as an .onnx file."""
        import onnx
        from onnx import TensorProto, helper, numpy_helper

        w = numpy_helper.from_array(np.linspace(-1, 1, 640, dtype="float32").reshape(64, 10), "w")
        shape = numpy_helper.from_array(np.array([-1, 64], dtype="int64"), "shape")
        graph = helper.make_graph(
            [helper.make_node("Reshape", ["x", "shape"], ["flat"]),
             helper.make_node("MatMul", ["flat", "w"], ["z"]),
             helper.make_node("Softmax", ["z"], ["probs"], axis=1)], "tiny",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 8, 8, 1])],
            [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [None, 10])], [w, shape])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        path = self.tmp / "export" / "tiny.onnx"
        path.parent.mkdir(exist_ok=True)
        onnx.save(model, path)
        return path

    def predict(self, inputs: Path | str, *args: str) -> list[str]:
        return ["predict", str(self.onnx_model()), str(inputs), *args]


def _png_claiming(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose header claims `width` x `height` (a decompression bomb)."""
    import io as _io

    from PIL import Image

    buf = _io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    png = bytearray(buf.getvalue())
    ihdr = png[12:29]  # b"IHDR" + 13 bytes of data
    ihdr[4:12] = struct.pack(">II", width, height)
    png[12:29] = ihdr
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(png)


def _member(name: str, path: Path) -> dict:
    return {"members": [{"name": name, "path": str(path)}, {"name": "mlp_0", "recipe": "mlp"}]}


# Each action prepares its inputs (before the snapshot) and returns what to call.

def _export(name="digits", test="rows", formats=("keras",), version=1, calibration=None):
    def prepare(ws, model):
        from kernelib import export

        x = np.zeros((4, 8, 8, 1), "float32")
        rows = {"rows": (x, np.zeros(4, int)), "empty": (x[:0], np.zeros(0, int)),
                "shape": (np.zeros((4, 9, 9, 1), "float32"), None),
                "nan": (np.full_like(x, np.nan), None), "scalar": 3}[test]
        return lambda: export.export(model, ws.tmp / "export", list(formats), name=name,
                                     version=version, test=rows, calibration_data=calibration)
    return prepare


def _cli(argv_of):
    """`kernelib ARGV` in this process: the parser and the command function main() calls."""
    def prepare(ws, model):
        args = cli.build_parser().parse_args(argv_of(ws))
        return lambda: args.fn(args)
    return prepare


def _corrupt_manifest(ws) -> list[str]:
    (ws.runs / "broken").mkdir(parents=True)
    (ws.runs / "broken" / "manifest.json").write_text("{not json")
    return ["report", str(ws.runs / "broken"), "--reports-dir", str(ws.reports)]


def _resume_corrupt(ws) -> list[str]:
    (ws.runs / "broken").mkdir(parents=True)
    (ws.runs / "broken" / "manifest.json").write_text("[1, 2]")
    return ws.run("--run-id", "broken")


def _start_stage(stage, **values):
    def prepare(ws, model):
        from kernelib.rundir import start_stage

        return lambda: start_stage(stage, run_dir=str(ws.runs / "nb"), **values)
    return prepare


# (id, action, error class, text the message must contain)
CASES = [
    # --- config files
    ("config-empty-file", _cli(lambda ws: ws.run(config=ws.config(""))), ConfigError, "is empty"),
    ("config-missing", _cli(lambda ws: ws.run(config=ws.inputs / "nope.yaml")), ConfigError,
     "nope.yaml"),
    ("config-not-yaml", _cli(lambda ws: ws.run(config=ws.config("run: [unclosed"))), ConfigError,
     "not valid YAML"),
    ("config-a-list", _cli(lambda ws: ws.run(config=ws.config("- a\n- b\n"))), ConfigError,
     "received list"),
    ("config-unknown-section", _cli(lambda ws: ws.run(config=ws.config(trian={"epochs": 2}))),
     ConfigError, "trian"),
    ("config-unknown-key", _cli(lambda ws: ws.run(config=ws.config(train={"epochz": 2}))),
     ConfigError, "train.epochz"),
    ("config-epochs-true", _cli(lambda ws: ws.run(config=ws.config(train={"epochs": True}))),
     ConfigError, "train.epochs"),
    ("config-epochs-zero", _cli(lambda ws: ws.run(config=ws.config(train={"epochs": 0}))),
     ConfigError, "train.epochs"),
    ("config-epochs-text", _cli(lambda ws: ws.run(config=ws.config(train={"epochs": "ten"}))),
     ConfigError, "'ten'"),
    ("config-batch-float", _cli(lambda ws: ws.run(config=ws.config(train={"batch_size": 1.5}))),
     ConfigError, "train.batch_size"),
    ("config-lr-false", _cli(lambda ws: ws.run(config=ws.config(train={"learning_rate": False}))),
     ConfigError, "train.learning_rate"),
    ("config-seed-negative", _cli(lambda ws: ws.run(config=ws.config(run={"seed": -1}))),
     ConfigError, "run.seed"),
    ("config-val-fraction", _cli(lambda ws: ws.run(config=ws.config(
        preprocess={"val_fraction": 0.9}))), ConfigError, "preprocess.val_fraction"),
    ("config-unknown-strategy", _cli(lambda ws: ws.run(config=ws.config(
        merge={"strategies": ["avrage"]}))), ConfigError, "avrage"),
    ("config-no-strategy", _cli(lambda ws: ws.run(config=ws.config(merge={"strategies": []}))),
     ConfigError, "merge.strategies"),
    ("config-calibrate-unbuilt", _cli(lambda ws: ws.run(config=ws.config(
        merge={"strategies": ["average"], "calibrate": ["vote"]}))), ConfigError, "'vote'"),
    ("config-merge-weights", _cli(lambda ws: ws.run(config=ws.config(
        merge={"average": {"weights": [1.0]}}))), ConfigError, "merge.average.weights"),
    ("config-merge-flat-key", _cli(lambda ws: ws.run(config=ws.config(
        merge={"select_size": 5}))), ConfigError, "merge.select_size: unknown key"),
    ("config-merge-nested-unknown", _cli(lambda ws: ws.run(config=ws.config(
        merge={"concat": {"epoch": 5}}))), ConfigError, "merge.concat.epoch: unknown key"),
    ("config-unknown-format", _cli(lambda ws: ws.run(config=ws.config(
        export={"formats": ["pickle"]}))), ConfigError, "pickle"),
    ("config-export-name-escape", _cli(lambda ws: ws.run(config=ws.config(
        export={"name": "../../escape"}))), ConfigError, "export.name"),
    ("config-export-version-0", _cli(lambda ws: ws.run(config=ws.config(
        export={"version": 0}))), ConfigError, "export.version"),
    ("config-prune-sparsity", _cli(lambda ws: ws.run(config=ws.config(
        export={"prune_sparsities": [1.5], "export_pruned": None}))), ConfigError, "1.5"),
    ("config-run-name-slash", _cli(lambda ws: ws.run(config=ws.config(run={"name": "a/b"}))),
     ConfigError, "run.name"),
    ("config-unknown-dataset", _cli(lambda ws: ws.run(config=ws.config(load={"dataset": "mnist"}))),
     ConfigError, "'mnist'"),
    ("config-duplicate-members", _cli(lambda ws: ws.run(config=ws.config(load={"members": [
        {"name": "a", "recipe": "mlp"}, {"name": "a", "recipe": "cnn"}]}))), ConfigError, "['a']"),
    ("config-member-two-sources", _cli(lambda ws: ws.run(config=ws.config(load={"members": [
        {"name": "a", "recipe": "mlp", "path": "a.keras"}]}))), ConfigError, "member 'a'"),
    ("config-unknown-recipe", _cli(lambda ws: ws.run(config=ws.config(load={"members": [
        {"name": "a", "recipe": "transformer"}]}))), ConfigError, "transformer"),
    ("config-finetune-unknown", _cli(lambda ws: ws.run(config=ws.config(load={"members": [
        {"name": "a", "recipe": "mlp", "finetune_from": "zz"}]}))), ConfigError, "'zz'"),
    ("config-member-name-path", _cli(lambda ws: ws.run(config=ws.config(load={"members": [
        {"name": "../x", "recipe": "mlp"}]}))), ConfigError, "load.members.0.name"),
    # --- member files
    ("member-file-missing", _cli(lambda ws: ws.run(config=ws.config(
        load=_member("given", ws.inputs / "gone.keras")))), MemberError, "gone.keras"),
    ("member-file-not-keras", _cli(lambda ws: ws.run(config=ws.config(
        load=_member("given", ws.file("fake.keras"))))), MemberError, "fake.keras"),
    # --- run ids, folders, flags
    ("run-id-dotdot", _cli(lambda ws: ws.run("--run-id", "..")), ConfigError, "'..'"),
    ("run-id-dot", _cli(lambda ws: ws.run("--run-id", ".")), ConfigError, "'.'"),
    ("run-id-slash", _cli(lambda ws: ws.run("--run-id", "a/../../b")), ConfigError, "a/../../b"),
    ("run-id-hidden", _cli(lambda ws: ws.run("--run-id", ".hidden")), ConfigError, ".hidden"),
    ("runs-dir-a-file", _cli(lambda ws: ["run", str(ws.config()), "--runs-dir",
                                         str(ws.file("runs-file")), "--reports-dir",
                                         str(ws.reports)]), PipelineError, "runs-file"),
    ("reports-dir-a-file", _cli(lambda ws: ["run", str(ws.config()), "--runs-dir", str(ws.runs),
                                            "--reports-dir", str(ws.file("reports-file"))]),
     PipelineError, "reports-file"),
    ("runs-dir-under-a-file", _cli(lambda ws: ["run", str(ws.config()), "--runs-dir",
                                               str(ws.file("f") / "runs"), "--reports-dir",
                                               str(ws.reports)]), PipelineError, "--runs-dir"),
    ("jobs-zero", _cli(lambda ws: ws.run("--jobs", "0")), ConfigError, "--jobs"),
    ("from-unknown-stage", _cli(lambda ws: ws.run("--from", "deploy")), ConfigError, "deploy"),
    ("from-and-only", _cli(lambda ws: ws.run("--from", "load", "--only", "merge")), ConfigError,
     "--only"),
    ("resume-corrupt-manifest", _cli(_resume_corrupt), PipelineError, "manifest.json"),
    # --- report
    ("report-missing-run", _cli(lambda ws: ["report", str(ws.runs / "nope"), "--reports-dir",
                                            str(ws.reports)]), PipelineError, "nope"),
    ("report-corrupt-manifest", _cli(_corrupt_manifest), PipelineError, "manifest.json"),
    ("report-no-runs", _cli(lambda ws: ["report", "--runs-dir", str(ws.runs), "--reports-dir",
                                        str(ws.reports)]), PipelineError, "runs"),
    ("report-runs-dir-a-file", _cli(lambda ws: ["report", "--runs-dir", str(ws.file("r")),
                                                "--reports-dir", str(ws.reports)]),
     PipelineError, "is a file"),
    # --- predict
    ("predict-export-missing", _cli(lambda ws: ["predict", str(ws.tmp / "gone.onnx"),
                                                str(ws.file("x.npy"))]), ExportError, "gone.onnx"),
    ("predict-export-unknown-kind", _cli(lambda ws: ["predict", str(ws.file("model.pt")),
                                                     str(ws.file("x.npy"))]), ExportError,
     "model.pt"),
    ("predict-top-k-zero", _cli(lambda ws: ws.predict(ws.file("x.npy"), "--top-k", "0")),
     ConfigError, "--top-k"),
    ("predict-top-k-negative", _cli(lambda ws: ws.predict(ws.file("x.npy"), "--top-k", "-5")),
     ConfigError, "-5"),
    ("predict-inputs-missing", _cli(lambda ws: ws.predict(ws.inputs / "none.npy")), DataError,
     "none.npy"),
    ("predict-all-nan", _cli(lambda ws: ws.predict(_npy(ws, np.full((3, 8, 8, 1), np.nan)))),
     DataError, "NaN"),
    ("predict-wrong-shape", _cli(lambda ws: ws.predict(_npy(ws, np.zeros((3, 7))))), DataError,
     "(3, 7)"),
    ("predict-pickled-npy", _cli(lambda ws: ws.predict(_npy(ws, np.array([{}], dtype=object),
                                                            allow_pickle=True))), DataError,
     "x.npy"),
    ("predict-decompression-bomb", _cli(lambda ws: ws.predict(ws.file(
        "huge.png", _png_claiming(30000, 30000)))), DataError, "huge.png"),
    ("predict-not-an-image", _cli(lambda ws: ws.predict(ws.file("photo.png"))), DataError,
     "photo.png"),
    ("predict-empty-folder", _cli(lambda ws: ws.predict(_folder(ws))), DataError, "empty"),
    # --- export arguments (Python API)
    ("export-name-escape", _export(name="../../escape"), ExportError, "../../escape"),
    ("export-name-empty", _export(name=""), ExportError, "export name"),
    ("export-name-absolute", _export(name="/tmp/x"), ExportError, "/tmp/x"),
    ("export-version-zero", _export(version=0), ExportError, "version"),
    ("export-unknown-format", _export(formats=("pickle",)), ExportError, "pickle"),
    ("export-no-format", _export(formats=()), ExportError, "no export format"),
    ("export-empty-test", _export(test="empty"), ExportError, "empty"),
    ("export-test-wrong-shape", _export(test="shape"), ExportError, "(9, 9, 1)"),
    ("export-test-nan", _export(test="nan"), ExportError, "NaN"),
    ("export-test-not-a-pair", _export(test="scalar"), ExportError, "int"),
    ("export-int8-no-calibration", _export(formats=("tflite_int8",)), ExportError,
     "calibration_data"),
    # --- notebook parameters (JupyterLab, papermill)
    ("notebook-unknown-stage", _start_stage("deploy"), ConfigError, "deploy"),
    ("notebook-export-name", _start_stage("export", name="../x"), ConfigError, "name"),
    ("notebook-epochs-bool", _start_stage("train", epochs=True), ConfigError, "epochs"),
]


def _npy(ws, array, allow_pickle=False) -> Path:
    path = ws.inputs / "x.npy"
    np.save(path, array, allow_pickle=allow_pickle)
    return path


def _folder(ws) -> Path:
    d = ws.inputs / "empty"
    d.mkdir()
    return d


@pytest.fixture(scope="module")
def model():
    """A tiny Keras model of the digits shape (the export rows need one)."""
    import keras

    return keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                             keras.layers.Dense(10, activation="softmax")])


@pytest.mark.parametrize("action, error, names", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_bad_input_is_refused_and_changes_nothing(action, error, names, tmp_path, monkeypatch,
                                                  request):
    ws = Workspace(tmp_path)
    monkeypatch.chdir(tmp_path)  # relative defaults (runs/, reports/) land here, not in ROOT
    needs_model = "export" in request.node.callspec.id.split("-")[0]
    m = request.getfixturevalue("model") if needs_model else None
    call = action(ws, m)
    before = _snapshot(ROOT, tmp_path)
    with pytest.raises(KernelibError) as caught:
        call()
    assert isinstance(caught.value, error), f"{type(caught.value).__name__}: {caught.value}"
    assert names in str(caught.value), str(caught.value)
    assert _snapshot(ROOT, tmp_path) == before, "something was written"


def test_the_table_is_large_and_covers_every_family():
    assert len(CASES) >= 40
    families = {c[0].split("-")[0] for c in CASES}
    assert families >= {"config", "member", "run", "runs", "report", "predict", "export",
                        "notebook"}
