"""Each merge strategy's numbers against an independent computation (NumPy, SciPy, scikit-learn,
or a trace worked out by hand), on small random members and on the session's tiny trained ones."""

from __future__ import annotations

from collections import Counter

import keras
import numpy as np
import pytest

from kernelib import calibrate as kc
from kernelib import merge, zoo
from kernelib.errors import MergeError
from kernelib.layers import MajorityVote
from kernelib.merge import distill, select, weighted


def numpy_nll(p, y):
    p = np.clip(np.asarray(p, dtype="float64"), 1e-7, 1.0)
    p = p / p.sum(axis=1, keepdims=True)
    return float(-np.mean(np.log(p[np.arange(len(y)), y])))


def probs_of(models, x):
    return np.stack([np.asarray(m.predict(x, verbose=0), dtype="float64") for m in models])


def random_member(name: str, seed: int, *, scale: float = 0.15):
    """An untrained member with seeded random weights: raw 8x8x1 digits -> 10 probabilities."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 1), name="image")
    x = keras.layers.Flatten()(inputs)
    x = keras.layers.Dense(16, activation="relu", name="features")(x)
    outputs = keras.layers.Dense(10, activation="softmax", name="probs")(x)
    model = keras.Model(inputs, outputs, name=name)
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(0, scale, w.shape).astype("float32")
                       for w in model.get_weights()])
    return model


@pytest.fixture(scope="module")
def random_members():
    return [random_member(f"r{i}", 10 + i) for i in range(4)]


# ----------------------------------------------------------------------------------- vote

def numpy_vote(p):
    """Majority class per row; equal counts go to the highest mean probability, then lowest index."""
    out = []
    for row in range(p.shape[1]):
        counts = Counter(int(c) for c in p[:, row].argmax(axis=1))
        top = max(counts.values())
        tied = sorted(c for c, n in counts.items() if n == top)
        mean = p[:, row].mean(axis=0)
        out.append(max(tied, key=lambda c: (mean[c], -c)))
    return np.eye(p.shape[2])[out]


def test_vote_layer_on_a_hand_worked_table():
    # three members, three classes; row 0: majority beats a higher mean probability;
    # row 1: a 1-1-1 tie goes to the highest mean probability (class 2: mean 0.4667)
    m1 = np.array([[0.6, 0.4, 0.0], [0.5, 0.2, 0.3]])
    m2 = np.array([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]])
    m3 = np.array([[0.0, 1.0, 0.0], [0.1, 0.1, 0.8]])
    out = np.asarray(MajorityVote()([m.astype("float32") for m in (m1, m2, m3)]))
    np.testing.assert_array_equal(out, [[1, 0, 0], [0, 0, 1]])


def test_vote_equals_numpy_majority_with_tie_break(random_members, splits):
    model = merge.merge(random_members, "vote")
    p = probs_of(random_members, splits.x_val)
    ties = sum(1 for r in range(p.shape[1])
               if sorted(Counter(p[:, r].argmax(1)).values())[-2:] in ([2, 2], [1, 1]))
    assert ties >= 5, "the random members should disagree enough to exercise the tie-break"
    np.testing.assert_array_equal(model.predict(splits.x_val, verbose=0), numpy_vote(p))


# -------------------------------------------------------------------------------- weighted

def test_weighted_fit_matches_scipy_on_the_simplex():
    from scipy.optimize import minimize

    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(5) * 0.7, size=(4, 200))
    y = rng.integers(0, 5, 200)
    probs[2, np.arange(200), y] += 0.5  # member 2 is the informative one
    probs /= probs.sum(axis=2, keepdims=True)
    w = weighted.fit_simplex_weights(probs, y, min_weight=0.0)
    ref = minimize(lambda v: numpy_nll(np.tensordot(v, probs, 1), y), np.full(4, 0.25),
                   method="SLSQP", bounds=[(0, 1)] * 4,
                   constraints=[{"type": "eq", "fun": lambda v: v.sum() - 1}])
    assert w.min() >= 0 and w.sum() == pytest.approx(1.0)
    assert numpy_nll(np.tensordot(w, probs, 1), y) <= ref.fun + 1e-6
    np.testing.assert_allclose(w, ref.x, atol=0.02)


def test_weighted_corner_solution():
    # member 0 gives the true class more probability on every row: all weight goes to it
    probs = np.array([[[0.9, 0.1], [0.2, 0.8]], [[0.6, 0.4], [0.4, 0.6]]])
    np.testing.assert_array_equal(weighted.fit_simplex_weights(probs, np.array([0, 1])), [1, 0])


@pytest.mark.parametrize("which", ["trained", "random"])
def test_weighted_no_worse_on_val_than_best_member_and_uniform(which, tiny_members,
                                                               random_members, splits):
    members = [m.model for m in tiny_members] if which == "trained" else random_members
    p = probs_of(members, splits.x_val)
    uniform = numpy_nll(p.mean(axis=0), splits.y_val)
    plain = merge.merge(members, "weighted", val=splits.val, shrinkage=0)
    got = numpy_nll(plain.predict(splits.x_val, verbose=0), splits.y_val)
    assert got <= min(numpy_nll(q, splits.y_val) for q in p) + 1e-6
    assert got <= uniform + 1e-6
    # shrunk weights lie between the fit and uniform; the NLL is convex in the weights
    shrunk = merge.merge(members, "weighted", val=splits.val, shrinkage="auto", seed=1)
    assert numpy_nll(shrunk.predict(splits.x_val, verbose=0), splits.y_val) <= uniform + 1e-6


def test_weighted_shrinkage_one_is_the_plain_mean(random_members, splits):
    model = merge.merge(random_members, "weighted", val=splits.val, shrinkage=1.0)
    p = probs_of(random_members, splits.x_val)
    np.testing.assert_allclose(model.predict(splits.x_val, verbose=0), p.mean(axis=0), atol=1e-6)


def overfit_pool(seed: int = 0, n: int = 120):
    """Four members of equal skill whose errors are noise: fitted weights chase that noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    probs = rng.dirichlet(np.ones(4), size=(4, n))
    probs[:, np.arange(n), y] += 0.6
    return probs / probs.sum(axis=2, keepdims=True), y


def test_pick_shrinkage_is_the_out_of_fold_argmin_of_a_numpy_loop():
    from sklearn.model_selection import StratifiedKFold

    probs, y = overfit_pool()
    grid = weighted.SHRINKAGE_GRID
    loss = np.zeros(len(grid))
    for fit, held in StratifiedKFold(5, shuffle=True, random_state=7).split(y, y):
        w = weighted.fit_simplex_weights(probs[:, fit], y[fit])  # checked against SciPy above
        for j, s in enumerate(grid):
            mix = ((1 - s) * w + s / 4) @ probs[:, held, :].transpose(1, 0, 2)
            loss[j] += -np.sum(np.log(mix[np.arange(len(held)), y[held]]))
    expected = grid[int(np.argmin(loss))]
    got = weighted.pick_shrinkage(probs, y, folds=5, seed=7)
    assert got == expected
    assert got > 0, "members of equal skill: some shrinkage should beat the plain fit"
    np.testing.assert_allclose(
        weighted.fit_weights(probs, y, shrinkage="auto", seed=7),
        (1 - got) * weighted.fit_simplex_weights(probs, y) + got / 4)


@pytest.mark.parametrize("bad", [-0.1, 1.5, "half", True])
def test_weighted_refuses_a_bad_shrinkage(bad, random_members, splits):
    with pytest.raises(MergeError, match="shrinkage"):
        merge.merge(random_members, "weighted", val=splits.val, shrinkage=bad)


# ---------------------------------------------------------------------------------- select

# Three members, two classes, two rows with labels [0, 1]. True-class probabilities:
# A (0.99, 0.30), B (0.35, 0.98), C (0.55, 0.55).
SELECT_TABLE = np.array([[[0.99, 0.01], [0.70, 0.30]],
                         [[0.35, 0.65], [0.02, 0.98]],
                         [[0.55, 0.45], [0.45, 0.55]]])


def test_select_reproduces_a_hand_worked_trace():
    # step 1: NLL A 0.6070, B 0.5350, C 0.5978            -> B
    # step 2: (B+A)/2 0.4234, (B+B)/2 0.5350, (B+C)/2 0.5332 -> A
    # step 3: (A+B+A)/3 0.4470, (A+B+B)/3 0.4286, (A+B+C)/3 0.4782 -> B
    # step 4: (A+2B+A)/4 = (A+B)/2 0.4234 is best again    -> A
    counts, trace = select.greedy_selection(SELECT_TABLE, np.array([0, 1]), size=4, metric="nll")
    assert [t["member"] for t in trace] == [1, 0, 1, 0]
    np.testing.assert_allclose([t["score"] for t in trace], [0.5350, 0.4234, 0.4286, 0.4234],
                               atol=1e-4)
    np.testing.assert_array_equal(counts, [2, 2, 0])


def test_select_accuracy_metric_breaks_ties_by_nll():
    # only C alone classifies both rows; adding A or B misclassifies one, so C is picked again
    counts, trace = select.greedy_selection(SELECT_TABLE, np.array([0, 1]), size=3,
                                            metric="accuracy")
    assert [t["member"] for t in trace] == [2, 2, 2] and counts.tolist() == [0, 0, 3]


def test_select_sorted_initialisation_by_hand():
    # alone: A 0.6070, B 0.5350, C 0.5978 -> init_size=2 starts with B, then C;
    # step 3: (B+C+A)/3 0.4782, (B+C+B)/3 0.5269, (B+C+C)/3 0.5466 -> A
    # step 4: (A+B+C+A)/4 0.4793, (A+B+C+B)/4 0.4665, (A+B+C+C)/4 0.5067 -> B
    counts, trace = select.greedy_selection(SELECT_TABLE, np.array([0, 1]), size=4,
                                            init_size=2)
    assert [t["member"] for t in trace] == [1, 2, 0, 1]
    np.testing.assert_allclose([t["score"] for t in trace], [0.5350, 0.5332,
                               0.4782, 0.4665], atol=1e-4)
    np.testing.assert_array_equal(counts, [1, 2, 1])


def numpy_greedy(probs, y, size):
    """Caruana's forward selection written out plainly: counts after `size` picks."""
    counts = np.zeros(len(probs))
    for _ in range(size):
        scores = [numpy_nll(np.tensordot(counts + np.eye(len(probs))[i], probs, 1)
                            / (counts.sum() + 1), y) for i in range(len(probs))]
        counts[int(np.argmin(scores))] += 1
    return counts


def test_bagged_selection_averages_selections_on_bootstrap_rows():
    probs, y = overfit_pool(seed=3, n=60)
    rng = np.random.default_rng(5)
    bags = [rng.integers(0, 60, 60) for _ in range(4)]
    expected = np.mean([numpy_greedy(probs[:, b], y[b], 6) / 6 for b in bags], axis=0)
    got = select.fit_select_weights(probs, y, size=6, bags=4, seed=5)
    np.testing.assert_allclose(got, expected, atol=1e-12)
    assert got.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("options, match", [
    ({"size": 3, "init_size": 4}, "init_size"),
    ({"init_size": -1}, "init_size"),
    ({"bags": 1.5}, "bags"),
    ({"size": 0}, "size"),
])
def test_select_refuses_bad_counts(options, match, random_members, splits):
    with pytest.raises(MergeError, match=match):
        merge.merge(random_members, "select", val=splits.val, **options)


def table_members(table):
    """Members whose probabilities on the rows `eye(rows)` are `table` (members, rows, classes):
    a softmax over log-probabilities, one input row picking one row of the table."""
    out = []
    for i, p in enumerate(table):
        inputs = keras.Input((p.shape[0],), name="image")
        dense = keras.layers.Dense(p.shape[1], activation="softmax", use_bias=False, name="probs")
        model = keras.Model(inputs, dense(inputs), name="ABC"[i])
        dense.set_weights([np.log(p).astype("float32")])
        out.append(model)
    return out


def test_select_model_weights_are_the_hand_worked_pick_counts():
    # the trace above: picks B, A, B, A -> weights 2/4, 2/4, 0; C is left out of the model
    y = np.array([0, 1])
    np.testing.assert_array_equal(merge.Select(size=4).fit(SELECT_TABLE, y).weights_,
                                  [0.5, 0.5, 0.0])
    model = merge.merge(table_members(SELECT_TABLE), "select", val=(np.eye(2), y), size=4)
    assert [la.name for la in model.layers if la.name.startswith("weight_")] == \
        ["weight_A", "weight_B"]
    # (A + B) / 2 per row: (0.99 + 0.35) / 2 = 0.67, (0.70 + 0.02) / 2 = 0.36
    np.testing.assert_allclose(model.predict(np.eye(2), verbose=0),
                               [[0.67, 0.33], [0.36, 0.64]], atol=1e-6)


def test_select_model_is_no_worse_on_val_than_its_best_member(random_members, splits):
    model = merge.merge(random_members, "select", val=splits.val, size=7)
    p = probs_of(random_members, splits.x_val)
    assert numpy_nll(model.predict(splits.x_val, verbose=0), splits.y_val) <= \
        min(numpy_nll(q, splits.y_val) for q in p) + 1e-6


# -------------------------------------------------------------------------------- stacking

@pytest.mark.filterwarnings("ignore::FutureWarning")  # LogisticRegressionCV's 1.10 changes
def test_stacking_fits_only_val_and_equals_logistic_regression_cv(random_members, splits):
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    poisoned = (splits.x_train, rng.permutation(splits.y_train))  # must not matter
    a = merge.merge(random_members, "stacking", val=splits.val, folds=3, seed=0)
    b = merge.merge(random_members, "stacking", val=splits.val, train=poisoned, folds=3, seed=0)
    for wa, wb in zip(a.get_layer("meta").get_weights(), b.get_layer("meta").get_weights(),
                      strict=True):
        np.testing.assert_array_equal(wa, wb)
    # scikit-learn's own search: a logistic regression on the val rows' member probabilities,
    # its C picked from the same grid by log loss over the same three folds
    feats = lambda x: probs_of(random_members, x).transpose(1, 0, 2).reshape(len(x), -1)  # noqa: E731
    cv = StratifiedKFold(3, shuffle=True, random_state=0)
    with threadpool_limits(1):  # see kernelib.merge.stacking: BLAS threads next to TensorFlow
        ref = LogisticRegressionCV(Cs=list(np.logspace(-2, 4, 7)), cv=cv, scoring="neg_log_loss",
                                   max_iter=2000).fit(feats(splits.x_val), splits.y_val)
        # its refit is warm-started (a looser optimum): the final fit is a plain one at that C
        final = LogisticRegression(C=ref.C_[0], max_iter=2000).fit(feats(splits.x_val),
                                                                   splits.y_val)
    fitted = merge.Stacking(folds=3).fit(probs_of(random_members, splits.x_val), splits.y_val)
    assert fitted.meta_learner_.C == ref.C_[0]
    np.testing.assert_allclose(a.predict(splits.x_test, verbose=0),
                               final.predict_proba(feats(splits.x_test)), atol=2e-5)


def test_stacking_passthrough_standardises_with_val_statistics(random_members, splits):
    model = merge.merge(random_members, "stacking", val=splits.val, folds=3, passthrough=True)
    norm = model.get_layer("raw_standardise")
    raw = splits.x_val.reshape(len(splits.x_val), -1).astype("float64")
    var = np.where(raw.var(0) < 1e-12, 1.0, raw.var(0))
    z = np.asarray(norm(splits.x_test.reshape(len(splits.x_test), -1)))
    np.testing.assert_allclose(z, (splits.x_test.reshape(len(z), -1) - raw.mean(0)) / np.sqrt(var),
                               atol=1e-4)
    assert model.get_layer("meta").kernel.shape == (4 * 10 + 64, 10)


# ------------------------------------------------------------------------------------ soup

@pytest.fixture(scope="module")
def ingredients(tiny_members, splits, tmp_path_factory):
    """The trained mlp member and three short fine-tunes of it (one shared initialisation)."""
    from kernelib import data, train

    base = tiny_members[0].model
    pre = data.build_preprocessor(splits.x_train)
    out = [base]
    for seed in (21, 22, 23):
        m = zoo.finetune(base, "mlp", preprocessor=pre, n_classes=10, name=f"ft{seed}", seed=seed)
        train.fit(m, splits.train, splits.val, out_dir=tmp_path_factory.mktemp("ft"), epochs=2,
                  batch_size=128, learning_rate=1e-3, patience=2, seed=seed)
        out.append(m)
    return out


def test_uniform_soup_is_the_numpy_mean_of_weights(ingredients):
    model = merge.merge(ingredients, "soup", mode="uniform")
    for j, w in enumerate(model.get_weights()):
        np.testing.assert_allclose(w, np.mean([m.get_weights()[j] for m in ingredients], axis=0),
                                   atol=1e-7)


def test_greedy_soup_is_at_least_its_best_ingredient(ingredients, splits):
    model = merge.merge(ingredients, "soup", val=splits.val, mode="greedy")
    acc = lambda m: float(np.mean(m.predict(splits.x_val, verbose=0).argmax(1) == splits.y_val))  # noqa: E731
    best = max(acc(m) for m in ingredients)
    assert acc(model) >= best
    uniform = merge.merge(ingredients, "soup", mode="uniform")
    assert acc(uniform) >= best - 0.05, "fine-tunes of one start average without collapsing"


def test_greedy_soup_by_nll_is_at_least_its_best_ingredient(ingredients, splits):
    model = merge.merge(ingredients, "soup", val=splits.val, mode="greedy", metric="nll")
    nll_of = lambda m: numpy_nll(m.predict(splits.x_val, verbose=0), splits.y_val)  # noqa: E731
    assert nll_of(model) <= min(nll_of(m) for m in ingredients) + 1e-6


def test_soup_ingredients_option_picks_members(ingredients, tiny_members, splits):
    members = [*ingredients, tiny_members[1].model]  # the cnn is not an ingredient
    model = merge.merge(members, "soup", mode="uniform",
                        ingredients=[m.name for m in ingredients[:2]])
    ref = merge.merge(ingredients[:2], "soup", mode="uniform")
    np.testing.assert_array_equal(model.predict(splits.x_val, verbose=0),
                                  ref.predict(splits.x_val, verbose=0))


# --------------------------------------------------------------------------------- distill

def test_transfer_set_targets():
    x = np.arange(12, dtype="float32").reshape(4, 3)
    y = np.array([0, 1, 2, 0])
    teacher = lambda x: np.tile([0.2, 0.3, 0.5], (len(x), 1))  # noqa: E731
    inputs, targets = distill.transfer_set(x, y, teacher, k=3, alpha=0.25, mixup_copies=1, seed=0)
    assert inputs.shape == (8, 3)
    np.testing.assert_array_equal(inputs[:4], x)
    np.testing.assert_allclose(targets[:4], 0.25 * np.eye(3)[y] + 0.75 * teacher(x), atol=1e-7)
    np.testing.assert_allclose(targets[4:], teacher(x), atol=1e-7)
    # every mixup row lies on a segment between two training rows (same offset per row)
    assert np.allclose(np.diff(inputs[4:], axis=1), 1.0)


def test_distill_trains_one_student_from_a_built_teacher(tiny_members, splits):
    teacher = merge.merge(tiny_members, "average")
    student = merge.merge(tiny_members, "distill", train=splits.train, val=splits.val,
                          teacher=teacher, student="mlp", epochs=3, seed=0)
    assert student.name == "distill" and student.get_layer("probs") is not None
    acc = np.mean(student.predict(splits.x_val, verbose=0).argmax(1) == splits.y_val)
    assert acc > 0.5
    assert student.count_params() < sum(m.model.count_params() for m in tiny_members)


# ------------------------------------------------------------------------------- calibrate

def test_temperature_matches_a_grid_search_and_keeps_the_argmax(tiny_members, splits):
    model = merge.merge(tiny_members, "average")
    p = model.predict(splits.x_val, verbose=0).astype("float64")
    t = kc.fit_temperature(p, splits.y_val)
    grid = np.exp(np.linspace(np.log(0.05), np.log(20), 4001))

    def nll_at(temp):
        z = np.log(np.clip(p, 1e-7, 1)) / temp
        z = np.exp(z - z.max(1, keepdims=True))
        return numpy_nll(z / z.sum(1, keepdims=True), splits.y_val)

    assert nll_at(t) <= min(nll_at(g) for g in grid) + 1e-6
    calibrated = merge.merge(tiny_members, "average", val=splits.val, calibrate=True)
    q = calibrated.predict(splits.x_test, verbose=0)
    z = np.log(np.clip(model.predict(splits.x_test, verbose=0), 1e-7, 1)) / t
    z = np.exp(z - z.max(1, keepdims=True))
    np.testing.assert_allclose(q, z / z.sum(1, keepdims=True), atol=1e-5)
    np.testing.assert_array_equal(q.argmax(1), model.predict(splits.x_test, verbose=0).argmax(1))
    assert numpy_nll(calibrated.predict(splits.x_val, verbose=0), splits.y_val) <= \
        numpy_nll(p, splits.y_val)


def test_calibrated_vote_gives_finite_nll(random_members, splits):
    model = merge.merge(random_members, "vote", val=splits.val, calibrate=True)
    p = model.predict(splits.x_val, verbose=0)
    assert np.all(p > 0) and numpy_nll(p, splits.y_val) < numpy_nll(
        merge.merge(random_members, "vote").predict(splits.x_val, verbose=0), splits.y_val)


# ---------------------------------------------------------------------------------- concat

def test_concat_fine_tune_changes_only_the_last_layers(tiny_members, splits):
    before = [[w.copy() for w in m.model.get_weights()] for m in tiny_members]
    model = merge.merge(tiny_members, "concat", train=splits.train, val=splits.val, epochs=1,
                        fine_tune_layers=1, fine_tune_learning_rate=1e-3)
    for m, ws in zip(tiny_members, before, strict=True):  # the caller's members are untouched
        for a, b in zip(m.model.get_weights(), ws, strict=True):
            np.testing.assert_array_equal(a, b)
    for m in tiny_members:
        inner = model.get_layer(f"{m.name}_features")
        # the last weighted layer of each member (its `features` Dense) moved; all others not
        np.testing.assert_raises(AssertionError, np.testing.assert_array_equal,
                                 inner.get_layer("features").kernel, m.model.get_layer(
                                     "features").kernel)
        for layer in inner.layers:
            if layer.weights and layer.name != "features":
                for a, b in zip(layer.get_weights(), m.model.get_layer(layer.name).get_weights(),
                                strict=True):
                    np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------- out-of-fold validation

def test_a_clone_has_the_parameters_and_nothing_fitted():
    from sklearn.base import clone

    fitted = merge.Select(size=4, seed=2).fit(SELECT_TABLE, np.array([0, 1]))
    for copy in (fitted.clone(), clone(fitted)):
        assert copy.get_params() == fitted.get_params()
        assert copy.size == 4 and not hasattr(copy, "weights_")
    with pytest.raises(MergeError, match=r"'select' does not take option\(s\) \['sise'\]"):
        merge.Select(sise=4)


def test_out_of_fold_weighted_matches_a_fold_by_fold_reference(tiny_members, splits):
    from sklearn.model_selection import StratifiedKFold

    from kernelib.merge.weighted import fit_simplex_weights

    oof = merge.out_of_fold(tiny_members, ["average", "weighted"], val=splits.val, seed=3)
    assert list(oof) == ["weighted"]  # average fits nothing on val
    x, y = splits.val
    p = np.stack([m.model.predict(x, verbose=0).astype("float64") for m in tiny_members])
    expected = np.zeros(p.shape[1:])
    for fit_rows, held in StratifiedKFold(5, shuffle=True, random_state=3).split(x[:, 0, 0], y):
        w = fit_simplex_weights(p[:, fit_rows], y[fit_rows])
        expected[held] = np.tensordot(w, p[:, held], axes=1)
    np.testing.assert_allclose(oof["weighted"], expected, atol=1e-6)


def test_out_of_fold_stacking_is_not_flattered_like_in_sample(tiny_members, splits):
    from sklearn.metrics import log_loss

    x, y = splits.val
    in_sample = merge.merge(tiny_members, "stacking", val=splits.val).predict(x, verbose=0)
    oof = merge.out_of_fold(tiny_members, ["stacking"], val=splits.val, calibrate=["stacking"])
    np.testing.assert_allclose(oof["stacking"].sum(axis=1), 1.0, atol=1e-6)
    assert log_loss(y, oof["stacking"], labels=range(10)) > log_loss(y, in_sample,
                                                                       labels=range(10))
