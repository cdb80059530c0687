"""Checks and helpers shared by every merge strategy."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from kernelib.errors import IncompatibleMembersError, MergeError
from kernelib.inference import predict_proba as predict
from kernelib.members import (
    as_models,
    check_compatible,
    final_layer,
    is_opaque,
    output_kind,
    probe_rows,
    without_augmentation,
)
from kernelib.metrics import EPS, correct_rows, nll_rows  # noqa: F401  EPS: merge's clip too

_PROBABILITIES = ("softmax", "probabilities")
# what a member kernelib cannot look inside (a SavedModel) can join: predictions only
PREDICTION_LEVEL = ("average", "vote", "weighted", "select", "stacking", "distill")


def prepare(members: Sequence[Any], strategy: str, *, min_members: int = 2) -> list[Any]:
    """Members as uniquely named, mutually compatible inference models; at least `min_members`.

    Compatible: one input shape, one class count, finite outputs, and every member outputs
    class probabilities (a final softmax, or rows that sum to one on a probe). Augmentation
    layers are removed (training-only). Strategies that look inside the members (`concat`,
    `soup`) refuse a member that is a SavedModel.
    """
    if len(members) < min_members:
        raise MergeError(
            f"strategy '{strategy}' needs at least {min_members} members; received "
            f"{len(members)}. Add members to 'load.members'."
        )
    models = [without_augmentation(m) for m in as_models(members)]
    if strategy not in PREDICTION_LEVEL:
        check_inside(models, strategy)
    check_compatible(models)
    check_finite(models)
    check_activations(models)
    return models


def check_inside(models: Sequence[Any], strategy: str, what: str = "looks inside the members") -> None:
    """Refuse members kernelib cannot look inside (SavedModels) for `strategy`, naming them."""
    opaque = [m.name for m in models if is_opaque(m)]
    if opaque:
        raise MergeError(
            f"strategy '{strategy}' {what}; member '{opaque[0]}' is a SavedModel, which "
            f"kernelib cannot look inside. It can join {list(PREDICTION_LEVEL)}; give it as a "
            f".keras file to use it with '{strategy}', or drop it from this strategy.")


def check_finite(models: Sequence[Any]) -> None:
    """Refuse a member whose outputs on sample rows are NaN or infinite, naming it."""
    for m in models:
        p = np.asarray(m(probe_rows(m.input_shape[1:], rows=4), training=False))
        if not np.isfinite(p).all():
            raise IncompatibleMembersError(
                f"member '{m.name}' outputs NaN or infinite values on sample input rows "
                "(expected class probabilities); its weights are probably NaN (a diverged "
                "training or a damaged file). Retrain it or drop it from the members.")


def output_activation(model) -> str:
    """'softmax' for a final softmax, else 'probabilities' when probe rows are probabilities,
    else the final layer's activation ('linear', ...) or 'unnormalised'."""
    if output_kind(model) == "probabilities":
        return "softmax"
    p = np.asarray(model(probe_rows(model.input_shape[1:], rows=4), training=False),
                   dtype="float64")
    if np.all(p >= -1e-6) and np.allclose(p.sum(axis=-1), 1.0, atol=1e-3):
        return "probabilities"
    activation = getattr(final_layer(model), "activation", None)
    return getattr(activation, "__name__", "unnormalised") if callable(activation) else "unnormalised"


def check_activations(models: Sequence[Any]) -> None:
    """Refuse members whose outputs are not class probabilities, naming the odd one out."""
    acts = {m.name: output_activation(m) for m in models}
    bad = [n for n, a in acts.items() if a not in _PROBABILITIES]
    if not bad:
        return
    good = [n for n, a in acts.items() if a in _PROBABILITIES]
    others = (f", while member '{good[0]}' outputs probabilities ({acts[good[0]]})" if good
              else "")
    raise IncompatibleMembersError(
        f"all members must output class probabilities through one output activation "
        f"(softmax); member '{bad[0]}' ends in '{acts[bad[0]]}'{others}. Add a softmax to "
        f"the end of '{bad[0]}' (or convert its logits) or drop it from 'members'."
    )


def check_xy(data: Any, what: str, strategy: str, n_classes: int, *,
             input_shape: tuple[int, ...] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Validate an `(x, y)` pair of NumPy arrays with integer labels in range."""
    if data is None:
        raise MergeError(f"strategy '{strategy}' needs '{what}=(x, y)'; received None. Pass "
                         f"the {what} split as a pair of arrays (rows the members were not "
                         f"trained on, for 'val').")
    try:
        x, y = data
    except (TypeError, ValueError):
        raise MergeError(f"'{what}' must be a pair (x, y); received {type(data).__name__}") from None
    from kernelib.data import Images  # an image folder's rows stay files, decoded per batch

    x, y = (x if isinstance(x, Images) else np.asarray(x)), np.asarray(y)
    if len(x) != len(y) or len(y) == 0:
        raise MergeError(f"'{what}' needs as many labels as rows (and at least one); "
                         f"received {len(x)} rows and {len(y)} labels.")
    if input_shape is not None and tuple(x.shape[1:]) != tuple(input_shape):
        raise MergeError(f"'{what}' rows must have the members' input shape {tuple(input_shape)}; "
                         f"received rows of shape {tuple(x.shape[1:])}.")
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise MergeError(f"'{what}' labels must be a 1-D integer array; received dtype "
                         f"{y.dtype} with shape {y.shape}.")
    if y.min() < 0 or y.max() >= n_classes:
        raise MergeError(f"'{what}' labels must lie in [0, {n_classes - 1}]; received values "
                         f"from {y.min()} to {y.max()}.")
    return x, y


def check_val(models: Sequence[Any], val: Any, strategy: str) -> tuple[np.ndarray, np.ndarray]:
    """`check_xy` for the validation pair of these members (their classes and input shape)."""
    return check_xy(val, "val", strategy, n_classes(models),
                    input_shape=tuple(models[0].input_shape[1:]))


def n_classes(models: Sequence[Any]) -> int:
    return int(models[0].output_shape[-1])


def leaf_layers(layer) -> list[Any]:
    """Every non-container layer of a model, nested models (e.g. backbones) flattened in order."""
    sub = getattr(layer, "layers", None)
    return [layer] if sub is None else [leaf for s in sub for leaf in leaf_layers(s)]


def model_input(models: Sequence[Any]):
    """A fresh `keras.Input` matching the members' shared input."""
    import keras

    return keras.Input(shape=tuple(models[0].input_shape[1:]), name="image")


def member_probabilities(models: Sequence[Any], x: np.ndarray, *,
                         given: np.ndarray | None = None) -> np.ndarray:
    """Every member's probabilities on `x` as one (members, rows, classes) float64 array.

    Computed once per call; `given` is a cache of exactly that array (e.g. from `merge_many`),
    checked for shape and used instead of predicting again.
    """
    shape = (len(models), len(x), n_classes(models))
    if given is not None:
        given = np.asarray(given, dtype="float64")
        if given.shape != shape:
            raise MergeError(f"'val_probs' must hold (members, rows, classes) = {shape} member "
                             f"probabilities on val; received shape {given.shape}. Pass "
                             f"val_probs=None to compute them.")
        return given
    return np.stack([predict(m, x) for m in models])


def nll(p: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-likelihood of labels `y` under probability rows `p` (clipped at 1e-7)."""
    return float(nll_rows(y, p).mean())


def accuracy(p: np.ndarray, y: np.ndarray) -> float:
    """Share of rows whose most probable class is the label."""
    return float(correct_rows(y, p).mean())


def check_choice(value: Any, valid: Sequence[Any], option: str, strategy: str) -> None:
    """Refuse an option value outside `valid`, listing the valid ones."""
    if value not in valid:
        raise MergeError(f"strategy '{strategy}': option '{option}' must be one of "
                         f"{list(valid)}; received {value!r}")


def pick(members: Sequence[Any], names: Sequence[str] | None, strategy: str,
         option: str) -> list[Any]:
    """The members named in `names` (all of them when None), refusing unknown names."""
    if names is None:
        return list(members)
    models = as_models(members)
    by_name = {m.name: member for m, member in zip(models, members, strict=True)}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise MergeError(f"strategy '{strategy}': '{option}' names {unknown}, which are not "
                         f"members; members: {list(by_name)}")
    return [by_name[n] for n in names]
