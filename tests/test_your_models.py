"""Members as users have them: every Keras format, fronts in the graph, class orders, bad inputs.

The user members are trained here in plain Keras (seconds): a CNN at 16x16x3 on 0..1 RGB,
an `.h5` MLP starting with `Rescaling`, a SavedModel MLP on 0..1, a member predicting the
classes in another order, and a member holding augmentation and dropout layers. The
references are computed without kernelib (NumPy, tf.image, keras.applications'
preprocess_input).
"""

from __future__ import annotations

import numpy as np
import pytest
from direct_runtimes import predict_direct

from kernelib import members, params, pipeline
from kernelib.errors import (
    ConfigError,
    IncompatibleMembersError,
    KernelibError,
    MemberError,
    MergeError,
)

RAW = (8, 8, 1)
RANGE = (0.0, 16.0)
PERM = [3, 1, 4, 0, 5, 9, 2, 6, 8, 7]  # the permuted member's output j is digit PERM[j]


def _rgb16(x):
    """Digits as a 16x16 RGB image on 0..1 (what the CNN member was trained on), by tf.image."""
    import tensorflow as tf

    x = tf.image.resize(np.asarray(x, "float32") / 16.0, (16, 16), method="bilinear").numpy()
    return np.repeat(x, 3, axis=-1)


def _fit(model, x, y, epochs=3, logits=False):
    import keras

    model.compile(keras.optimizers.Adam(3e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=logits))
    model.fit(x, y, epochs=epochs, batch_size=64, verbose=0)
    return model


@pytest.fixture(scope="module")
def files(splits, tmp_path_factory):
    """Member files trained in plain Keras: {name: path}."""
    import keras

    keras.utils.set_random_seed(0)
    d = tmp_path_factory.mktemp("user_members")
    x, y = splits.x_train, splits.y_train
    L = keras.layers
    cnn = keras.Sequential([keras.Input((16, 16, 3)), L.Conv2D(8, 3, activation="relu"),
                            L.MaxPooling2D(2), L.Flatten(), L.Dense(10)], name="cnn16")  # logits
    _fit(cnn, _rgb16(x), y, epochs=4, logits=True).save(d / "cnn16.keras")
    mlp = keras.Sequential([keras.Input(RAW), L.Rescaling(1 / 16), L.Flatten(),
                            L.Dense(32, activation="relu"), L.Dense(10, activation="softmax")])
    _fit(mlp, x, y).save(d / "mlp.h5")
    sm = keras.Sequential([keras.Input(RAW), L.Flatten(), L.Dense(32, activation="relu"),
                           L.Dense(10, activation="softmax")])
    _fit(sm, x / 16.0, y).export(str(d / "mlp_saved"), format="tf_saved_model", verbose=False)
    perm = keras.Sequential([keras.Input(RAW), L.Rescaling(1 / 16), L.Flatten(),
                             L.Dense(10, activation="softmax")])
    _fit(perm, x, np.argsort(PERM)[y], epochs=5).save(d / "perm.keras")
    aug = keras.Sequential([keras.Input(RAW), L.RandomFlip("horizontal"),
                            L.RandomTranslation(0.1, 0.1), L.Rescaling(1 / 16), L.Flatten(),
                            L.Dropout(0.3), L.Dense(10, activation="softmax")], name="aug")
    _fit(aug, x, y).save(d / "aug.keras")
    return {"cnn16": d / "cnn16.keras", "mlp": d / "mlp.h5", "saved": d / "mlp_saved",
            "perm": d / "perm.keras", "aug": d / "aug.keras"}


def _spec(**kw):
    return params.MemberSpec(**kw)


@pytest.fixture(scope="module")
def adapted(files, splits):
    facts = {"input_shape": RAW, "class_names": splits.class_names, "value_range": RANGE}
    specs = [_spec(name="cnn16", path=str(files["cnn16"]), preprocess="rescale"),
             _spec(name="mlp", path=str(files["mlp"])),
             _spec(name="saved", path=str(files["saved"]), preprocess="rescale"),
             _spec(name="perm", path=str(files["perm"]),
                   class_names=[str(c) for c in PERM])]
    return {s.name: members.from_spec(s, **facts) for s in specs}


def test_fronts_match_independent_references(adapted, files, splits):
    import keras
    import tensorflow as tf

    x = splits.x_val[:16]
    cnn = keras.saving.load_model(files["cnn16"], compile=False)
    ref = tf.nn.softmax(cnn(_rgb16(x))).numpy()  # logits detected and converted once
    np.testing.assert_allclose(adapted["cnn16"].model(x).numpy(), ref, atol=1e-5)
    perm = keras.saving.load_model(files["perm"], compile=False)
    ref = np.empty((len(x), 10))
    ref[:, PERM] = perm(x).numpy()  # member output j is digit PERM[j]
    np.testing.assert_allclose(adapted["perm"].model(x).numpy(), ref, atol=1e-6)
    saved = tf.saved_model.load(str(files["saved"])).signatures["serving_default"]
    ref = list(saved(tf.constant(x / 16.0)).values())[0].numpy()
    np.testing.assert_allclose(adapted["saved"].model(x).numpy(), ref, atol=1e-6)
    assert adapted["saved"].opaque and not adapted["mlp"].opaque
    # each member does better than chance through its front: it sees what it was trained on
    for m in adapted.values():
        acc = (m.model.predict(splits.x_test, verbose=0).argmax(1) == splits.y_test).mean()
        assert acc > 0.5, (m.name, acc)


@pytest.mark.parametrize("preprocess, reference", [
    ("caffe", lambda x255: __import__("keras").applications.vgg16.preprocess_input(x255)),
    ("tf", lambda x255: x255 / 127.5 - 1),
    ("torch", lambda x255: (x255 / 255 - np.array([0.485, 0.456, 0.406]))
     / np.array([0.229, 0.224, 0.225])),
])
def test_vgg16_front_follows_keras_applications(preprocess, reference, splits):
    """A VGG16 (weights=None, 32x32 RGB) behind a front: the same as preprocess_input by hand."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    base = keras.applications.VGG16(input_shape=(32, 32, 3), weights=None, classes=10)
    model = members.adapt(base, RAW, preprocess=preprocess, value_range=RANGE, name="vgg")
    x = splits.x_val[:4]
    x255 = np.repeat(tf.image.resize(x * 255 / 16, (32, 32), "bilinear").numpy(), 3, -1)
    want = base(reference(x255).astype("float32"), training=False).numpy()
    np.testing.assert_allclose(model(x).numpy(), want, atol=2e-5)


def test_merging_members_of_every_format(adapted, splits):
    """average/weighted/select/stacking over all four; concat over those it can look inside."""
    from kernelib.merge import merge

    ms = list(adapted.values())
    probs = np.stack([m.model.predict(splits.x_val, verbose=0) for m in ms])
    avg = merge(ms, "average")
    np.testing.assert_allclose(avg.predict(splits.x_val, verbose=0), probs.mean(0), atol=1e-5)
    for strategy in ("weighted", "select", "stacking"):
        model = merge(ms, strategy, val=splits.val, seed=0)
        p = model.predict(splits.x_test, verbose=0)
        assert p.shape == (len(splits.y_test), 10) and np.allclose(p.sum(1), 1, atol=1e-5)
    with pytest.raises(MergeError, match="member 'saved' is a SavedModel.*can join.*average"):
        merge(ms, "concat", train=splits.train, val=splits.val)
    inside = [m for m in ms if not m.opaque]
    concat = merge(inside, "concat", train=splits.train, val=splits.val, epochs=2)
    acc = (concat.predict(splits.x_test, verbose=0).argmax(1) == splits.y_test).mean()
    assert acc > 0.5
    # unique layer names throughout (nested models included)
    names = [la.name for la in members.walk_layers(concat) if not la.name.endswith("input")]
    assert len(names) == len(set(names))


def test_augmentation_and_dropout_member_exports_in_every_order(files, adapted, splits,
                                                                tmp_path):
    """Every format verifies for average([aug, mlp]) and average([mlp, aug])."""
    from kernelib import export
    from kernelib.merge import merge

    aug = members.load_member(files["aug"], name="aug")
    mlp = adapted["mlp"]
    for i, order in enumerate([[aug, mlp], [mlp, aug]]):
        model = merge(order, "average")
        assert not members.augmentation_layers(model)
        manifest = export.export(model, tmp_path / str(i), list(export.FORMATS), name="m",
                                 test=splits.test, calibration_data=splits.x_train[:64],
                                 class_names=splits.class_names, repeats=3)
        assert sorted(manifest.formats) == sorted(export.FORMATS)


def test_nan_members_are_refused_by_the_merge_api(adapted, splits):
    import keras

    good = adapted["mlp"].model
    bad = keras.models.clone_model(good)
    bad.set_weights([np.full(w.shape, np.nan, w.dtype) for w in good.get_weights()])
    bad.name = "nan_model"
    from kernelib.merge import merge

    for strategy in ("average", "weighted"):
        with pytest.raises(IncompatibleMembersError, match="member 'nan_model' outputs NaN"):
            merge([good, bad], strategy, val=splits.val)


def _bad_models():
    """Member models each wrong in one way (tiny, untrained): {name: keras.Model}."""
    import keras

    L = keras.layers

    def seq(shape, *layers):
        return keras.Sequential([keras.Input(shape), *layers])

    a, b = keras.Input(RAW), keras.Input(RAW)
    two_in = keras.Model([a, b], L.Dense(10, activation="softmax")(L.Flatten()(L.Add()([a, b]))))
    i = keras.Input(RAW)
    flat = L.Flatten()(i)
    two_out = keras.Model(i, [L.Dense(10, activation="softmax")(flat),
                              L.Dense(10, activation="softmax")(flat)])
    nan = seq(RAW, L.Flatten(), L.Dense(10, activation="softmax"))
    nan.set_weights([np.full(w.shape, np.nan, "float32") for w in nan.get_weights()])
    return {
        "seq": seq((12, 4), L.LSTM(4), L.Dense(10, activation="softmax")),
        "vol": seq((8, 8, 8, 1), L.Flatten(), L.Dense(10, activation="softmax")),
        "two": two_in, "two_out": two_out, "nan": nan,
        "k12": seq(RAW, L.Flatten(), L.Dense(12, activation="softmax")),
        "ok": seq(RAW, L.Flatten(), L.Dense(10, activation="softmax")),
        "logits": seq(RAW, L.Flatten(), L.Dense(10)),
        "lam": seq(RAW, L.Lambda(lambda t: t * 2.0), L.Flatten(),
                   L.Dense(10, activation="softmax")),
    }


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    """The bad models saved as `.keras` files, plus a text file and a signature-less SavedModel."""
    import tensorflow as tf

    tmp = tmp_path_factory.mktemp("bad_members")
    out = {}
    for name, model in _bad_models().items():
        out[name] = tmp / f"{name}.keras"
        model.save(out[name])
    out["text"] = tmp / "notes.h5"
    out["text"].write_text("not a model")
    out["nosig"] = tmp / "nosig"
    tf.saved_model.save(tf.Module(), str(out["nosig"]))
    return out


@pytest.mark.parametrize("member, error, match", [
    ({"path": "seq"}, IncompatibleMembersError, r"'m' takes inputs of shape \(12, 4\).*cannot build"),
    ({"path": "vol"}, IncompatibleMembersError, r"'m' takes inputs of shape \(8, 8, 8, 1\)"),
    ({"path": "two"}, IncompatibleMembersError, "'m' must have one input and one output"),
    ({"path": "two_out"}, IncompatibleMembersError, "'m' must have one input and one output"),
    ({"path": "k12"}, IncompatibleMembersError, "'m' predicts 12 classes"),
    ({"path": "ok", "class_names": list("0123456789"[:9]) + ["ten"]}, IncompatibleMembersError,
     r"'m': 'class_names' must be the dataset's classes.*'ten'"),
    ({"path": "ok", "preprocess": "imagenet"}, ConfigError, "preprocess.*'imagenet'"),
    ({"path": "text", "trust": True}, MemberError, "not a valid HDF5 file"),
    ({"path": "nosig"}, MemberError, "'m': the SavedModel .* has no serving signature"),
    ({"path": "logits"}, IncompatibleMembersError, None),  # detected: converted, so it loads
    ({"path": "logits", "output": "probabilities"}, IncompatibleMembersError,
     "'m' must output class probabilities.*declare 'output: logits'"),
    ({"path": "nan"}, IncompatibleMembersError, "'m' outputs NaN"),
    ({"path": "lam"}, MemberError, "safe mode.*set 'trust: true' on member 'm'"),
    ({"path": "ok", "trust": True, "recipe": "mlp"}, ConfigError, "exactly one of"),
    ({"recipe": "cnn", "trainable": False}, ConfigError, "'trainable: false' freezes a backbone"),
    ({"recipe": "mlp", "class_names": ["a"]}, ConfigError, "apply to members given by 'path'"),
])
def test_bad_members_refused_before_any_stage(member, error, match, bad_files, tmp_path):
    """Each refused by `kernelib run`'s preflight, before any run folder exists."""
    spec = {"name": "m", **member}
    if "path" in spec:
        spec["path"] = str(bad_files[spec["path"]])
    cfg = {"load": {"dataset": "digits", "members": [spec, {"name": "z", "recipe": "mlp"}]}}
    if match is None:  # the declared-or-detected logits case is accepted
        pipeline.check_member_files(params.validate_config(cfg))
        return
    with pytest.raises(error, match=match) as info:
        pipeline.check_member_files(params.validate_config(cfg))
    assert isinstance(info.value, KernelibError)
    assert "Add a softmax" not in str(info.value) or "NaN" not in str(info.value)


def test_savedmodel_member_in_concat_refused_before_any_stage(files):
    members_ = [{"name": "saved", "path": str(files["saved"]), "preprocess": "rescale"},
                {"name": "mlp", "path": str(files["mlp"])}, {"name": "z", "recipe": "mlp"}]
    cfg = {"load": {"dataset": "digits", "members": members_},
           "merge": {"strategies": ["average", "concat"]}}
    with pytest.raises(MergeError, match="'concat' looks inside.*member 'saved' is a SavedModel"
                                         ".*merge.concat.include"):
        pipeline.check_member_files(params.validate_config(cfg))
    cfg["merge"]["concat"] = {"include": ["mlp", "z"]}
    pipeline.check_member_files(params.validate_config(cfg))


def test_merged_model_holding_a_savedmodel_member_exports(adapted, splits, tmp_path):
    """The TFSMLayer inside loads back in every format's runtime (keras and h5 included)."""
    from kernelib import export
    from kernelib.merge import merge

    model = merge([adapted["saved"], adapted["mlp"]], "average")
    formats = ["keras", "h5", "saved_model", "tflite", "onnx"]
    manifest = export.export(model, tmp_path, formats, name="m", test=splits.test, repeats=3)
    assert sorted(manifest.formats) == sorted(formats)


@pytest.mark.parametrize("recipe", ["vgg16", "mobilenet_v3_small"])
def test_frozen_backbone_trains_only_its_new_head(recipe, splits):
    """`trainable: false`: the backbone's weights are frozen and its own convention is in front."""
    import keras
    import tensorflow as tf

    from kernelib import data, zoo

    pre = data.build_preprocessor(splits.x_train)
    model = zoo.build(recipe, preprocessor=pre, n_classes=10, name="b", image_size=32,
                      trainable=False, value_range=RANGE)
    backbone = next(la for la in model.layers if isinstance(la, keras.Model))
    assert backbone.weights and not backbone.trainable_weights
    head = [w for la in model.layers if not isinstance(la, keras.Model)
            for w in la.trainable_weights]
    assert len(model.trainable_weights) == len(head) == 4  # features and probs Dense
    x = splits.x_val[:2]
    x255 = np.repeat(tf.image.resize(x * 255 / 16, (32, 32), "bilinear").numpy(), 3, -1)
    want = (keras.applications.vgg16.preprocess_input(x255) if recipe == "vgg16"
            else x255 / 127.5 - 1)
    front_end = model.get_layer(f"{recipe}_{zoo.CONVENTIONS[recipe]}")  # what feeds the backbone
    got = keras.Model(model.inputs, front_end.output)(x)
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-3)


def test_resizing_front_before_a_nested_backbone_exports_as_savedmodel(splits, tmp_path):
    """Resizing defaults to training=True and a nested backbone inherited it (batch norm in
    training mode: the SavedModel disagreed with Keras by 0.4); fronts say training=False."""
    import keras

    from kernelib import export

    keras.utils.set_random_seed(0)
    inputs = keras.Input((36, 36, 3))  # not a whole multiple of 8: a Resizing layer
    backbone = keras.applications.MobileNetV3Small(
        input_shape=(36, 36, 3), include_top=False, weights=None, pooling="avg",
        include_preprocessing=False)
    member = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(backbone(inputs)),
                         name="mnv3")
    model = members.adapt(member, RAW, preprocess="tf", value_range=RANGE)
    assert isinstance(model.get_layer("mnv3_resize"), keras.layers.Resizing)
    x = splits.x_test[:64]
    manifest = export.export(model, tmp_path, ["saved_model"], name="m",
                             test=(x, splits.y_test[:64]), repeats=3)
    got = predict_direct(manifest.path("saved_model"), "saved_model", x)
    assert np.max(np.abs(got - np.asarray(model(x, training=False)))) <= 1e-5
