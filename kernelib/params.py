"""Typed parameters: one pydantic model per stage, the source of truth for defaults.

The notebook `parameters` cells hold the same defaults (a test keeps them in step), and a
YAML config is validated against `Config` before anything runs. Unknown keys are errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from kernelib import data
from kernelib.errors import ConfigError
from kernelib.merge_params import MergeSettings, check_against_members
from kernelib.schema import Strict, describe_model, format_errors
from kernelib.specs import (  # noqa: F401  moved to kernelib.specs
    BACKBONES,
    PREPROCESS,
    RECIPES,
    ArraysSpec,
    DatasetSpec,
    FolderSpec,
    MemberSpec,
    Resources,
)

STAGES = ("load", "preprocess", "train", "merge", "evaluate", "export")
EXPORT_FORMATS = ("keras", "saved_model", "tflite", "tflite_fp16", "tflite_dynamic", "tflite_int8",
                  "onnx", "h5")
DISTRIBUTIONS = ("none", "mirrored", "multi_worker", "auto")


def dataset_spec(value: Any) -> str | FolderSpec | ArraysSpec:
    """A `load.dataset` value validated on its own (a built-in name or a spec mapping)."""
    try:
        return LoadParams.model_validate({"dataset": value}).dataset
    except ValidationError as err:
        raise ConfigError(format_errors(err, "load.dataset")) from None


class CommonParams(Strict):
    """Parameters every stage notebook takes."""

    run_dir: str | None = Field(
        None, description="run folder the stage reads from and writes to; None = the lab's: "
                          "runs/$KERNELIB_LAB_RUN (`LAB_RUN=name make lab`), else ../runs/lab")
    seed: int = Field(0, ge=0, description="global seed (Python, NumPy, TensorFlow)")
    deterministic: bool = Field(True, description="enable TensorFlow op determinism")


class LoadParams(Strict):
    """Stage 1: which data and which members."""

    dataset: Literal[data.DATASETS] | DatasetSpec = Field(
        "digits", description="a built-in name, {kind: folder, path, image_size, color_mode, "
                              "class_names, skip_unreadable} or {kind: arrays, path}")
    train_rows: int | None = Field(
        None, ge=1, description="keep a seeded, stratified subset of this many training rows "
                                "(before val is carved from them); given val/test splits stay "
                                "whole. None = every training row")
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

    @model_validator(mode="after")
    def _finetune_bases(self) -> LoadParams:
        earlier: dict[str, MemberSpec] = {}
        for m in self.members:
            base = earlier.get(m.finetune_from) if m.finetune_from else None
            if m.finetune_from and (base is None or base.recipe != m.recipe):
                raise ValueError(
                    f"member '{m.name}': 'finetune_from' must name a recipe member listed "
                    f"before it with the same recipe ({m.recipe!r}); received "
                    f"finetune_from={m.finetune_from!r}. Valid: "
                    f"{[n for n, e in earlier.items() if e.recipe == m.recipe]}"
                )
            if base is not None and (m.image_size != base.image_size or m.weights):
                # same weight shapes at any image size: the zoo's own check cannot see it
                raise ValueError(
                    f"member '{m.name}' starts from '{base.name}'s trained weights, so it takes "
                    f"its image_size ({base.image_size}) and no 'weights' file of its own; "
                    f"received image_size={m.image_size}, weights={m.weights!r}. Remove them "
                    "from the fine-tune."
                )
            earlier[m.name] = m
        return self


class AugmentParams(Strict):
    """Training-time augmentation in ImageDataGenerator's words, run by Keras 3 Random* layers
    in the tf.data training pipeline only (never in a merged or exported model)."""

    rotation_range: float = Field(0.0, ge=0.0, le=180.0, description="degrees, both ways "
                                  "(RandomRotation)")
    width_shift_range: float = Field(0.0, ge=0.0, lt=1.0, description="share of the width, both "
                                     "ways (RandomTranslation)")
    height_shift_range: float = Field(0.0, ge=0.0, lt=1.0, description="share of the height, "
                                      "both ways (RandomTranslation)")
    shear_range: float = Field(0.0, ge=0.0, le=45.0, description="shear angle in degrees, both "
                               "ways (RandomShear, x_factor = tan(angle))")
    zoom_range: float = Field(0.0, ge=0.0, lt=1.0, description="zoom in or out by up to this "
                              "share (RandomZoom)")
    horizontal_flip: bool = Field(False, description="flip left-right at random (RandomFlip)")
    vertical_flip: bool = Field(False, description="flip up-down at random (RandomFlip)")
    brightness_range: tuple[float, float] | None = Field(
        None, description="[low, high] around 1, e.g. [0.8, 1.2]: adds (factor - 1) x the pixel "
                          "range (RandomBrightness; additive, where ImageDataGenerator scales)")
    contrast: float = Field(0.0, ge=0.0, lt=1.0, description="contrast factor (RandomContrast)")
    erasing: float = Field(0.0, ge=0.0, le=1.0, description="probability of erasing a random "
                           "patch (RandomErasing)")

    @model_validator(mode="after")
    def _brightness(self) -> AugmentParams:
        b = self.brightness_range
        if b is not None and not 0.0 <= b[0] <= 1.0 <= b[1] <= 2.0:
            raise ValueError(f"brightness_range must be [low, high] with 0 <= low <= 1 <= high "
                             f"<= 2; received {list(b)}")
        return self


class PreprocessParams(Strict):
    """Stage 2: seeded stratified split, normalisation and training-time augmentation."""

    val_fraction: float = Field(0.15, gt=0.0, lt=0.5, description="share of rows for validation")
    test_fraction: float = Field(0.2, gt=0.0, lt=0.5, description="share of rows for test")
    augment: AugmentParams | None = Field(
        None, description="augmentation of training batches (members, concat heads, distill "
                          "students); None = none")


class TrainSettings(Strict):
    """Stage 3 hyper-parameters shared by every member trained in the run."""

    epochs: int = Field(30, ge=1, le=10_000, description="maximum epochs per member")
    batch_size: int = Field(64, ge=1, le=65_536, description="mini-batch size")
    learning_rate: float = Field(1e-3, gt=0.0, le=1.0, description="Adam learning rate")
    patience: int = Field(5, ge=1, description="early-stopping patience on val loss (epochs)")
    tensorboard: bool = Field(True, description="log each member's per-epoch scalars to "
                              "tensorboard/<name>/ in the run folder (`make tensorboard RUN=id`)")
    distribution: Literal[DISTRIBUTIONS] = Field(
        "none", description="tf.distribute strategy of members, concat heads and distill "
                            "students: none, mirrored (every GPU of the machine), multi_worker "
                            "(MultiWorkerMirroredStrategy from TF_CONFIG), auto (mirrored when "
                            "more than one GPU is visible); batch_size is per replica")


class TrainParams(TrainSettings):
    """Stage 3 notebook parameters: the shared settings plus the member it trains."""

    name: str | None = Field(None, description="member to train (one of load.members); None "
                             "trains every recipe member in turn (the JupyterLab default)")


class MergeParams(MergeSettings):
    """Stage 4 notebook parameters: the merge settings plus the run's distribution strategy."""

    distribution: Literal[DISTRIBUTIONS] = Field(
        "none", description="tf.distribute strategy of concat heads and distill students "
                            "(`kernelib run` passes train.distribution)")


class EvaluateParams(Strict):
    """Stage 5: how the shipped model is chosen and how the evidence is computed."""

    select_by: Literal["val_accuracy", "val_nll", "val_brier", "val_ece", "val_macro_f1"] = Field(
        "val_nll", description="validation metric that picks the model to export"
    )
    top_k: int = Field(3, ge=1, le=100, description="k of the top-k accuracy column")
    ece_bins: int = Field(15, ge=2, le=100, description="equal-width confidence bins of ECE/MCE")
    bootstrap_resamples: int = Field(
        1000, ge=100, le=100_000, description="bootstrap resamples of the 95% intervals (seeded)"
    )
    timing_repeats: int = Field(
        30, ge=3, le=10_000, description="timed calls per model for the batch-1 latency median"
    )


class ExportParams(Strict):
    """Stage 6: formats, the serving name/version, verification, pruning and quantization."""

    formats: list[Literal[EXPORT_FORMATS]] = Field(
        default_factory=lambda: list(EXPORT_FORMATS), min_length=1,
        description="export formats, each verified by its own runtime on the test split",
    )
    name: str = Field("digits", pattern=r"^[A-Za-z0-9_\-]+$", description="served model name")
    model: str | None = Field(None, description="member or merged model to export (a member "
                              "name or a strategy); None = the model the evaluate stage selected")
    version: int = Field(1, ge=1, description="served model version (TF Serving folder)")
    overwrite: bool = Field(True, description="replace this run's earlier exports of this "
                            "name and version when the stage runs again (false refuses); "
                            "other SavedModel versions are never deleted")
    calibration_rows: int = Field(200, ge=1, le=100_000, description="train rows that calibrate "
                                  "tflite_int8 (its representative dataset)")
    timing_repeats: int = Field(50, ge=3, le=10_000, description="repeats of each latency and "
                                "throughput measurement (median reported)")
    top_k: int = Field(3, ge=1, description="classes shown per input in the predict example")
    prune_sparsities: list[float] = Field(
        default_factory=lambda: [0.0, 0.5, 0.75, 0.9],
        description="sparsity sweep of magnitude pruning, each in [0, 1); [] skips it")
    prune_epochs: int = Field(2, ge=1, le=1000, description="fine-tuning epochs per pruned model")
    prune_learning_rate: float = Field(1e-3, gt=0.0, le=1.0, description="fine-tuning learning "
                                       "rate while pruning")
    export_pruned: float | None = Field(
        None, description="also export the model pruned to this sparsity (one of "
                          "prune_sparsities, above 0) as NAME-pruned; None = no")
    pruned_formats: list[Literal[EXPORT_FORMATS]] = Field(
        default_factory=lambda: ["keras", "tflite"], min_length=1,
        description="formats of the pruned variant")
    quantize_keras: bool = Field(True, description="compare Keras model.quantize(int8) with the "
                                 "TFLite quantized formats")
    intended_use: str | None = Field(None, description="intended-use text of the model card "
                                     "(None = generated from the data card)")

    @model_validator(mode="after")
    def _pruning(self) -> ExportParams:
        bad = [s for s in self.prune_sparsities if not 0.0 <= s < 1.0]
        if bad:
            raise ValueError(f"prune_sparsities must lie in [0, 1); received {bad}")
        if self.export_pruned is not None and (self.export_pruned not in self.prune_sparsities
                                               or self.export_pruned == 0):
            raise ValueError(f"export_pruned must be one of prune_sparsities above 0 "
                             f"{[s for s in self.prune_sparsities if s > 0]}; received "
                             f"{self.export_pruned}")
        return self


class RunParams(Strict):
    """Run-wide settings."""

    name: str = Field("run", pattern=r"^[A-Za-z0-9_\-]+$", description="prefix of the run id")
    seed: int = Field(0, ge=0, description="global seed")
    deterministic: bool = Field(True, description="enable TensorFlow op determinism")
    resources: Resources = Field(default_factory=Resources, description="--executor ray: what "
                                 "each step reserves unless its member sets 'resources'")


class Config(Strict):
    """A whole kernelib run: what `kernelib run CONFIG` validates before anything runs."""

    run: RunParams = Field(default_factory=RunParams)
    load: LoadParams = Field(default_factory=LoadParams)
    preprocess: PreprocessParams = Field(default_factory=PreprocessParams)
    train: TrainSettings = Field(default_factory=TrainSettings)
    merge: MergeSettings = Field(default_factory=MergeSettings)
    evaluate: EvaluateParams = Field(default_factory=EvaluateParams)
    export: ExportParams = Field(default_factory=ExportParams)

    @model_validator(mode="after")
    def _merge_names_members(self) -> Config:
        check_against_members(self.merge, [m.name for m in self.load.members])
        return self

    @model_validator(mode="after")
    def _export_model_known(self) -> Config:
        valid = [m.name for m in self.load.members] + list(self.merge.strategies)
        if self.export.model is not None and self.export.model not in valid:
            raise ValueError(f"export.model names {self.export.model!r}, which is neither a "
                             f"member nor a merge strategy of this config; valid: {valid}")
        return self


STAGE_MODELS: dict[str, type[BaseModel]] = {
    "load": LoadParams,
    "preprocess": PreprocessParams,
    "train": TrainParams,
    "merge": MergeParams,
    "evaluate": EvaluateParams,
    "export": ExportParams,
}


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
        raise ConfigError(format_errors(err, source)) from None


def load_config(path: str | Path) -> Config:
    """Read and validate a YAML config file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: expected a YAML file, received '{path}'")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    if data is None:  # an empty file is a mistake (a wrong path, a truncated copy), not the demo
        raise ConfigError(f"config file '{path}' is empty; expected a YAML mapping of sections "
                          f"{list(Config.model_fields)}. Start from configs/smoke.yaml, or write "
                          "'{}' to run every default on purpose.")
    return validate_config(data, source=str(path))


def validate_stage(stage: str, values: dict[str, Any]) -> BaseModel:
    """Validate one stage's notebook parameters (everything but the common ones)."""
    if stage not in STAGE_MODELS:
        raise ConfigError(f"unknown stage '{stage}'; valid stages: {list(STAGE_MODELS)}")
    try:
        return STAGE_MODELS[stage].model_validate(values)
    except ValidationError as err:
        raise ConfigError(format_errors(err, f"parameters of stage '{stage}'")) from None


def validate_common(values: dict[str, Any]) -> CommonParams:
    """Validate the parameters every notebook takes (run_dir, seed, deterministic)."""
    try:
        return CommonParams.model_validate(values)
    except ValidationError as err:
        raise ConfigError(format_errors(err, "common notebook parameters")) from None


def describe(stage: str | None = None) -> list[dict[str, Any]]:
    """Every parameter of one stage (or all) with type, default and help, for `kernelib params`;
    a nested section's parameters as `section.name` (`select.size`)."""
    stages = [stage] if stage else list(STAGE_MODELS)
    unknown = [s for s in stages if s not in STAGE_MODELS]
    if unknown:
        raise ConfigError(f"unknown stage '{unknown[0]}'; valid stages: {list(STAGE_MODELS)}")
    return [{"stage": s, **row} for s in stages for row in describe_model(STAGE_MODELS[s])]
