"""Step speed of bfloat16 optimizer state against float32 state on the fused TensorFlow path,
alternating the two round after round (a shared machine drifts; the ratio does not).

    python benchmarks/state_speed.py [--sizes 10 50] [--rounds 5]

Prints Mparam/s per round and the median ratio bfloat16 / float32 (> 1: bfloat16 faster). int8
state has no fused kernel yet; its speed is in `adamkit bench step`.
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np

import adamkit
from adamkit.bench import compiled_apply, median_seconds, parameter_shapes


def main() -> None:
    import tensorflow as tf

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    for millions in args.sizes:
        shapes = parameter_shapes(millions)
        grads = [tf.constant(rng.normal(size=s).astype(np.float32)) for s in shapes]
        float32 = compiled_apply(adamkit.Adam(), shapes, grads)
        bfloat16 = compiled_apply(adamkit.Adam(state_dtype="bfloat16"), shapes, grads)
        ratios = []
        for _ in range(args.rounds):
            a, b = median_seconds(float32, 5), median_seconds(bfloat16, 5)
            ratios.append(a / b)
            print(f"{millions}M float32 state {millions / a:.0f}, bfloat16 state {millions / b:.0f} "
                  "Mparam/s", flush=True)
        print(f"{millions}M bfloat16 / float32: median {statistics.median(ratios):.2f}× "
              f"(rounds {min(ratios):.2f}–{max(ratios):.2f})")


if __name__ == "__main__":
    main()
