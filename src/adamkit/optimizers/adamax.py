"""AdaMax: Adam with the infinity norm."""

from __future__ import annotations

from typing import Any

import keras

from adamkit import ops as adam_ops
from adamkit.optimizers.base import AdamFamily, FloatOrSchedule
from adamkit.optimizers.fused import FusedAdamStep


@keras.saving.register_keras_serializable(package="adamkit")
class Adamax(FusedAdamStep, AdamFamily):
    r"""AdaMax (Kingma & Ba, ICLR 2015, Section 7.1): Adam's second moment replaced by an
    exponentially weighted infinity norm::

        mₜ = β1·mₜ₋₁ + (1 − β1)·gₜ
        uₜ = max(β2·uₜ₋₁, |gₜ| + ε)
        θₜ = θₜ₋₁ − α/(1 − β1ᵗ)·mₜ/uₜ

    ε inside the max follows ``torch.optim.Adamax`` (the paper has none); Keras's ``Adamax`` adds
    ε to uₜ instead (u = max(β2·u, |g|), step mₜ/(uₜ + ε)), and optax's ``adamax`` likewise.
    Defaults follow PyTorch: α = 0.002.

    ``fused`` as for ``Adam``: adamkit's Adam kernel runs AdaMax too, with uₜ in v's place and as
    the denominator itself (``adamkit.optimizers.fused``); on PyTorch, where adamkit's kernel
    cannot be built, the ops path runs (PyTorch has no fused AdaMax).
    """

    infinity_norm = True

    def __init__(
        self,
        learning_rate: FloatOrSchedule = 0.002,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-8,
        fused: bool | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(learning_rate, beta_1, beta_2, epsilon, **kwargs)
        self.select_kernel(fused)

    def state_names(self) -> tuple[str, ...]:
        return ("momentum", "norm")

    def compute_update(self, gradient, state, step, learning_rate):
        m = adam_ops.first_moment(state["momentum"], gradient, self.beta_1)
        u = adam_ops.infinity_norm(state["norm"], gradient, self.beta_2, self.epsilon)
        update = adam_ops.adamax_update(m, u, step, learning_rate, self.beta_1)
        return update, {"momentum": m, "norm": u}
