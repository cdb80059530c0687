"""The zoo: keras.applications backbones behind a resizing front, and soup ingredients
(fine-tunes of one trained member) through the run folder."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from kernelib import data, io, members, merge, params, zoo
from kernelib.errors import ConfigError
from kernelib.merge.base import leaf_layers
from kernelib.merge.concat import unfreeze_last
from kernelib.rundir import RunDir


@pytest.fixture(scope="module")
def pre(splits):
    from kernelib import train

    train.setup(seed=0)  # as every stage notebook does (op determinism: no XLA on CPU)
    return data.build_preprocessor(splits.x_train)


@pytest.fixture(scope="module")
def backbones(pre):
    return [zoo.build(r, preprocessor=pre, n_classes=10, name=r, seed=i)
            for i, r in enumerate(["mobilenet_v3_small", "efficientnet_b0"])]


def test_backbones_take_digits_through_a_resizing_front(backbones, splits):
    for model in backbones:
        assert model.input_shape == (None, 8, 8, 1) and model.output_shape == (None, 10)
        assert model.get_layer("resize").output.shape[1:] == (32, 32, 1)
        assert model.get_layer("to_rgb").output.shape[1:] == (32, 32, 3)
        assert model.get_layer("features").output.shape[-1] == 64
        p = model.predict(splits.x_val[:16], verbose=0)
        np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)
        norms = [la for la in leaf_layers(model)
                 if isinstance(la, keras.layers.BatchNormalization)]
        assert norms and all(la.momentum == zoo.BN_MOMENTUM for la in norms)


def test_backbone_member_exports_to_a_saved_model_with_parity(backbones, splits, tmp_path):
    import tensorflow as tf

    model = keras.models.clone_model(backbones[0])
    rng = np.random.default_rng(0)
    for la in leaf_layers(model):  # moving statistics unlike any batch's: catches training mode
        if isinstance(la, keras.layers.BatchNormalization):
            la.moving_mean.assign(rng.normal(0, 0.5, la.moving_mean.shape))
            la.moving_variance.assign(rng.uniform(0.5, 2.0, la.moving_variance.shape))
    model.export(str(tmp_path / "sm"), format="tf_saved_model", verbose=False)
    serve = tf.saved_model.load(str(tmp_path / "sm")).signatures["serving_default"]
    x = splits.x_test[:32].astype("float32")
    got = list(serve(tf.constant(x)).values())[0].numpy()
    assert np.max(np.abs(got - np.asarray(model(x, training=False)))) <= 1e-5


def test_concat_across_two_backbone_families(backbones, splits):
    # saving and reloading concat models is covered in test_merge; tracing these two graphs
    # is what costs time here, so the rows are few
    head = (splits.x_train[:64], splits.y_train[:64])
    model = merge.merge(backbones, "concat", train=head, val=(splits.x_val[:64],
                                                             splits.y_val[:64]), epochs=1)
    assert model.get_layer("head").kernel.shape == (128, 10)
    p = model.predict(splits.x_val[:16], verbose=0)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)


def test_fine_tune_layers_reach_into_a_nested_backbone(backbones):
    copy = keras.models.clone_model(backbones[0])
    names = unfreeze_last(copy, 3)
    weighted = [la for la in leaf_layers(copy)
                if la.weights and not isinstance(la, keras.layers.BatchNormalization)]
    assert names == [la.name for la in weighted[-3:]] and names[-1] == "probs"
    assert names[0].startswith("conv") or "Conv" in type(weighted[-3]).__name__
    trainable = {id(v) for v in copy.trainable_weights}
    assert trainable == {id(v) for la in weighted[-3:] for v in la.weights}


def test_backbone_from_a_local_weights_file(pre, tmp_path):
    source = keras.applications.MobileNetV3Small(input_shape=(32, 32, 3), include_top=False,
                                                 weights=None, pooling="avg",
                                                 include_preprocessing=False)
    path = tmp_path / "mobilenet.weights.h5"
    source.save_weights(path)
    model = zoo.build("mobilenet_v3_small", preprocessor=pre, n_classes=10, name="m",
                      weights=str(path))
    inner = next(la for la in model.layers if isinstance(la, keras.Model)
                 and la.name.lower().startswith("mobilenet"))
    for a, b in zip(inner.get_weights(), source.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("call, match", [
    (lambda pre: zoo.build("vgg19", preprocessor=pre, n_classes=10, name="x"),
     r"unknown recipe 'vgg19'; valid recipes: .*'efficientnet_b0'"),
    (lambda pre: zoo.build("cnn", preprocessor=pre, n_classes=10, name="x", image_size=64),
     r"apply to backbone recipes .* only; received recipe 'cnn'"),
    (lambda pre: zoo.build("vgg16", preprocessor=pre, n_classes=10, name="x", image_size=36),
     r"resizes square images by a whole factor; received 8x8 images and image_size=36"),
    (lambda pre: zoo.build("vgg16", preprocessor=pre, n_classes=10, name="x",
                           weights="/nowhere/vgg.weights.h5"),
     r"backbone weights file not found.*/nowhere/vgg.weights.h5"),
])
def test_bad_zoo_calls(call, match, pre):
    with pytest.raises(ConfigError, match=match):
        call(pre)


@pytest.mark.parametrize("members_, match", [
    ([{"name": "a", "recipe": "cnn"}, {"name": "b", "recipe": "cnn", "finetune_from": "c"}],
     r"'finetune_from' must name a recipe member listed before it .* Valid: \['a'\]"),
    ([{"name": "b", "recipe": "cnn", "finetune_from": "a"}, {"name": "a", "recipe": "cnn"}],
     r"member 'b': 'finetune_from' must name a recipe member listed before it"),
    ([{"name": "a", "recipe": "mlp"}, {"name": "b", "recipe": "cnn", "finetune_from": "a"}],
     r"with the same recipe \('cnn'\)"),
    ([{"name": "a", "recipe": "mlp", "image_size": 64}], r"apply to backbone recipes"),
    ([{"name": "a", "recipe": "mobilenet_v3_small", "image_size": 32},
      {"name": "b", "recipe": "mobilenet_v3_small", "image_size": 64, "finetune_from": "a"}],
     r"member 'b' starts from 'a's trained weights, so it takes its image_size \(32\)"),
    ([{"name": "a", "recipe": "vgg16"},
      {"name": "b", "recipe": "vgg16", "finetune_from": "a", "weights": "/w/vgg.weights.h5"}],
     r"no 'weights' file of its own; received image_size=None, weights='/w/vgg.weights.h5'"),
    ([{"name": "a", "recipe": "vgg16", "weights": "vgg.weights.h5"}],
     r"'weights' must be an absolute path to a \.weights\.h5 file"),
])
def test_member_spec_rules(members_, match):
    cfg = {"load": {"members": members_}}
    with pytest.raises(ConfigError, match=match):
        params.validate_config(cfg)


def test_finetune_member_starts_from_the_trained_base(tiny_members, splits, pre, tmp_path):
    run = RunDir(tmp_path / "run")
    members.save_model(pre, run.preprocessor)
    specs = params.LoadParams(members=[
        {"name": "mlp_0", "recipe": "mlp", "seed": 0},
        {"name": "mlp_0_ft1", "recipe": "mlp", "seed": 7, "finetune_from": "mlp_0"},
    ]).members
    members.register(specs, run, input_shape=(8, 8, 1), n_classes=10)
    assert io.read_json(run.members_spec)[1]["finetune_from"] == "mlp_0"
    members.save_model(tiny_members[0].model, run.member_model("mlp_0"))  # "trained" base
    ft = members.build_member(run, "mlp_0_ft1", n_classes=10)
    assert ft.name == "mlp_0_ft1"
    for a, b in zip(ft.get_weights(), tiny_members[0].model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    fresh = members.build_member(run, "mlp_0", n_classes=10)  # the base itself: a new start
    assert not np.array_equal(fresh.get_weights()[0], tiny_members[0].model.get_weights()[0])
