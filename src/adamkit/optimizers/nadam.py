"""NAdam: Adam with Nesterov momentum."""

from __future__ import annotations

import dataclasses
from typing import Any

import keras
from keras import ops

from adamkit import ops as adam_ops
from adamkit.optimizers.base import AdamFamily, FloatOrSchedule, check_real
from adamkit.optimizers.docs import shared_args
from adamkit.rule import Rule, Scalars


@dataclasses.dataclass(frozen=True)
class NadamRule(Rule):
    """NAdam's scalars: a = α·μₜ₊₁/(1 − Πμ₁..ₜ₊₁) on m and b = α·(1 − μₜ)/(1 − Πμ₁..ₜ) on g, with
    c = 1 − β2ᵗ. Each variable carries its product Πμ₁..ₜ; the μ terms are formed in the dtype it
    arrives in (the parameters'), so every path stores the same product."""

    momentum_decay: float = 0.004
    carried = {"mu_product": 1.0}

    @property
    def exact_state(self):
        return tuple(self.carried)  # Πμ in the parameters' dtype: float64 ones keep float64

    def scalars(self, step, learning_rate, carried):
        product = carried["mu_product"]
        t, rate = ops.cast(step, product.dtype), ops.cast(learning_rate, product.dtype)
        mu = adam_ops.nadam_momentum(self.beta_1, t, self.momentum_decay)
        mu_next = adam_ops.nadam_momentum(self.beta_1, t + 1.0, self.momentum_decay)
        product = product * mu
        return Scalars(rate * mu_next / (1.0 - product * mu_next), self.epsilon,
                       correction=adam_ops.bias_correction(self.beta_2, step),
                       gradient_step=rate * (1.0 - mu) / (1.0 - product)), \
            {"mu_product": product}


@keras.saving.register_keras_serializable(package="adamkit")
@shared_args
class Nadam(AdamFamily):
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
        momentum_decay = check_real("momentum_decay", momentum_decay, low=0.0)
        rule = NadamRule(beta_1, beta_2, epsilon, momentum_decay=momentum_decay)
        super().__init__(learning_rate, rule, fused=fused, **kwargs)
        self.momentum_decay = momentum_decay

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(momentum_decay=self.momentum_decay)
        return config
