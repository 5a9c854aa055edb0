"""Soak: the tutorial's model trained for many steps, checkpointing as it goes, its resident memory
read along the way. Memory should level off after warm-up (no growth beyond noise).

    python benchmarks/soak.py [--steps 20000] [--optimizers adam keras-adam]
                              [--state-dtype int8] [--checkpoint-every 1000] [--every 1000]

Each optimizer trains in a fresh process of its own, one after the other; ``keras-adam`` (the
default's second) is the control: the same job with Keras's own Adam, to tell creep that comes
from adamkit from creep of TensorFlow/Keras themselves. The slope over the second half (least
squares, MiB per 1,000 steps) is the figure to compare. Writes ``results/soak.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys

import numpy as np

from adamkit.choices import OPTIMIZERS, STATE_DTYPES
from results import Table

SAMPLES = "soak samples: "  # the line a child prints its readings on


def resident_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def soak(args: argparse.Namespace) -> list[tuple[int, float]]:
    """Trains ``args.child`` in this process; (step, resident MiB) at step 1 and every ``every``."""
    import tempfile

    import keras

    from adamkit.train import TrainSettings, train

    class MemoryReport(keras.callbacks.Callback):
        """Reads memory after the first call and after the first call past each ``every`` steps
        (``model.fit`` runs 32 steps per call, so the step is read from the optimizer)."""

        def __init__(self) -> None:
            super().__init__()
            self.samples = []

        def on_train_batch_end(self, batch, logs=None):
            step = int(self.model.optimizer.iterations.numpy())
            if not self.samples or step // args.every > self.samples[-1][0] // args.every:
                self.samples.append((step, resident_mib()))

    report = MemoryReport()
    epochs = math.ceil(args.steps / 1875)  # batch 32: 1,875 steps per epoch
    with tempfile.TemporaryDirectory() as folder:
        options = {} if args.child == "keras-adam" else {"state_dtype": args.state_dtype}
        settings = TrainSettings(epochs=epochs, optimizer=args.child, hyperparameters=options,
                                 out=f"{folder}/out", checkpoint_dir=f"{folder}/ckpt",
                                 checkpoint_every=args.checkpoint_every, keep=2)
        train(settings, callbacks=[report], log=lambda _: None)
    return report.samples


def in_fresh_process(optimizer: str, args: argparse.Namespace) -> list[tuple[int, float]]:
    command = [sys.executable, __file__, "--child", optimizer, "--steps", str(args.steps),
               "--state-dtype", args.state_dtype, "--checkpoint-every", str(args.checkpoint_every),
               "--every", str(args.every)]
    result = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in result.stdout.splitlines() if line.startswith(SAMPLES)]
    if result.returncode != 0 or not lines:
        raise SystemExit(f"soak.py: the {optimizer} run failed:\n{result.stderr[-3000:]}")
    return [tuple(sample) for sample in json.loads(lines[-1][len(SAMPLES):])]


def summary(samples: list[tuple[int, float]], every: int) -> list[float]:
    """The first reading, the first after warm-up (``every`` steps), the range from ``2 × every``
    on, the end, the change since warm-up and the second half's slope per 1,000 steps."""
    warm = next(m for step, m in samples if step >= every)
    later = [m for step, m in samples if step >= 2 * every]
    last, end = samples[-1]
    half = [(step, m) for step, m in samples if step >= last / 2]
    slope = np.polyfit([s for s, _ in half], [m for _, m in half], 1)[0] * 1000
    return [samples[0][1], warm, min(later), max(later), end, end - warm, float(slope)]


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--optimizers", nargs="+", default=["adam", "keras-adam"], choices=OPTIMIZERS)
    parser.add_argument("--state-dtype", default="float32", choices=STATE_DTYPES)
    parser.add_argument("--checkpoint-every", type=int, default=1000)
    parser.add_argument("--every", type=int, default=1000, help="steps between two readings")
    parser.add_argument("--child", choices=OPTIMIZERS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps < 4 * args.every:
        parser.error(f"--steps {args.steps}: at least 4 × --every ({4 * args.every})")
    return args


def main() -> None:
    args = arguments()
    if args.child:
        print(SAMPLES + json.dumps(soak(args)), flush=True)
        return
    k, k2 = f"{args.every / 1000:g}k", f"{2 * args.every / 1000:g}k"
    runs = {optimizer: in_fresh_process(optimizer, args) for optimizer in args.optimizers}
    steps = max(samples[-1][0] for samples in runs.values())
    table = Table("soak", f"Soak: {steps:,} training steps of the tutorial's model (batch 32, "
                  f"{args.state_dtype} state, a checkpoint every {args.checkpoint_every:,} steps), "
                  "each optimizer in a fresh process; resident memory (MiB) after the first call "
                  f"of the train function and after the first call past every {args.every:,} "
                  "steps", [("optimizer", ""), ("first", ".1f"), (f"at {k}", ".1f"),
                            (f"lowest from {k2}", ".1f"), (f"highest from {k2}", ".1f"),
                            ("end", ".1f"), (f"end − at {k}", "+.1f"),
                            ("second-half slope per 1k steps", "+.2f")])
    for optimizer, samples in runs.items():
        print(f"{optimizer}: " + ", ".join(f"{step:,} {mib:.1f}" for step, mib in samples))
        table.add(optimizer, *summary(samples, args.every))
    table.save()


if __name__ == "__main__":
    main()
