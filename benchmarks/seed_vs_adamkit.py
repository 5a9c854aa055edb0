"""The tutorial's script (keras.optimizers.Adam) against `adamkit train`, run alternately in one go.

Each is a fresh process, timed from start to exit (imports, data, 3 epochs, evaluation), as a user
would experience it. Records each run, the medians and the ratio adamkit / tutorial (want <= 1.0).
With `--preset fast` it times `adamkit train --preset fast` instead: the time to the tutorial's
accuracy.
Run: python benchmarks/seed_vs_adamkit.py [--repeats 3] [--preset fast]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from results import ADAMKIT, Table, trained

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--preset", choices=["seed", "fast"], default="seed")
    args = parser.parse_args()
    adamkit_cmd = [ADAMKIT, "train", "--preset", args.preset]
    commands = {
        "seed script (keras.optimizers.Adam)": [sys.executable, str(HERE / "seed_script.py")],
        f"adamkit train --preset {args.preset}": adamkit_cmd,
    }
    table = Table(f"seed_vs_adamkit_{args.preset}", "The tutorial's script against `adamkit "
                  f"train --preset {args.preset}`, each a fresh process timed from start to exit",
                  [("run", ""), ("tutorial's script (s)", ".1f"), ("val. accuracy", ".4f"),
                   (f"adamkit train --preset {args.preset} (s)", ".1f"), ("val. accuracy ", ".4f")])
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            row = []
            for command in commands.values():
                if command is adamkit_cmd:
                    command = [*command, "--out", f"{tmp}/run{repeat}", "--seed", str(repeat)]
                row.extend(trained(command))
            runs.append(row)
            table.add(str(repeat + 1), *row)
    medians = [statistics.median(r[i] for r in runs) for i in (0, 2)]
    table.add(f"median (ratio {medians[1] / medians[0]:.2f})", medians[0], None, medians[1], None)
    table.save()

if __name__ == "__main__":
    main()
