"""A rule's scalars as the kernels take them: one row of seven per variable, for every backend.

The kernels (``adam_update.h``) run the step of ``adamkit.rule`` with the square root's division
turned into a product: θ ← θ·decay − (a·m + b·g)/(√v·s + ε), s = 1/√c. A row is

    decay, 1 − β1, 1 − β2 (AdaMax: β2), a, s, ε, b

with s = 1 where the rule has no c (and for AdaMax, whose u is the denominator itself and whose ε
sits inside its max). This module is the only translation from a rule's scalars to the kernels'.
"""

from __future__ import annotations

import math

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
    rows = _defaults(rule, len(decays))
    # Each tensor placed by a column mask, a select each (a stack, tile and concatenation took
    # PyTorch's step ~40% longer).
    for column, value in _stepwise(rule, scalars, inverse_root):
        value = _as(value, dtype)
        if len(value.shape) == 1:  # one entry per variable
            value = value[:, None]
        rows = ops.where(np.arange(7) == column, value, rows)
    for factor in {id(d): d for d in decays if d is not None}.values():
        # AdamW hands every decaying variable the same factor: one cast, one select
        mask = np.array([[d is factor] + [False] * 6 for d in decays])
        rows = ops.where(mask, _as(factor, dtype), rows)
    return ops.cast(rows, dtype)


def host_scalar_table(rule: Rule, scalars: Scalars, decays: list) -> list[list[float]]:
    """``scalar_table``'s float64 rows formed on the host as Python floats, from scalars that hold
    their values (Python floats, or a PyTorch step's CPU tensors): each value read once, where
    ``scalar_table``'s ops would cost PyTorch's step a dozen dispatches, and NumPy's scalar
    functions as much again inside a training step (``adamkit.ops.Floats``). The same float64
    operations, so the same rows (``1/√c`` and an ``rsqrt`` are both correctly rounded)."""
    count = len(decays)
    default = _default_row(rule)
    rows = [default.copy() for _ in range(count)]
    for column, value in _stepwise(rule, scalars, _inverse_root(scalars.correction)):
        for row, entry in zip(rows, _host(value, count)):
            row[column] = entry
    for row, decay in zip(rows, decays):
        if decay is not None:
            row[0] = _host(decay, 1)[0]
    return rows


def _inverse_root(correction) -> list | None:
    """1/√c on the host: a list of one entry, or of one per variable (a list is never taken for
    the row's default s = 1). A positive float takes ``math``; anything else NumPy, whose doubles
    give IEEE's infinity and NaN where c is 0 or negative."""
    if correction is None:
        return None
    if type(correction) is float and correction > 0.0:
        return [1.0 / math.sqrt(correction)]
    return (1.0 / np.sqrt(np.asarray(correction, np.float64))).reshape(-1).tolist()


def _default_row(rule: Rule) -> list[float]:
    """A row's step-independent values, in double: a = b = 0 and s = 1 until set."""
    third = rule.beta_2 if rule.second_moment == "infinity_norm" else 1.0 - rule.beta_2
    return [1.0, 1.0 - rule.beta_1, third, 0.0, 1.0, rule.epsilon, 0.0]


def _defaults(rule: Rule, count: int) -> np.ndarray:
    """``count`` default rows, a float64 array."""
    return np.array([_default_row(rule)] * count)


def _stepwise(rule: Rule, scalars: Scalars, inverse_root) -> list:
    """(column, value) for the columns this step sets: its tensors, and any Python number other
    than the row's default (ε as the rule states it stays that double, not a float32 tensor's)."""
    row = _default_row(rule)
    return [(column, value) for column, value in ((3, scalars.step_size), (4, inverse_root),
                                                  (5, scalars.epsilon), (6, scalars.gradient_step))
            if value is not None and not (isinstance(value, (int, float))
                                          and float(value) == row[column])]


def _host(x, count: int) -> list[float]:
    """A value as ``count`` Python floats, one a row: a float repeated, or a per-variable value's
    entries; anything else read through the array protocol, which costs a PyTorch CPU tensor a
    tenth of ``ops.convert_to_numpy``."""
    if isinstance(x, float):
        return [float(x)] * count
    if isinstance(x, list):  # _inverse_root's: one entry, or one a row
        return x * count if len(x) == 1 else x
    values = np.asarray(x, dtype=np.float64)
    return [float(values)] * count if values.ndim == 0 else values.tolist()


def _as(x, dtype):
    """``x`` in ``dtype``; a Python number straight from its double value (``ops.cast`` would
    first make it a float32 tensor)."""
    if isinstance(x, (int, float)):
        return ops.convert_to_tensor(x, dtype)
    return ops.cast(x, dtype)
