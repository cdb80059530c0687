"""Export: every format written atomically and verified by its own runtime in a fresh process."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest
from direct_runtimes import assert_record_agrees, parity, predict_direct

from kernelib import export, io, members, merge, params
from kernelib.errors import ConfigError, ExportError


@pytest.fixture(scope="module")
def merged(tiny_members):
    return merge.merge(tiny_members, "average")


@pytest.fixture(scope="module")
def exported(merged, splits, tmp_path_factory):
    """One export of the tiny merged model to every format, shared by the tests below."""
    out = tmp_path_factory.mktemp("export")
    manifest = export.export(merged, out, export.FORMATS, name="digits", version=3,
                             test=splits.test, calibration_data=splits.x_train[:100],
                             class_names=splits.class_names, repeats=3)
    probs = np.asarray(merged.predict(splits.x_test, verbose=0), dtype="float64")
    return manifest, probs


def _sha256_file(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_params_offer_every_format():
    assert params.EXPORT_FORMATS == export.FORMATS


@pytest.mark.parametrize("values, match", [
    ({"formats": ["pickle"]}, r"formats\.0: Input should be 'keras', 'saved_model'"),
    ({"export_pruned": 0.3}, r"export_pruned must be one of prune_sparsities above 0 "
                             r"\[0\.5, 0\.75, 0\.9\]; received 0\.3"),
    ({"prune_sparsities": [0.5, 1.0]}, r"prune_sparsities must lie in \[0, 1\); received \[1\.0\]"),
])
def test_export_params_refuse_bad_values(values, match):
    with pytest.raises(ConfigError, match=match):
        params.validate_stage("export", values)


@pytest.mark.parametrize("fmt", export.FORMATS)
def test_every_format_is_written_and_verified(exported, splits, fmt):
    manifest, probs = exported
    e = manifest[fmt]
    path = manifest.path(fmt)
    assert path.exists() and e["bytes"] == io.size_bytes(path) > 1000
    if path.is_file():
        assert e["sha256"] == _sha256_file(path)
    criterion, tolerance = export.CRITERIA[fmt]
    assert e["criterion"] == criterion and e["tolerance"] == tolerance
    # the file run here by its own runtime, judged with NumPy against Keras' own predict
    mine = parity(predict_direct(path, fmt, splits.x_test), probs, splits.y_test)
    assert_record_agrees(e, mine, len(splits.y_test))
    assert e["accuracy"] == pytest.approx(mine["accuracy"], abs=1 / len(splits.y_test))
    keras_acc = float(np.mean(probs.argmax(1) == splits.y_test))
    assert e["reference_accuracy"] == pytest.approx(keras_acc)
    if criterion == "max_abs_diff":
        assert e["max_abs_diff"] <= tolerance and e["accuracy"] == pytest.approx(keras_acc)
    elif criterion == "top1_agreement":
        assert e["top1_agreement"] >= tolerance
    else:
        assert keras_acc - e["accuracy"] <= tolerance
    assert e["latency_ms"] > 0 and e["throughput_per_s"] > 0
    assert e["name"] == "digits" and e["version"] == 3


def test_layout_labels_and_no_leftovers(exported, splits):
    manifest, _ = exported
    out = manifest.out_dir
    assert (out / "digits" / "3" / "saved_model.pb").is_file()  # TF Serving: <name>/<version>/
    assert sorted(p.name for p in out.glob("*.tflite")) == [
        "digits.tflite", "digits_dynamic.tflite", "digits_fp16.tflite", "digits_int8.tflite"]
    labels = io.read_json(out / "labels.json")
    assert labels["class_names"] == splits.class_names
    assert labels["input_range"] == [float(splits.x_test.min()), float(splits.x_test.max())]
    assert labels["files"]["digits.onnx"] == {"name": "digits", "version": 3}
    assert not [p for p in out.rglob(".*")], "no temporary files left behind"
    assert list(manifest.table().index) == list(export.FORMATS)


def test_tflite_files_hold_builtin_ops_only(exported):
    manifest, _ = exported
    for fmt in ("tflite", "tflite_fp16", "tflite_dynamic", "tflite_int8"):
        ops = manifest[fmt]["ops"]
        assert "FULLY_CONNECTED" in ops and not [o for o in ops if o.startswith("Flex")]
    assert "QUANTIZE" in manifest["tflite_int8"]["ops"]


def test_artifacts_match_keras_outside_kernelib(exported, splits):
    """Each runtime called directly here, not through kernelib's verifier."""
    manifest, probs = exported
    x = splits.x_test[:16]
    for fmt, atol in (("onnx", 1e-4), ("tflite", 1e-4), ("saved_model", 1e-5), ("keras", 1e-6)):
        np.testing.assert_allclose(predict_direct(manifest.path(fmt), fmt, x), probs[:16],
                                   atol=atol, err_msg=fmt)


def test_planted_converter_change_fails_naming_format_and_figure(exported, splits, tmp_path):
    """A dynamic-range int8 file handed over as the float32 TFLite export."""
    manifest, probs = exported
    planted = tmp_path / "digits.tflite"
    shutil.copy(manifest.path("tflite_dynamic"), planted)
    with pytest.raises(ExportError, match=r"tflite export failed verification: max_abs_diff = "
                                          r"\S+, above the tolerance 0\.0001"):
        export.verify(planted, "tflite", x=splits.x_test, reference=probs, y=splits.y_test,
                      repeats=3)


def test_planted_weight_change_in_onnx_fails(exported, splits, tmp_path):
    import onnx

    manifest, probs = exported
    model = onnx.load(str(manifest.path("onnx")))
    init = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    w = onnx.numpy_helper.to_array(init).copy()
    w.flat[:: 7] += 0.5
    init.CopyFrom(onnx.numpy_helper.from_array(w, init.name))
    onnx.save(model, str(tmp_path / "m.onnx"))
    with pytest.raises(ExportError, match=r"onnx export failed verification: max_abs_diff"):
        export.verify(tmp_path / "m.onnx", "onnx", x=splits.x_test, reference=probs, repeats=3)


@pytest.mark.parametrize("fmt, name, match", [
    ("onnx", "m.onnx", r"onnx export at .* could not be loaded by its runtime \(onnxruntime"),
    ("tflite", "m.tflite", r"tflite export at .* (is not a readable TFLite file|could not be "
                           r"loaded)"),
])
def test_corrupted_artifact_fails_verification(exported, splits, tmp_path, fmt, name, match):
    manifest, probs = exported
    path = tmp_path / name
    data = manifest.path(fmt).read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ExportError, match=match):
        export.verify(path, fmt, x=splits.x_val, reference=probs[: len(splits.x_val)],
                      repeats=3)


def test_compare_quantization(exported, merged, splits):
    manifest, probs = exported
    table = export.compare_quantization(merged, manifest, splits.test)
    keras_acc = float(np.mean(probs.argmax(1) == splits.y_test))
    assert list(table.index) == ["keras float32", "keras int8 (model.quantize)", "tflite",
                                 "tflite_fp16", "tflite_dynamic", "tflite_int8"]
    assert table.loc["keras float32", "accuracy"] == pytest.approx(keras_acc)
    assert table.loc["tflite_int8", "accuracy"] == pytest.approx(manifest["tflite_int8"]["accuracy"])
    assert table.loc["keras int8 (model.quantize)", "accuracy_drop"] < 0.05
    assert table.loc["tflite_int8", "size_kib"] < table.loc["tflite", "size_kib"] / 2


@pytest.mark.parametrize("formats, kwargs, match", [
    (["pickle"], {}, r"unknown export format\(s\) \['pickle'\]; valid formats: \['keras'"),
    ([], {}, r"no export format given; valid formats"),
    (["tflite_int8"], {}, r"tflite_int8 needs a representative dataset.*calibration_data"),
    (["tflite_int8"], {"calibration_data": np.zeros((0, 8, 8, 1))}, r"representative dataset"),
])
def test_bad_requests_are_refused_before_writing(merged, splits, tmp_path, formats, kwargs,
                                                 match):
    with pytest.raises(ExportError, match=match):
        export.export(merged, tmp_path, formats, name="m", test=splits.test, **kwargs)
    assert not list(tmp_path.iterdir())


def test_served_versions_are_never_replaced_without_overwrite(exported, merged, splits, tmp_path):
    manifest, _ = exported
    with pytest.raises(ExportError, match=r"already exists; refusing to replace .* served "
                                          r"version\)\. Raise export\.version"):
        export.export(merged, manifest.out_dir, ["saved_model"], name="digits", version=3,
                      test=splits.test)
    # a folder holding version 1 (SavedModel and an ONNX file) gets version 2
    shutil.copytree(manifest.path("saved_model"), tmp_path / "digits" / "1")
    shutil.copy(manifest.path("onnx"), tmp_path / "digits.onnx")
    io.write_json(tmp_path / "labels.json",
                  {"files": {"digits.onnx": {"name": "digits", "version": 1}}})
    v1 = io.sha256(tmp_path / "digits" / "1")
    with pytest.raises(ExportError, match=r"already holds version 1 of 'digits' \(digits\.onnx\)"
                                          r"; exporting version 2 would replace it"):
        export.export(merged, tmp_path, ["saved_model", "onnx"], name="digits", version=2,
                      test=splits.test)
    assert not (tmp_path / "digits" / "2").exists()
    m2 = export.export(merged, tmp_path, ["saved_model", "onnx"], name="digits", version=2,
                       test=splits.test, overwrite=True, repeats=3)
    assert (tmp_path / "digits" / "2" / "saved_model.pb").is_file()
    assert io.sha256(tmp_path / "digits" / "1") == v1, "version 1 is never touched"
    assert m2["onnx"]["sha256"] == _sha256_file(tmp_path / "digits.onnx")
    assert io.read_json(tmp_path / "labels.json")["files"]["digits.onnx"]["version"] == 2


def _tiny_with_flip(keras):
    inp = keras.Input((8, 8, 1), name="image")
    x = keras.layers.RandomFlip("horizontal", name="flip")(inp)
    out = keras.layers.Dense(10, activation="softmax")(keras.layers.Flatten()(x))
    return keras.Model(inp, out)


def test_augmentation_layers_are_removed_before_onnx(splits, tmp_path):
    import keras
    import onnx

    model = _tiny_with_flip(keras)
    manifest = export.export(model, tmp_path, ["onnx"], name="flip", test=splits.test,
                             repeats=3)
    assert manifest.changes[0] == "augmentation layers ['flip'] removed (training-only)"
    assert manifest.changes[1].endswith("max |difference| 0, top-1 agreement 100.00%")
    assert manifest["onnx"]["max_abs_diff"] <= 1e-4
    ops = {n.op_type for n in onnx.load(str(manifest.path("onnx"))).graph.node}
    assert not [o for o in ops if "Random" in o], ops
    assert members.augmentation_layers(model) == ["flip"], "the given model is left as it was"


def test_subclassed_models_are_explained(splits, tmp_path):
    import keras

    class Flipper(keras.Model):
        def __init__(self, augment: bool):
            super().__init__(name="flipper")
            self.flip = keras.layers.RandomFlip("horizontal", name="random_flip") if augment else None
            self.flat = keras.layers.Flatten()
            self.head = keras.layers.Dense(10, activation="softmax")

        def call(self, x, training=False):
            x = self.flip(x, training=training) if self.flip else x
            return self.head(self.flat(x))

    for augment, match in [
        (True, r"augmentation layers \['random_flip'\].*training-only.*Build the inference "
               r"model without them"),
        (False, r"exports functional or Sequential models.*received a subclassed model "
                r"'flipper'. Wrap it first"),
    ]:
        model = Flipper(augment)
        model(splits.x_test[:2])
        with pytest.raises(ExportError, match=match):
            export.export(model, tmp_path, ["onnx"], name="m", test=splits.test)


def test_mixed_precision_model_is_exported_in_float32(splits, tmp_path):
    """As trained on a GPU: float16 compute, float32 softmax."""
    import keras

    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        inp = keras.Input((8, 8, 1))
        x = keras.layers.Dense(32, activation="relu")(keras.layers.Flatten()(inp))
        model = keras.Model(inp, keras.layers.Dense(10, activation="softmax", dtype="float32")(x))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    manifest = export.export(model, tmp_path, ["tflite", "onnx"], name="mp", test=splits.test,
                             repeats=3)
    assert manifest.changes[0] == "computes in float32 (the model used the ['mixed_float16'] " \
                                  "dtype policies)"
    assert manifest["tflite"]["max_abs_diff"] <= 1e-4 and manifest["onnx"]["max_abs_diff"] <= 1e-4
    assert model.layers[2].dtype_policy.name == "mixed_float16", "the given model is unchanged"


def test_model_card_reads_the_run_folder_and_tolerates_gaps(exported, tmp_path):
    from kernelib import modelcard
    from kernelib.rundir import RunDir

    manifest, _ = exported
    empty = modelcard.build(RunDir(tmp_path / "empty"), manifest)  # nothing recorded yet
    assert empty["config_hash"] is None and empty["metrics"]["selected"] == []
    assert "## Exports" in modelcard.to_markdown(empty)

    run = RunDir(tmp_path / "run")
    io.write_json(run.manifest, {"run_id": "r1", "config_hash": "ab" * 32})
    io.write_json(run.data_card, {"name": "digits", "rows": 1797, "input_shape": [8, 8, 1],
                                  "class_counts": {"0": 178}})
    io.write_json(run.metrics / "summary.json", {
        "selected": "average", "selected_kind": "merged", "selected_by": "val_nll",
        "ci_level": 0.95, "test_accuracy": 0.9, "test_accuracy_lo": 0.85,
        "test_accuracy_hi": 0.94, "bootstrap_resamples": 1000})
    io.write_json(run.metrics / "comparison.json",
                  [{"model": "average", "kind": "merged", "test_nll": 0.3},
                   {"model": "mlp_0", "kind": "member", "test_nll": 0.5}])
    card = modelcard.build(run, manifest, compression={"Pruning sweep": [{"s": 0.5}]})
    md, js = modelcard.write(tmp_path / "card", card)
    assert {r["metric"]: (r["value"], r["lo"], r["hi"]) for r in card["metrics"]["selected"]} == {
        "test_accuracy": (0.9, 0.85, 0.94), "test_nll": (0.3, None, None)}
    text = md.read_text()
    assert "config hash `" + "ab" * 32 + "`" in text and "| test_accuracy | 0.9 | [0.85, 0.94] |" in text
    assert "| test_nll | 0.3 | not recorded |" in text and "## Pruning sweep" in text
    assert io.read_json(js)["exports"] == manifest.records()
    assert set(card["environment"]) >= {"tensorflow", "keras", "onnxruntime", "ai-edge-litert"}


def test_vote_model_exports_with_builtin_ops(tiny_members, splits, tmp_path):
    """The vote layer's argmax must convert to TFLite and ONNX builtin ops, with parity."""
    from kernelib import merge

    vote = merge.merge(tiny_members, "vote")
    manifest = export.export(vote, tmp_path, ["tflite", "onnx"], name="vote",
                             test=(splits.x_test[:64], splits.y_test[:64]))
    for entry in manifest.entries:
        assert entry["max_abs_diff"] == 0.0 and entry["top1_agreement"] == 1.0, entry["format"]
    tflite_ops = next(e for e in manifest.entries if e["format"] == "tflite")["ops"]
    assert "ARG_MAX" in tflite_ops and not [op for op in tflite_ops if "FLEX" in op.upper()]


def test_export_without_test_rows_writes_unverified_records(tmp_path):
    """`export(model, out, formats, name=...)` alone: the files are written, each record says
    it was not verified and why, and exports.json lists each file with its sha256."""
    import keras

    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(3, activation="softmax")])
    manifest = export.export(model, tmp_path, ["keras", "onnx"], name="plain")
    for fmt in ("keras", "onnx"):
        e = manifest[fmt]
        assert e["verified"] is False and "without test rows" in e["note"]
        assert "parity" not in e
    records = io.read_json(tmp_path / export.EXPORTS_FILE)
    assert [r["path"] for r in records] == ["plain.keras", "plain.onnx"]
    for r in records:
        assert io.sha256(tmp_path / r["path"]) == r["sha256"]
    x = np.random.default_rng(0).normal(size=(5, 8, 8, 1)).astype("float32")
    reloaded = keras.saving.load_model(tmp_path / "plain.keras")
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=1e-6)
    with pytest.raises(ExportError, match="tflite_int8 is judged by its accuracy drop"):
        export.export(model, tmp_path / "q", ["tflite_int8"], name="plain",
                      calibration_data=x)


def test_throughput_comes_from_the_prediction_batches_when_there_are_enough():
    """The verifying process times the full batches it already predicted; it runs batches of
    256 again only when too few were predicted (a small test split)."""
    from kernelib import runtimes

    calls = []

    def run(x):
        calls.append(len(x))
        return np.zeros((len(x), 2), "float32")

    runner = runtimes.Runner("test", (3,), run)
    seconds: list[float] = []
    probs = runtimes.predict_batched(runner, np.zeros((256 * 8 + 5, 3), "float32"),
                                     batch_size=256, seconds=seconds)
    assert probs.shape == (256 * 8 + 5, 2) and len(seconds) == 8  # the 5-row batch not timed
    calls.clear()
    figures = runtimes.measure(runner, np.zeros((10, 3), "float32"), repeats=5, batch_size=256,
                               batch_seconds=seconds)
    assert set(calls) == {1}  # latency only: 3 warm-up calls and 5 timed ones of one row
    assert len(calls) == 8
    assert figures["throughput_per_s"] == pytest.approx(256 / np.median(seconds[3:]))
    calls.clear()
    runtimes.measure(runner, np.zeros((10, 3), "float32"), repeats=6, batch_size=256,
                     batch_seconds=seconds)  # 5 timed batches < 6 repeats: measured anew
    assert calls.count(256) == 3 + 6
