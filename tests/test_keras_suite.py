"""Keras's own optimizer tests, read from the installed Keras and run against adamkit.

Each of Keras's test files (``keras/src/optimizers/<name>_test.py``) is loaded afresh, once per
adamkit path (the default, fused kernels wherever they apply, and ``fused=False``), with Keras's
Adam, AdamW, Nadam and Adamax replaced, while the file is imported, by the adamkit member that
claims to equal it and the arguments under which it claims so. Keras's inputs, golden values and
tolerances are kept; a test is skipped only where adamkit documents a deliberate difference, with
that difference as the reason (``SKIPS``).
"""

from __future__ import annotations

import contextvars
import functools
import importlib.util
import sys
import types
import unittest
from contextlib import contextmanager

import keras
import keras.src.optimizers as keras_optimizers
import numpy as np
import pytest

import adamkit
from conftest import BACKEND
from test_conformance import KerasAdamFormula

FILES = ["adam_test", "adamw_test", "nadam_test", "adamax_test", "optimizer_test",
         "optimizer_sparse_test"]

# The adamkit member standing in for each Keras optimizer, and the defaults that make it Keras's.
EQUIVALENTS = {
    # ε̂ on √v before bias correction, Keras's default ε̂
    "Adam": (adamkit.Adam, {"epsilon": 1e-7, "epsilon_mode": "keras"}),
    "AdamW": (adamkit.AdamW, {"epsilon": 1e-7, "epsilon_mode": "keras", "weight_decay": 0.004}),
    # Keras's μ schedule is 0.96ᵗ (ψ = 1); its default α is 1e-3 where Dozat's is 2e-3
    "Nadam": (adamkit.Nadam, {"epsilon": 1e-7, "momentum_decay": 1.0, "learning_rate": 1e-3}),
    "Adamax": (adamkit.Adamax, {"epsilon": 1e-7, "learning_rate": 1e-3}),
}

# Keras's tests that exercise a documented difference, by file and test name (parameterised
# tests' generated names start with the method's name).
SKIPS = {
    "optimizer_sparse_test": {
        f"test_sparse_gradients_{case}": (
            "on JAX adamkit's fused kernel (an XLA custom call over dense buffers) assigns its "
            "in-place results to θ and the state itself, where this test wants every write to go "
            "through optimizer.assign; the sparse gradient is densified first, so no sparse "
            "update is lost (test_sparse_correctness passes on this path)",
            lambda path: BACKEND == "jax" and path == "default")
        for case in ("adam", "adam_amsgrad", "adamax", "adamw", "adamw_amsgrad", "nadam")
    },
    "adamw_test": {
        "test_weight_decay_is_none": "adamkit.AdamW refuses weight_decay=None with a ValueError as "
        "Keras does, in its own words (it names adamkit.Adam as the optimizer without decay); "
        "tested in test_conformance.py",
    },
    "nadam_test": {
        "test_build_with_empty_var_list": "reads Keras's internal `_u_product`: adamkit keeps "
        "NAdam's product of μ per variable (as torch.optim.NAdam), not one shared scalar",
    },
}


@functools.cache
def equivalent(name: str, fused: bool | None) -> type:
    """A subclass of the adamkit member for Keras's ``name`` whose defaults are Keras's (one per
    path, a global of this module under its qualified name, so that it pickles)."""
    base, defaults = EQUIVALENTS[name]
    defaults = {**defaults, "fused": fused}
    path = "ops" if fused is False else "default"

    def __init__(self, *args, **kwargs):
        base.__init__(self, *args, **{**defaults, **kwargs})

    cls = type(name, (base,), {"__init__": __init__, "__module__": __name__,
                               "__qualname__": f"{name}_{path}"})
    globals()[cls.__qualname__] = cls
    return keras.saving.register_keras_serializable(package=f"adamkit_keras_suite_{path}")(cls)


@contextmanager
def keras_replaced(fused):
    """While a test file is imported: Keras's optimizers (as ``keras.src.optimizers.X`` and as
    ``keras.src.optimizers.<module>.X``) are adamkit's equivalents."""
    saved = []

    def patch(owner, attribute, value):
        saved.append((owner, attribute, getattr(owner, attribute)))
        setattr(owner, attribute, value)

    for name in EQUIVALENTS:
        replacement = equivalent(name, fused)
        patch(keras_optimizers, name, replacement)
        patch(sys.modules[f"keras.src.optimizers.{name.lower()}"], name, replacement)
    try:
        yield
    finally:
        for owner, attribute, value in reversed(saved):
            setattr(owner, attribute, value)


# Keras's tests that run over every Keras optimizer (by name, through ``optimizers.get``, or by
# case name): only the Adam family's cases are adamkit's to run; the others test Keras's own
# optimizers and are skipped as such.
FAMILY_CASES = ("adam", "adam_amsgrad", "adamw", "adamw_amsgrad", "adamax", "nadam")
OVER_EVERY_OPTIMIZER = ("test_gradient_accumulation_with_weigth_decay", "test_pickleable_optimizers",
                        "test_sparse_gradients", "test_sparse_correctness")
_FAMILY_ONLY = contextvars.ContextVar("family_only", default=False)


def optimizers_namespace(fused) -> types.ModuleType:
    """``keras.src.optimizers`` as a test file sees it: the family's classes are adamkit's
    equivalents, and ``get`` builds them by name or config; everything else is Keras's."""
    namespace = types.ModuleType("keras.src.optimizers (adamkit)")
    namespace.__dict__.update(vars(keras_optimizers))
    classes = {name: equivalent(name, fused) for name in EQUIVALENTS}
    namespace.__dict__.update(classes)
    by_name = {name.lower(): cls for name, cls in classes.items()}

    def get(identifier):
        config = ({"class_name": identifier, "config": {}} if isinstance(identifier, str)
                  else identifier)
        if isinstance(config, dict) and str(config.get("class_name")).lower() in by_name:
            return by_name[config["class_name"].lower()].from_config(config.get("config", {}))
        if isinstance(config, dict) and _FAMILY_ONLY.get():
            raise unittest.SkipTest(f"Keras's {config['class_name']} is not an Adam-family "
                                    "optimizer: nothing of adamkit's to test")
        return keras_optimizers.get(identifier)

    namespace.get = get
    return namespace


def family_only(method, name: str):
    """``method`` (one generated case of a test over every optimizer), skipped unless its case
    is one of the Adam family's."""
    case = next((c for c in sorted(FAMILY_CASES, key=len, reverse=True)
                 if name.endswith("_" + c)), None)
    if name.startswith(("test_sparse_gradients", "test_sparse_correctness")) and case is None:
        return unittest.skip("a Keras optimizer outside the Adam family")(method)

    @functools.wraps(method)
    def run(self, *args, **kwargs):
        token = _FAMILY_ONLY.set(True)
        try:
            return method(self, *args, **kwargs)
        finally:
            _FAMILY_ONLY.reset(token)

    return run


def load(file: str, fused) -> types.ModuleType:
    path = keras_optimizers.__path__[0] + f"/{file}.py"
    name = f"adamkit_keras_suite.{file}_{'ops' if fused is False else 'default'}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    with keras_replaced(fused):
        spec.loader.exec_module(module)
    if hasattr(module, "optimizers"):  # looked up when each test runs
        module.optimizers = optimizers_namespace(fused)
    return module


def _test_cases(module) -> list[type]:
    return [obj for obj in vars(module).values()
            if isinstance(obj, type) and issubclass(obj, unittest.TestCase)
            and obj.__module__ == module.__name__]


for _file in FILES:
    for _fused in (None, False):
        for _case in _test_cases(load(_file, _fused)):
            _path = "ops" if _fused is False else "default"
            for _test, _reason in SKIPS.get(_file, {}).items():
                _reason, _applies = _reason if isinstance(_reason, tuple) else (_reason, None)
                if _applies is not None and not _applies(_path):
                    continue
                for _attribute in [a for a in dir(_case) if a == _test]:
                    setattr(_case, _attribute, unittest.skip(_reason)(getattr(_case, _attribute)))
            for _attribute in [a for a in dir(_case) if a.startswith(OVER_EVERY_OPTIMIZER)]:
                setattr(_case, _attribute, family_only(getattr(_case, _attribute), _attribute))
            globals()[f"TestKeras_{_case.__name__}_{_path}"] = _case

del _file, _fused, _case, _path, _test, _reason, _applies, _attribute


def test_the_suite_runs_adamkit():
    module = load("adam_test", False)
    assert issubclass(module.Adam, adamkit.Adam) and module.Adam().fused is False
    assert keras.optimizers.Adam is not module.Adam  # restored once the file is loaded
    with pytest.raises(AssertionError):
        assert BACKEND is None


# -- Keras's files whose optimizer is SGD, ported: the same scenarios with adamkit's Adam in ---------
# -- Keras's place and Keras's Adam run alongside as the reference (adamkit has no SGD) -------------

LOSS_SCALE_SCENARIOS = {
    # name: (LossScaleOptimizer keywords, inner keywords, gradient per step, steps)
    "finite_step": ({}, {}, [1.0, 6.0, 7.0, 2.0], 1),
    "finite_step_with_inner_loss_scale": ({}, {"loss_scale_factor": 100}, [1.0, 6.0, 7.0, 2.0], 1),
    "infinite_step": ({}, {}, [np.inf, 1.0, np.nan, 2.0], 1),
    "downscaling": ({"initial_scale": 400.0}, {}, [np.inf] * 4, 4),
    "upscaling": ({"initial_scale": 2.0, "dynamic_growth_steps": 2}, {}, [1.0, 6.0, 7.0, 2.0], 8),
}


def _loss_scaled_run(inner, scale_keywords, gradient, steps):
    optimizer = keras.optimizers.LossScaleOptimizer(inner, **scale_keywords)
    variables = [keras.Variable([1.0, 2.0, 3.0, 4.0])]
    optimizer.build(variables)
    grads = [keras.ops.convert_to_tensor(np.asarray(gradient, np.float32)) * optimizer.initial_scale]
    for _ in range(steps):
        if BACKEND == "jax":  # Keras's LossScaleOptimizer must go through stateless_apply on JAX
            values, state = optimizer.stateless_apply(
                [v.value for v in optimizer.variables], grads, [v.value for v in variables])
            for variable, value in zip([*optimizer.variables, *variables], [*state, *values]):
                variable.assign(value)
        else:
            optimizer.apply(grads, variables)
    return (keras.ops.convert_to_numpy(variables[0]), float(optimizer.scale_loss(1.0)),
            int(optimizer.iterations))


@pytest.mark.parametrize("fused", [None, False], ids=["default", "ops"])
@pytest.mark.parametrize("scenario", list(LOSS_SCALE_SCENARIOS))
def test_loss_scale_optimizer_scenarios_as_keras_adam(scenario, fused):
    """Keras's loss_scale_optimizer_test.py, each scenario with adamkit inside."""
    scale_keywords, inner_keywords, gradient, steps = LOSS_SCALE_SCENARIOS[scenario]
    ours = _loss_scaled_run(equivalent("Adam", fused)(learning_rate=0.5, **inner_keywords),
                            scale_keywords, gradient, steps)
    theirs = _loss_scaled_run(KerasAdamFormula(learning_rate=0.5, **inner_keywords),
                              scale_keywords, gradient, steps)
    if fused is not False and BACKEND in ("jax", "torch"):
        # adamkit's kernel rounds each operation once (IEEE), where Keras's step is compiled by
        # XLA inside the LossScaleOptimizer's lax.cond on JAX, and torch.sqrt is not correctly
        # rounded in float32 on PyTorch: the last bit may differ (test_conformance.py holds the
        # kernels to Keras's op-by-op result bit for bit).
        np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-6)
    else:
        np.testing.assert_array_equal(ours[0], theirs[0])
    assert ours[1:] == theirs[1:]


DISTRIBUTED_SCENARIOS = r"""
import json, sys
import numpy as np
import tensorflow as tf
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0],
    [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
import keras
import numpy as np
import adamkit

strategy = tf.distribute.MirroredStrategy(["CPU:0", "CPU:1"])


def make(kind, **kwargs):
    if kind == "keras":
        return keras.optimizers.Adam(**kwargs)
    return adamkit.Adam(epsilon=1e-7, epsilon_mode="keras", fused=None if kind == "default"
                        else False, **kwargs)


def run(kind, keywords, variable, grads, steps, record):
    with strategy.scope():
        v = tf.Variable(variable) if variable == [1.0, 2.0, 3.0, 4.0] else keras.Variable(variable)
        optimizer = make(kind, **keywords)
        out = []
        for _ in range(steps):
            strategy.run(lambda: optimizer.apply_gradients([(tf.constant(grads), v)]))
            row = {"v": np.asarray(v.numpy() if hasattr(v, "numpy") else v).tolist(),
                   "iterations": int(optimizer.iterations.numpy())}
            if record == "ema":
                row["ema"] = np.asarray(optimizer._model_variables_moving_average[0]).tolist()
            if record == "accumulated":
                row["accumulated"] = np.asarray(optimizer._accumulated_gradients[0]).tolist()
            out.append(row)
    return out


SCENARIOS = {  # Keras's optimizer_distribute_test.py, its inputs with Adam in place of SGD
    "single_step_tf_variable": ({"learning_rate": 0.5}, [1.0, 2.0, 3.0, 4.0],
                                [1.0, 6.0, 7.0, 2.0], 1, None),
    "weight_decay": ({"learning_rate": 1.0, "weight_decay": 0.004}, [[2.0]], [[0.0]], 2, None),
    "correctness_over_steps": ({"learning_rate": 0.1, "amsgrad": True}, [[1.0] * 10],
                               [[0.1 * i for i in range(1, 11)]], 5, None),
    "ema": ({"learning_rate": 1.0, "use_ema": True, "ema_momentum": 0.9,
             "ema_overwrite_frequency": 3}, [[3.0, 4.0], [5.0, 6.0]], [[1.0, 1.0], [1.0, 1.0]],
            3, "ema"),
    "gradient_accumulation": ({"learning_rate": 1.0, "gradient_accumulation_steps": 3},
                              [[1.0, 2.0], [3.0, 4.0]], [[1.0, 1.0], [2.0, 2.0]], 3,
                              "accumulated"),
}
results = {name: {kind: run(kind, *scenario) for kind in ("keras", "default", "ops")}
           for name, scenario in SCENARIOS.items()}
print("RESULTS " + json.dumps(results))
"""


@pytest.mark.slow
@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.distribute is TensorFlow's")
def test_distribute_scenarios_as_keras_adam():
    """Keras's optimizer_distribute_test.py (MirroredStrategy over 2 logical CPUs, in a process
    of its own: the devices must be set before TensorFlow starts), adamkit against Keras's Adam
    on both paths: weights, iterations, EMA and accumulated gradients after every step."""
    import json
    import os
    import subprocess

    result = subprocess.run([sys.executable, "-c", DISTRIBUTED_SCENARIOS], capture_output=True,
                            text=True, timeout=600, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULTS ")]
    assert result.returncode == 0 and lines, result.stderr[-3000:]
    results = json.loads(lines[0][len("RESULTS "):])
    assert len(results) == 5
    for name, runs in results.items():
        for path in ("default", "ops"):
            if name == "weight_decay":  # θ·(1 − αλ), where Keras computes θ − θ·λ·α: last bits
                for ours, theirs in zip(runs[path], runs["keras"]):
                    np.testing.assert_allclose(ours["v"], theirs["v"], rtol=1e-6)
            else:
                assert runs[path] == runs["keras"], (name, path)
