"""What ``adamkit train`` leaves in ``--out``: model.keras, history.json and .csv, plot.png (and
optimizer.png with ``--tensorboard``), and run.json, the run's summary. The plots need matplotlib,
an optional dependency (``adamkit[train]``): without it they are skipped, with a line saying so."""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
import platform
import sys
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

import keras
import numpy as np

import adamkit
from adamkit.train.recipe import seed_objective
from adamkit.train.settings import TrainSettings

# How to get the plots where matplotlib is missing.
PLOT_EXTRA = "pip install 'adamkit[train]'"


def default_out_dir(optimizer: str, claim: bool = True) -> Path:
    """A new folder under ``runs/`` named by the time and ``optimizer``, made here (``claim``): a
    run started in the same second as another takes the next free name (``-2``, ``-3``, ...)
    instead of writing over the other's results. Without ``claim``, the name alone: a
    multi-worker run's other workers write under the chief's folder."""
    base = Path("runs") / f"{datetime.now():%Y%m%d-%H%M%S}-{optimizer}"
    if not claim:
        return base
    for number in itertools.count(1):
        folder = base if number == 1 else base.with_name(f"{base.name}-{number}")
        try:
            folder.mkdir(parents=True)  # fails where another run has it: the claim is atomic
        except FileExistsError:
            continue
        return folder
    raise AssertionError("unreachable")


def save_portable(model: keras.Model, path: Path) -> None:
    """Saves ``model`` (the tutorial's, compiled by ``train`` with ``seed_objective``: weights,
    optimizer state, compile config) to ``path`` so that it loads and trains on every backend:
    compiled again, with the same optimizer object and its state, for one step per call (Keras's
    default; PyTorch's trainer refuses a model compiled for more)."""
    if model.steps_per_execution != 1:
        model.compile(optimizer=model.optimizer, **seed_objective())
    model.save(path)


def json_text(value: Any) -> str:
    """``value`` as standard JSON, which has no NaN or infinity: a diverged run's non-finite
    numbers are written as null (Python's json would write the bare NaN that other readers
    refuse)."""
    def finite(x):
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {k: finite(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [finite(v) for v in x]
        return x

    return json.dumps(finite(value), indent=2, allow_nan=False)


def write_history(history: dict[str, list[float]], out: Path) -> None:
    (out / "history.json").write_text(json_text(history))
    keys = list(history)
    with open(out / "history.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", *keys])
        for epoch, row in enumerate(zip(*(history[k] for k in keys)), start=1):
            writer.writerow([epoch, *row])


def can_plot() -> bool:
    """Whether matplotlib can be imported (Keras has imported it already where it is installed)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def plot_history(history: dict[str, list[float]], out: Path, title: str) -> None:
    """Loss and accuracy per epoch, training and validation, into ``out/plot.png`` (needs
    matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    epochs = range(1, len(history["loss"]) + 1)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        ax.plot(epochs, history[metric], "o-", label="train")
        ax.plot(epochs, history[f"val_{metric}"], "s-", label="validation")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out / "plot.png", dpi=100)
    plt.close(fig)


def write_plots(history: dict[str, list[float]], out: Path, settings: TrainSettings, monitor,
                log=print) -> bool:
    """plot.png, and optimizer.png from ``monitor`` (an ``OptimizerMonitor``, closed here) if
    any; without matplotlib, one line saying what was skipped and how to get it. Returns whether
    the plots were drawn."""
    if monitor is not None:
        monitor.close()
    names = "plot.png" + (" and optimizer.png" if monitor is not None else "")
    if not can_plot():
        log(f"adamkit: skipped {names}: matplotlib is not installed ({PLOT_EXTRA} draws them)")
        return False
    title = f"{settings.optimizer} on MNIST ({keras.backend.backend()})"
    plot_history(history, out, title)
    if monitor is not None:
        from adamkit.tools.monitor import plot_optimizer

        plot_optimizer(monitor.history, out / "optimizer.png", f"{title}: the optimizer")
    return True


def versions() -> dict[str, str]:
    found = {
        "adamkit": adamkit.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "backend": keras.backend.backend(),
    }
    backend_module = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}[found["backend"]]
    found[backend_module] = sys.modules[backend_module].__version__
    return found


def state_bytes_per_parameter(model: keras.Model) -> float:
    """Bytes of every optimizer variable over the number of trainable parameters."""

    def nbytes(variable) -> int:
        dtype = keras.backend.standardize_dtype(variable.dtype)
        return int(np.prod(variable.shape)) * (2 if dtype == "bfloat16" else np.dtype(dtype).itemsize)

    parameters = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    return sum(nbytes(v) for v in model.optimizer.variables) / parameters


def run_summary(settings: TrainSettings, out: Path, model: keras.Model, optimizer,
                history: dict[str, list[float]], wall_time: float, per_call: int) -> dict[str, Any]:
    """run.json's content: the settings as run, the optimizer's config and class, versions, time,
    the final metrics, the state's size, and the steps skipped (with ``skip_nonfinite``)."""
    summary = {
        "settings": asdict(settings) | {"out": str(out), "steps_per_execution": per_call},
        "optimizer_config": {k: _jsonable(v) for k, v in optimizer.get_config().items()},
        "versions": versions(),
        "wall_time_s": wall_time,
        "final": {k: v[-1] for k, v in history.items()},
        "finished": datetime.now().isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
    }
    summary["optimizer_state_bytes_per_parameter"] = state_bytes_per_parameter(model)
    summary["optimizer_class"] = type(model.optimizer).__name__  # LossScaleOptimizer if float16
    if getattr(optimizer, "skip_nonfinite", False):
        summary["skipped_steps"] = int(keras.ops.convert_to_numpy(optimizer.skipped_steps))
    return summary


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except TypeError:
        return repr(value)
