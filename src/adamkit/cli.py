"""``adamkit``'s subcommands. Every bad flag value ends in a usage message and exit code 2."""

from __future__ import annotations

import argparse
import math
import sys
import textwrap
from collections.abc import Callable

import keras

BACKENDS = ("tensorflow", "jax", "torch")


def _number(kind: Callable[[str], float], check: Callable[[float], bool], allowed: str):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number; {allowed}") from None
        if isinstance(value, float) and not math.isfinite(value) or not check(value):
            raise argparse.ArgumentTypeError(f"{text!r} is out of range; {allowed}")
        return value

    return parse


positive_int = _number(int, lambda x: x > 0, "expected an integer > 0")
nonnegative_int = _number(int, lambda x: x >= 0, "expected an integer >= 0")
positive_float = _number(float, lambda x: x > 0, "expected a finite number > 0")
nonnegative_float = _number(float, lambda x: x >= 0, "expected a finite number >= 0")
beta = _number(float, lambda x: 0 <= x < 1, "expected a number in [0, 1)")
rate = beta  # a dropout rate: [0, 1) too


class Parser(argparse.ArgumentParser):
    """Keeps examples and the defaults' help readable."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)


TRAIN_EXAMPLES = """
examples:
  adamkit train                                   # the seed's example: 3 epochs, adamkit.Adam
  adamkit train --optimizer keras-adam            # the same with keras.optimizers.Adam
  adamkit train --optimizer adamw --weight-decay 0.01 --epochs 5
  adamkit train --backend jax --data ~/mnist.npz --out runs/jax
  adamkit train --preset fast                     # the quickest recipe to the seed's accuracy
  adamkit train --state-dtype int8                # 8-bit optimizer state (~2 bytes/parameter)
  adamkit train --checkpoint-dir ckpt --checkpoint-every 500 --resume   # survives being killed
  export TF_CONFIG='{"cluster": {"worker": ["host1:12345", "host2:12345"]},
                    "task": {"type": "worker", "index": 0}}'   # index 1 on host2
  adamkit train --distribute multi-worker --checkpoint-dir /shared/ckpt   # on each host
"""


def build_parser() -> argparse.ArgumentParser:
    from adamkit.train import OPTIMIZERS, SCHEDULES

    parser = Parser(
        prog="adamkit",
        description="The Adam family of optimizers for Keras 3, and the jobs around them.",
        epilog=textwrap.dedent(
            """
            examples:
              adamkit train                      # train the seed's MNIST model with adamkit.Adam
              adamkit train --help               # every training flag
              adamkit reproduce reddi            # Reddi et al.'s counterexample, Adam vs AMSGrad
            """
        ),
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    train = commands.add_parser(
        "train",
        help="train the seed's MLP on MNIST",
        description="Train the seed's MLP (Flatten, Dense 128 relu, Dropout 0.2, Dense 10) on "
        "MNIST, validate on the test set, and write history (JSON, CSV), a plot, the model and "
        "a run summary into --out.",
        epilog=TRAIN_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("--preset", choices=["seed", "fast"], default="seed",
                       help="seed (default): the seed's recipe; fast: the quickest recipe found to "
                       "reach the seed's accuracy (3 epochs, batch 256, lr 0.012 with cosine "
                       "decay); explicit "
                       "flags override it")
    train.add_argument("--epochs", type=positive_int, help="default: 3")
    train.add_argument("--batch-size", type=positive_int, help="default: 32")
    train.add_argument("--optimizer", choices=OPTIMIZERS, default="adam",
                       help="default: adam; keras-adam is keras.optimizers.Adam, for comparison")
    train.add_argument("--learning-rate", type=positive_float,
                       help="default: the optimizer's own (0.001 for adam)")
    train.add_argument("--beta-1", type=beta, help="default: 0.9")
    train.add_argument("--beta-2", type=beta, help="default: 0.999")
    train.add_argument("--epsilon", type=nonnegative_float,
                       help="default: the optimizer's own (1e-8; 1e-7 for keras-adam)")
    train.add_argument("--weight-decay", type=nonnegative_float,
                       help="decoupled weight decay; default: none (0.01 for adamw)")
    train.add_argument("--schedule", choices=SCHEDULES,
                       help="constant: the learning rate throughout (the seed's; default); cosine: "
                       "it falls to 0 over the run along half a cosine")
    train.add_argument("--dropout", type=rate, metavar="RATE",
                       help="the model's dropout rate; default: 0.2 (the seed's)")
    train.add_argument("--state-dtype", choices=["float32", "bfloat16", "int8"],
                       help="how optimizer state is stored (adamkit optimizers); default: float32")
    train.add_argument("--precision", choices=["float32", "mixed_float16", "mixed_bfloat16"],
                       default="float32", help="Keras dtype policy; default: float32")
    train.add_argument("--distribute", choices=["mirrored", "multi-worker"],
                       help="mirrored: tf.distribute.MirroredStrategy over the local devices "
                            "(ADAMKIT_CPU_DEVICES=N splits a CPU into N); multi-worker: "
                            "MultiWorkerMirroredStrategy over the workers in TF_CONFIG")
    train.add_argument("--steps-per-execution", type=positive_int, metavar="N",
                       help="training steps per call of Keras's train function (the same steps, "
                       "less Python); default: 32, and 1 (the only choice there) on PyTorch "
                       "and with --distribute")
    train.add_argument("--skip-nonfinite", action="store_true",
                       help="skip (and count) steps whose gradients hold NaN or Inf; default: off")
    train.add_argument("--backend", choices=BACKENDS, default=keras.backend.backend(),
                       help="Keras backend (default: $KERAS_BACKEND or tensorflow)")
    train.add_argument("--seed", type=nonnegative_int, default=0, help="default: 0")
    train.add_argument("--data", metavar="PATH",
                       help="mnist.npz or a folder of the four MNIST IDX files (gzipped or not)")
    train.add_argument("--out", metavar="DIR", help="default: a new folder under runs/")
    train.add_argument("--checkpoint-dir", metavar="DIR",
                       help="save checkpoints here (at each epoch's end, and see --checkpoint-every)")
    train.add_argument("--checkpoint-every", type=positive_int, metavar="STEPS",
                       help="also save every STEPS optimizer steps")
    train.add_argument("--keep", type=positive_int, default=3, metavar="N",
                       help="keep the newest N checkpoints; default: 3")
    train.add_argument("--resume", action="store_true",
                       help="continue from the newest valid checkpoint in --checkpoint-dir")
    train.set_defaults(handler=run_train)

    reproduce = commands.add_parser("reproduce", help="reproduce a paper's experiment")
    reproduce.add_argument("paper", choices=["reddi", "kingma-ba"])
    reproduce.add_argument("--out", metavar="DIR", default="runs/reproduce",
                           help="where plots and results go (default: runs/reproduce)")
    reproduce.add_argument("--steps", type=positive_int,
                           help="reddi: steps per setting (default: the paper-sized run)")
    reproduce.add_argument("--quick", action="store_true",
                           help="kingma-ba: a smaller run (fewer epochs and samples) for tests")
    reproduce.add_argument("--data", metavar="PATH", help="kingma-ba: as for train")
    reproduce.set_defaults(handler=run_reproduce)

    bench = commands.add_parser(
        "bench", help="time optimizer steps against peers (prints ratios)",
        description="Time optimizer steps against peers in one run (TensorFlow backend). `step`: a "
        "dense Adam step for adamkit's paths and every peer, against the memory-bandwidth limit. "
        "`lazy`: an embedding table's update against the number of rows a sparse gradient touches.",
    )
    bench.add_argument("suite", choices=["step", "lazy"])
    bench.add_argument("--sizes", type=positive_int, nargs="+", default=[1, 10, 50],
                       help="step: millions of parameters (default: 1 10 50)")
    bench.add_argument("--rows", type=positive_int, default=1_000_000,
                       help="lazy: table rows (default: 1,000,000)")
    bench.add_argument("--touched", type=positive_int, nargs="+",
                       default=[100, 1_000, 10_000, 100_000], help="lazy: rows touched per step")
    bench.add_argument("--repeats", type=positive_int, default=10, help="timed steps (median)")
    bench.add_argument("--rounds", type=positive_int, default=3,
                       help="step: rounds in which the paths take turns (median; default: 3)")
    bench.add_argument("--out", metavar="DIR", default="runs/bench",
                       help="where bench_<suite>.json and .png go (default: runs/bench)")
    bench.set_defaults(handler=run_bench)
    return parser


def run_train(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from adamkit.data import DataError
    from adamkit.train import (
        PRESETS,
        CheckpointConflict,
        TrainSettings,
        WorkerLost,
        make_optimizer,
        one_step_per_call,
        prepare_strategy,
        train,
    )

    for flag in ("checkpoint_every", "resume"):
        if getattr(args, flag) and args.checkpoint_dir is None:
            parser.error(f"--{flag.replace('_', '-')} needs --checkpoint-dir")
    if args.distribute and keras.backend.backend() != "tensorflow":
        parser.error(f"--distribute {args.distribute} needs the TensorFlow backend; this is "
                     f"{keras.backend.backend()}")
    single = one_step_per_call(args.distribute)
    if (args.steps_per_execution or 1) > 1 and single:
        parser.error(f"--steps-per-execution {args.steps_per_execution}: {single}; leave it out "
                     "or pass 1")
    preset = dict(PRESETS[args.preset])
    names = {"learning_rate": args.learning_rate, "beta_1": args.beta_1, "beta_2": args.beta_2,
             "epsilon": args.epsilon, "weight_decay": args.weight_decay}
    given = {k: v for k, v in names.items() if v is not None}
    if args.skip_nonfinite:
        given["skip_nonfinite"] = True
    if args.state_dtype is not None:
        given["state_dtype"] = args.state_dtype
    preset["hyperparameters"] = {**preset.get("hyperparameters", {}), **given}
    for flag in ("epochs", "batch_size", "dropout", "schedule"):
        if getattr(args, flag) is not None:
            preset[flag] = getattr(args, flag)
    settings = TrainSettings(optimizer=args.optimizer, seed=args.seed, data=args.data,
                             out=args.out, checkpoint_dir=args.checkpoint_dir,
                             checkpoint_every=args.checkpoint_every, keep=args.keep,
                             resume=args.resume, precision=args.precision,
                             distribute=args.distribute,
                             steps_per_execution=args.steps_per_execution, **preset)
    try:  # before the check below initialises TensorFlow's devices
        prepare_strategy(args.distribute)
    except ValueError as error:
        parser.error(f"--distribute {args.distribute}: {error}")
    try:  # hyperparameters the optimizer rejects are the user's to fix: a usage message
        make_optimizer(settings.optimizer, settings.hyperparameters)
    except (ValueError, TypeError) as error:
        parser.error(f"--optimizer {args.optimizer}: {error}")
    try:
        train(settings)
    except CheckpointConflict as error:
        parser.error(f"--checkpoint-dir {args.checkpoint_dir}: {error}")
    except WorkerLost as error:
        advice = (f"start every worker again with --resume to continue from the newest checkpoint "
                  f"in {args.checkpoint_dir}" if args.checkpoint_dir else
                  "with --checkpoint-dir a rerun could resume instead of starting over")
        print(f"adamkit: error: lost a worker of the multi-worker run ({error}). The job has "
              f"stopped; {advice}.", file=sys.stderr)
        return 1
    except DataError as error:
        if args.data is not None:
            parser.error(f"--data {args.data}: {error}")
        print(f"adamkit: error: {error}", file=sys.stderr)
        return 1
    return 0


def run_reproduce(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from adamkit import reproduce

    if args.paper == "reddi":
        reproduce.reddi(args.out, steps=args.steps)
    else:
        from adamkit.data import DataError

        try:
            reproduce.kingma_ba(args.out, quick=args.quick, data=args.data)
        except DataError as error:
            print(f"adamkit: error: {error}", file=sys.stderr)
            return 1
    return 0


def run_bench(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from adamkit import bench

    if keras.backend.backend() != "tensorflow":
        parser.error("`adamkit bench` runs on the TensorFlow backend: use --backend tensorflow")
    if args.suite == "lazy" and any(k > args.rows for k in args.touched):
        parser.error(f"--touched: cannot touch more rows than --rows {args.rows}")
    if args.suite == "step":
        results = bench.step(sizes=args.sizes, repeats=args.repeats, rounds=args.rounds)
    else:
        results = bench.lazy(rows=args.rows, touched=args.touched, repeats=args.repeats)
    bench.save(results, args.suite, args.out)
    print(f"adamkit: wrote {args.out}/bench_{args.suite}.json and .png")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    subparser = parser._subparsers._group_actions[0].choices[args.command]
    if unknown:  # reported by the subcommand, so that its usage line is the one shown
        subparser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if getattr(args, "backend", keras.backend.backend()) != keras.backend.backend():
        subparser.error(
            f"--backend {args.backend}: Keras was already imported with the "
            f"{keras.backend.backend()} backend; run the `adamkit` command, or set KERAS_BACKEND."
        )
    return args.handler(args, subparser)
