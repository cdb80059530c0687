"""Typed parameters: one pydantic model per stage, the source of truth for defaults.

The notebook `parameters` cells hold the same defaults (a test keeps them in step), and a
YAML config is validated against `Config` before anything runs. Unknown keys are errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kernelib import data, zoo
from kernelib import members as _members
from kernelib.errors import ConfigError

STAGES = ("load", "preprocess", "train", "merge", "evaluate", "export")
MERGE_STRATEGIES = ("average", "vote", "weighted", "select", "stacking", "concat", "soup",
                    "distill")
EXPORT_FORMATS = ("keras", "saved_model", "tflite", "tflite_fp16", "tflite_dynamic", "tflite_int8",
                  "onnx", "h5")
DISTRIBUTIONS = ("none", "mirrored", "multi_worker", "auto")
BACKBONES = tuple(zoo.BACKBONES)  # the zoo is the one list (it imports no TensorFlow)
RECIPES = (*zoo.RECIPES, *BACKBONES)
PREPROCESS = _members.PREPROCESS  # members imports no TensorFlow either


class _Exact(BaseModel):
    """Unknown keys refused (the base of the data specs, whose 'kind' discriminates)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class _Strict(_Exact):
    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info) -> Any:
        """`epochs: true` is a mistake, not 1 epoch: refuse booleans where a number goes."""
        annotation = cls.model_fields[info.field_name].annotation
        if isinstance(value, bool) and annotation in (int, float, int | None, float | None):
            raise ValueError(f"expected a number, received the boolean {value}")
        return value


class Resources(_Strict):
    """What one step asks of the executor (Ray's task resources; the local pool ignores them)."""

    num_cpus: float = Field(1.0, gt=0.0, le=1024, description="CPU cores a step reserves; its "
                            "TensorFlow thread pools are capped at this many (at least 1)")
    num_gpus: float = Field(0.0, ge=0.0, le=64, description="GPUs a step reserves (fractions "
                            "share one GPU)")


class MemberSpec(_Strict):
    """One member: trained from a zoo recipe, or read from a `.keras`/`.h5` file or SavedModel."""

    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_\-]{0,63}$", description="unique member name")
    recipe: Literal[RECIPES] | None = Field(None, description="zoo recipe to train")
    path: str | None = Field(None, description="a trained model to use as is: a .keras file, a "
                             "legacy .h5 file or a SavedModel folder")
    seed: int = Field(0, ge=0, description="seed of the member's initialisation and data order")
    finetune_from: str | None = Field(
        None, description="start from this earlier member's trained weights instead of a fresh "
                          "initialisation (same recipe): soup ingredients share one start")
    image_size: int | None = Field(
        None, ge=32, le=512, description="backbone recipes: side of the resized input (None = 32)")
    weights: str | None = Field(
        None, description="backbone recipes: absolute path of a local .weights.h5 file (or a "
                          "Keras ImageNet .h5 file) for the headless backbone (None = random "
                          "initialisation)")
    trainable: bool = Field(
        True, description="backbone recipes: false freezes the backbone (only the new head "
                          "trains) and puts the backbone's own preprocess convention in front")
    preprocess: Literal[PREPROCESS] = Field(
        "none", description="member files: the value convention the member was trained on "
                            "(keras.applications': rescale 0..1, tf -1..1, caffe, torch; none = "
                            "the dataset's raw values)")
    class_names: list[str] | None = Field(
        None, description="member files: the classes in the order the member predicts them "
                          "(None = the dataset's order)")
    output: Literal["probabilities", "logits"] | None = Field(
        None, description="member files: what the member outputs (None = detected from its "
                          "final layer)")
    trust: bool = Field(False, description="member files: load outside Keras' safe mode (a "
                        "file with Lambda layers; only for files you trust)")
    bag: float | None = Field(
        None, gt=0.0, le=1.0, description="recipe members: train on a seeded random share of "
                                          "the training rows (a bag, drawn with the member's "
                                          "seed, without replacement; None = every row)")
    resources: Resources | None = Field(
        None, description="recipe members, --executor ray: what this member's training "
                          "reserves (None = run.resources)")

    @model_validator(mode="after")
    def _one_source(self) -> MemberSpec:
        if (self.recipe is None) == (self.path is None):
            raise ValueError(
                f"member '{self.name}' needs exactly one of 'recipe' or 'path'; "
                f"received recipe={self.recipe!r}, path={self.path!r}"
            )
        if self.recipe not in BACKBONES and (self.image_size or self.weights):
            raise ValueError(
                f"member '{self.name}': 'image_size' and 'weights' apply to backbone recipes "
                f"{list(BACKBONES)} only; received recipe={self.recipe!r}. Remove them."
            )
        if self.weights and not (Path(self.weights).is_absolute()
                                 and self.weights.endswith(".h5")):
            raise ValueError(
                f"member '{self.name}': 'weights' must be an absolute path to a .weights.h5 "
                f"file or a Keras ImageNet .h5 file (~/.keras/models/); received "
                f"{self.weights!r}"
            )
        if self.resources is not None and self.recipe is None:
            raise ValueError(f"member '{self.name}': 'resources' are what its training reserves; "
                             f"received path={self.path!r}, which is not trained. Remove them.")
        if self.bag is not None and self.recipe is None:
            raise ValueError(f"member '{self.name}': 'bag' chooses the rows a recipe member "
                             f"trains on; received path={self.path!r}. Remove 'bag'.")
        file_only = {k: getattr(self, k) for k in ("class_names", "output")
                     if getattr(self, k) is not None}
        file_only.update({k: getattr(self, k) for k, default in
                          (("preprocess", "none"), ("trust", False))
                          if getattr(self, k) != default})
        if self.path is None and file_only:
            raise ValueError(
                f"member '{self.name}': {sorted(file_only)} apply to members given by 'path' "
                f"only; received them with recipe={self.recipe!r}. Remove them.")
        if self.recipe not in BACKBONES and not self.trainable:
            raise ValueError(
                f"member '{self.name}': 'trainable: false' freezes a backbone recipe "
                f"{list(BACKBONES)}; received recipe={self.recipe!r}. Remove it.")
        if self.finetune_from is not None and self.path is not None:
            raise ValueError(
                f"member '{self.name}': 'finetune_from' needs a 'recipe' (the base member's); "
                f"received path={self.path!r}"
            )
        return self


class FolderSpec(_Exact):
    """An image folder: one sub-folder per class, or train/ (test/, val/) holding them."""

    kind: Literal["folder"]
    path: str = Field(min_length=1, description="the folder (relative to the config's folder)")
    image_size: tuple[int, int] = Field(description="[height, width] every image is resized to")
    color_mode: Literal["rgb", "grayscale"] = Field("rgb", description="3 or 1 channels")
    class_names: list[str] | None = Field(
        None, min_length=2, description="label order (each class folder once); None = the "
                                        "sorted folder names")
    skip_unreadable: bool = Field(False, description="skip files that are not readable images "
                                  "(listed in the data card) instead of refusing the folder")

    @model_validator(mode="after")
    def _sizes(self) -> FolderSpec:
        if not all(1 <= v <= 4096 for v in self.image_size):
            raise ValueError(f"image_size must be [height, width], each 1..4096; received "
                             f"{list(self.image_size)}")
        return self


class ArraysSpec(_Exact):
    """An .npz file: x, y, optional class_names, x_val/y_val, x_test/y_test."""

    kind: Literal["arrays"]
    path: str = Field(min_length=1, description="the .npz file (relative to the config's folder)")


DatasetSpec = Annotated[FolderSpec | ArraysSpec, Field(discriminator="kind")]


def dataset_spec(value: Any) -> str | FolderSpec | ArraysSpec:
    """A `load.dataset` value validated on its own (a built-in name or a spec mapping)."""
    try:
        return LoadParams.model_validate({"dataset": value}).dataset
    except ValidationError as err:
        raise ConfigError(_format_errors(err, "load.dataset")) from None


class CommonParams(_Strict):
    """Parameters every stage notebook takes."""

    run_dir: str | None = Field(
        None, description="run folder the stage reads from and writes to; None = the lab's: "
                          "runs/$KERNELIB_LAB_RUN (`LAB_RUN=name make lab`), else ../runs/lab")
    seed: int = Field(0, ge=0, description="global seed (Python, NumPy, TensorFlow)")
    deterministic: bool = Field(True, description="enable TensorFlow op determinism")


class LoadParams(_Strict):
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


class AugmentParams(_Strict):
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


class PreprocessParams(_Strict):
    """Stage 2: seeded stratified split, normalisation and training-time augmentation."""

    val_fraction: float = Field(0.15, gt=0.0, lt=0.5, description="share of rows for validation")
    test_fraction: float = Field(0.2, gt=0.0, lt=0.5, description="share of rows for test")
    augment: AugmentParams | None = Field(
        None, description="augmentation of training batches (members, concat heads, distill "
                          "students); None = none")


class TrainSettings(_Strict):
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


class MergeSettings(_Strict):
    """Stage 4: which strategies to build, and each strategy's options."""

    strategies: list[Literal[MERGE_STRATEGIES]] = Field(
        default_factory=lambda: ["average", "vote", "weighted", "select", "stacking", "concat"],
        min_length=1, description="merge strategies to build, each into merged/<strategy>.keras",
    )
    calibrate: list[Literal[MERGE_STRATEGIES]] = Field(
        default_factory=list,
        description="strategies whose output gets temperature scaling fitted on val NLL",
    )
    weights: list[float] | None = Field(
        None, description="fixed member weights for 'average' (load.members order); None = uniform"
    )
    weighted_shrinkage: float | Literal["auto"] = Field(
        "auto", description="'weighted': share in [0, 1] the fitted weights move toward uniform "
                            "(0 = plain fit); 'auto' picks it by out-of-fold val NLL")
    weighted_folds: int = Field(5, ge=2, le=50, description="'weighted': folds over val that "
                                "pick the shrinkage when it is 'auto'")
    select_size: int = Field(25, ge=1, le=10_000,
                             description="'select': picks with replacement (Caruana)")
    select_metric: Literal["nll", "accuracy"] = Field(
        "nll", description="'select': val metric each greedy pick optimises")
    select_init_size: int = Field(0, ge=0, le=1000, description="'select': start from this "
                                  "many best single members (sorted initialisation; 0 = none)")
    select_bags: int = Field(0, ge=0, le=1000, description="'select': repeat the selection on "
                             "this many bootstrap bags of val rows and average (0 = no bagging)")
    stacking_passthrough: bool = Field(
        False, description="'stacking': the meta-learner also sees the raw input")
    stacking_folds: int = Field(5, ge=2, le=50, description="'stacking': k of the k-fold over val "
                                                           "that picks the regularisation")
    concat_epochs: int = Field(20, ge=1, description="maximum epochs for the concat head")
    concat_learning_rate: float = Field(1e-3, gt=0.0, le=1.0, description="head learning rate")
    concat_fine_tune_layers: int = Field(
        0, ge=0, description="'concat': unfreeze the last k weighted layers of each member after "
                             "the head is fitted (0 = members stay frozen)")
    concat_fine_tune_learning_rate: float = Field(
        1e-4, gt=0.0, le=1.0, description="'concat': learning rate of the fine-tuning phase")
    concat_members: list[str] | None = Field(
        None, description="'concat': member names whose features it concatenates (None = every "
                          "member; a SavedModel member cannot join)")
    soup_mode: Literal["uniform", "greedy"] = Field(
        "greedy", description="'soup': average all ingredients, or add them greedily on val "
                              "(see soup_metric)")
    soup_metric: Literal["accuracy", "nll"] = Field(
        "accuracy", description="'soup': val metric greedy mode must not worsen")
    soup_ingredients: list[str] | None = Field(
        None, description="'soup': member names of one architecture (None = every member)")
    distill_teacher: Literal[tuple(s for s in MERGE_STRATEGIES if s != "distill")] = Field(
        "weighted", description="'distill': strategy whose merged model teaches the student")
    distill_student: Literal[RECIPES] = Field("cnn", description="'distill': zoo recipe of the "
                                                                 "student")
    distill_epochs: int = Field(30, ge=1, description="'distill': maximum student epochs")
    tensorboard: bool = Field(True, description="'concat' heads and 'distill' students log "
                              "per-epoch scalars to tensorboard/<strategy>/ in the run folder")

    @model_validator(mode="after")
    def _strategies_unique(self) -> MergeSettings:
        s = self.strategies
        dupes = sorted({x for x in s if s.count(x) > 1})
        if dupes:
            raise ValueError(f"merge.strategies lists {dupes} more than once; list each once")
        extra = sorted(set(self.calibrate) - set(s))
        if extra:
            raise ValueError(f"merge.calibrate names {extra}, which merge.strategies does not "
                             f"build; add them to strategies or remove them from calibrate")
        if isinstance(self.weighted_shrinkage, float) and not 0 <= self.weighted_shrinkage <= 1:
            raise ValueError("merge.weighted_shrinkage must be 'auto' or a number in [0, 1]; "
                             f"received {self.weighted_shrinkage}")
        if self.select_init_size > self.select_size:
            raise ValueError(f"merge.select_init_size ({self.select_init_size}) must be at most "
                             f"select_size ({self.select_size})")
        return self


class MergeParams(MergeSettings):
    """Stage 4 notebook parameters: the merge settings plus the run's distribution strategy."""

    distribution: Literal[DISTRIBUTIONS] = Field(
        "none", description="tf.distribute strategy of concat heads and distill students "
                            "(`kernelib run` passes train.distribution)")


class EvaluateParams(_Strict):
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


class ExportParams(_Strict):
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


class RunParams(_Strict):
    """Run-wide settings."""

    name: str = Field("run", pattern=r"^[A-Za-z0-9_\-]+$", description="prefix of the run id")
    seed: int = Field(0, ge=0, description="global seed")
    deterministic: bool = Field(True, description="enable TensorFlow op determinism")
    resources: Resources = Field(default_factory=Resources, description="--executor ray: what "
                                 "each step reserves unless its member sets 'resources'")


class Config(_Strict):
    """A whole kernelib run: what `kernelib run CONFIG` validates before anything runs."""

    run: RunParams = Field(default_factory=RunParams)
    load: LoadParams = Field(default_factory=LoadParams)
    preprocess: PreprocessParams = Field(default_factory=PreprocessParams)
    train: TrainSettings = Field(default_factory=TrainSettings)
    merge: MergeSettings = Field(default_factory=MergeSettings)
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

    @model_validator(mode="after")
    def _member_lists_are_members(self) -> Config:
        names = [m.name for m in self.load.members]
        for key in ("soup_ingredients", "concat_members"):
            unknown = sorted(set(getattr(self.merge, key) or []) - set(names))
            if unknown:
                raise ValueError(f"merge.{key} names {unknown}, which are not members; "
                                 f"members: {names}")
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
        raise ConfigError(_format_errors(err, f"parameters of stage '{stage}'")) from None


def validate_common(values: dict[str, Any]) -> CommonParams:
    """Validate the parameters every notebook takes (run_dir, seed, deterministic)."""
    try:
        return CommonParams.model_validate(values)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, "common notebook parameters")) from None


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
    import re

    name = str(annotation).replace("typing.", "").replace("kernelib.params.", "")
    return re.sub(r"Annotated\[(.*?), FieldInfo\(.*?\)\]", r"\1", name)  # drop pydantic's tags
