"""AdaMax: Adam with the infinity norm."""

from __future__ import annotations

from typing import Any

import keras

from adamkit import ops as adam_ops
from adamkit.optimizers.base import AdamFamily, FloatOrSchedule
from adamkit.optimizers.docs import shared_args
from adamkit.rule import Rule, Scalars


class AdamaxRule(Rule):
    """AdaMax's scalar: a = α/(1 − β1ᵗ); its infinity norm u is the denominator itself."""

    def scalars(self, step, learning_rate, carried):
        return Scalars(learning_rate / adam_ops.bias_correction(self.beta_1, step),
                       self.epsilon), {}


@keras.saving.register_keras_serializable(package="adamkit")
@shared_args
class Adamax(AdamFamily):
    r"""AdaMax (Kingma & Ba, ICLR 2015, Section 7.1): Adam with the infinity norm.

    Adam's second moment is replaced by an exponentially weighted infinity norm:

        mₜ = β1·mₜ₋₁ + (1 − β1)·gₜ
        uₜ = max(β2·uₜ₋₁, |gₜ| + ε)
        θₜ = θₜ₋₁ − α/(1 − β1ᵗ)·mₜ/uₜ

    The paper has no ε; inside the max is where ``torch.optim.Adamax`` and optax's ``adamax`` put
    it, and adamkit matches them. Keras's ``Adamax`` computes uₜ = max(β2·uₜ₋₁, |gₜ|) and adds ε
    to uₜ in the denominator, θₜ = θₜ₋₁ − α/(1 − β1ᵗ)·mₜ/(uₜ + ε): the two differ only where
    |g| is comparable to ε. Defaults follow PyTorch: α = 0.002.

    Args:
        learning_rate: α > 0: a float, a ``keras.optimizers.schedules.LearningRateSchedule``, or a
            zero-argument callable. Defaults to 0.002 (Keras's Adamax: 0.001).
        beta_1: β1 in [0, 1), the first moment's decay. Defaults to 0.9.
        beta_2: β2 in [0, 1), the infinity norm's decay. Defaults to 0.999.
        epsilon: ε ≥ 0, added to |gₜ| inside the max. Defaults to 1e-8 (Keras's Adamax: 1e-7).
        {{shared_args}}

    Examples:
        The first step moves each weight by about α against the sign of its gradient:

        >>> import keras, adamkit
        >>> w, g = keras.Variable([1.0, 2.0]), keras.ops.convert_to_tensor([0.5, -0.5])
        >>> adamkit.Adamax(learning_rate=0.1).apply([g], [w])
        >>> w.numpy().round(4)
        array([0.9, 2.1], dtype=float32)

    References:
        - D. P. Kingma, J. Ba. Adam: A Method for Stochastic Optimization. ICLR 2015, Section 7.1.
          arXiv:1412.6980.
    """

    def __init__(
        self,
        learning_rate: FloatOrSchedule = 0.002,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-8,
        fused: bool | None = None,
        **kwargs: Any,
    ) -> None:
        rule = AdamaxRule(beta_1, beta_2, epsilon, "infinity_norm")
        super().__init__(learning_rate, rule, fused=fused, **kwargs)
