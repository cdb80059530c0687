"""Data: the split is seeded and stratified; preprocessing is fitted on train only."""

from __future__ import annotations

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
    with pytest.raises(DataError, match="built-in datasets: \\['digits'\\]"):
        data.load_dataset(name)


def test_split_refuses_tiny_classes():
    ds = data.Dataset("t", np.zeros((12, 2, 2, 1), "float32"),
                      np.array([0] * 10 + [1] * 2), ["a", "b"])
    with pytest.raises(DataError, match="class 'b' has 2"):
        data.split(ds, val_fraction=0.2, test_fraction=0.2, seed=0)
