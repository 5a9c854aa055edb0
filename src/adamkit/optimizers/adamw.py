"""AdamW: Adam with decoupled weight decay on by default."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras

from adamkit.optimizers.adam import Adam
from adamkit.optimizers.base import FloatOrSchedule
from adamkit.optimizers.docs import shared_args


@keras.saving.register_keras_serializable(package="adamkit")
@shared_args
class AdamW(Adam):
    r"""AdamW (Loshchilov & Hutter, ICLR 2019): Adam with decoupled weight decay, on by default.

    Adam's step plus a decay of the weights that does not pass through the adaptive scaling:

        θₜ = θₜ₋₁·(1 − αₜ·λ) − αₜ·m̂ₜ/(√v̂ₜ + ε)

    with αₜ the (scheduled) learning rate and m̂ₜ, v̂ₜ as in ``Adam``. This is
    ``torch.optim.AdamW``: the decay uses the weights before the step. Keras's ``AdamW`` computes
    the same decay with λ = 0.004 and ε̂ = 1e-7 by default (``adamkit.AdamW(weight_decay=0.004,
    epsilon=1e-7, epsilon_mode="keras")`` is Keras's); optax's ``adamw`` adds λ·θ to the scaled
    update before multiplying by the learning rate (the same update) and selects the decayed
    parameters with ``mask=``, where adamkit takes name patterns or ``exclude_1d``.

    Args:
        learning_rate: α > 0: a float, a ``keras.optimizers.schedules.LearningRateSchedule``, or a
            zero-argument callable. Defaults to 0.001.
        weight_decay: λ ≥ 0: a number, a ``LearningRateSchedule`` (called with the iteration
            count) or a zero-argument callable; not None (use ``adamkit.Adam`` for no decay).
            Defaults to 0.01, as PyTorch.
        beta_1: β1 in [0, 1). Defaults to 0.9.
        beta_2: β2 in [0, 1). Defaults to 0.999.
        epsilon: ε ≥ 0, added to √v̂ (to √v in ``"keras"`` mode). Defaults to 1e-8.
        amsgrad: AMSGrad's running maximum of vₜ, as in ``Adam``. Defaults to False.
        exclude_from_weight_decay: name patterns (regular expressions searched in each variable's
            name) whose variables are not decayed, e.g. ``["bias", "gamma",
            "beta"]``. Defaults to None.
        exclude_1d: leave every variable of rank ≤ 1 (biases, normalisation scales)
            undecayed. Defaults to False.
        epsilon_mode: ``"paper"`` or ``"keras"``, as in ``Adam``. Defaults to ``"paper"``.
        {{shared_args}}

    Examples:
        One step: the weights shrink by αλ = 0.1 × 0.01, then move by about α:

        >>> import keras, adamkit
        >>> w, g = keras.Variable([1.0, 2.0]), keras.ops.convert_to_tensor([0.5, -0.5])
        >>> adamkit.AdamW(learning_rate=0.1).apply([g], [w])
        >>> w.numpy().round(4)
        array([0.899, 2.098], dtype=float32)

        Keras's defaults, with ε̂, compute what ``keras.optimizers.AdamW`` does:

        >>> import numpy as np
        >>> ours, theirs = keras.Variable([1.0, 2.0]), keras.Variable([1.0, 2.0])
        >>> a = adamkit.AdamW(weight_decay=0.004, epsilon=1e-7, epsilon_mode="keras")
        >>> b = keras.optimizers.AdamW(weight_decay=0.004, epsilon=1e-7)
        >>> for g in ([0.5, -0.5], [0.1, 0.3], [-0.2, 0.4]):
        ...     a.apply([keras.ops.convert_to_tensor(g)], [ours])
        ...     b.apply([keras.ops.convert_to_tensor(g)], [theirs])
        >>> np.allclose(ours.numpy(), theirs.numpy(), rtol=1e-6, atol=0)
        True

    References:
        - I. Loshchilov, F. Hutter. Decoupled Weight Decay Regularization. ICLR 2019.
          arXiv:1711.05101.
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
