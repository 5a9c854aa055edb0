"""The lean-state step against the float32-state step, on each backend, as its trainer runs it.

    python benchmarks/lean_speed.py [--backends tensorflow jax torch] [--sizes 10 50] [--rounds 5]

Rows: adamkit.Adam with bfloat16 and with int8 state / with float32 state, same variables and
gradients, rounds alternating the two sides (> 1: the lean step is faster). TensorFlow under
``tf.function`` (the path ``model.fit`` runs; adamkit's op) and under XLA (its custom call); JAX
under ``jax.jit`` with the state donated (its custom call); PyTorch through adamkit's kernel.
Each backend runs in its own process (Keras fixes its backend at import). The limits: an Adam
step moves 28 bytes a parameter with float32 state, 20 with bfloat16 and about 16.1 with int8,
so a bandwidth-bound step could reach 1.4× and 1.7×. The last two columns are the medians of the
rounds' step times: the float32-state step is bound by the bandwidth that the machine's other
processes leave, the int8 one by the cores, so those times show which of the two moved.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys

from results import RATIO_COLUMNS, Table

COLUMNS = [*RATIO_COLUMNS, ("float32 state (ms)", ".2f"), ("lean state (ms)", ".2f")]

LEAN = ("bfloat16", "int8")


def child(backend: str, sizes: list[int], rounds: int) -> None:
    """Prints one JSON line per row: (label, per round (float32 state's, lean state's) seconds)."""
    os.environ["KERAS_BACKEND"] = backend
    import keras
    import numpy as np

    import adamkit
    from adamkit.bench.timing import backend_stepper, compiled_apply, parameter_shapes
    from results import alternate_seconds

    rng = np.random.default_rng(0)
    for millions in sizes:
        shapes = parameter_shapes(millions)
        grads = [keras.ops.convert_to_tensor(rng.normal(size=s).astype(np.float32))
                 for s in shapes]
        def make(dtype, jit=None, shapes=shapes, grads=grads):
            optimizer = adamkit.Adam(state_dtype=dtype)
            if jit is None:
                return backend_stepper(optimizer, shapes, grads)
            return compiled_apply(optimizer, shapes, grads, jit=jit)

        if backend == "tensorflow":
            steps = {"tf.function": functools.partial(make, jit=False),
                     "XLA": functools.partial(make, jit=True)}
        else:
            steps = {"jit" if backend == "jax" else "eager": make}
        for path, make in steps.items():
            float32 = make("float32")
            for dtype in LEAN:
                label = f"{backend:10} {path:11} {millions}M {dtype} state / float32 state"
                print(json.dumps([label, alternate_seconds(make(dtype), float32, rounds)]),
                      flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["tensorflow", "jax", "torch"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.sizes, args.rounds)
    table = Table("lean_speed", "The Adam step with bfloat16 and int8 state over the step with "
                  "float32 state (> 1: the lean step is faster; limits 1.4 and 1.7), and each one's time",
                  COLUMNS)
    for backend in args.backends:
        command = [sys.executable, __file__, "--child", backend, "--rounds", str(args.rounds),
                   "--sizes", *map(str, args.sizes)]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        for line in done.stdout.splitlines():
            if line.startswith("["):
                label, seconds = json.loads(line)
                table.ratio_row(label, [f / lean for f, lean in seconds],
                                *(1e3 * statistics.median(side) for side in zip(*seconds)))
    table.save()


if __name__ == "__main__":
    main()
