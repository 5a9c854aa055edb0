"""Reddi, Kale & Kumar, "On the Convergence of Adam and Beyond" (ICLR 2018): Adam fails on a simple
online convex problem, AMSGrad does not.

On the feasible set [−1, 1], with x₀ = 1, each setting feeds linear losses fₜ(x) = cₜ·x whose sum
is minimised at x* = −1, and projects the iterate back onto [−1, 1] after every step:
- theorem-1: cₜ = 3 if t mod 3 = 1 else −1, β1 = 0, β2 = 0.1, αₜ = 0.5/√t (the paper's Theorem 1);
- online: cₜ = 1010 if t mod 101 = 1 else −10, β1 = 0.9, β2 = 0.99 (the paper's Section 5);
- stochastic: cₜ = 1010 with probability 0.01 else −10, β1 = 0.9, β2 = 0.99.
Adam's large, rare gradient is forgotten by v within a few steps, so the frequent small ones win and
x drifts to +1, the worst point; AMSGrad's v̂max remembers it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

import adamkit
from adamkit.bench import record
from adamkit.schedules import InverseSqrtDecay


@dataclass(frozen=True)
class Setting:
    title: str
    big: float  # the rare gradient
    small: float  # the frequent one
    period: int  # online: every period-th step is big; stochastic: with probability 1/period
    stochastic: bool
    beta_1: float
    beta_2: float
    alpha: float
    steps: int


SETTINGS = {
    "theorem-1": Setting("Theorem 1: 3x / −x, β1=0, β2=0.1, αₜ=0.5/√t", 3.0, -1.0, 3, False, 0.0,
                         0.1, 0.5, 1000),
    # α = 1.0 was the best of {0.01, 0.1, 0.5, 1, 2} for AMSGrad at 10⁵ steps; Adam → +1 for all.
    "online": Setting("online: 1010x / −10x, β1=0.9, β2=0.99, αₜ=1/√t", 1010.0, -10.0, 101, False, 0.9, 0.99,
                      1.0, 100_000),
    "stochastic": Setting("stochastic: 1010x w.p. 0.01, else −10x, as online", 1010.0, -10.0, 101, True, 0.9,
                          0.99, 1.0, 100_000),
}


def gradients(setting: Setting, steps: int, seed: int = 0) -> np.ndarray:
    """cₜ for t = 1..steps."""
    t = np.arange(1, steps + 1)
    if setting.stochastic:
        rare = np.random.default_rng(seed).random(steps) < 1.0 / setting.period
    else:
        rare = t % setting.period == 1
    return np.where(rare, setting.big, setting.small).astype(np.float32)


def trajectory(setting: Setting, amsgrad: bool, grads: np.ndarray) -> np.ndarray:
    """x₁..x_T under adamkit.Adam, projected onto [−1, 1] after every step."""
    x = keras.Variable(np.float32(1.0), name="x")
    optimizer = adamkit.Adam(learning_rate=InverseSqrtDecay(setting.alpha), beta_1=setting.beta_1,
                             beta_2=setting.beta_2, amsgrad=amsgrad)
    optimizer.build([x])

    def step(g):
        optimizer.apply([g], [x])
        x.assign(keras.ops.clip(x, -1.0, 1.0))
        return x.value

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        step = tf.function(step)
    return np.array([float(step(keras.ops.convert_to_tensor(g))) for g in grads], np.float64)


def average_regret(xs: np.ndarray, grads: np.ndarray) -> float:
    """R_T/T = (1/T)·Σ fₜ(xₜ) − min over x in [−1, 1] of (1/T)·Σ fₜ(x), the best fixed point in
    hindsight, −sign(Σcₜ) (−1 in expectation; a finite stochastic run may differ). xₜ is the point
    played before cₜ is seen."""
    played = np.concatenate([[1.0], xs[:-1]])
    return float(np.mean(grads * played) + abs(np.mean(grads)))


def reddi(out: str | Path = "runs/reproduce", steps: int | None = None, log=print) -> dict:
    """Runs every setting with Adam and AMSGrad; prints and returns the final iterates and average
    regret (by setting, then optimizer), and writes ``reddi.json`` and ``reddi.png`` to ``out``.

    ``reddi.json`` is a result file (``adamkit.bench.record``): the figures as a table with the
    command and the machine, which ``benchmarks/render.py`` renders into the README, and the same
    figures by setting under ``"results"``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results, curves = {}, {}
    for name, setting in SETTINGS.items():
        grads = gradients(setting, steps or setting.steps)
        for label, amsgrad in (("Adam", False), ("AMSGrad", True)):
            xs = trajectory(setting, amsgrad, grads)
            curves[name, label] = xs
            results.setdefault(name, {})[label] = {
                "final_x": float(xs[-1]), "average_regret": average_regret(xs, grads),
                "steps": len(grads),
            }
            log(f"{name:11s} {label:8s} T={len(grads):7d}  final x = {xs[-1]:+.4f}  "
                f"average regret = {results[name][label]['average_regret']:.4f}")
    record.write(result_file(results, steps), out / "reddi.json")
    plot(curves, out / "reddi.png")
    log("optimum x* = -1 in every setting (in expectation for the stochastic one)")
    log(f"wrote {out / 'reddi.json'} and {out / 'reddi.png'}")
    return results


def result_file(results: dict, steps: int | None) -> dict:
    """``reddi.json``: one row per setting, and ``results`` as it is under ``"results"``."""
    command = "adamkit reproduce reddi" + (f" --steps {steps}" if steps else "")
    columns = [("setting", ""), ("steps", ",d"), ("Adam final x", "+.3f"),
               ("AMSGrad final x", "+.3f"), ("Adam regret / T", ".3f"),
               ("AMSGrad regret / T", ".3f")]
    rows = [[SETTINGS[name].title, by["Adam"]["steps"], by["Adam"]["final_x"],
             by["AMSGrad"]["final_x"], by["Adam"]["average_regret"],
             by["AMSGrad"]["average_regret"]] for name, by in results.items()]
    title = ("Reddi et al.'s counterexamples on [−1, 1] (x₀ = 1, projected after every step): the "
             "final iterate and the average regret against the best fixed point in hindsight; "
             "the optimum is x* = −1")
    return {**record.document("reddi", title, command, columns, rows), "results": results}


def plot(curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(SETTINGS), figsize=(5 * len(SETTINGS), 3.6))
    for ax, (name, setting) in zip(axes, SETTINGS.items()):
        for label in ("Adam", "AMSGrad"):
            xs = curves[name, label]
            ax.plot(np.arange(1, len(xs) + 1), xs, label=label)
        ax.set_xscale("log")
        ax.set_ylim(-1.1, 1.1)
        ax.set_title(setting.title, fontsize=9)
        ax.set_xlabel("iteration t")
        ax.set_ylabel("xₜ")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
