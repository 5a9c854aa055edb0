"""Building adamkit's C++ kernels: the system's C++ compiler, once per source and options, cached."""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

# For this CPU (-march=native), but without AVX512-FP16: TensorFlow's bundled Eigen does not
# compile with it (GCC 12: "expected initializer before '<'" in PacketMathFP16.h), and no kernel
# computes in float16. -fno-trapping-math: no traps are used, and it lets floor() vectorise.
NATIVE = ["-march=native", "-mno-avx512fp16"]
OPTIONS = ["-shared", "-fPIC", "-O3", "-fno-math-errno", "-fno-trapping-math", "-w"]


def cache_dir() -> Path:
    """Where built libraries are kept: ``$ADAMKIT_CACHE/kernels`` (default ``~/.cache/adamkit``)."""
    return Path(os.environ.get("ADAMKIT_CACHE", Path.home() / ".cache" / "adamkit")) / "kernels"


def compiler() -> str:
    """``$CXX`` if set, else g++ or c++ from the PATH."""
    chosen = os.environ.get("CXX")
    found = shutil.which(chosen) if chosen else shutil.which("g++") or shutil.which("c++")
    if found is None:
        raise RuntimeError(f"no C++ compiler {chosen!r} found (set CXX to one, or install g++)"
                           if chosen else "no C++ compiler found (set CXX, or install g++)")
    return found


@functools.cache
def native_options(cxx: str) -> tuple[str, ...]:
    """``NATIVE`` as far as ``cxx`` knows it (a compiler older than AVX512-FP16 rejects
    -mno-avx512fp16, and has no AVX512-FP16 to turn off)."""
    probe = subprocess.run([cxx, *NATIVE, "-x", "c++", "-E", "-o", os.devnull, os.devnull],
                           capture_output=True)
    return tuple(NATIVE if probe.returncode == 0 else NATIVE[:1])


def cpu_identity() -> str:
    """What -march=native compiles for: a library built on another CPU may not run on this one
    (the cache may be shared, or copied between machines)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(line for line in lines if line.startswith(("flags", "Features")))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def compile_library(source: Path, options: list[str], salt: str = "") -> Path:
    """``source`` built as a shared library with the system's C++ compiler, once: cached under
    ``cache_dir()`` by source (with the headers beside it), options, this CPU and ``salt``; an
    atomic rename publishes it."""
    cxx = compiler()
    options = [*OPTIONS, *native_options(cxx), *options]
    text = b"".join(f.read_bytes() for f in [source, *sorted(source.parent.glob("*.h"))])
    key = hashlib.sha256(text + " ".join([*options, cxx, cpu_identity(), salt]).encode()).hexdigest()
    target = cache_dir() / f"{source.stem}-{key[:16]}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as folder:
        built = Path(folder) / target.name
        result = subprocess.run([cxx, str(source), "-o", str(built), *options],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{cxx} failed: {result.stderr.strip()[-800:]}")
        os.replace(built, target)  # atomic: a concurrent build never sees half a library
    return target
