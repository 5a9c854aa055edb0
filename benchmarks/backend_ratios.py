"""Ratios on Keras's JAX or PyTorch backend, alternating the two sides round after round (one
timing of each can be off by ±30% on a shared machine; the median of per-round ratios is steadier).

    python benchmarks/backend_ratios.py {jax,torch} [--sizes 10 50] [--rounds 7]

Each optimizer runs as Keras's trainer on that backend runs it (on JAX ``stateless_apply`` under
``jax.jit`` with the state donated; ``adamkit.bench.timing.backend_stepper``). Rows, > 1 meaning the first
is faster: adamkit (Adam, AdamW, AMSGrad, Adamax; on JAX its XLA custom call, on PyTorch one
call of its own kernel, ``adam_host.cc``) / the ``keras.optimizers`` counterpart,
adamkit / adamkit's ops path (``fused=False``), adamkit Adam / the backend's own library (optax
under jit; torch.optim.Adam fused), and adamkit / the bandwidth limit (the step's own bytes
streamed, ``adamkit.bench.stream.stream_step``: 28 B/param, AMSGrad 36; 1 = at the limit).
"""

from __future__ import annotations

import argparse
import os
import sys

if __name__ == "__main__":  # Keras fixes its backend at import
    os.environ["KERAS_BACKEND"] = next((a for a in sys.argv[1:2] if a in ("jax", "torch")), "jax")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import adamkit  # noqa: E402
from adamkit.bench.peers import optax_steps, torch_fused  # noqa: E402
from adamkit.bench.stream import stream_step  # noqa: E402
from adamkit.bench.timing import backend_stepper, parameter_shapes  # noqa: E402
from results import RATIO_COLUMNS, Table, alternate  # noqa: E402

OURS = {  # name → (adamkit's, Keras's counterpart)
    "Adam": (lambda **k: adamkit.Adam(**k), lambda: keras.optimizers.Adam()),
    "AdamW": (lambda **k: adamkit.AdamW(**k), lambda: keras.optimizers.AdamW()),
    "AMSGrad": (lambda **k: adamkit.Adam(amsgrad=True, **k),
                lambda: keras.optimizers.Adam(amsgrad=True)),
    "Adamax": (lambda **k: adamkit.Adamax(**k), lambda: keras.optimizers.Adamax()),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("backend", choices=["jax", "torch"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    table = Table(f"backend_ratios_{args.backend}", f"{args.backend}: adamkit's step as Keras's "
                  "trainer runs it, against Keras's optimizers, its own ops path, the backend's "
                  "library and the bandwidth limit (> 1: adamkit faster)", RATIO_COLUMNS)
    report = table.ratio_row
    rng = np.random.default_rng(0)
    for millions in args.sizes:
        shapes = parameter_shapes(millions)
        grads = [keras.ops.convert_to_tensor(rng.normal(size=s).astype(np.float32))
                 for s in shapes]
        count = sum(int(np.prod(s)) for s in shapes)
        limits = {False: stream_step(count), True: stream_step(count, amsgrad=True)}
        peer = (optax_steps(shapes, rng).get("optax adam, jax.jit") if args.backend == "jax"
                else torch_fused("Adam", shapes))
        for name, (ours, keras_counterpart) in OURS.items():
            step = backend_stepper(ours(), shapes, grads)
            label = f"{millions}M {name:8} adamkit"
            report(f"{label} / keras", alternate(
                step, backend_stepper(keras_counterpart(), shapes, grads), args.rounds))
            report(f"{label} / adamkit ops path", alternate(
                step, backend_stepper(ours(fused=False), shapes, grads), args.rounds))
            if name == "Adam" and peer is not None:
                peer_name = "optax" if args.backend == "jax" else "torch fused"
                report(f"{label} / {peer_name}", alternate(step, peer, args.rounds))
            report(f"{label} / limit",
                   alternate(step, limits[name == "AMSGrad"], args.rounds))
    table.save()


if __name__ == "__main__":
    main()
