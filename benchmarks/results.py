"""Benchmark results as files: each script records what it measured in a ``Table`` and saves it to
``benchmarks/results/<name>.json`` with the machine it ran on; ``render.py`` writes the tables of
``benchmarks/README.md`` (and the README's short one) from those files, so the figures shown are
always the latest run's.

Timings on a shared machine move between runs by up to ±30%, so every ratio here is measured by
alternating the two sides round after round and reported as the median of the per-round ratios
with their range (``alternate``, ``ratio_row``).
"""

from __future__ import annotations

import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().with_name("results")
ADAMKIT = str(Path(sys.executable).with_name("adamkit"))  # the command of this environment


def trained(command: list[str]) -> tuple[float, float]:
    """Run a training command (``adamkit train`` or the tutorial's script) as a fresh process:
    its wall time in seconds and the final validation accuracy it prints."""
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    elapsed = time.perf_counter() - start
    return elapsed, float(re.search(r"Final validation accuracy: ([0-9.]+)", result.stdout)[1])


def alternate(ours, theirs, rounds: int) -> list[float]:
    """Per-round ratio time(theirs) / time(ours), the two timed back to back each round
    (> 1: ours is faster)."""
    return [t / o for t, o in alternate_seconds(ours, theirs, rounds)]


def alternate_seconds(ours, theirs, rounds: int) -> list[tuple[float, float]]:
    """Per round, (theirs, ours): each one's median seconds a call, timed back to back."""
    from adamkit.bench.timing import median_seconds  # imports Keras: not needed to render

    return [(median_seconds(theirs, 5), median_seconds(ours, 5)) for _ in range(rounds)]


class Table:
    """One benchmark's results: ``columns`` as (heading, format) pairs and one row per
    measurement, printed as it is added and saved as JSON by ``save``."""

    def __init__(self, name: str, title: str, columns: list[tuple[str, str]]) -> None:
        self.name, self.title, self.columns = name, title, columns
        self.rows: list[list] = []
        script = Path(sys.argv[0]).name
        self.command = " ".join(["python", f"benchmarks/{script}", *sys.argv[1:]])

    def add(self, *values) -> None:
        if len(values) != len(self.columns):
            raise ValueError(f"{self.name}: a row has {len(self.columns)} values, got {len(values)}")
        self.rows.append(list(values))
        print("  ".join(format_value(v, f) for v, (_, f) in zip(values, self.columns)), flush=True)

    def ratio_row(self, label: str, ratios: list[float], *more) -> None:
        """A row ``label, median, lowest round, highest round`` (for ``RATIO_COLUMNS``), then
        ``more`` values where the table has more columns."""
        self.add(label, statistics.median(ratios), min(ratios), max(ratios), *more)

    def save(self) -> Path:
        """Writes the JSON (to a temporary name first, so a killed run leaves the last one)."""
        from adamkit.bench import record  # the file's form, shared with `adamkit bench`

        result = record.document(self.name, self.title, self.command, self.columns, self.rows)
        path = record.write(result, RESULTS / f"{self.name}.json")
        print(f"wrote {path}")
        return path


RATIO_COLUMNS = [("measurement", ""), ("median", ".2f"), ("lowest round", ".2f"),
                 ("highest round", ".2f")]


def format_value(value, spec: str) -> str:
    if value is None:
        return "—"
    return format(value, spec) if spec else str(value)
