"""Typed parameters: one pydantic model per stage, the source of truth for defaults.

The notebook `parameters` cells hold the same defaults (a test keeps them in step), and a
YAML config is validated against `Config` before anything runs. Unknown keys are errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from kernelib.errors import ConfigError

STAGES = ("load", "preprocess", "train", "merge", "evaluate", "export")
MERGE_STRATEGIES = ("average", "concat")
EXPORT_FORMATS = ("keras", "saved_model")
RECIPES = ("mlp", "cnn", "resnet")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class MemberSpec(_Strict):
    """One member: trained from a zoo recipe, or read from a `.keras` file."""

    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_\-]{0,63}$", description="unique member name")
    recipe: Literal["mlp", "cnn", "resnet"] | None = Field(None, description="zoo recipe to train")
    path: str | None = Field(None, description="a trained .keras file to use as is")
    seed: int = Field(0, ge=0, description="seed of the member's initialisation and data order")

    @model_validator(mode="after")
    def _one_source(self) -> MemberSpec:
        if (self.recipe is None) == (self.path is None):
            raise ValueError(
                f"member '{self.name}' needs exactly one of 'recipe' or 'path'; "
                f"received recipe={self.recipe!r}, path={self.path!r}"
            )
        return self


class CommonParams(_Strict):
    """Parameters every stage notebook takes."""

    run_dir: str = Field("../runs/lab", description="run folder the stage reads from and writes to")
    seed: int = Field(0, ge=0, description="global seed (Python, NumPy, TensorFlow)")
    deterministic: bool = Field(True, description="enable TensorFlow op determinism")


class LoadParams(_Strict):
    """Stage 1: which data and which members."""

    dataset: Literal["digits"] = Field("digits", description="built-in dataset name")
    members: list[MemberSpec] = Field(
        default_factory=lambda: [
            MemberSpec(name="mlp_0", recipe="mlp", seed=0),
            MemberSpec(name="cnn_0", recipe="cnn", seed=1),
        ],
        min_length=1,
        description="member models: zoo recipes to train or .keras files to load",
    )

    @model_validator(mode="after")
    def _unique_names(self) -> LoadParams:
        names = [m.name for m in self.members]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"member names must be unique; received duplicates {dupes}")
        return self


class PreprocessParams(_Strict):
    """Stage 2: seeded stratified split and normalisation."""

    val_fraction: float = Field(0.15, gt=0.0, lt=0.5, description="share of rows for validation")
    test_fraction: float = Field(0.2, gt=0.0, lt=0.5, description="share of rows for test")


class TrainSettings(_Strict):
    """Stage 3 hyper-parameters shared by every member trained in the run."""

    epochs: int = Field(30, ge=1, le=10_000, description="maximum epochs per member")
    batch_size: int = Field(64, ge=1, le=65_536, description="mini-batch size")
    learning_rate: float = Field(1e-3, gt=0.0, le=1.0, description="Adam learning rate")
    patience: int = Field(5, ge=1, description="early-stopping patience on val loss (epochs)")


class TrainParams(TrainSettings):
    """Stage 3 notebook parameters: the shared settings plus the one member it trains."""

    name: str = Field("mlp_0", description="member to train (one of load.members)")


class MergeParams(_Strict):
    """Stage 4: which strategies to build."""

    strategies: list[Literal["average", "concat"]] = Field(
        default_factory=lambda: ["average", "concat"], min_length=1,
        description="merge strategies to build, each into merged/<strategy>.keras",
    )
    weights: list[float] | None = Field(
        None, description="fixed member weights for 'average' (load.members order); None = uniform"
    )
    concat_epochs: int = Field(20, ge=1, description="maximum epochs for the concat head")
    concat_learning_rate: float = Field(1e-3, gt=0.0, le=1.0, description="head learning rate")


class EvaluateParams(_Strict):
    """Stage 5: how the shipped model is chosen."""

    select_by: Literal["val_accuracy", "val_nll"] = Field(
        "val_nll", description="validation metric that picks the model to export"
    )


class ExportParams(_Strict):
    """Stage 6: formats and the serving name/version."""

    formats: list[Literal["keras", "saved_model"]] = Field(
        default_factory=lambda: ["keras", "saved_model"], min_length=1,
        description="export formats",
    )
    name: str = Field("digits", pattern=r"^[A-Za-z0-9_\-]+$", description="served model name")
    version: int = Field(1, ge=1, description="served model version (TF Serving folder)")


class RunParams(_Strict):
    """Run-wide settings."""

    name: str = Field("run", pattern=r"^[A-Za-z0-9_\-]+$", description="prefix of the run id")
    seed: int = Field(0, ge=0, description="global seed")
    deterministic: bool = Field(True, description="enable TensorFlow op determinism")


class Config(_Strict):
    """A whole kernelib run: what `kernelib run CONFIG` validates before anything runs."""

    run: RunParams = Field(default_factory=RunParams)
    load: LoadParams = Field(default_factory=LoadParams)
    preprocess: PreprocessParams = Field(default_factory=PreprocessParams)
    train: TrainSettings = Field(default_factory=TrainSettings)
    merge: MergeParams = Field(default_factory=MergeParams)
    evaluate: EvaluateParams = Field(default_factory=EvaluateParams)
    export: ExportParams = Field(default_factory=ExportParams)

    @model_validator(mode="after")
    def _weights_match_members(self) -> Config:
        w = self.merge.weights
        if w is not None and len(w) != len(self.load.members):
            raise ValueError(
                f"merge.weights needs one weight per member ({len(self.load.members)}); "
                f"received {len(w)}"
            )
        return self


STAGE_MODELS: dict[str, type[BaseModel]] = {
    "load": LoadParams,
    "preprocess": PreprocessParams,
    "train": TrainParams,
    "merge": MergeParams,
    "evaluate": EvaluateParams,
    "export": ExportParams,
}


def _format_errors(err: ValidationError, where: str) -> str:
    lines = []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            msg = "unknown key; remove it or fix its spelling"
        else:
            msg = e["msg"]
        received = e.get("input")
        shown = repr(received) if not isinstance(received, dict) else "{...}"
        if len(shown) > 80:
            shown = shown[:77] + "..."
        lines.append(f"  {path}: {msg} (received {shown})")
    return f"invalid {where}:\n" + "\n".join(lines)


def validate_config(data: dict[str, Any], *, source: str = "config") -> Config:
    """Validate a config mapping; raise ConfigError naming every bad key path."""
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source} must be a mapping of sections {list(Config.model_fields)}; "
            f"received {type(data).__name__}"
        )
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None


def load_config(path: str | Path) -> Config:
    """Read and validate a YAML config file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: expected a YAML file, received '{path}'")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    return validate_config(data, source=str(path))


def validate_stage(stage: str, values: dict[str, Any]) -> BaseModel:
    """Validate one stage's notebook parameters (everything but the common ones)."""
    if stage not in STAGE_MODELS:
        raise ConfigError(f"unknown stage '{stage}'; valid stages: {list(STAGE_MODELS)}")
    try:
        return STAGE_MODELS[stage].model_validate(values)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, f"parameters of stage '{stage}'")) from None


def validate_common(values: dict[str, Any]) -> CommonParams:
    """Validate the parameters every notebook takes (run_dir, seed, deterministic)."""
    try:
        return CommonParams.model_validate(values)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, "common notebook parameters")) from None


def notebook_defaults(stage: str) -> dict[str, Any]:
    """The defaults a stage notebook's `parameters` cell must hold (JSON-compatible)."""
    common = CommonParams().model_dump(mode="json")
    return {**common, **STAGE_MODELS[stage]().model_dump(mode="json")}


def describe(stage: str | None = None) -> list[dict[str, Any]]:
    """Every parameter of one stage (or all) with type, default and help, for `kernelib params`."""
    stages = [stage] if stage else list(STAGE_MODELS)
    rows = []
    for s in stages:
        if s not in STAGE_MODELS:
            raise ConfigError(f"unknown stage '{s}'; valid stages: {list(STAGE_MODELS)}")
        for name, field in STAGE_MODELS[s].model_fields.items():
            default = field.get_default(call_default_factory=True)
            if isinstance(default, list):
                default = [d.model_dump(exclude_none=True) if isinstance(d, BaseModel) else d
                           for d in default]
            rows.append({"stage": s, "name": name, "type": _type_name(field.annotation),
                         "default": default, "help": field.description or ""})
    return rows


def _type_name(annotation: Any) -> str:
    return str(annotation).replace("typing.", "").replace("kernelib.params.", "")
