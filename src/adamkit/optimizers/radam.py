"""RAdam: Adam with the variance of the adaptive learning rate rectified."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import keras

from adamkit import ops as adam_ops
from adamkit.optimizers.base import AdamFamily, FloatOrSchedule
from adamkit.optimizers.docs import shared_args
from adamkit.rule import Rule, Scalars, constant


@dataclasses.dataclass(frozen=True)
class RAdamRule(Rule):
    """RAdam's scalars: once ρₜ > 5, a = α·rₜ·√(1 − β2ᵗ)/(1 − β1ᵗ), c = 1; before, a = α/(1 − β1ᵗ),
    c = ∞ and ε = 1, so that the denominator is 1 and θ ← θ − α·m̂ (momentum SGD)."""

    def scalars(self, step, learning_rate, carried):
        step_size = learning_rate / adam_ops.bias_correction(self.beta_1, step)
        rectified, r = adam_ops.radam_rectifier(step, self.beta_2)
        xp = adam_ops.namespace(step)
        root = xp.sqrt(adam_ops.bias_correction(self.beta_2, step))
        return Scalars(xp.where(rectified, step_size * r * root, step_size),
                       xp.where(rectified, constant(self.epsilon, step), constant(1.0, step)),
                       correction=xp.where(rectified, constant(1.0, step),
                                           constant(math.inf, step))), {}


@keras.saving.register_keras_serializable(package="adamkit")
@shared_args
class RAdam(AdamFamily):
    r"""RAdam (Liu et al., ICLR 2020): Adam with the variance of the adaptive learning rate
    rectified.

    Adam's moments, with the adaptive term switched on only once its variance is tractable:

        ρ∞ = 2/(1 − β2) − 1,   ρₜ = ρ∞ − 2t·β2ᵗ/(1 − β2ᵗ)
        if ρₜ > 5:  rₜ = √((ρₜ − 4)(ρₜ − 2)ρ∞ / ((ρ∞ − 4)(ρ∞ − 2)ρₜ))
                    θₜ = θₜ₋₁ − α·m̂ₜ·rₜ·√(1 − β2ᵗ)/(√vₜ + ε)
        else:       θₜ = θₜ₋₁ − α·m̂ₜ

    as ``torch.optim.RAdam``, which it matches step for step (with the default betas the
    rectified branch starts at t = 6). optax's ``radam`` uses the same threshold of 5 and puts ε
    on √v̂; Keras has no RAdam. Use it where Adam needs a warm-up or is sensitive to the learning
    rate.

    Args:
        learning_rate: α > 0: a float, a ``keras.optimizers.schedules.LearningRateSchedule``, or a
            zero-argument callable. Defaults to 0.001.
        beta_1: β1 in [0, 1). Defaults to 0.9.
        beta_2: β2 in [0, 1); ρ∞ and so the length of the unrectified start depend on it.
            Defaults to 0.999.
        epsilon: ε ≥ 0, added to √vₜ in the rectified branch. Defaults to 1e-8.
        {{shared_args}}

    Examples:
        Before ρₜ > 5 the step is momentum SGD, α·m̂ₜ (here α·g):

        >>> import keras, adamkit
        >>> w, g = keras.Variable([1.0, 2.0]), keras.ops.convert_to_tensor([0.5, -0.5])
        >>> adamkit.RAdam(learning_rate=0.1).apply([g], [w])
        >>> w.numpy().round(4)
        array([0.95, 2.05], dtype=float32)

    References:
        - L. Liu, H. Jiang, P. He, W. Chen, X. Liu, J. Gao, J. Han. On the Variance of the Adaptive
          Learning Rate and Beyond. ICLR 2020. arXiv:1908.03265.
    """

    def __init__(
        self,
        learning_rate: FloatOrSchedule = 0.001,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-8,
        fused: bool | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(learning_rate, RAdamRule(beta_1, beta_2, epsilon), fused=fused, **kwargs)
