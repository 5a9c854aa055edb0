"""Property tests (hypothesis) for Adam over shapes, dtypes, hyperparameters and gradient scales.

Float32 cannot hold g² for |g| above ~1.8e19 (v overflows, in every library), so the huge scale is
1e30 in float64 and 1e18 in float32; the tiny scales (1e-30, subnormal) are run in both.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import adamkit
import reference

TOLERANCE = {"float32": 2e-5, "float64": 1e-10}
HUGE = {"float32": 1e18, "float64": 1e30}
SUBNORMAL = {"float32": 1e-40, "float64": 1e-310}

shapes = st.lists(st.integers(1, 5), min_size=0, max_size=3).map(tuple)
dtypes = st.sampled_from(["float32", "float64"])
scales = st.sampled_from(["zero", "subnormal", "1e-30", "one", "huge"])
hyperparameters = st.fixed_dictionaries({
    "learning_rate": st.floats(1e-4, 1e-1),
    "beta_1": st.floats(0.0, 0.99),
    "beta_2": st.floats(0.5, 0.9999),
    "epsilon": st.floats(1e-10, 1e-3),
})
# Derandomized: the same examples on every run, so CI cannot fail on a new draw by chance.
PROPERTY = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


def gradient_scale(name: str, dtype: str) -> float:
    return {"zero": 0.0, "subnormal": SUBNORMAL[dtype], "1e-30": 1e-30, "one": 1.0,
            "huge": HUGE[dtype]}[name]


def trajectory(hp, shape, dtype, grads, theta0):
    """θ after each step, and the final state, from ``adamkit.Adam`` applied eagerly."""
    optimizer = adamkit.Adam(**hp)
    variable = keras.Variable(np.asarray(theta0, dtype), dtype=dtype)
    thetas = []
    for g in grads:
        optimizer.apply([keras.ops.convert_to_tensor(np.asarray(g, dtype))], [variable])
        thetas.append(np.asarray(keras.ops.convert_to_numpy(variable), np.float64))
    state = {k: np.asarray(keras.ops.convert_to_numpy(v), np.float64)
             for k, v in optimizer.state_of(variable).items()}
    return thetas, state


def draw_gradients(data, shape, steps, scale):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    return [rng.standard_normal(shape) * scale for _ in range(steps)], rng.standard_normal(shape)


@PROPERTY
@given(hp=hyperparameters, shape=shapes, dtype=dtypes, scale=scales, data=st.data())
def test_matches_the_float64_oracle_and_stays_finite(hp, shape, dtype, scale, data):
    grads, theta0 = draw_gradients(data, shape, 4, gradient_scale(scale, dtype))
    grads = [np.asarray(g, dtype) for g in grads]  # the oracle sees what we see
    theta0 = np.asarray(theta0, dtype)
    thetas, state = trajectory(hp, shape, dtype, grads, theta0)
    # Keras keeps the learning rate in a float32 variable, whatever the parameters' dtype.
    learning_rate = float(np.float32(hp["learning_rate"]))
    expected, expected_state = reference.adam(theta0, grads, lr=learning_rate, b1=hp["beta_1"],
                                              b2=hp["beta_2"], eps=hp["epsilon"])
    # Compared on the movement, in units of the largest possible total step (4·α), plus θ's own
    # rounding: each of the 4 stores of θ may round by half a unit in the last place of θ.
    theta_rounding = 4 * 0.5 * float(np.max(np.spacing(np.abs(np.asarray(expected, dtype))),
                                            initial=0.0))
    tolerance = TOLERANCE[dtype] * 4 * hp["learning_rate"] + theta_rounding
    np.testing.assert_allclose(thetas[-1] - theta0, expected - theta0, rtol=TOLERANCE[dtype],
                               atol=tolerance)
    for name, value in state.items():
        assert np.all(np.isfinite(value)), f"{name} not finite"
        # Below the smallest normal number, CPUs may flush to zero (TensorFlow does).
        np.testing.assert_allclose(value, expected_state[name], rtol=10 * TOLERANCE[dtype],
                                   atol=2 * np.finfo(dtype).tiny)


def step_bound(hp, t):
    """Cauchy–Schwarz on m̂ = Σ wᵢgᵢ, v̂ = Σ uᵢgᵢ²: |Δₜ| ≤ α·√(Σ wᵢ²/uᵢ), with ε ≥ 0 only helping."""
    b1, b2 = hp["beta_1"], hp["beta_2"]
    k = np.arange(t)
    w = (1 - b1) * b1**k / (1 - b1**t)
    u = (1 - b2) * b2**k / (1 - b2**t)
    return float(np.float32(hp["learning_rate"])) * math.sqrt(float(np.sum(w * w / u)))


@PROPERTY
@given(hp=hyperparameters, shape=shapes, data=st.data())
def test_step_sizes_are_bounded(hp, shape, data):
    grads, theta0 = draw_gradients(data, shape, 6, data.draw(st.sampled_from([1e-3, 1.0, 1e3])))
    thetas, _ = trajectory(hp, shape, "float64", grads, theta0)
    previous = theta0
    for t, theta in enumerate(thetas, start=1):
        step = np.max(np.abs(theta - previous), initial=0.0)
        assert step <= step_bound(hp, t) * (1 + 1e-9), f"step {t}: {step} > {step_bound(hp, t)}"
        previous = theta
    first = np.max(np.abs(thetas[0] - theta0), initial=0.0)
    if 1 - hp["beta_1"] <= math.sqrt(1 - hp["beta_2"]):  # Kingma & Ba, Section 2.1
        assert first <= float(np.float32(hp["learning_rate"])) * (1 + 1e-12)  # α as Keras holds it


@PROPERTY
@given(hp=hyperparameters, shape=shapes, factor=st.sampled_from([1e-6, 1e-3, 10.0, 1e6]),
       dtype=dtypes, data=st.data())
def test_scaling_the_gradient_does_not_change_the_step(hp, shape, factor, dtype, data):
    hp = dict(hp, epsilon=0.0)  # ε is the one scale-dependent term
    grads, theta0 = draw_gradients(data, shape, 4, 1.0)
    grads = [np.where(np.abs(g) < 0.1, 0.1, g) for g in grads]  # away from 0/0
    unscaled, _ = trajectory(hp, shape, dtype, grads, theta0)
    scaled, _ = trajectory(hp, shape, dtype, [g * factor for g in grads], theta0)
    np.testing.assert_allclose(scaled[-1] - theta0, unscaled[-1] - theta0, rtol=TOLERANCE[dtype],
                               atol=TOLERANCE[dtype] * 4 * hp["learning_rate"])
