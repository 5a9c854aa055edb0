"""``adamkit bench``: optimizer steps timed against peers in one run, printed as ratios.

``step``: one dense Adam step over float32 parameters (1000 × 1000 matrices plus biases: 1M, 10M,
50M parameters) for adamkit on its paths (float32, bfloat16 and int8 state) and for every peer in
this process — keras.optimizers.Adam
(TensorFlow tf.function, and XLA), TensorFlow's raw ``ResourceApplyAdam``, ``torch.optim.Adam``
(single-tensor, foreach, fused), ``optax.adam`` under ``jax.jit`` — and, each in a child process
(Keras fixes its backend at import), ``keras.optimizers.Adam`` and adamkit's Adam on the JAX backend
(``stateless_apply`` under ``jax.jit``, as ``model.fit`` runs it) and on the PyTorch backend
(``optimizer.apply``) — in million parameters per second, with ratios to torch's fused Adam and to
the memory-bandwidth limit. The limit is measured, not assumed: a kernel that moves an Adam step's
bytes (read θ, g, m, v; write θ, m, v: 28 per parameter) with next to no arithmetic, on every
core — or torch's fused step, where that moved them faster in the same run.

``lazy``: an embedding table's update against the rows a batch touches. A 1,000,000 × 64 float32
table and a sparse gradient (IndexedSlices) touching k rows; each optimizer's step runs under
``tf.function`` (the ``model.fit`` path), warmed up, median of repeats: ``keras.optimizers.Adam``
(decays every row), ``adamkit.Adam`` (dense, the default), ``adamkit.Adam(lazy=True)``, and
``torch.optim.SparseAdam`` for reference (if torch is installed).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

import keras
import numpy as np

import adamkit

DIM = 64


def median_seconds(step, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


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


def repeated(step, times: int):
    """``step`` called ``times`` times: the same work as a call of ``compiled_apply``'s loop."""

    def steps():
        for _ in range(times):
            step()

    return steps


def torch_step(rows: int, indices, values):
    import torch

    param = torch.zeros((rows, DIM), requires_grad=True)
    optimizer = torch.optim.SparseAdam([param])
    grad = torch.sparse_coo_tensor(torch.as_tensor(indices[None], dtype=torch.int64),
                                   torch.as_tensor(values), (rows, DIM), check_invariants=True)

    def step():
        param.grad = grad
        optimizer.step()

    return step


def parameter_shapes(millions: int) -> list[tuple[int, ...]]:
    """``millions`` 1000 × 1000 matrices, each with a bias of 1000."""
    return [shape for _ in range(millions) for shape in ((1000, 1000), (1000,))]


def tensorflow_steps(shapes, rng) -> dict:
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

    variables = [tf.Variable(tf.zeros(s)) for s in shapes]
    m = [tf.Variable(tf.zeros(s)) for s in shapes]
    v = [tf.Variable(tf.zeros(s)) for s in shapes]

    @tf.function
    def raw():
        for x, mx, vx, g in zip(variables, m, v, grads):
            tf.raw_ops.ResourceApplyAdam(
                var=x.handle, m=mx.handle, v=vx.handle, beta1_power=0.9, beta2_power=0.999,
                lr=1e-3, beta1=0.9, beta2=0.999, epsilon=1e-8, grad=g)

    steps["tf raw ResourceApplyAdam, tf.function"] = raw
    return steps


def torch_steps(shapes, rng) -> dict:
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


def optax_steps(shapes, rng) -> dict:
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


def backend_steps(backend: str, millions: int, repeats: int, log=print) -> dict:
    """Row name → parameters per second on Keras's ``backend``, measured in a child process."""
    code = f"from adamkit.bench import backend_child; backend_child({millions}, {repeats})"
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                            timeout=3600)
    if result.returncode != 0:
        log(f"({backend} backend rows left out: {result.stderr.strip()[-300:]})")
        return {}
    label = {"jax": "JAX backend, jit", "torch": "torch backend"}[backend]
    speeds = json.loads(result.stdout.strip().splitlines()[-1])
    return {f"{name}, {label}": speed for name, speed in speeds.items()}


def backend_stepper(optimizer, shapes, grads):
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


def backend_child(millions: int, repeats: int) -> None:
    """In a process whose Keras runs on JAX or PyTorch: prints ``{row name: parameters/s}`` as JSON."""
    shapes = parameter_shapes(millions)
    count = sum(int(np.prod(s)) for s in shapes)
    rng = np.random.default_rng(0)
    grads = [keras.ops.convert_to_tensor(rng.normal(size=s).astype(np.float32)) for s in shapes]

    speeds = {name: count / median_seconds(backend_stepper(make(), shapes, grads), repeats)
              for name, make in BACKEND_PATHS.items()}
    print(json.dumps(speeds))


def _stream_library():
    """``kernels/stream.cc`` built (once, cached) and loaded."""
    import ctypes
    from pathlib import Path

    from adamkit.kernels.build import compile_library

    source = Path(__file__).with_name("kernels") / "stream.cc"
    return ctypes.CDLL(str(compile_library(source, ["-fopenmp", "-ffp-contract=off"])))


def stream_step(count: int, amsgrad: bool = False):
    """A function that streams an Adam step's bytes for ``count`` parameters — read θ, g, m, v;
    write θ, m, v: 28 bytes each; with ``amsgrad`` v̂max read and written too, 36 bytes — with
    next to no arithmetic, on every core (``kernels/stream.cc``): the memory-bandwidth limit of a
    step."""
    import ctypes

    stream = _stream_library().adamkit_stream
    arrays = [np.ones(count, np.float32) for _ in range(5 if amsgrad else 4)]  # written: no page
    pointers = [a.ctypes.data_as(ctypes.POINTER(ctypes.c_float)) for a in arrays]  # shared with 0s
    theta, m, v, g = pointers[0], pointers[1], pointers[2], pointers[-1]
    vhat = pointers[3] if amsgrad else None
    return lambda: stream(theta, m, v, vhat, g, ctypes.c_int64(count), ctypes.c_float(0.0))


def kernel_loop_step(count: int):
    """A function that runs adamkit's own Adam loop (``adam_update.h``, float32, as the kernels
    do) over ``count`` parameters in plain arrays, on every core, with no framework around it
    (``kernels/stream.cc``): what the kernel costs apart from a framework's call."""
    import ctypes

    loop = _stream_library()
    arrays = [np.ones(count, np.float32) for _ in range(4)]  # θ, m, v, g
    # decay, 1 − β1, 1 − β2, a, s, ε, b: Adam's defaults at step 10
    scalars = np.array([1.0, 0.1, 0.001, 1e-3 / (1 - 0.9**10), (1 - 0.999**10) ** -0.5, 1e-8, 0],
                       np.float32)
    pointers = [a.ctypes.data_as(ctypes.POINTER(ctypes.c_float)) for a in [*arrays, scalars]]
    theta, m, v, g, s = pointers
    return lambda: loop.adamkit_adam_loop(theta, m, v, g, ctypes.c_int64(count), s,
                                          ctypes.c_int32(10))


LIMIT = "bandwidth limit (best of stream, torch fused)"


def step(sizes=(1, 10, 50), repeats: int = 10, rounds: int = 3, log=print) -> list[dict]:
    """Prints and returns, per size, every path's throughput in parameters per second: the median
    over ``rounds`` of each path's median of ``repeats`` steps, the paths taking turns each round
    (on a shared machine one pass over them can be off by ±30%), the streaming kernel among them.
    The limit is the faster of that kernel and torch's fused step."""
    rng = np.random.default_rng(0)
    results = []
    for millions in sizes:
        shapes = parameter_shapes(millions)
        count = sum(int(np.prod(s)) for s in shapes)
        try:
            paths = {LIMIT: stream_step(count)}
        except (RuntimeError, OSError) as error:  # no compiler: torch's fused step is the ceiling
            log(f"(the streaming kernel could not be built: {error}; the limit row is torch fused)")
            paths = {}
        paths.update({**tensorflow_steps(shapes, rng), **torch_steps(shapes, rng),
                      **optax_steps(shapes, rng)})
        seconds = {name: [] for name in paths}
        for _ in range(rounds):
            for name, fn in paths.items():
                seconds[name].append(median_seconds(fn, repeats))
        speeds = {name: count / statistics.median(times) for name, times in seconds.items()}
        # A ceiling no Adam step beat in this run: the 28 bytes streamed, or torch's fused step where
        # it moved them faster (one pass over the paths can catch the stream on a slow moment).
        limit = max(speeds.pop(LIMIT, 0.0), speeds["torch.optim.Adam fused"])
        for backend in ("jax", "torch"):
            speeds.update(backend_steps(backend, millions, repeats, log))
        torch_fused = speeds["torch.optim.Adam fused"]
        log(f"\n{count / 1e6:.1f}M float32 parameters ({millions} × 1000×1000 + biases); "
            f"median over {rounds} rounds of the median of {repeats} steps after 3 warm-up")
        log(f"{'path':45s} {'Mparam/s':>9s} {'/ torch fused':>14s} {'/ limit':>8s}")
        log(f"{LIMIT:45s} {limit / 1e6:>9.0f} "
            f"{limit / torch_fused:>14.2f} {1.0:>8.2f}")
        for name, speed in sorted(speeds.items(), key=lambda kv: -kv[1]):
            log(f"{name:45s} {speed / 1e6:>9.0f} {speed / torch_fused:>14.2f} {speed / limit:>8.2f}")
        results.append({"parameters": count, "limit": limit, "speeds": speeds})
        del paths
    return results


def lazy(rows: int = 1_000_000, touched=(100, 1_000, 10_000, 100_000), repeats: int = 10,
         log=print) -> list[dict]:
    """Prints and returns, per number of rows touched, each optimizer's step time in seconds."""
    import tensorflow as tf

    try:
        import torch  # noqa: F401
    except ImportError:
        torch = None
    rng = np.random.default_rng(0)
    log(f"table {rows:,} x {DIM} float32; step time in ms (median of {repeats}), TensorFlow "
        "tf.function")
    log(f"{'rows touched':>12} {'keras Adam':>11} {'adamkit':>9} {'adamkit lazy':>13} "
        f"{'torch SparseAdam':>17} {'keras/lazy':>11}")
    results = []
    for k in touched:
        indices = rng.integers(0, rows, size=k).astype(np.int32)
        values = rng.normal(size=(k, DIM)).astype(np.float32)
        gradient = tf.IndexedSlices(tf.constant(values), tf.constant(indices), (rows, DIM))
        peers = (("keras", keras.optimizers.Adam()), ("adamkit", adamkit.Adam()),
                 ("lazy", adamkit.Adam(lazy=True)))
        timings = {name: median_seconds(compiled_apply(optimizer, [(rows, DIM)], [gradient]), repeats)
                   for name, optimizer in peers}
        timings["torch"] = median_seconds(torch_step(rows, indices, values), repeats) if torch else None
        ms = {name: "n/a" if t is None else f"{1e3 * t:.3f}" for name, t in timings.items()}
        log(f"{k:>12,} {ms['keras']:>11} {ms['adamkit']:>9} {ms['lazy']:>13} {ms['torch']:>17} "
            f"{timings['keras'] / timings['lazy']:>10.0f}x")
        results.append({"rows_touched": k, **timings})
    return results


def save(results: list[dict], suite: str, out) -> None:
    """Writes ``bench_<suite>.json`` and a plot ``bench_<suite>.png`` into ``out``."""
    import json
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"bench_{suite}.json").write_text(json.dumps(results, indent=2))
    if suite == "step":
        fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 5), squeeze=False)
        for ax, result in zip(axes[0], results):
            speeds = sorted(result["speeds"].items(), key=lambda kv: kv[1])
            ax.barh([name for name, _ in speeds], [s / 1e6 for _, s in speeds])
            ax.axvline(result["limit"] / 1e6, color="black", linestyle="--", label="bandwidth limit")
            ax.set_title(f"{result['parameters'] / 1e6:.0f}M float32 parameters", fontsize=10)
            ax.set_xlabel("million parameters per second")
            ax.tick_params(axis="y", labelsize=7)
            ax.legend(fontsize=8)
    else:
        fig, ax = plt.subplots(figsize=(6, 4))
        touched = [r["rows_touched"] for r in results]
        for key, label in (("keras", "keras Adam"), ("adamkit", "adamkit Adam"),
                           ("lazy", "adamkit Adam(lazy=True)"), ("torch", "torch SparseAdam")):
            if all(r[key] is not None for r in results):
                ax.plot(touched, [1e3 * r[key] for r in results], "o-", label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("rows touched per step")
        ax.set_ylabel("step time (ms)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / f"bench_{suite}.png", dpi=100)
    plt.close(fig)
