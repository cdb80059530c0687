"""Merging: each strategy checked against an independent NumPy computation; one-file round trip."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from kernelib import merge
from kernelib.errors import IncompatibleMembersError, MergeError


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


# Every strategy with cheap settings; "vote+calibrate" also covers calibrate=True.
ROUND_TRIP = {
    "average": {},
    "vote": {},
    "weighted": {},
    "select": {"size": 5},
    "stacking": {"folds": 2},
    "concat": {"epochs": 1},
    "soup": {"mode": "uniform"},
    "distill": {"teacher": "average", "student": "mlp", "epochs": 1},
    "vote+calibrate": {"calibrate": True},
}
NEEDS_KERNELIB = {"vote", "vote+calibrate"}  # hold kernelib's registered layers


@pytest.fixture(scope="module")
def round_trip(splits, tmp_path_factory):
    """Build, save and export every strategy; load them all in ONE fresh process.

    The fresh process loads the .keras files of the plain strategies and every SavedModel
    with Keras/TensorFlow alone, and only then imports kernelib.merge for the files that hold
    kernelib's layers.
    """
    from conftest import run_python
    from kernelib import data, zoo

    tmp = tmp_path_factory.mktemp("round_trip")
    pre = data.build_preprocessor(splits.x_train)
    members = [zoo.build("mlp", preprocessor=pre, n_classes=10, name=f"m{i}", seed=i)
               for i in range(3)]  # untrained, one architecture (so soup applies too)
    x = splits.x_test[:64].astype("float32")
    np.save(tmp / "x.npy", x)
    out = {}
    for key, kwargs in ROUND_TRIP.items():
        model = merge.merge(members, key.split("+")[0], train=splits.train, val=splits.val,
                            seed=0, **kwargs)
        out[key] = {"expected": model.predict(x, verbose=0),
                    "reload_diff": merge.save(model, tmp / f"{key}.keras", check_x=x)}
        model.export(str(tmp / f"{key}_sm"), format="tf_saved_model", verbose=False)
    code = f"""
import sys, numpy as np
from pathlib import Path
tmp, x = Path(sys.argv[1]), np.load(sys.argv[1] + "/x.npy")
import keras, tensorflow as tf
res = {{}}
for key in {sorted(ROUND_TRIP)!r}:
    f = tf.saved_model.load(str(tmp / f"{{key}}_sm")).signatures["serving_default"]
    res[key + "/saved_model"] = list(f(tf.constant(x)).values())[0].numpy()
for key in {sorted(set(ROUND_TRIP) - NEEDS_KERNELIB)!r}:
    res[key + "/keras"] = keras.saving.load_model(tmp / f"{{key}}.keras").predict(x, verbose=0)
assert "kernelib" not in sys.modules
import kernelib.merge
for key in {sorted(NEEDS_KERNELIB)!r}:
    res[key + "/keras"] = keras.saving.load_model(tmp / f"{{key}}.keras").predict(x, verbose=0)
np.savez(tmp / "fresh.npz", **res)
"""
    proc = run_python(code, str(tmp))
    assert proc.returncode == 0, proc.stderr[-3000:]
    with np.load(tmp / "fresh.npz") as f:
        fresh = dict(f)
    return out, fresh


@pytest.mark.parametrize("key", list(ROUND_TRIP))
def test_merged_model_is_one_keras_file_and_saved_model(round_trip, key):
    out, fresh = round_trip
    expected = out[key]["expected"]
    assert out[key]["reload_diff"] <= 1e-6
    np.testing.assert_allclose(expected.sum(axis=1), 1.0, atol=1e-5)
    assert np.max(np.abs(fresh[f"{key}/keras"] - expected)) <= 1e-6
    assert np.max(np.abs(fresh[f"{key}/saved_model"] - expected)) <= 1e-5


def test_round_trip_covers_every_strategy():
    assert {k.split("+")[0] for k in ROUND_TRIP} == set(merge.STRATEGIES)


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


def _member(name, *, shape=(8, 8, 1), classes=10, activation="softmax", hidden=16):
    inputs = keras.Input(shape, name="image")
    x = keras.layers.Dense(hidden, activation="relu")(keras.layers.Flatten()(inputs))
    return keras.Model(inputs, keras.layers.Dense(classes, activation=activation)(x), name=name)


@pytest.mark.parametrize("others, match", [
    ([_member("rgb", shape=(8, 8, 3))], r"same input shape; member 'rgb' takes \(8, 8, 3\)"),
    ([_member("five", classes=5)], r"same classes; member 'five' predicts 5 classes"),
    ([_member("logits", activation="linear")],
     r"member 'logits' ends in 'linear', while member 'a' outputs probabilities .*softmax"),
])
@pytest.mark.parametrize("strategy", merge.STRATEGIES)
def test_incompatible_members_are_refused_by_every_strategy(strategy, others, match, splits):
    members = [_member("a"), *others]
    with pytest.raises(IncompatibleMembersError, match=match):
        merge.merge(members, strategy, train=splits.train, val=splits.val)


def test_soup_names_the_first_differing_layer(splits):
    members = [_member("a"), _member("b"), _member("wide", hidden=32)]
    with pytest.raises(IncompatibleMembersError,
                       match=r"member 'wide' differs from 'a' first at layer 2: Dense "
                             r"'dense_\d+' \[\(64, 32\), \(32,\)\] vs Dense 'dense_\d+' "
                             r"\[\(64, 16\), \(16,\)\]"):
        merge.merge(members, "soup", val=splits.val)


@pytest.mark.parametrize("strategy", merge.STRATEGIES)
def test_a_single_member_is_refused(strategy, tiny_members, splits):
    with pytest.raises(MergeError, match=rf"strategy '{strategy}' needs at least 2 members; "
                                         r"received 1"):
        merge.merge(tiny_members[:1], strategy, train=splits.train, val=splits.val)


@pytest.mark.parametrize("strategy, options", [
    ("weighted", {}), ("select", {}), ("stacking", {}), ("soup", {"mode": "greedy"}),
    ("distill", {}), ("average", {"calibrate": True}),
])
def test_strategies_fitted_on_val_need_val(strategy, options, tiny_members, splits):
    with pytest.raises(MergeError, match=r"needs 'val=\(x, y\)'; received None|calibrate=True "
                                         r"fits a temperature on 'val'"):
        merge.merge(_members_for(strategy, tiny_members), strategy, train=splits.train,
                    val=None, **options)


def _members_for(strategy, tiny_members):
    """The trained members, or, for soup, two members of one architecture."""
    return [_member("a"), _member("b")] if strategy == "soup" else tiny_members


@pytest.mark.parametrize("strategy, options", [
    ("weighted", {}), ("select", {}), ("stacking", {}), ("soup", {}), ("concat", {}),
    ("distill", {}), ("vote", {"calibrate": True}),
])
def test_val_labels_out_of_range(strategy, options, tiny_members, splits):
    bad = (splits.x_val, np.where(splits.y_val == 3, 10, splits.y_val))
    with pytest.raises(MergeError, match=r"'val' labels must lie in \[0, 9\]; received values "
                                         r"from 0 to 10"):
        merge.merge(_members_for(strategy, tiny_members), strategy, train=splits.train,
                    val=bad, **options)


@pytest.mark.parametrize("strategy, options, match", [
    ("select", {"metric": "auc"}, r"'metric' must be one of \['nll', 'accuracy'\]; received 'auc'"),
    ("select", {"size": 0}, r"'size' must be an integer >= 1; received size=0"),
    ("stacking", {"folds": 1}, r"'folds' must be an integer >= 2"),
    ("soup", {"mode": "mean"}, r"'mode' must be one of \['uniform', 'greedy'\]"),
    ("soup", {"metric": "f1"}, r"'metric' must be one of \['accuracy', 'nll'\]"),
    ("soup", {"ingredients": ["mlp_0", "ghost"]}, r"names \['ghost'\], which are not members"),
    ("distill", {"teacher": "distill"}, r"'teacher' must be one of \['average', .*\]"),
    ("distill", {"alpha": 2.0}, r"'alpha' .* must lie in \[0, 1\]"),
    ("concat", {"fine_tune_layers": -1}, r"'fine_tune_layers' must be an integer >= 0"),
    ("weighted", {"val_probs": np.zeros((2, 3, 10))}, r"'val_probs' must hold .* \(2, 270, 10\)"),
])
def test_bad_options_are_refused(strategy, options, match, tiny_members, splits):
    with pytest.raises(MergeError, match=match):
        merge.merge(tiny_members, strategy, train=splits.train, val=splits.val, **options)


def test_merge_many_refuses_unknown_names_before_fitting(tiny_members, splits):
    with pytest.raises(MergeError, match=r"unknown merge strategy 'boost'"):
        merge.merge_many(tiny_members, ["concat", "boost"], train=splits.train, val=splits.val)


def test_merge_many_reuses_the_built_teacher(tiny_members, splits):
    out = merge.merge_many(tiny_members, ["distill", "average"], train=splits.train,
                           val=splits.val, options={"distill": {"teacher": "average",
                                                                "student": "mlp", "epochs": 1}},
                           calibrate=["average"])
    assert list(out) == ["distill", "average"]
    assert out["average"].get_layer("temperature") is not None
    assert out["distill"].name == "distill"



def test_concat_head_trains_on_the_members_inference_features(tiny_members, splits):
    """The head is fitted on the frozen members' features in inference mode (dropout off):
    the same head trained here on features from `Model.predict` of each member's penultimate
    layer, from the same initial weights and batches, ends with the same weights."""
    from kernelib.data import make_dataset
    from kernelib.train import compile_model

    init = merge.merge(tiny_members, "concat", train=splits.train, val=splits.val, seed=3,
                       epochs=1, learning_rate=0.0).get_layer("head").get_weights()
    model = merge.merge(tiny_members, "concat", train=splits.train, val=splits.val, seed=3,
                        epochs=2, patience=5)

    def feats(x):
        return np.concatenate([
            keras.Model(m.model.inputs, m.model.layers[-1].input).predict(x, verbose=0)
            for m in tiny_members], axis=1)

    f_in = keras.Input(shape=(init[0].shape[0],))
    ref = keras.Model(f_in, keras.layers.Dense(10, activation="softmax")(f_in))
    ref.set_weights(init)
    compile_model(ref, learning_rate=1e-3)
    ref.fit(make_dataset(feats(splits.x_train), splits.y_train, batch_size=64, shuffle=True,
                         seed=3), epochs=2, verbose=0, shuffle=False)
    for a, b in zip(model.get_layer("head").get_weights(), ref.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)
    assert not np.allclose(init[0], ref.get_weights()[0])


def test_the_prediction_cache_runs_the_layers_after_the_members_on_their_probabilities(
        tiny_members, splits, tmp_path):
    """The cache's shortcut: a merged file that is the members followed by layers has those
    layers run on the members' probabilities; every cached row equals Keras' `predict` of
    the whole in-memory model, also when the file on disk is stale."""
    from kernelib.inference import read_predictions
    from kernelib.members import load_keras
    from kernelib.merge.cache import after_members, cache_predictions
    from kernelib.rundir import RunDir

    run = RunDir(tmp_path / "run")
    merged = merge.merge_many(tiny_members, ["average", "vote", "weighted", "select", "stacking",
                                             "concat"], train=splits.train, val=splits.val,
                              options={"concat": {"epochs": 1}}, calibrate=["vote"])
    merged["raw_stack"] = merge.merge(tiny_members, "stacking", val=splits.val,
                                      passthrough=True, name="raw_stack")
    merge.save_all(merged, run, check_x=splits.x_val)
    x = splits.x_test
    probs = {m.name: m.model.predict(x, verbose=0) for m in tiny_members}
    shaped = {s: after_members(load_keras(run.merged_model(s)), probs)[0] is not None
              for s in merged}
    assert shaped == {"average": True, "vote": True, "weighted": True, "select": True,
                      "stacking": True, "concat": False, "raw_stack": False}

    stale = merge.merge(tiny_members, "average", weights=[0.9, 0.1])
    merge.save(stale, run.merged_model("average"), check_x=x)
    assert np.max(np.abs(stale.predict(x, verbose=0) - merged["average"].predict(x, verbose=0))) > 1e-3
    cache_predictions(run, tiny_members, merged, splits)
    preds, _ = read_predictions(run.predictions)
    for s, model in merged.items():
        np.testing.assert_allclose(preds["test"][s], model.predict(x, verbose=0), atol=1e-6,
                                   err_msg=s)
    np.testing.assert_allclose(preds["test"]["average"], np.mean(list(probs.values()), axis=0),
                               atol=1e-6)
