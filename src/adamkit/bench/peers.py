"""The steps timed against each other: adamkit's paths and Keras's Adam on TensorFlow, the peers'
own Adams (TensorFlow's raw op, torch.optim, optax), and the Keras JAX and PyTorch backends, each
in a child process (Keras fixes its backend at import)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable

import keras
import numpy as np

import adamkit
from adamkit.bench.timing import backend_stepper, compiled_apply, median_seconds, parameter_shapes

Steps = dict[str, Callable[[], object]]


def tensorflow_steps(shapes, rng) -> Steps:
    """name -> step function, for adamkit and Keras on TensorFlow."""
    import tensorflow as tf

    grads = [tf.constant(rng.normal(size=s).astype(np.float32)) for s in shapes]
    steps = {}

    def compiled(make, jit):
        return compiled_apply(make(), shapes, grads, jit)

    steps["adamkit Adam, tf.function (fused kernel)"] = compiled(adamkit.Adam, False)
    steps["adamkit Adam, tf.function, ops path"] = compiled(lambda: adamkit.Adam(fused=False), False)
    steps["adamkit Adam, XLA (fused kernel)"] = compiled(adamkit.Adam, True)
    steps["adamkit Adam, XLA, ops path"] = compiled(lambda: adamkit.Adam(fused=False), True)
    steps["adamkit AMSGrad, tf.function"] = compiled(lambda: adamkit.Adam(amsgrad=True), False)
    steps["adamkit AdamW, tf.function"] = compiled(lambda: adamkit.AdamW(), False)
    for state_dtype in ("bfloat16", "int8"):
        for jit, path in ((False, "tf.function"), (True, "XLA")):
            steps[f"adamkit Adam {state_dtype} state, {path}"] = compiled(
                lambda d=state_dtype: adamkit.Adam(state_dtype=d), jit)
    steps["keras Adam, tf.function (model.fit on CPU)"] = compiled(keras.optimizers.Adam, False)
    steps["keras Adam, XLA"] = compiled(keras.optimizers.Adam, True)
    steps["tf raw ResourceApplyAdam, tf.function"] = raw_adam_step(shapes, grads)
    return steps


def raw_adam_step(shapes, grads) -> Callable[[], object]:
    """TensorFlow's own fused Adam op (``ResourceApplyAdam``) over fresh variables of ``shapes``."""
    import tensorflow as tf

    variables = [tf.Variable(tf.zeros(s)) for s in shapes]
    m = [tf.Variable(tf.zeros(s)) for s in shapes]
    v = [tf.Variable(tf.zeros(s)) for s in shapes]

    @tf.function
    def raw():
        for x, mx, vx, g in zip(variables, m, v, grads):
            tf.raw_ops.ResourceApplyAdam(
                var=x.handle, m=mx.handle, v=vx.handle, beta1_power=0.9, beta2_power=0.999,
                lr=1e-3, beta1=0.9, beta2=0.999, epsilon=1e-8, grad=g)

    return raw


def torch_steps(shapes, rng) -> Steps:
    """torch.optim.Adam's three implementations (single-tensor, foreach, fused)."""
    import torch

    steps = {}
    for label, options in (("single-tensor", {"foreach": False}), ("foreach", {"foreach": True}),
                           ("fused", {"fused": True})):
        params = [torch.zeros(s, requires_grad=True) for s in shapes]
        for p in params:
            p.grad = torch.as_tensor(rng.normal(size=p.shape).astype(np.float32))
        optimizer = torch.optim.Adam(params, **options)
        steps[f"torch.optim.Adam {label}"] = optimizer.step
    return steps


def torch_fused(name: str, shapes) -> Callable[[], object]:
    """torch.optim's fused counterpart of the family member ``name`` (for RAdam, NAdam and Adamax,
    which have none, the foreach one) over fresh parameters of ``shapes``."""
    import torch

    params = [torch.zeros(s, requires_grad=True) for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape)
    if name == "AdamW":
        return torch.optim.AdamW(params, weight_decay=0.01, fused=True).step
    if name in ("RAdam", "NAdam", "Adamax"):  # torch has no fused form of these: foreach
        return getattr(torch.optim, name)(params, foreach=True).step
    return torch.optim.Adam(params, amsgrad=name == "AMSGrad", fused=True).step


def torch_sparse_step(rows: int, indices, values) -> Callable[[], None]:
    """torch.optim.SparseAdam on a ``rows`` × dim table, the gradient touching ``indices``."""
    import torch

    param = torch.zeros((rows, values.shape[1]), requires_grad=True)
    optimizer = torch.optim.SparseAdam([param])
    grad = torch.sparse_coo_tensor(torch.as_tensor(indices[None], dtype=torch.int64),
                                   torch.as_tensor(values), tuple(param.shape),
                                   check_invariants=True)

    def step():
        param.grad = grad
        optimizer.step()

    return step


def optax_steps(shapes, rng) -> Steps:
    """optax.adam under ``jax.jit``, parameters and state donated; none without JAX and optax."""
    try:
        import jax
        import optax
    except ImportError:
        return {}
    params = [jax.numpy.zeros(s) for s in shapes]
    grads = [jax.numpy.asarray(rng.normal(size=s).astype(np.float32)) for s in shapes]
    transform = optax.adam(1e-3)
    state = transform.init(params)

    # Gradients as an argument (closed over they would be folded in as constants); parameters and
    # state donated, so the step updates them in place, as a training loop would.
    def apply(params, state, grads):
        updates, state = transform.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    update = jax.jit(apply, donate_argnums=(0, 1))
    holder = [params, state]

    def step():
        holder[0], holder[1] = update(*holder, grads)
        jax.block_until_ready(holder[0])

    return {"optax adam, jax.jit": step}


BACKEND_PATHS = {  # row name → the optimizer, made in the child process (on its backend)
    "keras Adam": lambda: keras.optimizers.Adam(),
    "adamkit Adam": lambda: adamkit.Adam(),
    "adamkit AdamW": lambda: adamkit.AdamW(),
    "adamkit AMSGrad": lambda: adamkit.Adam(amsgrad=True),
}


def backend_steps(backend: str, millions: int, repeats: int, log=print) -> dict[str, float]:
    """Row name → parameters per second on Keras's ``backend``, measured in a child process."""
    code = f"from adamkit.bench.peers import backend_child; backend_child({millions}, {repeats})"
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                            timeout=3600)
    if result.returncode != 0:
        log(f"({backend} backend rows left out: {result.stderr.strip()[-300:]})")
        return {}
    label = {"jax": "JAX backend, jit", "torch": "torch backend"}[backend]
    speeds = json.loads(result.stdout.strip().splitlines()[-1])
    return {f"{name}, {label}": speed for name, speed in speeds.items()}


def backend_child(millions: int, repeats: int) -> None:
    """In a process whose Keras runs on JAX or PyTorch: prints ``{row name: parameters/s}`` as JSON."""
    shapes = parameter_shapes(millions)
    count = sum(int(np.prod(s)) for s in shapes)
    rng = np.random.default_rng(0)
    grads = [keras.ops.convert_to_tensor(rng.normal(size=s).astype(np.float32)) for s in shapes]

    speeds = {name: count / median_seconds(backend_stepper(make(), shapes, grads), repeats)
              for name, make in BACKEND_PATHS.items()}
    print(json.dumps(speeds))
