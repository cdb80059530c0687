"""Merge several members into one Keras model: `merge(members, strategy, ...)`.

Example::

    from kernelib.merge import merge, STRATEGIES
    model = merge(members, "stacking", val=(x_val, y_val), seed=0, passthrough=True)
    model = merge(members, "select", val=(x_val, y_val), size=25, calibrate=True)

Strategies (one module and one class each, e.g. `Select(size=25).fit(val_probs, y_val)`
then `.to_keras(models)`): average, vote, weighted, select, stacking, concat, soup, distill.
Importing this package registers kernelib's two Keras layers (`MajorityVote`,
`TemperatureScaling`), so do it before `keras.saving.load_model` on a merged file that
holds them; every other merged model loads with plain Keras.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from kernelib import calibrate as _calibrate
from kernelib.errors import MergeError
from kernelib.layers import MajorityVote
from kernelib.merge.average import Average
from kernelib.merge.base import check_val, check_xy, member_probabilities, predict, prepare
from kernelib.merge.cache import cache_predictions  # noqa: F401  (the merge notebook calls it)
from kernelib.merge.compare import comparison_table, tradeoff_figure
from kernelib.merge.concat import Concat
from kernelib.merge.distill import Distill
from kernelib.merge.select import Select
from kernelib.merge.soup import Soup
from kernelib.merge.stacking import Stacking
from kernelib.merge.strategy import Strategy
from kernelib.merge.vote import Vote
from kernelib.merge.weighted import Weighted

_TABLE: dict[str, type[Strategy]] = {
    c.strategy: c for c in (Average, Vote, Weighted, Select, Stacking, Concat, Soup, Distill)}
STRATEGIES: tuple[str, ...] = tuple(_TABLE)
# Strategies that need only member probabilities on val (computed once by `merge_many`).
_FROM_PREDICTIONS = tuple(s for s, c in _TABLE.items() if c.fits_on_val)


def make_strategy(strategy: str, /, **params: Any) -> Strategy:
    """The unfitted strategy object named `strategy` with `params` (a `seed` goes only to the
    strategies that draw random numbers); unknown strategies and options refused."""
    if strategy not in _TABLE:
        raise MergeError(f"unknown merge strategy '{strategy}'; valid strategies: "
                         f"{list(STRATEGIES)}")
    cls = _TABLE[strategy]
    return cls(**{k: v for k, v in params.items() if k != "seed" or k in cls.runtime})


def options_of(strategy: str) -> list[str]:
    """The options `strategy` takes (its parameters besides the seed)."""
    return sorted(set(make_strategy(strategy).get_params()) - {"seed"})


def merge(members: Sequence[Any], strategy: str, *, train: tuple | None = None,
          val: tuple | None = None, seed: int = 0, calibrate: bool = False,
          val_probs: np.ndarray | None = None, **options: Any):
    """Merge `members` (keras.Model or Member objects) into one `keras.Model` with `strategy`.

    `train` and `val` are `(x, y)` NumPy pairs with integer labels, used by strategies that
    fit something; options are the strategy's own parameters. `calibrate=True` appends a
    temperature-scaling layer fitted on `val` NLL. `val_probs` (members, rows, classes) are
    the members' probabilities on `val`, if already computed. Unknown strategies and unknown
    options are refused with the valid ones listed.
    """
    est = make_strategy(strategy, seed=seed, **options)
    if calibrate and val is None:
        raise MergeError(f"calibrate=True fits a temperature on 'val'; strategy "
                         f"'{strategy}' received val=None. Pass val=(x_val, y_val).")

    def build(teacher: str):
        return merge(members, teacher, train=train, val=val, seed=seed)

    model = est.merge(members, train=train, val=val, val_probs=val_probs, build=build)
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
        proto = make_strategy(s, seed=seed, **(options or {}).get(s, {}))
        oof = np.zeros(probs.shape[1:])
        for fit_rows, held_out in cv.split(np.zeros((len(y_val), 1)), y_val):  # labels only
            raw = (x_val[fit_rows], x_val[held_out]) if proto.needs_x else (None, None)
            est = proto.clone().fit(probs[:, fit_rows], y_val[fit_rows], x=raw[0])
            pred = est.predict(probs[:, held_out], x=raw[1])
            if s in calibrate:
                t = _calibrate.fit_temperature(est.predict(probs[:, fit_rows], x=raw[0]),
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
    options = {s: p.options(s) for s in STRATEGIES}
    for s in ("concat", "distill"):
        logs = {"log_dir": str(run.tensorboard_dir(s))} if run is not None and p.tensorboard else {}
        options[s] |= {"augment": augment, **logs}
    return options


def save_all(merged: dict[str, Any], run, *, check_x: np.ndarray, check_rows: int = 512):
    """Save each merged model to `merged/<strategy>.keras`; table of size and reload parity
    (max |Δ| between the model and its reloaded file on the first `check_rows` of `check_x`:
    a file that lost a weight or a layer differs on any rows, so a few hundred suffice)."""
    import pandas as pd

    from kernelib import io
    from kernelib.members import count_params

    check_x, rows = check_x[:check_rows], []
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


__all__ = ["STRATEGIES", "Average", "Concat", "Distill", "MajorityVote", "Select", "Soup",
           "Stacking", "Strategy", "Vote", "Weighted", "comparison_table", "make_strategy",
           "merge", "merge_many", "options_from_params", "options_of", "out_of_fold", "save",
           "save_all", "tradeoff_figure"]
