"""Building adamkit's C++ kernels: the system's C++ compiler, once per source and options, cached."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path


def cache_dir() -> Path:
    """Where built libraries are kept: ``$ADAMKIT_CACHE/kernels`` (default ``~/.cache/adamkit``)."""
    return Path(os.environ.get("ADAMKIT_CACHE", Path.home() / ".cache" / "adamkit")) / "kernels"


def compile_library(source: Path, options: list[str], salt: str = "") -> Path:
    """``source`` built as a shared library with the system's C++ compiler, once: cached under
    ``cache_dir()`` by source (with the headers beside it), options and ``salt``; an atomic rename
    publishes it."""
    options = ["-shared", "-fPIC", "-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math",
               "-w", *options]
    text = b"".join(f.read_bytes() for f in [source, *sorted(source.parent.glob("*.h"))])
    key = hashlib.sha256(text + " ".join([*options, salt]).encode()).hexdigest()
    target = cache_dir() / f"{source.stem}-{key[:16]}.so"
    if target.exists():
        return target
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        raise RuntimeError("no C++ compiler found (set CXX, or install g++)")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as folder:
        built = Path(folder) / target.name
        result = subprocess.run([compiler, str(source), "-o", str(built), *options],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{compiler} failed: {result.stderr.strip()[-800:]}")
        os.replace(built, target)  # atomic: a concurrent build never sees half a library
    return target
