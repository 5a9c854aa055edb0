"""The learning-rate range test on the tutorial's model, and whether its suggestion trains better
than Adam's default.

    python benchmarks/lr_find.py [--seeds 0 1 2]

For each seed: ``adamkit lr-find --seed S`` (adamkit.Adam, batch 32, 200 steps from 1e-7 to 10),
then ``adamkit train --seed S --learning-rate <its suggestion, as printed>`` and ``adamkit train
--seed S`` (the default, 1e-3): 3 epochs at batch 32 with a constant learning rate. Each command is
a fresh process, as a user runs it. Records the suggestion, how the test ended, the test's own time
and the whole command's, and the two validation accuracies; writes benchmarks/results/lr_find.json,
which ``benchmarks/render.py`` renders into README.md, docs/lr-find.md and benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from results import ADAMKIT, Table, trained


def range_test(seed: int, out: Path) -> tuple[dict, float]:
    """``adamkit lr-find``'s result (its lr_find.json) and the whole command's wall time."""
    start = time.perf_counter()
    subprocess.run([ADAMKIT, "lr-find", "--seed", str(seed), "--out", str(out)], check=True,
                   capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    return json.loads((out / "lr_find.json").read_text()), elapsed


def validation_accuracy(seed: int, out: Path, learning_rate: str | None) -> float:
    """``adamkit train``'s final validation accuracy (3 epochs of the tutorial's recipe)."""
    command = [ADAMKIT, "train", "--seed", str(seed), "--out", str(out)]
    if learning_rate is not None:
        command += ["--learning-rate", learning_rate]
    return trained(command)[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    table = Table("lr_find", "`adamkit lr-find` on the tutorial's model (adamkit.Adam, batch 32, "
                  "200 steps from 1e-7 to 10), then `adamkit train` (3 epochs, batch 32, constant "
                  "learning rate) at the suggestion and at the default 1e-3, the same seed for all "
                  "three commands",
                  [("seed", ""), ("suggested learning rate", ".3g"), ("the test ended", ""),
                   ("the test (s)", ".1f"), ("the whole `adamkit lr-find` (s)", ".0f"),
                   ("val. accuracy at the suggestion", ".4f"), ("val. accuracy at 1e-3", ".4f")])
    at_suggestion, at_default = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            found, elapsed = range_test(seed, Path(tmp, f"lr{seed}"))
            suggestion = f"{found['suggestion']:.3g}"  # as `adamkit lr-find` prints it
            at_suggestion.append(validation_accuracy(seed, Path(tmp, f"s{seed}"), suggestion))
            at_default.append(validation_accuracy(seed, Path(tmp, f"d{seed}"), None))
            table.add(str(seed), found["suggestion"], found["stopped"],
                      found["settings"]["wall_time_s"], elapsed, at_suggestion[-1], at_default[-1])
    table.add("mean", None, None, None, None, statistics.mean(at_suggestion),
              statistics.mean(at_default))
    table.save()


if __name__ == "__main__":
    main()
