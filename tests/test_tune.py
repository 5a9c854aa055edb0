"""``adamkit tune`` and ``adamkit.tools.tune``: real Optuna studies on a slice of MNIST, shared
by processes through SQLite and a PostgreSQL server started here, and the bad inputs."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import keras
import numpy as np
import pytest

from conftest import BACKEND

optuna = pytest.importorskip("optuna")

from adamkit import cli  # noqa: E402  (after the skip: the module needs Optuna)
from adamkit.tools import tune  # noqa: E402

ADAMKIT = shutil.which("adamkit", path=os.path.dirname(sys.executable)) or shutil.which("adamkit")
# A study small enough for a test: 1,000 training examples, whole test set for validation.
QUICK = ["--epochs", "1", "--train-examples", "500", "--batch-size", "50"]
PNG = b"\x89PNG\r\n\x1a\n"


def run_cli(argv, capsys):
    """``adamkit`` in this process; returns (exit code, stdout, stderr)."""
    try:
        code = cli.main(argv)
    except SystemExit as exit:
        code = exit.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def trial_lines(text: str) -> list[int]:
    return [int(n) for n in re.findall(r"^Trial (\d+):", text, re.M)]


@pytest.mark.slow
@pytest.mark.skipif(BACKEND != "tensorflow", reason="the command's tests run on TensorFlow")
def test_study_writes_results_resumes_and_its_best_trial_reproduces(tmp_path, capsys):
    out = tmp_path / "tune"
    args = ["tune", "--epochs", "2", "--train-examples", "1000", "--optimizers", "adam,adamw",
            "--out", str(out)]
    code, stdout, _ = run_cli([*args, "--trials", "3"], capsys)
    assert code == 0
    assert trial_lines(stdout) == [0, 1, 2]
    assert "0 of 3 trials done" in stdout
    best = json.loads((out / "best.json").read_text())
    assert re.search(rf"^Best trial: #{best['trial']} (adam|adamw) \(learning_rate=.*\): "
                     rf"val_accuracy {best['value']:.4f}$", stdout, re.M)
    assert best["optimizer"] in ("adam", "adamw") and best["trials"] == {"complete": 3}
    assert set(best["hyperparameters"]) >= {"learning_rate", "beta_1", "beta_2", "epsilon"}
    assert ("weight_decay" in best["hyperparameters"]) == (best["optimizer"] == "adamw")
    rows = (out / "trials.csv").read_text().splitlines()
    assert rows[0].startswith("number,state,val_accuracy,epochs_run,optimizer,learning_rate")
    assert len(rows) == 4 and all(",COMPLETE," in row and ",2," in row for row in rows[1:])
    for plot in ("history.png", "importances.png", "intermediate.png"):
        assert (out / plot).read_bytes()[:8] == PNG, plot
    assert (out / "study.db").exists()

    # Again with a larger total: only the rest runs; with the same total, nothing does.
    code, stdout, _ = run_cli([*args, "--trials", "4"], capsys)
    assert code == 0 and "3 of 4 trials done" in stdout and trial_lines(stdout) == [3]
    code, stdout, _ = run_cli([*args, "--trials", "4"], capsys)
    assert code == 0 and "none to run" in stdout and trial_lines(stdout) == []
    assert "Best trial: #" in stdout
    best = json.loads((out / "best.json").read_text())
    assert best["trials"] == {"complete": 4}

    # best.json's command trains the same weights in the same order: the same accuracy, exactly.
    assert best["argv"][:2] == ["adamkit", "train"] and "--train-examples" in best["argv"]
    code, _, _ = run_cli([*best["argv"][1:], "--out", str(tmp_path / "again")], capsys)
    assert code == 0
    history = json.loads((tmp_path / "again" / "history.json").read_text())
    assert history["val_accuracy"][-1] == best["value"]


def test_the_pruning_callback_reports_every_epoch_and_never_prunes_the_last():
    """Optuna's Keras callback under adamkit.train.fit (one model.fit per epoch, so Keras calls
    every epoch 0): steps 1, 2, 3 are reported, and a trial the pruner would stop is stopped after
    an epoch that is not its last."""
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    callback = tune._pruning_callback_class()(trial, "val_accuracy", 3)
    for value in (0.5, 0.6, 0.7):
        callback.on_epoch_end(0, {"val_accuracy": value})
    assert trial.storage.get_trial(trial._trial_id).intermediate_values == {1: 0.5, 2: 0.6, 3: 0.7}

    class Always(optuna.pruners.BasePruner):
        def prune(self, study, trial):
            return True

    study = optuna.create_study(direction="maximize", pruner=Always())
    trial = study.ask()
    callback = tune._pruning_callback_class()(trial, "val_accuracy", 2)
    with pytest.raises(optuna.TrialPruned):
        callback.on_epoch_end(0, {"val_accuracy": 0.5})
    last = tune._pruning_callback_class()(study.ask(), "val_accuracy", 1)
    last.on_epoch_end(0, {"val_accuracy": 0.5})  # the only epoch is the last: no pruning


def study_with(storage_url: str, name: str, attrs: dict) -> None:
    study = optuna.create_study(storage=storage_url, study_name=name, direction="maximize")
    for key, value in attrs.items():
        study.set_user_attr(key, value)


@pytest.mark.parametrize(("storage", "complaint"), [
    ("not a url", "--storage not a url: not a storage URL Optuna takes"),
    ("nosuchdb://host/db", "not a storage URL Optuna takes"),
    ("postgresql://someone:secret@127.0.0.1:1/optuna", "cannot be reached or opened"),
    ("sqlite:////no/such/folder/study.db", "cannot be reached or opened"),
])
def test_a_storage_that_cannot_be_used_is_a_usage_error(storage, complaint, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, stderr = run_cli(["tune", "--storage", storage, "--out", str(out)], capsys)
    assert code == 2 and "usage: adamkit tune" in stderr
    assert complaint in stderr and "Traceback" not in stderr
    assert "secret" not in stderr  # the password is not shown
    assert not out.exists()


def test_plots_a_study_cannot_draw_do_not_survive_from_an_earlier_one(tmp_path):
    study = optuna.create_study(direction="maximize")
    study.add_trial(optuna.trial.create_trial(value=0.9, params={}, distributions={}))
    for name in ("importances.png", "intermediate.png"):
        (tmp_path / name).write_bytes(b"an earlier study's plot")
    notes = tune.write_plots(study, tmp_path)
    assert (tmp_path / "history.png").exists() and any("importances.png" in n for n in notes)
    assert not (tmp_path / "importances.png").exists()
    assert not (tmp_path / "intermediate.png").exists()


def test_the_default_study_file_is_found_whatever_its_folder_is_named(tmp_path):
    """A URL decodes %xx and ends its path at ?: the folder's name is escaped in it."""
    from sqlalchemy.engine import make_url

    path = tmp_path / "tune%20a?b" / "study.db"
    assert make_url(tune.sqlite_url(path)).database == str(path.resolve())


def test_a_study_another_process_has_just_created_is_joined_once_it_has_its_settings(tmp_path):
    """Optuna creates a study, then sets its attributes: a second process that finds it between
    the two waits for the settings instead of calling it another program's study (two
    `adamkit tune` processes started together on a PostgreSQL study failed so)."""
    import threading

    url = f"sqlite:///{tmp_path / 'shared.db'}"
    settings = tune.search_settings(["adam"], 1, 32, 0)
    study_with(url, "shared", {})
    creator = threading.Timer(1.0, lambda: study_with_attrs(url, "shared", settings))
    creator.start()
    try:
        storage = optuna.storages.RDBStorage(url)
        assert tune.check_study(storage, "shared", settings) is True
    finally:
        creator.join()


def study_with_attrs(storage_url: str, name: str, settings: dict) -> None:
    optuna.load_study(study_name=name, storage=storage_url).set_user_attr(tune.SETTINGS_ATTR,
                                                                          settings)


def test_a_study_with_other_settings_is_a_usage_error(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    settings = tune.search_settings(["adam"], 3, 32, 0, description={
        "model": "tutorial-mlp", "dropout": 0.2, "train_examples": None})
    study_with(url, "theirs", {tune.SETTINGS_ATTR: settings})
    study_with(url, "foreign", {})
    out = tmp_path / "out"
    base = ["tune", "--storage", url, "--out", str(out), "--optimizers", "adam"]
    code, _, stderr = run_cli([*base, "--study", "theirs", "--epochs", "2"], capsys)
    assert code == 2 and "--study theirs: study 'theirs' exists with other search settings" in stderr
    assert "epochs 3 there, 2 here" in stderr
    code, _, stderr = run_cli([*base, "--study", "theirs", "--optimizers", "adam,nadam"], capsys)
    assert code == 2 and 'optimizers ["adam"] there, ["adam", "nadam"] here' in stderr
    code, _, stderr = run_cli([*base, "--study", "foreign"], capsys)
    assert code == 2 and "was not made by adamkit's tuning" in stderr
    assert not out.exists()
    # the default SQLite file in --out is checked before anything is written there either
    local = tmp_path / "local"
    local.mkdir()
    study_with(f"sqlite:///{local / 'study.db'}", "adamkit-tune", {tune.SETTINGS_ATTR: settings})
    before = sorted(p.name for p in local.iterdir())
    code, _, stderr = run_cli(["tune", "--out", str(local), "--epochs", "1"], capsys)
    assert code == 2 and "epochs 3 there, 1 here" in stderr
    assert sorted(p.name for p in local.iterdir()) == before


def test_zero_trials_is_refused_before_any_framework_loads(tmp_path):
    out = tmp_path / "out"
    result = subprocess.run([ADAMKIT, "tune", "--trials", "0", "--out", str(out)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "argument --trials: '0' is out of range; expected an integer > 0" in result.stderr
    assert not out.exists()
    with pytest.raises(ValueError, match="trials must be at least 1"):
        tune.tune(lambda: None, (None, None), (None, None), trials=0)


def run_together(storage: str, tmp_path: Path, trials: int) -> list[set[int]]:
    """Two `adamkit tune` processes on one study; the trial numbers each ran."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow"}
    processes = [subprocess.Popen([ADAMKIT, "tune", "--storage", storage, "--study", "shared",
                                   "--trials", str(trials), "--pruner", "none", *QUICK,
                                   "--out", str(tmp_path / f"out{i}")],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                 for i in range(2)]
    ran = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr[-3000:]
        ran.append(set(trial_lines(stdout)))
    return ran


def check_shared(storage: str, ran: list[set[int]], trials: int) -> None:
    """Together the processes ran exactly the trials asked for: none lost, none run twice."""
    assert not ran[0] & ran[1], f"run twice: {ran[0] & ran[1]}"
    assert all(ran), f"one process ran nothing: {ran}"
    study = optuna.load_study(study_name="shared", storage=storage)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert sorted(t.number for t in complete) == sorted(ran[0] | ran[1])
    assert len(complete) == trials
    assert all(t.user_attrs.get("surplus") for t in study.trials if t not in complete)
    assert len({t.params["learning_rate"] for t in complete}) == trials


@pytest.mark.slow
@pytest.mark.skipif(BACKEND != "tensorflow", reason="the command's tests run on TensorFlow")
def test_two_processes_share_one_sqlite_study(tmp_path):
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    check_shared(storage, run_together(storage, tmp_path, 4), 4)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres():
    """A PostgreSQL server of its own (unix socket only) with a database `optuna`; its URL."""
    tools = {name: shutil.which(name) or f"/usr/local/bin/{name}" for name in ("initdb", "pg_ctl")}
    missing = [name for name, path in tools.items() if not os.access(path, os.X_OK)]
    if missing:
        pytest.skip(f"PostgreSQL's {' and '.join(missing)} not installed (Debian: apt-get install "
                    "postgresql)")
    psycopg = pytest.importorskip("psycopg", reason="the PostgreSQL driver psycopg is missing")
    as_user: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="adamkit-pg-"))  # short: a socket path has a length limit
    if os.geteuid() == 0:  # the server refuses to run as root
        import pwd

        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root, and no `postgres` user to run the server as")
        os.chown(root, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", free_port()

    def run(*command):
        subprocess.run([*as_user, *command], check=True, capture_output=True, timeout=120)

    try:
        run(tools["initdb"], "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync")
        run(tools["pg_ctl"], "-D", str(data), "-l", str(root / "log"), "-w", "-o",
            f"-p {port} -k {root} -c listen_addresses='' -c fsync=off", "start")
        connection = psycopg.connect(host=str(root), port=port, user="postgres", dbname="postgres",
                                     autocommit=True)
        connection.execute("CREATE DATABASE optuna")
        connection.close()
        yield f"postgresql://postgres@/optuna?host={root}&port={port}"
    finally:
        if (data / "postmaster.pid").exists():
            run(tools["pg_ctl"], "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.skipif(BACKEND != "tensorflow", reason="the command's tests run on TensorFlow")
def test_two_processes_share_one_study_on_a_postgresql_server(postgres, tmp_path):
    check_shared(postgres, run_together(postgres, tmp_path, 4), 4)


# tune() on a small compiled model of any backend: prints the backend, the trials' states and
# the epochs each reported.
API = """
import keras, numpy as np
from adamkit.tools.tune import tune
rng = np.random.default_rng(0)
x = rng.normal(size=(256, 8)).astype("float32")
y = (x[:, 0] + x[:, 1] > 0).astype("int64")
model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                          keras.layers.Dense(2)])
model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
              metrics=["accuracy"])
study = tune(model, (x[:192], y[:192]), (x[192:], y[192:]), trials=3, epochs=2, batch_size=32,
             optimizers=["adam", "adamw", "radam"], log=lambda *_: None)
print(keras.backend.backend(), [t.state.name for t in study.trials],
      [sorted(t.intermediate_values) for t in study.trials], study.best_value > 0.4)
"""


@pytest.mark.slow
@pytest.mark.skipif(BACKEND != "tensorflow", reason="spawned from the default backend's run")
def test_the_api_tunes_any_compiled_model_on_every_backend(capsys):
    """TensorFlow in this process, JAX and PyTorch each in its own (started first, to overlap)."""
    processes = {backend: subprocess.Popen(
        [sys.executable, "-c", API], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"})
        for backend in ("jax", "torch")}
    exec(API, {})
    outputs = {"tensorflow": capsys.readouterr().out}
    for backend, process in processes.items():
        stdout, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, f"{backend}: {stderr[-3000:]}"
        outputs[backend] = stdout
    for backend, stdout in outputs.items():
        assert stdout.split("\n")[0] == (f"{backend} ['COMPLETE', 'COMPLETE', 'COMPLETE'] "
                                         "[[1, 2], [1, 2], [1, 2]] True")


def test_search_settings_and_the_train_command():
    settings = tune.search_settings(["adamw", "adam"], 3, 32, 7, description={"train_examples": 500})
    assert settings["optimizers"] == ["adam", "adamw"]  # the family's order: one search, one name
    assert settings["space"]["one_minus_beta_2"] == [1e-4, 1e-1, True]
    trial = optuna.trial.create_trial(
        params={"optimizer": "adamw", "learning_rate": 0.003, "beta_1": 0.85,
                "one_minus_beta_2": 0.002, "epsilon": 1e-9, "weight_decay": 0.01},
        distributions={"optimizer": optuna.distributions.CategoricalDistribution(["adam", "adamw"]),
                       **{name: optuna.distributions.FloatDistribution(low, high, log=log)
                          for name, (low, high, log) in tune.SPACE.items()}},
        value=0.9, user_attrs={"backend": "jax"})
    command = tune.best_train_command(trial, settings, data="/data/mnist.npz")
    assert command == ["adamkit", "train", "--backend", "jax", "--optimizer", "adamw",
                       "--learning-rate", "0.003", "--beta-1", "0.85", "--beta-2", "0.998",
                       "--epsilon", "1e-09", "--weight-decay", "0.01", "--epochs", "3",
                       "--batch-size", "32", "--seed", "7", "--train-examples", "500",
                       "--data", "/data/mnist.npz"]
    assert float(command[command.index("--beta-2") + 1]) == 1.0 - 0.002
    assert keras.backend.backend() == BACKEND and np.isfinite(trial.value)


def test_results_list_a_trial_another_process_is_still_drawing(tmp_path):
    """Another process's trial may be RUNNING with only its optimizer drawn when this one writes
    its results (two processes on a PostgreSQL study failed so): its row shows what it has."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    study = optuna.create_study(storage=url, study_name="s", direction="maximize")
    study.set_user_attr(tune.SETTINGS_ATTR, tune.search_settings(["adam"], 1, 32, 0))
    finished = study.ask()
    tune.suggest(finished, ["adam"])
    study.tell(finished, 0.5)
    drawing = study.ask()
    drawing.suggest_categorical("optimizer", ["adam"])
    best = tune.write_results(study, tmp_path / "out", log=lambda _: None)
    assert best["trial"] == finished.number and best["trials"] == {"complete": 1, "running": 1}
    lines = (tmp_path / "out" / "trials.csv").read_text().splitlines()
    assert lines[2].startswith(f"{drawing.number},RUNNING,,0,adam,,,,,")
