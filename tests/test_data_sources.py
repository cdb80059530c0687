"""Your own data: image folders and array files, their own splits kept, streamed, augmented."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import kernelib_cli
from kernelib import data, params
from kernelib.errors import ConfigError, DataError

SIZE = 16  # digits' 8x8 upscaled, written at the size the config asks for


def _load(spec: dict, **kwargs) -> data.Dataset:
    """A folder or arrays spec mapping, validated as a config's `load.dataset`, then loaded."""
    return data.load_dataset(params.dataset_spec(spec), **kwargs)


def write_digits_folder(root: Path, *, test_every: int = 5,
                        names: dict[int, str] | None = None) -> Path:
    """scikit-learn's digits as grey PNGs in class folders: every `test_every`-th image in
    test/, the others in train/; `names` renames some class folders."""
    from PIL import Image
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (np.kron(bunch.images, np.ones((2, 2))) * (255 / 16)).round().astype("uint8")
    for i, (img, label) in enumerate(zip(images, bunch.target, strict=True)):
        part = "test" if i % test_every == 0 else "train"
        folder = root / part / (names or {}).get(int(label), str(label))
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img, "L").save(folder / f"{i:04d}.png")
    return root


def smoke_config(dataset, tmp: Path, **preprocess) -> Path:
    """Two tiny zoo members, one epoch, two strategies, .keras and ONNX exports."""
    config = {
        "run": {"name": "own"},
        "load": {"dataset": dataset, "members": [{"name": "mlp_0", "recipe": "mlp", "seed": 0},
                                                 {"name": "cnn_0", "recipe": "cnn", "seed": 1}]},
        "preprocess": preprocess,
        "train": {"epochs": 2, "batch_size": 128, "patience": 1},
        "merge": {"strategies": ["average", "weighted"]},
        "evaluate": {"bootstrap_resamples": 100, "timing_repeats": 3},
        "export": {"formats": ["keras", "onnx"], "name": "own", "timing_repeats": 3,
                   "prune_sparsities": [], "quantize_keras": False},
    }
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_config(config: Path, tmp: Path) -> Path:
    proc = kernelib_cli("run", str(config), "--run-id", "own", "--runs-dir", str(tmp / "runs"),
                        "--reports-dir", str(tmp / "reports"), cwd=tmp)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return tmp / "runs" / "own"


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("folder")
    write_digits_folder(tmp / "digits", names={7: "<b>7"})  # folder names are user text
    spec = {"kind": "folder", "path": "digits", "image_size": [SIZE, SIZE],
            "color_mode": "grayscale"}  # relative to the config's folder
    return {"tmp": tmp, "run": run_config(smoke_config(spec, tmp), tmp)}


@pytest.mark.e2e
def test_folder_run_keeps_the_given_test_split(folder_run):
    root, run = folder_run["tmp"] / "digits", folder_run["run"]
    with np.load(run / "data" / "splits.npz") as f:
        paths = {p: {str(Path(s).relative_to(root)) for s in f[f"x_{p}_paths"]}
                 for p in data.PARTS}
        assert not {"x_train", "x_train_uint8"} & set(f.files), "an index, not decoded pixels"
    on_disk = {p: {str(f.relative_to(root)) for f in (root / p).rglob("*.png")}
               for p in ("train", "test")}
    assert paths["test"] == on_disk["test"]  # exactly the files of test/
    assert not on_disk["train"] & paths["test"]
    # val is carved out of train/ (only the missing split is carved), never trained on
    assert paths["train"] | paths["val"] == on_disk["train"]
    assert not paths["train"] & (paths["val"] | paths["test"])
    card = json.loads((run / "data" / "card.json").read_text())
    assert card["splits"] == {"train": "given", "val": "carved", "test": "given"}
    assert card["input_shape"] == [SIZE, SIZE, 1]
    assert "val (carved)" in (run / "notebooks" / "02_preprocess.ipynb").read_text()


@pytest.mark.e2e
def test_class_names_from_folders_are_escaped_on_every_page(folder_run):
    pages = sorted((folder_run["tmp"] / "reports").rglob("*.html"))
    assert pages
    assert any("&lt;b&gt;7" in p.read_text() for p in pages)
    for page in pages:
        assert "<b>7" not in page.read_text(), page.name


@pytest.mark.e2e
def test_predict_on_a_png_matches_the_keras_export(folder_run):
    import shutil

    import keras

    root, run = folder_run["tmp"] / "digits", folder_run["run"]
    pngs = sorted((root / "test").rglob("*.png"))[::36]
    picked = folder_run["tmp"] / "picked"
    picked.mkdir()
    for png in pngs:
        shutil.copy(png, picked / png.name)
    model = keras.saving.load_model(run / "export" / "own.keras")
    # the reference: Pillow's pixels as they are (the files are written at the input size)
    from PIL import Image

    x = np.stack([np.asarray(Image.open(p), "float32")[..., None] for p in pngs])
    expected = np.asarray(model(x, training=False)).argmax(1)
    classes = json.loads((run / "export" / "labels.json").read_text())["class_names"]
    proc = kernelib_cli("predict", str(run / "export" / "own.onnx"), str(picked), "--top-k",
                        "1", cwd=folder_run["tmp"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    top1 = dict(line.split()[:2] for line in proc.stdout.strip().splitlines())
    assert top1 == {png.name: classes[w] for png, w in zip(pngs, expected, strict=True)}


@pytest.mark.e2e
def test_arrays_run_keeps_the_given_test_split(tmp_path):
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x, y = bunch.images.astype("uint8"), bunch.target  # (N, 8, 8): any numeric dtype
    np.savez(tmp_path / "digits.npz", x=x[300:], y=y[300:], x_test=x[:300], y_test=y[:300],
             class_names=np.array([f"d{i}" for i in range(10)]))
    config = smoke_config({"kind": "arrays", "path": "digits.npz"}, tmp_path,
                          augment={"width_shift_range": 0.1, "rotation_range": 10})
    run = run_config(config, tmp_path)
    s = data.read_splits(run / "data" / "splits.npz")
    np.testing.assert_array_equal(s.x_test[..., 0], x[:300])
    np.testing.assert_array_equal(s.y_test, y[:300])
    rows = {r.tobytes() for r in x[:300].astype("float32")}
    assert not [r for r in s.x_val[..., 0] if r.tobytes() in rows]
    assert len(s.y_train) + len(s.y_val) == len(y) - 300
    assert s.origin == {"train": "given", "val": "carved", "test": "given"}
    card = json.loads((run / "data" / "card.json").read_text())
    assert card["splits"]["test"] == "given" and card["class_names"][0] == "d0"
    augment = json.loads((run / "data" / "augment.json").read_text())
    assert augment == {"settings": {"width_shift_range": 0.1, "rotation_range": 10.0},
                       "value_range": [0.0, 16.0]}
    # training-only: no Random* layer in any saved member, merged or exported model
    import zipfile

    for f in [*run.glob("members/*/model.keras"), *run.glob("merged/*.keras"),
              *run.glob("export/*.keras")]:
        assert "Random" not in zipfile.ZipFile(f).read("config.json").decode(), f


# ---------------------------------------------------------------------------- streaming


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory):
    return write_digits_folder(tmp_path_factory.mktemp("small") / "digits", test_every=3)


def test_folder_reader_matches_pillow(small_folder):
    from PIL import Image

    ds = _load({"kind": "folder", "path": str(small_folder),
                            "image_size": [SIZE, SIZE], "color_mode": "grayscale"})
    assert ds.class_names == [str(i) for i in range(10)] and ds.given == ["train", "test"]
    rows = [0, 5, len(ds.y) - 1]
    for i in rows:
        path = Path(ds.x.paths[i])
        assert path.parent.name == ds.class_names[ds.y[i]]
        assert path.parent.parent.name == ds.part[i]
    ref = np.stack([np.asarray(Image.open(ds.x.paths[i]), "float32")[..., None] for i in rows])
    np.testing.assert_array_equal(ds.x[rows], ref)
    streamed = np.concatenate(list(data.batches(ds.x.subset(np.array(rows)), 2)))
    np.testing.assert_array_equal(streamed, ref)
    rgb = _load({"kind": "folder", "path": str(small_folder),
                             "image_size": [8, 8], "class_names": list("9876543210")})
    assert rgb.input_shape == (8, 8, 3) and rgb.class_names[0] == "9"
    assert Path(rgb.x.paths[np.flatnonzero(rgb.y == 0)[0]]).parent.name == "9"
    # resized as tf.image.resize does (bilinear, half-pixel centres: a 2x2 mean here)
    grey = np.asarray(Image.open(rgb.x.paths[0]), "float32")
    np.testing.assert_allclose(rgb.x[0], np.repeat(grey.reshape(8, 2, 8, 2).mean(axis=(1, 3))
                                                   [..., None], 3, axis=-1), atol=1e-3)


def test_make_dataset_streams_files_and_preprocessor_fits_them(small_folder):
    ds = _load({"kind": "folder", "path": str(small_folder),
                            "image_size": [SIZE, SIZE], "color_mode": "grayscale"})
    s = data.split(ds, val_fraction=0.15, test_fraction=0.2, seed=0)
    assert isinstance(s.x_train, data.Images) and s.origin["test"] == "given"
    x = np.asarray(s.x_train)
    pre = data.build_preprocessor(s.x_train)
    z = np.asarray(pre(x[:50]))
    np.testing.assert_allclose(z, (x[:50] - x.mean()) / x.std(), rtol=1e-3, atol=1e-3)
    got = np.concatenate([xb.numpy() for xb, _ in data.make_dataset(s.x_train, s.y_train,
                                                                     batch_size=64)])
    np.testing.assert_array_equal(got, x)


# ---------------------------------------------------------------------------- augmentation


def test_augmentation_changes_training_batches_every_epoch_only():
    from sklearn.datasets import load_digits

    x = load_digits().images.astype("float32")[:64, ..., None]
    y = np.arange(64) % 10
    spec = data.augment_spec({"rotation_range": 20, "width_shift_range": 0.1, "zoom_range": 0.1,
                              "shear_range": 10, "horizontal_flip": True, "erasing": 0.5,
                              "brightness_range": [0.9, 1.1], "contrast": 0.2}, x)
    assert spec["value_range"] == [0.0, 16.0]

    def epochs(ds, n=2):
        return [np.concatenate([b[0].numpy() for b in ds]) for _ in range(n)]

    one, two = epochs(data.make_dataset(x, y, batch_size=16, augment=spec, seed=3))
    assert np.abs(one - two).max() > 1.0, "a new draw every epoch"
    assert np.abs(one - x).max() > 1.0
    assert one.min() >= 0.0 and one.max() <= 16.0 + 1e-4
    again, _ = epochs(data.make_dataset(x, y, batch_size=16, augment=spec, seed=3))
    np.testing.assert_allclose(again, one, atol=1e-5)  # seeded
    v1, v2 = epochs(data.make_dataset(x, y, batch_size=16))  # val/test: no augmentation
    np.testing.assert_array_equal(v1, x)
    np.testing.assert_array_equal(v2, x)
    assert data.augment_spec({}, x) is None and data.augmenter(None, seed=0) is None
    draws = data.augment_draws(x[:4], spec, draws=3, seed=0)
    assert draws.shape == (4, 4, 8, 8, 1)
    np.testing.assert_array_equal(draws[0], x[:4])


def test_augmentation_uses_the_keras_layers_named_in_the_issue():
    spec = {"settings": {"rotation_range": 36, "width_shift_range": 0.1, "shear_range": 45,
                         "zoom_range": 0.2, "vertical_flip": True, "brightness_range": [0.8, 1.2],
                         "contrast": 0.3, "erasing": 0.25}, "value_range": [0.0, 255.0]}
    layers = {type(la).__name__: la for la in data.augmenter(spec, seed=0).layers}
    assert list(layers) == ["RandomRotation", "RandomTranslation", "RandomShear", "RandomZoom",
                            "RandomFlip", "RandomBrightness", "RandomContrast", "RandomErasing"]
    assert layers["RandomRotation"].factor == pytest.approx((-0.1, 0.1))  # 36 of 360 degrees
    assert layers["RandomShear"].x_factor == pytest.approx((-1.0, 1.0))  # tan(45 degrees)
    assert layers["RandomFlip"].mode == "vertical"


def test_augment_parameter_is_checked():
    from kernelib import params

    p = params.validate_stage("preprocess", {"augment": {"horizontal_flip": True}})
    assert p.augment.horizontal_flip
    with pytest.raises(ConfigError, match="augment.rotation_degrees: unknown key"):
        params.validate_stage("preprocess", {"augment": {"rotation_degrees": 10}})
    with pytest.raises(ConfigError, match="brightness_range must be"):
        params.validate_stage("preprocess", {"augment": {"brightness_range": [1.2, 1.4]}})


# ---------------------------------------------------------------------------- bad input


def _png(path: Path, value: int = 0, size: int = 8) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), value, "uint8"), "L").save(path)


def _classes(root: Path, counts: dict[str, int]) -> Path:
    for name, n in counts.items():
        for i in range(n):
            _png(root / name / f"{i}.png", 10 * i)
    return root


def _bad_folder(case: str, tmp: Path) -> tuple[Path, dict]:
    root = tmp / "images"
    extra: dict = {}
    if case == "missing":
        pass
    elif case == "empty":
        root.mkdir()
    elif case == "one class":
        _classes(root, {"cat": 5})
    elif case == "tiny class":
        _classes(root, {"cat": 5, "dog": 2})
    elif case in ("not an image", "corrupt"):
        _classes(root, {"cat": 4, "dog": 4})
        if case == "not an image":
            (root / "dog" / "notes.txt").write_text("hello")
        else:
            (root / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    elif case == "split classes differ":
        _classes(root / "train", {"cat": 4, "dog": 4})
        _classes(root / "test", {"cat": 4, "bird": 4})
    elif case == "class_names mismatch":
        _classes(root, {"cat": 4, "dog": 4})
        extra = {"class_names": ["cat", "wolf"]}
    elif case == "test without train":
        _classes(root / "test", {"cat": 4, "dog": 4})
    return root, extra


@pytest.mark.parametrize("case, match", [
    ("missing", "does not exist"),
    ("empty", "is empty: expected one sub-folder of images per class"),
    ("one class", "has one class"),
    ("tiny class", "class 'dog' has 2 training image.*at least 3"),
    ("not an image", r"1 file\(s\) are not readable images.*dog/notes.txt.*skip_unreadable"),
    ("corrupt", r"not readable images.*cat/broken.png"),
    ("split classes differ", r"'test/' has class folders \['bird', 'cat'\], 'train/' has"),
    ("class_names mismatch", r"class_names \['cat', 'wolf'\] do not match"),
    ("test without train", "no 'train/'"),
])
def test_bad_folders_are_refused(tmp_path, case, match):
    root, extra = _bad_folder(case, tmp_path)
    spec = {"kind": "folder", "path": str(root), "image_size": [8, 8], **extra}
    with pytest.raises(DataError, match=match) as err:
        data.dataset_info(params.dataset_spec(spec))
    assert str(root) in str(err.value)


def test_skip_unreadable_records_what_was_skipped(tmp_path):
    root, _ = _bad_folder("corrupt", tmp_path)
    ds = _load({"kind": "folder", "path": str(root), "image_size": [8, 8],
                            "skip_unreadable": True})
    assert len(ds.y) == 8 and data.data_card(ds)["source"]["skipped"] == ["cat/broken.png"]


def _npz(tmp: Path, **arrays):
    np.savez(tmp / "d.npz", **arrays)
    return params.dataset_spec({"kind": "arrays", "path": str(tmp / "d.npz")})


X = np.zeros((12, 4, 4), "float32")
Y = np.arange(12) % 3


@pytest.mark.parametrize("arrays, match", [
    ({"x": X}, r"needs arrays 'x' and 'y'; it has no \['y'\]"),
    ({"x": X, "y": Y[:5]}, "'x' has 12 rows but 'y' has shape"),
    ({"x": X, "y": Y + 0.5}, "labels must be integers 0..K-1"),
    ({"x": X, "y": Y - 1}, "labels must be integers 0..K-1"),
    ({"x": X, "y": Y, "class_names": np.array(["a", "b"])}, r"K = 2 classes"),
    ({"x": np.where(np.arange(16).reshape(4, 4) == 3, np.nan, X), "y": Y},
     "NaN or infinite pixels .first in row 0"),
    ({"x": X, "y": Y, "x_test": X}, "has 'x_test' without 'y_test'"),
    ({"x": np.array(["a"] * 12), "y": Y}, "must be numeric images"),
])
def test_bad_arrays_are_refused(tmp_path, arrays, match):
    with pytest.raises(DataError, match=match):
        data.dataset_info(_npz(tmp_path, **arrays))


def test_missing_array_file_and_bad_specs(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        data.dataset_info(params.dataset_spec({"kind": "arrays",
                                               "path": str(tmp_path / "none.npz")}))
    with pytest.raises(DataError, match=r"validated first: load_dataset\(params.dataset_spec"):
        data.load_dataset({"kind": "arrays", "path": "x.npz"})  # data does not import params
    with pytest.raises(ConfigError, match="load.dataset"):
        params.dataset_spec({"kind": "folder", "path": "x"})  # no image_size
    with pytest.raises(ConfigError, match="unknown key"):
        params.dataset_spec({"kind": "arrays", "path": "x", "image_size": [8, 8]})


def test_bad_data_stops_the_run_before_any_stage(tmp_path):
    root, _ = _bad_folder("tiny class", tmp_path)
    config = smoke_config({"kind": "folder", "path": "images", "image_size": [8, 8]}, tmp_path)
    proc = kernelib_cli("run", str(config), "--runs-dir", str(tmp_path / "runs"),
                        "--reports-dir", str(tmp_path / "reports"), cwd=tmp_path)
    assert proc.returncode != 0 and "class 'dog' has 2 training image" in proc.stderr
    assert str(root) in proc.stderr
    assert not (tmp_path / "runs").exists(), "nothing half-written"


def test_concat_and_distill_train_on_augmented_batches(tiny_members, splits):
    from kernelib import merge

    spec = data.augment_spec({"width_shift_range": 0.2}, splits.x_train)
    for strategy, opts in (("concat", {"epochs": 1}), ("distill", {"epochs": 1,
                                                                   "student": "mlp"})):
        model = merge.merge(tiny_members, strategy, train=splits.train, val=splits.val, seed=0,
                            augment=spec, **opts)
        assert not [la for la in model._flatten_layers() if "Random" in type(la).__name__]


def test_a_folder_with_train_val_and_test_is_used_as_given(tmp_path):
    for part, n in (("train", 5), ("val", 3), ("test", 4)):
        _classes(tmp_path / "images" / part, {"cat": n, "dog": n})
    ds = _load({"kind": "folder", "path": str(tmp_path / "images"),
                            "image_size": [8, 8], "color_mode": "grayscale"})
    s = data.split(ds, val_fraction=0.2, test_fraction=0.2, seed=0)
    assert s.origin == dict.fromkeys(data.PARTS, "given")
    for part, n in (("train", 5), ("val", 3), ("test", 4)):
        paths = getattr(s, f"x_{part}").paths
        assert len(paths) == 2 * n and all(f"/images/{part}/" in p for p in paths)
    np.testing.assert_array_equal(s.y_val, [0, 0, 0, 1, 1, 1])


def test_the_load_cache_key_follows_the_dataset_files(tmp_path):
    from conftest import ROOT
    from kernelib import params, steps

    _classes(tmp_path / "images", {"cat": 3, "dog": 3})
    config = params.validate_config({"load": {"dataset": {
        "kind": "folder", "path": str(tmp_path / "images"), "image_size": [8, 8]}}})

    def key() -> str:
        return steps.plan_keys(config, tmp_path / "run", nb_dir=ROOT / "notebooks")["load"]

    first = key()
    assert key() == first
    _png(tmp_path / "images" / "cat" / "0.png", 200, size=9)  # the same name, other pixels
    assert key() != first


def test_strategies_fitted_on_a_folder_equal_those_fitted_on_its_decoded_arrays(tiny_members,
                                                                               small_folder):
    from kernelib import inference, merge

    ds = _load({"kind": "folder", "path": str(small_folder), "image_size": [8, 8],
                            "color_mode": "grayscale"})
    s = data.split(ds, val_fraction=0.2, test_fraction=0.2, seed=0)
    x_val, x_test = s.x_val.subset(np.arange(200)), s.x_test.subset(np.arange(100))
    y_val = s.y_val[:200]
    strategies = ["weighted", "select", "stacking"]
    opts = {"select": {"size": 5}, "stacking": {"passthrough": True, "folds": 3}}
    got, want = ({n: inference.predict_proba(m, x_test) for n, m in merge.merge_many(
        tiny_members, strategies, val=(xv, y_val), seed=0, options=opts).items()}
        for xv in (x_val, np.asarray(x_val)))
    for name in strategies:
        np.testing.assert_allclose(got[name], want[name], atol=1e-6, err_msg=name)
    oof = merge.out_of_fold(tiny_members, strategies, val=(x_val, y_val), seed=0, options=opts,
                            folds=3)
    ref = merge.out_of_fold(tiny_members, strategies, val=(np.asarray(x_val), y_val), seed=0,
                            options=opts, folds=3)
    for name in strategies:
        np.testing.assert_allclose(oof[name], ref[name], atol=1e-6, err_msg=name)
