"""How adamkit's C++ kernels are built: the flags the compiler is given, and the cache's key."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from adamkit.kernels import build

pytestmark = pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                                reason="needs a C++ compiler")
STREAM = Path(build.__file__).with_name("stream.cc")


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
