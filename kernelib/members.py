"""Members: load and save Keras files, check that members fit together, tabulate them."""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kernelib import io
from kernelib.errors import IncompatibleMembersError, MemberError


@dataclass
class Member:
    """A trained classifier mapping the shared raw input to class probabilities."""

    name: str
    model: Any  # keras.Model
    path: Path | None = None
    source: str = "trained"


def load_member(path: str | Path, *, name: str | None = None, safe_mode: bool = True) -> Member:
    """Load a member from a `.keras` file (Keras' safe mode stays on unless asked otherwise)."""
    import keras

    path = Path(path)
    if not path.exists():
        raise MemberError(
            f"member file not found: expected a .keras file, received '{path}'. "
            "Check the member's 'path' (relative paths are read from the config's folder)."
        )
    if path.suffix != ".keras":
        raise MemberError(
            f"member '{name or path.stem}': expected a Keras 3 '.keras' file, received '{path.name}'. "
            "Re-save it with model.save('name.keras')."
        )
    if not zipfile.is_zipfile(path):
        raise MemberError(f"member '{name or path.stem}': '{path}' is not a valid .keras archive "
                          "(a .keras file is a zip); the file may be truncated or corrupted.")
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=safe_mode)
    except Exception as err:  # Keras raises many types here; the user needs one clear message
        raise MemberError(
            f"member '{name or path.stem}': could not load '{path}' with Keras "
            f"({type(err).__name__}: {str(err).splitlines()[0][:300]})"
        ) from err
    name = name or model.name
    model.name = name
    return Member(name=name, model=model, path=path, source="file")


def save_model(model, path: str | Path) -> Path:
    """Save a Keras model to a `.keras` file atomically."""
    path = Path(path)
    with io.atomic_path(path) as tmp:
        model.save(tmp)
    return path


def save_member(member: Member, path: str | Path) -> Path:
    """Save the member's model to a `.keras` file atomically."""
    member.path = save_model(member.model, path)
    return member.path


def as_models(members: Sequence[Any]) -> list[Any]:
    """Accept `Member` objects or bare `keras.Model`s; return the models, named uniquely."""
    models = [m.model if isinstance(m, Member) else m for m in members]
    names = [m.name if isinstance(m, Member) else m.name for m in members]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise IncompatibleMembersError(
            f"member names must be unique (they become layer names of the merged model); "
            f"received duplicates {dupes}. Rename them (model.name = '...')."
        )
    for model, name in zip(models, names, strict=True):
        model.name = name
    return models


def check_compatible(members: Sequence[Any], *, input_shape: tuple[int, ...] | None = None,
                     n_classes: int | None = None, probe: np.ndarray | None = None) -> None:
    """Refuse members that disagree on input shape or class count, or do not output probabilities.

    `input_shape`/`n_classes`, when given, are what the data needs; otherwise the first
    member sets them. `probe` (a few input rows) checks that outputs are probabilities.
    """
    models = as_models(members)
    ref_in = tuple(input_shape) if input_shape else tuple(models[0].input_shape[1:])
    ref_out = n_classes or models[0].output_shape[-1]
    what = "the data" if input_shape else f"member '{models[0].name}'"
    for m in models:
        if isinstance(m.input_shape, list) or isinstance(m.output_shape, list):
            raise IncompatibleMembersError(
                f"member '{m.name}' must have one input and one output; received "
                f"inputs {m.input_shape}, outputs {m.output_shape}."
            )
        shape = tuple(m.input_shape[1:])
        if shape != ref_in:
            raise IncompatibleMembersError(
                f"all members must take the same input shape; member '{m.name}' takes {shape}, "
                f"{what} needs {ref_in}. Retrain it on this data or drop it from 'members'."
            )
        k = m.output_shape[-1]
        if k != ref_out:
            raise IncompatibleMembersError(
                f"all members must predict the same classes; member '{m.name}' predicts {k} "
                f"classes, {what} has {ref_out}. Retrain it or drop it from 'members'."
            )
        if probe is not None:
            p = np.asarray(m(probe[:8], training=False), dtype="float64")
            if not (np.all(p >= -1e-6) and np.allclose(p.sum(axis=-1), 1.0, atol=1e-3)):
                raise IncompatibleMembersError(
                    f"member '{m.name}' must output class probabilities (a softmax); its outputs "
                    f"on sample rows sum to {p.sum(axis=-1)[:3].round(3).tolist()}... "
                    "Add a softmax layer to its end."
                )


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
        })
    return pd.DataFrame(rows).set_index("member")


def register(specs: Sequence[Any], run, *, input_shape: tuple[int, ...], n_classes: int,
             probe: np.ndarray | None = None):
    """Record the run's members in `members/members.json`; check and copy members given as files.

    `specs` are `params.MemberSpec`s; `run` is the `RunDir`. Returns the member table.
    """
    import pandas as pd

    rows = []
    for spec in specs:
        row = {"name": spec.name, "recipe": spec.recipe, "seed": spec.seed,
               "source": "file" if spec.path else "recipe", "given_path": spec.path,
               **spec.model_dump(include={"finetune_from", "image_size", "weights", "bag"})}
        if spec.path:
            member = load_member(spec.path, name=spec.name)
            check_compatible([member], input_shape=input_shape, n_classes=n_classes, probe=probe)
            save_member(member, run.member_model(spec.name))
            row["params"] = count_params(member.model)
        rows.append(row)
    io.write_json(run.members_spec, rows)
    return pd.DataFrame(rows).set_index("name")


def read_specs(run) -> list[dict[str, Any]]:
    """The member list written by the load stage."""
    return io.read_json(run.require(run.members_spec, "load"))


def load_run_members(run) -> list[Member]:
    """Every member of a run, in the order of `members.json` (trained or given)."""
    out = []
    for spec in read_specs(run):
        stage = "train" if spec["source"] == "recipe" else "load"
        path = run.require(run.member_model(spec["name"]), stage)
        m = load_member(path, name=spec["name"])
        m.source = spec["source"]
        out.append(m)
    return out


def spec(run, name: str) -> dict[str, Any]:
    """One member's entry of `members/members.json`."""
    specs = read_specs(run)
    for s in specs:
        if s["name"] == name:
            return s
    raise MemberError(f"member '{name}' is not in this run; members: {[s['name'] for s in specs]}")


def to_train(run, name: str | None = None) -> list[str]:
    """`[name]` (checked to be a recipe member), or every recipe member of the run in order."""
    specs = read_specs(run)
    if name is None:
        return [s["name"] for s in specs if s.get("recipe")]
    spec(run, name)
    return [name]


def build_member(run, name: str, *, n_classes: int):
    """The member to train, behind the run's preprocessing model.

    A fresh initialisation from its recipe, or, for a spec with `finetune_from`, the base
    member's trained weights (the base is trained earlier in the run: members train in
    `load.members` order).
    """
    import keras

    from kernelib import zoo

    s = spec(run, name)
    if not s.get("recipe"):
        raise MemberError(f"member '{name}' was given as a file ({s.get('given_path')}); it has "
                          "no recipe to train. Train only recipe members.")
    preprocessor = keras.saving.load_model(run.require(run.preprocessor, "preprocess"))
    options = {"image_size": s.get("image_size")}
    if s.get("finetune_from"):
        base = load_member(run.require(run.member_model(s["finetune_from"]), "train"))
        return zoo.finetune(base.model, s["recipe"], preprocessor=preprocessor,
                            n_classes=n_classes, name=name, seed=s["seed"], **options)
    return zoo.build(s["recipe"], preprocessor=preprocessor, n_classes=n_classes, name=name,
                     seed=s["seed"], weights=s.get("weights"), **options)


def histories(run) -> dict[str, Any]:
    """Training histories (DataFrames) of the run's trained members, by name."""
    import pandas as pd

    out = {}
    for s in read_specs(run):
        path = run.member_dir(s["name"]) / "history.csv"
        if path.exists():
            out[s["name"]] = pd.read_csv(path)
    return out
