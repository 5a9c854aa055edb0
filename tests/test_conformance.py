"""adamkit against the peers it claims to equal: Keras's Adam bit for bit in ``"keras"`` ε mode on
every path, optax step for step, every variable and gradient type Keras's optimizers take, and the
reproducers of the conformance issue (each failed before its fix)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import adamkit
import reference as oracle
from conftest import BACKEND, assert_close

PATHS = [None, False]  # the default (fused kernels wherever they apply) and the plain ops path
PATH_IDS = ["default", "ops"]


def numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def _gradient_steps(rng, shapes, steps):
    """Gradients of every scale Adam meets, ε-dominated ones included."""
    scales = [1.0, 1e-8, 300.0, 1e-3]
    return [[(rng.normal(size=s) * scales[t % len(scales)]).astype(np.float32) for s in shapes]
            for t in range(steps)]


KERAS_STATE = {"momentum": "_momentums", "velocity": "_velocities",
               "velocity_hat": "_velocity_hats"}


def _run(optimizer, initial, gradient_steps, compile_with=None):
    variables = [keras.Variable(x, name=f"w{i}") for i, x in enumerate(initial)]
    optimizer.build(variables)

    def step(grads):
        optimizer.apply(grads, variables)

    if compile_with is not None:
        import tensorflow as tf

        step = tf.function(step, jit_compile=compile_with == "xla")
    for grads in gradient_steps:
        step([keras.ops.convert_to_tensor(g) for g in grads])
    return variables


COMPILES = [None] + (["tf.function", "xla"] if BACKEND == "tensorflow" else [])


def _reference_compile(fused, compile_with):
    """How to run Keras's Adam as the reference. XLA lowers the ops path with its own rounding
    (Keras's Adam under XLA differs from Keras's Adam under ``tf.function`` in the last bit), and
    adamkit's ops path under XLA equals Keras's under XLA; adamkit's XLA custom call rounds each
    operation as TensorFlow's own ops do, so it equals Keras's Adam run by ``tf.function``."""
    if compile_with == "xla" and fused is not False:
        from adamkit.kernels import tensorflow as kernel

        if kernel.xla_kernel():
            return "tf.function"
    return compile_with


@pytest.mark.parametrize("compile_with", COMPILES, ids=[str(c) for c in COMPILES])
@pytest.mark.parametrize("amsgrad", [False, True], ids=["adam", "amsgrad"])
@pytest.mark.parametrize("learning_rate", [1e-3, 0.1, 1.0])
@pytest.mark.parametrize("fused", PATHS, ids=PATH_IDS)
def test_keras_mode_is_keras_adam_bit_for_bit(fused, learning_rate, amsgrad, compile_with, rng):
    shapes = [(37,), (8, 5), (2, 3, 4)]
    initial = [rng.normal(size=s).astype(np.float32) for s in shapes]
    grads = _gradient_steps(rng, shapes, 40)
    ours = adamkit.Adam(learning_rate=learning_rate, epsilon=1e-7, epsilon_mode="keras",
                        amsgrad=amsgrad, fused=fused)
    theirs = KerasAdamFormula(learning_rate=learning_rate, amsgrad=amsgrad)
    mine = _run(ours, initial, grads, compile_with)
    reference = _run(theirs, initial, grads, _reference_compile(fused, compile_with))
    exact = np.testing.assert_array_equal
    if BACKEND == "torch" and fused is not False:
        # torch.sqrt is not correctly rounded in float32 (sqrt(728.6322f) comes one ulp low), so
        # Keras's Adam on PyTorch, which uses it, leaves the IEEE result in the last bit where
        # adamkit's kernel does not; the NumPy evaluation below holds the kernel to every bit.
        exact = lambda a, b, err_msg="": assert_close(a, b, 1e-6, err_msg)  # noqa: E731
    _assert_same(ours, mine, theirs, reference, exact)
    # adamkit's kernels round each operation once, in Keras's order; so does NumPy in float32.
    alphas = [keras.ops.convert_to_numpy(
        learning_rate * keras.ops.sqrt(1 - keras.ops.power(keras.ops.cast(0.999, "float32"), t))
        / (1 - keras.ops.power(keras.ops.cast(0.9, "float32"), t)))
        for t in keras.ops.cast(keras.ops.arange(1, len(grads) + 1), "float32")]
    for i, x in enumerate(initial):
        theta, state = oracle.keras_adam_float32(x, [g[i] for g in grads], alphas,
                                                    amsgrad=amsgrad)
        if fused is not False:
            np.testing.assert_array_equal(numpy(mine[i]), theta)
    if BACKEND == "torch":  # Keras's own PyTorch variant: the same update, other roundings
        theirs = keras.optimizers.Adam(learning_rate=learning_rate, amsgrad=amsgrad)
        reference = _run(theirs, initial, grads)
        _assert_same(ours, mine, theirs, reference,
                     lambda a, b, err_msg="": assert_close(a, b, 2e-6, err_msg))


class KerasAdamFormula(keras.optimizers.Adam):
    """Keras's Adam as Keras writes it (``Adam.update_step``), the step it runs on TensorFlow and
    JAX. On PyTorch ``keras.optimizers.Adam`` runs a variant instead (``TorchAdam``: m·β1 + (1 −
    β1)·g over ``torch._foreach`` ops, rounded differently in the last bits); a subclass keeps
    Keras's own formula on every backend."""


def _assert_same(ours, mine, theirs, reference, check):
    for a, b in zip(mine, reference):
        check(numpy(a), numpy(b))
    for name, values in ours.state_values().items():
        for a, b in zip(values, getattr(theirs, KERAS_STATE[name])):
            check(numpy(a), numpy(b), err_msg=name)


def test_issue_reproducer_keras_mode_one_step_at_lr_1():
    for fused in PATHS:
        ours, ref = keras.Variable([3.0, 4.0]), keras.Variable([3.0, 4.0])
        g = keras.ops.ones((2,))
        adamkit.Adam(learning_rate=1.0, epsilon=1e-7, epsilon_mode="keras",
                     fused=fused).apply([g], [ours])
        keras.optimizers.Adam(learning_rate=1.0).apply([g], [ref])
        np.testing.assert_array_equal(numpy(ours), numpy(ref))


# -- every variable and gradient Keras's optimizers take -------------------------------------------

MEMBERS = {"adam": adamkit.Adam, "adamw": adamkit.AdamW, "nadam": adamkit.Nadam,
           "adamax": adamkit.Adamax, "radam": adamkit.RAdam}


def _compiled_apply(optimizer, grads, variables):
    import tensorflow as tf

    return tf.function(lambda: optimizer.apply_gradients(zip(grads, variables)))


@pytest.mark.skipif(BACKEND != "tensorflow", reason="a plain tf.Variable is TensorFlow's")
@pytest.mark.parametrize("state_dtype", ["float32", "int8"])
@pytest.mark.parametrize("fused", PATHS, ids=PATH_IDS)
@pytest.mark.parametrize("member", list(MEMBERS))
def test_plain_tf_variables_take_the_same_step_as_keras_variables(member, fused, state_dtype):
    import tensorflow as tf

    shapes = [(2, 2), (80, 64)]  # the second is large enough for 8-bit state
    plain = [tf.Variable(tf.ones(s) * 3.0) for s in shapes]
    wrapped = [keras.Variable(keras.ops.ones(s) * 3.0) for s in shapes]
    grads = [tf.reshape(tf.range(np.prod(s), dtype=tf.float32), s) / 7.0 for s in shapes]
    for variables in (plain, wrapped):
        optimizer = MEMBERS[member](learning_rate=0.1, fused=fused, state_dtype=state_dtype)
        optimizer.apply_gradients(zip(grads, variables))  # eagerly, then under tf.function
        _compiled_apply(optimizer, grads, variables)()
    for a, b in zip(plain, wrapped):
        np.testing.assert_array_equal(a.numpy(), numpy(b))


@pytest.mark.skipif(BACKEND != "tensorflow", reason="a plain tf.Variable is TensorFlow's")
@pytest.mark.parametrize("fused", PATHS, ids=PATH_IDS)
def test_issue_reproducer_tf_variable_under_mirrored_strategy(fused):
    import tensorflow as tf

    strategy = tf.distribute.MirroredStrategy(["CPU:0"])
    with strategy.scope():
        v = tf.Variable([[1.0, 2.0], [3.0, 4.0]])
        optimizer = adamkit.Adam(learning_rate=1.0, fused=fused)
    strategy.run(tf.function(lambda: optimizer.apply_gradients([(tf.ones((2, 2)), v)])))
    np.testing.assert_allclose(v.numpy(), [[0.0, 1.0], [2.0, 3.0]], atol=1e-6)


def _bcoo(rows, values, shape):
    import jax.experimental.sparse as jax_sparse

    return jax_sparse.BCOO((values, tuple((r,) for r in rows)), shape=shape)


@pytest.mark.skipif(BACKEND != "jax", reason="BCOO is JAX's sparse array")
@pytest.mark.parametrize("fused", PATHS, ids=PATH_IDS)
@pytest.mark.parametrize("member", list(MEMBERS))
def test_jax_sparse_gradients_step_as_their_dense_form(member, fused):
    values = np.arange(30, dtype=np.float32).reshape(3, 10) / 10.0
    sparse_steps = [_bcoo((0, 2, 4), values, (5, 10)), _bcoo((1, 2), values[:2], (5, 10))]
    results = []
    for dense in (False, True):
        variable = keras.Variable(keras.ops.ones((5, 10)))
        optimizer = MEMBERS[member](fused=fused)
        for gradient in sparse_steps:
            optimizer.apply([gradient.todense() if dense else gradient], [variable])
        results.append(numpy(variable))
    np.testing.assert_array_equal(*results)


@pytest.mark.skipif(BACKEND != "jax", reason="BCOO is JAX's sparse array")
@pytest.mark.parametrize("fused", PATHS, ids=PATH_IDS)
def test_lazy_jax_sparse_gradients_touch_only_the_rows_they_name(fused):
    ones = np.ones((3, 10), np.float32)
    variable = keras.Variable(keras.ops.ones((5, 10)))
    optimizer = adamkit.Adam(learning_rate=0.1, lazy=True, fused=fused)
    optimizer.apply([_bcoo((0, 2, 4), ones, (5, 10))], [variable])
    before = numpy(variable).copy()
    m_before = numpy(optimizer.state_values()["momentum"][0]).copy()
    # row 0 named with a zero gradient: touched, so its moments decay as IndexedSlices' would
    optimizer.apply([_bcoo((0, 1), np.stack([np.zeros(10), np.ones(10)]).astype(np.float32),
                           (5, 10))], [variable])
    after, m_after = numpy(variable), numpy(optimizer.state_values()["momentum"][0])
    np.testing.assert_array_equal(after[[2, 3, 4]], before[[2, 3, 4]])  # not named: untouched
    np.testing.assert_array_equal(m_after[[2, 3, 4]], m_before[[2, 3, 4]])
    np.testing.assert_allclose(m_after[0], 0.9 * m_before[0], rtol=1e-6)  # named: decayed
    assert np.all(after[0] < before[0]) and np.all(after[1] < before[1])


def test_issue_reproducer_jax_sparse_gradient():
    if BACKEND != "jax":
        pytest.skip("BCOO is JAX's sparse array")
    for fused in PATHS:
        g = _bcoo((0, 2, 4), 0.5 * np.ones((3, 10), np.float32), (5, 10))
        v = keras.Variable(keras.ops.ones((5, 10)))
        adamkit.Adam(fused=fused).apply([g], [v])
        assert numpy(v)[0, 0] < 1.0 and numpy(v)[1, 0] == 1.0


# -- a skipped step changes nothing ----------------------------------------------------------------


@pytest.mark.parametrize("fused", PATHS, ids=PATH_IDS)
def test_skipped_step_leaves_the_ema_alone(fused):
    optimizer = adamkit.Adam(learning_rate=0.1, use_ema=True, ema_momentum=0.5,
                             skip_nonfinite=True, fused=fused)
    variable = keras.Variable([1.0, 2.0])
    for g in ([0.1, 0.2], [0.3, -0.2]):
        optimizer.apply([keras.ops.convert_to_tensor(g)], [variable])
    average = optimizer._model_variables_moving_average[0]
    ema, theta = numpy(average).copy(), numpy(variable).copy()
    optimizer.apply([keras.ops.convert_to_tensor([np.nan, 0.2])], [variable])
    np.testing.assert_array_equal(numpy(average), ema)
    np.testing.assert_array_equal(numpy(variable), theta)
    assert int(optimizer.skipped_steps) == 1 and int(optimizer.iterations) == 2
    optimizer.apply([keras.ops.convert_to_tensor([0.1, 0.1])], [variable])  # and it goes on
    assert not np.array_equal(numpy(average), ema)


@pytest.mark.parametrize("fused", PATHS, ids=PATH_IDS)
def test_the_average_is_written_in_after_training_whatever_the_last_step(fused):
    """``finalize_variable_values`` (what ``fit`` runs at its end) writes the average into the
    weights even where the last step was skipped: the average holds every finite step's."""
    optimizer = adamkit.Adam(learning_rate=0.1, use_ema=True, ema_momentum=0.5,
                             skip_nonfinite=True, fused=fused)
    variable = keras.Variable([1.0, 2.0])
    for g in ([0.1, 0.2], [0.3, -0.2], [np.nan, 0.2]):
        optimizer.apply([keras.ops.convert_to_tensor(g)], [variable])
    average = numpy(optimizer._model_variables_moving_average[0]).copy()
    assert not np.array_equal(numpy(variable), average)
    optimizer.finalize_variable_values([variable])
    np.testing.assert_array_equal(numpy(variable), average)


def test_fit_with_an_average_and_skipped_steps_ends_with_the_average_in_the_weights():
    """``fit`` compiles its step (TensorFlow's graph, JAX's trace); the check of its last step
    must not be read after it ends (it raised a TypeError on TensorFlow, a leaked tracer on JAX)."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(adamkit.Adam(use_ema=True, ema_momentum=0.5, skip_nonfinite=True), "mse")
    model.fit(np.ones((8, 3), "float32"), np.zeros((8, 2), "float32"), epochs=2, batch_size=4,
              verbose=0)
    for weight, average in zip(model.trainable_variables,
                               model.optimizer._model_variables_moving_average):
        np.testing.assert_array_equal(numpy(weight), numpy(average))


def test_adamw_without_weight_decay_is_refused_as_keras_refuses_it():
    with pytest.raises(ValueError, match="weight_decay"):
        adamkit.AdamW(weight_decay=None)
    with pytest.raises(ValueError, match="weight_decay"):
        keras.optimizers.AdamW(weight_decay=None)


# -- a GPU machine: the CPU kernels only for variables in host memory ------------------------------


@pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow's device strings")
def test_kernels_are_chosen_from_the_variable_device():
    from adamkit.kernels import tensorflow as kernel

    cpu = "/job:localhost/replica:0/task:0/device:CPU:0"
    gpu = "/job:localhost/replica:0/task:0/device:GPU:0"
    assert kernel.placed_on_cpu(cpu, gpus_visible=True)
    assert not kernel.placed_on_cpu(gpu, gpus_visible=True)
    assert not kernel.placed_on_cpu("/device:GPU:1", gpus_visible=False)
    assert kernel.placed_on_cpu("", gpus_visible=False)
    assert not kernel.placed_on_cpu("", gpus_visible=True)  # unplaced: TensorFlow picks the GPU

    variable = keras.Variable(np.ones((4, 4), np.float32))
    optimizer = adamkit.Adam(fused=None)
    optimizer.build([variable])
    slots = optimizer.slots_of(variable)
    assert kernel.on_cpu(variable)
    assert all(e.refuses(optimizer, variable, None, slots) is None
               for e in (kernel.TensorFlowOp(), kernel.ResourceApplyAdam()))

    class OnGpu:  # a variable as TensorFlow describes one in a GPU's memory
        dtype = "float32"
        device = gpu

    assert not kernel.on_cpu(OnGpu())
    for executor in kernel.EXECUTORS:  # none of adamkit's or TensorFlow's kernels takes it
        assert executor.refuses(optimizer, OnGpu(), None, slots) is not None


@pytest.mark.skipif(BACKEND != "jax", reason="JAX's platforms")
def test_jax_kernel_is_registered_for_the_cpu_platform_only():
    import jax

    from adamkit.kernels import jax as kernel

    assert bool(kernel.custom_kernel()) == (jax.default_backend() == "cpu")
