"""Ratios on the fused TensorFlow path, measured by alternating the two sides round after round
(on a shared machine one timing of each can be off by ±30%; the median of per-round ratios is not).

    python benchmarks/fused_ratios.py [--sizes 10 50] [--rounds 7]
                                      [--paths tf.function XLA]

1. adamkit (Adam, AdamW, AMSGrad, RAdam, NAdam, AdaMax; under tf.function its own op, under XLA
   its custom call) against torch.optim's fused counterpart (for RAdam, NAdam and AdaMax, which
   have none, their foreach ones):
   adamkit / torch (> 1: adamkit faster), and against the bandwidth limit (the step's own bytes
   streamed, ``adamkit.bench.stream.stream_step``: 28 B/param, AMSGrad 36): adamkit / limit (1 = at it).
2. The framework's call overhead: the same step over as many one-element variables (the same
   graph and captures, next to no bytes), as a share of the real step's time; torch fused alike.
   Each such call is timed right after a pass that streams the step's bytes, as in training,
   where the step before has just swept the caches ("cold"); back to back, it costs a third to a
   half of that.
3. The step as ``model.fit`` runs it with ``steps_per_execution=32`` (``adamkit train``'s
   default): 32 steps in a ``tf.range`` loop inside one call, against 32 passes of the limit.
4. adamkit's Adam loop alone (``adamkit.bench.stream.kernel_loop_step``: the kernels' loop on plain
   arrays, no framework) / limit: what the step costs apart from the framework's call.
5. adamkit.Adam with bfloat16 and with int8 state against float32 state (> 1: faster).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import adamkit
from adamkit.bench.peers import torch_fused
from adamkit.bench.stream import kernel_loop_step, stream_step
from adamkit.bench.timing import compiled_apply, median_seconds, parameter_shapes, repeated
from results import RATIO_COLUMNS, Table, alternate


def overhead_shares(step, tiny_step, flush, rounds: int) -> list[float]:
    """Per round: the median time of ``tiny_step`` called right after ``flush`` (a pass over the
    step's bytes, leaving the caches as a real step does), over the median time of ``step``."""
    shares = []
    for _ in range(rounds):
        cold = []
        for _ in range(5):
            flush()
            start = time.perf_counter()
            tiny_step()
            cold.append(time.perf_counter() - start)
        shares.append(statistics.median(cold) / median_seconds(step, 5))
    return shares


def tiny(shapes) -> list[tuple[int]]:
    """As many variables as ``shapes``, one element each: a step that is all overhead."""
    return [(1,)] * len(shapes)


PATHS = {"tf.function": False, "XLA": True}  # path -> jit_compile
STEPS_PER_CALL = 32  # adamkit train's steps_per_execution


def main() -> None:
    import tensorflow as tf

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--paths", nargs="+", choices=list(PATHS), default=list(PATHS))
    args = parser.parse_args()
    table = Table("fused_ratios", "TensorFlow: adamkit's fused step against torch's fused step, "
                  "the bandwidth limit and the framework's call (> 1: the first is faster; "
                  "overhead rows: a share of the step)", RATIO_COLUMNS)
    report = table.ratio_row
    rng = np.random.default_rng(0)
    ours = {"Adam": adamkit.Adam, "AdamW": lambda: adamkit.AdamW(weight_decay=0.01),
            "AMSGrad": lambda: adamkit.Adam(amsgrad=True), "RAdam": adamkit.RAdam,
            "NAdam": adamkit.Nadam, "Adamax": adamkit.Adamax}
    for millions in args.sizes:
        shapes = parameter_shapes(millions)
        grads = [tf.constant(rng.normal(size=s).astype(np.float32)) for s in shapes]
        count = sum(int(np.prod(s)) for s in shapes)
        limits = {False: stream_step(count), True: stream_step(count, amsgrad=True)}
        tiny_grads = [tf.constant(rng.normal(size=s).astype(np.float32)) for s in tiny(shapes)]
        for path in args.paths:
            for name, make in ours.items():
                step = compiled_apply(make(), shapes, grads, jit=PATHS[path])
                label = f"{millions}M {name:8} {path:11} adamkit"
                report(f"{label} / torch fused",
                       alternate(step, torch_fused(name, shapes), args.rounds))
                report(f"{label} / limit",
                       alternate(step, limits[name == "AMSGrad"], args.rounds))
                if name == "Adam":
                    overhead = compiled_apply(make(), tiny(shapes), tiny_grads, jit=PATHS[path])
                    report(f"{label}: call overhead / step (cold)",
                           overhead_shares(step, overhead, limits[False], args.rounds))
                    in_loop = compiled_apply(make(), shapes, grads, jit=PATHS[path],
                                             steps_per_call=STEPS_PER_CALL)
                    report(f"{label}, {STEPS_PER_CALL} steps per call / limit",
                           alternate(in_loop, repeated(limits[False], STEPS_PER_CALL),
                                     args.rounds))
        torch_step = torch_fused("Adam", shapes)
        report(f"{millions}M torch fused Adam / limit",
               alternate(torch_step, limits[False], args.rounds))
        report(f"{millions}M torch fused Adam: call overhead / step (cold)",
               overhead_shares(torch_step, torch_fused("Adam", tiny(shapes)), limits[False],
                               args.rounds))
        report(f"{millions}M adamkit's Adam loop alone / limit",
               alternate(kernel_loop_step(count), limits[False], args.rounds))
        float32 = compiled_apply(adamkit.Adam(), shapes, grads)
        for state_dtype in ("bfloat16", "int8"):
            lean = compiled_apply(adamkit.Adam(state_dtype=state_dtype), shapes, grads)
            report(f"{millions}M Adam     {state_dtype} state / float32 state",
                   alternate(lean, float32, args.rounds))
    table.save()


if __name__ == "__main__":
    main()
