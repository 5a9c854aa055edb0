"""A benchmark's result as a file: a table (columns with their formats, one row per measurement)
with the command that measured it and the machine it ran on. ``adamkit bench`` writes its results
in this form, and so do the scripts in ``benchmarks/`` (through ``benchmarks/results.py``), whose
``render.py`` turns such files into the README's tables. Imports neither Keras nor a backend.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import json
import os
import platform
from pathlib import Path

LIBRARIES = ("tensorflow-cpu", "tensorflow", "keras", "jax", "torch", "optax")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    """What a figure depends on besides the code: the CPU, its cores and their load, the libraries,
    the date."""
    versions = {}
    for name in LIBRARIES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    if "tensorflow-cpu" in versions:  # both names can be installed; the CPU build is the one used
        versions.pop("tensorflow", None)
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        # on a shared machine other jobs' load moves timings: the 1, 5 and 15-minute load averages
        # as the result was written
        "load": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "libraries": versions,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def document(name: str, title: str, command: str, columns: list[tuple[str, str]],
             rows: list[list]) -> dict:
    """The result file's content. ``columns``: (heading, format spec) pairs; a row holds one value
    per column (``None`` where there is none)."""
    for row in rows:
        if len(row) != len(columns):
            raise ValueError(f"{name}: a row has {len(row)} values for {len(columns)} columns")
    return {"name": name, "title": title, "command": command, "machine": machine(),
            "columns": [{"heading": h, "format": f} for h, f in columns], "rows": rows}


def write(result: dict, path) -> Path:
    """Writes ``result`` as JSON to ``path`` (a temporary name first, so that a killed run leaves
    the previous file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    temporary.replace(path)
    return path
