"""``adamkit``'s subcommands, run once ``adamkit_cli`` has parsed and checked the arguments (before
any framework was imported): every bad flag value ends in a usage message and exit code 2."""

from __future__ import annotations

import argparse
import importlib.util
import sys

import keras

from adamkit_cli import build_parser, parse

__all__ = ["build_parser", "main", "parse", "run"]


def train_settings(args: argparse.Namespace):
    """``adamkit train``'s ``TrainSettings``: the chosen preset, with the flags given over it."""
    from adamkit.train import PRESETS, TrainSettings

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
    return TrainSettings(optimizer=args.optimizer, seed=args.seed, data=args.data,
                         train_examples=args.train_examples,
                         out=args.out, checkpoint_dir=args.checkpoint_dir,
                         checkpoint_every=args.checkpoint_every, keep=args.keep,
                         resume=args.resume, precision=args.precision,
                         distribute=args.distribute,
                         steps_per_execution=args.steps_per_execution,
                         tensorboard=args.tensorboard, **preset)


def check_train_settings(args: argparse.Namespace, parser: argparse.ArgumentParser,
                         settings) -> None:
    """The usage errors of ``adamkit train`` that only the framework or an extra can find."""
    from adamkit.train import make_optimizer, prepare_strategy

    if args.tensorboard is not None and importlib.util.find_spec("tensorboard") is None:
        parser.error("--tensorboard needs the tensorboard package: pip install 'adamkit[monitor]'")
    try:  # before the check below initialises TensorFlow's devices
        prepare_strategy(args.distribute)
    except ValueError as error:
        parser.error(f"--distribute {args.distribute}: {error}")
    try:  # hyperparameters the optimizer rejects are the user's to fix: a usage message
        make_optimizer(settings.optimizer, settings.hyperparameters)
    except (ValueError, TypeError) as error:
        parser.error(f"--optimizer {args.optimizer}: {error}")


def run_train(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from adamkit.data import DataError
    from adamkit.train import CheckpointConflict, WorkerLost, train

    settings = train_settings(args)
    check_train_settings(args, parser, settings)
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
            if args.data is not None:
                parser.error(f"--data {args.data}: {error}")
            print(f"adamkit: error: {error}", file=sys.stderr)
            return 1
    return 0


def run_bench(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from adamkit.bench import command as bench

    if args.suite == "step":
        results = bench.step(sizes=args.sizes, repeats=args.repeats, rounds=args.rounds)
    else:
        results = bench.lazy(rows=args.rows, touched=args.touched, repeats=args.repeats,
                             rounds=args.rounds)
    bench.save(results, args.suite, args.out, bench.command_line(args.suite, vars(args)))
    print(f"adamkit: wrote {args.out}/bench_{args.suite}.json and .png")
    return 0


def run_tune(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    try:
        from adamkit.tools import tune
    except ImportError as error:  # Optuna, an extra, is missing
        print(f"adamkit: error: {error}", file=sys.stderr)
        return 1
    return tune.command(args, parser)


HANDLERS = {"train": run_train, "reproduce": run_reproduce, "bench": run_bench}
HANDLERS["tune"] = run_tune


def run_lr_find(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from adamkit.data import DataError
    from adamkit.tools.lr_find import tutorial_lr_find
    from adamkit.train import make_optimizer

    names = {"beta_1": args.beta_1, "beta_2": args.beta_2, "epsilon": args.epsilon,
             "weight_decay": args.weight_decay, "state_dtype": args.state_dtype}
    given = {k: v for k, v in names.items() if v is not None}
    try:  # hyperparameters the optimizer rejects are the user's to fix: a usage message
        make_optimizer(args.optimizer, given)
    except (ValueError, TypeError) as error:
        parser.error(f"--optimizer {args.optimizer}: {error}")
    try:
        result, out = tutorial_lr_find(
            args.optimizer, given, dropout=0.2 if args.dropout is None else args.dropout,
            data=args.data, seed=args.seed, batch_size=args.batch_size, start_lr=args.start_lr,
            end_lr=args.end_lr, num_steps=args.steps, out=args.out)
    except DataError as error:
        if args.data is not None:
            parser.error(f"--data {args.data}: {error}")
        print(f"adamkit: error: {error}", file=sys.stderr)
        return 1
    print(f"Stopped: {result.stopped}, after {len(result.learning_rates)} steps "
          f"({result.settings['wall_time_s']:.1f} s)")
    if result.suggestion is None:
        print("adamkit: the loss never fell over the ramp, so there is no suggestion: try a "
              "larger --end-lr or more --steps", file=sys.stderr)
    else:
        print(f"Suggested learning rate: {result.suggestion:.3g}")
    print(f"adamkit: wrote lr_find.png and lr_find.json to {out}/")
    return 0 if result.suggestion is not None else 1


HANDLERS["lr-find"] = run_lr_find


# The commands whose results are plots: they need matplotlib, an extra (adamkit[train]). `adamkit
# train` runs without it, leaving its plot out.
PLOTTING = ("reproduce", "bench", "lr-find")


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Runs the subcommand of ``args`` (from ``adamkit_cli.parse``); ``parser`` is its own, for
    the usage errors only a framework can find."""
    from adamkit.train.artifacts import PLOT_EXTRA, can_plot

    if getattr(args, "backend", keras.backend.backend()) != keras.backend.backend():
        parser.error(
            f"--backend {args.backend}: Keras was already imported with the "
            f"{keras.backend.backend()} backend; run the `adamkit` command, or set KERAS_BACKEND."
        )
    if args.command in PLOTTING and not can_plot():
        print(f"adamkit: error: `adamkit {args.command}` draws its results with matplotlib, which "
              f"is not installed: {PLOT_EXTRA}", file=sys.stderr)
        return 1
    return HANDLERS[args.command](args, parser)


def main(argv: list[str] | None = None) -> int:
    """``adamkit`` in this process (whose Keras backend is already fixed): parse, check, run."""
    return run(*parse(argv))
