"""Shared helpers: run an optimizer for a list of gradients and read back parameters and state."""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest

BACKEND = keras.backend.backend()


def pytest_configure(config):
    # Keras's own test files (run by test_keras_suite.py) carry this marker of Keras's conftest.
    config.addinivalue_line("markers", "requires_trainable_backend: Keras's marker")


def pytest_report_header(config):
    return f"keras backend: {BACKEND} (set KERAS_BACKEND to change)"


def make_variables(initial):
    return [keras.Variable(np.asarray(x, np.float32), name=f"w{i}") for i, x in enumerate(initial)]


def run_optimizer(optimizer, initial, gradient_steps):
    """Applies ``gradient_steps`` (a list, per step, of one gradient per variable) eagerly.

    Returns the final parameters and ``{state name: [per-variable arrays]}``.
    """
    variables = make_variables(initial)
    for grads in gradient_steps:
        optimizer.apply([keras.ops.convert_to_tensor(np.asarray(g, np.float32)) for g in grads],
                        variables)
    params = [keras.ops.convert_to_numpy(v) for v in variables]
    state = {
        name: [keras.ops.convert_to_numpy(s) for s in values]
        for name, values in optimizer.state_values().items()
    }
    return params, state


def assert_close(actual, expected, rtol, what):
    """Relative comparison whose absolute floor scales with the values, so that tiny moments
    (ε-dominated cases) are compared as strictly as large ones."""
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    floor = rtol * max(float(np.max(np.abs(expected))), 1e-30)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=floor, err_msg=what)


@pytest.fixture
def rng():
    return np.random.default_rng(int(os.environ.get("ADAMKIT_TEST_SEED", "1234")))


def compiled_step(optimizer, variables, gradients_fn):
    """A step function ``() -> None`` applying ``gradients_fn()``; compiled with ``tf.function``
    on TensorFlow (eager TF is ~50× slower per op), eager elsewhere."""
    optimizer.build(variables)

    def step():
        optimizer.apply(gradients_fn(), variables)

    if BACKEND == "tensorflow":
        import tensorflow as tf

        return tf.function(step)
    return step


def optimised_training_hlo(optimizer):
    """(model, the optimised HLO text of one training step) for a 64-512-512-64 MLP with
    ``optimizer``, compiled as XLA compiles it: on JAX Keras's ``train_step`` under ``jax.jit``
    with the state donated (as its trainer runs it, after one ``fit`` step has built the
    optimizer), on TensorFlow a step under ``jit_compile=True``."""
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(512, activation="relu"),
                              keras.layers.Dense(512, activation="relu"), keras.layers.Dense(64)])
    x = np.random.default_rng(0).standard_normal((32, 64)).astype(np.float32)
    if BACKEND == "jax":
        import jax

        model.compile(optimizer, "mse")
        model.fit(x, x, batch_size=32, epochs=1, verbose=0)
        state = tuple([v.value for v in group] for group in (
            model.trainable_variables, model.non_trainable_variables, model.optimizer.variables,
            model.metrics_variables))
        step = jax.jit(model.train_step, donate_argnums=0)
        return model, step.lower(state, (x, x)).compile().as_text()
    import tensorflow as tf

    optimizer.build(model.trainable_variables)
    x = tf.constant(x)

    @tf.function(jit_compile=True)
    def step(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean((model(x) - x) ** 2)
        optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
        return loss

    step(x)
    return model, step.experimental_get_compiler_ir(x)(stage="optimized_hlo")
