"""The strategy object every merge strategy is, in the scikit-learn style.

A strategy's parameters are its declared options (`kernelib.merge_params`, the config's
`merge.<strategy>` section) plus a few given at run time (`name`, a `seed`, ...); `get_params`
returns them and `clone` makes an unfitted copy, as `sklearn.base.clone` does. `fit` learns
the small thing (weights, picks, a meta-learner, a soup's ingredients) into attributes
ending in `_`; `to_keras(models)` builds the one merged Keras graph from it. `merge` runs the
three steps on the members and validation rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from kernelib.errors import MergeError
from kernelib.merge.base import check_val, member_probabilities, prepare


class Strategy:
    """Base of every strategy: parameters, `clone`, and the prepare -> fit -> build run."""

    strategy: ClassVar[str]  # its name in STRATEGIES (the `name` parameter names the model)
    options: ClassVar[type]  # its pydantic model in kernelib.merge_params
    runtime: ClassVar[dict[str, Any]] = {}  # parameters the config does not hold, with defaults
    fits_on_val: ClassVar[bool] = False  # fitted on the members' val probabilities only
    needs_x: ClassVar[bool] = False  # fit and predict also need the raw rows

    def __init__(self, **params: Any):
        defaults = self.defaults()
        unknown = sorted(set(params) - set(defaults))
        if unknown:
            raise MergeError(f"strategy '{self.strategy}' does not take option(s) {unknown}; "
                             f"valid options: {sorted(set(defaults) - {'seed'})}")
        for key, value in {**defaults, **params}.items():
            setattr(self, key, value)

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Every parameter with its default: the declared options, then the run-time ones."""
        declared = {k: f.get_default(call_default_factory=True)
                    for k, f in cls.options.model_fields.items()}
        return {**declared, "name": cls.strategy, **cls.runtime}

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The parameters (`deep` as in scikit-learn; no strategy holds a nested estimator)."""
        return {k: getattr(self, k) for k in self.defaults()}

    def clone(self) -> Strategy:
        """An unfitted copy with the same parameters (`sklearn.base.clone` does the same)."""
        return type(self)(**self.get_params())

    def fit(self, probs: np.ndarray | None = None, y: np.ndarray | None = None, *,
            x: np.ndarray | None = None) -> Strategy:
        """Learn from the members' validation probabilities `probs` (members, rows, classes)
        and labels `y` (and the raw rows `x` where `needs_x`); nothing for average and vote."""
        return self

    def predict(self, probs: np.ndarray, *, x: np.ndarray | None = None) -> np.ndarray:
        """The merged probabilities of rows whose member probabilities are `probs`."""
        raise NotImplementedError

    def to_keras(self, models: Sequence[Any]):
        """The merged `keras.Model` of the prepared `models`, from what `fit` learned."""
        raise NotImplementedError

    def merge(self, members: Sequence[Any], *, train: tuple | None = None,
              val: tuple | None = None, val_probs: np.ndarray | None = None, build=None):
        """Prepare the members, fit (on `val`, when `fits_on_val`), build the `keras.Model`.

        `val_probs` are the members' probabilities on `val` if already computed;
        `build(strategy)` makes another strategy's model of the same members (distill's teacher).
        """
        models = prepare(members, self.strategy)
        if self.fits_on_val:
            x_val, y_val = check_val(models, val, self.strategy)
            self.fit(member_probabilities(models, x_val, given=val_probs), y_val, x=x_val)
        return self.to_keras(models)
