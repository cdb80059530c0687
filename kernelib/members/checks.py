"""Members checked against each other and the data, and the member table."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from kernelib import io
from kernelib.errors import IncompatibleMembersError
from kernelib.members.adapting import input_shape_of
from kernelib.members.files import Member


def as_models(members: Sequence[Any]) -> list[Any]:
    """Accept `Member` objects or bare `keras.Model`s; return the models, named uniquely.

    Repeated names (two `keras.models.clone_model` copies, one file loaded twice) are
    renamed as Keras names layers, `sequential`, `sequential_1`, ..., with a warning.
    """
    models = [m.model if isinstance(m, Member) else m for m in members]
    names = [m.name for m in members]
    if len({id(m) for m in models}) < len(models):
        raise IncompatibleMembersError(
            f"the same model object is given more than once (names {names}); pass distinct "
            "members (load the file again, or keras.models.clone_model with its weights).")
    unique, renamed = [], []
    for n in names:
        new, i = n, 0
        while new in unique:
            i += 1
            new = f"{n}_{i}"
        unique.append(new)
        if new != n:
            renamed.append(f"'{n}' -> '{new}'")
    if renamed:
        warnings.warn(f"member names must be unique (they name the merged model's layers); "
                      f"renamed {', '.join(renamed)}.", stacklevel=2)
    for model, member, name in zip(models, members, unique, strict=True):
        model.name = name
        if isinstance(member, Member):
            member.name = name
    return models


def probe_rows(input_shape: Sequence[int], value_range: tuple[float, float] = (0.0, 1.0), *,
               rows: int = 8, seed: int = 0) -> np.ndarray:
    """Seeded uniform rows in `value_range`: enough to see NaN or non-probability outputs."""
    lo, hi = value_range
    return np.random.default_rng(seed).uniform(lo, hi, (rows, *input_shape)).astype("float32")


def check_outputs(model, probe: np.ndarray, name: str | None = None) -> None:
    """Refuse a member whose outputs on `probe` are NaN/infinite or not class probabilities."""
    name = name or model.name
    p = np.asarray(model(probe, training=False), dtype="float64")
    if not np.isfinite(p).all():
        raise IncompatibleMembersError(
            f"member '{name}' outputs NaN or infinite values on sample input rows (expected "
            "class probabilities); its weights are probably NaN (a diverged training or a "
            "damaged file). Retrain it, or give another file.")
    if not (np.all(p >= -1e-6) and np.allclose(p.sum(axis=-1), 1.0, atol=1e-3)):
        raise IncompatibleMembersError(
            f"member '{name}' must output class probabilities; its outputs on sample rows "
            f"sum to {p.sum(axis=-1)[:3].round(3).tolist()}... If they are logits, declare "
            f"'output: logits' on the member (Python API: adapt(..., output='logits')); "
            "otherwise add a softmax layer to its end.")


def check_compatible(members: Sequence[Any], *, input_shape: tuple[int, ...] | None = None,
                     n_classes: int | None = None, probe: np.ndarray | None = None) -> None:
    """Refuse members that disagree on input shape or class count, or do not output probabilities.

    `input_shape`/`n_classes`, when given, are what the data needs; otherwise the first
    member sets them. `probe` (a few input rows) checks that outputs are probabilities.
    """
    models = as_models(members)
    for m in models:
        input_shape_of(m, m.name)
    ref_in = tuple(input_shape) if input_shape else tuple(models[0].input_shape[1:])
    ref_out = n_classes or models[0].output_shape[-1]
    what = "the data" if input_shape else f"member '{models[0].name}'"
    for m in models:
        shape = tuple(m.input_shape[1:])
        if shape != ref_in:
            raise IncompatibleMembersError(
                f"all members must take the same input shape; member '{m.name}' takes {shape}, "
                f"{what} needs {ref_in}. Put a front on it (members.adapt, or 'preprocess' in "
                "the member spec), retrain it on this data, or drop it from 'members'."
            )
        k = m.output_shape[-1]
        if k != ref_out:
            raise IncompatibleMembersError(
                f"all members must predict the same classes; member '{m.name}' predicts {k} "
                f"classes, {what} has {ref_out}. Retrain it or drop it from 'members'."
            )
        if probe is not None:
            check_outputs(m, probe[:8], m.name)


def count_params(model) -> int:
    return int(sum(int(np.prod(w.shape)) for w in model.weights))


def member_table(members: Sequence[Member]):
    """One row per member: source, parameters, file size, input shape, classes."""
    import pandas as pd

    rows = []
    for m in members:
        rows.append({
            "member": m.name,
            "source": m.source,
            "params": count_params(m.model),
            "trainable_params": int(sum(int(np.prod(w.shape)) for w in m.model.trainable_weights)),
            "file_kb": round(io.size_bytes(m.path) / 1024, 1) if m.path and m.path.exists() else None,
            "input_shape": str(tuple(m.model.input_shape[1:])),
            "classes": int(m.model.output_shape[-1]),
            "opaque": m.opaque,
        })
    return pd.DataFrame(rows).set_index("member")
