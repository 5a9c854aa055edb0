"""The learning-rate range test (Smith, 2017): train for a short while with the learning rate
raised exponentially at every step, watch the loss, suggest a learning rate, and put the model
and its optimizer back exactly as they were.

One implementation of the math serves both entry points: ``RangeTest`` (the ramp, the smoothed
loss, the stop) and ``suggest`` (the rule) are used by ``adamkit.callbacks.LRFinder`` inside any
``model.fit``, and ``lr_find`` runs that callback on a model's own ``fit``.

The suggestion rule ("valley"), and why:

* The raw loss of one batch is noisy, so everything is read off its exponential moving average
  (``smooth``, bias-corrected as in Adam, so that the first points are not pulled towards 0).
  The average lags the raw loss (with β = 0.98 its weights' mean age is 49 steps), so the
  smoothed curve's descent sits to the right of the raw one's: the rule below stops short of the
  smoothed curve's floor for that reason too. A longer ramp (``num_steps``) shortens the lag in
  learning rate. (A symmetric smoothing, forwards then backwards, has no lag but blurs a descent
  that spans fewer steps than its window; it was tried and dropped.)
* Past the smoothed loss's minimum the model is heading for divergence: only the descent before
  it counts.
* The valley is the stretch of that descent between the points where the smoothed loss has
  fallen by 10% and by 90% of the total drop: the first 10% is the plateau of learning rates too
  small to matter, the last 10% the floor where the rate is already close to too large. The
  drop is measured from the plateau's level, the median of the first tenth of the steps (their
  maximum would be set by the noise of the first, barely averaged, points).
* The suggestion is the valley's midpoint in log learning rate: well into the descent, where the
  loss falls fast, and well short of the floor, where training is close to unstable. Further in
  (two thirds, say) is too far once the average's lag is counted: on the tutorial's model it
  lands where the raw loss has already stopped falling.

Picking the steepest point of the curve (Lightning's default) is known to be unstable: the slope
of a noisy curve has its own noise, and its maximum jumps between runs; the minimum divided by
10 (an old fastai rule) depends on where the run happened to diverge. A point placed within a
span defined by loss levels moves little when the noise does (tested on seeds).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from adamkit.choices import LR_FIND_MIN_STEPS

RULE = ("valley: on the smoothed loss before its minimum, the stretch where it falls from 10% to "
        "90% of its total drop; the suggestion is its midpoint in log learning rate")

# The rule's constants (see the module docstring).
VALLEY_TOP = 0.1
VALLEY_BOTTOM = 0.9
VALLEY_POSITION = 1 / 2
PLATEAU_SHARE = 10  # the plateau's level is read off the first 1/PLATEAU_SHARE of the steps
# Fewer steps than this leave too few points to smooth and to find a valley in.
MIN_STEPS = LR_FIND_MIN_STEPS


def check_settings(start_lr: float, end_lr: float, num_steps: int, smooth: float,
                   diverge: float) -> None:
    """Raises ``ValueError`` naming the setting that is wrong and what is allowed.

    Args:
        start_lr: the first learning rate; finite and > 0.
        end_lr: the last learning rate; finite and > ``start_lr``.
        num_steps: steps in the ramp; an integer >= ``MIN_STEPS``.
        smooth: the loss's moving-average factor; in [0, 1).
        diverge: the stop's multiple of the best smoothed loss; > 1.
    """
    for name, value in (("start_lr", start_lr), ("end_lr", end_lr)):
        if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a finite number > 0; got {value!r}")
    if not end_lr > start_lr:
        raise ValueError(f"end_lr ({end_lr}) must be larger than start_lr ({start_lr})")
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < MIN_STEPS:
        raise ValueError(f"num_steps must be an integer >= {MIN_STEPS}; got {num_steps!r}")
    if not (isinstance(smooth, int | float) and 0 <= smooth < 1):
        raise ValueError(f"smooth must be in [0, 1); got {smooth!r}")
    if not (isinstance(diverge, int | float) and math.isfinite(diverge) and diverge > 1):
        raise ValueError(f"diverge must be a finite number > 1; got {diverge!r}")


def exponential_ramp(start_lr: float, end_lr: float, num_steps: int) -> np.ndarray:
    """The learning rate of each step: ``start_lr · (end_lr/start_lr)^(i/(num_steps − 1))``, so
    that every step multiplies it by the same factor, from ``start_lr`` to ``end_lr`` exactly.

    Args:
        start_lr: the first step's learning rate.
        end_lr: the last step's learning rate.
        num_steps: how many steps.
    """
    exponents = np.arange(num_steps, dtype=np.float64) / (num_steps - 1)
    rates = start_lr * (end_lr / start_lr) ** exponents
    rates[-1] = end_lr  # exactly, where the power rounds
    return rates


class RangeTest:
    """The state of one range test: the ramp, the losses recorded, their smoothed values, and
    whether to stop.

    Args:
        start_lr: the first learning rate.
        end_lr: the last learning rate.
        num_steps: steps in the ramp.
        smooth: the factor β of the loss's moving average ``m ← β·m + (1 − β)·loss``, divided by
            ``1 − β^t`` (Adam's bias correction); 0 records the raw loss.
        diverge: stop once the smoothed loss exceeds ``diverge`` times its best so far (for a
            loss that can be ≤ 0: the best plus ``diverge − 1`` times its magnitude).
    """

    def __init__(self, start_lr: float, end_lr: float, num_steps: int, smooth: float,
                 diverge: float) -> None:
        check_settings(start_lr, end_lr, num_steps, smooth, diverge)
        self.start_lr, self.end_lr, self.num_steps = float(start_lr), float(end_lr), num_steps
        self.smooth, self.diverge = float(smooth), float(diverge)
        self.rates = exponential_ramp(self.start_lr, self.end_lr, num_steps)
        self.learning_rates: list[float] = []
        self.losses: list[float] = []
        self.smoothed: list[float] = []
        self.stopped: str | None = None
        self._average = 0.0
        self._best = math.inf

    @property
    def step(self) -> int:
        """Steps recorded so far."""
        return len(self.losses)

    def next_rate(self) -> float:
        """The learning rate of the next step."""
        return float(self.rates[min(self.step, self.num_steps - 1)])

    def record(self, loss: float) -> bool:
        """Records the loss of the step just run at ``next_rate()``; True once the test is over
        (diverged, a non-finite loss, or the end of the ramp), with the reason in ``stopped``.

        Args:
            loss: the step's loss (on its batch, before its update).
        """
        rate = self.next_rate()
        loss = float(loss)
        self.learning_rates.append(rate)
        self.losses.append(loss)
        if not math.isfinite(loss):
            # Carried forward, so that the smoothed curve stays plottable; the test ends here.
            self.smoothed.append(self.smoothed[-1] if self.smoothed else loss)
            self.stopped = f"non-finite loss ({loss}) at learning rate {rate:.3g}"
            return True
        self._average = self.smooth * self._average + (1 - self.smooth) * loss
        value = self._average / (1 - self.smooth ** self.step)
        self.smoothed.append(value)
        self._best = min(self._best, value)
        if value > self._best + (self.diverge - 1) * abs(self._best):
            self.stopped = (f"diverged: the smoothed loss {value:.4g} passed {self.diverge:g}× its "
                            f"best ({self._best:.4g}) at learning rate {rate:.3g}")
            return True
        if self.step >= self.num_steps:
            self.stopped = "end of the ramp"
            return True
        return False


def suggest(learning_rates: Sequence[float], smoothed: Sequence[float]) -> int | None:
    """The index of the suggested learning rate by the "valley" rule (``RULE``; the module
    docstring says why), or None where the smoothed loss never fell.

    Args:
        learning_rates: the learning rate of each step (increasing).
        smoothed: the smoothed loss of each step.
    """
    loss = np.asarray(smoothed, dtype=np.float64)
    finite = np.isfinite(loss)
    if not finite.any():
        return None
    loss = np.where(finite, loss, np.inf)
    bottom = int(np.argmin(loss))
    # The plateau's level: the median of the first tenth of the steps before the minimum, not
    # their maximum, which the first few (barely averaged) points' noise would set.
    head = loss[:bottom + 1][: max(1, (bottom + 1) // PLATEAU_SHARE)]
    plateau = float(np.median(head[np.isfinite(head)])) if np.isfinite(head).any() else np.nan
    drop = plateau - loss[bottom]
    if not drop > 0:
        return None
    before = loss[:bottom + 1]
    # the last point still at the plateau's level (less 10% of the drop), then the first point
    # after it down at the floor's (90% of the drop)
    start = int(np.flatnonzero(before >= plateau - VALLEY_TOP * drop)[-1])
    end = start + int(np.flatnonzero(before[start:] <= plateau - VALLEY_BOTTOM * drop)[0])
    log_rates = np.log(np.asarray(learning_rates, dtype=np.float64))
    target = log_rates[start] + VALLEY_POSITION * (log_rates[end] - log_rates[start])
    return start + int(np.argmin(np.abs(log_rates[start:end + 1] - target)))


@dataclass
class LRFindResult:
    """What a range test found.

    Attributes:
        learning_rates: the learning rate of each step run.
        losses: each step's loss on its batch (before its update).
        smoothed_losses: their bias-corrected moving average, which decided the stop and
            the suggestion.
        suggestion: the suggested learning rate, or None where the loss never fell.
        suggestion_index: the step it was read at.
        rule: the rule that chose it, in words.
        stopped: why the test ended.
        settings: the test's settings (ramp, smoothing, stop, batch size, ...).
    """

    learning_rates: list[float]
    losses: list[float]
    smoothed_losses: list[float]
    suggestion: float | None
    suggestion_index: int | None
    rule: str = RULE
    stopped: str = ""
    settings: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_test(cls, test: RangeTest, settings: dict[str, Any] | None = None) -> LRFindResult:
        """The result of the finished ``test``, its suggestion found by ``suggest``.

        Args:
            test: the range test, run.
            settings: anything to record beside the test's own settings.
        """
        index = suggest(test.learning_rates, test.smoothed)
        own = {"start_lr": test.start_lr, "end_lr": test.end_lr, "num_steps": test.num_steps,
               "smooth": test.smooth, "diverge": test.diverge}
        return cls(learning_rates=list(test.learning_rates), losses=list(test.losses),
                   smoothed_losses=list(test.smoothed),
                   suggestion=None if index is None else test.learning_rates[index],
                   suggestion_index=index, stopped=test.stopped or "the data ran out",
                   settings={**own, **(settings or {})})

    def to_json(self) -> str:
        """The result as JSON (non-finite losses written as null)."""
        def clean(values):
            return [v if math.isfinite(v) else None for v in values]

        data = asdict(self)
        data["losses"] = clean(self.losses)
        data["smoothed_losses"] = clean(self.smoothed_losses)
        return json.dumps(data, indent=2)

    def plot(self, path: str | os.PathLike, title: str = "Learning-rate range test") -> None:
        """Draws the loss against the learning rate (log axis), the suggestion marked, to ``path``
        (PNG), written atomically.

        Args:
            path: the image file to write.
            title: the figure's title.
        """
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rates = np.asarray(self.learning_rates)
        raw = np.asarray(self.losses, dtype=np.float64)
        smoothed = np.asarray(self.smoothed_losses, dtype=np.float64)
        fig, ax = plt.subplots(figsize=(7, 4.5))
        ax.plot(rates, raw, color="0.7", lw=0.8, label="loss (each batch)")
        ax.plot(rates, smoothed, color="C0", lw=2, label="smoothed loss")
        if self.suggestion is not None:
            i = self.suggestion_index
            ax.axvline(self.suggestion, color="C3", ls="--", lw=1)
            ax.plot([self.suggestion], [smoothed[i]], "o", color="C3", ms=8,
                    label=f"suggestion: {self.suggestion:.2g}")
        ax.set_xscale("log")
        finite = smoothed[np.isfinite(smoothed)]
        if finite.size:  # the divergence's tail would flatten the rest of the curve
            low = float(np.min(np.concatenate([finite, raw[np.isfinite(raw)]])))
            high = float(finite[: max(1, finite.size // 10)].max())
            span = max(high - low, 1e-12)
            ax.set_ylim(low - 0.05 * span, high + 0.25 * span)
        ax.set_xlabel("learning rate (log scale)")
        ax.set_ylabel("loss")
        ax.set_title(title)
        ax.grid(alpha=0.3, which="both")
        ax.legend(loc="lower left")
        fig.tight_layout()
        with _atomic(Path(path), binary=True) as f:
            fig.savefig(f, format="png", dpi=100)
        plt.close(fig)

    def save(self, out: str | os.PathLike, title: str = "Learning-rate range test") -> None:
        """Writes ``lr_find.json`` (the curve, the suggestion, the rule, the settings) and
        ``lr_find.png`` into ``out`` (created where missing), each atomically.

        Args:
            out: the folder.
            title: the figure's title.
        """
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        self.plot(out / "lr_find.png", title)
        with _atomic(out / "lr_find.json") as f:
            f.write(self.to_json())


class _atomic:
    """A file opened under a temporary name beside ``path`` and renamed onto it once written in
    full, so that ``path`` never holds half a file; removed if writing fails."""

    def __init__(self, path: Path, binary: bool = False) -> None:
        self.path, self.binary = path, binary

    def __enter__(self):
        descriptor, self.temporary = tempfile.mkstemp(dir=self.path.parent,
                                                      prefix=f".{self.path.name}.")
        self.file = os.fdopen(descriptor, "wb" if self.binary else "w")
        return self.file

    def __exit__(self, kind, value, traceback):
        self.file.close()
        if kind is None:
            os.replace(self.temporary, self.path)
        else:
            os.unlink(self.temporary)
        return False


def lr_find(model, x, y=None, *, start_lr: float = 1e-7, end_lr: float = 10.0,
            num_steps: int = 200, batch_size: int = 32, smooth: float = 0.98,
            diverge: float = 4.0, seed: int = 0, verbose: int = 0) -> LRFindResult:
    """Runs the learning-rate range test on a compiled Keras model, then restores it.

    For ``num_steps`` steps of ``model.fit`` (batches of ``batch_size`` drawn from ``x``, ``y``
    in an order set by ``seed``, passing over the data again where it holds fewer), the learning
    rate rises exponentially from ``start_lr`` to ``end_lr``; the test stops early once the
    smoothed loss passes ``diverge`` times its best, or a loss is not finite. The suggestion
    follows the "valley" rule (``adamkit.tools.lr_find.RULE``): on the smoothed loss before its
    minimum, the stretch where it falls from 10% to 90% of its total drop, at its midpoint in log
    learning rate; steepest-slope rules move with the noise, this one little.

    Afterwards every variable of the model (weights, non-trainable state such as batch-norm
    statistics, random-generator state) and of its optimizer (moments, the iteration count, the
    learning rate) holds exactly the value it held before, bit for bit: one can train right
    after. An optimizer not yet built is built first (its fresh state is what is restored). On
    PyTorch, the global random generator, which Keras's dropout without a seed draws from, is
    put back too.

    Args:
        model: a compiled ``keras.Model`` whose optimizer has a float learning rate (not a
            ``LearningRateSchedule``: run the test with a float, and use the suggestion as the
            schedule's peak).
        x: the inputs: an array, or a list or dict of arrays, indexable along the first axis.
        y: the targets, likewise (None for a model whose loss needs none).
        start_lr: the first learning rate; > 0.
        end_lr: the last learning rate; > ``start_lr``.
        num_steps: steps of the ramp (at least 10; 100–300 is usual).
        batch_size: examples per step.
        smooth: β of the loss's bias-corrected moving average, in [0, 1).
        diverge: stop once the smoothed loss exceeds this multiple of its best; > 1.
        seed: the order in which the batches are drawn.
        verbose: ``model.fit``'s verbosity.

    Returns:
        An ``LRFindResult``: the learning rates, raw and smoothed losses, the suggestion and the
        rule; ``save(out)`` writes ``lr_find.json`` and ``lr_find.png``.

    Raises:
        ValueError: a setting out of range, an uncompiled model, empty data, or an optimizer
            whose learning rate cannot be set.
    """
    _check_arguments(model, batch_size, start_lr, end_lr, num_steps, smooth, diverge)
    batches = _test_data(x, y, num_steps * batch_size, seed, batch_size)
    ramp = {"start_lr": start_lr, "end_lr": end_lr, "num_steps": num_steps, "smooth": smooth,
            "diverge": diverge}
    result = _run_restoring(model, batches, verbose, ramp)
    result.settings.update(batch_size=batch_size, seed=seed)
    return result


def _check_arguments(model, batch_size: int, start_lr: float, end_lr: float, num_steps: int,
                     smooth: float, diverge: float) -> None:
    """Raises ``ValueError`` for a setting or model ``lr_find`` cannot run with, before the model
    is touched."""
    check_settings(start_lr, end_lr, num_steps, smooth, diverge)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1; got {batch_size!r}")
    if not getattr(model, "compiled", False) or model.optimizer is None:
        raise ValueError("lr_find needs a compiled model: call model.compile(optimizer=..., "
                         "loss=...) first")
    check_settable(model.optimizer)


def _test_data(x, y, count: int, seed: int, batch_size: int):
    """The ``count`` examples the test's steps take, in order (``batch_order``), as a
    ``keras.utils.PyDataset`` of batches of ``batch_size`` that ``model.fit`` runs in turn. Each
    batch is gathered when fit asks for it: a copy of all of them up front took steps × batch
    size examples of memory (1.3 → 4.7 GB for 50 steps of MNIST at batch 32 → 8,192)."""
    import keras

    arrays = keras.tree.map_structure(np.asarray, x)
    examples = len(keras.tree.flatten(arrays)[0])
    if examples == 0:
        raise ValueError("lr_find needs data: x holds no examples")
    order = batch_order(examples, count, seed)
    targets = None if y is None else keras.tree.map_structure(np.asarray, y)

    def gathered(structure, step):
        chosen = order[step * batch_size:(step + 1) * batch_size]
        found = keras.tree.map_structure(lambda a: a[chosen], structure)
        return tuple(found) if isinstance(found, list) else found  # TensorFlow's takes no lists

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return -(-count // batch_size)

        def inputs(self, step):
            return gathered(arrays, step)

        def __getitem__(self, step):
            if targets is None:  # a tuple: fit would read a list of inputs as (x, y)
                return (self.inputs(step),)
            return self.inputs(step), gathered(targets, step)

    return Batches()


def _run_restoring(model, batches, verbose: int, ramp: dict[str, Any]) -> LRFindResult:
    """Runs ``LRFinder(**ramp)`` over ``batches`` in one epoch of ``model.fit``, then
    puts back all it changed: the model's and its optimizer's variables, PyTorch's global random
    state, and the model's ``steps_per_execution``, compiled train function and history."""
    from adamkit.callbacks import LRFinder

    _build(model, batches)
    saved = snapshot([*model.variables, *model.optimizer.variables])
    generator = global_generator_state()
    finder = LRFinder(**ramp)
    # One step per call of the train function, so that each step gets its own learning rate;
    # the model's own setting and compiled function come back afterwards.
    per_call, function = model.steps_per_execution, model.train_function
    history = getattr(model, "history", None)
    try:
        model.steps_per_execution, model.train_function = 1, None
        model.fit(batches, epochs=1, shuffle=False, callbacks=[finder], verbose=verbose)
    finally:
        model.steps_per_execution, model.train_function = per_call, function
        model.history = history
        restore(saved)
        restore_global_generator(generator)
    return finder.result


def _build(model, batches) -> None:
    """Builds the model and its optimizer where not built yet: their variables must exist to be
    saved (an optimizer's fresh state is then what is restored)."""
    if not model.built:
        model(batches.inputs(0))
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)


def check_settable(optimizer) -> None:
    """Raises ``ValueError`` unless ``optimizer``'s learning rate is a variable one can set.

    Args:
        optimizer: a Keras optimizer (a ``LossScaleOptimizer``'s inner one is checked).
    """
    import keras

    inner = getattr(optimizer, "inner_optimizer", optimizer)
    rate = getattr(inner, "_learning_rate", None)
    if isinstance(rate, keras.optimizers.schedules.LearningRateSchedule) or callable(rate):
        raise ValueError(
            f"the range test sets the learning rate at every step, and this optimizer's is a "
            f"schedule ({type(rate).__name__}): compile the model with a float learning_rate for "
            "the test, then use the suggestion as the schedule's peak")
    if not isinstance(rate, keras.Variable):
        raise ValueError(f"cannot set the learning rate of {type(inner).__name__}: the range "
                         "test needs a Keras optimizer with a float learning_rate")


def batch_order(examples: int, count: int, seed: int) -> np.ndarray:
    """``count`` example indices: shuffled passes over ``examples`` examples, each pass a fresh
    permutation drawn from ``seed``.

    Args:
        examples: how many examples there are.
        count: how many indices to return.
        seed: the permutations' seed.
    """
    rng = np.random.default_rng(seed)
    passes = -(-count // examples)
    return np.concatenate([rng.permutation(examples) for _ in range(passes)])[:count]


def snapshot(variables: Sequence) -> list[tuple[Any, np.ndarray]]:
    """Each distinct variable with a copy of its value.

    Args:
        variables: Keras variables.
    """
    import keras

    seen: set[int] = set()
    saved = []
    for variable in variables:
        if id(variable) not in seen:
            seen.add(id(variable))
            saved.append((variable, np.array(keras.ops.convert_to_numpy(variable), copy=True)))
    return saved


def global_generator_state():
    """PyTorch's global random state (Keras's unseeded dropout draws from it there), else None:
    on TensorFlow and JAX the draws come from the layers' seed-generator variables."""
    import keras

    if keras.backend.backend() != "torch":
        return None
    import torch

    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    return torch.get_rng_state(), cuda


def restore_global_generator(state) -> None:
    """Puts back what ``global_generator_state`` saved.

    Args:
        state: its return value.
    """
    if state is None:
        return
    import torch

    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)


def restore(saved: Sequence[tuple[Any, np.ndarray]]) -> None:
    """Assigns each variable the value ``snapshot`` copied.

    Args:
        saved: ``snapshot``'s list.
    """
    for variable, value in saved:
        variable.assign(value)


def tutorial_lr_find(optimizer: str = "adam", hyperparameters: dict[str, Any] | None = None, *,
                     dropout: float = 0.2, data: str | None = None, seed: int = 0,
                     batch_size: int = 32, start_lr: float = 1e-7, end_lr: float = 10.0,
                     num_steps: int = 200, out: str | os.PathLike | None = None,
                     log=print) -> tuple[LRFindResult, Path]:
    """``adamkit lr-find``: the range test on the tutorial's model (``adamkit.train.seed_model``,
    compiled as ``adamkit train`` compiles it) and MNIST's training set; writes ``lr_find.json``
    and ``lr_find.png`` into ``out``.

    Args:
        optimizer: a name ``adamkit train --optimizer`` takes.
        hyperparameters: the optimizer's keyword arguments (its learning rate is the test's).
        dropout: the model's dropout rate.
        data: ``--data``: mnist.npz or a folder of the IDX files; None: the cache or a download.
        seed: Keras's seed (the model's initial weights, dropout) and the batches' order.
        batch_size: examples per step.
        start_lr: the first learning rate.
        end_lr: the last learning rate.
        num_steps: steps of the ramp.
        out: the folder; None: a new one under ``runs/``.
        log: where progress lines go.

    Returns:
        The result and the folder it was written to.
    """
    import time

    from adamkit.train import versions

    check_settings(start_lr, end_lr, num_steps, 0.98, 4.0)  # before the data is loaded
    settings, model, (x_train, y_train) = _tutorial_setup(optimizer, hyperparameters, dropout,
                                                          data, seed, batch_size, log)
    started = time.perf_counter()
    result = lr_find(model, x_train, y_train, start_lr=start_lr, end_lr=end_lr,
                     num_steps=num_steps, batch_size=batch_size, seed=seed)
    result.settings.update(optimizer=optimizer, hyperparameters=settings.hyperparameters,
                           dropout=dropout, model="tutorial MLP on MNIST",
                           wall_time_s=round(time.perf_counter() - started, 3),
                           versions=versions())
    return result, _save_tutorial(result, optimizer, out)


def _tutorial_setup(optimizer: str, hyperparameters: dict[str, Any] | None, dropout: float,
                    data: str | None, seed: int, batch_size: int, log) -> tuple[Any, Any, Any]:
    """The settings, the compiled tutorial model and MNIST's training set, seeded as ``adamkit
    train`` seeds them (the same initial weights for the same ``seed``)."""
    import keras

    from adamkit.train import TrainSettings, load_data, make_optimizer, seed_model, seed_objective

    settings = TrainSettings(optimizer=optimizer, hyperparameters=dict(hyperparameters or {}),
                             dropout=dropout, seed=seed, data=data, batch_size=batch_size)
    keras.utils.set_random_seed(seed)
    (x_train, y_train), _ = load_data(settings, log)
    model = seed_model(dropout)
    model.compile(optimizer=make_optimizer(optimizer, settings.hyperparameters), **seed_objective())
    return settings, model, (x_train, y_train)


def _save_tutorial(result: LRFindResult, optimizer: str, out: str | os.PathLike | None) -> Path:
    """Writes the result into ``out`` (None: a new folder under ``runs/``); returns the folder."""
    import keras

    from adamkit.train import default_out_dir

    folder = Path(out) if out else default_out_dir(f"lr-find-{optimizer}")
    result.save(folder, f"Learning-rate range test: {optimizer} on the tutorial's model "
                        f"({keras.backend.backend()})")
    return folder
