"""The seed's script (keras.optimizers.Adam) against `adamkit train`, run alternately in one go.

Each is a fresh process, timed from start to exit (imports, data, 3 epochs, evaluation), as a user
would experience it. Prints each run, the medians and the ratio adamkit / seed (want <= 1.0).
With `--preset fast` it times `adamkit train --preset fast` instead: the time to the seed's accuracy.
Run: python benchmarks/seed_vs_adamkit.py [--repeats 3] [--preset fast]
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def timed(command: list[str]) -> tuple[float, float]:
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    elapsed = time.perf_counter() - start
    accuracy = re.search(r"Final validation accuracy: ([0-9.]+)", result.stdout)
    return elapsed, float(accuracy.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--preset", choices=["seed", "fast"], default="seed")
    args = parser.parse_args()
    adamkit_cmd = [str(Path(sys.executable).with_name("adamkit")), "train", "--preset", args.preset]
    commands = {
        "seed script (keras.optimizers.Adam)": [sys.executable, str(HERE / "seed_script.py")],
        f"adamkit train --preset {args.preset}": adamkit_cmd,
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for name, command in commands.items():
                if command is adamkit_cmd:
                    command = [*command, "--out", f"{tmp}/run{repeat}", "--seed", str(repeat)]
                elapsed, accuracy = timed(command)
                times[name].append(elapsed)
                print(f"run {repeat + 1}: {name:38s} {elapsed:6.1f} s   val_accuracy {accuracy:.4f}")
    medians = {name: statistics.median(t) for name, t in times.items()}
    seed, ours = medians.values()
    for name, median in medians.items():
        print(f"median: {name:38s} {median:6.1f} s")
    goal = "0.5, the time-to-accuracy goal" if args.preset == "fast" else "1.0"
    print(f"ratio adamkit / seed: {ours / seed:.3f} (want <= {goal})")


if __name__ == "__main__":
    main()
