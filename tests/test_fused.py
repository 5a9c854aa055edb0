"""The TensorFlow fused kernel against the plain ops path: parameters and all state, every step."""

from __future__ import annotations

import re

import keras
import numpy as np
import pytest

import adamkit
from conftest import BACKEND, assert_close, make_variables

pytestmark = pytest.mark.skipif(BACKEND != "tensorflow", reason="the fused kernel is TensorFlow's")

CONFIGS = {
    "adam": {},
    "adam-keras-eps": {"epsilon_mode": "keras", "epsilon": 1e-7},
    "amsgrad": {"amsgrad": True},
    "adamw": {"weight_decay": 0.05},
    "tiny-gradients": {"epsilon": 1e-6},
    "bfloat16-state": {"state_dtype": "bfloat16"},
    "amsgrad-bfloat16-state": {"amsgrad": True, "state_dtype": "bfloat16", "weight_decay": 0.05},
    "int8-state": {"state_dtype": "int8"},
    "amsgrad-int8-state": {"amsgrad": True, "state_dtype": "int8", "weight_decay": 0.05},
}


@pytest.mark.parametrize("jit", [False, True], ids=["tf.function", "xla"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_fused_matches_ops_path_each_step(config, dtype, jit, rng):
    import tensorflow as tf

    from adamkit.kernels import tensorflow as kernel

    kwargs = {"learning_rate": 0.01, **CONFIGS[config]}
    scale = 1e-7 if config == "tiny-gradients" else 1.0
    # (70, 300): 82 blocks of 8-bit state, the last one partly padding; the others stay float32.
    shapes = [(64,), (16, 9), (3, 4, 5), (70, 300)]
    initial = [rng.normal(size=s) for s in shapes]
    fused, plain = adamkit.Adam(fused=True, **kwargs), adamkit.Adam(fused=False, **kwargs)
    vars_fused = [keras.Variable(x, dtype=dtype) for x in initial]
    vars_plain = [keras.Variable(x, dtype=dtype) for x in initial]
    fused.build(vars_fused)  # variables are made outside tf.function, as model.fit does
    plain.build(vars_plain)

    def compiled(optimizer, variables, jit):  # the model.fit path (tf.function, no XLA), or XLA
        return tf.function(lambda grads: optimizer.apply(grads, variables), jit_compile=jit)

    # The reference is the ops path under tf.function: XLA may contract the ops path's a·b + c
    # into one rounding (an FMA), which moves a bfloat16 or 8-bit state's stochastic rounding now
    # and then; adamkit's kernels and custom calls round each operation as tf.function does.
    step_fused, step_plain = compiled(fused, vars_fused, jit), compiled(plain, vars_plain, False)

    # adamkit's kernel (its op, or under XLA its custom call) forms every scalar in double: float32
    # rounding only. Where it cannot be built TensorFlow's kernel runs; in float32 it forms 1 − β2
    # from β2's float32 value (0.99900001…), so its v differs from the ops path's by 1.3e-5
    # relative: β2's own rounding.
    own_kernel = kernel.xla_kernel() if jit else kernel.custom_kernel()
    rtol = (2e-6 if own_kernel else 2e-5) if dtype == "float32" else 1e-12
    if "state_dtype" in kwargs and dtype == "float64":
        pytest.skip("float64 parameters keep float64 math; compressed state is for float32 ones")
    # bfloat16 and int8 state: the kernel encodes m and v as the ops path does (same dither, same
    # table and float32 operations), bit for bit; only θ's last bits may differ.
    for t in range(30):
        grads = [tf.constant(rng.normal(size=s) * scale * (t % 5 != 4), dtype=dtype) for s in shapes]
        step_fused(grads)
        step_plain(grads)
        for a, b in zip(vars_fused, vars_plain):
            assert_close(a.numpy(), b.numpy(), rtol, f"{config} θ at step {t + 1}")
        plain_state = plain.state_values()
        for name, values in fused.state_values().items():
            for a, b in zip(values, plain_state[name]):
                assert_close(a.numpy(), b.numpy(), rtol, f"{config} {name} at step {t + 1}")
        for a, b in zip(fused.variables, plain.variables):  # compressed state: exactly as stored
            if a.dtype in ("int8", "bfloat16") or a.path.endswith("absmax"):
                np.testing.assert_array_equal(a.numpy(), b.numpy(), f"{config} {a.path}")
    ops_run = {op.type for op in step_fused.get_concrete_function(grads).graph.get_operations()}
    if own_kernel and jit:  # XLA: one custom call for the float and bfloat16-state variables;
        # int8 state leaves the three small ones in float32 and has a call of its own for the last
        int8 = kwargs.get("state_dtype") == "int8"
        assert xla_launches(step_fused, grads) == ([3] if int8 else [4])
        assert len(xla_launches(step_fused, grads, target="adamkit_adam8bit")) == int8
    elif own_kernel:  # the fast path really ran (and not the ops path twice)
        int8 = kwargs.get("state_dtype") == "int8"
        assert ("AdamkitApplyAdam8bit" if int8 else "AdamkitApplyAdam") in ops_run
        if not int8:  # the four variables in one launch
            assert launches(step_fused, grads) == [4]
    elif "amsgrad" not in kwargs and "state_dtype" not in kwargs:
        assert "ResourceApplyAdam" in ops_run


@pytest.mark.parametrize("jit", [False, True], ids=["tf.function", "xla"])
@pytest.mark.parametrize("state_dtype, amsgrad", [("float32", False), ("bfloat16", False),
                                                  ("int8", False), ("int8", True)])
def test_a_step_split_over_the_threads_matches_the_ops_path(state_dtype, amsgrad, jit, rng):
    """A step of several chunks (the op and the custom call hand out 65,536 parameters, or 256 to
    1,024 blocks, at a time to the caller and the pool's threads; here 230,070 parameters, chunk
    boundaries inside two variables; with two threads, the op's 8-bit blocks in four chunks, one
    across the two variables): θ as the ops path has it, and a compressed state exactly as
    stored."""
    import tensorflow as tf

    shapes = [(300, 500), (70,), (200, 400)]
    initial = [rng.normal(size=s) for s in shapes]
    fused = adamkit.Adam(learning_rate=0.01, state_dtype=state_dtype, amsgrad=amsgrad)
    plain = adamkit.Adam(learning_rate=0.01, state_dtype=state_dtype, amsgrad=amsgrad, fused=False)
    vars_fused = [keras.Variable(x, dtype="float32") for x in initial]
    vars_plain = [keras.Variable(x, dtype="float32") for x in initial]
    fused.build(vars_fused)
    plain.build(vars_plain)
    step_fused = tf.function(lambda g: fused.apply(g, vars_fused), jit_compile=jit)
    step_plain = tf.function(lambda g: plain.apply(g, vars_plain))
    for t in range(4):
        grads = [tf.constant(rng.normal(size=s), tf.float32) for s in shapes]
        step_fused(grads)
        step_plain(grads)
        for a, b in zip(vars_fused, vars_plain):
            assert_close(a.numpy(), b.numpy(), 2e-6, f"θ at step {t + 1}")
    for a, b in zip(fused.variables, plain.variables):
        if a.dtype in ("int8", "bfloat16") or a.path.endswith("absmax"):
            np.testing.assert_array_equal(a.numpy(), b.numpy(), a.path)
    int8 = state_dtype == "int8"
    if jit:  # the custom calls ran: one for the float32-state variables, one for the 8-bit ones
        assert xla_launches(step_fused, grads) == ([1] if int8 else [3])
        assert xla_launches(step_fused, grads, target="adamkit_adam8bit") == [2] * int8
    else:  # the ops ran: the same
        assert launches(step_fused, grads) == ([1] if int8 else [3])
        assert launches(step_fused, grads, op_type="AdamkitApplyAdam8bit") == [2] * int8


def launches(step, *args, op_type="AdamkitApplyAdam") -> list[int]:
    """How many variables each ``op_type`` op of a traced step updates."""
    graph = step.get_concrete_function(*args).graph
    return sorted(op.get_attr("N") for op in graph.get_operations() if op.type == op_type)


def xla_launches(step, *args, target="adamkit_adam") -> list[int]:
    """How many variables each ``target`` custom call of a step compiled by XLA updates."""
    hlo = step.experimental_get_compiler_ir(*args)(stage="optimized_hlo")
    calls = [line for line in hlo.splitlines() if f'custom_call_target="{target}"' in line]
    return sorted(int((re.search(r"\bn = (\d+)", line) or [0, 1])[1]) for line in calls)


@pytest.mark.parametrize("jit", [False, True], ids=["tf.function", "xla"])
def test_one_launch_per_dtype_and_per_variable_where_it_must(jit, rng):
    """float32 and float64 variables each in one launch; a sparse gradient's variable on its own
    (update_step's path); per-variable weight decay (AdamW, exclude_1d) inside the launch."""
    import tensorflow as tf

    shapes_dtypes = [((20, 30), "float32"), ((30,), "float32"), ((7, 5), "float64"),
                     ((5,), "float64"), ((50, 8), "float32")]
    initial = [rng.normal(size=s) for s, _ in shapes_dtypes]

    def setup(fused):
        optimizer = adamkit.AdamW(learning_rate=0.01, weight_decay=0.05, exclude_1d=True,
                                  fused=fused)
        variables = [keras.Variable(x, dtype=d) for x, (_, d) in zip(initial, shapes_dtypes)]
        optimizer.build(variables)
        step = tf.function(lambda g: optimizer.apply(g, variables), jit_compile=jit)
        return optimizer, variables, step

    (fused, vars_fused, step_fused), (plain, vars_plain, step_plain) = setup(True), setup(False)
    for t in range(10):
        grads = [tf.constant(rng.normal(size=s), dtype=d) for s, d in shapes_dtypes[:-1]]
        rows = tf.constant(rng.choice(50, size=6, replace=False), tf.int64)
        grads.append(tf.IndexedSlices(tf.constant(rng.normal(size=(6, 8)), tf.float32), rows,
                                      tf.constant([50, 8], tf.int64)))
        step_fused(grads)
        step_plain(grads)
        for a, b, (_, d) in zip(vars_fused, vars_plain, shapes_dtypes):
            assert_close(a.numpy(), b.numpy(), 2e-6 if d == "float32" else 1e-12, f"θ, step {t}")
    for name, values in fused.state_values().items():
        for a, b in zip(values, plain.state_values()[name]):
            assert_close(a.numpy(), b.numpy(), 2e-6, name)
    # the sparse one; the float32 pair; the float64 pair
    assert (xla_launches if jit else launches)(step_fused, grads) == [1, 2, 2]


@pytest.mark.parametrize("jit", [False, True], ids=["tf.function", "xla"])
@pytest.mark.parametrize("cls", [adamkit.RAdam, adamkit.Nadam], ids=["radam", "nadam"])
def test_radam_and_nadam_run_the_kernel_with_their_own_scalars(cls, jit, rng):
    """RAdam and NAdam through adamkit's kernel, θ·decay − (a·m + b·g)/(√v·s + ε) with their own
    a, b, s, ε (RAdam's switching at ρₜ > 5, i.e. t = 6; NAdam's b ≠ 0 and its μ product
    advancing) against their ops paths, every step, in one launch."""
    import tensorflow as tf

    shapes = [(64,), (16, 9), (70, 30)]
    initial = [rng.normal(size=s) for s in shapes]

    def setup(fused):
        optimizer = cls(learning_rate=0.01, weight_decay=0.05, fused=fused)
        variables = [keras.Variable(x, dtype="float32") for x in initial]
        optimizer.build(variables)
        step = tf.function(lambda g: optimizer.apply(g, variables), jit_compile=jit)
        return optimizer, variables, step

    (fused, vars_fused, step_fused), (plain, vars_plain, step_plain) = setup(True), setup(False)
    for t in range(12):
        grads = [tf.constant(rng.normal(size=s), tf.float32) for s in shapes]
        step_fused(grads)
        step_plain(grads)
        for a, b in zip([*vars_fused, *fused.variables], [*vars_plain, *plain.variables]):
            assert_close(a.numpy(), b.numpy(), 2e-6, f"{cls.__name__} at step {t + 1}")
    assert (xla_launches if jit else launches)(step_fused, grads) == [3]


ADAMAX_CONFIGS = {
    "adamax": {},
    "adamax-weight-decay": {"weight_decay": 0.05},
    "adamax-bfloat16-state": {"state_dtype": "bfloat16"},
    "adamax-int8-state": {"state_dtype": "int8", "weight_decay": 0.05},
}


@pytest.mark.parametrize("jit", [False, True], ids=["tf.function", "xla"])
@pytest.mark.parametrize("config", list(ADAMAX_CONFIGS))
def test_adamax_runs_the_kernel_with_its_infinity_norm(config, jit, rng):
    """AdaMax through adamkit's kernel: u ← max(β2·u, |g| + ε) in v's place and as the
    denominator, θ ← θ·decay − a·m/u, against its ops path (under tf.function) every step,
    zero-gradient steps included (u decays towards ε); compressed state bit for bit; one launch
    for the float variables."""
    import tensorflow as tf

    kwargs = {"learning_rate": 0.01, **ADAMAX_CONFIGS[config]}
    shapes = [(64,), (16, 9), (70, 300)]  # (70, 300): the one with 8-bit state, 82 blocks
    initial = [rng.normal(size=s) for s in shapes]

    def setup(fused, jit):
        optimizer = adamkit.Adamax(fused=fused, **kwargs)
        variables = [keras.Variable(x, dtype="float32") for x in initial]
        optimizer.build(variables)
        step = tf.function(lambda g: optimizer.apply(g, variables), jit_compile=jit)
        return optimizer, variables, step

    (fused, vars_fused, step_fused), (plain, vars_plain, step_plain) = (setup(True, jit),
                                                                        setup(False, False))
    for t in range(20):
        grads = [tf.constant(rng.normal(size=s) * (t % 5 != 4), tf.float32) for s in shapes]
        step_fused(grads)
        step_plain(grads)
        for a, b in zip([*vars_fused, *fused.variables], [*vars_plain, *plain.variables]):
            if a.dtype in ("int8", "bfloat16") or a.path.endswith("absmax"):
                np.testing.assert_array_equal(a.numpy(), b.numpy(), f"{config} {a.path}")
            else:
                assert_close(a.numpy(), b.numpy(), 2e-6, f"{config} {a.path} at step {t + 1}")
    int8 = kwargs.get("state_dtype") == "int8"
    if jit:
        assert xla_launches(step_fused, grads) == ([2] if int8 else [3])
        assert len(xla_launches(step_fused, grads, target="adamkit_adam8bit")) == int8
    else:
        assert launches(step_fused, grads) == ([2] if int8 else [3])
        assert launches(step_fused, grads, op_type="AdamkitApplyAdam8bit") == [1] * int8


def test_sixteen_bit_variables_take_the_float32_ops_path(rng):
    optimizer = adamkit.Adam(fused=True)
    (variable,) = make_variables([rng.normal(size=(8,))])
    low = keras.Variable(keras.ops.cast(variable, "bfloat16"))
    gradient = keras.ops.cast(keras.ops.ones((8,)), "bfloat16")
    optimizer.apply([gradient], [low])  # must not reach the float32-only kernel
    (choice,) = optimizer.explain()
    assert choice.executor == "ops" and "bfloat16 parameters" in str(choice)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(keras.ops.cast(low, "float32")),
                               keras.ops.convert_to_numpy(variable) - 0.001, atol=2e-2)


def test_fused_chooses_the_kernel_or_the_ops_path(rng):
    variables = make_variables([rng.normal(size=(8,))])
    for fused, executor in ((True, "adamkit kernel (TensorFlow op)"), (False, "ops")):
        optimizer = adamkit.Adam(fused=fused)
        optimizer.build(variables)
        assert [c.executor for c in optimizer.explain()] == [executor]


def test_the_own_kernel_is_built_here_and_used_by_default():
    from adamkit.kernels import build
    from adamkit.kernels import tensorflow as kernel

    assert kernel.custom_kernel(), "g++ is on this machine: the kernel must build"
    assert any(p.suffix == ".so" for p in build.cache_dir().iterdir())


def test_without_a_compiler_it_says_so_once_and_falls_back(tmp_path):
    import os
    import subprocess
    import sys

    script = (
        "import numpy as np, tensorflow as tf, keras, adamkit\n"
        "v = keras.Variable(np.ones(4, np.float32)); o = adamkit.Adam(learning_rate=0.1)\n"
        "for _ in range(2): o.apply([tf.ones(4)], [v])\n"
        "w = keras.Variable(np.ones(4, np.float32)); a = adamkit.Adam(0.1, amsgrad=True)\n"
        "step = tf.function(lambda: a.apply([tf.ones(4)], [w]), jit_compile=True)\n"
        "for _ in range(2): step()  # under XLA: the ops path (AMSGrad)\n"
        "print('theta', float(v.numpy()[0]), float(w.numpy()[0]))\n"
    )
    env = dict(os.environ, CXX=str(tmp_path / "no-such-compiler"), ADAMKIT_CACHE=str(tmp_path),
               TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stderr.count("could not build the fused Adam kernel") == 1
    assert "ResourceApplyAdam" in result.stderr
    assert result.stderr.count("could not build the XLA Adam kernel") == 1
    theta, theta_xla = (float(x) for x in result.stdout.split()[-2:])
    assert abs(theta - 0.8) < 1e-5 and abs(theta_xla - 0.8) < 1e-5  # two steps of α = 0.1


def test_many_8bit_custom_calls_in_one_xla_step_finish():
    """40 variables with 8-bit state under XLA: 40 custom calls, each spreading its blocks over
    XLA's thread pool. Before the calls stopped waiting on helpers that had not started, this
    hung (every pool thread idle, the call waiting for a task that never ran); a subprocess with a
    timeout, so that a hang fails the test instead of stopping the run."""
    import os
    import subprocess
    import sys

    script = (
        "import numpy as np, tensorflow as tf, keras, adamkit\n"
        "rng = np.random.default_rng(0)\n"
        "shapes = [(300, 300)] * 40  # 352 blocks each: two chunks, one helper per call\n"
        "grads = [tf.constant(rng.normal(size=s).astype('float32')) for s in shapes]\n"
        "ends = []\n"
        "for jit in (True, False):\n"
        "    variables = [keras.Variable(np.ones(s, 'float32')) for s in shapes]\n"
        "    optimizer = adamkit.Adam(state_dtype='int8', learning_rate=0.01)\n"
        "    optimizer.build(variables)\n"
        "    step = tf.function(lambda: optimizer.apply(grads, variables), jit_compile=jit)\n"
        "    for _ in range(3): step()\n"
        "    ends.append(np.stack([v.numpy() for v in variables]))\n"
        "print('max difference', float(np.abs(ends[0] - ends[1]).max()))\n"
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow")
    try:
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                                env=env, timeout=240)
    except subprocess.TimeoutExpired:
        pytest.fail("40 8-bit custom calls in one XLA step did not finish within 240 s (a hang)")
    assert result.returncode == 0, result.stderr[-2000:]
    assert float(result.stdout.split()[-1]) <= 2e-6  # the same step as the tf.function op's
