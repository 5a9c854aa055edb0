"""RAdam: Adam with the variance of the adaptive learning rate rectified."""

from __future__ import annotations

from typing import Any

import keras

from adamkit import ops as adam_ops
from adamkit.optimizers.base import AdamFamily, FloatOrSchedule
from adamkit.optimizers.fused import FusedAdamStep


@keras.saving.register_keras_serializable(package="adamkit")
class RAdam(FusedAdamStep, AdamFamily):
    r"""RAdam (Liu et al., "On the Variance of the Adaptive Learning Rate and Beyond", ICLR 2020).

    Adam's moments, with the adaptive term switched on only once its variance is tractable::

        ρ∞ = 2/(1 − β2) − 1,   ρₜ = ρ∞ − 2t·β2ᵗ/(1 − β2ᵗ)
        if ρₜ > 5:  rₜ = √((ρₜ − 4)(ρₜ − 2)ρ∞ / ((ρ∞ − 4)(ρ∞ − 2)ρₜ))
                    θₜ = θₜ₋₁ − α·m̂ₜ·rₜ·√(1 − β2ᵗ)/(√vₜ + ε)
        else:       θₜ = θₜ₋₁ − α·m̂ₜ

    as ``torch.optim.RAdam`` (with default betas the rectified branch starts at t = 6). optax's
    ``radam`` uses the same threshold of 5 and puts ε on √v̂; Keras has no RAdam. Use it where Adam
    needs a warm-up or is sensitive to the learning rate.

    ``fused`` as for ``Adam``: adamkit's Adam kernel runs RAdam too, with the step's scalars
    switched at ρₜ > 5 (``adamkit.optimizers.fused``); on PyTorch, where adamkit's kernel cannot be
    built, the ops path runs (PyTorch has no fused RAdam).
    """

    rectified = True

    def __init__(
        self,
        learning_rate: FloatOrSchedule = 0.001,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-8,
        fused: bool | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(learning_rate, beta_1, beta_2, epsilon, **kwargs)
        self.select_kernel(fused)

    def compute_update(self, gradient, state, step, learning_rate):
        m = adam_ops.first_moment(state["momentum"], gradient, self.beta_1)
        v = adam_ops.second_moment(state["velocity"], gradient, self.beta_2)
        update = adam_ops.radam_update(m, v, step, learning_rate, self.beta_1, self.beta_2, self.epsilon)
        return update, {"momentum": m, "velocity": v}
