"""Lazy sparse updates: untouched rows stay bit-identical, touched rows follow
``torch.optim.SparseAdam``, under eager, ``model.fit`` and a mirrored strategy."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import torch
from keras import ops

import adamkit
from conftest import BACKEND, assert_close

ROWS, DIM, STEPS = 40, 6, 25
tensorflow_only = pytest.mark.skipif(BACKEND != "tensorflow", reason="sparse gradients are TensorFlow's")


def sparse_steps(rng):
    """Per step: indices (with duplicates; rows 30..39 never touched) and their gradient rows."""
    steps = []
    for _ in range(STEPS):
        indices = rng.integers(0, 30, size=12)
        indices[:3] = indices[3]  # duplicates, to be summed
        steps.append((indices.astype(np.int32), rng.normal(size=(12, DIM)).astype(np.float32)))
    return steps


def as_numpy(x):
    return ops.convert_to_numpy(x)


PATHS = {None: "adamkit kernel (TensorFlow op, touched rows)", False: "lazy rows (sparse)"}


def path_taken(optimizer, variable, gradient) -> str:
    from adamkit import executors

    return executors.choose(optimizer, variable, gradient)[0].name


@tensorflow_only
@pytest.mark.parametrize("fused", [None, False], ids=["kernel", "ops"])
def test_touched_rows_match_sparse_adam_and_untouched_rows_never_move(fused, rng):
    import tensorflow as tf

    initial = rng.normal(size=(ROWS, DIM)).astype(np.float32)
    table = keras.Variable(initial)
    optimizer = adamkit.Adam(learning_rate=0.01, lazy=True, epsilon_mode="keras", epsilon=1e-8,
                             fused=fused)
    optimizer.build([table])
    param = torch.tensor(initial, requires_grad=True)
    reference = torch.optim.SparseAdam([param], lr=0.01, eps=1e-8)

    for indices, values in sparse_steps(rng):
        before = [as_numpy(table)] + [as_numpy(s) for s in optimizer.state_of(table).values()]
        gradient = tf.IndexedSlices(values, indices, (ROWS, DIM))
        assert path_taken(optimizer, table, gradient) == PATHS[fused]
        optimizer.apply([gradient], [table])
        param.grad = torch.sparse_coo_tensor(indices[None].astype(np.int64), values, (ROWS, DIM),
                                             check_invariants=True)
        reference.step()

        untouched = np.setdiff1d(np.arange(ROWS), indices)
        after = [as_numpy(table)] + [as_numpy(s) for s in optimizer.state_of(table).values()]
        for old, new in zip(before, after):
            np.testing.assert_array_equal(new[untouched], old[untouched])
        assert_close(as_numpy(table), param.detach().numpy(), 2e-6, "θ vs SparseAdam")
        state = optimizer.state_of(table)
        assert_close(as_numpy(state["momentum"]), reference.state[param]["exp_avg"].numpy(), 2e-6, "m")
        assert_close(as_numpy(state["velocity"]), reference.state[param]["exp_avg_sq"].numpy(), 2e-6, "v")
    np.testing.assert_array_equal(as_numpy(table)[30:], initial[30:])


@tensorflow_only
@pytest.mark.parametrize("fused", [None, False], ids=["kernel", "ops"])
@pytest.mark.parametrize("name", ["adam", "amsgrad", "adamw", "adamax", "radam"])
def test_lazy_rows_equal_the_dense_update_of_those_rows(name, fused, rng):
    """One sparse step equals the dense optimizer applied to a table holding only those rows."""
    import tensorflow as tf

    initial = rng.normal(size=(ROWS, DIM)).astype(np.float32)
    indices = np.array([3, 7, 7, 20], np.int32)
    values = rng.normal(size=(4, DIM)).astype(np.float32)
    lazy_table, rows = keras.Variable(initial), keras.Variable(initial[[3, 7, 20]])
    lazy = adamkit.get(name, learning_rate=0.01, lazy=True, fused=fused)
    dense = adamkit.get(name, learning_rate=0.01)
    lazy.apply([tf.IndexedSlices(values, indices, (ROWS, DIM))], [lazy_table])
    summed = np.stack([values[0], values[1] + values[2], values[3]])
    dense.apply([ops.convert_to_tensor(summed)], [rows])
    assert_close(as_numpy(lazy_table)[[3, 7, 20]], as_numpy(rows), 2e-5, name)
    untouched = np.setdiff1d(np.arange(ROWS), indices)
    np.testing.assert_array_equal(as_numpy(lazy_table)[untouched], initial[untouched])


@tensorflow_only
@pytest.mark.parametrize("shape", [(ROWS, DIM), (300, 700)], ids=["one-chunk", "four-chunks"])
@pytest.mark.parametrize("storage", ["float32", "bfloat16", "float64"])
@pytest.mark.parametrize("name", ["adam", "amsgrad", "adamw", "adamax", "radam"])
def test_the_touched_rows_kernel_is_the_dense_kernel_where_every_row_is_touched(name, storage, shape,
                                                                                 rng):
    """Bit for bit, over steps: with every row named (some more than once, in any order) the
    kernel's lazy step is the dense kernel's step on the densified gradient. So it sums
    duplicates as densifying does, and each element keeps its dither position (bfloat16 state).
    Rows of 700 values: the op hands 93 rows at a time to TensorFlow's workers, four chunks."""
    import tensorflow as tf

    rows, dim = shape
    dtype = "float64" if storage == "float64" else "float32"
    options = {"state_dtype": storage} if storage == "bfloat16" else {}
    initial = rng.normal(size=(rows, dim)).astype(dtype)
    lazy_table, dense_table = keras.Variable(initial), keras.Variable(initial)
    lazy = adamkit.get(name, learning_rate=0.01, lazy=True, **options)
    dense = adamkit.get(name, learning_rate=0.01, **options)
    lazy.build([lazy_table])
    dense.build([dense_table])
    for step in range(4):
        indices = np.concatenate([rng.permutation(rows), rng.integers(0, rows, size=9)])
        indices = indices.astype(np.int64 if step % 2 else np.int32)
        values = rng.normal(size=(len(indices), dim)).astype(dtype)
        gradient = tf.IndexedSlices(values, indices, (rows, dim))
        assert path_taken(lazy, lazy_table, gradient) == PATHS[None]
        assert path_taken(dense, dense_table, gradient) == "adamkit kernel (TensorFlow op)"
        lazy.apply([gradient], [lazy_table])
        dense.apply([gradient], [dense_table])
    np.testing.assert_array_equal(as_numpy(lazy_table), as_numpy(dense_table))
    for (key, a), b in zip(lazy.state_of(lazy_table).items(), dense.state_of(dense_table).values()):
        np.testing.assert_array_equal(as_numpy(a), as_numpy(b), err_msg=key)


@tensorflow_only
@pytest.mark.parametrize("fused", [None, False], ids=["kernel", "ops"])
def test_a_row_outside_the_table_is_an_error_that_changes_nothing(fused, rng):
    import tensorflow as tf

    initial = rng.normal(size=(ROWS, DIM)).astype(np.float32)
    table = keras.Variable(initial)
    optimizer = adamkit.Adam(lazy=True, fused=fused)
    gradient = tf.IndexedSlices(np.ones((2, DIM), np.float32), np.array([1, ROWS], np.int32),
                                (ROWS, DIM))
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"{ROWS}.*not in \\[0, {ROWS}\\)"):
        optimizer.apply([gradient], [table])
    np.testing.assert_array_equal(as_numpy(table), initial)
    assert all(np.all(as_numpy(s) == 0) for s in optimizer.state_of(table).values())


def test_adamw_decays_only_the_touched_rows(rng):
    initial = np.ones((ROWS, DIM), np.float32)
    table = keras.Variable(initial)
    optimizer = adamkit.AdamW(learning_rate=0.1, weight_decay=0.5, lazy=True)
    gradient = np.zeros((ROWS, DIM), np.float32)
    gradient[[1, 5]] = 1.0
    if BACKEND == "tensorflow":
        import tensorflow as tf

        grad = tf.IndexedSlices(gradient[[1, 5]], np.array([1, 5], np.int32), (ROWS, DIM))
    else:
        grad = ops.convert_to_tensor(gradient)
    optimizer.apply([grad], [table])
    result = as_numpy(table)
    np.testing.assert_allclose(result[[1, 5]], 0.95 - 0.1, rtol=1e-6)
    np.testing.assert_array_equal(np.delete(result, [1, 5], axis=0), 1.0)


@pytest.mark.skipif(BACKEND == "tensorflow", reason="JAX and PyTorch hand over dense gradients")
def test_dense_gradients_leave_all_zero_rows_untouched(rng):
    initial = rng.normal(size=(ROWS, DIM)).astype(np.float32)
    lazy_table, plain_table = keras.Variable(initial), keras.Variable(initial)
    lazy, plain = adamkit.Adam(lazy=True), adamkit.Adam()
    for t in range(5):
        gradient = np.zeros((ROWS, DIM), np.float32)
        touched = [t, 10 + t, 33]
        gradient[touched] = rng.normal(size=(3, DIM))
        lazy.apply([ops.convert_to_tensor(gradient)], [lazy_table])
        plain.apply([ops.convert_to_tensor(gradient)], [plain_table])
    never = np.setdiff1d(np.arange(ROWS), [0, 1, 2, 3, 4, 10, 11, 12, 13, 14, 33])
    np.testing.assert_array_equal(as_numpy(lazy_table)[never], initial[never])
    # row 33 is touched at every step, so lazy and dense agree on it
    assert_close(as_numpy(lazy_table)[33], as_numpy(plain_table)[33], 2e-6, "row touched every step")
    assert np.all(as_numpy(lazy.state_of(lazy_table)["momentum"])[never] == 0)


def test_lazy_is_refused_where_it_has_no_meaning():
    with pytest.raises(ValueError, match="lazy=True.*Nadam.*mu_product"):
        adamkit.Nadam(lazy=True)
    with pytest.raises(TypeError, match="lazy"):
        adamkit.Adam(lazy="yes")
    assert adamkit.Adam.from_config(adamkit.Adam(lazy=True).get_config()).lazy is True


def embedding_model(rows):
    return keras.Sequential([keras.Input((4,), dtype="int32"), keras.layers.Embedding(rows, 8),
                             keras.layers.Flatten(), keras.layers.Dense(1)])


@tensorflow_only
def test_model_fit_leaves_unseen_embedding_rows_alone(rng):
    keras.utils.set_random_seed(0)
    model = embedding_model(500)
    model.compile(optimizer=adamkit.Adam(lazy=True), loss="mse")
    before = as_numpy(model.layers[0].embeddings).copy()
    ids = rng.integers(0, 100, size=(256, 4)).astype(np.int32)  # rows 100.. never appear
    model.fit(ids, rng.normal(size=(256, 1)), batch_size=32, epochs=2, verbose=0)
    after = as_numpy(model.layers[0].embeddings)
    np.testing.assert_array_equal(after[100:], before[100:])
    assert np.all(np.any(after[np.unique(ids)] != before[np.unique(ids)], axis=1))


LAZY_BFLOAT16_FIT = textwrap.dedent("""
    import numpy as np, keras, adamkit
    def fitted(fused):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((2,), dtype="int32"), keras.layers.Embedding(10, 4),
                                  keras.layers.Flatten(), keras.layers.Dense(1)])
        model.compile(optimizer=adamkit.Adam(lazy=True, state_dtype="bfloat16", fused=fused),
                      loss="mse")
        model.fit(np.array([[1, 2], [2, 3]]), np.ones((2, 1), "float32"), epochs=3, verbose=0)
        return model.layers[0].embeddings.numpy()
    kernel, ops_path = fitted(None), fitted(False)
    print("lazy bfloat16 ok", float(np.max(np.abs(kernel - ops_path))))
""")


@tensorflow_only
def test_lazy_rows_with_bfloat16_state_under_model_fit():
    """The touched-rows op sets up sparse access for m and v in their own dtype: where ``fit``
    still held them, TensorFlow copied them as float32 and aborted the process (a check in
    tensor.cc). In a child process, which such an abort would end."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow")
    done = subprocess.run([sys.executable, "-c", LAZY_BFLOAT16_FIT], capture_output=True,
                          text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout.split("lazy bfloat16 ok")[1]) == 0.0  # the kernel is the ops path


MIRRORED = textwrap.dedent("""
    import numpy as np, tensorflow as tf
    tf.config.set_logical_device_configuration(tf.config.list_physical_devices("CPU")[0],
        [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
    import keras, adamkit
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = keras.Sequential([keras.Input((4,), dtype="int32"), keras.layers.Embedding(500, 8),
                                  keras.layers.Flatten(), keras.layers.Dense(1)])
        model.compile(optimizer=adamkit.Adam(lazy=True), loss="mse")
    before = model.layers[0].embeddings.numpy().copy()
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 100, size=(256, 4)).astype(np.int32)
    model.fit(ids, rng.normal(size=(256, 1)), batch_size=32, epochs=1, verbose=0)
    after = model.layers[0].embeddings.numpy()
    assert np.array_equal(after[100:], before[100:]), "an untouched row moved"
    assert np.all(np.any(after[np.unique(ids)] != before[np.unique(ids)], axis=1))
    print("mirrored lazy ok")
""")


@tensorflow_only
@pytest.mark.slow
def test_lazy_under_a_mirrored_strategy_on_two_devices():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow")
    result = subprocess.run([sys.executable, "-c", MIRRORED], capture_output=True, text=True,
                            env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "mirrored lazy ok" in result.stdout


@pytest.mark.skipif(BACKEND == "tensorflow", reason="lazy rows by mask: JAX's and PyTorch's")
@pytest.mark.parametrize("storage", ["float32", "bfloat16"])
@pytest.mark.parametrize("name", ["adam", "amsgrad", "adamw", "adamax", "radam"])
def test_masked_rows_are_the_dense_step_where_every_row_is_touched(name, storage, rng):
    """Bit for bit over steps (on JAX under ``jax.jit``, as its trainer runs the step): with every
    row touched, lazy rows take the ops path's dense step. Float32 state is written first there
    and read back for the update, so that XLA updates it in place; bfloat16 state is written
    after the update (its encoder waits for it)."""
    options = {"state_dtype": storage, "fused": False, "learning_rate": 0.01}
    initial = rng.normal(size=(ROWS, DIM)).astype(np.float32)
    grads = [rng.normal(size=(ROWS, DIM)).astype(np.float32) for _ in range(4)]
    results = []
    for lazy in (True, False):
        table = keras.Variable(initial)
        optimizer = adamkit.get(name, lazy=lazy, **options)
        optimizer.build([table])
        assert path_taken(optimizer, table, None) == ("lazy rows (masked)" if lazy else "ops")
        if BACKEND == "jax":
            import jax

            step = jax.jit(lambda p, s, g, o=optimizer: o.stateless_apply(s, g, p))
            params, state = [table.value], [v.value for v in optimizer.variables]
            for g in grads:
                params, state = step(params, state, [g])
            results.append([np.asarray(x) for x in [*params, *state]])
        else:
            for g in grads:
                optimizer.apply([keras.ops.convert_to_tensor(g)], [table])
            results.append([as_numpy(x) for x in [table, *optimizer.variables]])
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


@pytest.mark.skipif(BACKEND != "jax", reason="XLA's memory analysis, under jax.jit")
def test_masked_rows_update_float32_state_in_place_under_jit():
    """A 100,000 × 64 table with float32 state, lazy rows compiled with the state donated: the
    state is written first and read back for the update, so its buffers take it in place.
    Written after the update that reads it too, XLA copied m and v whole first (4.05 bytes a
    parameter of temporaries; 1.03 now)."""
    import jax

    table = keras.Variable(np.ones((100_000, 64), np.float32))
    optimizer = adamkit.Adam(lazy=True)
    optimizer.build([table])
    assert path_taken(optimizer, table, None) == "lazy rows (masked)"
    gradient = np.zeros((100_000, 64), np.float32)
    gradient[::100] = 1e-3
    step = jax.jit(lambda p, s, g: optimizer.stateless_apply(s, g, p), donate_argnums=(0, 1))
    compiled = step.lower([table.value], [v.value for v in optimizer.variables],
                          [gradient]).compile()
    assert compiled.memory_analysis().temp_size_in_bytes < 100_000 * 64 * 4  # one state tensor
