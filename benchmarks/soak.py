"""Soak: 20,000 training steps of the seed's model, checkpointing as it goes, printing resident
memory along the way. Memory should level off after warm-up (no growth beyond noise).

    python benchmarks/soak.py [--steps 20000] [--state-dtype int8] [--checkpoint-every 1000]
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time

import keras

from adamkit.train import TrainSettings, train


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
            print(f"step {self.step:>6}: resident {self.samples[-1][1]:8.1f} MiB", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--state-dtype", default="float32", choices=["float32", "bfloat16", "int8"])
    parser.add_argument("--checkpoint-every", type=int, default=1000)
    args = parser.parse_args()
    report = MemoryReport(every=2000)
    epochs = math.ceil(args.steps / 1875)  # batch 32: 1,875 steps per epoch
    with tempfile.TemporaryDirectory() as folder:
        settings = TrainSettings(epochs=epochs, hyperparameters={"state_dtype": args.state_dtype},
                                 out=f"{folder}/out", checkpoint_dir=f"{folder}/ckpt",
                                 checkpoint_every=args.checkpoint_every, keep=2)
        start = time.perf_counter()
        train(settings, callbacks=[report], log=lambda _: None)
    (_, first), (_, warm) = report.samples[0], report.samples[min(1, len(report.samples) - 1)]
    last_step, last = report.samples[-1]
    print(f"{last_step} steps in {time.perf_counter() - start:.0f} s; resident memory: "
          f"{first:.1f} MiB at step 1, {warm:.1f} MiB at step {report.samples[1][0]}, "
          f"{last:.1f} MiB at the end ({last - warm:+.1f} MiB after warm-up)")


if __name__ == "__main__":
    main()
