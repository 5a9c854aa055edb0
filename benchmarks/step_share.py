"""Where an epoch's time goes: the optimizer's update alone against the whole training step.

    python benchmarks/step_share.py [--backends tensorflow jax torch] [--model wide|tutorial]
                                    [--rounds 5]

``model.fit`` with Adam can only be as close to SGD's epoch as Adam's update is to SGD's: both run
the same forward and backward pass, and the update comes after it. Per backend, in its own
process, this times side by side, the parts taking turns round after round: one whole training
step with Keras's SGD (the floor of ``benchmarks/epoch_times.py``: the epoch of ``model.fit`` over
2·``STEPS`` batches less that over ``STEPS``, divided by ``STEPS``, which leaves out the first
step's own set-up; ``train_on_batch`` costs several steps in its set-up), and the
update alone of Keras's SGD, Keras's Adam and adamkit's Adam on the model's variables, as each
backend's trainer runs it (``adamkit.bench.timing.backend_stepper``: ``tf.function``; JAX's jit
with the state donated; PyTorch's ``apply``); "beyond SGD's update / SGD step" is (update − SGD's
update) / SGD's whole step: what the optimizer adds to an epoch beyond SGD if nothing of it
overlaps. Then the whole training step with each optimizer on one fixed batch ("fixed-batch
step"), compiled as the trainer compiles it (``adamkit.bench.timing.training_stepper``):
forward, backward and update together, without the input pipeline, so that what the compiler
fuses (or cannot) shows; the last column, (fixed-batch step − SGD's fixed-batch step) / SGD's
step in fit, is the figure that ``epoch_times.py``'s "median / SGD" − 1 should come near,
measured a step at a time. adamkit's Adam with ``fused=False`` runs the same rule as Keras ops,
which the compiler may fuse with the backward pass where it cannot fuse a kernel's call.

Two rows say what the bytes of Adam's state cost. "SGD, and a pass over m and v" is Keras's SGD
that also reads and writes, in one multiply, a buffer the size of m and v together
(``epoch_times.moments_pass``), inside the training step: its fixed-batch step less SGD's is what
one more pass over those bytes costs there (an Adam fused into one pass can cost less: SGD's own
update is one op a variable). The last row reads and writes m and v, 16 of the 28 bytes a
parameter that an Adam step moves, at the memory-bandwidth limit alone (``adamkit.bench.stream``:
16/28 of the time that streaming a step's bytes takes, on every core; where m and v fit in the
cache, as the tutorial's do, the cache's speed instead).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

from epoch_times import PASS, make_model, make_optimizer
from results import Table

UPDATES = ("keras SGD", "keras Adam", "adamkit Adam", "adamkit Adam, fused=False", PASS)
STEPS = 50  # batches in each timed model.fit
FLOOR = "m and v at the bandwidth limit"
STATE_BYTES = 16 / 28  # of an Adam step's bytes a parameter: m and v, each read and written


def child(args) -> None:
    """Prints one JSON line: seconds per round of the whole SGD step and of each update."""
    os.environ["KERAS_BACKEND"] = args.child
    import keras
    import numpy as np

    from adamkit.bench.stream import stream_step
    from adamkit.bench.timing import EpochTimer, backend_stepper, median_seconds, training_stepper

    keras.utils.set_random_seed(0)
    model, batch = make_model(args.model)
    model.compile(keras.optimizers.SGD(0.01),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x = rng.random((2 * STEPS * batch, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, 2 * STEPS * batch)

    def epoch_seconds(batches: int, repeats: int = 3) -> float:
        """The median epoch of ``model.fit`` over ``batches`` batches, after one untimed."""
        timer, seconds = EpochTimer(), []
        for _ in range(repeats + 1):
            model.fit(x[:batches * batch], y[:batches * batch], batch_size=batch, epochs=1,
                      verbose=0, callbacks=[timer])
            seconds.extend(timer.times)
        return statistics.median(seconds[1:])

    trainers = {}  # the whole training step with each optimizer, on one fixed batch
    for name in UPDATES:
        keras.utils.set_random_seed(0)
        trained, _ = make_model(args.model)
        trained.compile(make_optimizer(name),
                        keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        trained.fit(x[:batch], y[:batch], batch_size=batch, epochs=1, verbose=0)  # builds all
        trainers[name] = training_stepper(trained, x[:batch], y[:batch])
    shapes = [tuple(v.shape) for v in model.trainable_variables]
    grads = [keras.ops.convert_to_tensor(rng.normal(size=s).astype(np.float32) * 1e-3)
             for s in shapes]
    if args.child == "tensorflow":
        from adamkit.bench.timing import compiled_apply as stepper
    else:
        stepper = backend_stepper
    steps = {name: stepper(make_optimizer(name), shapes, grads) for name in UPDATES}
    stream = stream_step(model.count_params())
    seconds = {name: [] for name in ["SGD step in fit", *steps,
                                     *(f"{name}: fixed-batch step" for name in trainers), FLOOR]}
    for _ in range(args.rounds):
        long, short = epoch_seconds(2 * STEPS), epoch_seconds(STEPS)
        seconds["SGD step in fit"].append((long - short) / STEPS)
        seconds[FLOOR].append(STATE_BYTES * median_seconds(stream, 20))
        for name, step in steps.items():
            seconds[name].append(median_seconds(step, 20))
        for name, step in trainers.items():
            seconds[f"{name}: fixed-batch step"].append(median_seconds(step, 20))
    print(json.dumps({"parameters": model.count_params(), "batch": batch, "seconds": seconds}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["tensorflow", "jax", "torch"])
    parser.add_argument("--model", choices=["wide", "tutorial"], default="wide")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    table = Table(f"step_share_{args.model}",
                  f"The update alone and the whole step against SGD's step, {args.model} model "
                  "(milliseconds, median over rounds of each part's median; SGD's step in fit: "
                  f"the epoch of model.fit over {2 * STEPS} batches less over {STEPS}, per batch; the "
                  "fixed-batch step: one batch, compiled as the trainer compiles it)",
                  [("backend", ""), ("SGD step in fit (ms)", ".2f"), ("update", ""),
                   ("update (ms)", ".2f"), ("update / SGD step", ".3f"),
                   ("beyond SGD's update / SGD step", ".3f"), ("fixed-batch step (ms)", ".2f"),
                   ("beyond SGD's fixed-batch step / SGD step", ".3f")])
    for backend in args.backends:
        command = [sys.executable, __file__, "--child", backend, *sys.argv[1:]]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        result = json.loads(done.stdout.splitlines()[-1])
        ms = {name: 1e3 * statistics.median(s) for name, s in result["seconds"].items()}
        whole = ms.pop("SGD step in fit")
        sgd_step = ms["keras SGD: fixed-batch step"]
        for name in UPDATES:
            step = ms[f"{name}: fixed-batch step"]
            table.add(backend, whole, name, ms[name], ms[name] / whole,
                      (ms[name] - ms["keras SGD"]) / whole, step, (step - sgd_step) / whole)
        floor = ms[FLOOR]  # SGD's update moves no m, v: all of it is beyond SGD's
        table.add(backend, whole, FLOOR, floor, floor / whole, floor / whole, None, None)
    table.save()


if __name__ == "__main__":
    main()
