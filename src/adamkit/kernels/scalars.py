"""The fused kernels' per-variable scalars, formed once for every backend (``keras.ops``).

Every kernel (``adam_update.h``) computes θ ← θ·decay − (a·m + b·g)/(√v·s + ε) after the moment
updates m ← m + (g − m)(1 − β1), v ← v + (g² − v)(1 − β2), from seven scalars per variable:
decay, 1 − β1, 1 − β2, a, s, ε, b. The rules differ only in these:

- Adam: a = α/(1 − β1ᵗ), s = 1/√(1 − β2ᵗ), b = 0; with the ``"keras"`` ε̂ (added to √v before
  the correction) a = α·√(1 − β2ᵗ)/(1 − β1ᵗ) as Keras forms it, s = 1, ε = ε̂;
- RAdam (``rectify``): once ρₜ > 5, a = α·rₜ·√(1 − β2ᵗ)/(1 − β1ᵗ), s = 1; before, a = α/(1 − β1ᵗ),
  s = 0, ε = 1, so that θ ← θ − α·m̂;
- NAdam (``look_ahead``): each variable's own (a, b) from its μ product, as two vectors;
- AdaMax (``infinity_norm``): v is the infinity norm u ← max(β2·u, |g| + ε) and the denominator
  itself, so the third scalar is β2 and ε sits inside the max; a as Adam's, s unused (1).
"""

from __future__ import annotations

import numpy as np
from keras import ops

from adamkit import ops as adam_ops


def kernel_scalars(dtype: str, step, learning_rate, beta_1: float, beta_2: float,
                   epsilon: float, epsilon_mode: str, decays: list, rectify: bool = False,
                   look_ahead: tuple | None = None, infinity_norm: bool = False):
    """``(len(decays), 7)`` in ``dtype``: one row per variable, its decay factor first (1 where
    the entry of ``decays`` is None). TensorFlow and PyTorch form them in float64 (rounded once
    to the parameters' dtype by the caller), JAX in the parameters' dtype."""
    t = _as(step, dtype)
    eps = epsilon
    if epsilon_mode == "keras" and not infinity_norm and not rectify:
        # Keras's own αₜ, formed in the parameters' dtype (``step``'s) as Keras forms it, and
        # ε̂ on √v unscaled: the kernels then compute Keras's Adam bit for bit.
        step_size = _as(adam_ops.epsilon_hat_step_size(learning_rate, step, beta_1, beta_2), dtype)
        inverse_root = 1.0
    else:
        step_size = _as(learning_rate, dtype) / adam_ops.bias_correction(beta_1, t)
        inverse_root = 1.0 if infinity_norm else ops.rsqrt(adam_ops.bias_correction(beta_2, t))
    if rectify:
        rectified, r = adam_ops.radam_rectifier(t, beta_2)
        step_size = ops.where(rectified, step_size * r / inverse_root, step_size)
        inverse_root = ops.where(rectified, 1.0, 0.0)
        eps = ops.where(rectified, _as(eps, dtype), 1.0)
    # The constant columns from their double values; the step's own placed by a column mask, a
    # select each (a stack, tile and concatenation took PyTorch's step ~40% longer).
    third = beta_2 if infinity_norm else 1.0 - beta_2
    rows = np.tile([1.0, 1.0 - beta_1, third, 0.0, 1.0, epsilon, 0.0], (len(decays), 1))
    for column, value in ((3, step_size), (4, inverse_root), (5, eps)):
        if not isinstance(value, float):
            rows = ops.where(np.arange(7) == column, value, rows)
    for factor in {id(d): d for d in decays if d is not None}.values():
        # AdamW hands every decaying variable the same factor: one cast, one select
        mask = np.array([[d is factor] + [False] * 6 for d in decays])
        rows = ops.where(mask, _as(factor, dtype), rows)
    if look_ahead is not None:  # NAdam: (a, b), one entry of each per variable
        for column, values in zip((3, 6), look_ahead):
            rows = ops.where(np.arange(7) == column, _as(values, dtype)[:, None], rows)
    return ops.cast(rows, dtype)


def _as(x, dtype):
    """``x`` in ``dtype``; a Python number straight from its double value (``ops.cast`` would
    first make it a float32 tensor)."""
    if isinstance(x, (int, float)):
        return ops.convert_to_tensor(x, dtype)
    return ops.cast(x, dtype)
