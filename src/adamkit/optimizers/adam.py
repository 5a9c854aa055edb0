"""Adam and its AMSGrad variant."""

from __future__ import annotations

from typing import Any

import keras

from adamkit import ops as adam_ops
from adamkit.optimizers.base import AdamFamily, FloatOrSchedule, check_bool, check_choice
from adamkit.optimizers.fused import FusedAdamStep

EPSILON_MODES = ("paper", "keras")


@keras.saving.register_keras_serializable(package="adamkit")
class Adam(FusedAdamStep, AdamFamily):
    r"""Adam (Kingma & Ba, ICLR 2015, arXiv:1412.6980), a drop-in for ``keras.optimizers.Adam``.

    With gradient gₜ at step t = 1, 2, … and m₀ = v₀ = 0 (Algorithm 1 of the paper)::

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
        learning_rate: α: a float > 0, a ``keras.optimizers.schedules.LearningRateSchedule``, or a
            zero-argument callable. Defaults to 0.001.
        beta_1: β1 in [0, 1), the decay of the first moment. Defaults to 0.9.
        beta_2: β2 in [0, 1), the decay of the second moment. Defaults to 0.999.
        epsilon: ε ≥ 0, added to √v̂ (or to √v in ``"keras"`` mode). Defaults to 1e-8.
        amsgrad: use AMSGrad's running maximum of vₜ. Defaults to False.
        epsilon_mode: ``"paper"`` (Algorithm 1, the default) or ``"keras"`` (ε̂, as Keras).
        fused: run the whole step of float32/float64 variables as a fused kernel: adamkit's
            own on TensorFlow (``adamkit.kernels.tensorflow``; on one device one launch for all
            variables of a dtype, under XLA as a custom call), the same loop as an XLA custom call
            on JAX (``adamkit.kernels.jax``), the same loop through ctypes on the torch backend
            (``adamkit.kernels.pytorch``; without a compiler PyTorch's fused Adam, for
            ``epsilon_mode="paper"``). ``None`` (default):
            wherever it applies; ``False``: always the plain ``adamkit.ops`` path; ``True``:
            require the backend to have one.
        weight_decay: decoupled decay λ, θ ← θ·(1 − αₜ·λ) before the step (as every Keras
            optimizer; note that ``torch.optim.Adam``'s ``weight_decay`` is an L2 term instead).
        **kwargs: every keyword of ``keras.optimizers.Optimizer``: ``clipnorm``, ``clipvalue``,
            ``global_clipnorm``, ``use_ema``, ``ema_momentum``, ``ema_overwrite_frequency``,
            ``loss_scale_factor``, ``gradient_accumulation_steps``, ``name``.
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
        super().__init__(learning_rate, beta_1, beta_2, epsilon, **kwargs)
        self.amsgrad = check_bool("amsgrad", amsgrad)
        self.epsilon_mode = check_choice("epsilon_mode", epsilon_mode, EPSILON_MODES)
        self.select_kernel(fused)

    def state_names(self) -> tuple[str, ...]:
        return ("momentum", "velocity", "velocity_hat") if self.amsgrad else ("momentum", "velocity")

    def compute_update(self, gradient, state, step, learning_rate):
        m = adam_ops.first_moment(state["momentum"], gradient, self.beta_1)
        v = adam_ops.second_moment(state["velocity"], gradient, self.beta_2)
        new_state = {"momentum": m, "velocity": v}
        if self.amsgrad:
            v = new_state["velocity_hat"] = adam_ops.running_max(state["velocity_hat"], v)
        direction = (
            adam_ops.epsilon_hat_update if self.epsilon_mode == "keras" else adam_ops.adam_update
        )
        update = direction(m, v, step, learning_rate, self.beta_1, self.beta_2, self.epsilon)
        return update, new_state

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(amsgrad=self.amsgrad, epsilon_mode=self.epsilon_mode)
        return config
