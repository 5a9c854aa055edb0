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

# For this CPU (-march=native), with what else the compiler knows of these (each dropped where it
# does not): no AVX512-FP16, as TensorFlow's bundled Eigen does not compile with it (GCC 12:
# "expected initializer before '<'" in PacketMathFP16.h) and no kernel computes in float16; and
# 512-bit vectors where there are any (the 8-bit state's encode is compute-bound: 1.12–1.15× with
# them on an AVX-512 Xeon; the memory-bound float loop is unchanged).
NATIVE = "-march=native"
NATIVE_EXTRAS = ["-mno-avx512fp16", "-mprefer-vector-width=512"]
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
    """``NATIVE`` and those of ``NATIVE_EXTRAS`` that ``cxx`` accepts (a compiler older than
    AVX512-FP16 rejects -mno-avx512fp16; one for ARM, -mprefer-vector-width)."""

    def accepted(flags: list[str]) -> bool:
        probe = [cxx, *flags, "-x", "c++", "-E", "-o", os.devnull, os.devnull]
        return subprocess.run(probe, capture_output=True).returncode == 0

    return (NATIVE, *(extra for extra in NATIVE_EXTRAS if accepted([NATIVE, extra])))


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
