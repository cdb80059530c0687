"""Data: the split is seeded and stratified; preprocessing is fitted on train only."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import numpy as np
import pytest

from kernelib import data
from kernelib.errors import DataError


def test_digits_matches_scikit_learn():
    from sklearn.datasets import load_digits

    ds = data.load_dataset("digits")
    ref = load_digits()
    assert ds.x.shape == (1797, 8, 8, 1) and ds.x.dtype == np.float32
    np.testing.assert_array_equal(ds.x[..., 0], ref.images)
    np.testing.assert_array_equal(ds.y, ref.target)


def test_split_sizes_stratification_and_seed(splits):
    n = 1797
    assert len(splits.y_test) == int(np.ceil(0.2 * n))
    assert len(splits.y_train) + len(splits.y_val) + len(splits.y_test) == n
    full = np.bincount(data.load_dataset("digits").y) / n
    for y in (splits.y_train, splits.y_val, splits.y_test):
        assert np.abs(np.bincount(y, minlength=10) / len(y) - full).max() < 0.02
    again = data.split(data.load_dataset("digits"), val_fraction=0.15, test_fraction=0.2, seed=0)
    np.testing.assert_array_equal(again.x_test, splits.x_test)
    other = data.split(data.load_dataset("digits"), val_fraction=0.15, test_fraction=0.2, seed=1)
    assert not np.array_equal(other.y_test, splits.y_test)


def test_splits_do_not_overlap(splits):
    def rows(x):
        return {r.tobytes() for r in x.reshape(len(x), -1)}

    # digits has a few duplicate images; overlap must not exceed the duplicates present
    tr, va, te = rows(splits.x_train), rows(splits.x_val), rows(splits.x_test)
    assert len(tr & te) + len(va & te) <= 5


def test_preprocessor_uses_train_statistics_only(splits):
    pre = data.build_preprocessor(splits.x_train)
    z = np.asarray(pre(splits.x_val))
    mean, std = splits.x_train.mean(), splits.x_train.std()
    np.testing.assert_allclose(z, (splits.x_val - mean) / std, rtol=1e-4, atol=1e-4)


def test_make_dataset_batches_and_keeps_rows(splits):
    ds = data.make_dataset(splits.x_val, splits.y_val, batch_size=32, shuffle=True, seed=3)
    ys = np.concatenate([y.numpy() for _, y in ds])
    assert sorted(ys.tolist()) == sorted(splits.y_val.tolist())
    first = next(iter(ds))[0]
    assert first.shape == (32, 8, 8, 1)


def test_save_and_read_splits_round_trip(splits, tmp_path):
    data.save_splits(splits, tmp_path / "s.npz")
    back = data.read_splits(tmp_path / "s.npz")
    np.testing.assert_array_equal(back.x_train, splits.x_train)
    assert back.class_names == splits.class_names
    assert not list(tmp_path.glob(".*")), "no temporary files left behind"


@pytest.mark.parametrize("name", ["mnist", ""])
def test_unknown_dataset(name):
    with pytest.raises(DataError, match="built-in datasets: \\['digits', 'fashion_mnist'\\]"):
        data.load_dataset(name)


def test_split_refuses_tiny_classes():
    ds = data.Dataset("t", np.zeros((12, 2, 2, 1), "float32"),
                      np.array([0] * 10 + [1] * 2), ["a", "b"])
    with pytest.raises(DataError, match="class 'b' has 2"):
        data.split(ds, val_fraction=0.2, test_fraction=0.2, seed=0)


# ------------------------------------------------------------------ Fashion-MNIST (Debian)

FASHION = data.FASHION_MNIST_DIR
needs_fashion = pytest.mark.skipif(not (FASHION / "t10k-labels-idx1-ubyte.gz").is_file(),
                                   reason="Debian package dataset-fashion-mnist (make datasets)")


def _idx(name: str, offset: int) -> np.ndarray:
    """The reference reader: gunzip, skip the header, bytes as they are."""
    import gzip

    return np.frombuffer(gzip.open(FASHION / name).read(), np.uint8, offset=offset)


@pytest.fixture(scope="module")
def fashion():
    return data.load_dataset("fashion_mnist")


@needs_fashion
def test_fashion_mnist_matches_the_idx_files(fashion):
    x_tr = _idx("train-images-idx3-ubyte.gz", 16).reshape(60000, 28, 28)
    x_te = _idx("t10k-images-idx3-ubyte.gz", 16).reshape(10000, 28, 28)
    y_tr, y_te = _idx("train-labels-idx1-ubyte.gz", 8), _idx("t10k-labels-idx1-ubyte.gz", 8)
    assert fashion.x.shape == (70000, 28, 28, 1) and fashion.x.dtype == np.float32
    train, test = fashion.part == "train", fashion.part == "test"
    np.testing.assert_array_equal(fashion.x[train, ..., 0], x_tr)
    np.testing.assert_array_equal(fashion.x[test, ..., 0], x_te)
    np.testing.assert_array_equal(fashion.y[train], y_tr)
    np.testing.assert_array_equal(fashion.y[test], y_te)
    assert np.bincount(fashion.y[train]).tolist() == [6000] * 10
    assert np.bincount(fashion.y[test]).tolist() == [1000] * 10
    assert fashion.class_names[0] == "T-shirt/top" and fashion.class_names[9] == "Ankle boot"
    assert fashion.given == ["train", "test"]


@needs_fashion
def test_fashion_split_keeps_the_official_test_set(fashion):
    s = data.split(fashion, val_fraction=0.1, test_fraction=0.2, seed=0)
    y_te = _idx("t10k-labels-idx1-ubyte.gz", 8)
    np.testing.assert_array_equal(s.y_test, y_te)  # whole, in its own order
    np.testing.assert_array_equal(s.x_test[..., 0],
                                  _idx("t10k-images-idx3-ubyte.gz", 16).reshape(10000, 28, 28))
    assert len(s.y_val) == 6000 and len(s.y_train) == 54000  # val: 10% of the 60,000
    assert np.bincount(s.y_val).tolist() == [600] * 10
    assert s.origin == {"train": "given", "val": "carved", "test": "given"}
    card = data.data_card(fashion)
    assert card["splits"] == s.origin and card["given_rows"] == {"train": 60000, "test": 10000}


@needs_fashion
def test_fashion_train_rows_is_a_seeded_stratified_subset(fashion):
    sub = data.subset_train(fashion, 2000, seed=0)
    assert (sub.part == "train").sum() == 2000 and (sub.part == "test").sum() == 10000
    assert np.bincount(sub.y[sub.part == "train"]).tolist() == [200] * 10
    # every kept training image is one of the official training images, none a test image
    train_rows = {r.tobytes() for r in fashion.x[fashion.part == "train"]}
    assert all(r.tobytes() in train_rows for r in sub.x[sub.part == "train"][:200])
    again, other = data.subset_train(fashion, 2000, seed=0), data.subset_train(fashion, 2000, seed=1)
    np.testing.assert_array_equal(again.x, sub.x)
    assert not np.array_equal(other.x[other.part == "train"], sub.x[sub.part == "train"])
    with pytest.raises(DataError, match="train_rows must lie between .* 60000 training rows"):
        data.subset_train(fashion, 60001, seed=0)


def test_fashion_missing_everywhere_names_both_tries(tmp_path, monkeypatch):
    # no package under this folder; and the download cannot connect (a dead local proxy)
    keras_cache = Path.home() / ".keras" / "datasets" / "fashion-mnist"
    if (keras_cache / "t10k-labels-idx1-ubyte.gz").is_file():
        pytest.skip(f"keras.datasets has a download cached in {keras_cache}: the fallback works")
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    # urlopen builds its global opener (with the proxies of that moment) on first use and keeps
    # it: without this, every later urlopen in the session goes through the dead proxy
    monkeypatch.setattr(urllib.request, "_opener", None)
    with pytest.raises(DataError, match="(?s)dataset-fashion-mnist under .*missing.*"
                                        "keras.datasets.fashion_mnist.*apt-get install"):
        data.load_fashion_mnist(tmp_path / "none")


@pytest.mark.parametrize("raw, match", [
    (b"", "not an IDX file"),
    (b"\x00\x00\x0d\x01\x00\x00\x00\x02ab", "not an IDX file"),  # float, not uint8
    (b"\x00\x00\x08\x01\x00\x00\x00\x05abc", "declares shape \\(5,\\)"),
])
def test_read_idx_refuses_bad_files(tmp_path, raw, match):
    (tmp_path / "f.idx").write_bytes(raw)
    with pytest.raises(DataError, match=match):
        data.read_idx(tmp_path / "f.idx")


def test_given_splits_are_kept_and_only_missing_ones_carved():
    rng = np.random.default_rng(0)
    y = np.tile(np.arange(3), 40)
    x = rng.normal(size=(120, 2, 2, 1)).astype("float32")
    part = np.array(["train"] * 90 + ["val"] * 15 + ["test"] * 15)
    s = data.split(data.Dataset("t", x, y, ["a", "b", "c"], part=part),
                   val_fraction=0.2, test_fraction=0.2, seed=0)
    np.testing.assert_array_equal(s.x_val, x[90:105])
    np.testing.assert_array_equal(s.x_test, x[105:])
    np.testing.assert_array_equal(np.sort(s.x_train.ravel()), np.sort(x[:90].ravel()))
    assert s.origin == dict.fromkeys(data.PARTS, "given")
    only_test = np.where(part == "val", "train", part)
    s = data.split(data.Dataset("t", x, y, ["a", "b", "c"], part=only_test),
                   val_fraction=0.2, test_fraction=0.2, seed=0)
    np.testing.assert_array_equal(s.x_test, x[105:])
    assert len(s.y_val) == 21 and len(s.y_train) == 84  # 20% of the 105 training rows
    train_rows = {r.tobytes() for r in x[:105]}
    assert all(r.tobytes() in train_rows for r in s.x_val)
    assert s.origin == {"train": "given", "val": "carved", "test": "given"}


def test_bag_rows_is_a_seeded_subset_without_replacement():
    a, b = data.bag_rows(1000, 0.3, seed=1), data.bag_rows(1000, 0.3, seed=2)
    assert len(a) == 300 and len(np.unique(a)) == 300 and np.all(np.diff(a) > 0)
    assert a.min() >= 0 and a.max() < 1000
    np.testing.assert_array_equal(a, data.bag_rows(1000, 0.3, seed=1))
    assert len(np.intersect1d(a, b)) < 150  # two seeds: two different bags (~90 shared)
    np.testing.assert_array_equal(data.bag_rows(7, None, seed=0), np.arange(7))


@pytest.mark.parametrize("x, stored", [
    (np.arange(24, dtype="float32").reshape(6, 2, 2, 1) * 10, "x_uint8"),  # whole 0..255
    (np.arange(24, dtype="float32").reshape(6, 2, 2, 1) / 7, "x"),  # fractions stay float32
    (np.arange(24, dtype="float32").reshape(6, 2, 2, 1) * 20, "x"),  # above 255
])
def test_raw_pixels_are_stored_losslessly(tmp_path, x, stored):
    ds = data.Dataset("t", x, np.arange(6) % 2, ["a", "b"])
    data.save_dataset(ds, tmp_path / "raw.npz")
    with np.load(tmp_path / "raw.npz") as f:
        assert stored in f.files
    back = data.read_dataset(tmp_path / "raw.npz")
    assert back.x.dtype == np.float32
    np.testing.assert_array_equal(back.x, x)
    np.testing.assert_array_equal(back.part, ["train"] * 6)
