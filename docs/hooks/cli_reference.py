"""MkDocs hook: the CLI reference page is the ``adamkit`` parser's own help, generated at build
time, so the page cannot drift from the command.

Where a page holds the line ``<!-- cli-reference -->``, it is replaced with one section per
command (``adamkit``, ``adamkit train``, …), each the ``format_help()`` of that (sub)parser, as
``adamkit.cli.build_parser()`` builds it.
"""

from __future__ import annotations

import argparse
import os

MARKER = "<!-- cli-reference -->"
WIDTH = "100"  # argparse wraps help to $COLUMNS; fixed so the page does not depend on the terminal


def _commands(parser: argparse.ArgumentParser, prog: str):
    """(command line, parser) for the parser and every subcommand (``Parser.commands``), depth
    first."""
    yield prog, parser
    for name, sub in getattr(parser, "commands", {}).items():
        yield from _commands(sub, f"{prog} {name}")


def render() -> str:
    from adamkit.cli import build_parser

    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH
    try:
        parser = build_parser()
        sections = []
        for prog, sub in _commands(parser, parser.prog):
            sections.append(f"## `{prog}`\n\n```text\n{sub.format_help().rstrip()}\n```\n")
    finally:
        if previous is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = previous
    return "\n".join(sections)


def on_page_markdown(markdown: str, page, config, files) -> str:
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, render())
