"""Specs of what a run reads: members (zoo recipes or files), data files, step resources."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from kernelib import members as _members
from kernelib import zoo
from kernelib.schema import Exact, Strict

BACKBONES = tuple(zoo.BACKBONES)  # the zoo is the one list (it imports no TensorFlow)
RECIPES = (*zoo.RECIPES, *BACKBONES)
PREPROCESS = _members.PREPROCESS  # members imports no TensorFlow either


class Resources(Strict):
    """What one step asks of the executor (Ray's task resources; the local pool ignores them)."""

    num_cpus: float = Field(1.0, gt=0.0, le=1024, description="CPU cores a step reserves; its "
                            "TensorFlow thread pools are capped at this many (at least 1)")
    num_gpus: float = Field(0.0, ge=0.0, le=64, description="GPUs a step reserves (fractions "
                            "share one GPU)")


class MemberSpec(Strict):
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


class FolderSpec(Exact):
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


class ArraysSpec(Exact):
    """An .npz file: x, y, optional class_names, x_val/y_val, x_test/y_test."""

    kind: Literal["arrays"]
    path: str = Field(min_length=1, description="the .npz file (relative to the config's folder)")


DatasetSpec = Annotated[FolderSpec | ArraysSpec, Field(discriminator="kind")]
