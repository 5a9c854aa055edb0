"""adamkit against its peers themselves: optax step for step, and Keras's Nadam and Adamax.

Every claim in the docstrings and the README of the form "adamkit equals / differs from optax's X"
or "Keras's Nadam / Adamax computes Y" is checked here against the peer's own code, on each backend
(optax runs on JAX whichever Keras backend is selected) and on both adamkit paths: ``fused=None``
(the fused kernel where the backend has one) and ``fused=False`` (plain Keras ops).

Tolerances. Both sides compute in float32 with the same formulas but not the same operation order
(optax forms β·m + (1 − β)·g, its bias corrections with ``jnp.power``; adamkit's ops and kernels
their own way), so each step differs by a few float32 ulps and the differences stay at ~1e-7
relative over 60 steps; ``FLOAT32_RTOL`` = 2e-6 leaves room for that. TensorFlow's fused kernel
forms 1 − β2 from float32 β2, 1.3e-5 relative in v (as in test_family.py), hence ``FUSED_RTOL``.
``assert_close``'s absolute floor is relative to each variable's largest value, so every variable
holds one gradient scale and the ε-dominated one is compared as strictly as the others.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

import adamkit
import reference
from conftest import assert_close, make_variables, run_optimizer

LR = 0.01
STEPS = 60
SHAPES = [(6,), (3, 4), (2, 5), (7,)]
FLOAT32_RTOL = 2e-6
FUSED_RTOL = 2e-5
# optax's float32 1 − β2ᵗ at small t, kept by AMSGrad's ν̂max (see optax_style_amsgrad)
OPTAX_AMSGRAD_RTOL = 2e-5
# 300 steps of pure decay m ← β1·m: optax multiplies by float32 β1 = 0.89999998, adamkit (as Keras
# and torch.lerp) subtracts float32 (1 − β1)·m, a factor 0.9 − 1e-9; 2.6e-8 relative per step
# compounds to 7.8e-6 in m after 300 steps (measured 4e-6 at step 145)
LONG_DECAY_RTOL = 1.5e-5
FUSED = pytest.mark.parametrize("fused", [None, False])


def rtol_for(optimizer):
    return FUSED_RTOL if getattr(optimizer, "_kernel", None) else FLOAT32_RTOL


def mixed_steps(rng, steps=STEPS):
    """Per step, one float32 gradient per shape, one scale per variable: ordinary (1), tiny
    (1e-8, √v̂ ≪ ε so ε dominates the denominator), scales over ten decades with every fourth
    step all zero, and large (1e3) with a fifth of the coordinates always zero."""
    never = rng.random(size=SHAPES[3]) < 0.2
    result = []
    for t in range(steps):
        mixed = 0.0 if t % 4 == 3 else 10.0 ** rng.uniform(-8, 2)
        grads = [rng.normal(size=SHAPES[0]), 1e-8 * rng.normal(size=SHAPES[1]),
                 mixed * rng.normal(size=SHAPES[2]), np.where(never, 0.0, 1e3 * rng.normal(size=SHAPES[3]))]
        result.append([g.astype(np.float32) for g in grads])
    return result


def initial_values(rng):
    return [rng.normal(size=s).astype(np.float32) for s in SHAPES]


# -- running each side, keeping every step ---------------------------------------------------------

def checkpoints(n):
    """The steps compared: every one of the first five, where ε and the bias corrections act
    hardest, then every tenth, and the last."""
    return sorted({t for t in range(1, n + 1) if t <= 5 or t % 10 == 0 or t == n})


def adamkit_trajectory(optimizer, initial, steps):
    """{step: (parameters, {state name: per-variable arrays})} after each checkpoint step."""
    variables = make_variables(initial)
    keep = set(checkpoints(len(steps)))
    trajectory = {}
    for t, grads in enumerate(steps, 1):
        optimizer.apply([keras.ops.convert_to_tensor(g) for g in grads], variables)
        if t in keep:
            state = {name: [keras.ops.convert_to_numpy(s) for s in values]
                     for name, values in optimizer.state_values().items()}
            trajectory[t] = ([keras.ops.convert_to_numpy(v) for v in variables], state)
    return trajectory


def optax_trajectory(transformation, initial, steps, state_names):
    """{step: (parameters, {adamkit state name: per-variable arrays})} of an optax chain run
    eagerly in float32; ``state_names`` maps adamkit's names to the fields of the chain's moments
    state (the first element of the chain that has ``mu``)."""
    import jax.numpy as jnp
    import optax

    params = [jnp.asarray(x) for x in initial]
    opt_state = transformation.init(params)
    keep = set(checkpoints(len(steps)))
    trajectory = {}
    for t, grads in enumerate(steps, 1):
        updates, opt_state = transformation.update([jnp.asarray(g) for g in grads], opt_state,
                                                   params)
        params = optax.apply_updates(params, updates)
        if t in keep:
            moments = next(s for s in opt_state if hasattr(s, "mu"))
            state = {ours: [np.asarray(x) for x in getattr(moments, theirs)]
                     for ours, theirs in state_names.items()}
            trajectory[t] = ([np.asarray(p) for p in params], state)
    return trajectory


def assert_trajectories_close(ours, theirs, rtol, what):
    """Parameters and the named state, every variable, at every checkpoint; returns the largest
    difference seen relative to each variable's largest magnitude."""
    assert list(ours) == list(theirs)
    worst = 0.0
    for t in ours:
        (params, state), (peer_params, peer_state) = ours[t], theirs[t]
        pairs = [("θ", params, peer_params)]
        pairs += [(name, state[name], peer_state[name]) for name in peer_state]
        for name, mine, peer in pairs:
            for i, (a, b) in enumerate(zip(mine, peer)):
                assert_close(a, b, rtol, f"{what}: {name} of variable {i} at step {t}")
                scale = max(float(np.max(np.abs(b))), 1e-30)
                worst = max(worst, float(np.max(np.abs(np.float64(a) - np.float64(b)))) / scale)
    return worst


ADAM_STATE = {"momentum": "mu", "velocity": "nu"}


# -- 1. optax, step for step --------------------------------------------------------------------

@FUSED
def test_adam_paper_mode_is_optax_adam(fused, rng):
    """``optax.adam`` adds ε to √v̂ after bias correction: adamkit's default ``"paper"`` mode."""
    import optax

    initial, steps = initial_values(rng), mixed_steps(rng)
    optimizer = adamkit.Adam(learning_rate=LR, beta_1=0.9, beta_2=0.999, epsilon=1e-8,
                             epsilon_mode="paper", fused=fused)
    ours = adamkit_trajectory(optimizer, initial, steps)
    theirs = optax_trajectory(optax.adam(LR, b1=0.9, b2=0.999, eps=1e-8), initial, steps,
                              ADAM_STATE)
    assert_trajectories_close(ours, theirs, rtol_for(optimizer), "Adam vs optax.adam")


@FUSED
def test_adamw_is_optax_adamw(fused, rng):
    """The same decoupled decay, written in two orders that are one formula.

    optax chains ``scale_by_adam``, ``add_decayed_weights(λ)`` (u ← u + λ·θₜ₋₁, the parameters
    it is handed before this step's update) and ``scale_by_learning_rate``:
    θₜ = θₜ₋₁ − α·(m̂/(√v̂ + ε) + λ·θₜ₋₁). adamkit shrinks first, θ ← θₜ₋₁·(1 − αλ), then steps:
    θₜ = θₜ₋₁ − αλ·θₜ₋₁ − α·m̂/(√v̂ + ε). Both decay θₜ₋₁ by αλ (coupled to α, as PyTorch);
    only the float32 rounding order differs.
    """
    import optax

    initial, steps = initial_values(rng), mixed_steps(rng)
    optimizer = adamkit.AdamW(learning_rate=LR, weight_decay=0.1, epsilon=1e-8, fused=fused)
    ours = adamkit_trajectory(optimizer, initial, steps)
    theirs = optax_trajectory(optax.adamw(LR, eps=1e-8, weight_decay=0.1), initial, steps,
                              ADAM_STATE)
    assert_trajectories_close(ours, theirs, rtol_for(optimizer), "AdamW vs optax.adamw")
    oracle = reference.adam(initial[0], [s[0] for s in steps], lr=LR, wd=0.1)
    assert_close(ours[STEPS][0][0], oracle[0], rtol_for(optimizer), "AdamW vs the oracle")


def optax_style_amsgrad(theta, grads, lr, b1=0.9, b2=0.999, eps=1e-8):
    """AMSGrad with the maximum taken after bias correction, v̂maxₜ = max(v̂maxₜ₋₁, vₜ/(1 − β2ᵗ)),
    and used as is: what optax's ``scale_by_amsgrad`` computes, in float64.

    optax forms 1 − βᵗ from float32 β (0.999 becomes 0.99900001, 1.3e-5 relative off 1 − β2 at
    t = 1), as this rendering does; its float32 ``pow`` is then within an ulp of β2ᵗ, which is
    still up to ~7e-6 relative in 1 − β2ᵗ for small t (measured), and ν̂max keeps that early value
    for good: hence ``OPTAX_AMSGRAD_RTOL``."""
    b1_32, b2_32 = float(np.float32(b1)), float(np.float32(b2))
    theta = np.array(theta, np.float64)
    m, v, nu_max = np.zeros_like(theta), np.zeros_like(theta), np.zeros_like(theta)
    for t, g in enumerate(grads, start=1):
        g = np.asarray(g, np.float64)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        nu_max = np.maximum(nu_max, v / (1 - b2_32**t))
        theta = theta - lr * (m / (1 - b1_32**t)) / (np.sqrt(nu_max) + eps)
    return theta, {"momentum": m, "velocity": v, "nu_max": nu_max}


def amsgrad_steps(rng):
    """Large gradients for five steps, then a hundred times smaller ones: the bias-corrected
    v̂ of step 1 (g²) is far above any later v̂, while the raw v₁ = (1 − β2)·g² is overtaken as
    v accumulates; so the two placements of the maximum give different denominators."""
    return [[(rng.normal(size=s) * (10.0 if t < 5 else 0.1)).astype(np.float32) for s in SHAPES]
            for t in range(STEPS)]


@FUSED
def test_amsgrad_takes_the_max_of_raw_v_where_optax_takes_it_after_bias_correction(fused, rng):
    """optax 0.2.8's ``scale_by_amsgrad`` (``bias_correction_nu=True``, its default) keeps
    max(ν̂maxₜ₋₁, vₜ/(1 − β2ᵗ)); adamkit, like PyTorch and Keras, keeps max(v̂maxₜ₋₁, vₜ) and
    divides by (1 − β2ᵗ) afterwards. Each side equals its own float64 rendering, and they differ."""
    import optax

    initial, steps = initial_values(rng), amsgrad_steps(rng)
    optimizer = adamkit.Adam(learning_rate=LR, amsgrad=True, fused=fused)
    ours = adamkit_trajectory(optimizer, initial, steps)
    theirs = optax_trajectory(optax.amsgrad(LR, eps=1e-8), initial, steps,
                              {**ADAM_STATE, "nu_max": "nu_max"})
    rtol = rtol_for(optimizer)
    for i, x in enumerate(initial):
        grads = [s[i] for s in steps]
        ours_oracle = reference.adam(x, grads, lr=LR, amsgrad=True)
        optax_oracle = optax_style_amsgrad(x, grads, lr=LR)
        params, state = ours[STEPS]
        optax_params, optax_state = theirs[STEPS]
        assert_close(params[i], ours_oracle[0], rtol, "adamkit vs the raw-v max oracle")
        assert_close(state["velocity_hat"][i], ours_oracle[1]["velocity_hat"], rtol, "v̂max")
        assert_close(optax_params[i], optax_oracle[0], OPTAX_AMSGRAD_RTOL,
                     "optax vs its rendering")
        assert_close(optax_state["nu_max"][i], optax_oracle[1]["nu_max"], OPTAX_AMSGRAD_RTOL,
                     "optax's nu_max vs its rendering")
        # the moments themselves are the same; only where the maximum is taken differs
        assert_close(state["velocity"][i], optax_state["velocity"][i], rtol, "v vs optax's nu")
        # ... and it changes the trajectory by far more than float32 rounding
        moved = np.abs(params[i] - x)
        gap = np.abs(params[i] - optax_params[i])
        assert np.max(gap / moved) > 0.05, f"variable {i}: adamkit and optax.amsgrad agree"


@FUSED
def test_adamax_is_optax_adamax(fused, rng):
    """optax's ``scale_by_adamax`` keeps u = max(β2·u, |g| + ε), ε inside the max, as adamkit."""
    import optax

    initial, steps = initial_values(rng), mixed_steps(rng)
    optimizer = adamkit.Adamax(learning_rate=LR, epsilon=1e-8, fused=fused)
    ours = adamkit_trajectory(optimizer, initial, steps)
    theirs = optax_trajectory(optax.adamax(LR, b1=0.9, b2=0.999, eps=1e-8), initial, steps,
                              {"momentum": "mu", "norm": "nu"})
    assert_trajectories_close(ours, theirs, rtol_for(optimizer), "Adamax vs optax.adamax")


TINY_THEN_ZEROS = [[np.full(3, 1e-8, np.float32)]] + [[np.zeros(3, np.float32)]] * 300


@FUSED
def test_adamax_tiny_gradient_then_zeros_is_optax_and_not_keras(fused):
    """The issue's case: gradient 1e-8, then 300 zeros, ε = 1e-8, α = 1e-3. adamkit and optax
    keep u = max(β2·u, |g| + ε): (1e-8 + ε)·0.999³⁰⁰ = 1.4814e-8 (still above the ε floor, which
    it reaches after 693 steps). Keras keeps u = max(β2·u, |g|) = 1e-8·0.999³⁰⁰ and divides by
    u + ε = 1.7407e-8, so it moves 0.22 % less in all."""
    import optax

    initial = [np.zeros(3, np.float32)]
    optimizer = adamkit.Adamax(learning_rate=1e-3, epsilon=1e-8, fused=fused)
    ours = adamkit_trajectory(optimizer, initial, TINY_THEN_ZEROS)
    theirs = optax_trajectory(optax.adamax(1e-3, eps=1e-8), initial, TINY_THEN_ZEROS,
                              {"momentum": "mu", "norm": "nu"})
    assert_trajectories_close(ours, theirs, max(rtol_for(optimizer), LONG_DECAY_RTOL),
                              "Adamax vs optax.adamax, gradient 1e-8 then zeros")
    params, state = ours[len(TINY_THEN_ZEROS)]
    np.testing.assert_allclose(state["norm"][0], 2e-8 * 0.999**300, rtol=1e-5)
    np.testing.assert_allclose(state["norm"][0], 1.4814e-8, rtol=1e-4)

    keras_adamax = keras.optimizers.Adamax(learning_rate=1e-3, epsilon=1e-8)
    keras_params = run_keras(keras_adamax, initial, TINY_THEN_ZEROS)[0]
    keras_u = keras.ops.convert_to_numpy(keras_adamax._u[0])
    np.testing.assert_allclose(keras_u + 1e-8, 1.7407e-8, rtol=1e-4)
    relative = np.abs(params[0] - keras_params) / np.abs(keras_params)  # 2.2e-3
    np.testing.assert_allclose(relative, 2.2e-3, rtol=0.05)
    assert np.all(np.abs(params[0]) > np.abs(keras_params))  # Keras's larger denominator


@FUSED
def test_nadam_with_momentum_fixed_at_beta_1_is_optax_nadam(fused, rng):
    """optax's ``nadam`` (``scale_by_adam(nesterov=True)``) has no μ schedule: its step is
    α·(β1·m/(1 − β1ᵗ⁺¹) + (1 − β1)·g/(1 − β1ᵗ))/(√v̂ + ε), Dozat's look-ahead with μₜ = β1 for
    every t. adamkit's μₜ = β1·(1 − ½·0.96^(tψ)) tends to β1 as ψ grows, and equals it exactly in
    float32 (and float64) once 0.96^ψ underflows, ψ ≳ 2·10⁴; then adamkit's
    α·(1 − μₜ)/(1 − Πμ)·g/d + α·μₜ₊₁/(1 − Πμ·μₜ₊₁)·m/d is optax's formula term for term."""
    import optax

    initial, steps = initial_values(rng), mixed_steps(rng)
    optimizer = adamkit.Nadam(learning_rate=LR, epsilon=1e-8, momentum_decay=1e6, fused=fused)
    ours = adamkit_trajectory(optimizer, initial, steps)
    theirs = optax_trajectory(optax.nadam(LR, b1=0.9, b2=0.999, eps=1e-8), initial, steps,
                              ADAM_STATE)
    assert_trajectories_close(ours, theirs, rtol_for(optimizer), "Nadam(ψ=1e6) vs optax.nadam")
    np.testing.assert_allclose(ours[STEPS][1]["mu_product"][0], 0.9**STEPS, rtol=1e-5)


@FUSED
def test_nadam_default_schedule_differs_from_optax_nadam(fused, rng):
    """With Dozat's and PyTorch's ψ = 0.004 (adamkit's default) μₜ starts near β1/2 and warms up
    over thousands of steps, so the first 60 steps are not optax's constant-β1 look-ahead."""
    import optax

    initial, steps = initial_values(rng), mixed_steps(rng)
    ours = adamkit_trajectory(adamkit.Nadam(learning_rate=LR, fused=fused), initial, steps)
    theirs = optax_trajectory(optax.nadam(LR), initial, steps, ADAM_STATE)
    moved = np.abs(ours[STEPS][0][0] - initial[0])
    gap = np.abs(ours[STEPS][0][0] - theirs[STEPS][0][0])
    assert np.max(gap / moved) > 0.01


# -- 2. Keras's Nadam and Adamax ------------------------------------------------------------------

# θ starts at zero so that θ is the movement itself, compared at float32 precision (from θ₀ ~ 1
# the movement's ~1e-2 would carry θ's ulp, 1e-5 of it)
KERAS_RTOL = 2e-6
KERAS_NADAM_RTOL = 2e-5  # Keras's Nadam on PyTorch: 7.8e-6 from the float64 oracle


def zeros():
    return [np.zeros(s, np.float32) for s in SHAPES]


def keras_steps(rng, steps=30):
    """Ordinary gradients, then ten steps of 1e-8 (ε-dominated), then ordinary again."""
    return [[(rng.normal(size=s) * (1e-8 if 10 <= t < 20 else 1.0)).astype(np.float32)
             for s in SHAPES] for t in range(steps)]


def run_keras(optimizer, initial, steps):
    variables = make_variables(initial)
    for grads in steps:
        optimizer.apply([keras.ops.convert_to_tensor(g) for g in grads], variables)
    return [keras.ops.convert_to_numpy(v) for v in variables]


@FUSED
def test_nadam_with_keras_schedule_is_keras_nadam(fused, rng):
    """Keras's Nadam: μₜ = β1·(1 − ½·0.96ᵗ) (ψ = 1) and ε = 1e-7 added after bias correction.

    Measured (largest difference over each variable's largest movement, seed 1234): adamkit is
    within 2e-7 of the float64 oracle on every backend and path; Keras's own Nadam is within
    1.2e-6 of it on TensorFlow and JAX but 7.8e-6 on PyTorch (its float32 rounding there), so
    adamkit vs Keras is checked at ``KERAS_NADAM_RTOL`` and adamkit vs the oracle at 1e-6."""
    initial, steps = zeros(), keras_steps(rng)
    ours, _ = run_optimizer(
        adamkit.Nadam(learning_rate=1e-3, momentum_decay=1.0, epsilon=1e-7, fused=fused),
        initial, steps)
    theirs = run_keras(keras.optimizers.Nadam(), initial, steps)
    for i in range(len(initial)):
        assert_close(ours[i], theirs[i], KERAS_NADAM_RTOL, f"Nadam vs Keras's, variable {i}")
        oracle = reference.nadam(initial[i], [s[i] for s in steps], lr=1e-3, eps=1e-7, psi=1.0)
        assert_close(ours[i], oracle[0], 1e-6, f"Nadam(ψ=1) vs the oracle, variable {i}")


@FUSED
def test_nadam_with_keras_schedule_is_keras_nadam_for_tiny_gradients(fused):
    """The issue's case: ten steps of gradient 1e-8, where ε decides the step."""
    initial = [np.zeros(4, np.float32)]
    steps = [[np.full(4, 1e-8, np.float32)]] * 10
    ours, _ = run_optimizer(
        adamkit.Nadam(learning_rate=1e-3, momentum_decay=1.0, epsilon=1e-7, fused=fused),
        initial, steps)
    theirs = run_keras(keras.optimizers.Nadam(), initial, steps)
    assert_close(ours[0], theirs[0], 1e-6, "Nadam vs Keras's, gradient 1e-8")


@FUSED
def test_adamax_is_keras_adamax_for_ordinary_gradients(fused, rng):
    """|g| ≫ ε: max(β2·u, |g| + ε) and max(β2·u, |g|) + ε agree to ~ε/|g|."""
    initial = zeros()
    steps = [[rng.normal(size=s).astype(np.float32) for s in SHAPES] for _ in range(30)]
    ours, _ = run_optimizer(adamkit.Adamax(learning_rate=1e-3, epsilon=1e-7, fused=fused),
                            initial, steps)
    theirs = run_keras(keras.optimizers.Adamax(), initial, steps)
    for i in range(len(initial)):
        assert_close(ours[i], theirs[i], KERAS_RTOL, f"Adamax vs Keras's, variable {i}")


@FUSED
def test_adamax_differs_from_keras_adamax_where_epsilon_matters(fused):
    """Gradient 1e-8, then 120 zeros, at Keras's ε = 1e-7 and α = 1e-3: adamkit's u starts at
    |g| + ε = 1.1e-7 and decays to the ε floor, where it holds from step 97 (1.1·0.999⁹⁵ < 1);
    Keras's u = 1e-8·0.999ᵗ decays freely and its denominator is u + ε, larger throughout, so
    Keras moves less: 0.39 % after 121 steps, three orders above float32 rounding."""
    initial = [np.zeros(3, np.float32)]
    steps = TINY_THEN_ZEROS[:121]
    ours, state = run_optimizer(adamkit.Adamax(learning_rate=1e-3, epsilon=1e-7, fused=fused),
                                initial, steps)
    keras_adamax = keras.optimizers.Adamax()
    theirs = run_keras(keras_adamax, initial, steps)
    np.testing.assert_allclose(state["norm"][0], 1e-7, rtol=1e-6)
    keras_u = keras.ops.convert_to_numpy(keras_adamax._u[0])
    np.testing.assert_allclose(keras_u, 1e-8 * 0.999**120, rtol=1e-4)
    relative = np.abs(ours[0] - theirs[0]) / np.abs(theirs[0])
    np.testing.assert_allclose(relative, 3.9e-3, rtol=0.05)
    assert np.all(np.abs(ours[0]) > np.abs(theirs[0]))
