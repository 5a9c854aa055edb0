"""Seconds per ``model.fit`` epoch with each optimizer, on each backend, against Keras's SGD (the
floor: no optimizer state, one multiply-add a parameter) and Keras's Adam (the peer).

    python benchmarks/epoch_times.py [--backends tensorflow jax torch] [--model wide|tutorial]
                                     [--rounds 5] [--images 30000] [--steps-per-execution 1]

"SGD, and a pass over m and v" (``moments_pass``) is SGD's step plus the bytes of Adam's state: it
also reads and writes, in one multiply, a buffer the size of m and v together. It is a reference, not
a bound: an Adam whose update is one fused pass can cost less than SGD's update and that op.

``wide``: a 784-2048-2048-10 MLP (5.8M parameters), batch 128; ``tutorial``: the tutorial's MLP
(Flatten → Dense(128, relu) → Dropout(0.2) → Dense(10)), batch 32, many small steps. Each backend
runs in its own process; there every optimizer trains one epoch per round, in turn, round after
round (a shared machine slows whole stretches of time: alternating spreads that over all of
them), after one untimed epoch each that compiles.

The epoch is timed from Keras's ``on_epoch_begin`` to its ``on_epoch_end``: every step, input
included. ``fit`` itself returns later on TensorFlow, by 0.5–2 s in many calls and not in the
others, whatever the optimizer (the input pipeline's teardown after the last step); that call is
the last column. Columns: the fastest and the median epoch, the median over SGD's median, and
the median of each round's epoch over SGD's epoch of the same round (1.00 = the floor; the goal
is within 1.05).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from results import Table

PASS = "SGD, and a pass over m and v"
OPTIMIZERS = ("keras SGD", PASS, "keras Adam", "adamkit Adam", "adamkit AdamW", "adamkit AMSGrad",
              "adamkit Adam, bfloat16 state", "adamkit Adam, int8 state")


def moments_pass():
    """Keras's SGD(0.01) whose step also reads and writes one buffer of zeros the size of m and v
    together (twice the parameters), multiplied by ½ (one multiply): SGD's step plus the bytes of
    Adam's state, passed over once, and nothing else of Adam."""
    import math

    import keras

    if keras.backend.backend() == "torch":  # Keras's SGD there, with its _foreach_ step
        from keras.src.backend.torch.optimizers.torch_sgd import SGD
    else:
        SGD = keras.optimizers.SGD

    class MomentsPass(SGD):
        def build(self, variables):
            super().build(variables)
            size = 2 * sum(math.prod(v.shape) for v in variables)
            self.moments = self.add_variable((size,), initializer="zeros", name="moments")

        def _backend_update_step(self, grads, trainable_variables, learning_rate):
            super()._backend_update_step(grads, trainable_variables, learning_rate)
            if keras.backend.backend() == "torch":
                import torch

                # In place: Keras's assign there copies a new tensor in, a second pass.
                with torch.no_grad():
                    self.moments.value.mul_(0.5)
            else:
                self.assign(self.moments, keras.ops.multiply(self.moments, 0.5))

    return MomentsPass(0.01)


def make_optimizer(name: str):
    import keras

    import adamkit

    return {
        "keras SGD": lambda: keras.optimizers.SGD(0.01),
        PASS: moments_pass,
        "keras Adam": lambda: keras.optimizers.Adam(),
        "adamkit Adam": lambda: adamkit.Adam(),
        "adamkit Adam, fused=False": lambda: adamkit.Adam(fused=False),
        "adamkit AdamW": lambda: adamkit.AdamW(weight_decay=0.004),
        "adamkit AMSGrad": lambda: adamkit.Adam(amsgrad=True),
        "adamkit Adam, bfloat16 state": lambda: adamkit.Adam(state_dtype="bfloat16"),
        "adamkit Adam, int8 state": lambda: adamkit.Adam(state_dtype="int8"),
    }[name]()


def make_model(kind: str):
    import keras

    from adamkit.train import seed_model

    if kind == "tutorial":
        return seed_model(), 32
    return keras.Sequential([keras.Input((28, 28)), keras.layers.Flatten(),
                             keras.layers.Dense(2048, activation="relu"),
                             keras.layers.Dense(2048, activation="relu"),
                             keras.layers.Dense(10)]), 128


def child(args) -> None:
    """Prints one JSON line per optimizer: (name, seconds of each round's epoch, seconds of each
    round's ``fit`` call)."""
    os.environ["KERAS_BACKEND"] = args.child
    import keras

    from adamkit.bench.timing import EpochTimer
    from adamkit.data import load_mnist

    (x, y), _ = load_mnist()
    x, y = x[: args.images].astype("float32") / 255.0, y[: args.images]
    models = {}
    for name in OPTIMIZERS:
        keras.utils.set_random_seed(0)
        model, batch = make_model(args.model)
        model.compile(make_optimizer(name),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      steps_per_execution=args.steps_per_execution)
        model.fit(x, y, batch_size=batch, epochs=1, verbose=0)  # compiles
        models[name] = (model, batch)
    epochs, calls = ({name: [] for name in OPTIMIZERS} for _ in range(2))
    for _ in range(args.rounds):
        for name, (model, batch) in models.items():
            timer = EpochTimer()
            start = time.perf_counter()
            model.fit(x, y, batch_size=batch, epochs=1, verbose=0, callbacks=[timer])
            calls[name].append(time.perf_counter() - start)
            epochs[name].extend(timer.times)
    for name in OPTIMIZERS:
        print(json.dumps([name, epochs[name], calls[name]]), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["tensorflow", "jax", "torch"])
    parser.add_argument("--model", choices=["wide", "tutorial"], default="wide")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--images", type=int, default=30000)
    parser.add_argument("--steps-per-execution", type=int, default=1)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    name = f"epoch_times_{args.model}_spe{args.steps_per_execution}"
    table = Table(name, f"Seconds per model.fit epoch, {args.model} model, "
                  f"steps_per_execution={args.steps_per_execution}, {args.images} images; "
                  "from the epoch's start to its end; over Keras SGD's (1.00: the floor)",
                  [("backend", ""), ("optimizer", ""), ("fastest (s)", ".2f"),
                   ("median (s)", ".2f"), ("median / SGD", ".3f"),
                   ("round by round / SGD", ".3f"), ("fit call, median (s)", ".2f")])
    for backend in args.backends:
        command = [sys.executable, __file__, "--child", backend, *sys.argv[1:]]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("[")]
        sgd = next(epochs for optimizer, epochs, _ in rows if optimizer == "keras SGD")
        for optimizer, epochs, calls in rows:
            paired = [epoch / floor for epoch, floor in zip(epochs, sgd)]
            table.add(backend, optimizer, min(epochs), statistics.median(epochs),
                      statistics.median(epochs) / statistics.median(sgd),
                      statistics.median(paired), statistics.median(calls))
    table.save()


if __name__ == "__main__":
    main()
