"""A run's members: the config's member files adapted, checked and recorded in
`members/members.json`; recipe members built for training."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kernelib import io
from kernelib.errors import MemberError
from kernelib.members.adapting import adapt
from kernelib.members.checks import check_compatible, check_outputs, count_params, probe_rows
from kernelib.members.files import Member, file_kind, load_keras, load_member, save_member


def from_spec(spec: Any, *, input_shape: tuple[int, ...], class_names: Sequence[str],
              value_range: tuple[float, float], path: str | Path | None = None) -> Member:
    """A member file of the config (`params.MemberSpec`), adapted to the data and checked.

    `path` overrides `spec.path` (the run's copy of a SavedModel folder).
    """
    member = load_member(path or spec.path, name=spec.name, trust=spec.trust)
    model = adapt(member.model, input_shape, preprocess=spec.preprocess,
                  class_names=spec.class_names, dataset_class_names=class_names,
                  output=spec.output, value_range=value_range, name=spec.name)
    check_compatible([model], input_shape=input_shape, n_classes=len(class_names),
                     probe=probe_rows(input_shape, value_range))
    member.model = model
    return member


def preflight(specs: Sequence[Any], info: dict[str, Any], *,
              inside: dict[str, Sequence[str] | None] | None = None) -> None:
    """Before any run folder exists: every member file loads, adapts and outputs probabilities.

    `info` is `data.dataset_info(...)` (input shape, classes, value range). `inside` maps
    each strategy of the run that looks inside members (concat, soup) to the member names
    it uses (None = all): a SavedModel member among them is refused.
    """
    from kernelib.errors import MergeError

    for spec in specs:
        if not spec.path:
            continue
        member = from_spec(spec, **_data_facts(info))
        uses = [s for s, names in (inside or {}).items() if names is None or spec.name in names]
        if member.opaque and uses:
            option = {"concat": "merge.concat.include", "soup": "merge.soup.ingredients"}
            raise MergeError(
                f"strategy '{uses[0]}' looks inside its members; member '{spec.name}' is a "
                "SavedModel, which kernelib cannot look inside. It can join average, vote, "
                f"weighted, select, stacking and distill: list the other members in "
                f"{option.get(uses[0], uses[0])}, or give it as a .keras file.")


def _data_facts(info: dict[str, Any]) -> dict[str, Any]:
    k = int(info["n_classes"])
    return {"input_shape": tuple(info["input_shape"]),
            "class_names": [str(c) for c in info.get("class_names") or range(k)],
            "value_range": tuple(info.get("value_range") or (info.get("min", 0.0),
                                                             info.get("max", 255.0)))}


def register(specs: Sequence[Any], run, *, input_shape: tuple[int, ...], n_classes: int,
             probe: np.ndarray | None = None):
    """Record the run's members in `members/members.json`; adapt and copy members given as files.

    `specs` are `params.MemberSpec`s; `run` is the `RunDir` (its data card, written first,
    gives the class names and value range). A SavedModel folder is copied into the run.
    Returns the member table.
    """
    import shutil

    import pandas as pd

    card = io.read_json(run.data_card) if run.data_card.exists() else {}
    facts = _data_facts({"input_shape": input_shape, "n_classes": n_classes, **card})
    rows = []
    for spec in specs:
        row = {"name": spec.name, "recipe": spec.recipe, "seed": spec.seed,
               "source": "file" if spec.path else "recipe", "given_path": spec.path,
               **spec.model_dump(include={"finetune_from", "image_size", "weights", "trainable",
                                          "preprocess", "class_names", "output", "trust",
                                          "bag"})}
        if spec.path:
            path = spec.path
            if file_kind(path, spec.name) == "saved_model":
                path = run.member_dir(spec.name) / "saved_model"
                with io.atomic_path(path) as tmp:
                    shutil.copytree(spec.path, tmp)
            member = from_spec(spec, path=path, **facts)
            if probe is not None:
                check_outputs(member.model, probe[:8], spec.name)
            save_member(member, run.member_model(spec.name))
            row["params"] = count_params(member.model)
            row["opaque"] = member.opaque
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
        model = load_keras(path, trust=bool(spec.get("trust")))
        model.name = spec["name"]
        out.append(Member(spec["name"], model, path=path, source=spec["source"]))
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
    card = io.read_json(run.data_card) if run.data_card.exists() else {}
    options = {"image_size": s.get("image_size"), "trainable": s.get("trainable", True),
               "value_range": _data_facts({"n_classes": n_classes, "input_shape": (),
                                           **card})["value_range"]}
    if s.get("finetune_from"):
        base = load_keras(run.require(run.member_model(s["finetune_from"]), "train"))
        return zoo.finetune(base, s["recipe"], preprocessor=preprocessor,
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
