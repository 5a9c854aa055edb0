"""Kingma & Ba (ICLR 2015), Section 6.1 and 6.2 on MNIST, at a size that runs in minutes on a CPU.

- §6.1 logistic regression (784 → 10 softmax), minibatch 128, learning rate α/√t;
- §6.2 a multilayer network, two hidden layers of 1000 ReLU units with dropout, minibatch 128.

adamkit's Adam is compared with Keras's SGD with Nesterov momentum (0.9), AdaGrad and RMSprop, each
at a small grid of learning rates; the training cost (the minibatch cross-entropy, smoothed) is
plotted against iterations, and each optimizer is reported at its best learning rate. The paper
trains for many epochs; this runs ``epochs`` passes (fewer in ``quick`` mode, on a subset), and
says so in its output.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

import adamkit
from adamkit.bench import record
from adamkit.data import load_mnist
from adamkit.schedules import InverseSqrtDecay

BATCH = 128


@dataclass(frozen=True)
class Experiment:
    name: str
    title: str
    decay: bool  # α/√t
    epochs: int
    quick_steps: int
    grids: dict  # optimizer -> learning rates α tried (before any α/√t decay)


EXPERIMENTS = (
    Experiment("logistic", "§6.1 logistic regression, α/√t", True, 5, 150, {
        "Adam (adamkit)": (1e-3, 3e-3, 1e-2, 3e-2),
        "SGD Nesterov": (0.03, 0.1, 0.3, 1.0),
        "AdaGrad": (0.03, 0.1, 0.3, 1.0),
        "RMSProp": (1e-3, 3e-3, 1e-2, 3e-2),
    }),
    Experiment("mlp", "§6.2 MLP 1000-1000 ReLU, dropout", False, 2, 150, {
        "Adam (adamkit)": (3e-4, 1e-3, 3e-3),
        "SGD Nesterov": (0.01, 0.03, 0.1),
        "AdaGrad": (0.01, 0.03, 0.1),
        "RMSProp": (3e-4, 1e-3, 3e-3),
    }),
)


def make_optimizer(name: str, alpha: float, decay: bool) -> keras.optimizers.Optimizer:
    lr = InverseSqrtDecay(alpha) if decay else alpha
    if name == "Adam (adamkit)":
        return adamkit.Adam(learning_rate=lr)
    if name == "SGD Nesterov":
        return keras.optimizers.SGD(learning_rate=lr, momentum=0.9, nesterov=True)
    if name == "AdaGrad":
        return keras.optimizers.Adagrad(learning_rate=lr)
    return keras.optimizers.RMSprop(learning_rate=lr)


def make_model(experiment: str) -> keras.Model:
    layers = [keras.Input((784,))]
    if experiment == "mlp":
        layers += [keras.layers.Dense(1000, activation="relu"), keras.layers.Dropout(0.5),
                   keras.layers.Dense(1000, activation="relu"), keras.layers.Dropout(0.5)]
    layers.append(keras.layers.Dense(10))
    return keras.Sequential(layers)


def training_costs(experiment: Experiment, optimizer_name: str, alpha: float, x, y, steps: int,
                   seed: int = 0) -> np.ndarray:
    """The minibatch training cost at each of ``steps`` iterations, same data order for all."""
    keras.utils.set_random_seed(seed)
    model = make_model(experiment.name)
    model.compile(optimizer=make_optimizer(optimizer_name, alpha, experiment.decay),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    order = np.random.default_rng(seed).permutation(len(x))
    costs = []
    per_epoch = len(x) // BATCH
    for i in range(steps):
        if i % per_epoch == 0 and i:
            order = np.random.default_rng(seed + i).permutation(len(x))
        batch = order[(i % per_epoch) * BATCH:(i % per_epoch + 1) * BATCH]
        costs.append(float(model.train_on_batch(x[batch], y[batch])))
    return np.array(costs)


def smooth(values: np.ndarray, window: int = 25) -> np.ndarray:
    kernel = np.ones(min(window, len(values))) / min(window, len(values))
    return np.convolve(values, kernel, mode="valid")


def kingma_ba(out: str | Path = "runs/reproduce", quick: bool = False, data: str | None = None,
              log=print) -> dict:
    """Runs both experiments; returns the final training cost by experiment, optimizer and
    learning rate (and each optimizer's best under ``"best"``), and writes ``kingma_ba.json`` and
    ``kingma_ba.png`` to ``out``.

    ``kingma_ba.json`` is a result file (``adamkit.bench.record``): each optimizer at its best
    learning rate as a table with the command and the machine, which ``benchmarks/render.py``
    renders into the README, and the full grid under ``"results"``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (x, y), _ = load_mnist(data, log=log)
    x = (x.reshape(len(x), 784) / 255.0).astype("float32")
    if quick:
        x, y = x[:12800], y[:12800]
    results: dict = {}
    curves: dict = {}
    for experiment in EXPERIMENTS:
        steps = experiment.quick_steps if quick else experiment.epochs * (len(x) // BATCH)
        log(f"{experiment.title}: {steps} iterations of minibatch {BATCH} on {len(x)} training "
            f"images ({'quick mode' if quick else f'{experiment.epochs} epoch(s)'}; the paper "
            "trains for many more)")
        for name, grid in experiment.grids.items():
            for alpha in grid:
                start = time.perf_counter()
                costs = training_costs(experiment, name, alpha, x, y, steps)
                final = float(np.mean(costs[-50:]))
                results.setdefault(experiment.name, {}).setdefault(name, {})[str(alpha)] = final
                curves[experiment.name, name, alpha] = costs
                log(f"  {name:15s} α={alpha:<7g} final training cost {final:.4f} "
                    f"({time.perf_counter() - start:.1f} s)")
        best = {name: min(v.values()) for name, v in results[experiment.name].items()}
        results[experiment.name]["best"] = best
        ranking = sorted(best, key=best.get)
        log("  best per optimizer: " + ", ".join(f"{n} {best[n]:.4f}" for n in ranking))
    record.write(result_file(results, quick), out / "kingma_ba.json")
    plot(curves, results, out / "kingma_ba.png")
    log(f"wrote {out / 'kingma_ba.json'} and {out / 'kingma_ba.png'}")
    return results


def result_file(results: dict, quick: bool) -> dict:
    """``kingma_ba.json``: per experiment, one row per optimizer at its best learning rate, best
    first; ``results`` as it is under ``"results"``."""
    rows = []
    for experiment in EXPERIMENTS:
        scores = results[experiment.name]
        for name in sorted(experiment.grids, key=scores["best"].get):
            grid = experiment.grids[name]
            alpha = min(grid, key=lambda a: scores[name][str(a)])
            rows.append([experiment.title, name, ", ".join(f"{a:g}" for a in grid), f"{alpha:g}",
                         scores[name][str(alpha)]])
    runs = ("quick mode: 150 iterations on 12,800 images" if quick else
            ", ".join(f"{e.title.split(' ', 1)[0]} {e.epochs} epoch{'s' * (e.epochs > 1)}"
                      for e in EXPERIMENTS))
    title = (f"Kingma & Ba §6.1 and §6.2 on MNIST, minibatch {BATCH} ({runs}): each optimizer at "
             "the best learning rate of its grid, by training cost (the mean of the last 50 "
             "iterations' minibatch cross-entropy)")
    columns = [("experiment", ""), ("optimizer", ""), ("learning rates tried", ""),
               ("best α", ""), ("training cost", ".3f")]
    command = "adamkit reproduce kingma-ba" + (" --quick" if quick else "")
    return {**record.document("kingma_ba", title, command, columns, rows), "results": results}


def plot(curves: dict, results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(EXPERIMENTS), figsize=(6 * len(EXPERIMENTS), 4))
    for ax, experiment in zip(axes, EXPERIMENTS):
        for name, grid in experiment.grids.items():
            scores = {a: results[experiment.name][name][str(a)] for a in grid}
            alpha = min(scores, key=scores.get)
            ax.plot(smooth(curves[experiment.name, name, alpha]), label=f"{name} (α={alpha:g})")
        ax.set_yscale("log")
        ax.set_title(experiment.title, fontsize=10)
        ax.set_xlabel("iterations")
        ax.set_ylabel("training cost (smoothed)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
