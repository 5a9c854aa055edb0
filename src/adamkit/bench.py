"""``adamkit bench``: optimizer steps timed against peers in one run, printed as ratios.

``lazy``: an embedding table's update against the rows a batch touches. A 1,000,000 × 64 float32
table and a sparse gradient (IndexedSlices) touching k rows; each optimizer's step runs under
``tf.function`` (the ``model.fit`` path), warmed up, median of repeats: ``keras.optimizers.Adam``
(decays every row), ``adamkit.Adam`` (dense, the default), ``adamkit.Adam(lazy=True)``, and
``torch.optim.SparseAdam`` for reference (if torch is installed).
"""

from __future__ import annotations

import statistics
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


def keras_step(optimizer, rows: int, gradient):
    import tensorflow as tf

    table = keras.Variable(np.zeros((rows, DIM), np.float32))
    optimizer.build([table])
    return tf.function(lambda: optimizer.apply([gradient], [table]))


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
        timings = {
            "keras": median_seconds(keras_step(keras.optimizers.Adam(), rows, gradient), repeats),
            "adamkit": median_seconds(keras_step(adamkit.Adam(), rows, gradient), repeats),
            "lazy": median_seconds(keras_step(adamkit.Adam(lazy=True), rows, gradient), repeats),
            "torch": median_seconds(torch_step(rows, indices, values), repeats) if torch else None,
        }
        ms = {name: "n/a" if t is None else f"{1e3 * t:.3f}" for name, t in timings.items()}
        log(f"{k:>12,} {ms['keras']:>11} {ms['adamkit']:>9} {ms['lazy']:>13} {ms['torch']:>17} "
            f"{timings['keras'] / timings['lazy']:>10.0f}x")
        results.append({"rows_touched": k, **timings})
    return results
