"""The Adam family's math, once, as small pure functions on ``keras.ops`` tensors.

A member's rule (``adamkit.rule``) forms its step from these pieces; every path (the ops path, the
kernels' scalars, the lazy rows) takes them from there, so each equation is written here once.

Conventions: ``step`` is the 1-based iteration count ``t`` as a float tensor; ``beta_1``, ``beta_2``
and ``epsilon`` are Python floats; tensors are computed in the dtype they arrive in. The step's
scalars (``power``, ``bias_correction``, ``nadam_momentum``, ``radam_rectifier``) also take Python
floats, and NumPy doubles, and are then formed in double precision on the host (``namespace``): a
kernel called from the host (PyTorch's) forms them so, where each Keras op would cost its step a
dispatch of several microseconds.
"""

from __future__ import annotations

import math

import numpy as np
from keras import ops
from keras.backend import standardize_dtype


def ema(average, value, decay):
    """Exponential moving average: ``decay·average + (1 − decay)·value``.

    Written as ``average + (1 − decay)·(value − average)``, the form Keras and ``torch.lerp`` use,
    which keeps one rounding fewer than the textbook form.
    """
    return average + (value - average) * (1.0 - decay)


def first_moment(m, g, beta_1):
    """m ← β1·m + (1 − β1)·g."""
    return ema(m, g, beta_1)


def second_moment(v, g, beta_2):
    """v ← β2·v + (1 − β2)·g²."""
    return ema(v, ops.square(g), beta_2)


class Floats:
    """The few functions of ``keras.ops`` that the step's scalars use, on Python floats (IEEE
    doubles, as NumPy's): what a kernel called from the host forms its scalars with. Inside a
    training step NumPy's scalar functions took PyTorch's step 3× as long as when timed alone (their
    code gone cold in the forward and backward passes); Python's arithmetic and ``math`` little.
    The same doubles as NumPy's, but where a division by zero, or ``math``'s overflow or domain
    error, would give IEEE's infinity or NaN: there Python raises (``ArithmeticError``,
    ``ValueError``), and the caller takes NumPy's doubles."""

    exp, expm1, sqrt = staticmethod(math.exp), staticmethod(math.expm1), staticmethod(math.sqrt)

    @staticmethod
    def zeros_like(x: float) -> float:
        return 0.0

    @staticmethod
    def ones_like(x: float) -> float:
        return 1.0

    @staticmethod
    def greater(a: float, b: float) -> bool:
        return a > b

    @staticmethod
    def greater_equal(a: float, b: float) -> bool:
        return a >= b

    @staticmethod
    def where(condition: bool, a: float, b: float) -> float:
        return a if condition else b


def namespace(x):
    """The functions that evaluate ``x``: NumPy for NumPy values, ``Floats`` for Python floats,
    else ``keras.ops``."""
    if isinstance(x, (np.ndarray, np.generic)):  # before float: NumPy's double is a float
        return np
    return Floats if isinstance(x, float) else ops


def larger(a, b):
    """Elementwise max(a, b) in the inputs' dtype, as the kernels take it (b where a is NaN or
    b is). Not ``keras.ops.maximum``: on PyTorch it returns float32 for float64 inputs (Keras
    3.15), which cost float64 AMSGrad and AdaMax their precision there."""
    xp = namespace(a)
    return xp.where(xp.greater_equal(a, b), a, b)


def power(beta, step):
    """βᵗ as exp(t·ln β), with ln β taken in double precision before it meets a float32 tensor."""
    if beta == 0.0:
        return namespace(step).zeros_like(step)
    return namespace(step).exp(step * math.log(beta))


def bias_correction(beta, step):
    """1 − βᵗ: the factor that un-biases a zero-initialised moving average at step t.

    Computed as −expm1(t·ln β). In float32, 1 − pow(β, t) inherits β's rounding (β2 = 0.999 is
    stored as 0.99900001…, so 1 − β2 is off by 1.3e-5 relative) while the moments use 1 − β formed
    in double; this form keeps the two consistent, as PyTorch's double-precision scalars are.
    """
    if beta == 0.0:
        return namespace(step).ones_like(step)
    return -namespace(step).expm1(step * math.log(beta))


def epsilon_hat_step_size(learning_rate, step, beta_1, beta_2):
    """αₜ = α·√(1 − β2ᵗ)/(1 − β1ᵗ), formed as ``keras.optimizers.Adam`` forms it: βᵗ as
    pow(β rounded to ``step``'s dtype, t), in that dtype and in the same order, so that every path
    of ``epsilon_mode="keras"`` (the ops and each kernel) agrees with Keras bit for bit."""
    dtype = standardize_dtype(step.dtype)
    beta_1_power = ops.power(ops.cast(beta_1, dtype), step)
    beta_2_power = ops.power(ops.cast(beta_2, dtype), step)
    return learning_rate * ops.sqrt(1 - beta_2_power) / (1 - beta_1_power)


def running_max(maximum, value):
    """AMSGrad's non-decreasing second moment: v_max ← max(v_max, v)."""
    return larger(maximum, value)


def infinity_norm(u, g, beta_2, epsilon):
    """AdaMax's exponentially weighted infinity norm: u ← max(β2·u, |g| + ε).

    ε inside the max follows ``torch.optim.Adamax``; the paper has ε = 0.
    """
    return larger(beta_2 * u, ops.abs(g) + epsilon)


def nadam_momentum(beta_1, step, momentum_decay):
    """Dozat's momentum schedule: μₜ = β1·(1 − ½·0.96^(t·ψ))."""
    return beta_1 * (1.0 - 0.5 * power(0.96, step * momentum_decay))


def radam_rectifier(step, beta_2):
    """RAdam's variance rectification (Liu et al. 2020).

    Returns ``(rectified, r)``: whether ρₜ > 5, and rₜ = √((ρₜ−4)(ρₜ−2)ρ∞ / ((ρ∞−4)(ρ∞−2)ρₜ)) with
    ρ∞ = 2/(1 − β2) − 1 and ρₜ = ρ∞ − 2t·β2ᵗ/(1 − β2ᵗ). r is clamped to stay real when not used.
    """
    rho_inf = 2.0 / (1.0 - beta_2) - 1.0
    rho = rho_inf - 2.0 * step * power(beta_2, step) / bias_correction(beta_2, step)
    xp = namespace(step)
    rectified = xp.greater(rho, 5.0)
    ratio = (rho - 4.0) * (rho - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho)
    return rectified, xp.sqrt(larger(ratio, 0.0))


def decay_factor(learning_rate, weight_decay):
    """Loshchilov & Hutter's decoupled weight decay, θ ← θ·(1 − lr·λ) before the step: the factor."""
    return 1.0 - learning_rate * weight_decay


# -- schedule-free AdamW (Defazio et al. 2024), as the authors' reference forms each piece -------


def warmup(step, warmup_steps: int):
    """The linear warm-up factor min(1, t/warmup_steps); 1 without warm-up."""
    if warmup_steps <= 0:
        return ops.ones_like(step)
    fraction = step / float(warmup_steps)
    return ops.where(fraction < 1.0, fraction, ops.ones_like(fraction))  # not ops.minimum: see larger


def averaging_weight(step, lr_max, r: float, weight_lr_power: float):
    """wₜ = t^r · lr_max^p: the weight of step t's iterate in the average x."""
    weight = ops.power(lr_max, weight_lr_power) if weight_lr_power != 0.0 else ops.ones_like(lr_max)
    return weight if r == 0.0 else ops.power(step, r) * weight


def compensated_add(high, low, value):
    """(high, low) + value as a new (high, low), high + low holding the sum to about twice the
    dtype's precision (Knuth's TwoSum): a running sum of many similar weights in float32 would
    otherwise drift by up to t·2⁻²⁴ of itself."""
    total = high + value
    other = total - high
    error = (high - (total - other)) + (value - other)
    return total, low + error


def interpolate(a, b, weight):
    """(1 − w)·a + w·b, as the schedule-free reference forms it (a·(1 − w) + b·w)."""
    return a * (1.0 - weight) + b * weight
