"""How adamkit's C++ kernels are built: the flags the compiler is given, and the cache's key."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from adamkit.kernels import build

pytestmark = pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                                reason="needs a C++ compiler")
STREAM = Path(build.__file__).parents[1] / "bench" / "stream.cc"  # a small source to build


def test_native_options_keep_only_what_the_compiler_accepts(monkeypatch):
    monkeypatch.setattr(build, "NATIVE_EXTRAS", ["-mno-such-option-adamkit", *build.NATIVE_EXTRAS])
    build.native_options.cache_clear()
    try:
        options = build.native_options(build.compiler())
    finally:
        build.native_options.cache_clear()
    assert options[0] == "-march=native"
    assert "-mno-such-option-adamkit" not in options
    if "avx512fp16" in Path("/proc/cpuinfo").read_text():  # the CPU where Eigen fails to compile
        assert "-mno-avx512fp16" in options


def test_libraries_are_cached_per_cpu(monkeypatch, tmp_path):
    monkeypatch.setenv("ADAMKIT_CACHE", str(tmp_path))
    here = build.compile_library(STREAM, ["-fopenmp"])
    assert here.parent == tmp_path / "kernels" and here.exists()
    built_at = here.stat().st_mtime_ns
    assert build.compile_library(STREAM, ["-fopenmp"]) == here  # cached: not built again
    assert here.stat().st_mtime_ns == built_at
    monkeypatch.setattr(build, "cpu_identity", lambda: "flags : another cpu")
    elsewhere = build.compile_library(STREAM, ["-fopenmp"])
    assert elsewhere != here and elsewhere.exists()  # -march=native code is this CPU's only


def test_a_missing_compiler_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    with pytest.raises(RuntimeError, match="no-such-compiler"):
        build.compile_library(STREAM, [])


def test_the_benchmarks_loop_alone_is_adams_step(rng):
    """``adamkit.bench.stream.kernel_loop_step`` times the kernels' own loop outside any
    framework (``adamkit_adam_loop`` in stream.cc): three steps of it equal the float64 oracle's
    Adam."""
    import ctypes
    import math

    import numpy as np

    import reference
    from adamkit.bench.stream import stream_library

    loop = stream_library().adamkit_adam_loop
    n, lr, b1, b2, eps = 100_003, 1e-2, 0.9, 0.999, 1e-8
    theta0 = rng.normal(size=n)
    grads = [rng.normal(size=n) for _ in range(3)]
    theta, m, v = theta0.astype(np.float32), np.zeros(n, np.float32), np.zeros(n, np.float32)
    pointer = ctypes.POINTER(ctypes.c_float)
    for t, g in enumerate(grads, start=1):
        g32 = g.astype(np.float32)
        scalars = np.array([1.0, 1 - b1, 1 - b2, lr / (1 - b1**t), 1 / math.sqrt(1 - b2**t), eps,
                            0.0], np.float32)
        loop(*(a.ctypes.data_as(pointer) for a in (theta, m, v, g32)), ctypes.c_int64(n),
             scalars.ctypes.data_as(pointer), ctypes.c_int32(t))
    expected, state = reference.adam(theta0, [g.astype(np.float32) for g in grads], lr=lr)
    np.testing.assert_allclose(theta, expected, rtol=2e-6, atol=1e-6)
    np.testing.assert_allclose(m, state["momentum"], rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(v, state["velocity"], rtol=2e-6, atol=1e-9)
