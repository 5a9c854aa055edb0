"""Timing an optimizer step: medians of repeated calls, and steps as the frameworks' trainers run
them (``tf.function`` with ``steps_per_execution``; JAX's jit with the state donated); and the
epochs of ``model.fit``."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import keras
import numpy as np


def median_seconds(step: Callable[[], object], repeats: int, warmup: int = 3) -> float:
    """The median time of ``repeats`` calls of ``step``, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class EpochTimer(keras.callbacks.Callback):
    """Seconds of each epoch of the last ``fit``, from ``on_epoch_begin`` to ``on_epoch_end``: the
    steps, input included, without ``fit``'s own set-up and teardown (on TensorFlow its input
    pipeline's teardown delays many calls' return by 0.5–2 s, whatever the optimizer)."""

    def on_train_begin(self, logs=None):
        self.times: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.perf_counter() - self.start)


def repeated(step: Callable[[], object], times: int) -> Callable[[], None]:
    """``step`` called ``times`` times: the same work as a call of ``compiled_apply``'s loop."""

    def steps():
        for _ in range(times):
            step()

    return steps


def parameter_shapes(millions: int) -> list[tuple[int, ...]]:
    """``millions`` 1000 × 1000 matrices, each with a bias of 1000."""
    return [shape for _ in range(millions) for shape in ((1000, 1000), (1000,))]


def compiled_apply(optimizer, shapes, grads, jit: bool = False, steps_per_call: int = 1):
    """A ``tf.function`` applying ``grads`` to fresh zero variables of ``shapes``,
    ``steps_per_call`` times in a ``tf.range`` loop (as ``model.fit`` runs its steps with
    ``steps_per_execution``)."""
    import tensorflow as tf

    variables = [keras.Variable(np.zeros(s, np.float32)) for s in shapes]
    optimizer.build(variables)

    def one_step():
        return optimizer.apply(grads, variables)

    def loop():
        for _ in tf.range(steps_per_call):
            one_step()

    return tf.function(one_step if steps_per_call == 1 else loop, jit_compile=jit)


def backend_stepper(optimizer, shapes, grads) -> Callable[[], object]:
    """One step of ``optimizer`` on fresh zero variables of ``shapes``, as the current Keras
    backend's trainer runs it: on JAX ``stateless_apply`` under ``jax.jit`` with the state
    donated; on PyTorch ``apply``."""
    variables = [keras.Variable(np.zeros(s, np.float32)) for s in shapes]
    optimizer.build(variables)
    if keras.backend.backend() != "jax":
        return lambda: optimizer.apply(grads, variables)
    import jax

    # Gradients are arguments: closed over, jit would fold them into the program as constants.
    # The outputs come back in the donated inputs' order (as in Keras's own train step): jax
    # pairs donated buffers with outputs in order, and stateless_apply's (params, state) order
    # would pair θ with m, m with v, v with θ — four extra array copies per variable, which
    # made both rows read ~4× slow (230 against 945 Mparam/s at 10M, measured).
    def apply(state, g, params):
        new_params, new_state = optimizer.stateless_apply(state, g, params)
        return new_state, new_params

    update = jax.jit(apply, donate_argnums=(0, 2))
    held = [[v.value for v in optimizer.variables], [v.value for v in variables]]

    def step():
        held[0], held[1] = update(held[0], grads, held[1])
        jax.block_until_ready(held[1])

    return step


def training_stepper(model, x, y) -> Callable[[], object]:
    """One training step of a compiled ``model`` on the batch (``x``, ``y``), compiled as the
    backend's trainer compiles it, without the input pipeline and ``fit``'s loop around it:
    ``train_step`` in a ``tf.function`` (XLA as ``model.jit_compile`` says); on JAX under
    ``jax.jit`` with the state donated; on PyTorch eagerly (``fit`` without ``jit_compile``). The
    model has trained a step already (``fit``), so that its optimizer and metrics are built. On
    JAX the state lives in the step's own arrays, as in ``fit``, and the first step donates the
    model's own buffers: the model cannot be read until the step's ``write_back()`` assigns the
    state to it. Its time is
    the forward pass, the backward pass and the update together, so an update that the compiler
    fuses with the backward pass (or cannot) shows here and not in the update alone."""
    backend = keras.backend.backend()
    data = (keras.ops.convert_to_tensor(x), keras.ops.convert_to_tensor(y))
    if backend == "tensorflow":
        import tensorflow as tf

        step = tf.function(model.train_step, jit_compile=bool(model.jit_compile),
                           reduce_retracing=True)
        return lambda: step(data)
    if backend == "jax":
        import jax

        owners = (model.trainable_variables, model.non_trainable_variables,
                  model.optimizer.variables, model.metrics_variables)
        update = jax.jit(model.train_step, donate_argnums=0)
        held = [tuple([v.value for v in variables] for variables in owners)]

        def step():
            _, held[0] = update(held[0], data)
            jax.block_until_ready(held[0])

        def write_back():
            for variables, values in zip(owners, held[0]):
                for variable, value in zip(variables, values):
                    variable.assign(value)

        step.write_back = write_back
        return step
    return lambda: model.train_step(data)
