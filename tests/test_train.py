"""``adamkit train`` as an application of the library: matplotlib, which only its plots need, is
optional (``adamkit[train]``), and the optimizers import and step without it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

# A stand-in package that fails to import, first on the path: matplotlib as if not installed.
BLOCKER = "raise ImportError('matplotlib is blocked for this test')\n"


def without_matplotlib(tmp_path) -> dict[str, str]:
    """The environment of a process in which ``import matplotlib`` fails."""
    blocked = tmp_path / "blocked"
    (blocked / "matplotlib").mkdir(parents=True)
    (blocked / "matplotlib" / "__init__.py").write_text(BLOCKER)
    path = os.pathsep.join(p for p in (str(blocked), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "TF_CPP_MIN_LOG_LEVEL": "3"}


STEP = """
import sys
import keras, numpy as np
import adamkit
for name in adamkit.FAMILY:
    variable = keras.Variable(np.ones(4, "float32"))
    optimizer = adamkit.get(name)
    optimizer.apply([keras.ops.ones(4)], [variable])
print("matplotlib" in sys.modules and sys.modules["matplotlib"] is not None, "stepped")
"""


def test_the_optimizers_need_no_matplotlib(tmp_path):
    result = subprocess.run([sys.executable, "-c", STEP], capture_output=True, text=True,
                            timeout=300, env=without_matplotlib(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "stepped"]


def test_without_matplotlib_the_plots_are_skipped_in_one_line(tmp_path, monkeypatch):
    from adamkit.train import TrainSettings, write_plots

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib: ImportError
    lines: list[str] = []
    history = {"loss": [1.0], "accuracy": [0.5], "val_loss": [1.0], "val_accuracy": [0.5]}
    assert not write_plots(history, tmp_path, TrainSettings(), None, lines.append)
    assert lines == ["adamkit: skipped plot.png: matplotlib is not installed "
                     "(pip install 'adamkit[train]' draws them)"]
    assert not (tmp_path / "plot.png").exists()


@pytest.mark.slow
def test_train_without_matplotlib_writes_everything_but_the_plot(tmp_path):
    adamkit = os.path.join(os.path.dirname(sys.executable), "adamkit")
    out = tmp_path / "run"
    result = subprocess.run([adamkit, "train", "--epochs", "1", "--train-examples", "640",
                             "--out", str(out)], capture_output=True, text=True, timeout=600,
                            env=without_matplotlib(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "skipped plot.png: matplotlib is not installed" in result.stdout
    assert "pip install 'adamkit[train]'" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == ["history.csv", "history.json", "model.keras",
                                                    "run.json"]
    assert json.loads((out / "run.json").read_text())["final"]["val_accuracy"] > 0.5


IMPORTS = """
import sys
import adamkit, adamkit.optimizers, adamkit.callbacks
print(" ".join(sorted(m for m in sys.modules if m.startswith(("adamkit.train", "adamkit.bench")))))
"""


def test_the_library_imports_neither_the_job_nor_the_benchmarks():
    """``adamkit.train`` and ``adamkit.bench`` are applications of the library: importing adamkit
    (its optimizers, callbacks and tools) loads neither."""
    result = subprocess.run([sys.executable, "-c", IMPORTS], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def test_runs_started_in_the_same_second_get_folders_of_their_own(tmp_path, monkeypatch):
    """The default --out is named to the second: a second run in that second takes the next
    free name instead of writing over the first's results."""
    from datetime import datetime

    from adamkit.train import artifacts

    class Frozen(datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2026, 1, 2, 3, 4, 5)

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(artifacts, "datetime", Frozen)
    folders = [artifacts.default_out_dir("adam") for _ in range(3)]
    assert [f.name for f in folders] == ["20260102-030405-adam", "20260102-030405-adam-2",
                                         "20260102-030405-adam-3"]
    assert all(f.is_dir() for f in folders)
    # a multi-worker run's other workers take the chief's name, and make nothing of their own
    assert artifacts.default_out_dir("adam", claim=False) == folders[0]
    assert len(list((tmp_path / "runs").iterdir())) == 3


def test_a_diverged_runs_json_is_standard_json(tmp_path):
    """NaN and infinity are not JSON: history.json and run.json write them as null."""
    from adamkit.train import artifacts

    artifacts.write_history({"loss": [0.5, float("nan")], "val_loss": [float("inf"), 1.0]},
                            tmp_path)
    text = (tmp_path / "history.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"loss": [0.5, None], "val_loss": [None, 1.0]}
    assert json.loads(artifacts.json_text({"final": {"loss": float("nan")}, "n": (1, 2)})) == \
        {"final": {"loss": None}, "n": [1, 2]}

