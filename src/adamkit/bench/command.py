"""``adamkit bench``: optimizer steps timed against peers in one run, printed as ratios. Only the
CLI imports this module; the scripts in ``benchmarks/`` share its helpers (``timing``, ``peers``,
``stream``), not it.

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
(decays every row), ``adamkit.Adam`` (dense, the default), ``adamkit.Adam(lazy=True,
epsilon_mode="keras")`` (ε added to √v as torch.optim.SparseAdam adds it, so that both compute the
same update), and ``torch.optim.SparseAdam`` (if torch is installed). Two more columns say what a
``tf.function`` step costs apart from its work: the lazy step run 32 times per call (as
``model.fit`` runs it with ``steps_per_execution=32``), per step, and a call of a ``tf.function``
that only adds 1 to a variable, the least any step called once per call can take.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import keras
import numpy as np

import adamkit
from adamkit.bench import record
from adamkit.bench.peers import (
    backend_steps,
    optax_steps,
    tensorflow_steps,
    torch_sparse_step,
    torch_steps,
)
from adamkit.bench.stream import stream_step
from adamkit.bench.timing import compiled_apply, median_seconds, parameter_shapes

DIM = 64  # the embedding table's width in ``lazy``
CALL_STEPS = 32  # ``lazy``'s steps per tf.function call in its column of steps run together
LIMIT = "bandwidth limit (best of stream, torch fused)"


def step_paths(shapes, count: int, rng, log=print) -> dict:
    """Every path ``step`` times, the streaming kernel first (if it builds)."""
    try:
        paths = {LIMIT: stream_step(count)}
    except (RuntimeError, OSError) as error:  # no compiler: torch's fused step is the ceiling
        log(f"(the streaming kernel could not be built: {error}; the limit row is torch fused)")
        paths = {}
    paths.update({**tensorflow_steps(shapes, rng), **torch_steps(shapes, rng),
                  **optax_steps(shapes, rng)})
    return paths


def log_speeds(speeds: dict[str, float], limit: float, count: int, millions: int, repeats: int,
               rounds: int, log=print) -> None:
    torch_fused = speeds["torch.optim.Adam fused"]
    log(f"\n{count / 1e6:.1f}M float32 parameters ({millions} × 1000×1000 + biases); "
        f"median over {rounds} rounds of the median of {repeats} steps after 3 warm-up")
    log(f"{'path':45s} {'Mparam/s':>9s} {'/ torch fused':>14s} {'/ limit':>8s}")
    log(f"{LIMIT:45s} {limit / 1e6:>9.0f} "
        f"{limit / torch_fused:>14.2f} {1.0:>8.2f}")
    for name, speed in sorted(speeds.items(), key=lambda kv: -kv[1]):
        log(f"{name:45s} {speed / 1e6:>9.0f} {speed / torch_fused:>14.2f} {speed / limit:>8.2f}")


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
        paths = step_paths(shapes, count, rng, log)
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
        log_speeds(speeds, limit, count, millions, repeats, rounds, log)
        results.append({"parameters": count, "limit": limit, "speeds": speeds})
        del paths
    return results


def lazy(rows: int = 1_000_000, touched=(100, 1_000, 10_000, 100_000), repeats: int = 10,
         rounds: int = 3, log=print) -> list[dict]:
    """Prints and returns, per number of rows touched, each optimizer's step time in seconds: the
    median over ``rounds`` of its median of ``repeats`` steps, the optimizers taking turns."""
    import tensorflow as tf

    try:
        import torch  # noqa: F401
    except ImportError:
        torch = None
    rng = np.random.default_rng(0)
    log(f"table {rows:,} x {DIM} float32; step time in ms (median over {rounds} rounds of the "
        f"median of {repeats}), TensorFlow tf.function")
    log(f"{'rows touched':>12} {'keras Adam':>11} {'adamkit':>9} {'adamkit lazy':>13} "
        f"{'torch SparseAdam':>17} {'lazy, 32/call':>13} {'empty call':>10} {'keras/lazy':>11}")
    results = []
    for k in touched:
        indices = rng.integers(0, rows, size=k).astype(np.int32)
        values = rng.normal(size=(k, DIM)).astype(np.float32)
        gradient = tf.IndexedSlices(tf.constant(values), tf.constant(indices), (rows, DIM))
        optimizers = (("keras", keras.optimizers.Adam()), ("adamkit", adamkit.Adam()),
                      ("lazy", adamkit.Adam(lazy=True, epsilon_mode="keras")))
        steps = {name: compiled_apply(optimizer, [(rows, DIM)], [gradient])
                 for name, optimizer in optimizers}
        if torch:
            steps["torch"] = torch_sparse_step(rows, indices, values)
        steps["lazy, per step of 32"] = compiled_apply(
            adamkit.Adam(lazy=True, epsilon_mode="keras"), [(rows, DIM)], [gradient],
            steps_per_call=CALL_STEPS)
        counter = tf.Variable(0, dtype=tf.int64)
        steps["call"] = tf.function(lambda counter=counter: counter.assign_add(1))
        seconds = {name: [] for name in steps}
        for _ in range(rounds):
            for name, step in steps.items():
                seconds[name].append(median_seconds(step, repeats))
        timings = {name: statistics.median(times) for name, times in seconds.items()}
        timings["lazy, per step of 32"] /= CALL_STEPS
        timings.setdefault("torch", None)
        ms = {name: "n/a" if t is None else f"{1e3 * t:.3f}" for name, t in timings.items()}
        log(f"{k:>12,} {ms['keras']:>11} {ms['adamkit']:>9} {ms['lazy']:>13} {ms['torch']:>17} "
            f"{ms['lazy, per step of 32']:>13} {ms['call']:>10} "
            f"{timings['keras'] / timings['lazy']:>10.0f}x")
        results.append({"rows": rows, "rows_touched": k, **timings})
        del steps
    return results


def plot_step(plt, results: list[dict]):
    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 5), squeeze=False)
    for ax, result in zip(axes[0], results):
        speeds = sorted(result["speeds"].items(), key=lambda kv: kv[1])
        ax.barh([name for name, _ in speeds], [s / 1e6 for _, s in speeds])
        ax.axvline(result["limit"] / 1e6, color="black", linestyle="--", label="bandwidth limit")
        ax.set_title(f"{result['parameters'] / 1e6:.0f}M float32 parameters", fontsize=10)
        ax.set_xlabel("million parameters per second")
        ax.tick_params(axis="y", labelsize=7)
        ax.legend(fontsize=8)
    return fig


def plot_lazy(plt, results: list[dict]):
    fig, ax = plt.subplots(figsize=(6, 4))
    touched = [r["rows_touched"] for r in results]
    for key, label in (("keras", "keras Adam"), ("adamkit", "adamkit Adam"),
                       ("lazy", "adamkit Adam(lazy=True, keras ε)"), ("torch", "torch SparseAdam")):
        if all(r[key] is not None for r in results):
            ax.plot(touched, [1e3 * r[key] for r in results], "o-", label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("rows touched per step")
    ax.set_ylabel("step time (ms)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


STEP_COLUMNS = [("parameters", ""), ("path", ""), ("Mparam/s", ".0f"), ("/ torch fused", ".2f"),
                ("/ limit", ".2f")]
LAZY_COLUMNS = [("rows touched", ",d"), ("keras Adam (ms)", ".1f"), ("adamkit Adam (ms)", ".1f"),
                ("adamkit lazy (ms)", ".3f"), ("torch SparseAdam (ms)", ".3f"),
                ("keras / lazy", ".0f"), ("lazy, 32 steps a call (ms a step)", ".3f"),
                ("an empty tf.function call (ms)", ".3f")]
OPTIONS = {"step": ("sizes", "repeats", "rounds"), "lazy": ("rows", "touched", "repeats", "rounds")}


def command_line(suite: str, options: dict) -> str:
    """The ``adamkit bench`` command that measures ``suite`` with ``options`` (every option it
    reads spelled out, so the line reruns the same measurement)."""
    words = ["adamkit", "bench", suite]
    for name in OPTIONS[suite]:
        value = options[name]
        words += [f"--{name}", *map(str, value if isinstance(value, (list, tuple)) else [value])]
    return " ".join(words)


def step_rows(results: list[dict]) -> list[list]:
    """One row per size and path, fastest first after the limit; speeds in million per second."""
    rows = []
    for result in results:
        size, limit = f"{result['parameters'] / 1e6:.1f}M", result["limit"]
        torch_fused = result["speeds"]["torch.optim.Adam fused"]
        speeds = [(LIMIT, limit), *sorted(result["speeds"].items(), key=lambda kv: -kv[1])]
        rows += [[size, name, speed / 1e6, speed / torch_fused, speed / limit]
                 for name, speed in speeds]
    return rows


def lazy_rows(results: list[dict]) -> list[list]:
    """One row per number of rows touched; times in milliseconds."""
    def ms(seconds):
        return None if seconds is None else 1e3 * seconds

    return [[r["rows_touched"], ms(r["keras"]), ms(r["adamkit"]), ms(r["lazy"]), ms(r["torch"]),
             r["keras"] / r["lazy"], ms(r["lazy, per step of 32"]), ms(r["call"])]
            for r in results]


def result_table(results: list[dict], suite: str, command: str) -> dict:
    """``results`` of ``step`` or ``lazy`` as a result file (``adamkit.bench.record``)."""
    if suite == "step":
        title = ("Every path and peer: one dense Adam step over float32 parameters (1000×1000 "
                 "matrices plus biases), all paths in one process taking turns; million "
                 "parameters per second, the median over rounds of each path's median step")
        return record.document("bench_step", title, command, STEP_COLUMNS, step_rows(results))
    title = (f"Lazy sparse updates: a {results[0]['rows']:,} × {DIM} float32 table, a sparse "
             "gradient touching k random rows, each optimizer's step under tf.function (median)")
    return record.document("bench_lazy", title, command, LAZY_COLUMNS, lazy_rows(results))


def save(results: list[dict], suite: str, out, command: str) -> None:
    """Writes ``bench_<suite>.json`` (a result file: the table, ``command``, the machine) and a
    plot ``bench_<suite>.png`` into ``out`` (the plot needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    record.write(result_table(results, suite, command), out / f"bench_{suite}.json")
    fig = plot_step(plt, results) if suite == "step" else plot_lazy(plt, results)
    fig.tight_layout()
    fig.savefig(out / f"bench_{suite}.png", dpi=100)
    plt.close(fig)
