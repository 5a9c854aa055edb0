"""The optimizer monitor's cost: epochs of ``adamkit train`` with and without ``--tensorboard``.

    python benchmarks/monitor_overhead.py [--backends tensorflow jax torch] [--rounds 8]

One process per backend builds ``adamkit train``'s model, data and optimizer (its own functions,
its defaults: the tutorial's MLP, batch 32, MNIST's 60,000 images) and trains it epoch after
epoch, as ``adamkit train`` does, each epoch one ``model.fit`` with validation: without the
monitor and with it (``every=100``, one ``OptimizerMonitor`` serving every epoch, as in a run),
alternating which goes first in each round. Two warm-up epochs (one of each) come first, so that
no round pays a compilation or the monitor's first tracing. Per epoch it records:

- the wall time of the epoch (training and validation);
- the process's CPU time over it (every thread's: the backend's, and any the monitor uses);
- with the monitor, the wall time inside the monitor's own hooks (its hook methods wrapped with a
  timer): the part of its cost that is surely on the training thread (its own thread's reading,
  statistics and writing show in the CPU time and the epoch's wall time instead).

Taking turns in one process cancels what separate processes differ by (start-up, memory layout,
the machine's load drifting over a minute); the figure is the median of the rounds' ratios.
Writes ``benchmarks/results/monitor_overhead_<backend>.json``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from results import Table

HOOK_SECONDS = [0.0]


def _timed(method):
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            HOOK_SECONDS[0] += time.perf_counter() - start
    return wrapper


def child(rounds: int) -> None:
    """Runs the epochs in this process; prints one JSON line per epoch."""
    from adamkit.tools import monitor
    from adamkit.train import TrainSettings, fit, load_data, start_position
    from adamkit.train.job import compiled_model, seed_everything

    # only the hooks the class itself defines: wrapping an inherited no-op would change how Keras
    # dispatches the callbacks (a defined on_train_batch_end turns off its asynchronous dispatch)
    for name, value in list(vars(monitor.OptimizerMonitor).items()):
        if name.startswith("on_") and callable(value):
            setattr(monitor.OptimizerMonitor, name, _timed(value))
    settings = TrainSettings(epochs=1)
    seed_everything(settings)
    train_data, validation_data = load_data(settings, log=lambda *_: None)
    model, _, _ = compiled_model(settings, len(train_data[0]), log=lambda *_: None)
    position = start_position(model, settings, log=lambda *_: None)
    with tempfile.TemporaryDirectory() as log_dir:
        watcher = monitor.OptimizerMonitor(log_dir, every=100)

        def epoch(side: str) -> dict:
            HOOK_SECONDS[0] = 0.0
            start, cpu = time.perf_counter(), time.process_time()
            fit(model, settings, train_data, validation_data, position, log=lambda *_: None,
                extra_callbacks=[watcher] if side == "on" else [], verbose=0)
            return {"side": side, "wall_s": time.perf_counter() - start,
                    "cpu_s": time.process_time() - cpu, "hooks_s": HOOK_SECONDS[0]}

        epoch("off"), epoch("on")  # warm-up: compilation, the monitor's first trace
        for number in range(rounds):
            for side in (("off", "on") if number % 2 == 0 else ("on", "off")):
                print(json.dumps(epoch(side)), flush=True)
        watcher.close()


def measure(backend: str, rounds: int) -> list[dict]:
    command = [sys.executable, __file__, "--child", "--rounds", str(rounds)]
    env = {**os.environ, "KERAS_BACKEND": backend}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{backend} failed:\n{done.stderr[-3000:]}")
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def report(backend: str, epochs: list[dict]) -> None:
    table = Table(f"monitor_overhead_{backend}",
                  f"The optimizer monitor (every=100) on `adamkit train`'s epochs, {backend}: "
                  "epoch time with it / without it, taking turns in one process",
                  [("round", ""), ("without (s)", ".3f"), ("with (s)", ".3f"),
                   ("with / without", ".3f"), ("CPU with / without", ".3f"),
                   ("in its hooks (s)", ".3f"), ("hooks / without", ".3f")])
    offs = [e for e in epochs if e["side"] == "off"]
    ons = [e for e in epochs if e["side"] == "on"]
    ratios, cpu_ratios, shares = [], [], []
    for number, (off, on) in enumerate(zip(offs, ons), 1):
        ratios.append(on["wall_s"] / off["wall_s"])
        cpu_ratios.append(on["cpu_s"] / off["cpu_s"])
        shares.append(on["hooks_s"] / off["wall_s"])
        table.add(str(number), off["wall_s"], on["wall_s"], ratios[-1], cpu_ratios[-1],
                  on["hooks_s"], shares[-1])
    table.add("median", statistics.median(e["wall_s"] for e in offs),
              statistics.median(e["wall_s"] for e in ons), statistics.median(ratios),
              statistics.median(cpu_ratios), None, statistics.median(shares))
    table.save()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--backends", nargs="+", default=["tensorflow", "jax", "torch"])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.rounds)
    for backend in args.backends:
        print(f"== {backend}", flush=True)
        report(backend, measure(backend, args.rounds))


if __name__ == "__main__":
    main()
