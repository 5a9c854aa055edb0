"""A recommender a user would recognise, trained with lazy and with dense Adam, side by side.

Synthetic but realistic in shape: 200,000 users and 20,000 items with 32-dimensional ground-truth
taste vectors; 400,000 observed ratings r = ⟨u, i⟩ + noise, users and items drawn with a long tail
(Zipf-like), 10% held out. The model is the classic matrix factorisation, two Embedding tables and a
dot product, trained with model.fit, batch 1024, for 3 epochs with keras.optimizers.Adam, adamkit.Adam
and adamkit.Adam(lazy=True). Prints seconds per epoch (median) and the held-out mean squared error.
Run: python benchmarks/recommender.py
"""

from __future__ import annotations

import argparse
import os
import statistics

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import adamkit  # noqa: E402
from adamkit.bench.timing import EpochTimer  # noqa: E402
from results import Table  # noqa: E402

USERS, ITEMS, DIM = 200_000, 20_000, 32


def make_data(ratings: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    users = rng.normal(size=(USERS, DIM)) / DIM**0.25
    items = rng.normal(size=(ITEMS, DIM)) / DIM**0.25
    u = (rng.zipf(1.3, size=ratings) - 1) % USERS  # a long tail: most users rate little
    i = (rng.zipf(1.3, size=ratings) - 1) % ITEMS
    r = np.sum(users[u] * items[i], axis=1) + 0.1 * rng.normal(size=ratings)
    pairs = np.stack([u, i], axis=1).astype(np.int32)
    split = int(0.9 * ratings)
    return (pairs[:split], r[:split].astype(np.float32)), (pairs[split:], r[split:].astype(np.float32))


def model() -> keras.Model:
    pairs = keras.Input((2,), dtype="int32")
    user = keras.layers.Embedding(USERS, DIM, name="users")(pairs[:, 0])
    item = keras.layers.Embedding(ITEMS, DIM, name="items")(pairs[:, 1])
    return keras.Model(pairs, keras.ops.sum(user * item, axis=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratings", type=int, default=400_000)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    (x, y), (x_val, y_val) = make_data(args.ratings)
    optimizers = {
        "keras.optimizers.Adam": lambda: keras.optimizers.Adam(learning_rate=0.01),
        "adamkit.Adam": lambda: adamkit.Adam(learning_rate=0.01),
        "adamkit.Adam(lazy=True)": lambda: adamkit.Adam(learning_rate=0.01, lazy=True),
    }
    table = Table("recommender", f"A recommender: matrix factorisation, {USERS:,} users × "
                  f"{ITEMS:,} items, dim {DIM}, {len(x):,} training ratings, batch 1024, "
                  f"{args.epochs} epochs of model.fit", [("optimizer", ""),
                                                         ("s / epoch (median)", ".2f"),
                                                         ("held-out MSE", ".4f")])
    for name, make in optimizers.items():
        keras.utils.set_random_seed(0)
        net = model()
        net.compile(optimizer=make(), loss="mse")
        timer = EpochTimer()
        net.fit(x, y, batch_size=1024, epochs=args.epochs, verbose=0, callbacks=[timer])
        mse = net.evaluate(x_val, y_val, batch_size=8192, verbose=0)
        table.add(name, statistics.median(timer.times), mse)
    table.save()

if __name__ == "__main__":
    main()
