"""The merge section of a config: one pydantic model per strategy, declaring its parameters.

Each model holds a strategy's own keyword arguments with their defaults, bounds and help;
`kernelib.merge` takes its strategy objects' defaults from here, and `merge:` nests them by
strategy (`merge: {strategies: [select], select: {size: 25}}`). No TensorFlow is imported, so
a config validates before anything runs.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from kernelib import zoo
from kernelib.schema import Strict

MERGE_STRATEGIES = ("average", "vote", "weighted", "select", "stacking", "concat", "soup",
                    "distill")
RECIPES = (*zoo.RECIPES, *zoo.BACKBONES)  # the zoo imports no TensorFlow


class AverageParams(Strict):
    """'average': the mean of member probabilities."""

    weights: list[float] | None = Field(
        None, description="fixed member weights (load.members order); None = uniform")


class VoteParams(Strict):
    """'vote': a hard majority vote (no parameters)."""


class WeightedParams(Strict):
    """'weighted': member weights minimising val NLL, shrunk toward uniform."""

    shrinkage: float | Literal["auto"] = Field(
        "auto", description="share in [0, 1] the fitted weights move toward uniform (0 = plain "
                            "fit); 'auto' picks it by out-of-fold val NLL")
    folds: int = Field(5, ge=2, le=50, description="folds over val that pick the shrinkage "
                       "when it is 'auto'")

    @field_validator("shrinkage")
    @classmethod
    def _share(cls, value: float | str) -> float | str:
        if isinstance(value, float) and not 0 <= value <= 1:
            raise ValueError(f"shrinkage must be 'auto' or a number in [0, 1]; received {value}")
        return value


class SelectParams(Strict):
    """'select': Caruana's greedy forward selection with replacement."""

    size: int = Field(25, ge=1, le=10_000, description="picks with replacement (Caruana)")
    metric: Literal["nll", "accuracy"] = Field(
        "nll", description="val metric each greedy pick optimises")
    init_size: int = Field(0, ge=0, le=1000, description="start from this many best single "
                           "members (sorted initialisation; 0 = none)")
    bags: int = Field(0, ge=0, le=1000, description="repeat the selection on this many "
                      "bootstrap bags of val rows and average (0 = no bagging)")

    @model_validator(mode="after")
    def _init_within_size(self) -> SelectParams:
        if self.init_size > self.size:
            raise ValueError(f"init_size ({self.init_size}) must be at most size ({self.size})")
        return self


class StackingParams(Strict):
    """'stacking': a logistic-regression meta-learner on member probabilities."""

    passthrough: bool = Field(False, description="the meta-learner also sees the raw input")
    folds: int = Field(5, ge=2, le=50, description="k of the k-fold over val that picks the "
                       "regularisation (and of the out-of-fold val predictions)")


class ConcatParams(Strict):
    """'concat': frozen members' features concatenated, a new softmax head."""

    epochs: int = Field(20, ge=1, description="maximum epochs for the head")
    learning_rate: float = Field(1e-3, gt=0.0, le=1.0, description="head learning rate")
    batch_size: int = Field(64, ge=1, le=65_536, description="mini-batch size (per replica)")
    patience: int = Field(3, ge=1, description="early-stopping patience on val loss (epochs)")
    fine_tune_layers: int = Field(
        0, ge=0, description="unfreeze the last k weighted layers of each member after the head "
                             "is fitted (0 = members stay frozen)")
    fine_tune_learning_rate: float = Field(
        1e-4, gt=0.0, le=1.0, description="learning rate of the fine-tuning phase")
    include: list[str] | None = Field(
        None, description="member names whose features it concatenates (None = every member; "
                          "a SavedModel member cannot join)")


class SoupParams(Strict):
    """'soup': the weight average of members of one architecture."""

    mode: Literal["uniform", "greedy"] = Field(
        "greedy", description="average all ingredients, or add them greedily on val")
    metric: Literal["accuracy", "nll"] = Field(
        "accuracy", description="val metric greedy mode must not worsen")
    ingredients: list[str] | None = Field(
        None, description="member names of one architecture (None = every member)")


class DistillParams(Strict):
    """'distill': one student trained on a merged teacher's soft targets."""

    teacher: Literal[tuple(s for s in MERGE_STRATEGIES if s != "distill")] = Field(
        "weighted", description="strategy whose merged model teaches the student")
    student: Literal[RECIPES] = Field("cnn", description="zoo recipe of the student")
    epochs: int = Field(30, ge=1, description="maximum student epochs")
    learning_rate: float = Field(1e-3, gt=0.0, le=1.0, description="student learning rate")
    batch_size: int = Field(64, ge=1, le=65_536, description="mini-batch size (per replica)")
    patience: int = Field(5, ge=1, description="early-stopping patience on val NLL (epochs)")
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="weight of the hard labels in the "
                         "training rows' targets (the teacher gets 1 - alpha)")
    mixup_copies: int = Field(1, ge=0, le=100, description="seeded mixup blends of the "
                              "training rows the student also learns the teacher on")


STRATEGY_PARAMS: dict[str, type[BaseModel]] = {
    "average": AverageParams, "vote": VoteParams, "weighted": WeightedParams,
    "select": SelectParams, "stacking": StackingParams, "concat": ConcatParams,
    "soup": SoupParams, "distill": DistillParams,
}
# which option of a strategy names members, for the checks against load.members
MEMBER_LISTS = {"concat": "include", "soup": "ingredients"}


class MergeSettings(Strict):
    """Stage 4: which strategies to build, and one section of options per strategy."""

    strategies: list[Literal[MERGE_STRATEGIES]] = Field(
        default_factory=lambda: ["average", "vote", "weighted", "select", "stacking", "concat"],
        min_length=1, description="merge strategies to build, each into merged/<strategy>.keras",
    )
    calibrate: list[Literal[MERGE_STRATEGIES]] = Field(
        default_factory=list,
        description="strategies whose output gets temperature scaling fitted on val NLL",
    )
    average: AverageParams = Field(default_factory=AverageParams)
    weighted: WeightedParams = Field(default_factory=WeightedParams)
    select: SelectParams = Field(default_factory=SelectParams)
    stacking: StackingParams = Field(default_factory=StackingParams)
    concat: ConcatParams = Field(default_factory=ConcatParams)
    soup: SoupParams = Field(default_factory=SoupParams)
    distill: DistillParams = Field(default_factory=DistillParams)
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
        return self

    def options(self, strategy: str) -> dict[str, Any]:
        """`strategy`'s section as keyword arguments (vote has none)."""
        section = getattr(self, strategy, None)
        return section.model_dump() if isinstance(section, BaseModel) else {}


def check_against_members(merge: MergeSettings, names: list[str]) -> None:
    """Refuse average weights that are not one per member, and unknown member names."""
    w = merge.average.weights
    if w is not None and len(w) != len(names):
        raise ValueError(f"merge.average.weights needs one weight per member ({len(names)}); "
                         f"received {len(w)}")
    for strategy, key in MEMBER_LISTS.items():
        unknown = sorted(set(getattr(getattr(merge, strategy), key) or []) - set(names))
        if unknown:
            raise ValueError(f"merge.{strategy}.{key} names {unknown}, which are not members; "
                             f"members: {names}")
