"""Soak: 20,000 training steps of the seed's model, checkpointing as it goes, printing resident
memory along the way. Memory should level off after warm-up (no growth beyond noise).

    python benchmarks/soak.py [--steps 20000] [--optimizer adam] [--state-dtype int8]
                              [--checkpoint-every 1000]

``--optimizer keras-adam`` is the control: the same job with Keras's own Adam, to tell creep that
comes from adamkit from creep of TensorFlow/Keras themselves. The slope over the second half
(least squares, MiB per 1,000 steps) is the figure to compare.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time

import keras
import numpy as np

from adamkit.choices import OPTIMIZERS
from adamkit.train import TrainSettings, train
from results import Table


def resident_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class MemoryReport(keras.callbacks.Callback):
    def __init__(self, every: int) -> None:
        super().__init__()
        self.every, self.step, self.samples = every, 0, []

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self.step == 1 or self.step % self.every == 0:
            self.samples.append((self.step, resident_mib()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--optimizer", default="adam", choices=OPTIMIZERS)
    parser.add_argument("--state-dtype", default="float32", choices=["float32", "bfloat16", "int8"])
    parser.add_argument("--checkpoint-every", type=int, default=1000)
    args = parser.parse_args()
    report = MemoryReport(every=2000)
    epochs = math.ceil(args.steps / 1875)  # batch 32: 1,875 steps per epoch
    with tempfile.TemporaryDirectory() as folder:
        options = {} if args.optimizer == "keras-adam" else {"state_dtype": args.state_dtype}
        settings = TrainSettings(epochs=epochs, optimizer=args.optimizer, hyperparameters=options,
                                 out=f"{folder}/out", checkpoint_dir=f"{folder}/ckpt",
                                 checkpoint_every=args.checkpoint_every, keep=2)
        start = time.perf_counter()
        train(settings, callbacks=[report], log=lambda _: None)
    elapsed = time.perf_counter() - start
    last_step = report.samples[-1][0]
    half = [(step, mib) for step, mib in report.samples if step >= last_step / 2]
    slope = np.polyfit([s for s, _ in half], [m for _, m in half], 1)[0] * 1000
    table = Table(f"soak_{args.optimizer}_{args.state_dtype}", f"Soak: {last_step:,} training steps "
                  f"of the tutorial's model ({args.optimizer}, {args.state_dtype} state, a checkpoint "
                  f"every {args.checkpoint_every}) in {elapsed:.0f} s; resident memory, second-half "
                  f"slope {slope:+.3f} MiB per 1,000 steps", [("step", ",d"), ("resident MiB", ".1f")])
    for step, mib in report.samples:
        table.add(step, mib)
    table.save()

if __name__ == "__main__":
    main()
