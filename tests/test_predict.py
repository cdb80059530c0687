"""`kernelib predict`: images or arrays through an exported artifact, top-k classes printed."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest

from conftest import kernelib_cli
from kernelib import export, runtimes
from kernelib.errors import DataError, ExportError


@pytest.fixture(scope="module")
def served(tiny_members, splits, tmp_path_factory):
    """The tiny CNN member exported once as SavedModel, TFLite and ONNX, plus input files."""
    from PIL import Image

    out = tmp_path_factory.mktemp("served")
    model = tiny_members[1].model
    manifest = export.export(model, out / "export", ["saved_model", "tflite", "onnx"],
                             name="digits", test=splits.test, repeats=3,
                             class_names=[f"digit-{c}" for c in splits.class_names])
    x = splits.x_test[:6]
    images = out / "images"
    images.mkdir()
    for i, row in enumerate(x):  # 8x8 digits (0..16) as 32x32 PNGs (0..255), 4x4 blocks
        pixels = np.round(row[..., 0] * 255 / 16).astype("uint8")
        Image.fromarray(pixels).resize((32, 32), Image.Resampling.NEAREST).save(
            images / f"d{i}.png")
    np.save(out / "x.npy", x)
    return {"manifest": manifest, "model": model, "x": x, "images": images, "out": out}


def _top1(stdout: str) -> dict[str, str]:
    return {line.split()[0]: line.split()[1] for line in stdout.strip().splitlines()}


def test_same_top1_from_savedmodel_tflite_and_onnx(served):
    """The PNGs go through the documented rule; the expected classes come from NumPy here."""
    m = served["manifest"]
    # BOX-averaging a 4x4 block of equal pixels returns the pixel; 0..255 maps back onto 0..16
    x = np.round(served["x"] * 255 / 16) * 16 / 255
    expected = np.asarray(served["model"].predict(x, verbose=0)).argmax(1)
    names = {f"d{i}.png": f"digit-{k}" for i, k in enumerate(expected)}
    outputs = {}
    for fmt in ("saved_model", "tflite", "onnx"):
        proc = kernelib_cli("predict", str(m.path(fmt)), str(served["images"]), cwd=served["out"])
        assert proc.returncode == 0, proc.stderr[-2000:]
        outputs[fmt] = _top1(proc.stdout)
    assert outputs["saved_model"] == outputs["tflite"] == outputs["onnx"] == names


def test_npy_input_prints_top_k_with_probabilities(served):
    m = served["manifest"]
    proc = kernelib_cli("predict", str(m.path("onnx")), str(served["out"] / "x.npy"),
                        "--top-k", "2", cwd=served["out"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    probs = np.asarray(served["model"].predict(served["x"], verbose=0))
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == len(served["x"])
    for line, p in zip(lines, probs, strict=True):
        pairs = re.findall(r"digit-(\d) \((\d\.\d{3})\)", line)
        assert [int(c) for c, _ in pairs] == list(np.argsort(-p)[:2])
        np.testing.assert_allclose([float(v) for _, v in pairs], np.sort(p)[::-1][:2], atol=6e-4)


def test_serving_folder_resolves_to_its_highest_version(served, tmp_path):
    m = served["manifest"]
    shutil.copytree(m.path("saved_model"), tmp_path / "digits" / "1")
    shutil.copytree(m.path("saved_model"), tmp_path / "digits" / "7")
    assert runtimes.detect_format(tmp_path / "digits") == ("saved_model", tmp_path / "digits" / "7")


@pytest.mark.parametrize("content, name, match", [
    (b"\x89PNG\r\n\x1a\n truncated", "bad.png", r"DataError: could not read image '.*bad\.png'.*"
                                                r"expected a valid PNG or JPEG"),
    (b"not an array", "bad.npy", r"DataError: could not read '.*bad\.npy' as a NumPy array"),
    (None, "missing.png", r"DataError: input not found"),
    (b"hello", "notes.txt", r"DataError: cannot read 'notes\.txt': expected an \.npy array or "
                            r"an image"),
])
def test_bad_input_files_give_a_clear_error(served, tmp_path, content, name, match):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    proc = kernelib_cli("predict", str(served["manifest"].path("tflite")), str(path),
                        cwd=tmp_path)
    assert proc.returncode == 1
    assert re.search(match, proc.stderr), proc.stderr
    assert "Traceback" not in proc.stderr


def test_wrong_shape_and_unknown_artifact(served, tmp_path):
    np.save(tmp_path / "rows.npy", np.zeros((3, 7), "float32"))
    with pytest.raises(DataError, match=r"shape \(3, 7\); expected rows of shape \(8, 8, 1\)"):
        runtimes.predict_top_k(served["manifest"].path("onnx"), tmp_path / "rows.npy")
    (tmp_path / "model.pt").write_bytes(b"x")
    with pytest.raises(ExportError, match=r"cannot tell the format of 'model\.pt'; valid: "
                                          r"\.keras, \.h5, \.tflite, \.onnx"):
        runtimes.predict_top_k(tmp_path / "model.pt", tmp_path / "rows.npy")


@pytest.mark.parametrize("mode, invert, expected", [
    ("L", False, 16.0),   # white -> top of the training range
    ("L", True, 0.0),     # inverted: white paper -> background
    ("RGB", False, 16.0),  # colour is converted to one grey channel
])
def test_image_rule(mode, invert, expected):
    from PIL import Image

    img = Image.new(mode, (40, 24), "white")
    row = runtimes.image_to_input(img, (8, 8, 1), (0.0, 16.0), invert=invert)
    assert row.shape == (8, 8, 1) and np.all(row == expected)
    half = np.zeros((16, 16), "uint8")
    half[:, 8:] = 255  # left black, right white; 2x2 blocks average to one pixel each
    row = runtimes.image_to_input(Image.fromarray(half), (8, 8, 1), (0.0, 16.0))
    np.testing.assert_array_equal(row[..., 0], np.repeat([[0.0] * 4 + [16.0] * 4], 8, axis=0))
