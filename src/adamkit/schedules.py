"""Learning-rate schedules the papers use and Keras lacks."""

from __future__ import annotations

import math

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="adamkit")
class InverseSqrtDecay(keras.optimizers.schedules.LearningRateSchedule):
    """αₜ = α/√t with t = step + 1 (Kingma & Ba §6.1; Reddi et al.'s counterexamples)."""

    def __init__(self, initial_learning_rate: float) -> None:
        rate = initial_learning_rate
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate < math.inf:
            raise ValueError("`initial_learning_rate` must be a finite number > 0; got "
                             f"{rate!r}.")
        self.initial_learning_rate = float(rate)

    def __call__(self, step):
        return self.initial_learning_rate / ops.sqrt(ops.cast(step, "float32") + 1.0)

    def get_config(self) -> dict:
        return {"initial_learning_rate": self.initial_learning_rate}
