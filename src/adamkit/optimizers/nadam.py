"""NAdam: Adam with Nesterov momentum."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from adamkit import ops as adam_ops
from adamkit.optimizers.base import AdamFamily, FloatOrSchedule, check_real


@keras.saving.register_keras_serializable(package="adamkit")
class Nadam(AdamFamily):
    r"""NAdam (Dozat, "Incorporating Nesterov Momentum into Adam", ICLR 2016 workshop).

    Adam whose first moment looks one step ahead, with Dozat's warming momentum schedule::

        μₜ = β1·(1 − ½·0.96^(t·ψ))
        mₜ = β1·mₜ₋₁ + (1 − β1)·gₜ,   vₜ = β2·vₜ₋₁ + (1 − β2)·gₜ²,   d = √(vₜ/(1 − β2ᵗ)) + ε
        θₜ = θₜ₋₁ − α·(1 − μₜ)/(1 − Π₁..ₜ μᵢ)·gₜ/d − α·μₜ₊₁/(1 − Π₁..ₜ₊₁ μᵢ)·mₜ/d

    as ``torch.optim.NAdam`` (ψ = ``momentum_decay`` = 0.004, α = 0.002 by default). Keras's
    ``Nadam`` uses 0.96ᵗ (no ψ, so μ warms up within a few dozen steps) and ε̂; optax's ``nadam``
    has no μ schedule at all.
    """

    def __init__(
        self,
        learning_rate: FloatOrSchedule = 0.002,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-8,
        momentum_decay: float = 0.004,
        **kwargs: Any,
    ) -> None:
        super().__init__(learning_rate, beta_1, beta_2, epsilon, **kwargs)
        self.momentum_decay = check_real("momentum_decay", momentum_decay, low=0.0)

    def scalar_state(self) -> dict[str, float]:
        return {"mu_product": 1.0}

    def compute_update(self, gradient, state, step, learning_rate):
        mu = adam_ops.nadam_momentum(self.beta_1, step, self.momentum_decay)
        mu_next = adam_ops.nadam_momentum(self.beta_1, step + 1.0, self.momentum_decay)
        mu_product = ops.cast(state["mu_product"], gradient.dtype) * mu
        m = adam_ops.first_moment(state["momentum"], gradient, self.beta_1)
        v = adam_ops.second_moment(state["velocity"], gradient, self.beta_2)
        update = adam_ops.nadam_update(
            gradient, m, v, step, learning_rate, mu, mu_next, mu_product, self.beta_2, self.epsilon
        )
        return update, {"momentum": m, "velocity": v, "mu_product": mu_product}

    def get_config(self) -> dict:
        config = super().get_config()
        config["momentum_decay"] = self.momentum_decay
        return config
