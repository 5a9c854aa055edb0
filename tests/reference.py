"""A float64 NumPy oracle: each variant written out plainly from its paper, used only by the tests.

Each function takes the initial parameters and a list of gradients and returns the parameters and
the state after every step, as float64 arrays. Nothing here is shared with ``adamkit``.
"""

from __future__ import annotations

import math

import numpy as np


def adam(theta, grads, lr=1e-3, b1=0.9, b2=0.999, eps=1e-8, amsgrad=False, wd=0.0,
         epsilon_hat=False):
    theta = np.array(theta, np.float64)
    m = np.zeros_like(theta)
    v = np.zeros_like(theta)
    v_max = np.zeros_like(theta)
    for t, g in enumerate(grads, start=1):
        g = np.asarray(g, np.float64)
        theta = theta * (1 - lr * wd)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        v_max = np.maximum(v_max, v)
        v_used = v_max if amsgrad else v
        if epsilon_hat:
            alpha = lr * math.sqrt(1 - b2**t) / (1 - b1**t)
            theta = theta - alpha * m / (np.sqrt(v_used) + eps)
        else:
            m_hat = m / (1 - b1**t)
            v_hat = v_used / (1 - b2**t)
            theta = theta - lr * m_hat / (np.sqrt(v_hat) + eps)
    state = {"momentum": m, "velocity": v}
    if amsgrad:
        state["velocity_hat"] = v_max
    return theta, state


def adamax(theta, grads, lr=2e-3, b1=0.9, b2=0.999, eps=1e-8):
    theta = np.array(theta, np.float64)
    m = np.zeros_like(theta)
    u = np.zeros_like(theta)
    for t, g in enumerate(grads, start=1):
        g = np.asarray(g, np.float64)
        m = b1 * m + (1 - b1) * g
        u = np.maximum(b2 * u, np.abs(g) + eps)
        theta = theta - lr / (1 - b1**t) * m / u
    return theta, {"momentum": m, "norm": u}


def nadam(theta, grads, lr=2e-3, b1=0.9, b2=0.999, eps=1e-8, psi=4e-3):
    theta = np.array(theta, np.float64)
    m = np.zeros_like(theta)
    v = np.zeros_like(theta)
    product = 1.0
    for t, g in enumerate(grads, start=1):
        g = np.asarray(g, np.float64)
        mu = b1 * (1 - 0.5 * 0.96 ** (t * psi))
        mu_next = b1 * (1 - 0.5 * 0.96 ** ((t + 1) * psi))
        product *= mu
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        d = np.sqrt(v / (1 - b2**t)) + eps
        theta = theta - lr * (1 - mu) / (1 - product) * g / d
        theta = theta - lr * mu_next / (1 - product * mu_next) * m / d
    return theta, {"momentum": m, "velocity": v, "mu_product": np.float64(product)}


def radam(theta, grads, lr=1e-3, b1=0.9, b2=0.999, eps=1e-8):
    theta = np.array(theta, np.float64)
    m = np.zeros_like(theta)
    v = np.zeros_like(theta)
    rho_inf = 2 / (1 - b2) - 1
    for t, g in enumerate(grads, start=1):
        g = np.asarray(g, np.float64)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat = m / (1 - b1**t)
        rho = rho_inf - 2 * t * b2**t / (1 - b2**t)
        if rho > 5:
            r = math.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
            theta = theta - lr * m_hat * r * math.sqrt(1 - b2**t) / (np.sqrt(v) + eps)
        else:
            theta = theta - lr * m_hat
    return theta, {"momentum": m, "velocity": v}


def keras_adam_float32(theta, grads, alphas, b1=0.9, b2=0.999, eps=1e-7, amsgrad=False):
    """``keras.optimizers.Adam``'s ``update_step`` evaluated in float32 with one IEEE rounding per
    operation in Keras's order (NumPy's float32 arithmetic rounds exactly so): the reference for
    "bit for bit as Keras" that no backend's own elementwise kernels take part in. ``alphas``: the
    step sizes α·√(1 − β2ᵗ)/(1 − β1ᵗ) per step, as the backend's pow formed them."""
    f = np.float32
    theta = np.array(theta, f)
    m, v, v_max = np.zeros_like(theta), np.zeros_like(theta), np.zeros_like(theta)
    for alpha, g in zip(alphas, grads):
        g = np.asarray(g, f)
        m = m + (g - m) * f(1 - b1)
        v = v + (g * g - v) * f(1 - b2)
        v_max = np.maximum(v_max, v)
        theta = theta - (m * f(alpha)) / (np.sqrt(v_max if amsgrad else v) + f(eps))
    state = {"momentum": m, "velocity": v}
    if amsgrad:
        state["velocity_hat"] = v_max
    return theta, state


def schedule_free_adamw(theta, grads, lr=0.0025, b1=0.9, b2=0.999, eps=1e-8, wd=0.0,
                        warmup_steps=0, r=0.0, weight_lr_power=2.0, lrs=None):
    """Schedule-free AdamW (Defazio et al. 2024) as the authors' released reference steps it;
    ``lrs``: a learning rate per step (a schedule), else ``lr`` throughout. Returns y (the
    parameters) and x, z, v."""
    y = np.array(theta, np.float64)
    z, x, v = y.copy(), y.copy(), np.zeros_like(y)
    lr_max = weight_sum = 0.0
    for t, g in enumerate(grads, start=1):
        g = np.asarray(g, np.float64)
        lr_t = (lr if lrs is None else lrs[t - 1]) * (min(1.0, t / warmup_steps)
                                                      if warmup_steps else 1.0)
        lr_max = max(lr_max, lr_t)
        weight = t**r * lr_max**weight_lr_power
        weight_sum += weight
        c = weight / weight_sum if weight_sum else 0.0
        z = z - lr_t * wd * y
        v = b2 * v + (1 - b2) * g * g
        z = z - lr_t * g / (np.sqrt(v / (1 - b2**t)) + eps)
        x = (1 - c) * x + c * z
        y = b1 * x + (1 - b1) * z
    return y, {"x": x, "z": z, "velocity": v}
