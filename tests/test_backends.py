"""The backend-independent tests again, under JAX and PyTorch, each in a fresh process (Keras fixes
its backend at import). Runs from the TensorFlow session only, so it never recurses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import BACKEND

HERE = Path(__file__).resolve().parent
PORTABLE = [
    "test_family.py", "test_adam.py", "test_lazy.py", "test_state.py", "test_kernels.py",
    "test_conformance.py", "test_keras_suite.py",
    "test_peers.py",
    "test_monitor.py",
    "test_lr_find.py",
    "test_schedule_free.py",
]


@pytest.mark.slow
@pytest.mark.skipif(BACKEND != "tensorflow", reason="spawned from the default backend's run")
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_portable_suite_passes_on(backend):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W",
         "ignore::DeprecationWarning", *(str(HERE / f) for f in PORTABLE)],
        env=env, capture_output=True, text=True, timeout=1200, cwd=HERE.parent,
    )
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0, f"{backend}: {summary}\n{result.stdout[-6000:]}"
    assert " passed" in summary and "failed" not in summary
    print(f"{backend}: {summary}")
