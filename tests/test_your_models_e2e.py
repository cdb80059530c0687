"""End to end with members from the user's world: `kernelib run` over member files of every
format and over the use-case config (frozen backbones concatenated, exported as .h5)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from test_data_sources import write_digits_folder
from test_your_models import PERM

from conftest import ROOT, kernelib_cli

pytestmark = pytest.mark.e2e


def _run(cfg: dict, tmp, run_id: str):
    path = tmp / f"{run_id}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = kernelib_cli("run", str(path), "--run-id", run_id, "--runs-dir", str(tmp / "runs"),
                        "--reports-dir", str(tmp / "reports"), cwd=tmp)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return tmp / "runs" / run_id


def _fast(cfg: dict) -> dict:
    cfg["train"] = {**cfg.get("train", {}), "epochs": 2, "batch_size": 128, "patience": 1}
    cfg["merge"] = {**cfg["merge"], "concat": {**cfg["merge"].get("concat", {}), "epochs": 2}}
    cfg["evaluate"] = {"timing_repeats": 3, "bootstrap_resamples": 100}
    cfg["export"] = {**cfg.get("export", {}), "timing_repeats": 3, "prune_sparsities": [],
                     "quantize_keras": False}
    return cfg


PNG_SIZE = (16, 16)  # write_digits_folder's images: digits upscaled 2x, grey, 0..255


def _png_rows(root):
    """The folder's train images and labels, read with Pillow (not kernelib)."""
    from PIL import Image

    paths = sorted((root / "train").glob("*/*.png"))
    x = np.stack([np.asarray(Image.open(p), "float32")[..., None] for p in paths])
    return x, np.array([int(p.parent.name) for p in paths])


@pytest.fixture(scope="module")
def png_world(tmp_path_factory):
    """A PNG folder (train/ and test/) and the user's members, trained on it in plain Keras:
    each takes the folder's pixels its own way (0..1, a Rescaling layer, caffe at 32x32 RGB)."""
    import keras

    keras.utils.set_random_seed(0)
    tmp = tmp_path_factory.mktemp("png_world")
    root = write_digits_folder(tmp / "digits")
    x, y = _png_rows(root)
    L, d = keras.layers, tmp / "members"
    d.mkdir()

    def fit(model, xs, ys, epochs=3, logits=False):
        model.compile(keras.optimizers.Adam(3e-3),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=logits))
        model.fit(xs, ys, epochs=epochs, batch_size=64, verbose=0)
        return model

    raw = keras.Input((*PNG_SIZE, 1))
    cnn = keras.Sequential([raw, L.Conv2D(8, 3, activation="relu"), L.MaxPooling2D(2),
                            L.Flatten(), L.Dense(10)], name="cnn16")  # logits, on 0..1
    fit(cnn, x / 255.0, y, epochs=4, logits=True).save(d / "cnn16.keras")
    mlp = keras.Sequential([keras.Input((*PNG_SIZE, 1)), L.Rescaling(1 / 255), L.Flatten(),
                            L.Dense(32, activation="relu"), L.Dense(10, activation="softmax")])
    fit(mlp, x, y).save(d / "mlp.h5")
    sm = keras.Sequential([keras.Input((*PNG_SIZE, 1)), L.Flatten(),
                           L.Dense(32, activation="relu"), L.Dense(10, activation="softmax")])
    fit(sm, x / 255.0, y).export(str(d / "mlp_saved"), format="tf_saved_model", verbose=False)
    perm = keras.Sequential([keras.Input((*PNG_SIZE, 1)), L.Rescaling(1 / 255), L.Flatten(),
                             L.Dense(10, activation="softmax")])
    fit(perm, x, np.argsort(PERM)[y], epochs=5).save(d / "perm.keras")
    # VGG16 as keras.applications builds it (random weights: nothing is downloaded), with a
    # new head; its input convention is caffe (BGR, ImageNet means subtracted) at 32x32 RGB
    backbone = keras.applications.VGG16(weights=None, include_top=False, input_shape=(32, 32, 3))
    vgg = keras.Sequential([backbone, L.GlobalAveragePooling2D(),
                            L.Dense(10, activation="softmax")], name="vgg16")
    vgg.save(d / "vgg16.keras")
    return {"tmp": tmp, "root": root, "cnn16": d / "cnn16.keras", "mlp": d / "mlp.h5",
            "saved": d / "mlp_saved", "perm": d / "perm.keras", "vgg16": d / "vgg16.keras"}


def test_run_on_a_png_folder_with_members_of_every_format(png_world):
    w = png_world
    cfg = _fast({
        "run": {"name": "yours"},
        "load": {"dataset": {"kind": "folder", "path": str(w["root"]), "image_size": [16, 16],
                             "color_mode": "grayscale"},
                 "members": [
            {"name": "zoo_mlp", "recipe": "mlp"},
            {"name": "cnn16", "path": str(w["cnn16"]), "preprocess": "rescale"},
            {"name": "mlp_h5", "path": str(w["mlp"])},
            {"name": "saved", "path": str(w["saved"]), "preprocess": "rescale"},
            {"name": "vgg16", "path": str(w["vgg16"]), "preprocess": "caffe"},
            {"name": "perm", "path": str(w["perm"]), "class_names": [str(c) for c in PERM]},
        ]},
        # every strategy of the issue; concat over the members whose features it can read
        # (a SavedModel member is a sealed signature: no features)
        "merge": {"strategies": ["average", "weighted", "select", "stacking", "concat"],
                  "concat": {"include": ["zoo_mlp", "cnn16", "mlp_h5", "vgg16", "perm"]},
                  "select": {"size": 5}, "stacking": {"folds": 3}},
        # one format per runtime (the quantized TFLite variants are tested on small models)
        "export": {"formats": ["keras", "saved_model", "tflite", "onnx", "h5"], "name": "yours"},
    })
    run = _run(cfg, w["tmp"], "yours")
    names = set(json.loads((run / "merged" / "models.json").read_text()))
    assert {"average", "weighted", "select", "stacking", "concat", "saved", "vgg16",
            "perm"} <= names
    exports = json.loads((run / "export" / "exports.json").read_text())
    assert sorted(e["format"] for e in exports) == sorted(cfg["export"]["formats"])
    assert all(e.get("verified", True) and "parity" in e for e in exports), exports
    # the ONNX file, run by onnxruntime on raw test PNGs read with Pillow, agrees with the
    # .keras export run by Keras on the same pixels
    import keras
    import onnxruntime as ort
    from PIL import Image

    pngs = sorted((w["root"] / "test").glob("*/*.png"))[::9]
    x = np.stack([np.asarray(Image.open(p), "float32")[..., None] for p in pngs])
    sess = ort.InferenceSession(str(run / "export" / "yours.onnx"),
                                providers=["CPUExecutionProvider"])
    onnx_p = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    keras_p = keras.saving.load_model(run / "export" / "yours.keras", compile=False,
                                      safe_mode=False).predict(x, verbose=0)
    np.testing.assert_allclose(onnx_p, keras_p, atol=1e-4)
    truth = np.array([int(p.parent.name) for p in pngs])
    assert (onnx_p.argmax(1) == truth).mean() > 0.5  # trained members, merged: far above 0.1


def test_usecase_config_runs_with_random_backbones(tmp_path):
    """configs/usecase.yaml as written, but 1 epoch, only its concat, and two formats: a
    VGG16 on 2 CPU cores costs seconds per pass over digits, each format minutes."""
    cfg = _fast(yaml.safe_load((ROOT / "configs" / "usecase.yaml").read_text()))
    cfg["train"]["epochs"] = 1
    cfg["merge"] = {**cfg["merge"], "strategies": ["concat"],
                    "concat": {**cfg["merge"]["concat"], "epochs": 1}}
    cfg["export"]["formats"] = ["h5", "keras"]
    run = _run(cfg, tmp_path, "usecase")
    exports = json.loads((run / "export" / "exports.json").read_text())
    assert {e["format"] for e in exports} == {"h5", "keras"}
    import keras

    model = keras.saving.load_model(run / "export" / "digits-usecase.h5", compile=False)
    assert model.name == "concat"
    frozen = [la for la in model.layers if la.name.endswith("_features")]
    assert len(frozen) == 2 and not any(la.trainable_weights for la in frozen)
    probs = model.predict(np.zeros((2, 8, 8, 1), "float32"), verbose=0)
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
