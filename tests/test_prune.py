"""Magnitude pruning: schedule, masks, sparsity reached and kept, a plain model at the end."""

from __future__ import annotations

import numpy as np
import pytest

from kernelib import merge, prune
from kernelib.errors import ConfigError


@pytest.fixture(scope="module")
def merged(tiny_members):
    return merge.merge(tiny_members, "average")


@pytest.fixture(scope="module")
def pruned(merged, splits):
    """The merged model (Dense and Conv kernels, nested members) pruned to 75%."""
    before = _kernels(merged)
    model, history = prune.prune(merged, splits.train, sparsity=0.75, epochs=2, batch_size=128)
    return model, history, before


def _kernels(model) -> dict[str, np.ndarray]:
    return {path: np.asarray(v.numpy()) for path, v in prune.prunable_kernels(model)}


@pytest.mark.parametrize("w, s, keep, expected", [
    ([0.1, -0.5, 0.05, 2.0, -0.01], 0.4, None, [1, 1, 0, 1, 0]),    # 2 smallest |w| go
    ([0.1, -0.5, 0.05, 2.0, -0.01], 0.0, None, [1, 1, 1, 1, 1]),
    ([0.1, -0.5, 0.05, 2.0, -0.01], 0.2, [1, 1, 1, 0, 1], [1, 1, 1, 0, 1]),  # pruned stays pruned
    ([[3.0, -1.0], [0.5, -4.0]], 0.5, None, [[1, 0], [0, 1]]),
])
def test_magnitude_mask_against_hand_worked_cases(w, s, keep, expected):
    mask = prune.magnitude_mask(np.array(w), s, None if keep is None else np.array(keep, bool))
    np.testing.assert_array_equal(mask, np.array(expected, bool))


@pytest.mark.parametrize("step, expected", [(0, 0.0), (5, 0.8 - 0.8 * 0.5 ** 3), (10, 0.8),
                                            (25, 0.8)])
def test_polynomial_schedule(step, expected):
    sched = prune.PolynomialDecay(target=0.8, begin_step=0, end_step=10, frequency=4)
    assert sched(step) == pytest.approx(expected)
    assert [t for t in range(12) if sched.updates_at(t)] == [0, 4, 8, 10]


def test_pruning_reaches_the_target_sparsity_in_dense_and_conv_kernels(merged, pruned, splits):
    pruned, history, before = pruned
    after = _kernels(pruned)
    assert any(w.ndim == 4 for w in after.values()), "Conv kernels are pruned too"
    for path, w in after.items():  # exactly round(0.75 * size) zeros; small kernels dense
        zeros = round(0.75 * w.size) if w.size >= prune.MIN_WEIGHTS else 0
        assert int((w == 0).sum()) == zeros, path
    assert sum(w.size < prune.MIN_WEIGHTS for w in after.values()) >= 2  # classifier layers
    total = sum(w.size for w in after.values())
    assert prune.sparsity(pruned) == pytest.approx(sum((w == 0).sum() for w in after.values())
                                                   / total)
    assert len(history) == 2 and np.isfinite(history["loss"]).all()
    assert all(np.array_equal(before[p], w) for p, w in _kernels(merged).items()), \
        "the given model is not changed"
    assert not pruned.compiled and getattr(pruned, "optimizer", None) is None, "a plain model"
    p = np.asarray(pruned.predict(splits.x_test, verbose=0))
    assert np.mean(p.argmax(1) == splits.y_test) > 0.5


def test_pruned_weights_stay_zero_while_fine_tuning(tiny_members, splits):
    from kernelib.data import make_dataset
    from kernelib.train import compile_model

    work = prune.copy_model(tiny_members[0].model)
    sched = prune.PolynomialDecay(target=0.6, begin_step=0, end_step=6, frequency=2)
    pruner = prune.Pruner(work, sched)
    compile_model(work, learning_rate=1e-2)
    seen = []

    class Check(__import__("keras").callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):  # runs after the pruner's callback
            seen.append(all(np.all(np.asarray(v.numpy())[~m] == 0)
                            for m, (_, v) in zip(pruner.masks, pruner.kernels, strict=True)))

    work.fit(make_dataset(*splits.train, batch_size=64), epochs=2, verbose=0, shuffle=False,
             callbacks=[pruner, Check()])
    assert len(seen) > 20 and all(seen)
    for mask, (_, v) in zip(pruner.masks, pruner.kernels, strict=True):
        w = np.asarray(v.numpy())
        assert 1 - mask.mean() == pytest.approx(0.6, abs=1 / mask.size)
        assert np.all(w[~mask] == 0) and np.all(w[mask] != 0)
    assert pruner.sparsity() == pytest.approx(0.6, abs=1e-3)


def test_stripped_model_keeps_its_zeros_through_a_keras_file(pruned, splits, tmp_path):
    import keras

    pruned = pruned[0]
    pruned.save(tmp_path / "p.keras")
    reloaded = keras.saving.load_model(tmp_path / "p.keras", compile=False)
    for (path, w), w2 in zip(_kernels(pruned).items(), _kernels(reloaded).values(), strict=True):
        np.testing.assert_array_equal(w == 0, w2 == 0, err_msg=path)
    np.testing.assert_allclose(reloaded.predict(splits.x_val, verbose=0),
                               pruned.predict(splits.x_val, verbose=0), atol=1e-6)


def test_sparsity_sweep_table(tiny_members, splits):
    model = tiny_members[0].model
    table, models = prune.sparsity_sweep(model, splits.train, splits.test, sparsities=[0, 0.8],
                                         epochs=1, batch_size=128)
    assert list(table.index) == [0.0, 0.8] and set(models) == {0.0, 0.8}
    sizes = [w.size for w in _kernels(model).values()]
    expected = sum(round(0.8 * n) for n in sizes if n >= prune.MIN_WEIGHTS) / sum(sizes)
    assert table.loc[0.0, "sparsity"] == 0 and table.loc[0.8, "sparsity"] == pytest.approx(expected)
    assert table.loc[0.8, "gzip_kib"] < table.loc[0.0, "gzip_kib"] * 0.6
    for s, m in models.items():
        acc = np.mean(np.asarray(m.predict(splits.x_test, verbose=0)).argmax(1) == splits.y_test)
        assert table.loc[s, "test_accuracy"] == pytest.approx(acc)
    assert prune.sparsity_sweep(model, splits.train, splits.test, sparsities=[])[0].empty


def test_bad_pruning_requests(tiny_members, splits):
    import keras

    with pytest.raises(ConfigError, match=r"target sparsity must be in \[0, 1\); received 1.0"):
        prune.prune(tiny_members[0].model, splits.train, sparsity=1.0)
    with pytest.raises(ConfigError, match=r"initial sparsity <= target sparsity < 1"):
        prune.PolynomialDecay(target=0.2, begin_step=0, end_step=5, initial=0.5)
    inp = keras.Input((8, 8, 1))
    no_kernels = keras.Model(inp, keras.layers.Softmax()(keras.layers.Flatten()(inp)))
    with pytest.raises(ConfigError, match=r"has no Dense or Conv kernel with at least 1024 "
                                          r"weights to prune"):
        prune.prune(no_kernels, splits.train, sparsity=0.5)
