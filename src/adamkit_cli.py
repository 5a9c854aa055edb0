"""Entry point of the ``adamkit`` command.

Keras fixes its backend when it is first imported, and importing ``adamkit`` imports Keras, so
``--backend`` has to be read before anything else: this module does only that, then hands over.
"""

from __future__ import annotations

import os
import sys

BACKENDS = ("tensorflow", "jax", "torch")


def requested_backend(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--backend" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--backend="):
            return arg.split("=", 1)[1]
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    backend = requested_backend(argv)
    if backend in BACKENDS:  # anything else is left for argparse to reject with a usage message
        os.environ["KERAS_BACKEND"] = backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter

    from adamkit.cli import main as run

    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
