"""Golden results: the sha256 of every parameter and state tensor after a fixed 30-step problem.

For each backend, member, ε form, state dtype and path (the kernel where one applies, or the ops
path), the optimizer runs 30 steps on the same variables and gradients and the bytes of the final
parameters and every optimizer variable are hashed. Two commits that compute the same thing give the
same file; ``--compare`` names every entry that differs. A refactor of the core is checked with it:

    python tests/golden.py --out before.json          # on the old commit
    python tests/golden.py --compare before.json      # on the new one

Not a test (hashes are specific to a machine's CPU and libraries), a tool for such changes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys

BACKENDS = ("tensorflow", "jax", "torch")
MEMBERS = {
    "adam": {},
    "amsgrad": {"amsgrad": True},
    "adamw": {"weight_decay": 0.01},
    "nadam": {},
    "adamax": {},
    "radam": {},
}
KERAS_MODE = ("adam", "amsgrad", "adamw")  # the members with an ε̂ form
STEPS = 30


def configurations():
    for member, preset in MEMBERS.items():
        modes = ("paper", "keras") if member in KERAS_MODE else ("paper",)
        for mode in modes:
            for state_dtype in ("float32", "bfloat16", "int8"):
                for fused in (None, False):
                    yield member, preset, mode, state_dtype, fused


def run_backend() -> dict:
    """Runs in a process whose ``KERAS_BACKEND`` is set: {configuration: {tensor: sha256}}."""
    import keras
    import numpy as np

    import adamkit

    rng = np.random.default_rng(0)
    shapes = {"kernel": (96, 64), "bias": (64,)}
    initial = {n: rng.standard_normal(s).astype("float32") for n, s in shapes.items()}
    gradients = [{n: (rng.standard_normal(s) * 10.0 ** rng.integers(-4, 1)).astype("float32")
                  for n, s in shapes.items()} for _ in range(STEPS)]
    results = {}
    for member, preset, mode, state_dtype, fused in configurations():
        options = dict(preset, state_dtype=state_dtype, fused=fused)
        if mode == "keras":
            options.update(epsilon_mode="keras", epsilon=1e-7)
        optimizer = adamkit.get(member, **options)
        variables = [keras.Variable(initial[n], name=n) for n in shapes]
        for step in gradients:
            optimizer.apply([keras.ops.convert_to_tensor(step[v.name]) for v in variables],
                            variables)
        tensors = {f"param/{v.name}": v for v in variables}
        tensors.update({f"state/{v.path}": v for v in optimizer.variables})
        key = f"{member}|{mode}|{state_dtype}|{'ops' if fused is False else 'fused'}"
        results[key] = {name: hashlib.sha256(np.ascontiguousarray(
            keras.ops.convert_to_numpy(t)).tobytes()).hexdigest()[:16]
            for name, t in sorted(tensors.items())}
    return results


def collect() -> dict:
    results = {}
    for backend in BACKENDS:
        env = dict(os.environ, KERAS_BACKEND=backend)
        out = subprocess.run([sys.executable, __file__, "--backend-run"], env=env, check=True,
                             capture_output=True, text=True).stdout
        for key, hashes in json.loads(out.splitlines()[-1]).items():
            results[f"{backend}|{key}"] = hashes
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the hashes to this JSON file")
    parser.add_argument("--compare", help="compare with this JSON file; exit 1 if any differ")
    parser.add_argument("--backend-run", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.backend_run:
        print(json.dumps(run_backend()))
        return 0
    results = collect()
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1, sort_keys=True)
    if args.compare:
        with open(args.compare) as f:
            before = json.load(f)
        differ = sorted(k for k in before.keys() | results.keys()
                        if before.get(k) != results.get(k))
        for key in differ:
            tensors = sorted(t for t in (before.get(key) or {}).keys() | (results.get(key) or {}).keys()
                             if (before.get(key) or {}).get(t) != (results.get(key) or {}).get(t))
            print(f"differs: {key}: {', '.join(tensors)}")
        print(f"{len(results) - len(differ)} of {len(results)} configurations equal")
        return 1 if differ else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
