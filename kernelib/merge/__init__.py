"""Merge several members into one Keras model: `merge(members, strategy, ...)`.

Example::

    from kernelib.merge import merge, STRATEGIES
    model = merge(members, "stacking", val=(x_val, y_val), seed=0, passthrough=True)
    model = merge(members, "select", val=(x_val, y_val), size=25, calibrate=True)

Strategies (one module each): average, vote, weighted, select, stacking, concat, soup,
distill. Importing this package registers kernelib's two Keras layers (`MajorityVote`,
`TemperatureScaling`), so do it before `keras.saving.load_model` on a merged file that
holds them; every other merged model loads with plain Keras.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from kernelib import calibrate as _calibrate
from kernelib.errors import MergeError
from kernelib.merge.average import merge_average
from kernelib.merge.base import check_val, check_xy, member_probabilities, predict, prepare
from kernelib.merge.cache import cache_predictions  # noqa: F401  (the merge notebook calls it)
from kernelib.merge.compare import comparison_table, tradeoff_figure
from kernelib.merge.concat import merge_concat
from kernelib.merge.distill import merge_distill
from kernelib.merge.select import merge_select
from kernelib.merge.soup import merge_soup
from kernelib.merge.stacking import merge_stacking
from kernelib.merge.vote import MajorityVote, merge_vote
from kernelib.merge.weighted import merge_weighted

_TABLE: dict[str, Callable] = {
    "average": merge_average,
    "vote": merge_vote,
    "weighted": merge_weighted,
    "select": merge_select,
    "stacking": merge_stacking,
    "concat": merge_concat,
    "soup": merge_soup,
    "distill": merge_distill,
}
STRATEGIES: tuple[str, ...] = tuple(_TABLE)
# Arguments `merge` passes to the strategies that take them; everything else is an option.
_DATA_ARGS = ("train", "val", "seed", "val_probs")
# Strategies that need only member probabilities on val (computed once by `merge_many`).
_FROM_PREDICTIONS = ("weighted", "select", "stacking")


def options_of(strategy: str) -> list[str]:
    """The options `strategy` takes (its keyword arguments besides the data arguments)."""
    if strategy not in _TABLE:
        raise MergeError(f"unknown merge strategy '{strategy}'; valid strategies: {list(STRATEGIES)}")
    accepted = set(inspect.signature(_TABLE[strategy]).parameters) - {"members"}
    return sorted(accepted - set(_DATA_ARGS))


def merge(members: Sequence[Any], strategy: str, *, train: tuple | None = None,
          val: tuple | None = None, seed: int = 0, calibrate: bool = False,
          val_probs: np.ndarray | None = None, **options: Any):
    """Merge `members` (keras.Model or Member objects) into one `keras.Model` with `strategy`.

    `train` and `val` are `(x, y)` NumPy pairs with integer labels, used by strategies that
    fit something; options are the strategy's own keyword arguments. `calibrate=True`
    appends a temperature-scaling layer fitted on `val` NLL. `val_probs` (members, rows,
    classes) are the members' probabilities on `val`, if already computed. Unknown
    strategies and unknown options are refused with the valid ones listed.
    """
    valid_options = options_of(strategy)
    unknown = sorted(set(options) - set(valid_options))
    if unknown:
        raise MergeError(f"strategy '{strategy}' does not take option(s) {unknown}; "
                         f"valid options: {valid_options}")
    if calibrate and val is None:
        raise MergeError(f"calibrate=True fits a temperature on 'val'; strategy '{strategy}' "
                         "received val=None. Pass val=(x_val, y_val).")
    fn = _TABLE[strategy]
    accepted = set(inspect.signature(fn).parameters)
    data = {"train": train, "val": val, "seed": seed, "val_probs": val_probs}
    model = fn(members, **{k: v for k, v in data.items() if k in accepted}, **options)
    if not calibrate:
        return model
    return _calibrate.calibrate(model, check_xy(val, "val", strategy, model.output_shape[-1],
                                                input_shape=tuple(model.input_shape[1:])))


def merge_many(members: Sequence[Any], strategies: Sequence[str], *, train: tuple | None = None,
               val: tuple | None = None, seed: int = 0,
               options: dict[str, dict[str, Any]] | None = None,
               calibrate: Sequence[str] = ()) -> dict[str, Any]:
    """Build one merged model per strategy; `options[strategy]` holds that strategy's options.

    Member probabilities on `val` are computed once and shared; `distill` is built last and
    reuses the teacher built here when its `teacher` names one of `strategies`. Strategies
    listed in `calibrate` get temperature scaling.
    """
    options = {s: dict(o) for s, o in (options or {}).items()}
    for s in [*strategies, *calibrate, *options]:
        options_of(s)  # refuses unknown names before anything is fitted
    val_probs = None
    from_predictions = [s for s in strategies if s in _FROM_PREDICTIONS]
    if val is not None and from_predictions:
        models = prepare(members, from_predictions[0])
        val_probs = member_probabilities(models, check_val(models, val, from_predictions[0])[0])
    merged: dict[str, Any] = {}
    for s in sorted(strategies, key=lambda s: s == "distill"):
        teacher = options.get(s, {}).get("teacher")
        if s == "distill" and isinstance(teacher, str) and teacher in merged:
            options[s]["teacher"] = merged[teacher]
        merged[s] = merge(members, s, train=train, val=val, seed=seed, name=s,
                          calibrate=s in calibrate,
                          val_probs=val_probs if s in _FROM_PREDICTIONS else None,
                          **options.get(s, {}))
    return {s: merged[s] for s in strategies}


def _fitter(strategy: str, options: dict[str, Any], *, seed: int, x=None):
    """For a strategy fitted on member probabilities only: `fit(probs, y, rows) -> combine`,
    where `combine(probs, rows)` maps held-out member probabilities to the strategy's output."""
    from kernelib.merge import stacking as st
    from kernelib.merge.select import fit_select_weights
    from kernelib.merge.weighted import fit_weights

    defaults = {k: v.default for k, v in inspect.signature(_TABLE[strategy]).parameters.items()
                if v.default is not inspect.Parameter.empty}
    options = {**defaults, **options}  # the strategy's own defaults, never a second copy
    if strategy == "weighted":
        def fit(p, y, rows):
            w = fit_weights(p, y, shrinkage=options["shrinkage"], folds=int(options["folds"]),
                            seed=seed)
            return lambda q, _rows: np.tensordot(w, q, axes=1)
    elif strategy == "select":
        def fit(p, y, rows):
            w = fit_select_weights(p, y, size=int(options["size"]), metric=options["metric"],
                                   init_size=int(options["init_size"]),
                                   bags=int(options["bags"]), seed=seed)
            return lambda q, _rows: np.tensordot(w, q, axes=1)
    else:  # stacking
        def fit(p, y, rows):
            passthrough = options["passthrough"]
            mean, var = st.standardiser(x[rows]) if passthrough else (None, None)

            def feats(q, r):
                return st.meta_features(q, x[r] if passthrough else None, mean=mean,
                                        variance=var)

            clf, _ = st.fit_meta_learner(feats(p, rows), y, k=p.shape[-1],
                                         folds=int(options["folds"]), seed=seed)
            return lambda q, r: clf.predict_proba(feats(q, r))
    return fit


def out_of_fold(members: Sequence[Any], strategies: Sequence[str], *, val: tuple,
                seed: int = 0, options: dict[str, dict[str, Any]] | None = None,
                calibrate: Sequence[str] = (), folds: int = 5) -> dict[str, np.ndarray]:
    """Honest validation predictions of the strategies fitted on member probabilities.

    `weighted`, `select` and `stacking` are fitted on `val`, so their own val predictions
    flatter them (stacking most). Here each of `folds` stratified folds of `val` is
    predicted by the strategy (and its temperature, if calibrated) fitted on the other
    folds. Use these, not the in-sample ones, to compare or select models on val.
    Returns `{strategy: (rows, classes) probabilities}` for those strategies in `strategies`.
    """
    from sklearn.model_selection import StratifiedKFold

    wanted = [s for s in strategies if s in _FROM_PREDICTIONS]
    if not wanted:
        return {}
    models = prepare(members, wanted[0])
    x_val, y_val = check_val(models, val, wanted[0])
    probs = member_probabilities(models, x_val)
    n_splits = int(min(folds, np.bincount(y_val).min()))
    if n_splits < 2:
        raise MergeError("out-of-fold validation needs at least 2 'val' rows of every class; "
                         f"the rarest class has {np.bincount(y_val).min()}. Use a larger "
                         "validation split.")
    cv = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    out = {}
    for s in wanted:
        fit = _fitter(s, (options or {}).get(s, {}), seed=seed, x=x_val)
        oof = np.zeros(probs.shape[1:])
        for fit_rows, held_out in cv.split(np.zeros((len(y_val), 1)), y_val):  # labels only
            combine = fit(probs[:, fit_rows], y_val[fit_rows], fit_rows)
            pred = combine(probs[:, held_out], held_out)
            if s in calibrate:
                t = _calibrate.fit_temperature(combine(probs[:, fit_rows], fit_rows),
                                               y_val[fit_rows])
                pred = np.exp(_calibrate.log_scaled(pred, t))
            oof[held_out] = pred
        out[s] = oof
    return out


def options_from_params(p, *, run=None, augment: dict | None = None) -> dict[str, dict[str, Any]]:
    """Each strategy's options from the merge stage's parameters (`params.MergeParams`).

    With the run folder `run` and `p.tensorboard`, `concat` and `distill` log their training
    to `tensorboard/<strategy>/` in it; `augment` (the run's `data.read_augment`) goes to the
    two that train on data.
    """
    logs = {s: {"log_dir": str(run.tensorboard_dir(s))} if run is not None and p.tensorboard
            else {} for s in ("concat", "distill")}
    return {
        "average": {"weights": p.weights},
        "weighted": {"shrinkage": p.weighted_shrinkage, "folds": p.weighted_folds},
        "select": {"size": p.select_size, "metric": p.select_metric,
                   "init_size": p.select_init_size, "bags": p.select_bags},
        "stacking": {"passthrough": p.stacking_passthrough, "folds": p.stacking_folds},
        "concat": {"epochs": p.concat_epochs, "learning_rate": p.concat_learning_rate,
                   "fine_tune_layers": p.concat_fine_tune_layers,
                   "fine_tune_learning_rate": p.concat_fine_tune_learning_rate,
                   "augment": augment, "include": p.concat_members, **logs["concat"]},
        "soup": {"mode": p.soup_mode, "metric": p.soup_metric,
                 "ingredients": p.soup_ingredients},
        "distill": {"teacher": p.distill_teacher, "student": p.distill_student,
                    "epochs": p.distill_epochs, "augment": augment, **logs["distill"]},
    }


def save_all(merged: dict[str, Any], run, *, check_x: np.ndarray):
    """Save each merged model to `merged/<strategy>.keras`; table of size and reload parity."""
    import pandas as pd

    from kernelib import io
    from kernelib.members import count_params

    rows = []
    for strategy, model in merged.items():
        path = run.merged_model(strategy)
        diff = save(model, path, check_x=check_x)
        rows.append({"strategy": strategy, "params": count_params(model),
                     "file_kb": round(io.size_bytes(path) / 1024, 1),
                     "reload_max_abs_diff": diff})
    return pd.DataFrame(rows).set_index("strategy")


def save(model, path, *, check_x: np.ndarray) -> float:
    """Save a merged model to one `.keras` file atomically, reload it, return max |Δ| on `check_x`."""
    from kernelib import io
    from kernelib.members import load_keras

    with io.atomic_path(path) as tmp:
        model.save(tmp)
    reloaded = load_keras(path)
    return float(np.max(np.abs(predict(model, check_x) - predict(reloaded, check_x))))


__all__ = ["STRATEGIES", "MajorityVote", "comparison_table", "merge", "merge_many",
           "options_from_params", "options_of", "out_of_fold", "save", "save_all", "tradeoff_figure"]
