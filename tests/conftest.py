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
