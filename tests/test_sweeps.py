"""`ktk tune` end to end on bundled data: every tuner, trials.csv, the test split, failures, resume, lock."""

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import yaml

from helpers import IRIS_SWEEP, subprocess_env
from toolkit import data as data_module
from toolkit import training
from toolkit.cli import main
from toolkit.config import load_config, parse_config
from toolkit.errors import UserError
from toolkit.search import parse_search
from toolkit.sweeps import format_trials_csv, runner, trial_rows, tune
from toolkit.sweeps.lock import SweepLock, process_start

# keras-tuner 1.4.8 calls threading.currentThread(), deprecated since Python 3.10.
pytestmark = pytest.mark.filterwarnings("ignore:.*currentThread|getName.*:DeprecationWarning")

IRIS = IRIS_SWEEP
SPACE = {
    "model.hidden.0": {"int": [4, 16], "step": 4},
    "training.optimizer.name": {"choice": ["sgd", "adam"]},
    "training.optimizer.momentum": {"float": [0.0, 0.9], "when": {"training.optimizer.name": "sgd"}},
}


def sweep_config(tmp_path, search, base=IRIS, name="sweep.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(dict(base, search=search), sort_keys=False))
    return load_config(path)


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# --------------------------------------------------------------------------------- every tuner


@pytest.fixture(scope="module")
def random_sweep(tmp_path_factory):
    """A random search through the CLI, trials in worker processes (the default), top 2 retrained."""
    tmp = tmp_path_factory.mktemp("random")
    config = sweep_config(tmp, {"tuner": "random", "objective": "val_accuracy", "max_trials": 3,
                                "retrain_top": 2, "trials_per_process": 2, "space": SPACE})
    out = tmp / "sweep"
    import io
    from contextlib import redirect_stdout

    printed = io.StringIO()
    with redirect_stdout(printed):
        status = main(["tune", str(config.source), "--out", str(out)])
    return out, status, printed.getvalue()


@pytest.mark.slow
def test_random_sweep_through_the_cli(random_sweep):
    out, status, printed = random_sweep
    assert status == 0
    lines = printed.splitlines()
    progress = [line for line in lines if line.startswith("trial ")]
    assert [line.split(" (")[0] for line in progress] == ["trial 1/3", "trial 2/3", "trial 3/3"]
    for line in progress:
        assert "val_accuracy 0." in line and "| best 0." in line and "| elapsed 0:" in line and "| eta " in line
    assert any(line.startswith("sweep ") and "3 trials completed, 0 failed" in line for line in lines)
    assert any(line.startswith("  best retrained, test: ") for line in lines)
    assert sorted(p.name for p in out.iterdir()) == [
        ".ktk-sweep", "best", "config.yaml", "histories", "records", "sweep.json", "top", "trials.csv", "tuner"]


@pytest.mark.slow
def test_trials_csv_follows_the_contract(random_sweep):
    out, _, _ = random_sweep
    rows = read_csv(out / "trials.csv")
    assert list(rows[0]) == [
        "trial_id", "status", "score", "model.hidden.0", "training.optimizer.name", "training.optimizer.momentum",
        "train.accuracy", "train.loss", "validation.accuracy", "validation.loss",
        "epochs", "best_epoch", "params", "started", "duration_s", "message"]
    assert [r["trial_id"] for r in rows] == ["0", "1", "2"]
    for row in rows:
        assert row["status"] == "completed" and row["message"] == ""
        history = read_csv(out / "histories" / f"{row['trial_id']}.csv")
        assert [int(h["epoch"]) for h in history] == [1, 2] and row["epochs"] == "2"
        val = [float(h["val_accuracy"]) for h in history]
        # The score is the best epoch's value, not the last epoch's.
        best = val.index(max(val))
        assert float(row["score"]) == max(val) and int(row["best_epoch"]) == best + 1
        assert float(row["validation.loss"]) == float(history[best]["val_loss"])
        assert float(row["train.accuracy"]) == float(history[best]["accuracy"])
        units = int(row["model.hidden.0"])
        assert int(row["params"]) == (4 * units + units) + (units * 3 + 3)  # iris: 4 inputs, 3 classes
        assert (row["training.optimizer.momentum"] != "") == (row["training.optimizer.name"] == "sgd")
        assert float(row["duration_s"]) > 0 and row["started"].endswith("+00:00")


@pytest.mark.slow
def test_best_is_a_normal_run_of_the_best_trial(random_sweep):
    out, _, _ = random_sweep
    rows = read_csv(out / "trials.csv")
    ranked = sorted(rows, key=lambda r: -float(r["score"]))
    summary = json.loads((out / "sweep.json").read_text())
    assert summary["best_trial"] == ranked[0]["trial_id"] and summary["completed"] == 3
    assert {"config.yaml", "metrics.json", "history.csv", "model.keras", "environment.json"} <= {
        p.name for p in (out / "best").iterdir()}
    best = yaml.safe_load((out / "best" / "config.yaml").read_text())
    assert best["search"] is None
    assert best["model"]["hidden"] == [int(ranked[0]["model.hidden.0"])]
    assert best["training"]["optimizer"]["name"] == ranked[0]["training.optimizer.name"]
    metrics = json.loads((out / "best" / "metrics.json").read_text())
    assert set(metrics["test"]) == {"loss", "accuracy"}
    # Retrained with the same seed and data, it reproduces the trial's validation score.
    assert metrics["validation"]["accuracy"] == pytest.approx(float(ranked[0]["score"]), abs=1e-6)
    assert (out / "top" / f"trial_{ranked[1]['trial_id']}" / "metrics.json").is_file()
    # The sweep's config.yaml is the resolved config with the normalized search section: runnable again.
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["search"]["space"]["training.optimizer.momentum"]["when"] == {"training.optimizer.name": "sgd"}
    assert resolved["search"]["trials_per_process"] == 2 and resolved["training"]["steps_per_execution"] == "auto"


@pytest.mark.slow
def test_a_finished_sweep_returns_at_once_without_retesting(random_sweep, monkeypatch):
    out, _, _ = random_sweep
    calls = []
    monkeypatch.setattr(runner, "run_trial_task", lambda task, data: calls.append(task))
    monkeypatch.setattr(training, "evaluate", lambda *a, **k: calls.append(a))
    result = tune(load_config(out / "config.yaml"), out_dir=out)
    assert calls == [] and result.completed == 3 and result.resumed == 3
    assert result.best_run.run_dir == out / "best"


@pytest.mark.slow
@pytest.mark.parametrize("tuner, extra, planned", [
    ("grid", {"max_trials": 3}, 3),
    ("bayesian", {"max_trials": 3, "num_initial_points": 2, "executions_per_trial": 2}, 3),
    ("hyperband", {"max_trials": 3, "factor": 2}, 3),
])
def test_each_tuner_end_to_end(tmp_path, tuner, extra, planned):
    space = {"model.hidden.0": {"int": [4, 12], "step": 4},
             "training.optimizer.learning_rate": {"choice": [0.01, 0.05]}}
    config = sweep_config(tmp_path, {"tuner": tuner, "objective": {"name": "val_loss", "direction": "min"},
                                     "trials_per_process": "inline", "space": space, **extra})
    result = tune(config, out_dir=tmp_path / "sweep")
    assert result.planned == planned and result.completed == planned
    rows = read_csv(tmp_path / "sweep" / "trials.csv")
    assert len(rows) == planned and all(r["status"] == "completed" for r in rows)
    best = min(rows, key=lambda r: float(r["score"]))
    assert result.best["trial_id"] == best["trial_id"]
    assert (tmp_path / "sweep" / "best" / "metrics.json").is_file()
    if tuner == "grid":  # the grid starts from the first value of every parameter
        assert (rows[0]["model.hidden.0"], rows[0]["training.optimizer.learning_rate"]) == ("4", "0.01")
        assert len({(r["model.hidden.0"], r["training.optimizer.learning_rate"]) for r in rows}) == 3
    if tuner == "bayesian":  # two executions per trial, seeds 1 and 2: both histories kept
        for row in rows:
            one, two = (read_csv(tmp_path / "sweep" / "histories" / f"{row['trial_id']}{suffix}.csv")
                        for suffix in ("", ".execution2"))
            scores = [min(float(h["val_loss"]) for h in history) for history in (one, two)]
            assert scores[0] != scores[1] and float(row["score"]) == pytest.approx(sum(scores) / 2)
    if tuner == "hyperband":  # hyperband's epoch budget is the training.epochs column
        assert {r["training.epochs"] for r in rows} <= {"1", "2"}
        assert all(r["epochs"] == r["training.epochs"] for r in rows)


@pytest.mark.slow
def test_quasi_random_sweep_and_the_test_split_is_used_once(tmp_path, monkeypatch):
    seen_by_trials, evaluated, loads = [], [], []
    real_task, real_evaluate, real_load = runner.run_trial_task, training.evaluate, data_module.load_data

    def spy_task(task, data):
        seen_by_trials.append(len(data.y_test))
        return real_task(task, data)

    def spy_evaluate(model, config, data, split):
        evaluated.append(split)
        return real_evaluate(model, config, data, split)

    monkeypatch.setattr(runner, "run_trial_task", spy_task)
    monkeypatch.setattr(training, "evaluate", spy_evaluate)
    monkeypatch.setattr(data_module, "load_data", lambda config: loads.append(1) or real_load(config))
    config = sweep_config(tmp_path, {"tuner": "quasi_random", "objective": "val_accuracy", "max_trials": 3,
                                     "trials_per_process": "inline", "space": {
                                         "model.dropout": {"float": [0.0, 0.5]},
                                         "training.optimizer.learning_rate": {"float": [1e-3, 1e-1], "log": True}}})
    result = tune(config, out_dir=tmp_path / "sweep")
    assert result.completed == 3
    assert seen_by_trials == [0, 0, 0]  # trials get the data without its test split
    assert evaluated.count("test") == 1  # only best/ touches it, once
    assert len(loads) == 1  # data loaded and split once per sweep
    dropouts = sorted(float(r["model.dropout"]) for r in read_csv(tmp_path / "sweep" / "trials.csv"))
    assert len(set(dropouts)) == 3 and all(0.0 <= d < 0.5 for d in dropouts)


# ------------------------------------------------------------------------------------ failures


@pytest.mark.slow
def test_a_diverging_trial_is_recorded_and_the_sweep_goes_on(tmp_path):
    config = sweep_config(tmp_path, {"tuner": "grid", "objective": "val_accuracy", "trials_per_process": "inline",
                                     "space": {"training.optimizer.learning_rate": {"choice": [0.02, 1.0e+30]}}})
    result = tune(config, out_dir=tmp_path / "sweep")
    rows = read_csv(tmp_path / "sweep" / "trials.csv")
    assert [(r["training.optimizer.learning_rate"], r["status"]) for r in rows] == [
        ("0.02", "completed"), ("1e+30", "failed")]
    assert rows[1]["message"].startswith("diverged: the training loss became NaN or infinite in epoch 1")
    assert rows[1]["score"] == ""
    assert result.best["trial_id"] == rows[0]["trial_id"] and result.failed == 1


@pytest.mark.slow
def test_failures_in_a_row_stop_the_search_with_the_reason(tmp_path, capsys):
    config = sweep_config(tmp_path, {"tuner": "grid", "max_consecutive_failures": 2, "trials_per_process": "inline",
                                     "space": {"training.optimizer.learning_rate": {"choice": [1.0e+30, 1.0e+31]}}})
    assert main(["tune", str(config.source), "--out", str(tmp_path / "sweep")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ktk: error: {config.source}: search.max_consecutive_failures: the search stopped after "
                          f"2 failed trials in a row (limit 2); the last failed with: diverged: ")
    assert [r["status"] for r in read_csv(tmp_path / "sweep" / "trials.csv")] == ["failed", "failed"]


# -------------------------------------------------------------------------------------- resume


def random_dropout_sweep(tmp_path, max_trials):
    return sweep_config(tmp_path, {"tuner": "random", "max_trials": max_trials, "trials_per_process": "inline",
                                   "space": {"model.dropout": {"float": [0.0, 0.5]}}})


def record_trials(monkeypatch, ran):
    """Trials run as usual, and each trial id is appended to `ran` as it starts."""
    real_task = runner.run_trial_task
    monkeypatch.setattr(runner, "run_trial_task", lambda task, data: ran.append(task["trial_id"]) or
                        real_task(task, data))


@pytest.mark.slow
def test_resume_after_an_interrupted_trial_runs_each_planned_trial_once(tmp_path, monkeypatch):
    config = random_dropout_sweep(tmp_path, max_trials=4)
    out = tmp_path / "sweep"
    finished, real_task = [], runner.run_trial_task

    def crash_in_third_trial(task, data):
        if len(finished) == 2:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the third trial
        outcome = real_task(task, data)
        finished.append(task["trial_id"])
        return outcome

    monkeypatch.setattr(runner, "run_trial_task", crash_in_third_trial)
    with pytest.raises(KeyboardInterrupt):
        tune(config, out_dir=out)
    before = {r["trial_id"]: r for r in read_csv(out / "trials.csv")}  # rebuilt at the stop
    assert sorted(before) == sorted(finished) and len(before) == 2
    assert {p.stem for p in (out / "records").glob("*.json")} == set(before)
    assert not (out / ".lock").exists()

    monkeypatch.setattr(runner, "run_trial_task", real_task)
    record_trials(monkeypatch, finished)
    result = tune(config, out_dir=out)
    rows = read_csv(out / "trials.csv")
    assert result.resumed == 2 and [r["trial_id"] for r in rows] == ["0", "1", "2", "3"]
    assert sorted(finished) == ["0", "1", "2", "3"]  # each completed exactly once
    for trial_id, row in before.items():  # finished trials are kept as they were
        assert rows[int(trial_id)] == row


@pytest.mark.slow
def test_a_trial_recorded_just_before_a_stop_is_not_run_again(tmp_path, monkeypatch):
    # Stopped after ktk recorded trial 1 but before keras-tuner heard of its end: a resume must not run it again.
    import keras_tuner

    config = random_dropout_sweep(tmp_path, max_trials=3)
    out = tmp_path / "sweep"
    ran = []
    record_trials(monkeypatch, ran)
    real_end = keras_tuner.engine.base_tuner.BaseTuner.on_trial_end

    def stop_before_the_second_end(tuner, trial):
        if trial.trial_id == "1":
            raise KeyboardInterrupt
        real_end(tuner, trial)

    monkeypatch.setattr(keras_tuner.engine.base_tuner.BaseTuner, "on_trial_end", stop_before_the_second_end)
    with pytest.raises(KeyboardInterrupt):
        tune(config, out_dir=out)
    assert [r["trial_id"] for r in read_csv(out / "trials.csv")] == ["0", "1"]  # the table has both records
    monkeypatch.setattr(keras_tuner.engine.base_tuner.BaseTuner, "on_trial_end", real_end)
    lines = []
    result = tune(config, out_dir=out, progress=lines.append)
    assert ran == ["0", "1", "2"] and result.resumed == 2 and result.completed == 3
    assert "resuming the sweep in" in lines[0] and lines[0].endswith("2 of 3 trials already done")
    assert [line.split(":")[0] for line in lines if line.startswith("trial ")] == ["trial 3/3 (id 2)"]


def test_resume_refuses_a_changed_search_space(tmp_path):
    config = sweep_config(tmp_path, {"max_trials": 1, "space": {"model.dropout": {"float": [0.0, 0.5]}}})
    out = tmp_path / "sweep"
    out.mkdir()
    (out / "config.yaml").write_text(yaml.safe_dump(
        dict(config.to_dict(), search=parse_search(config).to_dict()), sort_keys=False))
    (out / "records").mkdir()
    changed = sweep_config(tmp_path, {"max_trials": 1, "space": {"model.dropout": {"float": [0.0, 0.3]}}})
    with pytest.raises(UserError) as caught:
        tune(changed, out_dir=out)
    assert str(caught.value) == (
        f"{changed.source}: search: the search changed since this sweep started (search.space.model.dropout.float "
        f"was [0.0, 0.5], now [0.0, 0.3]); its trials would not be comparable. Use --overwrite to start over, or "
        f"--out DIR for a new sweep; received '{out}'.")
    epochs = sweep_config(tmp_path, {"max_trials": 1, "space": {"model.dropout": {"float": [0.0, 0.5]}}},
                          base=dict(IRIS, training=dict(IRIS["training"], epochs=5)))
    with pytest.raises(UserError, match=r"the config changed since this sweep started \(training.epochs was 2, "
                                        r"now 5\)"):
        tune(epochs, out_dir=out)
    # More trials is not a change of the search: the same space resumes (nothing else is checked here).
    assert parse_search(config).identity() == parse_search(
        sweep_config(tmp_path, {"max_trials": 9, "space": {"model.dropout": {"float": [0.0, 0.5]}}})).identity()


@pytest.mark.slow
def test_a_killed_sweep_resumes_past_its_stale_lock(tmp_path):
    path = tmp_path / "kill.yaml"
    path.write_text(yaml.safe_dump(dict(IRIS, search={
        "max_trials": 3, "trials_per_process": 1, "space": {"model.dropout": {"float": [0.0, 0.5]}}})))
    out = tmp_path / "sweep"
    env = subprocess_env()
    process = subprocess.Popen([sys.executable, "-m", "toolkit", "tune", str(path), "--out", str(out)],
                               cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.time() + 240
    while not list((out / "records").glob("*.json")) and time.time() < deadline and process.poll() is None:
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)  # the sweep and its trial worker, as a reboot would
    process.wait()
    assert json.loads((out / ".lock").read_text())["pid"] == process.pid  # left behind
    done = {p.stem for p in (out / "records").glob("*.json")}
    assert 1 <= len(done) < 3
    result = tune(load_config(path), out_dir=out)
    assert [r["trial_id"] for r in read_csv(out / "trials.csv")] == ["0", "1", "2"]
    assert result.resumed == len(done) and result.completed == 3
    assert not (out / ".lock").exists()


# ---------------------------------------------------------------------------------------- lock


def test_a_second_sweep_in_the_same_directory_is_refused(tmp_path):
    config = sweep_config(tmp_path, {"max_trials": 1, "space": {"model.dropout": {"float": [0.0, 0.5]}}})
    out = tmp_path / "sweep"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = {"pid": holder.pid, "host": socket.gethostname(), "started": "2026-01-01T00:00:00+00:00",
                "process_start": process_start(holder.pid), "tuner_id": None}
        (out / ".lock").write_text(json.dumps(lock))
        with pytest.raises(UserError) as caught:
            tune(config, out_dir=out)
        assert str(caught.value) == (
            f"--out: another sweep (pid {holder.pid} on {socket.gethostname()}, started 2026-01-01T00:00:00+00:00) "
            f"is writing into this directory; wait for it to finish, or use another --out. If that process is "
            f"gone, delete {out / '.lock'}; received '{out}'.")
        assert json.loads((out / ".lock").read_text())["pid"] == holder.pid  # not taken over
    finally:
        holder.kill()
        holder.wait()
    # Its process is gone now: the lock is stale and is taken over.
    with SweepLock(out) as taken:
        assert json.loads(taken.path.read_text())["pid"] == os.getpid()
    assert not (out / ".lock").exists()


def test_overwrite_never_deletes_a_folder_that_is_not_a_sweep(tmp_path):
    config = sweep_config(tmp_path, {"max_trials": 1, "space": {"model.dropout": {"float": [0.0, 0.5]}}})
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    for overwrite in (False, True):
        with pytest.raises(UserError, match="not"):
            tune(config, out_dir=out, overwrite=overwrite)
    assert (out / "thesis.tex").read_text() == "years of work"


def test_trials_csv_has_a_worker_column_in_distributed_mode():
    spec = parse_search(parse_config(dict(IRIS, search={"space": SPACE})))
    rows = trial_rows([
        {"trial_id": "1", "status": "completed", "score": 0.5, "values": {"model.hidden.0": 8},
         "train": {"loss": 1.0}, "validation": {"loss": 1.1}, "epochs": 2, "best_epoch": 2, "params": 10,
         "started": "t", "duration_s": 1.0, "worker": "tuner1"},
        {"trial_id": "0", "status": "failed", "values": {"model.hidden.0": 4}, "message": "diverged",
         "started": "t", "duration_s": 0.5, "worker": "tuner0"},
    ], spec)
    text = format_trials_csv(rows, spec)
    assert text.splitlines() == [
        "trial_id,status,score,model.hidden.0,training.optimizer.name,training.optimizer.momentum,train.loss,"
        "validation.loss,epochs,best_epoch,params,started,duration_s,message,worker",
        "0,failed,,4,,,,,,,,t,0.5,diverged,tuner0",
        "1,completed,0.5,8,,,1.0,1.1,2,2,10,t,1.0,,tuner1",
    ]


@pytest.mark.slow
def test_a_script_without_a_main_guard_can_tune(tmp_path):
    # multiprocessing re-runs the main script in new processes; the trial workers must not, or a script
    # calling tune() at top level (no `if __name__ == "__main__":`) would start its sweep in every worker
    config = sweep_config(tmp_path, {"max_trials": 2, "trials_per_process": 1, "space": SPACE})
    script = tmp_path / "my_sweep.py"
    script.write_text(
        "import toolkit\n"
        f"result = toolkit.tune(toolkit.load_config({str(config.source)!r}), out_dir='sweep')\n"
        "print('statuses', sorted(t['status'] for t in result.trials))\n")
    env = subprocess_env()
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "statuses ['completed', 'completed']" in done.stdout
