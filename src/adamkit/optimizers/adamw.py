"""AdamW: Adam with decoupled weight decay on by default."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras

from adamkit.optimizers.adam import Adam
from adamkit.optimizers.base import FloatOrSchedule


@keras.saving.register_keras_serializable(package="adamkit")
class AdamW(Adam):
    r"""AdamW (Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019).

    Adam's step plus a decay of the weights that does not pass through the adaptive scaling::

        θₜ = θₜ₋₁·(1 − αₜ·λ) − αₜ·m̂ₜ/(√v̂ₜ + ε)

    with αₜ the (scheduled) learning rate, as ``torch.optim.AdamW``: the decay uses the weights
    before the step. Keras's ``AdamW`` computes the same with λ = 0.004 by default and ε̂; optax's
    ``adamw`` applies λ·θ before scaling by the learning rate (the same update) and masks with
    ``mask=``.

    Args:
        weight_decay: λ ≥ 0, a number, a ``LearningRateSchedule`` (called with the iteration
            count) or a zero-argument callable. Defaults to 0.01, as PyTorch.
        exclude_from_weight_decay: name patterns (regular expressions searched in each variable's
            name, as ``Optimizer.exclude_from_weight_decay``) that are not decayed, e.g.
            ``["bias", "gamma", "beta"]``.
        exclude_1d: leave every variable of rank ≤ 1 (biases, normalisation scales) undecayed.
        The other arguments are ``adamkit.Adam``'s.
    """

    def __init__(
        self,
        learning_rate: FloatOrSchedule = 0.001,
        weight_decay: FloatOrSchedule = 0.01,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-8,
        amsgrad: bool = False,
        exclude_from_weight_decay: Sequence[str] | None = None,
        exclude_1d: bool = False,
        **kwargs: Any,
    ) -> None:
        if weight_decay is None:
            raise ValueError("`weight_decay` must be set for AdamW; use adamkit.Adam for none.")
        super().__init__(
            learning_rate,
            beta_1,
            beta_2,
            epsilon,
            amsgrad=amsgrad,
            weight_decay=weight_decay,
            exclude_from_weight_decay=exclude_from_weight_decay,
            exclude_1d=exclude_1d,
            **kwargs,
        )
