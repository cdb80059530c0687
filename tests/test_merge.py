"""Merging: each strategy checked against an independent NumPy computation; one-file round trip."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from conftest import predict_in_fresh_process
from kernelib import merge
from kernelib.errors import MergeError


def _probs(models, x):
    return [np.asarray(m.model.predict(x, verbose=0), dtype="float64") for m in models]


def test_average_equals_numpy_mean(tiny_members, splits):
    model = merge.merge(tiny_members, "average")
    expected = np.mean(_probs(tiny_members, splits.x_val), axis=0)
    np.testing.assert_allclose(model.predict(splits.x_val, verbose=0), expected, atol=1e-6)


def test_weighted_average_normalises_weights(tiny_members, splits):
    model = merge.merge(tiny_members, "average", weights=[3.0, 1.0])
    p = _probs(tiny_members, splits.x_val)
    np.testing.assert_allclose(model.predict(splits.x_val, verbose=0), 0.75 * p[0] + 0.25 * p[1],
                               atol=1e-6)


def test_concat_trains_only_the_head(tiny_members, splits):
    before = [[w.copy() for w in m.model.get_weights()] for m in tiny_members]
    model = merge.merge(tiny_members, "concat", train=splits.train, val=splits.val, seed=0,
                        epochs=3)
    for m, ws in zip(tiny_members, before, strict=True):
        for a, b in zip(m.model.get_weights(), ws, strict=True):
            np.testing.assert_array_equal(a, b)
    head = model.get_layer("head")
    feature_width = sum(m.model.layers[-1].input.shape[-1] for m in tiny_members)
    assert head.kernel.shape == (feature_width, 10)
    assert [w.name for w in model.trainable_weights] == ["kernel", "bias"]
    # the head's output is softmax(features @ W + b), computed here with NumPy
    feats = np.concatenate([
        keras.Model(m.model.inputs, m.model.layers[-1].input).predict(splits.x_val, verbose=0)
        for m in tiny_members], axis=1)
    logits = feats @ np.asarray(head.kernel) + np.asarray(head.bias)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(model.predict(splits.x_val, verbose=0),
                               e / e.sum(axis=1, keepdims=True), atol=1e-5)


@pytest.mark.parametrize("strategy, kwargs", [("average", {}), ("concat", {"epochs": 1})])
def test_merged_model_is_one_keras_file_and_saved_model(tiny_members, splits, tmp_path, strategy,
                                                         kwargs):
    model = merge.merge(tiny_members, strategy, train=splits.train, val=splits.val, **kwargs)
    path = tmp_path / f"{strategy}.keras"
    assert merge.save(model, path, check_x=splits.x_val) == 0.0
    x = splits.x_test
    expected = model.predict(x, verbose=0)
    got = predict_in_fresh_process(path, x, tmp_path, "keras")
    assert np.max(np.abs(got - expected)) <= 1e-6
    sm = tmp_path / "sm"
    model.export(str(sm), format="tf_saved_model", verbose=False)
    got = predict_in_fresh_process(sm, x, tmp_path, "saved_model")
    assert np.max(np.abs(got - expected)) <= 1e-5


@pytest.mark.parametrize("call, match", [
    (lambda ms: merge.merge(ms, "boosting"), r"unknown merge strategy 'boosting'; valid .*'average'"),
    (lambda ms: merge.merge(ms, "average", temperature=2), r"does not take option\(s\) \['temperature'\]"),
    (lambda ms: merge.merge(ms[:1], "average"), r"at least 2 members; received 1"),
    (lambda ms: merge.merge(ms, "average", weights=[1.0]), r"one value per member \(2\); received 1"),
    (lambda ms: merge.merge(ms, "average", weights=[1.0, -1.0]), r"non-negative"),
    (lambda ms: merge.merge(ms, "concat", val=None, train=None), r"needs 'train=\(x, y\)'"),
])
def test_bad_merge_input(tiny_members, call, match):
    with pytest.raises(MergeError, match=match):
        call(tiny_members)


def test_concat_refuses_labels_out_of_range(tiny_members, splits):
    bad_val = (splits.x_val, splits.y_val + 5)
    with pytest.raises(MergeError, match=r"'val' labels must lie in \[0, 9\]"):
        merge.merge(tiny_members, "concat", train=splits.train, val=bad_val)
