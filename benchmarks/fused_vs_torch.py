"""adamkit's fused TensorFlow step against torch.optim.Adam(fused=True), alternating, many rounds.

    python benchmarks/fused_vs_torch.py [--sizes 10 50] [--rounds 7]

On a shared machine a single timing of each can be off by ±30%; alternating the two, round after
round, and taking the median of the per-round ratios cancels most of the drift. Prints, per size and
optimizer (Adam, AdamW, AMSGrad), the median ratio adamkit / torch (> 1: adamkit is faster) and
the range over rounds.
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np

import adamkit
from adamkit.bench import compiled_apply, median_seconds, parameter_shapes

VARIANTS = {
    "Adam": (lambda: adamkit.Adam(), {}),
    "AdamW": (lambda: adamkit.AdamW(weight_decay=0.01), {"weight_decay": 0.01}),
    "AMSGrad": (lambda: adamkit.Adam(amsgrad=True), {"amsgrad": True}),
}


def main() -> None:
    import tensorflow as tf
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    for millions in args.sizes:
        shapes = parameter_shapes(millions)
        grads = [tf.constant(rng.normal(size=s).astype(np.float32)) for s in shapes]
        for name, (make, torch_options) in VARIANTS.items():
            ours = compiled_apply(make(), shapes, grads)
            params = [torch.zeros(s, requires_grad=True) for s in shapes]
            for p in params:
                p.grad = torch.randn(p.shape)
            cls = torch.optim.AdamW if name == "AdamW" else torch.optim.Adam
            theirs = cls(params, fused=True, **torch_options).step
            ratios = []
            for _ in range(args.rounds):
                ratios.append(median_seconds(theirs, 5) / median_seconds(ours, 5))
            print(f"{millions}M {name:8} adamkit / torch fused: median {statistics.median(ratios):.2f}× "
                  f"(rounds {min(ratios):.2f}–{max(ratios):.2f})", flush=True)


if __name__ == "__main__":
    main()
