"""Entry point of the ``adamkit`` command: reads and checks the arguments, then hands over.

Importing ``adamkit`` imports Keras, and Keras starts its backend (TensorFlow takes seconds and
prints its start-up log) and fixes it for the process. So this module, which lies outside the
``adamkit`` package, parses the command line first, from names it reads out of
``adamkit/choices.py`` without running the package's ``__init__``: ``--help``, ``--version`` and
every usage error answer before any framework loads. Only a command that will run sets the
backend and imports ``adamkit.cli``, where the commands live.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys
import textwrap
from collections.abc import Callable
from types import ModuleType


def _choices() -> ModuleType:
    """``adamkit.choices``, loaded from its file without importing the ``adamkit`` package (whose
    ``__init__`` imports Keras); the module itself where the package is already imported."""
    if "adamkit" in sys.modules:
        from adamkit import choices

        return choices
    package = importlib.util.find_spec("adamkit")  # finds the package without running it
    path = os.path.join(package.submodule_search_locations[0], "choices.py")
    spec = importlib.util.spec_from_file_location("adamkit_cli._choices", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


choices = _choices()
BACKENDS = choices.BACKENDS


def version() -> str:
    """The installed distribution's version."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("adamkit")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def default_backend() -> str:
    """Keras's backend: the one it runs where it is imported, else the one it will pick, found as
    Keras finds it (``KERAS_BACKEND``, else ``keras.json`` in ``KERAS_HOME`` or ``~/.keras``, else
    TensorFlow) without importing it."""
    if "keras" in sys.modules:
        return sys.modules["keras"].backend.backend()
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    home = os.environ.get("KERAS_HOME")
    if home is None:
        base = os.path.expanduser("~")
        home = os.path.join(base if os.access(base, os.W_OK) else "/tmp", ".keras")
    try:
        with open(os.path.join(os.path.expanduser(home), "keras.json")) as f:
            return json.load(f).get("backend", "tensorflow")
    except (OSError, ValueError, AttributeError):
        return "tensorflow"


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
# Keras seeds NumPy's generator, which takes 32 bits.
seed = _number(int, lambda x: 0 <= x < 2**32, f"expected an integer in [0, {2**32 - 1}]")


def folder(text: str) -> str:
    """A folder a command writes into: one that exists, or one that can be made (its nearest
    existing parent a writable folder). Checked with the other flags, so that a run does not train
    for minutes and then fail to save, leaving its other folders behind."""
    expanded = os.path.expanduser(text)  # as a shell would, had the ~ not been quoted
    path = os.path.realpath(expanded)  # a link's target, and .. after it, as mkdir sees them
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        what = "is a file" if existing == path else f"cannot be made: {existing} is a file"
        raise argparse.ArgumentTypeError(f"{text!r} {what}; expected a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "" if existing == path else f"cannot be made: {existing} "
        raise argparse.ArgumentTypeError(f"{text!r} {what}is not writable")
    return expanded


class Parser(argparse.ArgumentParser):
    """Keeps examples and the defaults' help readable; ``commands`` maps each subcommand's name to
    its parser (``build_parser`` fills it), whose usage line a usage error about its flags shows."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)
        self.commands: dict[str, argparse.ArgumentParser] = {}


TRAIN_EXAMPLES = """
examples:
  adamkit train                                   # the tutorial's recipe: 3 epochs, adamkit.Adam
  adamkit train --optimizer keras-adam            # the same with keras.optimizers.Adam
  adamkit train --optimizer adamw --weight-decay 0.01 --epochs 5
  adamkit train --backend jax --data ~/mnist.npz --out runs/jax
  adamkit train --preset fast                     # the quickest recipe to the tutorial's 0.9725
  adamkit train --state-dtype int8                # 8-bit optimizer state (~2 bytes/parameter)
  adamkit train --checkpoint-dir ckpt --checkpoint-every 500 --resume   # survives being killed
  export TF_CONFIG='{"cluster": {"worker": ["host1:12345", "host2:12345"]},
                    "task": {"type": "worker", "index": 0}}'   # index 1 on host2
  adamkit train --distribute multi-worker --checkpoint-dir /shared/ckpt   # on each host
"""


def add_optimizer_flags(parser: argparse.ArgumentParser) -> None:
    """The tutorial model's optimizer and dropout flags, as ``adamkit train`` takes them (the
    learning rate aside: commands that search for it leave it out)."""
    parser.add_argument("--optimizer", choices=choices.OPTIMIZERS, default="adam",
                        help="default: adam; keras-adam is keras.optimizers.Adam, for comparison")
    parser.add_argument("--beta-1", type=beta, help="default: 0.9")
    parser.add_argument("--beta-2", type=beta, help="default: 0.999")
    # > 0: the tutorial's model has weights whose gradient is always 0 (MNIST's blank pixels),
    # where ε = 0 makes Adam's step 0/0
    parser.add_argument("--epsilon", type=positive_float,
                        help="default: the optimizer's own (1e-8; 1e-7 for keras-adam)")
    parser.add_argument("--weight-decay", type=nonnegative_float,
                        help="decoupled weight decay; default: none (0.01 for adamw)")
    parser.add_argument("--dropout", type=rate, metavar="RATE",
                        help="the model's dropout rate; default: 0.2 (the tutorial's)")
    parser.add_argument("--state-dtype", choices=choices.STATE_DTYPES,
                        help="how optimizer state is stored (adamkit optimizers); default: float32")


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    """Where a tutorial-model command runs and on what: ``--backend``, ``--seed``, ``--data``."""
    parser.add_argument("--backend", choices=BACKENDS, default=default_backend(),
                        help="Keras backend (default: $KERAS_BACKEND or tensorflow)")
    parser.add_argument("--seed", type=seed, default=0, help="default: 0")
    parser.add_argument("--data", metavar="PATH",
                        help="mnist.npz or a folder of the four MNIST IDX files (gzipped or not)")


def add_train_examples_flag(parser: argparse.ArgumentParser) -> None:
    """``--train-examples N``: train on the first N of MNIST's training examples only."""
    parser.add_argument("--train-examples", type=positive_int, metavar="N",
                        help="train on the first N of MNIST's 60,000 training examples (quicker, "
                        "noisier); validation is on the whole test set either way; default: all")


def optimizer_list(text: str) -> list[str]:
    """``--optimizers``: comma-separated family names, returned in the family's order."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in choices.FAMILY_NAMES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"{text!r}: {'unknown ' + ', '.join(unknown) if unknown else 'no name given'}; expected "
            f"a comma-separated list of {', '.join(choices.FAMILY_NAMES)}")
    return [name for name in choices.FAMILY_NAMES if name in names]


TUNE_EXAMPLES = """
examples:
  adamkit tune --trials 30                        # SQLite in runs/tune; run again to resume
  adamkit tune --trials 20 --epochs 1 --optimizers adam,adamw --out runs/quick
  adamkit tune --trials 100 --storage postgresql://user:pw@dbhost/optuna --study mnist
                                                  # the same line on every machine: one study
"""


def add_tune_command(commands) -> None:
    """``adamkit tune``: an Optuna study over the Adam family's hyperparameters."""
    tune = commands.add_parser(
        "tune", help="tune the tutorial model's optimizer with Optuna (pip install adamkit[tune])",
        description=textwrap.fill(
            "Search the learning rate (log scale), beta_1, beta_2 (as 1 - beta_2, log scale), "
            "epsilon (log scale), weight decay (AdamW only) and the family member for the tutorial's "
            "MNIST model with Optuna's TPE sampler. Each trial trains as `adamkit train` does and "
            "reports its validation accuracy after every epoch; with the default median pruner "
            "(optuna.pruners.MedianPruner) a trial whose accuracy falls below the median of earlier "
            "trials' at the same epoch is stopped. Writes trials.csv, best.json (with the `adamkit "
            "train` command that reproduces the best trial) and plots into --out. Several processes "
            "or machines share one study through the same --storage and --study; running the "
            "command again resumes it.", width=79),
        epilog=TUNE_EXAMPLES,
    )
    tune.add_argument("--trials", type=positive_int, default=20, metavar="N",
                      help="trials the study should hold in all (finished or pruned, across every "
                      "process sharing it); a resumed study runs only the rest; default: 20")
    tune.add_argument("--epochs", type=positive_int, default=3,
                      help="epochs per trial; default: 3 (the tutorial's)")
    tune.add_argument("--optimizers", type=optimizer_list, default=list(choices.FAMILY_NAMES),
                      metavar="LIST", help="family members to search, comma-separated; default: "
                      + ",".join(choices.FAMILY_NAMES))
    tune.add_argument("--batch-size", type=positive_int, default=32, help="default: 32")
    tune.add_argument("--storage", metavar="URL",
                      help="an Optuna storage URL (sqlite:///path.db, postgresql://user:pw@host/db, "
                      "mysql://...); default: sqlite:///OUT/study.db")
    tune.add_argument("--study", default="adamkit-tune", metavar="NAME",
                      help="the study's name in the storage; default: adamkit-tune")
    tune.add_argument("--pruner", choices=choices.PRUNERS, default="median",
                      help="median (default): optuna.pruners.MedianPruner (5 trials before it "
                      "prunes; never at the last epoch); none: every trial runs all its epochs")
    add_run_flags(tune)
    add_train_examples_flag(tune)
    tune.add_argument("--out", type=folder, metavar="DIR", default="runs/tune",
                      help="trials.csv, best.json, plots (and study.db without --storage); "
                      "default: runs/tune")


LR_FIND_EXAMPLES = """
examples:
  adamkit lr-find                                 # adamkit.Adam on the tutorial's model
  adamkit lr-find --optimizer adamw --weight-decay 0.01 --out runs/lr-adamw
  adamkit lr-find --steps 300 --start-lr 1e-6 --end-lr 1 --seed 1
  adamkit train --learning-rate 0.002             # then train with the suggestion
"""


def add_lr_find_command(commands) -> None:
    """``adamkit lr-find``: the learning-rate range test on the tutorial's model."""
    lr_find = commands.add_parser(
        "lr-find", help="suggest a learning rate for the tutorial's model (a range test)",
        description=textwrap.fill(
            "Smith's learning-rate range test on the tutorial's MNIST model: train for --steps "
            "batches with the learning rate rising exponentially from --start-lr to --end-lr, "
            "stop once the smoothed loss passes 4 times its best, and suggest a learning rate by "
            "the valley rule (the midpoint, in log learning rate, of the smoothed loss's descent "
            "from 10% to 90% of its drop). Prints the suggestion and writes lr_find.png and "
            "lr_find.json into --out.", width=79),
        epilog=LR_FIND_EXAMPLES,
    )
    add_optimizer_flags(lr_find)
    lr_find.add_argument("--batch-size", type=positive_int, default=32, help="default: 32")
    lr_find.add_argument("--start-lr", type=positive_float, default=1e-7,
                         help="the first learning rate; default: 1e-7")
    lr_find.add_argument("--end-lr", type=positive_float, default=10.0,
                         help="the last learning rate; default: 10")
    lr_find.add_argument("--steps", type=_number(int, lambda x: x >= choices.LR_FIND_MIN_STEPS,
                                                 f"expected an integer >= {choices.LR_FIND_MIN_STEPS}"),
                         default=200, help="steps of the ramp; default: 200")
    add_run_flags(lr_find)
    lr_find.add_argument("--out", type=folder, metavar="DIR", help="default: a new folder under runs/")


def add_checkpoint_flags(parser: argparse.ArgumentParser) -> None:
    """``adamkit train``'s checkpoints: where, how often, how many, and resuming."""
    parser.add_argument("--checkpoint-dir", type=folder, metavar="DIR",
                        help="save checkpoints here (at each epoch's end, and see --checkpoint-every)")
    parser.add_argument("--checkpoint-every", type=positive_int, metavar="STEPS",
                        help="also save every STEPS optimizer steps")
    parser.add_argument("--keep", type=positive_int, default=3, metavar="N",
                        help="keep the newest N checkpoints; default: 3")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the newest valid checkpoint in --checkpoint-dir")


def add_train_command(commands) -> None:
    """``adamkit train``: the tutorial's MNIST model trained, with every option of the job."""
    train = commands.add_parser(
        "train",
        help="train the MNIST model of the \"Adam Optimizer in TensorFlow\" tutorial",
        description=textwrap.fill(
            'Train the MLP of the "Adam Optimizer in TensorFlow" tutorial (Flatten, Dense '
            "128 relu, Dropout 0.2, Dense 10) on MNIST, validate on the test set, and write "
            "history (JSON, CSV), a plot, the model and a run summary into --out. Keras draws its "
            "progress bar when the output is a terminal, and prints one line per epoch otherwise.",
            width=79),
        epilog=TRAIN_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("--preset", choices=choices.PRESETS, default="seed",
                       help="seed (default): the tutorial's recipe; fast: the quickest recipe found to "
                       "reach the tutorial's accuracy (3 epochs, batch 256, lr 0.012 with cosine "
                       "decay); explicit "
                       "flags override it")
    train.add_argument("--epochs", type=positive_int, help="default: 3")
    train.add_argument("--batch-size", type=positive_int, help="default: 32")
    train.add_argument("--learning-rate", type=positive_float,
                       help="default: the optimizer's own (0.001 for adam)")
    add_optimizer_flags(train)
    train.add_argument("--schedule", choices=choices.SCHEDULES,
                       help="constant: the learning rate throughout (the tutorial's; default); cosine: "
                       "it falls to 0 over the run along half a cosine")
    train.add_argument("--precision", choices=choices.PRECISIONS,
                       default="float32", help="Keras dtype policy; default: float32")
    train.add_argument("--distribute", choices=choices.DISTRIBUTE,
                       help="mirrored: tf.distribute.MirroredStrategy over the local devices "
                            "(ADAMKIT_CPU_DEVICES=N splits a CPU into N); multi-worker: "
                            "MultiWorkerMirroredStrategy over the workers in TF_CONFIG")
    train.add_argument("--steps-per-execution", type=positive_int, metavar="N",
                       help="training steps per call of Keras's train function (the same steps, "
                       "less Python); default: 32, and 1 (the only choice there) on PyTorch "
                       "and with --distribute")
    train.add_argument("--skip-nonfinite", action="store_true",
                       help="skip (and count) steps whose gradients hold NaN or Inf; default: off")
    add_run_flags(train)
    add_train_examples_flag(train)
    train.add_argument("--out", type=folder, metavar="DIR", help="default: a new folder under runs/")
    train.add_argument("--tensorboard", type=folder, metavar="DIR",
                       help="log the optimizer monitor's TensorBoard scalars (update/weight ratio, "
                       "gradient norm, effective step size, ε-dominated fraction per variable; "
                       "every 100 steps) into DIR, and draw them into optimizer.png in --out; "
                       "needs the tensorboard package (adamkit[monitor])")
    add_checkpoint_flags(train)


def add_reproduce_command(commands) -> None:
    """``adamkit reproduce``: a paper's experiment."""
    reproduce = commands.add_parser("reproduce", help="reproduce a paper's experiment")
    reproduce.add_argument("paper", choices=choices.PAPERS)
    reproduce.add_argument("--out", type=folder, metavar="DIR", default="runs/reproduce",
                           help="where plots and results go (default: runs/reproduce)")
    reproduce.add_argument("--steps", type=positive_int,
                           help="reddi: steps per setting (default: the paper-sized run)")
    reproduce.add_argument("--quick", action="store_true",
                           help="kingma-ba: a smaller run (fewer epochs and samples) for tests")
    reproduce.add_argument("--data", metavar="PATH", help="kingma-ba: as for train")


def add_bench_command(commands) -> None:
    """``adamkit bench``: optimizer steps timed against the peers."""
    bench = commands.add_parser(
        "bench", help="time optimizer steps against peers (prints ratios)",
        description="Time optimizer steps against peers in one run (TensorFlow backend). `step`: a "
        "dense Adam step for adamkit's paths and every peer, against the memory-bandwidth limit. "
        "`lazy`: an embedding table's update against the number of rows a sparse gradient touches.",
    )
    bench.add_argument("suite", choices=choices.BENCH_SUITES)
    bench.add_argument("--sizes", type=positive_int, nargs="+", default=[1, 10, 50],
                       help="step: millions of parameters (default: 1 10 50)")
    bench.add_argument("--rows", type=positive_int, default=1_000_000,
                       help="lazy: table rows (default: 1,000,000)")
    bench.add_argument("--touched", type=positive_int, nargs="+",
                       default=[100, 1_000, 10_000, 100_000], help="lazy: rows touched per step")
    bench.add_argument("--repeats", type=positive_int, default=10, help="timed steps (median)")
    bench.add_argument("--rounds", type=positive_int, default=3,
                       help="rounds in which the paths (step) or optimizers (lazy) take turns "
                       "(median; default: 3)")
    bench.add_argument("--out", type=folder, metavar="DIR", default="runs/bench",
                       help="where bench_<suite>.json (the table, the command and the machine) "
                       "and .png go (default: runs/bench; benchmarks/README.md shows "
                       "benchmarks/results)")


def build_parser() -> Parser:
    """The ``adamkit`` command's parser: every subcommand and flag (no framework is imported)."""
    parser = Parser(
        prog="adamkit",
        description="The Adam family of optimizers for Keras 3, and the jobs around them.",
        epilog=textwrap.dedent(
            """
            examples:
              adamkit train                      # train the tutorial's MNIST model with adamkit.Adam
              adamkit train --help               # every training flag
              adamkit reproduce reddi            # Reddi et al.'s counterexample, Adam vs AMSGrad
            """
        ),
    )
    parser.add_argument("--version", action="version", version=f"adamkit {version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    for add in (add_train_command, add_tune_command, add_lr_find_command,
                add_reproduce_command, add_bench_command):
        add(commands)
    parser.commands = dict(commands.choices)  # the subparsers action's name → parser
    return parser


def check_train(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """The combinations of ``adamkit train``'s flags that are wrong whatever the framework says."""
    for flag in ("checkpoint_every", "resume"):
        if getattr(args, flag) and args.checkpoint_dir is None:
            parser.error(f"--{flag.replace('_', '-')} needs --checkpoint-dir")
    if args.distribute and args.backend != "tensorflow":
        parser.error(f"--distribute {args.distribute} needs the TensorFlow backend; this is "
                     f"{args.backend}")
    single = choices.one_step_per_call(args.backend, args.distribute)
    if (args.steps_per_execution or 1) > 1 and single:
        parser.error(f"--steps-per-execution {args.steps_per_execution}: {single}; leave it out "
                     "or pass 1")
    if args.tensorboard is not None and args.distribute == "multi-worker":
        parser.error("--tensorboard needs model.fit, which --distribute multi-worker does not use")
    if args.optimizer == "keras-adam":  # adamkit's own options, which keras.optimizers.Adam lacks
        for flag, given in (("skip_nonfinite", args.skip_nonfinite),
                            ("state_dtype", args.state_dtype is not None)):
            if given:
                parser.error(f"--optimizer keras-adam: keras.optimizers.Adam takes no {flag} "
                             f"(--{flag.replace('_', '-')} is for adamkit's optimizers)")


def check_lr_find(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """The combinations of ``adamkit lr-find``'s flags that are wrong whatever the framework says."""
    if args.end_lr <= args.start_lr:
        parser.error(f"--end-lr {args.end_lr:g} must be larger than --start-lr {args.start_lr:g}")
    if args.optimizer == "keras-adam" and args.state_dtype is not None:
        parser.error("--optimizer keras-adam: keras.optimizers.Adam takes no state_dtype "
                     "(--state-dtype is for adamkit's optimizers)")


def check_bench(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if default_backend() != "tensorflow":
        parser.error(f"`adamkit bench` runs on the TensorFlow backend, not {default_backend()}: "
                     "set KERAS_BACKEND=tensorflow, or leave it unset")
    if args.suite == "lazy" and any(k > args.rows for k in args.touched):
        parser.error(f"--touched: cannot touch more rows than --rows {args.rows}")


CHECKS = {"train": check_train, "bench": check_bench}
CHECKS["lr-find"] = check_lr_find


def parse(argv: list[str] | None = None) -> tuple[argparse.Namespace, argparse.ArgumentParser]:
    """``argv`` parsed and checked, with the subcommand's parser (for later usage errors); every
    usage error exits here, with code 2, before any framework is imported."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    subparser = parser.commands[args.command]
    if unknown:  # reported by the subcommand, so that its usage line is the one shown
        subparser.error(f"unrecognized arguments: {' '.join(unknown)}")
    # argparse does not hold a default to its choices: --backend's comes from the environment
    backend = getattr(args, "backend", None) or default_backend()
    if backend not in BACKENDS:
        subparser.error(f"the Keras backend {backend!r} (KERAS_BACKEND, or keras.json in "
                        f"KERAS_HOME or ~/.keras) is not one adamkit runs on; expected "
                        f"{', '.join(BACKENDS)}: set KERAS_BACKEND"
                        + (", or pass --backend" if hasattr(args, "backend") else ""))
    if args.command in CHECKS:
        CHECKS[args.command](args, subparser)
    return args, subparser


# The modules a Keras backend imports (its extra installs them).
FRAMEWORKS = ("tensorflow", "jax", "jaxlib", "torch")


def main(argv: list[str] | None = None) -> int:
    args, subparser = parse(sys.argv[1:] if argv is None else list(argv))
    if getattr(args, "backend", None) in BACKENDS:
        os.environ["KERAS_BACKEND"] = args.backend  # read when Keras is first imported, below
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up log, unless asked for

    try:
        from adamkit.cli import run
    except ModuleNotFoundError as error:
        framework = (error.name or "").split(".")[0]
        if framework not in FRAMEWORKS:
            raise
        backend = os.environ.get("KERAS_BACKEND", "tensorflow")
        subparser.exit(2, f"adamkit: the Keras backend {backend!r} needs {framework!r}, which is "
                          f"not installed: pip install 'adamkit[{backend}]', or choose an installed "
                          "backend with --backend or KERAS_BACKEND.\n")
    return run(args, subparser)


if __name__ == "__main__":
    sys.exit(main())
