"""Schedule-free AdamW on the tutorial's model, against `adamkit train --preset fast` and Keras's
ScheduleFreeAdamW, in one run: validation accuracy and the training time to the tutorial's 0.9725.

Every recipe trains the tutorial's model (`adamkit train`'s model, data and order of examples) for
the fast preset's 3 epochs at batch 256. `--preset fast` is adamkit.Adam with its learning rate
0.012 decaying to 0 along a cosine; the schedule-free optimizers take the same 0.012 as a constant
(with a linear warm-up over the first 5% of the steps) and need no run length. adamkit's
schedule-free AdamW is trained once per seed and evaluated both at x (its average, as
`adamkit.callbacks.ScheduleFreeEval` evaluates it) and at y (the point the gradients are taken
at, which Keras evaluates). The validation set is evaluated every `--every` steps; the time to
0.9725 is the training time (evaluations excluded) at the first evaluation that reaches it, and the
steps to it are that evaluation's step (of 705), which a busy machine does not move.
Run: python benchmarks/schedule_free.py [--seeds 0 1 2] [--every 47]
"""

from __future__ import annotations

import argparse
import statistics
import time

from results import Table

TARGET = 0.9725
LEARNING_RATE = 0.012
WARMUP = 0.05


class Probe:
    """Keras callback: evaluates every ``every`` steps (where a call of the train function ends),
    at x and y for adamkit's schedule-free AdamW; keeps the training time, evaluations excluded."""

    def __init__(self, keras, evaluate, validation, every: int, at_x: bool) -> None:
        self.callback = keras.callbacks.LambdaCallback(on_train_batch_end=self.batch_end)
        self.evaluate, self.validation, self.every, self.at_x = evaluate, validation, every, at_x
        self.model, self.spent, self.started, self.next = None, 0.0, None, every
        self.reached: dict[str, float | None] = {"x": None, "y": None}
        self.reached_step: dict[str, int | None] = {"x": None, "y": None}
        self.last: dict[str, float] = {}

    def training_time(self) -> float:
        return time.perf_counter() - self.started - self.spent

    def batch_end(self, batch, logs=None) -> None:
        step = int(self.model.optimizer.iterations.numpy())
        if step >= self.next:
            self.next = step + self.every
            self.probe(step)

    def probe(self, step: int) -> None:
        trained, began = self.training_time(), time.perf_counter()
        points = {"y": None}
        if self.at_x:
            with self.model.optimizer.averaged():
                points["x"] = self.evaluate(self.model, self.validation)[1]
        points["y"] = self.evaluate(self.model, self.validation)[1]
        for point, accuracy in points.items():
            self.last[point] = accuracy
            if accuracy >= TARGET and self.reached[point] is None:
                self.reached[point], self.reached_step[point] = trained, step
        self.spent += time.perf_counter() - began


def train_one(recipe: str, seed: int, data, every: int) -> Probe:
    import keras
    import numpy as np

    import adamkit
    from adamkit.train import PRESETS, evaluate, make_optimizer, seed_model, seed_objective

    (x, y), validation = data
    preset = PRESETS["fast"]
    batch, epochs = preset["batch_size"], 3
    steps = epochs * -(-len(x) // batch)
    keras.utils.set_random_seed(seed)
    model = seed_model()
    if recipe == "fast":
        optimizer = make_optimizer("adam", preset["hyperparameters"], preset["schedule"], steps)
    elif recipe == "adamkit":
        optimizer = adamkit.ScheduleFreeAdamW(LEARNING_RATE, warmup_steps=int(WARMUP * steps))
    else:
        optimizer = keras.optimizers.ScheduleFreeAdamW(LEARNING_RATE,
                                                       warmup_steps=int(WARMUP * steps))
    model.compile(optimizer=optimizer, steps_per_execution=8, **seed_objective())
    probe = Probe(keras, evaluate, validation, every, at_x=recipe == "adamkit")
    probe.model = model
    probe.started = time.perf_counter()
    for epoch in range(epochs):  # `adamkit train`'s order of examples
        order = np.random.default_rng([seed, epoch]).permutation(len(x))
        model.fit(x[order], y[order], batch_size=batch, epochs=1, shuffle=False, verbose=0,
                  callbacks=[probe.callback])
    probe.probe(steps)  # the end of training
    return probe


ROWS = [("adamkit.ScheduleFreeAdamW, evaluated at x", "adamkit", "x"),
        ("adamkit.ScheduleFreeAdamW, evaluated at y", "adamkit", "y"),
        ("keras.optimizers.ScheduleFreeAdamW (at y)", "keras", "y"),
        ("`adamkit train --preset fast` (Adam, cosine)", "fast", "y")]


def seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--every", type=int, default=47, help="steps between evaluations")
    args = parser.parse_args()
    from adamkit.train import TrainSettings, load_data

    data = load_data(TrainSettings(), log=lambda *_: None)
    runs = {recipe: [] for recipe in ("adamkit", "keras", "fast")}
    for seed in args.seeds:  # the recipes alternate, seed by seed
        for recipe in runs:
            runs[recipe].append(train_one(recipe, seed, data, args.every))
    table = Table("schedule_free", "Schedule-free AdamW on the tutorial's model (3 epochs at "
                  "batch 256; seeds " + ", ".join(map(str, args.seeds)) + "): final validation "
                  f"accuracy and training time to {TARGET}, each seed's and the median",
                  [("optimizer", ""), ("val. accuracy per seed", ""), ("median", ".4f"),
                   (f"time to {TARGET} (s) per seed", ""), ("median (s)", ""),
                   ("steps to it per seed", "")])
    for label, recipe, point in ROWS:
        accuracies = [probe.last[point] for probe in runs[recipe]]
        times = [probe.reached[point] for probe in runs[recipe]]
        reached = [t for t in times if t is not None]
        median_time = statistics.median(reached) if len(reached) == len(times) else None
        steps = [probe.reached_step[point] for probe in runs[recipe]]
        table.add(label, " / ".join(f"{a:.4f}" for a in accuracies),
                  statistics.median(accuracies), " / ".join(seconds(t) for t in times),
                  seconds(median_time), " / ".join("—" if s is None else str(s) for s in steps))
    table.save()


if __name__ == "__main__":
    main()
