"""The optimizers as Keras optimizers: convergence, every base keyword, schedules, weight decay,
validation, and saving."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import ops

import adamkit
import reference
from conftest import BACKEND, assert_close, compiled_step, make_variables, run_optimizer

FAMILY = list(adamkit.FAMILY)


def make(name, **kwargs):
    if name == "adamw":
        kwargs.setdefault("weight_decay", 0.0)  # convergence to the unregularised optimum
    if name == "schedule-free" and "learning_rate" in kwargs:
        # its parameters average every step since the start: the authors take 1–10× the
        # learning rate of a scheduled Adam, so that the start weighs little
        kwargs["learning_rate"] *= 10.0
    return adamkit.get(name, **kwargs)


# -- convergence ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", FAMILY)
def test_converges_on_a_parabola(name):
    target = np.array([3.0, -2.0, 0.5, 10.0], np.float32)
    (w,) = make_variables([np.zeros(4)])
    step = compiled_step(make(name, learning_rate=0.05), [w], lambda: [2.0 * (w - target)])
    for _ in range(1500):
        step()
    np.testing.assert_allclose(ops.convert_to_numpy(w), target, atol=3e-2)


@pytest.mark.parametrize("name", FAMILY)
def test_converges_on_rosenbrock(name):
    (w,) = make_variables([np.zeros(2)])

    def gradient():
        x, y = w[0], w[1]
        return [ops.stack([-2.0 * (1.0 - x) - 400.0 * x * (y - x * x), 200.0 * (y - x * x)])]

    step = compiled_step(make(name, learning_rate=0.01), [w], gradient)
    for _ in range(3000):
        step()
    np.testing.assert_allclose(ops.convert_to_numpy(w), [1.0, 1.0], atol=3e-2)


# -- Keras's base keywords -----------------------------------------------------------------------

def test_learning_rate_schedule_is_followed(rng):
    schedule = keras.optimizers.schedules.ExponentialDecay(0.05, decay_steps=1, decay_rate=0.9)
    x0 = rng.normal(size=(6,)).astype(np.float32)
    grads = [rng.normal(size=(6,)).astype(np.float32) for _ in range(10)]
    (ours,), _ = run_optimizer(adamkit.Adam(learning_rate=schedule), [x0], [[g] for g in grads])
    # the oracle, step by step with that step's learning rate
    theta = x0.astype(np.float64)
    m = v = np.zeros(6)
    for t, g in enumerate(grads, start=1):
        lr = 0.05 * 0.9 ** (t - 1)
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        theta = theta - lr * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
    assert_close(ours, theta, 2e-5, "scheduled learning rate")


def test_callable_learning_rate():
    (ours,), _ = run_optimizer(adamkit.Adam(learning_rate=lambda: 0.5), [np.zeros(3)],
                               [[np.ones(3)]])
    np.testing.assert_allclose(ours, -0.5, rtol=1e-6)


def test_gradient_accumulation_equals_the_mean_gradient(rng):
    x0 = rng.normal(size=(5,)).astype(np.float32)
    g = [rng.normal(size=(5,)).astype(np.float32) for _ in range(8)]
    accumulated, _ = run_optimizer(adamkit.Adam(gradient_accumulation_steps=2), [x0],
                                   [[x] for x in g])
    mean_steps = [[(g[i] + g[i + 1]) / 2] for i in range(0, 8, 2)]
    plain, _ = run_optimizer(adamkit.Adam(), [x0], mean_steps)
    np.testing.assert_allclose(accumulated[0], plain[0], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("clip", [{"clipnorm": 0.1}, {"clipvalue": 0.05}, {"global_clipnorm": 0.1}])
def test_clipping_equals_clipping_by_hand(clip, rng):
    x0 = rng.normal(size=(5,)).astype(np.float32)
    g = rng.normal(size=(5,)).astype(np.float32) * 3
    (clipped,), _ = run_optimizer(adamkit.Adam(learning_rate=0.1, **clip), [x0], [[g], [g * 0.5]])
    by_hand = []
    for x in (g, g * 0.5):
        if "clipvalue" in clip:
            by_hand.append([np.clip(x, -0.05, 0.05)])
        else:
            by_hand.append([x * min(1.0, 0.1 / np.linalg.norm(x))])
    (expected,), _ = run_optimizer(adamkit.Adam(learning_rate=0.1), [x0], by_hand)
    np.testing.assert_allclose(clipped, expected, rtol=1e-5, atol=1e-6)


def test_loss_scale_factor_divides_the_gradient(rng):
    x0 = rng.normal(size=(5,)).astype(np.float32)
    g = [rng.normal(size=(5,)).astype(np.float32) for _ in range(3)]
    (scaled,), _ = run_optimizer(adamkit.Adam(loss_scale_factor=128.0), [x0],
                                 [[x * 128.0] for x in g])
    (plain,), _ = run_optimizer(adamkit.Adam(), [x0], [[x] for x in g])
    np.testing.assert_allclose(scaled, plain, rtol=1e-6)


def test_ema_keeps_an_average_and_finalizes_it():
    x = keras.Variable(np.zeros(3, np.float32))
    optimizer = adamkit.Adam(learning_rate=0.1, use_ema=True, ema_momentum=0.5)
    for _ in range(5):
        optimizer.apply([ops.ones(3)], [x])
    raw = ops.convert_to_numpy(x).copy()
    optimizer.finalize_variable_values([x])
    averaged = ops.convert_to_numpy(x)
    assert np.all(averaged > raw), "the moving average lags behind the descending weights"


# -- weight decay ---------------------------------------------------------------------------------

def decay_only(optimizer, shapes, steps=5):
    """With zero gradients Adam's step is zero, so only the decoupled decay moves the weights."""
    variables = [keras.Variable(np.ones(s, np.float32), name=n) for n, s in shapes]
    for _ in range(steps):
        optimizer.apply([ops.zeros(s) for _, s in shapes], variables)
    return [ops.convert_to_numpy(v) for v in variables]


def test_adamw_decays_like_torch_and_excludes_by_name():
    kernel, bias = decay_only(
        adamkit.AdamW(learning_rate=0.1, weight_decay=0.5, exclude_from_weight_decay=["bias"]),
        [("kernel", (2, 2)), ("bias", (2,))],
    )
    np.testing.assert_allclose(kernel, (1 - 0.1 * 0.5) ** 5, rtol=1e-6)
    np.testing.assert_array_equal(bias, 1.0)


def test_adamw_exclude_1d_leaves_vectors_alone():
    matrix, vector, scalar = decay_only(
        adamkit.AdamW(learning_rate=0.1, weight_decay=0.5, exclude_1d=True),
        [("kernel", (2, 3)), ("scale", (3,)), ("offset", ())],
    )
    np.testing.assert_allclose(matrix, 0.95**5, rtol=1e-6)
    np.testing.assert_array_equal(vector, 1.0)
    np.testing.assert_array_equal(scalar, 1.0)


def test_weight_decay_follows_a_schedule():
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay([2], [0.5, 0.0])
    (kernel,) = decay_only(adamkit.AdamW(learning_rate=0.1, weight_decay=schedule),
                           [("kernel", (3,))])
    # iterations 0, 1, 2 use λ = 0.5 (boundary inclusive), then λ = 0
    np.testing.assert_allclose(kernel, 0.95**3, rtol=1e-6)
    revived = adamkit.AdamW.from_config(
        adamkit.AdamW(weight_decay=schedule).get_config())
    assert isinstance(revived.weight_decay, keras.optimizers.schedules.PiecewiseConstantDecay)


def test_adam_weight_decay_matches_the_oracle(rng):
    x0 = rng.normal(size=(4,)).astype(np.float32)
    grads = [[rng.normal(size=(4,)).astype(np.float32)] for _ in range(10)]
    (ours,), _ = run_optimizer(adamkit.Adam(learning_rate=0.01, weight_decay=0.2), [x0], grads)
    expected, _ = reference.adam(x0, [g[0] for g in grads], lr=0.01, wd=0.2)
    assert_close(ours, expected, 2e-5, "Adam(weight_decay=…)")


# -- validation -----------------------------------------------------------------------------------

BAD_ARGUMENTS = [
    ({"learning_rate": 0.0}, ValueError, "learning_rate"),
    ({"learning_rate": -1e-3}, ValueError, "learning_rate"),
    ({"learning_rate": float("nan")}, ValueError, "learning_rate"),
    ({"learning_rate": float("inf")}, ValueError, "learning_rate"),
    ({"learning_rate": "0.001"}, TypeError, "learning_rate"),
    ({"beta_1": 1.0}, ValueError, r"beta_1.*\[0, 1\)"),
    ({"beta_1": -0.1}, ValueError, "beta_1"),
    ({"beta_2": 1.5}, ValueError, "beta_2"),
    ({"beta_2": None}, TypeError, "beta_2"),
    ({"beta_1": True}, TypeError, "beta_1"),
    ({"epsilon": -1e-8}, ValueError, "epsilon"),
    ({"epsilon": float("inf")}, ValueError, "epsilon"),
    ({"epsilon": "tiny"}, TypeError, "epsilon"),
    ({"amsgrad": "yes"}, TypeError, "amsgrad"),
    ({"epsilon_mode": "torch"}, ValueError, "epsilon_mode.*'paper', 'keras'"),
    ({"weight_decay": -0.1}, ValueError, "weight_decay"),
    ({"weight_decay": "lots"}, TypeError, "weight_decay"),
    ({"fused": "auto"}, TypeError, "fused"),
]


@pytest.mark.parametrize(("kwargs", "error", "message"), BAD_ARGUMENTS)
def test_bad_hyperparameters_are_named(kwargs, error, message):
    with pytest.raises(error, match=message):
        adamkit.Adam(**kwargs)


@pytest.mark.parametrize("name", FAMILY)
def test_every_member_validates_the_shared_arguments(name):
    with pytest.raises(ValueError, match="beta_2"):
        adamkit.get(name, beta_2=1.0)
    with pytest.raises(ValueError, match="learning_rate"):
        adamkit.get(name, learning_rate=0.0)


def test_member_specific_arguments_are_validated():
    with pytest.raises(ValueError, match="momentum_decay"):
        adamkit.Nadam(momentum_decay=-1.0)
    with pytest.raises(TypeError, match="exclude_from_weight_decay"):
        adamkit.AdamW(exclude_from_weight_decay="bias")
    with pytest.raises(ValueError, match="weight_decay"):
        adamkit.AdamW(weight_decay=None)
    with pytest.raises(ValueError, match="Argument.*not recognized"):
        adamkit.Adam(momentum=0.9)


@pytest.mark.skipif(BACKEND != "jax", reason="one subprocess is enough")
def test_fused_true_elsewhere_is_refused():
    """Keras's numpy backend has no fused path: fused=True says so (TensorFlow, JAX and PyTorch
    each have one)."""
    import os
    import subprocess
    import sys

    script = "import adamkit\nadamkit.Adam(fused=True)\n"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env=dict(os.environ, KERAS_BACKEND="numpy"), timeout=300)
    assert result.returncode == 1
    assert "`fused=True` needs the TensorFlow, JAX or PyTorch backend; this is numpy" in (
        result.stderr)


@pytest.mark.skipif(BACKEND != "torch", reason="PyTorch's kernels")
@pytest.mark.parametrize("options", [{}, {"amsgrad": True}, {"weight_decay": 0.05},
                                     {"epsilon": 1e-6, "learning_rate": 0.003}],
                         ids=["adam", "amsgrad", "adamw", "tiny-gradients"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kernel", ["adamkit", "torch"])
def test_torch_fused_matches_ops_path_each_step(kernel, options, dtype, rng, monkeypatch):
    """On PyTorch, adamkit.Adam runs adamkit's own kernel by default, or where that is not built
    torch._fused_adam_ (float32 only; float64 then takes the ops path): parameters and all state
    against adamkit's own ops path, each of 30 steps."""
    from adamkit.kernels import pytorch

    if kernel == "torch":
        monkeypatch.setitem(pytorch._LIBRARY, "library", None)  # as after a failed build
    else:
        assert pytorch.custom_kernel(), "adamkit's PyTorch kernel should build here"
    kwargs = {"learning_rate": 0.01, **options}
    shapes = [(64,), (16, 9), (3, 4, 5)]
    initial = [rng.normal(size=s) for s in shapes]
    scale = 1e-7 if "epsilon" in options else 1.0
    fused, plain = adamkit.Adam(fused=True, **kwargs), adamkit.Adam(fused=False, **kwargs)
    vars_fused = [keras.Variable(x, dtype=dtype) for x in initial]
    vars_plain = [keras.Variable(x, dtype=dtype) for x in initial]
    rtol = 2e-6 if dtype == "float32" else 1e-12
    for t in range(30):
        grads = [keras.ops.convert_to_tensor((rng.normal(size=s) * scale * (t % 5 != 4)).astype(dtype))
                 for s in shapes]
        fused.apply(grads, vars_fused)
        plain.apply(grads, vars_plain)
        for a, b in zip(vars_fused, vars_plain):
            assert_close(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b), rtol,
                         f"θ at step {t + 1}")
        plain_state = plain.state_values()
        for name, values in fused.state_values().items():
            for a, b in zip(values, plain_state[name]):
                assert_close(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b), rtol,
                             f"{name} at step {t + 1}")
    own = kernel == "adamkit"
    expected = ("adamkit kernel (C ABI)" if own
                else "PyTorch's fused Adam" if dtype == "float32" else "ops")
    assert {c.executor for c in fused.explain()} == {expected}
    if own:  # every rule of the family
        for optimizer in (adamkit.Adam(fused=True, epsilon_mode="keras"), adamkit.RAdam(fused=True),
                          adamkit.Nadam(fused=True), adamkit.Adamax(fused=True)):
            optimizer.build(vars_plain)
            assert {c.executor for c in optimizer.explain()} == {expected}
        return
    with pytest.raises(ValueError, match="epsilon_mode='paper'.*not epsilon_mode='keras'"):
        adamkit.Adam(fused=True, epsilon_mode="keras")
    others = [adamkit.Adam(epsilon_mode="keras")]
    for cls in (adamkit.RAdam, adamkit.Nadam, adamkit.Adamax):  # torch has no fused ones
        with pytest.raises(ValueError, match=f"not {cls.__name__}"):
            cls(fused=True)
        others.append(cls())
    for optimizer in others:  # these take the ops path
        optimizer.build(vars_plain)
        assert {c.executor for c in optimizer.explain()} == {"ops"}


@pytest.mark.skipif(BACKEND == "torch", reason="PyTorch's case is the test above")
def test_fused_true_without_the_kernel_is_refused_at_construction(monkeypatch):
    """As on PyTorch: where adamkit's kernel is not available, fused=True is refused for the rules
    only it runs (TensorFlow's ResourceApplyAdam serves Adam's own; JAX has no fused Adam)."""
    import importlib

    kernels = importlib.import_module(f"adamkit.kernels.{BACKEND}")
    monkeypatch.setattr(kernels, "custom_kernel", lambda: False)
    for make in (lambda: adamkit.Nadam(fused=True), lambda: adamkit.RAdam(fused=True),
                 lambda: adamkit.Adam(fused=True, epsilon_mode="keras")):
        with pytest.raises(ValueError, match="`fused=True`"):
            make()
    if BACKEND == "jax":
        with pytest.raises(ValueError, match="needs adamkit's kernel"):
            adamkit.Adam(fused=True)
    else:
        assert adamkit.Adam(fused=True).fused is True


# -- saving --------------------------------------------------------------------------------------

def small_model():
    return keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="tanh"),
                             keras.layers.Dense(3)])


@pytest.mark.parametrize("name", FAMILY)
def test_keras_file_round_trip_resumes_exactly(name, tmp_path, rng):
    x = rng.normal(size=(64, 6)).astype(np.float32)
    y = rng.normal(size=(64, 3)).astype(np.float32)
    keras.utils.set_random_seed(1)
    model = small_model()
    model.compile(optimizer=make(name, learning_rate=0.01), loss="mse")
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)

    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded.optimizer) is type(model.optimizer)
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    saved_state = [ops.convert_to_numpy(v) for v in model.optimizer.variables]
    for a, b in zip(saved_state, loaded.optimizer.variables):
        np.testing.assert_array_equal(a, ops.convert_to_numpy(b))

    for m in (model, loaded):
        m.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert int(ops.convert_to_numpy(loaded.optimizer.iterations)) == 12


# -- guarded steps ---------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_skip_nonfinite_leaves_everything_untouched(bad, rng):
    x0 = [rng.normal(size=(4,)).astype(np.float32), rng.normal(size=(2, 3)).astype(np.float32)]
    good = [[rng.normal(size=x.shape).astype(np.float32) for x in x0] for _ in range(3)]
    poisoned = [np.array(g) for g in good[1]]
    poisoned[1][0, 2] = bad  # one bad entry in one variable's gradient poisons the whole step

    guarded = adamkit.Adam(learning_rate=0.1, weight_decay=0.1, skip_nonfinite=True)
    variables = make_variables(x0)
    guarded.apply([ops.convert_to_tensor(g) for g in good[0]], variables)
    before = [ops.convert_to_numpy(v).copy() for v in [*variables, *guarded.variables]]
    guarded.apply([ops.convert_to_tensor(g) for g in poisoned], variables)
    after = [ops.convert_to_numpy(v) for v in [*variables, *guarded.variables]]
    changed = [i for i, (a, b) in enumerate(zip(before, after)) if not np.array_equal(a, b)]
    assert [guarded.variables[i - 2].name for i in changed if i >= 2] == ["skipped_steps"]
    assert int(ops.convert_to_numpy(guarded.skipped_steps)) == 1
    for g in good[1:]:
        guarded.apply([ops.convert_to_tensor(x) for x in g], variables)

    plain, _ = run_optimizer(adamkit.Adam(learning_rate=0.1, weight_decay=0.1), x0, good)
    for a, b in zip(variables, plain):
        np.testing.assert_array_equal(ops.convert_to_numpy(a), b)


def test_without_the_guard_a_nan_gradient_poisons_the_parameters():
    (x,) = make_variables([np.zeros(3)])
    adamkit.Adam().apply([ops.convert_to_tensor(np.array([np.nan, 1.0, 1.0], np.float32))], [x])
    assert np.isnan(ops.convert_to_numpy(x)[0])


def test_skip_nonfinite_under_model_fit(rng):
    x = rng.normal(size=(64, 6)).astype(np.float32)
    y = rng.normal(size=(64, 3)).astype(np.float32)
    y[20] = np.nan  # poisons the second batch of 16 in every epoch
    keras.utils.set_random_seed(0)
    model = small_model()
    model.compile(optimizer=adamkit.Adam(learning_rate=0.01, skip_nonfinite=True), loss="mse")
    model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    assert all(np.all(np.isfinite(w)) for w in model.get_weights())
    assert int(ops.convert_to_numpy(model.optimizer.skipped_steps)) == 2
    assert int(ops.convert_to_numpy(model.optimizer.iterations)) == 6


def test_user_mistakes_with_the_state_get_clear_messages():
    with pytest.raises(ValueError, match="'\\(' is not a regular expression"):
        adamkit.AdamW(exclude_from_weight_decay=["("])
    optimizer = adamkit.Adam()
    variable = keras.Variable([1.0])
    for call in (lambda: optimizer.state_of(variable), optimizer.state_values):
        with pytest.raises(ValueError, match="not built yet"):
            call()
    optimizer.build([variable])
    with pytest.raises(ValueError, match="'other' is not one of this optimizer's variables"):
        optimizer.state_of(keras.Variable([2.0], name="other"))


@pytest.mark.parametrize("fused", [None, False])
def test_an_empty_variable_with_int8_state_everywhere_steps(fused):
    """min_8bit_size=0 asks int8 for every variable, an empty one too: it has no block to encode
    (the ops path's max over no values failed on TensorFlow and PyTorch)."""
    empty, full = keras.Variable(np.zeros((0, 3), "float32")), keras.Variable(np.ones(300, "float32"))
    optimizer = adamkit.Adam(state_dtype="int8", min_8bit_size=0, fused=fused)
    optimizer.apply([np.zeros((0, 3), "float32"), np.ones(300, "float32")], [empty, full])
    assert keras.ops.convert_to_numpy(full)[0] < 1.0 and tuple(empty.shape) == (0, 3)


@pytest.mark.parametrize("rate", [-1.0, 0.0, float("nan"), float("inf"), "0.1"])
def test_inverse_sqrt_decay_refuses_what_the_optimizers_refuse(rate):
    from adamkit.schedules import InverseSqrtDecay

    with pytest.raises(ValueError, match="initial_learning_rate"):
        InverseSqrtDecay(rate)

