"""Writes the result tables of benchmarks/README.md, README.md and the documentation pages
(``PAGES``) from the result files the benchmarks and ``adamkit reproduce`` write.

    python benchmarks/render.py            # rewrite the tables in place
    python benchmarks/render.py --check    # exit 1 if a table differs from its result files

Each table sits between ``<!-- results: NAME -->`` and ``<!-- /results -->``, NAME being a result
file's name without ``.json``: a file of benchmarks/results/, or, where NAME holds a ``/``, a path
from the repository's root (``docs/reddi``: ``adamkit reproduce reddi --out docs``'s result, beside
the figure it draws). README.md's short table, between ``<!-- results summary -->`` and
``<!-- /results summary -->``, takes one figure from each of several result files (``SUMMARY``),
each with the command that made it and the machine it ran on.
Everything outside the markers is prose and stays as it is. A marker naming a missing result file
is an error: a table is never left behind without the file it came from.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from results import RESULTS, format_value

README = Path(__file__).resolve().with_name("README.md")
ROOT = README.parents[1]
MAIN_README = ROOT / "README.md"
# the pages whose tables are rendered (README.md's short table as well)
PAGES = (README, MAIN_README, ROOT / "docs" / "lr-find.md")
BLOCK = re.compile(r"(<!-- results: (?P<name>[\w./-]+) -->\n)(?P<body>.*?)(<!-- /results -->)",
                   re.DOTALL)
SUMMARY_BLOCK = re.compile(r"(<!-- results summary -->\n)(?P<body>.*?)(<!-- /results summary -->)",
                           re.DOTALL)


def machine_line(machine: dict) -> str:
    libraries = ", ".join(f"{name} {version}" for name, version in machine["libraries"].items())
    load = (f" (load average {machine['load'][1]:.1f} over the last 5 minutes)"
            if machine.get("load") else "")
    return (f"{machine['date']}; {machine['cpu']}, {machine['cores']} logical cores{load}; "
            f"Python {machine['python']}, {libraries}")


def table(result: dict) -> str:
    """One result as markdown: its title, the command and machine, the table."""
    headings = [c["heading"] for c in result["columns"]]
    formats = [c["format"] for c in result["columns"]]
    lines = [f"**{result['title']}.** `{result['command']}` — {machine_line(result['machine'])}.",
             "", "| " + " | ".join(headings) + " |", "|" + "---|" * len(headings)]
    for row in result["rows"]:
        lines.append("| " + " | ".join(format_value(v, f) for v, f in zip(row, formats)) + " |")
    return "\n".join(lines) + "\n"


def load(name: str, shown_in: str) -> dict:
    """The result file ``name``: benchmarks/results/NAME.json, or ROOT/NAME.json where NAME is a
    path."""
    path = (ROOT if "/" in name else RESULTS) / f"{name}.json"
    if not path.exists():
        raise SystemExit(f"render.py: {shown_in} shows results '{name}', but {path} does not "
                         "exist; run the benchmark that writes it.")
    return json.loads(path.read_text())


def render(text: str, shown_in: str = README.name) -> str:
    """A page (benchmarks/README.md by default) with every table between markers rendered from its
    result file."""
    def replace(match: re.Match) -> str:
        body = table(load(match["name"], shown_in))
        return match.group(1) + body + match.group(4)

    return BLOCK.sub(replace, text)


# README.md's short table: (what was measured, result file, the figure drawn from it).


def find_row(result: dict, label: str) -> list:
    """The row whose first cell is ``label`` (runs of spaces count as one)."""
    for row in result["rows"]:
        if " ".join(str(row[0]).split()) == " ".join(label.split()):
            return row
    raise SystemExit(f"render.py: {result['name']} has no row '{label}'; rerun it or update "
                     "render.py's SUMMARY")


def ratio(label: str):
    """A ``RATIO_COLUMNS`` row (and any columns after them): the median and the range of the
    rounds."""
    def figure(result: dict) -> str:
        _, median, low, high = find_row(result, label)[:4]
        return f"**{median:.2f}×** (rounds {low:.2f}–{high:.2f})"
    return figure


def timed_ratio(label: str):
    """lean_speed: the ratio with each side's median step time, which says whether the float32
    step had the memory's bandwidth to itself (lower time) or shared it."""
    def figure(result: dict) -> str:
        _, median, low, high, float32, lean = find_row(result, label)
        return (f"**{median:.2f}×** (rounds {low:.2f}–{high:.2f}; float32 state {float32:.1f} ms, "
                f"{label.split()[3]} {lean:.1f} ms)")
    return figure


def wall_time(result: dict) -> str:
    """seed_vs_adamkit: adamkit's median time over the tutorial script's, and the two medians."""
    median = next(row for row in result["rows"] if str(row[0]).startswith("median"))
    return f"**{median[3] / median[1]:.2f}×** ({median[3]:.1f} s against {median[1]:.1f} s)"


def accuracies(result: dict) -> str:
    runs = [row[4] for row in result["rows"] if row[4] is not None]
    return " / ".join(f"{a:.4f}" for a in runs)


def speed_ratio(size: str, ours: str, theirs: str):
    """bench_step: one path's speed over another's in the same run."""
    def figure(result: dict) -> str:
        speeds = {row[1]: row[2] for row in result["rows"] if row[0] == size}
        return f"**{speeds[ours] / speeds[theirs]:.1f}×** ({speeds[ours]:.0f} against " \
               f"{speeds[theirs]:.0f} Mparam/s)"
    return figure


def lazy_step(touched: int):
    def figure(result: dict) -> str:
        _, keras_ms, _, lazy_ms, torch_ms, *_ = find_row(result, str(touched))
        torch_text = "" if torch_ms is None else f", torch SparseAdam {torch_ms:.3g} ms"
        return f"Keras's Adam {keras_ms:.0f} ms, **adamkit lazy {lazy_ms:.3g} ms**{torch_text}"
    return figure


def recommender(result: dict) -> str:
    epochs = {row[0]: row[1] for row in result["rows"]}
    return (f"Keras's Adam {epochs['keras.optimizers.Adam']:.2f}, adamkit "
            f"{epochs['adamkit.Adam']:.2f}, **lazy {epochs['adamkit.Adam(lazy=True)']:.2f}**")


def soak(result: dict) -> str:
    slopes = {row[0]: row[-1] for row in result["rows"]}
    return f"adamkit **{slopes['adam']:+.2f}**, Keras's Adam {slopes['keras-adam']:+.2f} MiB"


def monitor(result: dict) -> str:
    """The epoch time the monitor adds (the median round's), and the time inside its hooks."""
    median = find_row(result, "median")
    return f"**{median[3] - 1:+.1%}** (in its hooks: {median[-1]:.1%})"


SUMMARY = [
    ("Wall time, a fresh process start to exit: `adamkit train` / the tutorial's script",
     "seed_vs_adamkit_seed", wall_time),
    ("`adamkit train`'s validation accuracy, seeds 0, 1, 2 (the tutorial: 0.9725)",
     "seed_vs_adamkit_seed", accuracies),
    ("Wall time: `adamkit train --preset fast` / the tutorial's script (time to its accuracy)",
     "seed_vs_adamkit_fast", wall_time),
    ("`--preset fast`'s validation accuracy, seeds 0, 1, 2", "seed_vs_adamkit_fast", accuracies),
    ("Adam step speed, 10M parameters, `tf.function`: adamkit / `torch.optim.Adam(fused=True)`",
     "fused_ratios", ratio("10M Adam tf.function adamkit / torch fused")),
    ("the same, 50M parameters", "fused_ratios", ratio("50M Adam tf.function adamkit / torch fused")),
    ("Adam step speed, 50M, `tf.function`: adamkit / the memory-bandwidth limit",
     "fused_ratios", ratio("50M Adam tf.function adamkit / limit")),
    ("Adam step speed, 10M, `tf.function` (what `model.fit` runs on a CPU): adamkit / Keras's Adam",
     "bench_step", speed_ratio("10.0M", "adamkit Adam, tf.function (fused kernel)",
                               "keras Adam, tf.function (model.fit on CPU)")),
    ("JAX backend, Adam step, 10M: adamkit / Keras's Adam", "backend_ratios_jax",
     ratio("10M Adam adamkit / keras")),
    ("JAX backend, Adam step, 10M: adamkit / optax", "backend_ratios_jax",
     ratio("10M Adam adamkit / optax")),
    ("PyTorch backend, Adam step, 10M: adamkit / Keras's Adam", "backend_ratios_torch",
     ratio("10M Adam adamkit / keras")),
    ("PyTorch backend, Adam step, 10M: adamkit / torch's fused Adam", "backend_ratios_torch",
     ratio("10M Adam adamkit / torch fused")),
    ("Sparse step on a 1,000,000 × 64 table, 100 rows touched", "bench_lazy", lazy_step(100)),
    ("the same, 1,000 rows touched", "bench_lazy", lazy_step(1_000)),
    ("the same, 100,000 rows touched", "bench_lazy", lazy_step(100_000)),
    ("Recommender (matrix factorisation, 3 epochs of `model.fit`): s / epoch", "recommender",
     recommender),
    ("Adam step with bfloat16 state / float32 state, 50M, `tf.function`", "lean_speed",
     timed_ratio("tensorflow tf.function 50M bfloat16 state / float32 state")),
    ("Adam step with int8 state / float32 state, 50M, `tf.function`", "lean_speed",
     timed_ratio("tensorflow tf.function 50M int8 state / float32 state")),
    ("Soak: resident memory's second-half slope per 1,000 steps", "soak", soak),
    ("Optimizer monitor (`every=100`): what it adds to an epoch of `adamkit train`, TensorFlow",
     "monitor_overhead_tensorflow", monitor),
    ("the same, JAX", "monitor_overhead_jax", monitor),
    ("the same, PyTorch", "monitor_overhead_torch", monitor),
]


def summary() -> str:
    """README.md's short table: one figure per row, with its command and machine; the libraries
    below it (one line per set of versions)."""
    lines = ["| measured | figure | command | machine |", "|---|---|---|---|"]
    libraries: dict[str, list[int]] = {}
    for number, (what, name, figure) in enumerate(SUMMARY, 1):
        result = load(name, MAIN_README.name)
        where = result["machine"]
        busy = f", load {where['load'][1]:.1f}" if where.get("load") else ""
        lines.append(f"| {what} | {figure(result)} | `{result['command']}` | {where['cpu']}, "
                     f"{where['cores']} cores{busy}, {where['date'][:10]} |")
        versions = ", ".join(f"{k} {v}" for k, v in where["libraries"].items())
        libraries.setdefault(f"Python {where['python']}, {versions}", []).append(number)
    lines.append("")
    if len(libraries) == 1:
        lines.append(f"Libraries: {next(iter(libraries))}.")
    else:
        lines += [f"Libraries, rows {', '.join(map(str, rows))}: {line}."
                  for line, rows in libraries.items()]
    return "\n".join(lines) + "\n"


def render_summary(text: str) -> str:
    """README.md with its short table rendered (unchanged where it has no markers)."""
    return SUMMARY_BLOCK.sub(lambda m: m.group(1) + summary() + m.group(3), text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="only compare; exit 1 where a README differs from the results")
    args = parser.parse_args()
    stale = []
    for path in PAGES:
        current = path.read_text()
        rendered = render_summary(render(current, str(path.relative_to(ROOT))))
        if rendered != current:
            stale.append(path)
            if not args.check:
                path.write_text(rendered)
    if args.check and stale:
        for path in stale:
            print(f"{path} is out of date with {RESULTS}: run python benchmarks/render.py",
                  file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
