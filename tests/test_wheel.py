"""adamkit as a user installs it: the sdist and wheel built from this checkout, the wheel installed
(not editable) into a fresh virtual environment, and its kernels compiled from the installed
sources on every backend.

Every other test imports the editable checkout, which has every file the kernels need whether or
not the packages carry it. Here nothing of the checkout can be imported: the new environment is
made without the system's or this environment's site-packages (where the editable install's
finder lives), its processes run from a temporary folder with no PYTHONPATH, and they check that
``adamkit`` comes from the new environment.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                       reason="needs a C++ compiler: without one every kernel falls back by design"),
]

# Applies adamkit's Adam with float32 and with int8 state to a float32 variable on the backend in
# KERAS_BACKEND, and checks that adamkit's compiled kernel took the step (an op or custom call
# named in the traced step, or a call of the library's C entry), equal to the ops path's step.
CHECK = r"""
import os, sys
from pathlib import Path

import keras
import numpy as np

import adamkit

backend = keras.backend.backend()
assert backend == os.environ["KERAS_BACKEND"], backend
origin = Path(adamkit.__file__).resolve()
assert origin.is_relative_to(Path(sys.prefix).resolve()), f"adamkit imported from {origin}"
assert not any(p.startswith(sys.argv[1]) for p in sys.path), sys.path  # the checkout

SIZE = 8192  # int8 state quantises tensors of 4096 values and more
rng = np.random.default_rng(0)
initial = rng.normal(size=SIZE).astype("float32")
grads = [rng.normal(size=SIZE).astype("float32") for _ in range(3)]


def steps(state_dtype, fused, step=None):
    variable = keras.Variable(initial)
    optimizer = adamkit.Adam(learning_rate=0.01, state_dtype=state_dtype, fused=fused)
    optimizer.build([variable])
    for g in grads:
        if step is None:
            optimizer.apply([g], [variable])
        else:
            step(optimizer, variable, g)
    return keras.ops.convert_to_numpy(variable)


def same_as_ops_path(state_dtype, theta):
    np.testing.assert_allclose(theta, steps(state_dtype, False), rtol=1e-5, atol=1e-6)


for state_dtype, eight_bit in (("float32", False), ("int8", True)):
    if backend == "tensorflow":
        import tensorflow as tf
        from adamkit.kernels import tensorflow as kernels

        assert kernels.custom_kernel() and kernels.xla_kernel()
        for jit in (False, True):  # model.fit's tf.function, and XLA (jit_compile=True)
            traced = {}

            def step(optimizer, variable, g, jit=jit):
                if "step" not in traced:
                    traced["step"] = tf.function(lambda g: optimizer.apply([g], [variable]),
                                                 jit_compile=jit)
                traced["step"](tf.constant(g))

            theta = steps(state_dtype, None, step)
            sample = tf.constant(grads[0])
            if jit:
                hlo = traced["step"].experimental_get_compiler_ir(sample)(stage="optimized_hlo")
                target = "adamkit_adam8bit" if eight_bit else "adamkit_adam"
                ran = f'custom_call_target="{target}"' in hlo
            else:
                graph = traced["step"].get_concrete_function(sample).graph
                op = "AdamkitApplyAdam8bit" if eight_bit else "AdamkitApplyAdam"
                ran = op in {o.type for o in graph.get_operations()}
            assert ran, f"{state_dtype} state, jit={jit}: adamkit's kernel did not run"
            same_as_ops_path(state_dtype, theta)
    elif backend == "jax":
        import jax
        from adamkit.kernels import jax as kernels

        assert kernels.custom_kernel()
        variable = keras.Variable(initial)
        optimizer = adamkit.Adam(learning_rate=0.01, state_dtype=state_dtype)
        optimizer.build([variable])
        lowered = jax.jit(lambda p, s, g: optimizer.stateless_apply(s, g, p)).lower(
            [variable.value], [v.value for v in optimizer.variables], [grads[0]])
        target = "adamkit_adam8bit" if eight_bit else "adamkit_adam"
        assert f'custom_call_target="{target}"' in lowered.compile().as_text(), state_dtype
        same_as_ops_path(state_dtype, steps(state_dtype, None))
    else:
        from adamkit.kernels import pytorch as kernels

        assert kernels.custom_kernel()
        entries = []
        run = kernels._run

        def counted(entry, *arguments):
            entries.append(entry)
            return run(entry, *arguments)

        kernels._run = counted
        theta = steps(state_dtype, None)
        kernels._run = run
        entry = "adamkit_adam8bit_host" if eight_bit else "adamkit_adam_host"
        assert entries == [entry] * len(grads), entries
        same_as_ops_path(state_dtype, theta)

built = sorted(p.name for p in (Path(os.environ["ADAMKIT_CACHE"]) / "kernels").glob("*.so"))
print("built", " ".join(built))
"""


def run(command, *, cwd, env=None, timeout=600):
    result = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, (f"{command} failed:\n{result.stdout[-3000:]}\n"
                                    f"{result.stderr[-3000:]}")
    return result


def clean_environment(**extra) -> dict[str, str]:
    """This process's environment less anything that points Python at the checkout or at this
    virtual environment."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "KERAS_BACKEND")}
    return {**env, "TF_CPP_MIN_LOG_LEVEL": "2", **extra}


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(the new environment's python, a folder outside the checkout to run in, the sdist's and the
    wheel's paths). The wheel is built from the sdist, as ``python -m build`` does by default, so
    that the sdist is checked to hold everything too."""
    work = tmp_path_factory.mktemp("wheel")
    started = time.perf_counter()
    run([sys.executable, "-m", "build", "--outdir", work / "dist", ROOT], cwd=work, timeout=900)
    sdist, wheel = sorted(work.joinpath("dist").glob("*.tar.gz")), sorted(
        work.joinpath("dist").glob("*.whl"))
    assert len(sdist) == len(wheel) == 1, list(work.joinpath("dist").iterdir())
    run([sys.executable, "-m", "twine", "check", "--strict", sdist[0], wheel[0]], cwd=work)
    built = time.perf_counter()
    venv = work / "venv"
    run([sys.executable, "-m", "venv", venv], cwd=work, env=clean_environment())
    python = venv / "bin" / "python"
    run([python, "-m", "pip", "install", "--no-input", f"{wheel[0]}[all]"], cwd=work,
        env=clean_environment(), timeout=1200)
    print(f"\nwheel built in {built - started:.0f} s, installed in "
          f"{time.perf_counter() - built:.0f} s")
    return python, work, sdist[0], wheel[0]


def test_the_packages_carry_the_kernels_sources_and_the_license(installed):
    import tarfile
    import zipfile

    _, _, sdist, wheel = installed
    kernels = {p.name for p in (ROOT / "src" / "adamkit" / "kernels").iterdir()
               if p.suffix in (".cc", ".h")}
    in_wheel = set(zipfile.ZipFile(wheel).namelist())
    assert {f"adamkit/kernels/{name}" for name in kernels} <= in_wheel
    assert "adamkit/bench/stream.cc" in in_wheel  # `adamkit bench step`'s bandwidth limit
    assert any(name.endswith("licenses/LICENSE") for name in in_wheel)
    with tarfile.open(sdist) as archive:
        in_sdist = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert {"LICENSE", "CHANGELOG.md", "README.md", "pyproject.toml"} <= in_sdist
    assert {f"src/adamkit/kernels/{name}" for name in kernels} <= in_sdist
    assert "src/adamkit/bench/stream.cc" in in_sdist


def test_the_installed_command_answers(installed):
    python, work, _, _ = installed
    from importlib.metadata import version

    adamkit = python.parent / "adamkit"
    assert run([adamkit, "--version"], cwd=work, env=clean_environment()).stdout.strip() == (
        f"adamkit {version('adamkit')}")
    assert "usage: adamkit" in run([adamkit, "--help"], cwd=work, env=clean_environment()).stdout


@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_the_installed_kernels_build_and_run(installed, backend):
    """Each backend in a process of its own, with an empty kernel cache: the kernels compile from
    the installed package's sources, and no fallback is taken."""
    python, work, _, _ = installed
    cache = work / f"cache-{backend}"
    result = run([python, "-c", CHECK, ROOT / "src"], cwd=work, timeout=900,
                 env=clean_environment(KERAS_BACKEND=backend, ADAMKIT_CACHE=str(cache)))
    assert "could not build" not in result.stderr, result.stderr[-3000:]
    assert "built " in result.stdout and ".so" in result.stdout, result.stdout


def test_the_installed_bandwidth_kernel_builds(installed):
    """``adamkit bench step``'s limit: ``bench/stream.cc`` compiles from the installed package (it
    includes the kernels' header by a path relative to itself) and runs."""
    python, work, _, _ = installed
    code = ("from adamkit.bench.stream import kernel_loop_step, stream_step\n"
            "stream_step(1000)(); kernel_loop_step(1000)(); print('ran')")
    result = run([python, "-c", code], cwd=work, timeout=600,
                 env=clean_environment(ADAMKIT_CACHE=str(work / "cache-bench")))
    assert result.stdout.split()[-1:] == ["ran"], result.stdout
