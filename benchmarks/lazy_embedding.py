"""Step time of an embedding table's optimizer update against the rows a batch touches.

A 1,000,000 × 64 float32 table, a sparse gradient (IndexedSlices) touching k rows; each optimizer's
step runs under tf.function (the model.fit path), warmed up, median of repeats, all in one run:
keras.optimizers.Adam (decays every row), adamkit.Adam (dense, the default), adamkit.Adam(lazy=True),
and torch.optim.SparseAdam for reference.
Run: python benchmarks/lazy_embedding.py [--rows 1000000] [--repeats 10]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import torch  # noqa: E402

import adamkit  # noqa: E402

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
    table = keras.Variable(np.zeros((rows, DIM), np.float32))
    optimizer.build([table])
    apply = tf.function(lambda: optimizer.apply([gradient], [table]))

    def step():
        apply()
        table.value.handle  # noqa: B018 -- nothing to read back; apply returns when done

    return step


def torch_step(rows: int, indices, values):
    param = torch.zeros((rows, DIM), requires_grad=True)
    optimizer = torch.optim.SparseAdam([param])
    grad = torch.sparse_coo_tensor(torch.as_tensor(indices[None], dtype=torch.int64),
                                   torch.as_tensor(values), (rows, DIM))

    def step():
        param.grad = grad
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--touched", type=int, nargs="+", default=[100, 1_000, 10_000, 100_000])
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"table {args.rows:,} x {DIM} float32; step time in ms (median of {args.repeats})")
    header = (f"{'rows touched':>12} {'keras Adam':>11} {'adamkit':>9} {'adamkit lazy':>13} "
              f"{'torch SparseAdam':>17} {'keras/lazy':>11}")
    print(header)
    for k in args.touched:
        indices = rng.integers(0, args.rows, size=k).astype(np.int32)
        values = rng.normal(size=(k, DIM)).astype(np.float32)
        gradient = tf.IndexedSlices(tf.constant(values), tf.constant(indices), (args.rows, DIM))
        timings = {
            "keras": median_seconds(keras_step(keras.optimizers.Adam(), args.rows, gradient),
                                    args.repeats),
            "adamkit": median_seconds(keras_step(adamkit.Adam(), args.rows, gradient), args.repeats),
            "lazy": median_seconds(keras_step(adamkit.Adam(lazy=True), args.rows, gradient),
                                   args.repeats),
            "torch": median_seconds(torch_step(args.rows, indices, values), args.repeats),
        }
        ms = {name: 1e3 * t for name, t in timings.items()}
        print(f"{k:>12,} {ms['keras']:>11.2f} {ms['adamkit']:>9.2f} {ms['lazy']:>13.3f} "
              f"{ms['torch']:>17.3f} {timings['keras'] / timings['lazy']:>10.0f}x")


if __name__ == "__main__":
    main()
