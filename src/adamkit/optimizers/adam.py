"""Adam and its AMSGrad variant."""

from __future__ import annotations

import dataclasses
from typing import Any

import keras

from adamkit import ops as adam_ops
from adamkit.optimizers.base import AdamFamily, FloatOrSchedule, check_bool, check_choice
from adamkit.optimizers.docs import shared_args
from adamkit.rule import Rule, Scalars

EPSILON_MODES = ("paper", "keras")


@dataclasses.dataclass(frozen=True)
class AdamRule(Rule):
    """Adam's scalars: a = α/(1 − β1ᵗ), c = 1 − β2ᵗ; in the ``"keras"`` ε form (ε̂ on √v before
    bias correction) a = α·√(1 − β2ᵗ)/(1 − β1ᵗ) as Keras forms it, and no c."""

    epsilon_mode: str = "paper"

    @property
    def scalars_in_parameter_dtype(self) -> bool:
        return self.epsilon_mode == "keras"  # Keras's own rounding of αₜ, bit for bit

    @property
    def peer_exact(self) -> bool:
        return self.epsilon_mode == "paper" and self.second_moment in ("ema", "max")

    def scalars(self, step, learning_rate, carried):
        if self.epsilon_mode == "keras":
            step_size = adam_ops.epsilon_hat_step_size(learning_rate, step, self.beta_1,
                                                       self.beta_2)
            return Scalars(step_size, self.epsilon), {}
        return Scalars(learning_rate / adam_ops.bias_correction(self.beta_1, step), self.epsilon,
                       correction=adam_ops.bias_correction(self.beta_2, step)), {}


@keras.saving.register_keras_serializable(package="adamkit")
@shared_args
class Adam(AdamFamily):
    r"""Adam (Kingma & Ba, ICLR 2015), a drop-in for ``keras.optimizers.Adam``, with AMSGrad.

    With gradient gₜ at step t = 1, 2, … and m₀ = v₀ = 0 (Algorithm 1 of the paper):

        mₜ = β1·mₜ₋₁ + (1 − β1)·gₜ
        vₜ = β2·vₜ₋₁ + (1 − β2)·gₜ²
        m̂ₜ = mₜ/(1 − β1ᵗ),  v̂ₜ = vₜ/(1 − β2ᵗ)
        θₜ = θₜ₋₁ − α·m̂ₜ/(√v̂ₜ + ε)

    This is what ``torch.optim.Adam`` and ``optax.adam`` compute, and it matches them step for step.

    ``epsilon_mode="keras"`` instead adds ε to √vₜ *before* bias correction (the paper's ε̂, Section
    2), θₜ = θₜ₋₁ − α·√(1 − β2ᵗ)/(1 − β1ᵗ)·mₜ/(√vₜ + ε̂), which is ``keras.optimizers.Adam``; with
    ``epsilon=1e-7`` it reproduces Keras's Adam exactly. The two forms differ only where √v̂ is
    comparable to ε, that is for tiny gradients.

    AMSGrad (Reddi, Kale & Kumar, ICLR 2018), ``amsgrad=True``: keeps v̂maxₜ = max(v̂maxₜ₋₁, vₜ) of the
    raw vₜ and uses it in place of vₜ above, so the effective step size never grows; PyTorch and
    Keras do the same (optax's ``amsgrad`` takes the max after bias correction).

    Args:
        learning_rate: α > 0: a float, a ``keras.optimizers.schedules.LearningRateSchedule``, or a
            zero-argument callable. Defaults to 0.001.
        beta_1: β1 in [0, 1), the decay of the first moment. Defaults to 0.9.
        beta_2: β2 in [0, 1), the decay of the second moment. Defaults to 0.999.
        epsilon: ε ≥ 0, added to √v̂ (or to √v in ``"keras"`` mode). Defaults to 1e-8 (Keras's
            Adam: 1e-7).
        amsgrad: use AMSGrad's running maximum of vₜ. Defaults to False.
        epsilon_mode: ``"paper"`` (Algorithm 1; PyTorch and optax) or ``"keras"`` (ε̂, as Keras).
            Defaults to ``"paper"``.
        {{shared_args}}

    Examples:
        The first step moves each weight by about α against the sign of its gradient:

        >>> import keras, adamkit
        >>> w, g = keras.Variable([1.0, 2.0]), keras.ops.convert_to_tensor([0.5, -0.5])
        >>> adamkit.Adam(learning_rate=0.1).apply([g], [w])
        >>> w.numpy().round(4)
        array([0.9, 2.1], dtype=float32)

        With ``epsilon_mode="keras"`` and Keras's ε it computes what ``keras.optimizers.Adam`` does:

        >>> import numpy as np
        >>> ours, theirs = keras.Variable([1.0, 2.0]), keras.Variable([1.0, 2.0])
        >>> a = adamkit.Adam(epsilon=1e-7, epsilon_mode="keras")
        >>> b = keras.optimizers.Adam(epsilon=1e-7)
        >>> for g in ([0.5, -0.5], [1e-6, 2e-6], [-0.2, 0.4]):
        ...     a.apply([keras.ops.convert_to_tensor(g)], [ours])
        ...     b.apply([keras.ops.convert_to_tensor(g)], [theirs])
        >>> np.allclose(ours.numpy(), theirs.numpy(), rtol=1e-6, atol=0)
        True

    References:
        - D. P. Kingma, J. Ba. Adam: A Method for Stochastic Optimization. ICLR 2015.
          arXiv:1412.6980.
        - S. J. Reddi, S. Kale, S. Kumar. On the Convergence of Adam and Beyond. ICLR 2018.
    """

    def __init__(
        self,
        learning_rate: FloatOrSchedule = 0.001,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-8,
        amsgrad: bool = False,
        epsilon_mode: str = "paper",
        fused: bool | None = None,
        **kwargs: Any,
    ) -> None:
        check_bool("amsgrad", amsgrad)
        check_choice("epsilon_mode", epsilon_mode, EPSILON_MODES)
        rule = AdamRule(beta_1, beta_2, epsilon, "max" if amsgrad else "ema",
                        epsilon_mode=epsilon_mode)
        super().__init__(learning_rate, rule, fused=fused, **kwargs)
        self.amsgrad, self.epsilon_mode = amsgrad, epsilon_mode

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(amsgrad=self.amsgrad, epsilon_mode=self.epsilon_mode)
        return config
