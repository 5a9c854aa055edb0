"""Writes the result tables of benchmarks/README.md from benchmarks/results/*.json.

    python benchmarks/render.py            # rewrite the tables in place
    python benchmarks/render.py --check    # exit 1 if a table differs from its result file

Each table sits between ``<!-- results: NAME -->`` and ``<!-- /results -->`` in the README, NAME
being a result file's name without ``.json``; everything outside the markers is prose and stays as
it is. A marker naming a missing result file is an error: a table is never left behind without
the file it came from.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from results import RESULTS, format_value

README = Path(__file__).resolve().with_name("README.md")
BLOCK = re.compile(r"(<!-- results: (?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /results -->)",
                   re.DOTALL)


def machine_line(machine: dict) -> str:
    libraries = ", ".join(f"{name} {version}" for name, version in machine["libraries"].items())
    return (f"{machine['date']}; {machine['cpu']}, {machine['cores']} logical cores; "
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


def render(text: str) -> str:
    def replace(match: re.Match) -> str:
        path = RESULTS / f"{match['name']}.json"
        if not path.exists():
            raise SystemExit(f"render.py: {README.name} shows results '{match['name']}', but "
                             f"{path} does not exist; run the benchmark that writes it.")
        body = table(json.loads(path.read_text()))
        return match.group(1) + body + match.group(4)

    return BLOCK.sub(replace, text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="only compare; exit 1 where the README differs from the results")
    args = parser.parse_args()
    current = README.read_text()
    rendered = render(current)
    if args.check:
        if rendered != current:
            print(f"{README} is out of date with {RESULTS}: run python benchmarks/render.py",
                  file=sys.stderr)
            return 1
        return 0
    if rendered != current:
        README.write_text(rendered)
    return 0


if __name__ == "__main__":
    sys.exit(main())
