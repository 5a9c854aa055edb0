"""Lean optimizer state on MNIST: accuracy of float32, bfloat16 and int8 state, and how far the
stored moments drift from float32 ones.

    python benchmarks/lean_state.py [--seeds 0 1 2] [--quick]

1. Accuracy: the tutorial's MLP (3 epochs, batch 32) and a small CNN (Conv(16)–pool–Conv(32)–pool–
   dropout–Dense; 1 epoch, batch 128), trained with ``adamkit.Adam(state_dtype=...)``, the same seed
   for every state dtype; records validation accuracy per seed, the mean and the largest per-seed
   difference from float32 state in percentage points, and the median wall time of a run.
2. State error: the MLP trained for 1,000 steps with float32 state; at every step the same gradients
   also go to Adam with bfloat16 and int8 state (on their own copies of the weights: their moments
   depend only on the gradients). Records ‖m − m_float32‖/‖m_float32‖ and the same for v.

Writes benchmarks/results/lean_state_accuracy.json and lean_state_drift.json, which
``benchmarks/render.py`` renders into README.md and benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import time

import keras
import numpy as np
import tensorflow as tf

import adamkit
from adamkit.data import load_mnist
from adamkit.train import seed_model, state_bytes_per_parameter
from results import Table

STATE_DTYPES = ("float32", "bfloat16", "int8")


def small_cnn() -> keras.Model:
    return keras.Sequential([
        keras.Input(shape=(28, 28, 1)),
        keras.layers.Conv2D(16, 3, activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(32, 3, activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dropout(0.25),
        keras.layers.Dense(10),
    ])


MODELS = {"mlp": (seed_model, 3, 32), "cnn": (small_cnn, 1, 128)}


def accuracy(model_name, state_dtype, seed, data, epochs=None):
    build, default_epochs, batch = MODELS[model_name]
    (x_train, y_train), (x_test, y_test) = data
    if model_name == "cnn":
        x_train, x_test = x_train[..., None], x_test[..., None]
    keras.utils.set_random_seed(seed)
    model = build()
    model.compile(adamkit.Adam(state_dtype=state_dtype),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    start = time.perf_counter()
    history = model.fit(x_train, y_train, epochs=epochs or default_epochs, batch_size=batch,
                        validation_data=(x_test, y_test), verbose=0).history
    return history["val_accuracy"][-1], state_bytes_per_parameter(model), time.perf_counter() - start


def state_error(data, steps):
    (x_train, y_train), _ = data
    keras.utils.set_random_seed(0)
    model = seed_model()
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    shadows = {d: [keras.Variable(v, name=f"shadow_{i}") for i, v in enumerate(model.trainable_variables)]
               for d in STATE_DTYPES}
    optimizers = {d: adamkit.Adam(state_dtype=d) for d in STATE_DTYPES}
    for d in STATE_DTYPES:
        optimizers[d].build(shadows[d])

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        for d in STATE_DTYPES:
            optimizers[d].apply(grads, shadows[d])
        for variable, shadow in zip(model.trainable_variables, shadows["float32"]):
            variable.assign(shadow)  # the model follows the float32-state run

    rng = np.random.default_rng(0)
    report = {}
    checkpoints = {1, 10, 100, 1000, steps}
    for t in range(1, steps + 1):
        idx = rng.integers(0, len(x_train), 32)
        step(tf.constant(x_train[idx]), tf.constant(y_train[idx]))
        if t in checkpoints:
            reference = optimizers["float32"].state_values()
            report[t] = {}
            for d in ("bfloat16", "int8"):
                ours = optimizers[d].state_values()
                report[t][d] = {
                    name: float(np.linalg.norm(np.concatenate([np.ravel(a) for a in ours[name]])
                                               - np.concatenate([np.ravel(b) for b in reference[name]]))
                                / np.linalg.norm(np.concatenate([np.ravel(b) for b in reference[name]])))
                    for name in ("momentum", "velocity")
                }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--quick", action="store_true", help="one epoch per run")
    parser.add_argument("--skip-state-error", action="store_true")
    args = parser.parse_args()
    (x_train, y_train), (x_test, y_test) = load_mnist()
    data = ((x_train / 255.0).astype("float32"), y_train), ((x_test / 255.0).astype("float32"), y_test)

    if not args.skip_state_error:
        drift = Table("lean_state_drift", "Lean state's drift from float32 state: relative L2 "
                      "error of m and v after N steps (the tutorial's MLP, batch 32)",
                      [("step", ",d"), ("bfloat16 m", ".2e"), ("bfloat16 v", ".2e"),
                       ("int8 m", ".2e"), ("int8 v", ".2e")])
        for t, row in state_error(data, args.steps).items():
            drift.add(t, row["bfloat16"]["momentum"], row["bfloat16"]["velocity"],
                      row["int8"]["momentum"], row["int8"]["velocity"])
        drift.save()
    table = Table("lean_state_accuracy", "Lean state: validation accuracy by seed "
                  f"(seeds {', '.join(map(str, args.seeds))}) with float32, bfloat16 and int8 "
                  "state, adamkit.Adam with default hyperparameters; the tutorial's MLP "
                  f"{'1 epoch' if args.quick else '3 epochs'} at batch 32, the small CNN 1 epoch at batch "
                  "128", [("model", ""), ("state", ""), ("bytes / parameter", ".2f"),
                          ("val. accuracy by seed", ""), ("mean difference to float32 (pp)", "+.2f"),
                          ("largest gap to float32 (pp)", ".2f"), ("s / run (median)", ".0f")])
    for model_name in args.models:
        results = {d: [accuracy(model_name, d, s, data, 1 if args.quick else None)
                       for s in args.seeds] for d in STATE_DTYPES}
        for d in STATE_DTYPES:
            gaps = [100 * (a - b) for (a, _, _), (b, _, _) in zip(results[d], results["float32"])]
            lean = d != "float32"
            table.add(model_name, d, results[d][0][1],
                      " / ".join(f"{a:.4f}" for a, _, _ in results[d]),
                      float(np.mean(gaps)) if lean else None,
                      max(abs(g) for g in gaps) if lean else None,
                      float(np.median([r[2] for r in results[d]])))
    table.save()


if __name__ == "__main__":
    main()
