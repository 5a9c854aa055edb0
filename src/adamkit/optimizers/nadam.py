"""NAdam: Adam with Nesterov momentum."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from adamkit import ops as adam_ops
from adamkit.optimizers.base import AdamFamily, FloatOrSchedule, check_real
from adamkit.optimizers.docs import shared_args
from adamkit.optimizers.fused import FusedAdamStep


@keras.saving.register_keras_serializable(package="adamkit")
@shared_args
class Nadam(FusedAdamStep, AdamFamily):
    r"""NAdam (Dozat, ICLR 2016 workshop): Adam with Nesterov momentum.

    Adam whose first moment looks one step ahead, with Dozat's warming momentum schedule:

        μₜ = β1·(1 − ½·0.96^(t·ψ))
        mₜ = β1·mₜ₋₁ + (1 − β1)·gₜ,   vₜ = β2·vₜ₋₁ + (1 − β2)·gₜ²,   d = √(vₜ/(1 − β2ᵗ)) + ε
        θₜ = θₜ₋₁ − α·(1 − μₜ)/(1 − Π₁..ₜ μᵢ)·gₜ/d − α·μₜ₊₁/(1 − Π₁..ₜ₊₁ μᵢ)·mₜ/d

    as ``torch.optim.NAdam`` (ψ = ``momentum_decay`` = 0.004, α = 0.002 by default), which it
    matches step for step. Keras's ``Nadam`` also adds ε after bias correction (ε, not ε̂), but
    its schedule is μₜ = β1·(1 − ½·0.96ᵗ), without ψ, so μ warms up within a few dozen steps;
    ``adamkit.Nadam(momentum_decay=1.0, epsilon=1e-7)`` (with Keras's α = 0.001) computes what
    ``keras.optimizers.Nadam`` does. optax's ``nadam`` has no μ schedule at all (a constant β1).

    ``Nadam`` keeps a scalar μ product per variable that advances every step, so it has no
    ``lazy=True``.

    Args:
        learning_rate: α > 0: a float, a ``keras.optimizers.schedules.LearningRateSchedule``, or a
            zero-argument callable. Defaults to 0.002 (Keras's Nadam: 0.001).
        beta_1: β1 in [0, 1), the first moment's decay and the scale of μₜ. Defaults to 0.9.
        beta_2: β2 in [0, 1). Defaults to 0.999.
        epsilon: ε ≥ 0, added to √v̂. Defaults to 1e-8 (Keras's Nadam: 1e-7).
        momentum_decay: ψ ≥ 0, the rate at which μₜ warms up to β1: 0.004 is Dozat's and
            PyTorch's, 1.0 is Keras's schedule, 0 keeps μₜ = β1/2. Defaults to 0.004.
        {{shared_args}}

    Examples:
        >>> import keras, adamkit
        >>> w, g = keras.Variable([1.0, 2.0]), keras.ops.convert_to_tensor([0.5, -0.5])
        >>> adamkit.Nadam(learning_rate=0.1).apply([g], [w])
        >>> w.numpy().round(4)
        array([0.8944, 2.1056], dtype=float32)

        Keras's schedule and ε compute what ``keras.optimizers.Nadam`` does:

        >>> import numpy as np
        >>> ours, theirs = keras.Variable([1.0, 2.0]), keras.Variable([1.0, 2.0])
        >>> a = adamkit.Nadam(learning_rate=0.001, momentum_decay=1.0, epsilon=1e-7)
        >>> b = keras.optimizers.Nadam(learning_rate=0.001, epsilon=1e-7)
        >>> for g in ([0.5, -0.5], [0.1, 0.3], [-0.2, 0.4]):
        ...     a.apply([keras.ops.convert_to_tensor(g)], [ours])
        ...     b.apply([keras.ops.convert_to_tensor(g)], [theirs])
        >>> np.allclose(ours.numpy(), theirs.numpy(), rtol=1e-6, atol=0)
        True

    References:
        - T. Dozat. Incorporating Nesterov Momentum into Adam. ICLR 2016 workshop.
    """

    nesterov = True

    def __init__(
        self,
        learning_rate: FloatOrSchedule = 0.002,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-8,
        momentum_decay: float = 0.004,
        fused: bool | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(learning_rate, beta_1, beta_2, epsilon, **kwargs)
        self.momentum_decay = check_real("momentum_decay", momentum_decay, low=0.0)
        self.select_kernel(fused)

    def scalar_state(self) -> dict[str, float]:
        return {"mu_product": 1.0}

    def _momenta(self, mu_product, step):
        """μₜ, μₜ₊₁ and the product Πμ₁..ₜ advanced from ``mu_product`` (Πμ₁..ₜ₋₁)."""
        mu = adam_ops.nadam_momentum(self.beta_1, step, self.momentum_decay)
        mu_next = adam_ops.nadam_momentum(self.beta_1, step + 1.0, self.momentum_decay)
        return mu, mu_next, ops.cast(mu_product, keras.backend.standardize_dtype(step.dtype)) * mu

    def look_ahead(self, slots, step, learning_rate):
        # μₜ and μₜ₊₁ once, the products as one vector: a few ops per step, not ~45 per variable
        products = ops.stack([s["mu_product"].read() for s in slots])
        mu, mu_next, products = self._momenta(products, step)
        written = ops.cast(self.iterations + 1, "int32")
        for s, product in zip(slots, ops.unstack(products, num=len(slots))):
            s["mu_product"].write(self, product, written)
        return adam_ops.nadam_coefficients(learning_rate, mu, mu_next, products)

    def compute_update(self, gradient, state, step, learning_rate):
        mu, mu_next, mu_product = self._momenta(state["mu_product"], step)
        m = adam_ops.first_moment(state["momentum"], gradient, self.beta_1)
        v = adam_ops.second_moment(state["velocity"], gradient, self.beta_2)
        update = adam_ops.nadam_update(
            gradient, m, v, step, learning_rate, mu, mu_next, mu_product, self.beta_2, self.epsilon
        )
        return update, {"momentum": m, "velocity": v, "mu_product": mu_product}

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(momentum_decay=self.momentum_decay)
        return config
