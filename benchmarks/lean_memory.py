"""Peak resident memory of ``model.fit`` with float32, bfloat16 and int8 optimizer state, as the
process sees it, on every backend and on both paths (adamkit's kernels, and ``fused=False``).

    python benchmarks/lean_memory.py [--layers 12] [--width 4096] [--backends tensorflow jax torch]

The model is a stack of ``--layers`` Dense(width) layers (12 × 4096² ≈ 201M float32 parameters),
fitted for a few steps on random data, each configuration in a fresh process (its peak RSS,
``ru_maxrss``, is the figure). The saving against float32 state is compared with the theory: Adam
keeps two moments, 8 bytes a parameter in float32, 4 in bfloat16 and 2 + 8/256 in int8, so the
lean forms should save 4 and 5.97 bytes a parameter; "of theory" is the saving measured over that.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from results import Table

STATE_DTYPES = ("float32", "bfloat16", "int8")
THEORY = {"float32": 0.0, "bfloat16": 4.0, "int8": 8.0 - 2.0 - 8.0 / 256}  # bytes a parameter


def child(backend: str, fused: bool, state_dtype: str, layers: int, width: int) -> None:
    """One configuration: fit a few steps and print the peak RSS (bytes) and parameter count."""
    os.environ["KERAS_BACKEND"] = backend
    import resource

    import keras
    import numpy as np

    import adamkit

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((width,))] +
                             [keras.layers.Dense(width, use_bias=False) for _ in range(layers)])
    model.compile(adamkit.Adam(state_dtype=state_dtype, fused=None if fused else False), "mse")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((48, width), dtype=np.float32)
    model.fit(x, x, batch_size=16, epochs=1, verbose=0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux
    print(json.dumps({"peak": peak, "parameters": model.count_params()}))


def measure(backend: str, fused: bool, state_dtype: str, args) -> dict:
    command = [sys.executable, __file__, "--child", backend, str(int(fused)), state_dtype,
               "--layers", str(args.layers), "--width", str(args.width)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--backends", nargs="+", default=["tensorflow", "jax", "torch"])
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        backend, fused, state_dtype = args.child
        return child(backend, fused == "1", state_dtype, args.layers, args.width)
    table = Table("lean_memory", "Peak resident memory of model.fit (GB) by state dtype, and the "
                  "saving against float32 state as a share of the theory (4 and 5.97 bytes a "
                  "parameter)", [("backend", ""), ("path", ""), ("state", ""),
                                 ("parameters (M)", ".0f"), ("peak RSS (GB)", ".2f"),
                                 ("saved (GB)", ".2f"), ("of theory", ".0%")])
    for backend in args.backends:
        for fused in (True, False):
            path = "kernels" if fused else "fused=False"
            base = None
            for state_dtype in STATE_DTYPES:
                found = measure(backend, fused, state_dtype, args)
                base = base or found["peak"]
                saved = base - found["peak"]
                theory = THEORY[state_dtype] * found["parameters"]
                table.add(backend, path, state_dtype, found["parameters"] / 1e6,
                          found["peak"] / 1e9, saved / 1e9,
                          saved / theory if theory else float("nan"))
    table.save()


if __name__ == "__main__":
    main()
