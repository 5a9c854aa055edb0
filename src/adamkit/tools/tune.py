"""Tuning the Adam family's hyperparameters with Optuna, on one machine or many.

``tune`` runs an Optuna study over the learning rate (log scale), β1, β2 (searched as 1 − β2 on a
log scale, where its useful values lie), ε (log scale), the weight decay (AdamW only) and the family
member, for any compiled Keras model on any backend. Each trial trains a fresh copy of the model
with the trial's optimizer, reports the validation metric after every epoch (``trial.report``) and
is stopped early when the pruner says it is unpromising. The study lives in an Optuna storage: an
SQLite file on one machine, or any database every machine reaches, so that several processes can
work on one study and a study can be resumed.

``adamkit tune`` (``command``) runs it for the tutorial's MNIST model, training each trial exactly
as ``adamkit train`` does, and writes ``trials.csv``, ``best.json`` (with the ``adamkit train``
command that reproduces the best trial) and plots.

Optuna is an extra: ``pip install 'adamkit[tune]'``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import functools
import json
import logging
import math
import random
import shlex
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras

try:
    import optuna
    import sqlalchemy.exc
except ImportError:  # the extra is missing
    raise ImportError("tuning needs Optuna: pip install 'adamkit[tune]'") from None

from adamkit import choices
from adamkit.train import (
    TrainSettings,
    fit,
    load_data,
    make_optimizer,
    seed_model,
    seed_objective,
    steps_per_execution,
)

__all__ = ["SPACE", "StudyError", "best_train_command", "open_storage", "search_settings", "tune",
           "write_results"]

# The search space: name → (low, high, log scale). β2 is searched as 1 − β2 (0.9 … 0.9999) and
# the weight decay only for AdamW. Stored with the study (search_settings), so a study cannot be
# continued with another space by mistake.
SPACE: dict[str, tuple[float, float, bool]] = {
    "learning_rate": (1e-4, 1e-1, True),
    "beta_1": (0.8, 0.99, False),
    "one_minus_beta_2": (1e-4, 1e-1, True),
    "epsilon": (1e-10, 1e-4, True),
    "weight_decay": (1e-5, 1e-1, True),
}

# The study's user attribute that holds its search settings.
SETTINGS_ATTR = "adamkit_search"
# How long a study without search settings is taken for one that another process has just
# created and is about to give its settings (Optuna creates a study and sets its attributes in
# two steps), before it is called another program's study.
SETTLE_SECONDS = 5.0

# What a trial's optimizer takes, in the order best.json and trials.csv list them.
HYPERPARAMETERS = ("learning_rate", "beta_1", "beta_2", "epsilon", "weight_decay")


class StudyError(Exception):
    """A storage or study that the search cannot use (the user's to fix).

    Args:
        flag: the command-line flag it concerns (``--storage`` or ``--study``).
        message: what is wrong, and what to do.
    """

    def __init__(self, flag: str, message: str) -> None:
        super().__init__(message)
        self.flag = flag


class _Surplus(Exception):
    """A trial created while others already fill the study's count (a race between processes)."""


def _optuna():
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own line per trial instead
    return optuna


def redacted(url: str) -> str:
    """``url`` with its password, if any, replaced by ``***`` (for messages and best.json)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL sqlalchemy can parse: nothing to hide that we could find
        return url


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """Opens (and, where new, initialises) the Optuna storage at ``url``.

    Trials send a heartbeat, so that a trial whose process was killed is marked failed after a few
    minutes and its place in the study is run again.

    Args:
        url: an SQLAlchemy URL Optuna takes: ``sqlite:///path.db``, ``postgresql://user:pw@host/db``,
            ``mysql://...``.

    Returns:
        The storage.

    Raises:
        StudyError: the URL is malformed, its driver is missing, or the database cannot be reached.
    """
    _optuna()
    connect: dict[str, Any] = {}
    if url.startswith("sqlite"):
        connect = {"timeout": 60}  # processes sharing the file wait for each other's writes
    elif url.startswith(("postgresql", "mysql")):
        connect = {"connect_timeout": 10}  # an unreachable server: an error, not a hang
    try:
        for attempt in range(5):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": connect},
                                                      heartbeat_interval=30, grace_period=120)
            except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError,
                    sqlalchemy.exc.OperationalError) as error:
                # Processes opening a new database at once all create Optuna's tables; the
                # losers' "already exists" errors (SQLite's are OperationalErrors) pass once the
                # winner's tables are in place.
                lost_race = not isinstance(error, sqlalchemy.exc.OperationalError) or (
                    "already exists" in str(error))
                if attempt == 4 or not lost_race:
                    raise
                time.sleep(0.5 + random.random())
    except ImportError as error:
        raise StudyError("--storage", f"the database driver is not installed ({error}); for "
                         "PostgreSQL: pip install 'psycopg[binary]'") from None
    except Exception as error:  # sqlalchemy's ArgumentError, OperationalError, …: all the user's
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        kind = ("not a storage URL Optuna takes" if type(error).__name__ in
                ("ArgumentError", "NoSuchModuleError") else "cannot be reached or opened")
        raise StudyError("--storage", f"{kind}: {reason}") from None


def search_settings(optimizers: Sequence[str], epochs: int, batch_size: int, seed: int,
                    monitor: str = "val_accuracy",
                    description: dict[str, Any] | None = None) -> dict[str, Any]:
    """What defines a study's search: the space, the family members and how each trial trains.

    A study keeps them; continuing it with other settings is refused (its trials would not be
    comparable).

    Args:
        optimizers: family members searched (adamkit.FAMILY names).
        epochs: epochs per trial.
        batch_size: batch size of every trial.
        seed: the seed every trial trains with.
        monitor: the validation metric maximised.
        description: anything else that defines the objective (the model, the data).

    Returns:
        A JSON-compatible dict.
    """
    settings = {"space": SPACE, "optimizers": [n for n in choices.FAMILY_NAMES if n in optimizers],
                "epochs": epochs, "batch_size": batch_size, "seed": seed, "monitor": monitor,
                **(description or {})}
    return json.loads(json.dumps(settings))  # tuples as lists: as they come back from storage


def _differences(stored: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    return [f"{key} {json.dumps(stored.get(key))} there, {json.dumps(wanted.get(key))} here"
            for key in sorted(set(stored) | set(wanted)) if stored.get(key) != wanted.get(key)]


def check_study(storage: optuna.storages.BaseStorage, name: str, settings: dict[str, Any]) -> bool:
    """Whether study ``name`` already exists in ``storage``; raises ``StudyError`` where it exists
    with other search settings (or was not made by this search).

    Args:
        storage: an Optuna storage.
        name: the study's name.
        settings: this search's settings (``search_settings``).

    Returns:
        True if the study exists (with these settings), False if it does not exist yet.
    """
    try:
        study_id = storage.get_study_id_from_name(name)
    except KeyError:
        return False
    deadline = time.monotonic() + SETTLE_SECONDS
    while (stored := storage.get_study_user_attrs(study_id).get(SETTINGS_ATTR)) is None:
        if time.monotonic() > deadline:
            raise StudyError("--study", f"study {name!r} exists but was not made by adamkit's "
                             "tuning (it holds no search settings): choose another --study name")
        time.sleep(0.1)
    differences = _differences(stored, settings)
    if differences:
        raise StudyError("--study", f"study {name!r} exists with other search settings ("
                         + "; ".join(differences) + "): run with the same settings to continue "
                         "it, or choose another --study name")
    return True


def _study(storage, name: str, settings: dict[str, Any], pruner: str) -> optuna.Study:
    _optuna()
    check_study(storage, name, settings)
    # Not seeded: processes sharing a study would otherwise draw the same settings.
    sampler = optuna.samplers.TPESampler()
    chosen = (optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0)
              if pruner == "median" else optuna.pruners.NopPruner())
    study = optuna.create_study(storage=storage, study_name=name, direction="maximize",
                                sampler=sampler, pruner=chosen, load_if_exists=True)
    if SETTINGS_ATTR not in study.user_attrs:
        study.set_user_attr(SETTINGS_ATTR, settings)
    check_study(storage, name, settings)  # another process may have created it at the same moment
    return study


def _counted(study: optuna.Study, below: int | None = None) -> int:
    """Trials that count towards the study's total: finished, pruned, running or waiting (not
    failed, nor given up as surplus); with ``below``, only those numbered below it."""
    from optuna.trial import TrialState

    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
    return sum(1 for t in study.get_trials(deepcopy=False, states=states)
               if not t.user_attrs.get("surplus") and (below is None or t.number < below))


def suggest(trial: optuna.Trial, optimizers: Sequence[str]) -> tuple[str, dict[str, float]]:
    """The trial's family member and its hyperparameters, drawn from ``SPACE``.

    Args:
        trial: the Optuna trial.
        optimizers: the family members to choose from.

    Returns:
        ``(name, hyperparameters)`` as ``adamkit.get(name, **hyperparameters)`` takes them.
    """
    def draw(name: str) -> float:
        low, high, log = SPACE[name]
        return trial.suggest_float(name, low, high, log=log)

    name = trial.suggest_categorical("optimizer", list(optimizers))
    hyperparameters = {"learning_rate": draw("learning_rate"), "beta_1": draw("beta_1"),
                       "beta_2": 1.0 - draw("one_minus_beta_2"), "epsilon": draw("epsilon")}
    if name == "adamw":
        hyperparameters["weight_decay"] = draw("weight_decay")
    return name, hyperparameters


def hyperparameters_of(trial: optuna.trial.FrozenTrial) -> tuple[str, dict[str, float]]:
    """The family member and hyperparameters a trial trained with.

    A trial another process is still starting may have drawn only its optimizer (drawn first)
    and some of the rest yet: those drawn so far are returned (a finished trial has them all).
    """
    params = trial.params
    drawn = {name: params[name] for name in ("learning_rate", "beta_1") if name in params}
    if "one_minus_beta_2" in params:
        drawn["beta_2"] = 1.0 - params["one_minus_beta_2"]
    drawn.update({name: params[name] for name in ("epsilon", "weight_decay") if name in params})
    return params["optimizer"], drawn


@functools.cache
def _pruning_callback_class():
    from optuna_integration.keras import KerasPruningCallback

    class EpochPruning(KerasPruningCallback):
        """Optuna's Keras pruning callback, for ``adamkit.train.fit``, which calls ``model.fit``
        once per epoch (so Keras numbers every epoch 0): it counts the epochs itself (reported as
        steps 1, 2, …), and at the last epoch only reports, since pruning a trial that has
        finished would discard its value."""

        def __init__(self, trial: optuna.Trial, monitor: str, epochs: int) -> None:
            super().__init__(trial, monitor)
            self.epochs, self.done = epochs, 0

        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            self.done += 1
            self._trial.set_user_attr("epochs_run", self.done)
            if self.done < self.epochs:
                super().on_epoch_end(self.done, logs)
            elif logs and self._monitor in logs:
                self._trial.report(float(logs[self._monitor]), step=self.done)

    return EpochPruning


def _fresh_model(model: keras.Model | Callable[[], keras.Model], optimizer) -> keras.Model:
    """A new copy of ``model`` (fresh weights), compiled as it was but with ``optimizer``."""
    from keras.src.saving import serialization_lib

    fresh = keras.models.clone_model(model) if isinstance(model, keras.Model) else model()
    config = (model if isinstance(model, keras.Model) else fresh).get_compile_config()
    if not config:
        raise ValueError("tune needs a compiled model (its loss and metrics are kept; the "
                         "optimizer is each trial's): call model.compile first")
    config = dict(serialization_lib.deserialize_keras_object(config))
    config["optimizer"] = optimizer
    fresh.compile(**config)
    fresh.optimizer.build(fresh.trainable_variables)  # as adamkit train does
    return fresh


class _DropSurplusLog(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], _Surplus))


def tune(model: keras.Model | Callable[[], keras.Model], train_data: tuple[Any, Any],
         validation_data: tuple[Any, Any], *, trials: int = 20, epochs: int = 3, batch_size: int = 32,
         optimizers: Sequence[str] = choices.FAMILY_NAMES, seed: int = 0,
         storage: str | optuna.storages.BaseStorage | None = None, study_name: str = "adamkit-tune",
         pruner: str = "median", monitor: str = "val_accuracy",
         description: dict[str, Any] | None = None, log: Callable[[str], None] = print) -> optuna.Study:
    """Searches the Adam family's hyperparameters for ``model`` with Optuna.

    Each trial trains a fresh copy of the model (weights drawn anew from ``seed``, as ``adamkit
    train`` draws them) for ``epochs`` epochs with the trial's optimizer, reports ``monitor`` after
    every epoch and may be pruned; its value is ``monitor`` after the last epoch (maximised). The
    study ends when it holds ``trials`` trials in all (finished or pruned, from every process
    working on it): a resumed study runs only the rest, and processes sharing one storage run the
    requested number together.

    Args:
        model: a compiled Keras model, cloned for each trial (its loss and metrics kept, its
            optimizer replaced), or a function returning a new compiled model.
        train_data: ``(x, y)`` arrays to train on.
        validation_data: ``(x, y)`` arrays ``monitor`` is measured on.
        trials: how many trials the study should hold in all.
        epochs: epochs per trial.
        batch_size: batch size of every trial.
        optimizers: the family members to search (``adamkit.FAMILY`` names).
        seed: the seed every trial trains with (weights, dropout, the order of the examples).
        storage: an Optuna storage or storage URL; None keeps the study in memory.
        study_name: the study's name in the storage.
        pruner: ``"median"`` (``optuna.pruners.MedianPruner``: after 5 trials, a trial whose
            value at an epoch is below the median of earlier trials' at that epoch is stopped;
            never at the last epoch) or ``"none"``.
        monitor: a validation metric in Keras's logs, maximised.
        description: anything else that defines the objective, stored with the search settings.
        log: where progress lines go.

    Returns:
        The Optuna study.

    Raises:
        StudyError: the storage cannot be used, or the study exists with other search settings.
        ValueError: ``trials`` < 1, an unknown optimizer or pruner, or an uncompiled model.
    """
    _optuna()
    _check_arguments(trials, optimizers, pruner)
    storage = _storage_of(storage)
    settings = search_settings(optimizers, epochs, batch_size, seed, monitor, description)
    study = _study(storage, study_name, settings, pruner)
    plan = _TrialPlan(model, train_data, validation_data, settings["optimizers"], monitor,
                      TrainSettings(epochs=epochs, batch_size=batch_size, seed=seed))
    _run_remaining(study, study_name, trials, plan, log)
    return study


def _check_arguments(trials: int, optimizers: Sequence[str], pruner: str) -> None:
    """Raises ``ValueError`` for a setting ``tune`` cannot run with, before any storage is opened."""
    if trials < 1:
        raise ValueError(f"trials must be at least 1; got {trials}")
    unknown = [name for name in optimizers if name not in choices.FAMILY_NAMES]
    if unknown or not optimizers:
        raise ValueError(f"optimizers must be a non-empty list of {choices.FAMILY_NAMES}; got "
                         f"{list(optimizers)}")
    if pruner not in choices.PRUNERS:
        raise ValueError(f"pruner must be one of {choices.PRUNERS}; got {pruner!r}")


def _storage_of(storage: str | optuna.storages.BaseStorage | None) -> optuna.storages.BaseStorage:
    """``tune``'s ``storage`` as an Optuna storage: a URL opened, None a new in-memory one."""
    if isinstance(storage, str):
        return open_storage(storage)
    if storage is None:
        return optuna.storages.InMemoryStorage()
    return storage


@dataclass(frozen=True)
class _TrialPlan:
    """What every trial of one ``tune`` call trains, on what, and how (kept together so that the
    objective and the progress lines read them from one place)."""

    model: keras.Model | Callable[[], keras.Model]
    train_data: tuple[Any, Any]
    validation_data: tuple[Any, Any]
    names: Sequence[str]  # the family members searched, in the study's settings' order
    monitor: str
    train: TrainSettings  # epochs, batch size and seed, as `adamkit train` takes them


def _run_remaining(study: optuna.Study, study_name: str, trials: int, plan: _TrialPlan,
                   log: Callable[[str], None]) -> None:
    """Runs trials until the study holds ``trials`` in all, counting those of earlier runs and of
    other processes working on it (so a resumed study runs only the rest)."""
    done = _counted(study)
    if done >= trials:
        log(f"Study {study_name!r} holds {done} trials (of {trials} asked for): none to run")
        return
    log(f"Study {study_name!r}: {done} of {trials} trials done or running; "
        f"running the other {trials - done} (with any other process on this study)")
    callbacks = [functools.partial(_report, monitor=plan.monitor, log=log),
                 functools.partial(_stop_when_full, trials=trials)]
    with _surplus_logs_dropped():
        study.optimize(_objective(study, trials, plan), callbacks=callbacks, catch=(_Surplus,))


def _objective(study: optuna.Study, trials: int,
               plan: _TrialPlan) -> Callable[[optuna.Trial], float]:
    """Optuna's objective: a trial first claims its place in the study, then trains."""
    def objective(trial: optuna.Trial) -> float:
        _give_up_if_surplus(study, trial, trials)
        return _train_trial(trial, plan)

    return objective


def _give_up_if_surplus(study: optuna.Study, trial: optuna.Trial, trials: int) -> None:
    """Raises ``_Surplus`` (and stops this process's loop) where the trials numbered below
    ``trial`` already fill the study: processes sharing it may together start one too many."""
    if _counted(study, below=trial.number) >= trials:
        trial.set_user_attr("surplus", True)  # not counted, not reported, not in trials.csv
        trial.study.stop()
        raise _Surplus(f"trial {trial.number}: the study already holds {trials} trials")


def _train_trial(trial: optuna.Trial, plan: _TrialPlan) -> float:
    """Trains a fresh copy of the model with the trial's optimizer; its value is the monitored
    metric after the last epoch (the pruning callback may stop it earlier)."""
    name, hyperparameters = suggest(trial, plan.names)
    trial.set_user_attr("backend", keras.backend.backend())
    keras.backend.clear_session()
    keras.utils.set_random_seed(plan.train.seed)  # each trial starts as a fresh `adamkit train` does
    fresh = _fresh_model(plan.model, make_optimizer(name, hyperparameters))
    callback = _pruning_callback_class()(trial, plan.monitor, plan.train.epochs)
    history = fit(fresh, plan.train, plan.train_data, plan.validation_data,
                  {"epoch": 0, "batch": 0, "history": {}}, log=lambda *_: None,
                  extra_callbacks=[callback], verbose=0)
    if plan.monitor not in history:
        raise ValueError(f"{plan.monitor!r} is not among the metrics Keras logged: "
                         f"{sorted(history)}")
    return history[plan.monitor][-1]


def _report(study: optuna.Study, trial: optuna.trial.FrozenTrial, *, monitor: str,
            log: Callable[[str], None]) -> None:
    """Optuna callback: one progress line per finished trial (surplus trials pass silently)."""
    if trial.user_attrs.get("surplus"):
        return
    name, hyperparameters = hyperparameters_of(trial)
    shown = ", ".join(f"{k} {v:.4g}" for k, v in hyperparameters.items())
    values = trial.intermediate_values
    last = values[max(values)] if values else math.nan
    seconds = (trial.datetime_complete - trial.datetime_start).total_seconds()
    what = {"COMPLETE": "", "PRUNED": f" pruned after epoch {len(values)}:"}.get(
        trial.state.name, f" {trial.state.name.lower()}:")
    log(f"Trial {trial.number}:{what} {name} ({shown}): {monitor} {last:.4f} "
        f"[{seconds:.1f} s]")


def _stop_when_full(study: optuna.Study, trial: optuna.trial.FrozenTrial, *, trials: int) -> None:
    """Optuna callback: ends this process's loop once the study holds ``trials`` (other processes
    may have filled it meanwhile)."""
    if _counted(study) >= trials:
        study.stop()


@contextlib.contextmanager
def _surplus_logs_dropped():
    """While in it, Optuna's loggers do not print the ``_Surplus`` a given-up trial raises: it is
    how a surplus trial ends, not a failure worth a traceback."""
    handlers = logging.getLogger("optuna").handlers
    quiet = _DropSurplusLog()
    for handler in handlers:
        handler.addFilter(quiet)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(quiet)


def _trial_rows(study: optuna.Study, monitor: str) -> list[dict[str, Any]]:
    rows = []
    for trial in study.get_trials(deepcopy=False):
        if trial.user_attrs.get("surplus") or not trial.params:
            continue
        name, hyperparameters = hyperparameters_of(trial)
        values = trial.intermediate_values
        end = trial.datetime_complete
        rows.append({
            "number": trial.number, "state": trial.state.name,
            monitor: trial.value if trial.value is not None else
            (values[max(values)] if values else None),
            "epochs_run": len(values), "optimizer": name,
            **{k: hyperparameters.get(k) for k in HYPERPARAMETERS},
            "seconds": (end - trial.datetime_start).total_seconds() if end else None,
            "backend": trial.user_attrs.get("backend"),
        })
    return rows


def best_train_command(trial: optuna.trial.FrozenTrial, settings: dict[str, Any],
                       data: str | None = None) -> list[str]:
    """The ``adamkit train`` command line that reproduces ``trial`` of a study on the tutorial's
    model (the same weights, order of examples and hyperparameters, so the same accuracy).

    Args:
        trial: a finished trial.
        settings: the study's search settings (``search_settings``).
        data: ``--data`` for the command, if any.

    Returns:
        The command's arguments, ``adamkit`` first.
    """
    name, hyperparameters = hyperparameters_of(trial)
    command = ["adamkit", "train", "--backend", trial.user_attrs.get("backend", "tensorflow"),
               "--optimizer", name]
    for key, value in hyperparameters.items():
        command += [f"--{key.replace('_', '-')}", repr(float(value))]
    command += ["--epochs", str(settings["epochs"]), "--batch-size", str(settings["batch_size"]),
                "--seed", str(settings["seed"])]
    if settings.get("train_examples"):
        command += ["--train-examples", str(settings["train_examples"])]
    if data:
        command += ["--data", data]
    return command


def _save(ax, path: Path) -> None:
    import matplotlib.pyplot as plt

    figure = ax.figure
    figure.set_size_inches(8, 5)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


PLOTS = ("history.png", "importances.png", "intermediate.png")  # write_plots's


def write_plots(study: optuna.Study, out: Path, monitor: str = "val_accuracy") -> list[str]:
    """Writes ``history.png`` (value against trial, best so far), ``importances.png`` (parameter
    importances by Optuna's default evaluator, from 2 complete trials on) and
    ``intermediate.png`` (each trial's value per epoch, pruned ones included) into ``out``.

    Args:
        study: the study.
        out: the folder.
        monitor: the value's name, for the axes.

    Returns:
        Notes on plots that could not be drawn, and why.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.ticker import MaxNLocator
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as plots

    notes = []
    for name in PLOTS:  # an earlier study's, in this folder, would pass for this one's
        (out / name).unlink(missing_ok=True)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        ax = plots.plot_optimization_history(study, target_name=monitor)
        ax.set_title(f"Optimisation history ({len(complete)} complete trials)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        _save(ax, out / "history.png")
        if len(complete) < 2:
            notes.append(f"importances.png: parameter importances need at least 2 complete "
                         f"trials; the study has {len(complete)}")
        else:
            try:
                with warnings.catch_warnings():  # "few trials per regime": the title says how few
                    warnings.simplefilter("ignore", UserWarning)
                    ax = plots.plot_param_importances(study, target_name=monitor)
                ax.set_title(f"Parameter importances for {monitor} ({len(complete)} complete "
                             "trials)", loc="left")  # where Optuna's own title stands
                _save(ax, out / "importances.png")
            except (ValueError, RuntimeError, ImportError, ZeroDivisionError) as error:
                notes.append(f"importances.png: not drawn ({error})")
        if any(len(t.intermediate_values) > 1 for t in study.get_trials(deepcopy=False)):
            ax = plots.plot_intermediate_values(study)
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel(monitor)
            ax.get_legend() and ax.get_legend().remove()  # one entry per trial: unreadable
            _save(ax, out / "intermediate.png")
    return notes


def write_results(study: optuna.Study, out: str | Path, *, data: str | None = None,
                  storage_url: str | None = None, log: Callable[[str], None] = print) -> dict:
    """Prints the best trial and writes ``trials.csv``, ``best.json`` and the plots into ``out``.

    Args:
        study: a study made by ``tune``.
        out: the folder (created if missing).
        data: ``--data`` for best.json's ``adamkit train`` command, if any.
        storage_url: the storage's URL, recorded in best.json with its password hidden.
        log: where the summary lines go.

    Returns:
        best.json's content (``{"trial": None, …}`` while no trial has completed).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    settings = study.user_attrs[SETTINGS_ATTR]
    monitor = settings["monitor"]
    rows = _trial_rows(study, monitor)
    columns = ["number", "state", monitor, "epochs_run", "optimizer", *HYPERPARAMETERS,
               "seconds", "backend"]
    with open(out / "trials.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)
    states = [row["state"] for row in rows]
    counts = {state.lower(): states.count(state) for state in sorted(set(states))}
    best: dict[str, Any] = {"study": study.study_name, "storage": redacted(storage_url or ""),
                            "trials": counts, "search": settings, "trial": None}
    try:
        trial = study.best_trial
    except ValueError:  # no complete trial yet
        log("Best trial: none yet (no trial has completed)")
    else:
        name, hyperparameters = hyperparameters_of(trial)
        command = best_train_command(trial, settings, data)
        best.update(trial=trial.number, value=trial.value, monitor=monitor, optimizer=name,
                    hyperparameters=hyperparameters, backend=trial.user_attrs.get("backend"),
                    command=shlex.join(command), argv=command)
        shown = ", ".join(f"{k}={v:.4g}" for k, v in hyperparameters.items())
        log(f"Best trial: #{trial.number} {name} ({shown}): {monitor} {trial.value:.4f}")
        log(f"Reproduce it: {shlex.join(command)}")
    (out / "best.json").write_text(json.dumps(best, indent=2) + "\n")
    for note in write_plots(study, out, monitor):
        log(f"adamkit: {note}")
    log(f"adamkit: {len(rows)} trials ({', '.join(f'{v} {k}' for k, v in counts.items())}); "
        f"wrote trials.csv, best.json and plots to {out}/")
    return best


def sqlite_url(path: Path) -> str:
    """The SQLite URL of the database file ``path``, escaped: a URL decodes ``%xx`` and ends its
    path at ``?``, which a folder's name may hold."""
    from sqlalchemy.engine import URL

    return URL.create("sqlite", database=str(path.resolve())).render_as_string(hide_password=False)


def command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """``adamkit tune``: the study for the tutorial's model, from parsed arguments. Problems with
    the storage or the study are usage errors (exit code 2), found before --out is written."""
    from adamkit.data import DataError

    out = Path(args.out)
    url = args.storage or sqlite_url(out / "study.db")
    description = {"model": "tutorial-mlp", "dropout": 0.2, "train_examples": args.train_examples}
    settings = search_settings(args.optimizers, args.epochs, args.batch_size, args.seed,
                               description=description)
    storage = None
    try:
        if args.storage or (out / "study.db").exists():
            storage = open_storage(url)
            check_study(storage, args.study, settings)
        train_settings = TrainSettings(seed=args.seed, data=args.data,
                                       train_examples=args.train_examples)
        try:
            train_data, validation_data = load_data(train_settings)
        except DataError as error:
            if args.data is not None:
                parser.error(f"--data {args.data}: {error}")
            print(f"adamkit: error: {error}", file=sys.stderr)
            return 1
        out.mkdir(parents=True, exist_ok=True)
        storage = storage or open_storage(url)
        per_call = steps_per_execution(TrainSettings())

        def build() -> keras.Model:
            model = seed_model(0.2)
            model.compile(**seed_objective(), steps_per_execution=per_call)
            return model

        try:
            study = tune(build, train_data, validation_data, trials=args.trials,
                         epochs=args.epochs, batch_size=args.batch_size,
                         optimizers=args.optimizers, seed=args.seed, storage=storage,
                         study_name=args.study, pruner=args.pruner, description=description)
        except KeyboardInterrupt:
            print(f"adamkit: interrupted; the study is kept in {redacted(url)}: run the same "
                  "command again to resume it", file=sys.stderr)
            return 130
    except StudyError as error:
        if error.flag == "--storage" and args.storage is None:  # the default: study.db in --out
            parser.error(f"--out {args.out}: its study.db: {error}")
        given = redacted(args.storage) if error.flag == "--storage" else args.study
        parser.error(f"{error.flag} {given}: {error}")
    write_results(study, out, data=args.data, storage_url=url)
    return 0
