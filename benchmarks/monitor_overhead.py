"""The optimizer monitor's cost: ``adamkit train`` with and without ``--tensorboard``.

    python benchmarks/monitor_overhead.py [--rounds 5] [--epochs 1] [--backend tensorflow]

Each round runs ``adamkit train --epochs E`` twice in fresh processes, without the monitor and
with it (``--tensorboard DIR``, ``every=100``), alternating which goes first. The times compared
are each run's training wall time from its ``run.json`` (``model.fit``: training and validation,
not the start-up, data loading or plots). In the runs with the monitor, the seconds spent inside
the monitor's own hooks are also summed (the hook methods are wrapped with a timer in the child
process), which isolates its cost from the noise of a shared machine; and the CPU time of the
thread that ran them over the same time (less than the wall time where the hooks waited for a
core that the backend's own threads, training on, held). Prints a row per round and the median;
writes ``benchmarks/results/monitor_overhead_<backend>_epochs<E>.json``.
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
from pathlib import Path

from results import Table

HOOK_SECONDS = [0.0, 0.0]  # wall time, and the CPU time of the thread running the hooks


def _timed(method):
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        start, cpu = time.perf_counter(), time.thread_time()
        try:
            return method(*args, **kwargs)
        finally:
            HOOK_SECONDS[0] += time.perf_counter() - start
            HOOK_SECONDS[1] += time.thread_time() - cpu
    return wrapper


def child(args: argparse.Namespace) -> None:
    """One ``adamkit train`` in this process; prints its timings as JSON on the last line."""
    from adamkit.cli import main
    from adamkit.tools import monitor

    # only the hooks the class itself defines: wrapping an inherited no-op would change how Keras
    # dispatches the callbacks (a defined on_train_batch_end turns off its asynchronous dispatch)
    for name, value in list(vars(monitor.OptimizerMonitor).items()):
        if name.startswith("on_") and callable(value):
            setattr(monitor.OptimizerMonitor, name, _timed(value))
    out = Path(args.out)
    argv = ["train", "--epochs", str(args.epochs), "--out", str(out / "run")]
    if args.child == "on":
        argv += ["--tensorboard", str(out / "tb")]
    if main(argv) != 0:
        raise SystemExit("adamkit train failed")
    summary = json.loads((out / "run" / "run.json").read_text())
    print(json.dumps({"fit_s": summary["wall_time_s"], "hooks_s": HOOK_SECONDS[0],
                      "hooks_cpu_s": HOOK_SECONDS[1]}))


def run_child(side: str, epochs: int, backend: str) -> dict:
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, __file__, "--child", side, "--epochs", str(epochs),
                   "--out", out]
        env = {**os.environ, "KERAS_BACKEND": backend}
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        if done.returncode != 0:
            raise SystemExit(f"{side} run failed:\n{done.stderr[-3000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--backend", default="tensorflow")
    parser.add_argument("--child", choices=("on", "off"), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    table = Table(f"monitor_overhead_{args.backend}_epochs{args.epochs}",
                  f"The optimizer monitor (every=100) on `adamkit train --epochs {args.epochs}`, "
                  f"{args.backend}: training time with it / without it, per round",
                  [("round", ""), ("without (s)", ".2f"), ("with (s)", ".2f"),
                   ("with / without", ".3f"), ("in its hooks (s)", ".3f"),
                   ("hooks' CPU / without", ".3f"), ("hooks / without", ".3f")])
    ratios, shares, cpu_shares = [], [], []
    for number in range(1, args.rounds + 1):
        order = ("off", "on") if number % 2 else ("on", "off")
        runs = {side: run_child(side, args.epochs, args.backend) for side in order}
        off, on = runs["off"]["fit_s"], runs["on"]["fit_s"]
        ratios.append(on / off)
        shares.append(runs["on"]["hooks_s"] / off)
        cpu_shares.append(runs["on"]["hooks_cpu_s"] / off)
        table.add(str(number), off, on, on / off, runs["on"]["hooks_s"], cpu_shares[-1],
                  shares[-1])
    table.add("median", None, None, statistics.median(ratios), None,
              statistics.median(cpu_shares), statistics.median(shares))
    table.save()


if __name__ == "__main__":
    main()
