"""End to end with members from the user's world: `kernelib run` over member files of every
format and over the use-case config (frozen backbones concatenated, exported as .h5)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from test_your_models import PERM, files  # noqa: F401  the module fixture of user members

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
    cfg["merge"] = {**cfg["merge"], "concat_epochs": 2}
    cfg["evaluate"] = {"timing_repeats": 3, "bootstrap_resamples": 100}
    cfg["export"] = {**cfg.get("export", {}), "timing_repeats": 3, "prune_sparsities": [],
                     "quantize_keras": False}
    return cfg


def test_run_with_members_of_every_format(files, tmp_path):  # noqa: F811
    cfg = _fast({
        "run": {"name": "yours"},
        "load": {"dataset": "digits", "members": [
            {"name": "zoo_mlp", "recipe": "mlp"},
            {"name": "cnn16", "path": str(files["cnn16"]), "preprocess": "rescale"},
            {"name": "mlp_h5", "path": str(files["mlp"])},
            {"name": "saved", "path": str(files["saved"]), "preprocess": "rescale"},
            {"name": "perm", "path": str(files["perm"]), "class_names": [str(c) for c in PERM]},
        ]},
        "merge": {"strategies": ["average", "weighted", "select", "stacking", "concat"],
                  "concat_members": ["zoo_mlp", "cnn16", "mlp_h5", "perm"], "select_size": 5,
                  "stacking_folds": 3},
        "export": {"formats": ["keras", "saved_model", "tflite", "tflite_fp16",
                               "tflite_dynamic", "tflite_int8", "onnx", "h5"], "name": "yours"},
    })
    run = _run(cfg, tmp_path, "yours")
    exports = json.loads((run / "export" / "exports.json").read_text())
    assert sorted(e["format"] for e in exports) == sorted(cfg["export"]["formats"])
    names = set(json.loads((run / "merged" / "models.json").read_text()))
    assert {"average", "weighted", "select", "stacking", "concat", "saved", "perm"} <= names


def test_usecase_config_runs_with_random_backbones(tmp_path):
    """configs/usecase.yaml as written, but 1 epoch, only its concat, and two formats: a
    VGG16 on 2 CPU cores costs seconds per pass over digits, each format minutes."""
    cfg = _fast(yaml.safe_load((ROOT / "configs" / "usecase.yaml").read_text()))
    cfg["train"]["epochs"] = 1
    cfg["merge"] = {**cfg["merge"], "strategies": ["concat"], "concat_epochs": 1}
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
