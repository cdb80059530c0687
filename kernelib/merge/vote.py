"""`vote`: hard majority vote; ties broken by the mean member probability.

Each member votes for its most probable class; the class with most votes wins, and among
classes with equally many votes the one with the highest mean probability wins (then the
lowest class index). The output is the winner's one-hot row, a valid probability row, so
the model composes with everything that reads probabilities (`calibrate=True` turns the
one-hot rows into fitted, smoothed probabilities).
"""

from __future__ import annotations

import keras

from kernelib.layers import MajorityVote
from kernelib.merge.base import model_input
from kernelib.merge.strategy import Strategy
from kernelib.merge_params import VoteParams


class Vote(Strategy):
    """Hard majority vote of the members, as one-hot probability rows."""

    strategy, options = "vote", VoteParams

    def to_keras(self, models):
        inputs = model_input(models)
        outputs = MajorityVote(dtype="float32", name="majority_vote")(
            [m(inputs, training=False) for m in models])
        return keras.Model(inputs, outputs, name=self.name)
