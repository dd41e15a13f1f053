"""Distributed sweeps on loopback: flags, the chief's books, and real supervised sweeps through the CLI.

Every process a test starts is bounded by a timeout and killed in a finally block or fixture. Tests wait for
events (output lines, files, process exits), never for a time to pass; the timeouts only bound a hang.
"""

import csv
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from toolkit.distributed import (
    Address,
    Chief,
    ChiefClient,
    TrialEnd,
    check_worker_id,
    config_identity,
    format_trial_end,
    parse_address,
    plan,
)
from toolkit.errors import UserError
from toolkit.sweeps import keras_tuner_compat as compat

from helpers import default_sigint, subprocess_env

SWEEP = """\
name: iris-dist
seed: 3
data: {source: sklearn.iris}
model: {hidden: [8]}
training:
  optimizer: {name: adam, learning_rate: 0.05}
  batch_size: 32
  epochs: 1
search:
  tuner: random
  objective: val_accuracy
  max_trials: 4
  trials_per_process: inline
  space:
    model.hidden.0: {int: [2, 32]}
    training.optimizer.learning_rate: {float: [1.0e-3, 1.0e-1], log: true}
"""


# ----------------------------------------------------------------------------------- flags


@pytest.mark.parametrize("kwargs, message", [
    ({"workers": 0}, "--workers: expected a whole number of worker processes, 1 or more; received 0."),
    ({"role": "worker"}, "--chief: a worker needs the chief's address; expected HOST:PORT, e.g. --chief "
                         "10.0.0.5:8470."),
    ({"chief": "h:1", "overwrite": True}, "--overwrite: workers never delete the shared sweep directory; use "
                                          "--overwrite on the chief."),
    ({"chief": "h:1", "workers": 2}, "--workers: a worker does not start workers; start them with --workers "
                                     "on the chief; received 2."),
    ({"chief": "h:1", "listen": "h:2"}, "--listen: a worker does not listen; it connects to the chief with "
                                        "--chief; received 'h:2'."),
    ({"role": "chief", "chief": "h:1"}, "--chief: the chief does not connect to a chief; it listens with "
                                        "--listen; received 'h:1'."),
    ({"workers": 2, "worker_id": "a"}, "--worker-id: only a worker (--role worker) has a worker id; "
                                       "received 'a'."),
    ({"workers": 2, "chief_timeout": 5.0}, "--chief-timeout: only a worker (--role worker) waits for a chief; "
                                           "received 5.0."),
    ({"chief": "h:1", "chief_timeout": 0}, "--chief-timeout: expected a number of seconds above 0; received 0."),
    ({"chief": "h:1", "worker_id": "the-chief"}, "--worker-id: keras-tuner reserves ids containing 'chief' for "
                                                 "the chief; received 'the-chief'."),
    ({"chief": "localhost"}, "--chief: the port is missing; expected HOST:PORT, e.g. 127.0.0.1:8470 or "
                             "10.0.0.5:8470; received 'localhost'."),
    ({"role": "boss"}, "--role: unknown role; received 'boss'. Valid choices: chief, worker."),
])
def test_bad_flag_combinations_are_refused_with_a_clear_message(kwargs, message):
    with pytest.raises(UserError) as caught:
        plan(**kwargs)
    assert str(caught.value) == message


def test_impossible_listen_addresses_and_worker_counts_are_refused_before_anything_starts():
    with pytest.raises(UserError, match=r"^--listen: the chief cannot listen there \(.*\): the port is in use, or the "
                                        r"host is not an address of this machine; received 'no-such-host\.invalid'\.$"):
        plan(listen="no-such-host.invalid")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(UserError, match=rf"received '127\.0\.0\.1:{port}'"):
            plan(listen=f"127.0.0.1:{port}")
    with pytest.raises(UserError, match=r"^--workers: more worker processes than this machine can run"):
        plan(workers=10**5)


def test_plans_infer_the_role_and_bind_loopback_by_default():
    local = plan(workers=3)
    assert (local.role, local.workers, local.listen) == ("chief", 3, Address("127.0.0.1", 0))
    assert plan(role="chief").listen == Address("127.0.0.1", 0)
    assert plan(listen="0.0.0.0:8470").listen == Address("0.0.0.0", 8470)
    worker = plan(chief="10.0.0.5:8470", worker_id="gpu-1")
    assert (worker.role, worker.chief, worker.worker_id) == ("worker", Address("10.0.0.5", 8470), "gpu-1")
    assert "chief" not in plan(chief="h:1").worker_id.lower()  # a default id is never taken for a chief


def test_addresses_and_worker_ids():
    assert parse_address("[::1]:9000", flag="--chief") == Address("::1", 9000)
    assert str(Address("::1", 9000)) == "[::1]:9000"
    assert parse_address("example.org", flag="--listen", default_port=0) == Address("example.org", 0)
    with pytest.raises(UserError, match="expected a port between 1 and 65535; received 70000"):
        parse_address("h:70000", flag="--chief")
    assert check_worker_id("gpu-1.node_2") == "gpu-1.node_2"
    with pytest.raises(UserError, match="letters, digits"):
        check_worker_id("a b")


def test_progress_line_names_the_worker():
    end = TrialEnd(trial_id="07", status="COMPLETED", score=0.91234, worker="tuner1", done=3, planned=10,
                   best_score=0.95, best_trial="02", objective="val_accuracy", elapsed_s=90.0, finished_here=3)
    assert format_trial_end(end) == ("trial 3/10 (id 07) [tuner1]: val_accuracy 0.9123 | best 0.9500 (trial 02) "
                                     "| elapsed 0:01:30 | eta 0:03:30")
    failed = TrialEnd(trial_id="08", status="FAILED", score=None, worker="tuner0", done=4, planned=10,
                      best_score=None, best_trial=None, objective="val_accuracy", elapsed_s=10.0, finished_here=1,
                      message="diverged: the training loss became NaN")
    assert "[tuner0]: failed: diverged: the training loss became NaN | best - |" in format_trial_end(failed)


# ----------------------------------------------------------------------------------- the chief's books


@pytest.fixture()
def sweep_config(tmp_path):
    path = tmp_path / "iris.yaml"
    path.write_text(SWEEP)
    return path


@pytest.fixture()
def served(tmp_path, sweep_config):
    """A chief serving a real keras-tuner oracle (3 trials of one float) on loopback, and a stub to call it."""
    import grpc
    import keras_tuner
    from keras_tuner.src import protos

    oracle = keras_tuner.oracles.RandomSearchOracle(objective=keras_tuner.Objective("score", "max"),
                                                    max_trials=3, seed=1)
    compat.set_project_dir(oracle, tmp_path / "sweep", "tuner")
    space = oracle.get_space()
    space.Float("x", 0.0, 1.0)
    oracle.update_space(space)
    events = []
    chief = Chief(oracle, identity=config_identity(_load(sweep_config)), source=str(sweep_config),
                  sweep_dir=tmp_path / "sweep", on_event=events.append, lease_s=0.3)
    address = chief.start(Address("127.0.0.1", 0))
    channel = grpc.insecure_channel(str(address))
    stub = protos.get_service_grpc().OracleStub(channel)
    try:
        yield chief, stub, protos.get_service(), events
    finally:
        channel.close()
        chief.stop()


def _load(path):
    from toolkit.config import load_config

    return load_config(path)


def _create(stub, service, tuner_id):
    from keras_tuner.src.engine import trial as trial_module

    return trial_module.Trial.from_proto(stub.CreateTrial(service.CreateTrialRequest(tuner_id=tuner_id),
                                                          timeout=10).trial)


def _finish(stub, service, trial, score):
    stub.UpdateTrial(service.UpdateTrialRequest(trial_id=trial.trial_id, metrics={"score": score}), timeout=10)
    trial.status = "COMPLETED"
    stub.EndTrial(service.EndTrialRequest(trial=trial.to_proto()), timeout=10)


@pytest.mark.slow  # imports keras-tuner (TensorFlow) or starts a ktk process
def test_a_silent_worker_loses_its_trial_and_a_late_result_is_recorded_once(served):
    chief, stub, service, events = served
    lost = _create(stub, service, "w1")
    chief.requeue_silent_workers(now=time.monotonic() + 1.0)  # w1 sends no heartbeat: judged past its lease
    assert len(events) == 1
    assert re.fullmatch(rf"worker w1 silent for \d s: trial {lost.trial_id} goes back to the queue", events[0])
    again = _create(stub, service, "w2")
    assert again.trial_id == lost.trial_id  # the queue hands it to another worker
    _finish(stub, service, lost, 0.7)  # w1 was alive after all and reports first
    _finish(stub, service, again, 0.2)  # w2's result for the same trial is not recorded a second time
    oracle = chief.oracle
    assert oracle.end_order == [lost.trial_id]
    assert oracle.trials[lost.trial_id].score == 0.7
    assert not oracle.ongoing_trials and not compat.retry_queue(oracle)


@pytest.mark.slow  # imports keras-tuner (TensorFlow) or starts a ktk process
def test_the_chief_finishes_once_every_trial_is_done_and_every_worker_told(served):
    chief, stub, service, events = served
    trials = [_create(stub, service, "w1"), _create(stub, service, "w2")]
    _finish(stub, service, trials[0], 0.5)
    third = _create(stub, service, "w1")
    for trial, score in ((trials[1], 0.6), (third, 0.4)):
        _finish(stub, service, trial, score)
    assert not chief.finished()  # no worker has heard STOPPED yet
    assert _create(stub, service, "w1").status == "STOPPED"
    assert not chief.finished()  # w2 would otherwise wait for a chief that is gone
    assert _create(stub, service, "w2").status == "STOPPED"
    assert chief.finished()
    chief.stop()
    saved = json.loads((chief.sweep_dir / "tuner" / "oracle.json").read_text())
    assert saved["ongoing_trials"] == {}  # keras-tuner's own last save still listed the last trial
    assert sorted(saved["end_order"]) == sorted(t.trial_id for t in (trials[0], trials[1], third))


@pytest.mark.slow  # imports keras-tuner (TensorFlow) or starts a ktk process
def test_failed_trials_in_a_row_over_all_workers_stop_the_handing_out(served):
    chief, stub, service, events = served
    chief.max_failures_in_a_row = 2
    first, second = _create(stub, service, "w1"), _create(stub, service, "w2")
    for trial in (first, second):
        # keras-tuner's trial messages do not travel over gRPC: the chief reads the worker's trial record
        record = chief.sweep_dir / "records" / f"{trial.trial_id}.json"
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps({"trial_id": trial.trial_id, "status": "failed", "message": "diverged"}))
        trial.status = "FAILED"
        stub.EndTrial(service.EndTrialRequest(trial=trial.to_proto()), timeout=10)
    assert chief.halt_message == ("the search stopped after 2 failed trials in a row (limit 2); the last failed "
                                  "with: diverged. Finished trials are kept: fix the cause and "
                                  "run the same command to resume, or raise the limit")
    assert _create(stub, service, "w1").status == "STOPPED"  # one trial was left: it is not handed out
    assert _create(stub, service, "w2").status == "STOPPED"
    assert chief.finished()


@pytest.mark.slow  # imports keras-tuner (TensorFlow) or starts a ktk process
def test_trials_running_when_a_chief_stopped_go_back_to_their_workers(served):
    chief, stub, service, events = served
    oracle = chief.oracle
    first, second = _create(stub, service, "w1"), _create(stub, service, "w2")
    running = {"w1": first.trial_id, "w2": second.trial_id}
    # What keras-tuner's reload does with the trials a stopped chief listed as running: back to the queue.
    queue = compat.retry_queue(oracle)
    queue.extend(t.trial_id for t in oracle.ongoing_trials.values())
    oracle.ongoing_trials.clear()
    chief.restore_running(running, local_ids=["w1"], remote_possible=False)
    assert oracle.ongoing_trials["w1"].trial_id == first.trial_id  # held for its own (restarted) worker
    assert queue == [second.trial_id]  # w2 cannot come back here: anyone may take it
    queue.clear()
    oracle.ongoing_trials["w2"] = oracle.trials[second.trial_id]
    oracle.ongoing_trials.pop("w1")
    queue.append(first.trial_id)
    chief.restore_running(running, local_ids=[], remote_possible=True)
    assert {w: t.trial_id for w, t in oracle.ongoing_trials.items()} == running
    assert _create(stub, service, "w1").trial_id == first.trial_id  # a restarted w1 resumes it
    _finish(stub, service, first, 0.3)  # and w1 still training it reports it: once
    assert oracle.end_order == [first.trial_id] and not compat.retry_queue(oracle)


@pytest.mark.slow  # imports keras-tuner (TensorFlow) or starts a ktk process
def test_the_handshake_refuses_another_config_a_busy_id_and_another_directory(served, sweep_config, tmp_path):
    from toolkit.distributed import run_worker

    chief, stub, service, events = served
    other = _load(sweep_config).with_values({"training.epochs": 2})
    with pytest.raises(UserError) as caught:
        run_worker(other, chief=chief.address, worker_id="w9", chief_timeout=5)
    assert str(caught.value) == (f"{sweep_config}: training.epochs: this worker's config is not the chief's: it "
                                 "differs at these keys; start workers with the chief's config file and --set "
                                 "values.")
    first = ChiefClient(chief.address, "w1", 5)
    first.hello(None)
    second = ChiefClient(chief.address, "w1", 5)
    with pytest.raises(UserError, match="worker id 'w1' is in use by a running worker"):
        second.hello(None)
    first.close()  # a goodbye frees the id at once: a restart may take it over
    assert second.hello(None)["ok"]
    second.close()
    with pytest.raises(UserError) as caught:
        run_worker(_load(sweep_config), chief=chief.address, worker_id="w3", out_dir=str(tmp_path / "elsewhere"),
                   chief_timeout=5)
    assert "--out: this is not the sweep directory of the chief at 127.0.0.1:" in str(caught.value)


@pytest.mark.slow  # imports keras-tuner (TensorFlow) or starts a ktk process
def test_an_unreachable_chief_is_a_clear_error_within_the_timeout(sweep_config):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # keras-tuner's own workers wait an hour; this one gives up after its --chief-timeout (the subprocess
    # timeout only bounds a hang)
    result = subprocess.run(
        [sys.executable, "-m", "toolkit", "tune", str(sweep_config), "--role", "worker", "--chief",
         f"127.0.0.1:{port}", "--chief-timeout", "2"], capture_output=True, text=True, env=subprocess_env(),
        timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"ktk: error: --chief: cannot reach the chief at 127.0.0.1:{port} within 2 s: is it running (ktk tune "
        "CONFIG --role chief --listen HOST:PORT) and listening on an address this machine can reach?")


# ----------------------------------------------------------------------------------- whole sweeps


class Sweep:
    """`ktk tune` in a subprocess, its output lines collected as they arrive; always cleaned up."""

    def __init__(self, *args, cwd):
        self.out = Path(cwd) / "sweep"
        self.lines = []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "toolkit", "tune", *map(str, args), "--out", str(self.out)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=subprocess_env(), cwd=cwd,
            start_new_session=True, preexec_fn=default_sigint)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def text(self):
        return "\n".join(self.lines)

    def wait_for(self, predicate, timeout, what):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"gave up waiting for {what}; output so far:\n{self.text()}")

    def wait(self, timeout):
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"ktk tune still running after {timeout} s:\n{self.text()}") from None
        self._reader.join(5)
        return code

    def worker_pids(self):
        try:
            return json.loads((self.out / "logs" / "workers.json").read_text())
        except (OSError, ValueError):
            return {}

    def ongoing(self):
        try:
            return json.loads((self.out / "tuner" / "oracle.json").read_text())["ongoing_trials"]
        except (OSError, ValueError, KeyError):
            return {}

    def kill_everything(self):
        pids = list(self.worker_pids().values())
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        for pid in pids:  # workers run in sessions of their own
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


@pytest.fixture()
def sweeps():
    started = []

    def start(*args, cwd):
        sweep = Sweep(*args, cwd=cwd)
        started.append(sweep)
        return sweep

    yield start
    for sweep in started:
        sweep.kill_everything()


def _trials(sweep_dir):
    with open(sweep_dir / "trials.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _oracle(sweep_dir):
    return json.loads((sweep_dir / "tuner" / "oracle.json").read_text())


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_until(predicate, timeout, what):
    """Waits for an event; the timeout only bounds a hang."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.1)


@pytest.mark.slow
def test_two_workers_run_every_trial_once_and_the_chief_exits_promptly(sweeps, sweep_config, tmp_path):
    sweep = sweeps(sweep_config, "--workers", "2", "--set", "search.max_trials=6", cwd=tmp_path)
    assert sweep.wait(240) == 0, sweep.text()
    rows = _trials(sweep.out)
    assert sorted(r["trial_id"] for r in rows) == ["0", "1", "2", "3", "4", "5"]
    assert {r["status"] for r in rows} == {"completed"}
    assert {r["worker"] for r in rows} == {"tuner0", "tuner1"}
    oracle = _oracle(sweep.out)
    assert oracle["ongoing_trials"] == {} and sorted(oracle["end_order"]) == ["0", "1", "2", "3", "4", "5"]
    assert json.loads((sweep.out / "best" / "metrics.json").read_text())["test"]
    trial_lines = [i for i, line in enumerate(sweep.lines) if line.startswith("trial ")]
    assert len(trial_lines) == 6 and all("[tuner" in sweep.lines[i] for i in trial_lines)
    # The chief's own loop serves the oracle (not keras-tuner's, which polls every 20 s before it stops): it
    # stops when the last trial has ended and every worker was told, then best/ is retrained, once.
    retrain = [i for i, line in enumerate(sweep.lines) if line.startswith("retraining trial")]
    assert len(retrain) == 1 and retrain[0] > trial_lines[-1]
    assert not any(_alive(pid) for pid in sweep.worker_pids().values())  # stopped (and reaped) by the chief

    # A finished distributed sweep resumed in one process runs nothing again (not even the last trial).
    again = sweeps(sweep_config, "--set", "search.max_trials=6", cwd=tmp_path)
    assert again.wait(120) == 0, again.text()
    assert "6 of 6 trials already done" in again.text()
    assert not [line for line in again.lines if line.startswith("trial ")]


@pytest.mark.slow
def test_a_worker_killed_mid_trial_is_restarted_and_no_trial_is_lost_or_repeated(sweeps, sweep_config, tmp_path):
    sweep = sweeps(sweep_config, "--workers", "2", cwd=tmp_path)
    sweep.wait_for(lambda: "tuner1" in sweep.ongoing() and "tuner1" in sweep.worker_pids(), 120,
                   "tuner1 to start a trial")
    killed_trial = sweep.ongoing()["tuner1"]
    os.kill(sweep.worker_pids()["tuner1"], signal.SIGKILL)
    assert sweep.wait(240) == 0, sweep.text()
    text = sweep.text()
    assert "worker tuner1 was killed by SIGKILL (out of memory, or kill -9); its trial" in text
    rows = _trials(sweep.out)
    assert sorted(r["trial_id"] for r in rows) == ["0", "1", "2", "3"]
    assert {r["status"] for r in rows} == {"completed"}
    oracle = _oracle(sweep.out)
    assert sorted(oracle["end_order"]) == ["0", "1", "2", "3"]  # each trial ended exactly once
    assert oracle["ongoing_trials"] == {}
    if f"its trial {killed_trial} resumes" in text:  # (unless tuner1 finished it just before the kill)
        assert next(r for r in rows if r["trial_id"] == killed_trial)["worker"] == "tuner1"


@pytest.mark.slow
def test_ctrl_c_stops_everything_and_a_plain_ktk_tune_resumes(sweeps, sweep_config, tmp_path):
    # 20 trials: Ctrl-C comes after the first, well before the last (a few seconds on a loaded machine)
    everything = [f"{i:02d}" for i in range(20)]  # (ids are padded to the width of the largest)
    sweep = sweeps(sweep_config, "--workers", "2", "--set", "search.max_trials=20", cwd=tmp_path)
    sweep.wait_for(lambda: any(line.startswith("trial 1/20") for line in sweep.lines), 120, "a first trial")
    pids = sweep.worker_pids()
    os.kill(sweep.process.pid, signal.SIGINT)
    assert sweep.wait(60) == 130, sweep.text()
    assert "ktk: interrupted" in sweep.text()
    assert pids
    _wait_until(lambda: not any(_alive(pid) for pid in pids.values()), 30, "the workers to end")
    # trials.csv lists exactly the recorded trials at this stop too (what ktk compare reads)
    done_before = {r["trial_id"] for r in _trials(sweep.out)}
    assert done_before == {p.stem for p in (sweep.out / "records").glob("*.json")}
    assert 1 <= len(done_before) < 20

    resumed = sweeps(sweep_config, "--set", "search.max_trials=20", cwd=tmp_path)
    assert resumed.wait(300) == 0, resumed.text()
    assert f"{len(done_before)} of 20 trials already done" in resumed.text()
    rows = _trials(sweep.out)
    assert [r["trial_id"] for r in rows] == everything
    assert {r["status"] for r in rows} == {"completed"}
    # no recorded trial runs again, even one stopped between its record and keras-tuner's end of it
    assert len([line for line in resumed.lines if line.startswith("trial ")]) == 20 - len(done_before)
    assert sorted(_oracle(sweep.out)["end_order"]) == everything


@pytest.mark.slow
def test_workers_nest_their_trials_under_the_chief_s_mlflow_run(sweeps, sweep_config, tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    sweep = sweeps(sweep_config, "--workers", "2", "--set", "search.max_trials=3", "--mlflow", uri, cwd=tmp_path)
    assert sweep.wait(240) == 0, sweep.text()
    assert "warning" not in sweep.text(), sweep.text()
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["iris-dist"])
    parents = runs[runs["tags.ktk.kind"] == "sweep"]
    assert len(parents) == 1
    parent = parents.iloc[0]["run_id"]
    trials = runs[runs["tags.ktk.kind"] == "trial"]
    assert sorted(trials["tags.ktk.trial_id"]) == ["0", "1", "2"]
    assert set(trials["tags.mlflow.parentRunId"]) == {parent}
    best = runs[runs["tags.ktk.kind"] == "best"]
    assert len(best) == 1 and best.iloc[0]["tags.best"] == "true" and best.iloc[0]["tags.mlflow.parentRunId"] == parent


@pytest.mark.slow
def test_two_workers_train_packs_and_every_trial_is_ended_once(sweeps, sweep_config, tmp_path):
    # search.pack: each worker takes its trials in groups (its extra trials under ids "<worker>+pack<k>",
    # booked as the worker's), trains them together and reports each; the chief still exits when all are done.
    sweep = sweeps(sweep_config, "--workers", "2", "--set", "search.max_trials=6", "--set", "search.pack=3",
                   cwd=tmp_path)
    assert sweep.wait(240) == 0, sweep.text()
    rows = _trials(sweep.out)
    assert sorted(r["trial_id"] for r in rows) == ["0", "1", "2", "3", "4", "5"]
    assert {r["status"] for r in rows} == {"completed"}
    assert {r["worker"] for r in rows} <= {"tuner0", "tuner1"}
    oracle = _oracle(sweep.out)
    assert oracle["ongoing_trials"] == {} and sorted(oracle["end_order"]) == ["0", "1", "2", "3", "4", "5"]
    records = [json.loads(p.read_text()) for p in (sweep.out / "records").glob("*.json")]
    assert any(r.get("pack", 1) > 1 for r in records)  # some trials did train together
