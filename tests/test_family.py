"""Every family member against the float64 oracle and its ``torch.optim`` counterpart, per step.

One table drives it all: parameters and every piece of optimizer state are compared after 60 steps
on three shapes, for ordinary, ε-dominated, large, and intermittently zero gradients.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import keras
import numpy as np
import pytest
import torch

import adamkit
import reference
from conftest import BACKEND, assert_close, run_optimizer

LR = 0.01
STEPS = 60
SHAPES = [(7,), (4, 3), (2, 3, 2)]
FLOAT32_RTOL = 2e-6
# TensorFlow's fused kernel forms 1 − β2 from float32 β2: 1.3e-5 relative in v (see test_fused.py)
FUSED_RTOL = 2e-5


@dataclass(frozen=True)
class Variant:
    make: object  # () -> adamkit optimizer
    oracle: object  # (theta, grads) -> (theta, state)
    make_torch: object  # (params) -> torch optimizer
    torch_state: dict  # adamkit state name -> torch state key


ADAM_STATE = {"momentum": "exp_avg", "velocity": "exp_avg_sq"}
VARIANTS = {
    "adam": Variant(
        lambda: adamkit.Adam(learning_rate=LR),
        partial(reference.adam, lr=LR),
        lambda p: torch.optim.Adam(p, lr=LR),
        ADAM_STATE,
    ),
    "adam-ops-path": Variant(  # on TensorFlow "adam" takes the fused kernel; this the ops path
        lambda: adamkit.Adam(learning_rate=LR, fused=False),
        partial(reference.adam, lr=LR),
        lambda p: torch.optim.Adam(p, lr=LR),
        ADAM_STATE,
    ),
    "amsgrad": Variant(
        lambda: adamkit.Adam(learning_rate=LR, amsgrad=True),
        partial(reference.adam, lr=LR, amsgrad=True),
        lambda p: torch.optim.Adam(p, lr=LR, amsgrad=True),
        {**ADAM_STATE, "velocity_hat": "max_exp_avg_sq"},
    ),
    "adamw": Variant(
        lambda: adamkit.AdamW(learning_rate=LR, weight_decay=0.1),
        partial(reference.adam, lr=LR, wd=0.1),
        lambda p: torch.optim.AdamW(p, lr=LR, weight_decay=0.1),
        ADAM_STATE,
    ),
    "nadam": Variant(
        lambda: adamkit.Nadam(learning_rate=LR),
        partial(reference.nadam, lr=LR),
        lambda p: torch.optim.NAdam(p, lr=LR),
        {**ADAM_STATE, "mu_product": "mu_product"},
    ),
    "adamax": Variant(
        lambda: adamkit.Adamax(learning_rate=LR),
        partial(reference.adamax, lr=LR),
        lambda p: torch.optim.Adamax(p, lr=LR),
        {"momentum": "exp_avg", "norm": "exp_inf"},
    ),
    "radam": Variant(
        lambda: adamkit.RAdam(learning_rate=LR),
        partial(reference.radam, lr=LR),
        lambda p: torch.optim.RAdam(p, lr=LR),
        ADAM_STATE,
    ),
}


def gradient_steps(rng, kind):
    """Per step, one float32 gradient per shape."""
    steps = []
    for t in range(STEPS):
        if kind == "normal":
            scale = 1.0
        elif kind == "tiny":  # √v̂ ≈ 1e-9 ≪ ε = 1e-8: ε dominates the denominator
            scale = 1e-9
        elif kind == "large":
            scale = 1e4
        else:  # "mixed": scales over nine decades, and every fourth step all zero
            scale = 0.0 if t % 4 == 3 else 10.0 ** rng.uniform(-6, 3)
        grads = []
        for shape in SHAPES:
            g = rng.normal(size=shape) * scale
            if kind == "mixed":
                g[rng.random(size=shape) < 0.2] = 0.0  # some coordinates never move
            grads.append(g.astype(np.float32))
        steps.append(grads)
    return steps


def run_torch(variant, initial, steps):
    params = [torch.tensor(x, dtype=torch.float32, requires_grad=True) for x in initial]
    optimizer = variant.make_torch(params)
    for grads in steps:
        for p, g in zip(params, grads):
            p.grad = torch.tensor(g)
        optimizer.step()
    state = {
        ours: [optimizer.state[p][theirs].detach().numpy() for p in params]
        for ours, theirs in variant.torch_state.items()
    }
    return [p.detach().numpy() for p in params], state


@pytest.mark.parametrize("kind", ["normal", "tiny", "large", "mixed"])
@pytest.mark.parametrize("name", list(VARIANTS))
def test_matches_oracle_and_torch(name, kind, rng):
    variant = VARIANTS[name]
    initial = [rng.normal(size=s).astype(np.float32) for s in SHAPES]
    steps = gradient_steps(rng, kind)

    optimizer = variant.make()
    params, state = run_optimizer(optimizer, initial, steps)
    torch_params, torch_state = run_torch(variant, initial, steps)
    oracle = [variant.oracle(x, [s[i] for s in steps]) for i, x in enumerate(initial)]

    rtol = FUSED_RTOL if getattr(optimizer, "_kernel", None) else FLOAT32_RTOL
    for i in range(len(SHAPES)):
        assert_close(params[i], oracle[i][0], rtol, f"{name}/{kind}: θ vs oracle")
        assert_close(params[i], torch_params[i], rtol, f"{name}/{kind}: θ vs torch")
        for key in variant.torch_state:
            assert_close(state[key][i], oracle[i][1][key], rtol, f"{key} vs oracle")
            assert_close(state[key][i], torch_state[key][i], rtol, f"{key} vs torch")
    assert set(state) == set(variant.torch_state), "state kept that torch does not keep"


@pytest.mark.parametrize("fused", [False, None])
@pytest.mark.parametrize("amsgrad", [False, True])
def test_keras_epsilon_mode_reproduces_keras_adam(amsgrad, fused, rng):
    initial = [rng.normal(size=s).astype(np.float32) for s in SHAPES]
    steps = gradient_steps(rng, "mixed")
    ours, _ = run_optimizer(
        adamkit.Adam(learning_rate=LR, epsilon=1e-7, amsgrad=amsgrad, epsilon_mode="keras",
                     fused=fused),
        initial,
        steps,
    )
    variables = [keras.Variable(x) for x in initial]
    theirs = keras.optimizers.Adam(learning_rate=LR, epsilon=1e-7, amsgrad=amsgrad)
    for grads in steps:
        theirs.apply([keras.ops.convert_to_tensor(g) for g in grads], variables)
    for mine, keras_value in zip(ours, variables):
        keras_value = keras.ops.convert_to_numpy(keras_value)
        if BACKEND == "tensorflow" and fused is False:  # same ops, same order: bit for bit
            np.testing.assert_array_equal(mine, keras_value)
        else:  # a fused kernel, or XLA's fusion, rounds differently: within a few ulps
            assert_close(mine, keras_value, 1e-6, "keras mode vs keras.optimizers.Adam")
    oracle = reference.adam(initial[0], [s[0] for s in steps], lr=LR, eps=1e-7,
                            amsgrad=amsgrad, epsilon_hat=True)
    assert_close(ours[0], oracle[0], FLOAT32_RTOL, "keras mode vs ε̂ oracle")


def test_paper_and_keras_modes_differ_where_epsilon_matters(rng):
    initial = [np.zeros(5, np.float32)]
    steps = [[np.full(5, 1e-8, np.float32)] for _ in range(10)]
    paper, _ = run_optimizer(adamkit.Adam(epsilon=1e-7), initial, steps)
    keras_mode, _ = run_optimizer(adamkit.Adam(epsilon=1e-7, epsilon_mode="keras"), initial, steps)
    # A fixed ε̂ acts as ε̂/√(1 − β2ᵗ) on √v̂, far larger early on: Keras's steps are smaller.
    assert np.all(np.abs(keras_mode[0]) < np.abs(paper[0]) * 0.5)


def first_step_size(name):
    """|θ₁ − θ₀| per coordinate for |g| ≫ ε, from each paper's first step."""
    if name == "radam":  # unrectified at t = 1: plain SGD with momentum, m̂₁ = g
        return None
    if name == "nadam":  # the look-ahead adds μ₂(1 − β1)/(1 − μ₁μ₂) to the plain step
        mu1, mu2 = (0.9 * (1 - 0.5 * 0.96 ** (t * 0.004)) for t in (1, 2))
        return LR * (1 + mu2 * 0.1 / (1 - mu1 * mu2))
    return LR


@pytest.mark.parametrize("name", list(VARIANTS))
def test_first_step_is_lr_times_sign(name, rng):
    g = rng.normal(size=(50,)).astype(np.float32)
    x0 = rng.normal(size=(50,)).astype(np.float32)
    (x1,), _ = run_optimizer(VARIANTS[name].make(), [x0], [[g]])
    size = first_step_size(name)
    start = x0 * (1 - LR * 0.1) if name == "adamw" else x0
    expected = start - (LR * g if size is None else size * np.sign(g))
    np.testing.assert_allclose(x1, expected, rtol=1e-5, atol=1e-6)


# RAdam's first steps (ρₜ ≤ 5) are SGD with momentum, which scales with the gradient by design.
@pytest.mark.parametrize("name", [n for n in VARIANTS if n != "radam"])
def test_gradient_scale_does_not_change_the_step(name, rng):
    initial = [rng.normal(size=(20,)).astype(np.float32)]
    steps = [[rng.normal(size=(20,)).astype(np.float32)] for _ in range(20)]
    scaled = [[g * 1000.0 for g in s] for s in steps]
    a, _ = run_optimizer(VARIANTS[name].make(), initial, steps)
    b, _ = run_optimizer(VARIANTS[name].make(), initial, scaled)
    np.testing.assert_allclose(a[0], b[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_config_round_trip(name):
    optimizer = VARIANTS[name].make()
    config = optimizer.get_config()
    clone = type(optimizer).from_config(config)
    assert clone.get_config() == config
    revived = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert type(revived) is type(optimizer)
    assert revived.get_config() == config


@pytest.mark.parametrize("cls", [adamkit.Adam, adamkit.AdamW, adamkit.Nadam, adamkit.Adamax,
                                 adamkit.RAdam])
def test_config_keeps_the_choice_of_path(cls):
    """``fused=False`` (the ops path always) survives a config round trip on every member."""
    assert cls(fused=False).get_config()["fused"] is False
    assert cls.from_config(cls(fused=False).get_config()).fused is False


def test_get_by_name():
    assert isinstance(adamkit.get("adam"), adamkit.Adam)
    assert adamkit.get("amsgrad").amsgrad is True
    assert adamkit.get("AdamW", weight_decay=0.5).weight_decay == 0.5
    with pytest.raises(ValueError, match="Unknown optimizer 'sgd'.*adam, amsgrad"):
        adamkit.get("sgd")


@pytest.mark.skipif(BACKEND == "jax", reason="JAX holds float64 variables in float32 without x64")
@pytest.mark.parametrize("name", list(VARIANTS))
def test_float64_parameters_keep_float64_math(name, rng):
    """float64 parameters are stepped in float64, the state carried per variable (Nadam's Πμ)
    included: within 1e-12 of the float64 oracle after 60 steps, where a float32 rounding
    anywhere would show at ~1e-8. The learning rate (and AdamW's λ) are numbers that float32 holds
    exactly (Keras keeps the rate in a float32 variable)."""
    variant, rate = VARIANTS[name], 2.0**-7
    initial = [rng.normal(size=s) for s in SHAPES]
    steps = gradient_steps(rng, "normal")
    variables = [keras.Variable(x, dtype="float64") for x in initial]
    optimizer = variant.make()
    optimizer.learning_rate = rate
    if name == "adamw":  # λ too (TensorFlow forms it in float32 first, as Keras does)
        optimizer.weight_decay = 2.0**-3
    for grads in steps:
        optimizer.apply([keras.ops.convert_to_tensor(np.asarray(g, np.float64)) for g in grads],
                        variables)
    state = optimizer.state_values()
    for i, variable in enumerate(variables):
        theta, expected = variant.oracle(initial[i], [np.float64(s[i]) for s in steps], lr=rate,
                                         **({"wd": 2.0**-3} if name == "adamw" else {}))
        assert_close(keras.ops.convert_to_numpy(variable), theta, 1e-12, f"{name}: θ")
        for key in variant.torch_state:
            assert_close(keras.ops.convert_to_numpy(state[key][i]), expected[key], 1e-12,
                         f"{name}: {key}")
