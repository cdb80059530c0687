"""`soup`: one model whose weights are the average of members with identical architecture.

Wortsman et al. (2022), model soups. Averaging weights only makes sense for fine-tunes of
one shared initialisation (the zoo's `finetune_from` members); members of different
architectures are refused, naming the first layer that differs.

- `mode="uniform"`: the mean of every ingredient's weights.
- `mode="greedy"`: ingredients sorted by val accuracy (best first); each is kept only if the
  soup's val accuracy does not drop when it is added. The result's val accuracy is at least
  the best ingredient's. `metric="nll"` sorts and decides by val NLL instead (kept if the
  NLL does not rise): on a small validation split one row changes the accuracy by a
  whole step, which can reject every ingredient, while the NLL moves smoothly.

The soup has the ingredients' own layers (a clone of the first), so it loads with plain
Keras and costs one member at inference.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from kernelib.errors import IncompatibleMembersError
from kernelib.merge.base import (
    accuracy,
    check_choice,
    check_val,
    leaf_layers,
    nll,
    pick,
    predict,
    prepare,
)
from kernelib.merge.strategy import Strategy
from kernelib.merge_params import SoupParams

MODES = ("uniform", "greedy")
METRICS = ("accuracy", "nll")


def architecture(model) -> list[tuple[str, str, list[tuple[int, ...]]]]:
    """Each leaf layer (nested models flattened) as (name, class, weight shapes)."""
    return [(layer.name, type(layer).__name__, [tuple(w.shape) for w in layer.weights])
            for layer in leaf_layers(model)]


def check_same_architecture(models: Sequence[Any]) -> None:
    """Refuse models whose layer classes or weight shapes differ, naming the first difference."""
    ref = architecture(models[0])
    for m in models[1:]:
        arch = architecture(m)
        for i in range(max(len(ref), len(arch))):
            a = ref[i] if i < len(ref) else None
            b = arch[i] if i < len(arch) else None
            if a is None or b is None or a[1:] != b[1:]:
                def show(entry):
                    return "no layer" if entry is None else f"{entry[1]} '{entry[0]}' {entry[2]}"
                raise IncompatibleMembersError(
                    f"strategy 'soup' averages weights, so all ingredients need one "
                    f"architecture; member '{m.name}' differs from '{models[0].name}' first at "
                    f"layer {i}: {show(b)} vs {show(a)}. Use fine-tunes of one member "
                    f"('finetune_from' in load.members) as the soup's 'ingredients'."
                )


def average_weights(models: Sequence[Any], chosen: Sequence[int]) -> list[np.ndarray]:
    """The element-wise mean of the chosen models' weights (in each weight's own dtype)."""
    per_model = [models[i].get_weights() for i in chosen]
    return [np.mean([np.asarray(ws[j], dtype="float64") for ws in per_model], axis=0)
            .astype(per_model[0][j].dtype) for j in range(len(per_model[0]))]


class Soup(Strategy):
    """Average the weights of same-architecture members (all of them, or greedily on val).

    `ingredients` names the members to use (default: all); `metric` is what greedy mode
    keeps from getting worse on val ("accuracy" as in Wortsman et al., or "nll").
    """

    strategy, options = "soup", SoupParams

    def fit(self, models, val=None):
        """Choose the ingredients (`chosen_`, indices into `models`) into the soup `soup_`."""
        import keras

        check_choice(self.mode, MODES, "mode", "soup")
        check_choice(self.metric, METRICS, "metric", "soup")
        check_same_architecture(models)
        soup = keras.models.clone_model(models[0], recursive=True)  # a nested member copied too
        soup.name = self.name
        self.soup_, self.chosen_ = soup, list(range(len(models)))
        if self.mode == "greedy":
            self.chosen_ = self._greedy(models, *check_val(models, val, "soup"))
        return self

    def _greedy(self, models, x_val, y_val) -> list[int]:
        def val_score(chosen: Sequence[int]) -> float:
            """Higher is better: val accuracy, or minus val NLL."""
            self.soup_.set_weights(average_weights(models, chosen))
            p = predict(self.soup_, x_val)
            return accuracy(p, y_val) if self.metric == "accuracy" else -nll(p, y_val)

        scores = [val_score([i]) for i in range(len(models))]
        order = sorted(range(len(models)), key=lambda i: -scores[i])  # stable: ties keep order
        chosen, best = [order[0]], scores[order[0]]
        for i in order[1:]:
            score = val_score([*chosen, i])
            if score >= best:
                chosen, best = [*chosen, i], score
        return chosen

    def to_keras(self, models):
        self.soup_.set_weights(average_weights(models, self.chosen_))
        return self.soup_

    def merge(self, members, *, train=None, val=None, val_probs=None, build=None):
        models = prepare(pick(members, self.ingredients, "soup", "ingredients"), "soup")
        return self.fit(models, val).to_keras(models)
