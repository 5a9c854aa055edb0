"""Every backend's fused path against the plain ops path, step for step: TensorFlow's kernel, the
XLA custom call on JAX, PyTorch's fused kernel. (TensorFlow's tf.function and XLA paths, the
compressed state and the launch grouping have their own tests in test_fused.py.)"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import keras
import numpy as np
import pytest

import adamkit
from conftest import BACKEND, assert_close, optimised_training_hlo

CONFIGS = {
    "adam": (adamkit.Adam, {}),
    "amsgrad": (adamkit.Adam, {"amsgrad": True}),
    "adamw-exclude-1d": (adamkit.AdamW, {"weight_decay": 0.05, "exclude_1d": True}),
    "keras-epsilon": (adamkit.Adam, {"epsilon_mode": "keras", "epsilon": 1e-7}),
    "skip-nonfinite": (adamkit.Adam, {"skip_nonfinite": True}),
    "bfloat16-state": (adamkit.Adam, {"state_dtype": "bfloat16", "amsgrad": True}),
    "int8-state": (adamkit.AdamW, {"state_dtype": "int8", "amsgrad": True, "weight_decay": 0.05}),
    "radam": (adamkit.RAdam, {}),  # the rectified branch from t = 6 (not on PyTorch: ops path)
    "radam-adamw": (adamkit.RAdam, {"weight_decay": 0.05}),
    "nadam": (adamkit.Nadam, {}),  # a·m + b·g per variable (not on PyTorch: ops path)
    "nadam-adamw-bfloat16": (adamkit.Nadam, {"weight_decay": 0.05, "state_dtype": "bfloat16"}),
    "nadam-int8": (adamkit.Nadam, {"state_dtype": "int8"}),
    "adamax": (adamkit.Adamax, {}),  # u in v's place, no √ (not on PyTorch: ops path)
    "adamax-adamw-bfloat16": (adamkit.Adamax, {"weight_decay": 0.05, "state_dtype": "bfloat16"}),
    "adamax-int8": (adamkit.Adamax, {"state_dtype": "int8"}),
}
SHAPES = [(64,), (16, 9), (3, 4, 5), (70, 300), (90, 50)]  # int8 state: the last two (4096+ values)


# PyTorch ops an optimizer step would run over θ, m or v outside a fused kernel.
ARITHMETIC = {f"aten::{op}{suffix}" for op in ("mul", "add", "sub", "div", "addcdiv", "addcmul",
                                                "lerp", "sqrt", "maximum", "abs", "copy")
              for suffix in ("", "_")}


def pytorch_kernel():
    from adamkit.kernels import pytorch

    return pytorch.custom_kernel()


def gradients(rng, poison):
    grads = [rng.normal(size=s).astype("float32") for s in SHAPES]
    if poison:
        grads[1][2, 3] = np.nan  # skipped with skip_nonfinite
    return grads


def run(make, fused, initial, steps, seed, poisoned_step=None):
    rng = np.random.default_rng(seed)
    variables = [keras.Variable(x) for x in initial]
    optimizer = make(fused)
    optimizer.build(variables)
    history = []
    for t in range(steps):
        optimizer.apply(gradients(rng, t == poisoned_step), variables)
        history.append([keras.ops.convert_to_numpy(v) for v in [*variables, *optimizer.variables]])
    return optimizer, history


@pytest.mark.parametrize("config", list(CONFIGS))
def test_fused_path_matches_ops_path_each_step(config, rng):
    cls, kwargs = CONFIGS[config]
    poisoned_step = 5 if config == "skip-nonfinite" else None

    def make(fused):
        return cls(learning_rate=0.01, fused=fused, **kwargs)

    initial = [rng.normal(size=s).astype("float32") for s in SHAPES]
    fused, history_fused = run(make, None, initial, 12, seed=7, poisoned_step=poisoned_step)
    _, history_plain = run(make, False, initial, 12, seed=7, poisoned_step=poisoned_step)
    # On PyTorch adamkit's own kernel takes every rule; without it, PyTorch's fused Adam only
    # Adam's own (the others then take the ops path twice, which passes trivially).
    torch_has_none = config == "keras-epsilon" or config.startswith(("radam", "nadam", "adamax"))
    own_kernel = BACKEND != "torch" or pytorch_kernel()
    ops_only = BACKEND == "torch" and torch_has_none and not own_kernel
    assert ({c.executor for c in fused.explain()} == {"ops"}) == ops_only
    for t, (ours, plain) in enumerate(zip(history_fused, history_plain)):
        for a, b in zip(ours, plain):
            if a.dtype.kind == "f" and a.dtype.itemsize > 2:
                assert_close(a, b, 2e-6, f"{config} at step {t + 1}")
            else:
                np.testing.assert_array_equal(a, b, f"{config} at step {t + 1}")


def test_nadam_keeps_each_variables_own_mu_product(rng):
    """NAdam's μ product is per variable, and the fused path advances all of a step's at once:
    with a variable that misses the first three steps (its product then lags), the fused path
    matches the ops path, every variable and its state, each step."""
    initial = [rng.normal(size=s).astype("float32") for s in SHAPES[:3]]
    grads = [[rng.normal(size=s).astype("float32") for s in SHAPES[:3]] for _ in range(8)]
    histories = []
    for fused in (None, False):
        variables = [keras.Variable(x) for x in initial]
        optimizer = adamkit.Nadam(learning_rate=0.01, fused=fused)
        optimizer.build(variables)
        history = []
        for t, g in enumerate(grads):
            joined = slice(1, None) if t < 3 else slice(None)  # the first variable from t = 4
            optimizer.apply(g[joined], variables[joined])
            history.append([keras.ops.convert_to_numpy(v)
                            for v in [*variables, *optimizer.variables]])
        histories.append(history)
        products = [keras.ops.convert_to_numpy(v) for v in optimizer.variables
                    if v.name.endswith("mu_product")]
        assert products[0] != products[1] == products[2]
    for t, (ours, plain) in enumerate(zip(*histories)):
        for a, b in zip(ours, plain):
            assert_close(a, b, 2e-6, f"NAdam at step {t + 1}")


@pytest.mark.skipif(BACKEND != "jax", reason="JAX's jit with donated state")
def test_jax_jit_runs_one_custom_call_in_place(rng):
    """Under jax.jit with the state donated (as Keras's JAX trainer), the four variables go
    through one adamkit_adam call whose results alias its operands, and the step equals the ops
    path's."""
    import jax

    initial = [rng.normal(size=s).astype("float32") for s in SHAPES]
    grads = [rng.normal(size=s).astype("float32") for s in SHAPES]
    results, calls = {}, {}
    for fused in (None, False):
        variables = [keras.Variable(x) for x in initial]
        optimizer = adamkit.AdamW(learning_rate=0.01, weight_decay=0.05, fused=fused)
        optimizer.build(variables)

        def step(params, state, g, optimizer=optimizer):
            return optimizer.stateless_apply(state, g, params)

        params = [v.value for v in variables]
        state = [v.value for v in optimizer.variables]
        compiled = jax.jit(step, donate_argnums=(0, 1))
        hlo = compiled.lower(params, state, grads).compile().as_text()
        calls[fused] = [line for line in hlo.splitlines()
                        if 'custom_call_target="adamkit_adam"' in line]
        for _ in range(3):
            params, state = compiled(params, state, grads)
        results[fused] = [np.asarray(x) for x in [*params, *state]]
    assert len(calls[None]) == 1 and not calls[False]
    assert "output_to_operand_aliasing" in calls[None][0]
    for a, b in zip(results[None], results[False]):
        assert_close(a, b, 2e-6, "θ and state after 3 jitted steps")


@pytest.mark.skipif(BACKEND != "jax", reason="JAX's jit of Keras's training step")
def test_jax_training_step_updates_8bit_state_without_copying_the_parameters():
    """Keras's JAX training step, compiled as its trainer compiles it (the state donated): one
    8-bit call updates the three kernels in place. It takes all the gradients, so it waits for
    the backward pass's last read of each parameter; a call a variable, ordered by its own
    gradient alone, let XLA copy the hidden layers' kernels first (twice each)."""
    model, hlo = optimised_training_hlo(adamkit.Adam(state_dtype="int8"))
    assert {row.executor for row in model.optimizer.explain()
            if row.variable.endswith("kernel")} == {"adamkit kernel (XLA custom call)"}
    calls = [line for line in hlo.splitlines() if 'custom_call_target="adamkit_adam8bit"' in line]
    shapes = {"f32[64,512]", "f32[512,512]", "f32[512,64]"}
    copies = [line for line in hlo.splitlines()
              if " copy(" in line and any(f"= {shape}" in line for shape in shapes)]
    assert len(calls) == 1 and "n = 3 : i64" in calls[0] and not copies, copies


@pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow's jit_compile")
def test_tensorflow_xla_training_step_updates_8bit_state_without_copying_the_parameters():
    """Under ``jit_compile=True`` the 8-bit custom call waits for every gradient, as on JAX: no
    parameter-shaped copies in the optimised HLO of a training step (there were four with a call
    a variable, each ordered by its own gradient)."""
    _, hlo = optimised_training_hlo(adamkit.Adam(state_dtype="int8"))
    shapes = ("= f32[64,512]", "= f32[512,512]", "= f32[512,64]")
    copies = [line for line in hlo.splitlines()
              if " copy(" in line and any(shape in line for shape in shapes)]
    calls = [line for line in hlo.splitlines() if 'custom_call_target="adamkit_adam8bit"' in line]
    assert len(calls) == 1 and "n = 3 : i64" in calls[0] and not copies, copies


@pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow's copy on write")
def test_tensorflow_training_step_updates_8bit_state_in_place():
    """``model.fit``'s steps with 8-bit state leave a hidden layer's kernel in its buffer. Each
    variable's op waits for every gradient, so for the backward pass's last read of its kernel;
    waiting for its own gradient alone, the op found the kernel still read and copied it first
    (TensorFlow's copy on write), every step."""
    import tensorflow as tf
    import torch.utils.dlpack

    def address(variable):
        return torch.utils.dlpack.from_dlpack(
            tf.experimental.dlpack.to_dlpack(variable.value.read_value())).data_ptr()

    model = keras.Sequential([keras.Input((784,)), keras.layers.Dense(2048, activation="relu"),
                              keras.layers.Dense(2048, activation="relu"), keras.layers.Dense(10)])
    model.compile(adamkit.Adam(state_dtype="int8"),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.random.default_rng(0).random((128, 784), dtype=np.float32)
    y = np.random.default_rng(1).integers(0, 10, 128)
    model.fit(x, y, batch_size=128, epochs=1, verbose=0)
    kernel = model.layers[1].kernel
    assert {row.executor for row in model.optimizer.explain()
            if row.variable == kernel.path} == {"adamkit kernel (TensorFlow op)"}
    moved = 0
    for _ in range(8):
        before = address(kernel)
        model.fit(x, y, batch_size=128, epochs=1, verbose=0)
        moved += address(kernel) != before
    assert moved == 0


@pytest.mark.skipif(BACKEND != "torch", reason="PyTorch's fused kernel")
@pytest.mark.parametrize(("exclude_1d", "expected"), [
    (False, {"aten::_fused_adamw_": 1, "aten::_fused_adam_": 0, "aten::mul_": 0}),
    (True, {"aten::_fused_adamw_": 1, "aten::_fused_adam_": 1, "aten::mul_": 0}),
])
def test_without_its_kernel_torch_runs_one_fused_call_per_decay_factor(rng, exclude_1d, expected,
                                                                       monkeypatch):
    """Where adamkit's kernel is not built: all float32 variables in one call of PyTorch's fused
    kernel (as torch.optim.AdamW(fused=True) does), the decay inside it (no separate pass over
    θ); with ``exclude_1d`` the undecayed vectors in a second, plain Adam call. Counted by
    PyTorch's profiler."""
    import torch

    from adamkit.kernels import pytorch

    monkeypatch.setitem(pytorch._LIBRARY, "library", None)  # as after a failed build
    variables = [keras.Variable(rng.normal(size=s).astype("float32")) for s in SHAPES]
    optimizer = adamkit.AdamW(learning_rate=0.01, weight_decay=0.05, exclude_1d=exclude_1d)
    optimizer.build(variables)
    grads = [rng.normal(size=s).astype("float32") for s in SHAPES]
    optimizer.apply(grads, variables)  # first step outside the profile (builds nothing new)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        optimizer.apply(grads, variables)
    names = [e.name for e in profile.events()]
    assert {name: names.count(name) for name in expected} == expected


@pytest.mark.skipif(BACKEND != "torch", reason="adamkit's kernel on PyTorch")
@pytest.mark.parametrize("cls", [adamkit.AdamW, adamkit.RAdam, adamkit.Adamax])
def test_torch_runs_adamkits_kernel_and_no_torch_ops(rng, cls):
    """With adamkit's kernel (``adam_host.cc``) the whole step, decay included, is one call of it:
    PyTorch's profiler sees none of its own update ops (fused, foreach or elementwise) and no
    copy of θ; the float64 variables in the same step keep float64 math (equal to the ops path to
    1e-12)."""
    import torch

    assert pytorch_kernel(), "adamkit's PyTorch kernel should build here"
    shapes_dtypes = [((40, 30), "float32"), ((30,), "float32"), ((20, 7), "float64")]
    initial = [rng.normal(size=s) for s, _ in shapes_dtypes]
    grads = [rng.normal(size=s).astype(d) for s, d in shapes_dtypes]
    results = {}
    for fused in (None, False):
        variables = [keras.Variable(x.astype(d)) for x, (_, d) in zip(initial, shapes_dtypes)]
        optimizer = cls(learning_rate=0.01, weight_decay=0.05, fused=fused)
        optimizer.build(variables)
        for _ in range(7):  # RAdam's rectified branch from t = 6
            optimizer.apply(grads, variables)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                    record_shapes=True) as profile:
            optimizer.apply(grads, variables)
        results[fused] = [keras.ops.convert_to_numpy(v) for v in [*variables, *optimizer.variables]]
        if fused is None:  # arithmetic on parameter-sized tensors: none outside the kernel
            parameter_shapes = [list(s) for s, _ in shapes_dtypes]
            updates = {e.name for e in profile.events()
                       if e.name.startswith(("aten::_fused", "aten::_foreach"))
                       or (e.name in ARITHMETIC
                           and any(shape in parameter_shapes for shape in e.input_shapes))}
            assert not updates, updates
    for a, b in zip(results[None], results[False]):
        assert_close(a, b, 1e-12 if a.dtype == np.float64 else 2e-6, f"{cls.__name__}")


@pytest.mark.skipif(BACKEND != "torch", reason="PyTorch runs the step's Python every step")
def test_torch_asks_once_per_variable_which_kernel_takes_it(rng, monkeypatch):
    """Which executor takes a variable is settled on the first step: the later steps ask
    nothing, a variable left out of one step is back in the kernel's group on the next, and the
    steps equal the ops path's. The groups, and whether each variable decays, are worked out once
    for each list of variables: the whole list, and the list without the variable that sat out."""
    from adamkit import executors

    asked, choose = [], executors.choose

    def counted(optimizer, variable, gradient):
        if optimizer.fused is None:
            asked.append(variable)
        return choose(optimizer, variable, gradient)

    monkeypatch.setattr(executors, "choose", counted)
    variables = [keras.Variable(rng.normal(size=s).astype("float32")) for s in SHAPES]
    fused, plain = (adamkit.AdamW(learning_rate=0.01, weight_decay=0.05, exclude_1d=True,
                                  fused=f) for f in (None, False))
    plain_variables = [keras.Variable(keras.ops.convert_to_numpy(v)) for v in variables]
    worked_out, decays = [], fused._decays
    monkeypatch.setattr(fused, "_decays", lambda v: worked_out.append(v) or decays(v))
    for t in range(4):
        grads = [rng.normal(size=s).astype("float32") for s in SHAPES]
        if t == 1:
            grads[2] = None  # this variable sits the step out
        kept = [i for i, g in enumerate(grads) if g is not None]
        for optimizer, own in ((fused, variables), (plain, plain_variables)):
            optimizer.apply([grads[i] for i in kept], [own[i] for i in kept])
    assert len(asked) == len(SHAPES), [tuple(v.shape) for v in asked]
    assert len(worked_out) == 2 * len(SHAPES) - 1, [tuple(v.shape) for v in worked_out]
    for a, b in zip([*variables, *fused.variables], [*plain_variables, *plain.variables]):
        assert_close(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b), 2e-6, "AdamW")


@pytest.mark.skipif(BACKEND != "torch", reason="PyTorch keeps what it works out per variable list")
def test_torch_keeps_a_bounded_number_of_prepared_groups(rng, monkeypatch):
    """Steps that leave out ever new sets of variables do not grow what the optimizer keeps for
    them without end (past ``PREPARED`` entries the oldest goes), and the steps stay the ops
    path's."""
    from adamkit.optimizers import base

    monkeypatch.setattr(base, "PREPARED", 3)
    shapes = [(4, 3), (3,), (5,), (2, 2)]
    initial = [rng.normal(size=s).astype("float32") for s in shapes]
    subsets = [[0, 1, 2, 3], [0], [1, 2], [0, 3], [2], [0, 1, 2, 3], [1, 3], [0, 1, 2, 3]]
    results = {}
    for fused in (None, False):
        variables = [keras.Variable(x) for x in initial]
        optimizer = adamkit.AdamW(learning_rate=0.01, weight_decay=0.05, fused=fused)
        optimizer.build(variables)
        for subset in subsets:
            optimizer.apply([np.full(shapes[i], 0.5, "float32") for i in subset],
                            [variables[i] for i in subset])
            assert len(optimizer._prepared) <= 3
        results[fused] = [keras.ops.convert_to_numpy(v) for v in [*variables, *optimizer.variables]]
    for a, b in zip(results[None], results[False]):
        assert_close(a, b, 2e-6, "AdamW")


@pytest.mark.skipif(BACKEND != "torch", reason="the count is advanced in place on PyTorch")
def test_torch_advances_the_iteration_count_in_place(rng):
    """The iteration count that Keras's ``apply`` advances every step is added to in place on
    PyTorch: the same variable (the one the optimizer tracks and saves), the same tensor, the same
    count as Keras's SGD keeps over the same steps. ``stateless_apply`` leaves the variable as it
    was and returns the advanced count; a tensor added takes Keras's own way; a saved count loads
    into a fresh optimizer."""
    variables = [keras.Variable(rng.normal(size=s).astype("float32")) for s in SHAPES]
    optimizer, sgd = adamkit.Adam(), keras.optimizers.SGD()
    optimizer.build(variables)
    sgd.build(variables)
    count, tensor = optimizer.iterations, optimizer.iterations._value
    assert count is optimizer.variables[0] and type(count).assign_add is not \
        type(sgd.iterations).assign_add
    for _ in range(3):
        grads = [keras.ops.convert_to_tensor(rng.normal(size=s).astype("float32"))
                 for s in SHAPES]
        optimizer.apply(grads, variables)
        sgd.apply(grads, variables)
    assert optimizer.iterations._value is tensor
    assert int(optimizer.iterations) == int(sgd.iterations) == 3

    values = [keras.ops.convert_to_tensor(v) for v in optimizer.variables]
    _, advanced = optimizer.stateless_apply(
        values, [np.zeros(s, "float32") for s in SHAPES], [v.value for v in variables])
    assert int(optimizer.iterations) == 3 and int(advanced[0]) == 4

    count.assign_add(keras.ops.convert_to_tensor(2, count.dtype))
    assert int(count) == 5 and count._value is tensor
    store = {}
    optimizer.save_own_variables(store)
    fresh = adamkit.Adam()
    fresh.build(variables)
    fresh.load_own_variables(store)
    assert int(fresh.iterations) == 5


def test_weight_decay_set_between_steps_takes_effect(rng):
    """``weight_decay`` and ``exclude_1d`` set between steps hold from the next step on, on the
    kernels' path as on the ops path (PyTorch works out once for a list of variables which of them
    decay, keyed by these settings), and each change does change the step."""
    initial = [rng.normal(size=s).astype("float32") for s in [(6, 5), (5,)]]
    changes = [None, ("weight_decay", None), ("weight_decay", 0.05), ("exclude_1d", True)]
    results = {}
    for fused in (None, False):
        variables = [keras.Variable(x) for x in initial]
        optimizer = adamkit.AdamW(learning_rate=0.1, weight_decay=0.05, fused=fused)
        history = []
        for change in changes:
            if change is not None:
                setattr(optimizer, *change)
            grads = [np.full(x.shape, 0.5, "float32") for x in initial]
            optimizer.apply(grads, variables)
            history.append([keras.ops.convert_to_numpy(v) for v in variables])
        results[fused] = history
    for t, (ours, plain) in enumerate(zip(results[None], results[False])):
        for a, b in zip(ours, plain):
            assert_close(a, b, 2e-6, f"step {t + 1}")
    # Equal gradients: without decay every value of a variable takes the same step; with it each
    # value also shrinks in proportion to itself; under exclude_1d the bias's values do not.
    steps = [[h[i] - p[i] for i in range(2)] for p, h in zip([initial, *results[False]],
                                                               results[False])]
    assert np.ptp(steps[1][0]) < 1e-6 < np.ptp(steps[2][0])
    assert np.ptp(steps[3][1]) < 1e-6 < np.ptp(steps[2][1])


@pytest.mark.skipif(BACKEND != "torch" or not Path("/proc/self/maps").exists(),
                    reason="PyTorch's OpenMP runtime, seen in Linux's map of the process")
def test_torch_kernel_threads_are_pytorchs_openmp_team():
    """The kernel is built with OpenMP and links libgomp.so.1, the runtime PyTorch has loaded:
    its threads are PyTorch's team, not threads that would share the cores with that team's
    spinning ones. The process maps one OpenMP runtime."""
    from adamkit.kernels import pytorch

    assert pytorch_kernel(), "adamkit's PyTorch kernel should build here"
    assert hasattr(pytorch._library(), "omp_get_max_threads")  # resolved through its libgomp
    runtimes = {line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines()
                if "libgomp" in line}
    assert len(runtimes) == 1, runtimes


@pytest.mark.skipif(BACKEND != "torch", reason="PyTorch's kernel keeps its groups' addresses")
@pytest.mark.parametrize("replace", ["parameter", "data", "state"])
def test_torch_kernel_follows_storage_that_moved(rng, replace):
    """The kernel keeps each group's addresses from step to step; where a tensor was replaced
    (a new Parameter, as Keras's own initialisation sets one; new ``.data``; a state variable's
    new Parameter), the next step writes the new storage and equals the ops path's step."""
    import torch

    assert pytorch_kernel(), "adamkit's PyTorch kernel should build here"
    initial = [rng.normal(size=s).astype("float32") for s in SHAPES]
    grads = [[rng.normal(size=s).astype("float32") for s in SHAPES] for _ in range(3)]
    results = {}
    for fused in (None, False):
        variables = [keras.Variable(x) for x in initial]
        optimizer = adamkit.Adam(learning_rate=0.01, amsgrad=True, fused=fused)
        optimizer.build(variables)
        for t, step_grads in enumerate(grads):
            if t == 2:
                # the first parameter, or the last variable's v̂
                target = optimizer.variables[-1] if replace == "state" else variables[0]
                moved = target._value.detach().clone()
                if replace == "data":
                    target._value.data = moved
                else:
                    target._value = torch.nn.Parameter(moved, requires_grad=False)
            optimizer.apply(step_grads, variables)
        results[fused] = [keras.ops.convert_to_numpy(v) for v in [*variables, *optimizer.variables]]
    for a, b in zip(results[None], results[False]):
        assert_close(a, b, 2e-6, replace)

@pytest.mark.parametrize("decays", [[None, None, None], ["d", None, "d", None], [None, "d", "e"]])
def test_scalar_table_rows(decays):
    """The kernels' per-variable rows from Adam's rule: the decay factor first (1 where there is
    none; each distinct factor in its own variables' rows), the shared six after it."""
    from adamkit.kernels.scalars import scalar_table
    from adamkit.optimizers.adam import AdamRule

    factors = {"d": keras.ops.convert_to_tensor(0.999, "float32"),
               "e": keras.ops.convert_to_tensor(0.5, "float32")}
    rule = AdamRule(0.9, 0.999, 1e-8)
    step, rate = (keras.ops.cast(keras.ops.convert_to_tensor(x), "float64") for x in (3.0, 1e-3))
    scalars, _ = rule.scalars(step, rate, {})
    rows = keras.ops.convert_to_numpy(scalar_table(
        rule, scalars, [factors.get(d) for d in decays], "float64"))
    expected = [1.0 if d is None else float(np.float32({"d": 0.999, "e": 0.5}[d])) for d in decays]
    np.testing.assert_array_equal(rows[:, 0], expected)
    rate = float(np.float32(1e-3))  # a float32 tensor, as Keras's learning rate
    shared = [0.1, 1 - 0.999, rate / (1 - 0.9**3), (1 - 0.999**3) ** -0.5, 1e-8, 0.0]
    precision = 1e-12 if rows.dtype == np.float64 else 1e-6  # JAX without x64: float32
    for row in rows:
        np.testing.assert_allclose(row[1:], shared, rtol=precision, atol=0)


@pytest.mark.skipif(BACKEND == "jax", reason="JAX forms float64 scalars only with x64 enabled")
@pytest.mark.parametrize("make", [
    lambda: adamkit.Adam(0.01), lambda: adamkit.Adam(0.01, epsilon_mode="keras"),
    lambda: adamkit.Adam(0.01, amsgrad=True), lambda: adamkit.AdamW(0.01, weight_decay=0.05),
    lambda: adamkit.Adamax(0.01), lambda: adamkit.RAdam(0.01, weight_decay=0.05),
    lambda: adamkit.Nadam(0.01)], ids=["adam", "keras", "amsgrad", "adamw", "adamax", "radam",
                                       "nadam"])
@pytest.mark.parametrize("steps", [1, 7])  # RAdam: unrectified, then rectified
def test_host_scalar_table_is_the_ops_table_bit_for_bit(make, steps, rng):
    """PyTorch's kernel takes its scalar rows from ``host_scalar_table`` (Python floats, doubles):
    the same rows as ``scalar_table``'s ops, every bit, for every rule it runs."""
    from adamkit.kernels.scalars import host_scalar_table, scalar_table

    variables = [keras.Variable(rng.normal(size=s).astype("float32")) for s in [(5, 3), (3,)]]
    optimizer = make()
    optimizer.build(variables)
    grads = [rng.normal(size=v.shape).astype("float32") for v in variables]
    for _ in range(steps - 1):
        optimizer.apply(grads, variables)
    job = optimizer._job(list(zip(grads, variables)), optimizer._get_current_learning_rate())
    scalars = job.scalars("float64")
    ops_rows = keras.ops.convert_to_numpy(scalar_table(job.rule, scalars, job.decays, "float64"))
    host_rows = host_scalar_table(job.rule, scalars, job.decays)
    assert all(type(x) is float for row in host_rows for x in row)
    np.testing.assert_array_equal(np.array(host_rows), ops_rows)


@pytest.mark.skipif(BACKEND == "jax", reason="JAX forms float64 scalars only with x64 enabled")
@pytest.mark.parametrize("make", [
    lambda: adamkit.Adam(0.01), lambda: adamkit.Adam(0.01, amsgrad=True),
    lambda: adamkit.AdamW(0.01, weight_decay=0.05), lambda: adamkit.Adamax(0.01),
    lambda: adamkit.RAdam(0.01), lambda: adamkit.RAdam(0.01, beta_2=0.6)],
    ids=["adam", "amsgrad", "adamw", "adamax", "radam", "radam-rho-inf-4"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_host_scalars_are_the_ops_scalars(make, dtype):
    """PyTorch's kernel forms the rule's scalars in Python floats (``Job.host_scalars``): the
    same equations as the ops' scalars, from the same rounded step and learning rate. At each step
    (early ones, RAdam's switch at t = 6, and steps past 2²⁴, where float32 rounds t) the float32
    rows are the ops' bit for bit, and the doubles agree to 1e-13 relative (``math``'s and a
    backend's ``expm1`` may differ in the last bit; RAdam's ρₜ, a difference, magnifies that).
    RAdam with β2 = 0.6 divides by ρ∞ − 4 = 0, where Python's floats raise: NumPy's doubles take
    over, with IEEE's infinities, as the ops have them. Float64 parameters take the ops' scalars
    themselves. AdamW's factor 1 − αλ, formed in NumPy in the parameters' dtype
    (``Job.host_decays``), is the ops' bit for bit in both dtypes."""
    from adamkit import ops as adam_ops
    from adamkit.kernels.scalars import host_scalar_table

    variable = keras.Variable(np.ones((4, 3), dtype))
    optimizer = make()
    optimizer.build([variable])
    gradient = keras.ops.ones((4, 3), dtype)
    for step in [*range(1, 40), 1000, 12345, 2**24, 2**24 + 1, 2**24 + 3, 2**26 + 5]:
        optimizer.iterations.assign(step - 1)
        job = optimizer._job([(gradient, variable)], optimizer._get_current_learning_rate())
        assert job.host_step == float(keras.ops.convert_to_numpy(job.step)), step
        host = np.array(host_scalar_table(job.rule, job.host_scalars(), job.host_decays))
        ops = np.array(host_scalar_table(job.rule, job.scalars("float64"), job.decays))
        np.testing.assert_array_equal(host[:, 0], ops[:, 0], f"t={step}")
        if dtype == "float64":  # the tensors' way, not the host's
            assert adam_ops.namespace(job.host_scalars().step_size) is keras.ops
            np.testing.assert_array_equal(host, ops, f"t={step}")
        else:
            held = adam_ops.namespace(job.host_scalars().step_size)
            assert held is (np if job.rule.beta_2 == 0.6 else adam_ops.Floats)
            np.testing.assert_allclose(host, ops, rtol=1e-13, atol=0, err_msg=f"t={step}")
            np.testing.assert_array_equal(host.astype(np.float32), ops.astype(np.float32),
                                          f"t={step}")


def test_scalar_tables_take_python_numbers_that_differ_from_the_rows_defaults():
    """A step's scalar given as a Python number is written into the rows (both tables) unless it
    is the row's own default, as the rule's ε is: a plain float is not taken for ε."""
    from adamkit.kernels.scalars import host_scalar_table, scalar_table
    from adamkit.rule import Scalars

    rule = adamkit.Adam(0.01).rule
    scalars = Scalars(step_size=0.25, epsilon=rule.epsilon, correction=None, gradient_step=0.5)
    expected = [1.0, 1.0 - rule.beta_1, 1.0 - rule.beta_2, 0.25, 1.0, rule.epsilon, 0.5]
    for rows in (np.array(host_scalar_table(rule, scalars, [None, None])),
                 keras.ops.convert_to_numpy(scalar_table(rule, scalars, [None, None], "float64"))):
        # JAX without x64 keeps float64 tables in float32: compare in the table's own precision.
        np.testing.assert_array_equal(rows, np.array([expected, expected], dtype=rows.dtype))
    other = dataclasses.replace(scalars, epsilon=2e-3)
    assert host_scalar_table(rule, other, [None])[0][5] == 2e-3


@pytest.mark.filterwarnings("ignore:divide by zero", "ignore:invalid value")
def test_host_scalar_table_takes_any_correction_as_numpy_does():
    """``host_scalar_table`` forms s = 1/√c in Python floats where it can: a Python float, a NumPy
    double and a 0-d array give NumPy's s alike, IEEE's infinity and NaN for c = 0 and c < 0
    included (Python's own division and ``math.sqrt`` would raise there)."""
    from adamkit.kernels.scalars import host_scalar_table
    from adamkit.rule import Scalars

    rule = adamkit.Adam(0.01).rule
    for c in (0.25, 1e-30, 0.0, -1.0, math.inf):
        expected = 1.0 / np.sqrt(np.float64(c))
        for given in (c, np.float64(c), np.asarray(c)):
            rows = host_scalar_table(rule, Scalars(0.1, rule.epsilon, correction=given), [None] * 2)
            np.testing.assert_array_equal([row[4] for row in rows], [expected] * 2, f"c={given!r}")


@pytest.mark.skipif(BACKEND != "torch", reason="adamkit's kernel on PyTorch")
@pytest.mark.parametrize("options", [{"amsgrad": True, "weight_decay": 0.05}, {}])
@pytest.mark.parametrize("cls", [adamkit.Adam, adamkit.Adamax])
def test_torch_8bit_state_runs_adamkits_kernel(rng, cls, options):
    """8-bit state on PyTorch: adamkit's 8-bit kernel, no PyTorch arithmetic on the parameter or
    its codes (the portable path decodes, updates and encodes with dozens), and the codes bit for
    bit the portable path's."""
    import torch

    if cls is adamkit.Adamax and "amsgrad" in options:
        options = {"weight_decay": 0.05}
    shapes = [(70, 30), (300,)]
    initial = [rng.normal(size=s).astype("float32") for s in shapes]
    grads = [rng.normal(size=s).astype("float32") for s in shapes]
    results = {}
    for fused in (None, False):
        variables = [keras.Variable(x) for x in initial]
        optimizer = cls(learning_rate=0.01, state_dtype="int8", fused=fused, **options)
        optimizer.build(variables)
        for _ in range(4):
            optimizer.apply(grads, variables)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                    record_shapes=True) as profile:
            optimizer.apply(grads, variables)
        results[fused] = [keras.ops.convert_to_numpy(v) for v in [*variables, *optimizer.variables]]
        sized = [list(s) for s in shapes] + [list(v.shape) for v in optimizer.variables
                                             if len(v.shape) == 2]
        arithmetic = {e.name for e in profile.events() if e.name in ARITHMETIC
                      and any(shape in sized for shape in e.input_shapes)}
        assert bool(arithmetic) == (fused is False), arithmetic
    for a, b in zip(results[None], results[False]):
        if a.dtype == np.int8 or a.ndim == 1 and a.shape != (300,):
            np.testing.assert_array_equal(a, b, f"{cls.__name__} state")
        else:
            assert_close(a, b, 2e-6, f"{cls.__name__}")


@pytest.mark.parametrize("cls, options", [(adamkit.Adam, {}), (adamkit.Adam, {"amsgrad": True}),
                                          (adamkit.AdamW, {}), (adamkit.Adamax, {})])
def test_8bit_step_of_many_variables_is_each_variables_own_step(rng, cls, options):
    """All of a step's 8-bit variables in one launch of the kernel (one index space of blocks, split
    over the threads; on PyTorch one call a step): the same θ, codes and absmax, bit for bit, as
    each variable stepped alone by an optimizer of its own. Sizes off the block and off the
    threads' split, one below a block, one empty."""
    from adamkit.kernels import kernel_slots

    shapes = [(300, 257), (5,), (0,), (1000, 70), (131,)]
    initial = [rng.normal(size=s).astype("float32") for s in shapes]
    grads = [[rng.normal(size=s).astype("float32") for s in shapes] for _ in range(3)]

    def run(indices):
        variables = [keras.Variable(initial[i]) for i in indices]
        optimizer = cls(learning_rate=0.01, state_dtype="int8", min_8bit_size=0, **options)
        optimizer.build(variables)
        assert {row.executor for row in optimizer.explain()} != {"ops"}
        for step in grads:
            optimizer.apply([step[i] for i in indices], variables)
        return [[keras.ops.convert_to_numpy(x) for x in (
            v, *(getattr(slot, part) for _, slot in sorted(kernel_slots(optimizer.slots_of(v)).items())
                 for part in ("codes", "absmax")))] for v in variables]

    calls = []
    if BACKEND == "torch":
        from adamkit.kernels import pytorch as kernels

        original = kernels._run
        kernels._run = lambda entry, *arguments: (calls.append(entry), original(entry, *arguments))
    try:
        together = run(range(len(shapes)))
    finally:
        if BACKEND == "torch":
            kernels._run = original
    assert calls == (["adamkit_adam8bit_host"] * len(grads) if BACKEND == "torch" else [])
    alone = [run([i])[0] for i in range(len(shapes))]
    for i, (mine, own) in enumerate(zip(together, alone, strict=True)):
        assert len(mine) == len(own) == (7 if options else 5)
        for a, b in zip(mine, own):  # as integers: NaN payloads and -0 compared too
            np.testing.assert_array_equal(a.view(f"i{a.itemsize}"), b.view(f"i{b.itemsize}"),
                                          f"variable {i}")


@pytest.mark.skipif(BACKEND != "torch", reason="adamkit's kernel on PyTorch")
@pytest.mark.parametrize("state_dtype", ["float32", "int8"])
@pytest.mark.parametrize("form", ["float64 NumPy", "transposed"])
def test_torch_kernel_reads_gradients_it_had_to_convert(rng, form, state_dtype):
    """Gradients that the kernel's call cannot read as they are (float64, or not contiguous) are
    converted first; the converted tensors must outlive the call, which reads their memory. A 4 MB
    variable, whose freed copy would go back to the system: the kernel's step is the ops path's
    (it crashed, or read freed memory, when only the addresses were kept)."""
    import torch

    shapes = [(1000, 1000), (64, 64)]
    initial = [rng.normal(size=s).astype("float32") for s in shapes]
    steps = [[rng.normal(size=s) for s in shapes] for _ in range(3)]

    def gradient(g):
        if form == "float64 NumPy":
            return g
        return torch.as_tensor(np.ascontiguousarray(g.T), dtype=torch.float32).T

    results = []
    for fused in (None, False):
        variables = [keras.Variable(x) for x in initial]
        optimizer = adamkit.Adam(learning_rate=0.01, state_dtype=state_dtype, fused=fused)
        optimizer.build(variables)
        for grads in steps:
            optimizer.apply([gradient(g) for g in grads], variables)
        results.append([keras.ops.convert_to_numpy(v) for v in [*variables, *optimizer.variables]])
    for a, b in zip(*results, strict=True):
        if a.dtype == np.int8:
            np.testing.assert_array_equal(a, b)
        else:
            assert_close(a, b, 2e-6, f"{form}, {state_dtype} state")


@pytest.mark.skipif(BACKEND != "jax", reason="the JAX kernel's own fallback")
def test_jax_without_a_compiler_says_so_once_and_runs_the_ops_path(tmp_path):
    import os
    import subprocess
    import sys

    script = (
        "import numpy as np, keras, adamkit\n"
        "v = keras.Variable(np.ones(4, np.float32)); o = adamkit.Adam(learning_rate=0.1)\n"
        "for _ in range(2): o.apply([np.ones(4, np.float32)], [v])\n"
        "print('theta', float(keras.ops.convert_to_numpy(v)[0]))\n"
    )
    env = dict(os.environ, CXX=str(tmp_path / "no-such-compiler"), ADAMKIT_CACHE=str(tmp_path),
               KERAS_BACKEND="jax")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stderr.count("could not build the fused Adam kernel for JAX") == 1
    assert abs(float(result.stdout.split()[-1]) - 0.8) < 1e-5  # two steps of α = 0.1


def test_every_backend_offers_executors_of_one_shape():
    """Each backend module lists its executors (``EXECUTORS``), each with a ``name`` and the
    ``Executor`` protocol's methods (read from the source, so that the check runs under any
    backend, without importing the other two frameworks)."""
    import ast
    import typing
    from pathlib import Path

    from adamkit import executors

    methods = {n for n in vars(executors.Executor) if not n.startswith("_")} - {"name"}
    assert methods == {"refuses", "groups", "apply"}
    assert typing.get_type_hints(executors.Executor)["name"] is str
    folder = Path(executors.__file__).parent / "kernels"
    for module in ("tensorflow", "jax", "pytorch"):
        tree = ast.parse((folder / f"{module}.py").read_text())
        classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
        (listed,) = [node.value for node in tree.body if isinstance(node, ast.Assign)
                     and any(getattr(t, "id", "") == "EXECUTORS" for t in node.targets)]
        names = [call.func.id for call in listed.elts]
        assert names, module
        for name in names:
            body = classes[name].body
            defined = {n.name for n in body if isinstance(n, ast.FunctionDef)}
            defined |= {t.id for n in body if isinstance(n, ast.Assign) for t in n.targets
                        if isinstance(t, ast.Name)}
            assert methods | {"name"} <= defined, f"{module}.{name} lacks {methods - defined}"
