"""A rule's scalars as the kernels take them: one row of seven per variable, for every backend.

The kernels (``adam_update.h``) run the step of ``adamkit.rule`` with the square root's division
turned into a product: θ ← θ·decay − (a·m + b·g)/(√v·s + ε), s = 1/√c. A row is

    decay, 1 − β1, 1 − β2 (AdaMax: β2), a, s, ε, b

with s = 1 where the rule has no c (and for AdaMax, whose u is the denominator itself and whose ε
sits inside its max). This module is the only translation from a rule's scalars to the kernels'.
"""

from __future__ import annotations

import numpy as np
from keras import ops

from adamkit.rule import Rule, Scalars

COLUMNS = ("decay", "one_minus_beta_1", "beta_2_term", "step_size", "inverse_root", "epsilon",
           "gradient_step")


def scalar_table(rule: Rule, scalars: Scalars, decays: list, dtype: str):
    """``(len(decays), 7)`` in ``dtype``: one row per variable, its decay factor first (1 where
    the entry of ``decays`` is None; variables that decay share one factor object). A scalar's
    vector (NAdam's a and b) has one entry per variable."""
    inverse_root = None if scalars.correction is None else ops.rsqrt(_as(scalars.correction,
                                                                         dtype))
    third = rule.beta_2 if rule.second_moment == "infinity_norm" else 1.0 - rule.beta_2
    rows = np.tile([1.0, 1.0 - rule.beta_1, third, 0.0, 1.0, rule.epsilon, 0.0], (len(decays), 1))
    # Each tensor placed by a column mask, a select each (a stack, tile and concatenation took
    # PyTorch's step ~40% longer).
    for column, value in ((3, scalars.step_size), (4, inverse_root), (5, scalars.epsilon),
                          (6, scalars.gradient_step)):
        if value is None or isinstance(value, float):
            continue  # the row's own default (ε: the rule's, from its double value)
        value = _as(value, dtype)
        if len(value.shape) == 1:  # one entry per variable
            value = value[:, None]
        rows = ops.where(np.arange(7) == column, value, rows)
    for factor in {id(d): d for d in decays if d is not None}.values():
        # AdamW hands every decaying variable the same factor: one cast, one select
        mask = np.array([[d is factor] + [False] * 6 for d in decays])
        rows = ops.where(mask, _as(factor, dtype), rows)
    return ops.cast(rows, dtype)


def _as(x, dtype):
    """``x`` in ``dtype``; a Python number straight from its double value (``ops.cast`` would
    first make it a float32 tensor)."""
    if isinstance(x, (int, float)):
        return ops.convert_to_tensor(x, dtype)
    return ops.cast(x, dtype)
