"""``training.distribute``: one model over several devices (``mirrored``) or processes (``multi_worker``).

The fast tests pin the refusals (flags, TF_CONFIG, config combinations), said before TensorFlow starts. The slow
ones train for real in subprocesses (each needs a fresh TensorFlow: the CPU is split into logical devices, or a
cluster is joined, before TensorFlow starts): ``mirrored`` over two logical CPUs and ``multi_worker`` with two
processes on loopback must give the metrics of a single-device run with the same global batch; a killed worker
makes the chief stop with one message.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
import yaml

from helpers import ktk, ktk_here, subprocess_env

# A single-device run and a distributed one differ only in float rounding (the global batch is the same, split in
# two): measured up to 3e-8 on these metrics (TF 2.21, Keras 3.15, 2-core CPU).
TOLERANCE = 1e-4

BASE = {
    "name": "dist-test",
    "seed": 3,
    "data": {"source": "synthetic.moons", "options": {"n_samples": 300, "noise": 0.3}},
    "model": {"hidden": [16]},
    "training": {"epochs": 2, "batch_size": 32, "optimizer": {"name": "adam", "learning_rate": 0.05}},
}
CLUSTER_TIMEOUT = 240  # seconds a test waits for its processes (a hang fails the test instead of stalling it)


def _config(folder: Path, name: str = "config.yaml", model: Dict = None, **training) -> Path:
    config = json.loads(json.dumps(BASE))
    config["training"].update(training)
    config["model"].update(model or {})
    path = folder / name
    path.write_text(yaml.safe_dump(config))
    return path


def _error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ktk: error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


# ------------------------------------------------------------------------------------------ refusals (fast)

@pytest.mark.parametrize("flags, says", [
    (["--role", "chief"], "--role: --cluster is missing (and TF_CONFIG is not set)"),
    (["--cluster", "127.0.0.1:1,127.0.0.1:2", "--index", "1"], "--cluster: --role is missing"),
    (["--role", "worker", "--cluster", "127.0.0.1:1,127.0.0.1:2"], "--index: a worker needs its --index"),
    (["--role", "worker", "--cluster", "127.0.0.1:1,127.0.0.1:2", "--index", "2"],
     "--index: --index is this process's position in --cluster; expected an integer from 0 to 1; received 2."),
    (["--role", "chief", "--cluster", "127.0.0.1:1,127.0.0.1:2", "--index", "1"],
     "--role: the first address of --cluster is the chief's (--index 0); the others are workers'; "
     "expected --role worker; received '--role chief --index 1'."),
    (["--role", "worker", "--cluster", "127.0.0.1:1,127.0.0.1:2", "--index", "0"], "expected --role chief"),
    (["--role", "chief", "--cluster", "127.0.0.1"], "--cluster: the port is missing"),
    (["--role", "chief", "--cluster", "127.0.0.1:99999"], "--cluster: expected a port between 1 and 65535"),
    (["--role", "chief", "--cluster", "127.0.0.1:1,,127.0.0.1:2"], "--cluster: expected HOST:PORT addresses"),
    (["--role", "chief", "--cluster", "h:1,h:1"], "--cluster: an address is listed twice"),
    (["--role", "chief", "--cluster", "h:1", "--cluster-timeout", "0"], "--cluster-timeout: expected seconds"),
    (["--cluster-timeout", "5"], "--cluster-timeout: --cluster-timeout is for a multi_worker run's cluster"),
])
def test_cluster_flags_are_checked(tmp_path, monkeypatch, flags, says):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    config = _config(tmp_path, distribute="multi_worker")
    assert says in _error(ktk_here("run", config, "--out", tmp_path / "out", *flags))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("tf_config, says", [
    ("{not json", "TF_CONFIG: not JSON"),
    ('{"cluster": {"worker": ["h:1"]}}', 'TF_CONFIG: expected {"cluster"'),
    ('{"cluster": {"ps": ["h:1"], "worker": ["h:2"]}, "task": {"type": "worker", "index": 0}}',
     "TF_CONFIG.cluster: MultiWorkerMirroredStrategy has chief and worker jobs only; received 'ps'"),
    ('{"cluster": {"worker": ["h:1", "h:2"]}, "task": {"type": "worker", "index": 2}}',
     "TF_CONFIG.task.index: expected an integer from 0 to 1; received 2."),
    ('{"cluster": {"worker": ["h:1"]}, "task": {"type": "evaluator", "index": 0}}',
     "TF_CONFIG.task.type: received 'evaluator'. Valid choices: worker."),
    ('{"cluster": {"worker": ["h"]}, "task": {"type": "worker", "index": 0}}',
     "TF_CONFIG.cluster.worker: the port is missing"),
])
def test_tf_config_is_checked(tmp_path, monkeypatch, tf_config, says):
    monkeypatch.setenv("TF_CONFIG", tf_config)
    config = _config(tmp_path, distribute="multi_worker")
    assert says in _error(ktk_here("run", config, "--out", tmp_path / "out"))


@pytest.mark.parametrize("training, flags, says", [
    ({"distribute": "multi_worker"}, [],
     "training.distribute: a multi_worker run needs its cluster; expected ktk run CONFIG --role chief|worker "
     "--cluster HOST:PORT,HOST:PORT,... --index I, or the TF_CONFIG environment variable."),
    ({"distribute": "mirrored"}, ["--role", "chief", "--cluster", "h:1"],
     "--role: a cluster is for training.distribute: multi_worker"),
    ({}, ["--role", "chief", "--cluster", "h:1"], "--role: a cluster is for training.distribute: multi_worker"),
    ({"distribute": "multi_worker"}, ["--role", "chief", "--cluster", "h:1", "--resume"],
     "--resume: a multi_worker run cannot resume"),
    ({"distribute": "multi_worker", "monitor": {"gradients": True}}, ["--role", "chief", "--cluster", "h:1"],
     "training.monitor.gradients: the gradient monitor reads gradients outside the training step"),
    ({"distribute": "mirrored", "steps_per_execution": 8}, [],
     "training.steps_per_execution: Keras runs one step per call under training.distribute"),
])
def test_distribute_refusals(tmp_path, monkeypatch, training, flags, says):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    config = _config(tmp_path, **training)
    assert says in _error(ktk_here("run", config, "--out", tmp_path / "out", *flags))
    assert not (tmp_path / "out").exists()


def test_flags_and_tf_config_together_are_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["h:1"]}, "task": {"type": "worker", "index": 0}}')
    config = _config(tmp_path, distribute="multi_worker")
    assert "the cluster is given twice" in _error(ktk_here("run", config, "--role", "chief", "--cluster", "h:1"))


def test_cluster_of_flags_and_of_tf_config():
    from toolkit.hardware.cluster import cluster_from_flags, parse_tf_config

    worker = cluster_from_flags("worker", "10.0.0.1:2222, 10.0.0.2:2222,10.0.0.3:2222", 2)
    assert (worker.spec, worker.task_type, worker.task_index, worker.index, worker.is_chief) == \
        ({"worker": ["10.0.0.1:2222", "10.0.0.2:2222", "10.0.0.3:2222"]}, "worker", 2, 2, False)
    assert cluster_from_flags("chief", "10.0.0.1:2222").is_chief  # --index defaults to 0 for the chief
    chief_job = parse_tf_config(json.dumps({"cluster": {"worker": ["b:1", "c:1"], "chief": ["a:1"]},
                                            "task": {"type": "worker", "index": 1}}))
    assert (chief_job.addresses, chief_job.index, chief_job.is_chief) == (["a:1", "b:1", "c:1"], 2, False)
    assert cluster_from_flags(environ={"TF_CONFIG": "{not json"}) is None  # read only for a multi_worker run


# ------------------------------------------------------------------------------------- training (slow)

def _metrics(run_dir: Path) -> Dict[str, Dict[str, float]]:
    return json.loads((run_dir / "metrics.json").read_text())


def _assert_close(got: Dict, reference: Dict) -> None:
    for split in ("train", "validation", "test"):
        assert set(got[split]) == set(reference[split])
        for name, value in reference[split].items():
            assert got[split][name] == pytest.approx(value, abs=TOLERANCE), (split, name)
    assert got["epochs_run"] == reference["epochs_run"] and got["best_epoch"] == reference["best_epoch"]


@pytest.fixture(scope="module")
def single_device(tmp_path_factory):
    """The reference: the same config on one device."""
    folder = tmp_path_factory.mktemp("single")
    result = ktk("run", _config(folder), "--out", folder / "run", "-q", cwd=folder)
    assert result.returncode == 0, result.stderr
    return _metrics(folder / "run")


@pytest.mark.slow
def test_mirrored_over_two_logical_cpus_matches_one_device(tmp_path, single_device):
    config = _config(tmp_path, distribute={"strategy": "mirrored", "devices": ["CPU:0", "CPU:1"]})
    result = ktk("run", config, "--out", tmp_path / "run", "-q", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    environment = json.loads((tmp_path / "run" / "environment.json").read_text())
    assert environment["distribute"]["strategy"] == "mirrored" and environment["distribute"]["replicas"] == 2
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["training"]["distribute"] == \
        {"strategy": "mirrored", "devices": ["CPU:0", "CPU:1"]}
    _assert_close(_metrics(tmp_path / "run"), single_device)


@pytest.mark.slow
def test_a_mirrored_run_killed_resumes_to_the_uninterrupted_result(tmp_path):
    config = _config(tmp_path, model={"dropout": 0.2}, epochs=12,
                     distribute={"strategy": "mirrored", "devices": ["CPU:0", "CPU:1"]})
    whole = ktk("run", config, "--out", tmp_path / "whole", "-q", cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr
    killed = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-m", "toolkit", "run", str(config), "--out", str(killed), "-q"],
                               cwd=tmp_path, env=subprocess_env(KTK_BACKUP_EVERY_EPOCH="1"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + CLUSTER_TIMEOUT
        history = killed / "history.csv"
        while not (history.exists() and len(history.read_text().splitlines()) > 3):  # three epochs done
            assert time.monotonic() < deadline and process.poll() is None, process.communicate()[1]
            time.sleep(0.01)
        process.kill()
        process.communicate()
    finally:
        _kill([process])
    assert not (killed / "metrics.json").exists()
    resumed = ktk("run", "--resume", killed, "-q", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    for name in ("history.csv", "metrics.json"):  # bit for bit (but the wall time)
        texts = [json.loads((run / name).read_text()) if name.endswith(".json") else (run / name).read_text()
                 for run in (tmp_path / "whole", killed)]
        for text in texts:
            if isinstance(text, dict):
                text.pop("wall_time_s")
        assert texts[0] == texts[1], name


def _free_ports(count: int) -> List[int]:
    """Ports free now (another program may take one before the cluster binds it: the callers retry)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _start(config: Path, cwd: Path, cluster: str, index: int, *more: str, tf_config: bool = False) -> subprocess.Popen:
    """``ktk run CONFIG --role ... --cluster ... --index ...``, or with the same cluster as ``TF_CONFIG``."""
    cwd.mkdir()
    (cwd.parent / f"{cwd.name}-tmp").mkdir()
    role = "chief" if index == 0 else "worker"
    # TMPDIR: a worker's temporary run directory is made there, so the test sees it removed.
    env = subprocess_env(TMPDIR=str(cwd.parent / f"{cwd.name}-tmp"), PYTHONUNBUFFERED="1")
    env.pop("TF_CONFIG", None)
    flags = ["--role", role, "--cluster", cluster, "--index", str(index)]
    if tf_config:
        env["TF_CONFIG"] = json.dumps({"cluster": {"worker": cluster.split(",")},
                                       "task": {"type": "worker", "index": index}})
        flags = []
    return subprocess.Popen([sys.executable, "-m", "toolkit", "run", str(config), *flags, *more],
                            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _port_taken(*outputs: str) -> bool:
    return any("in use" in text or "Could not start gRPC server" in text for text in outputs)


def _finish(process: subprocess.Popen, timeout: float) -> Tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def _kill(processes: List[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.communicate()


@pytest.mark.slow
def test_multi_worker_on_loopback_matches_one_device(tmp_path, single_device):
    config = _config(tmp_path, distribute="multi_worker")
    for attempt in range(3):
        cluster = ",".join(f"127.0.0.1:{port}" for port in _free_ports(2))
        chief_dir, worker_dir = tmp_path / f"chief{attempt}", tmp_path / f"worker{attempt}"
        processes = []
        try:
            processes.append(_start(config, chief_dir, cluster, 0, "--out", "run", "-q"))
            processes.append(_start(config, worker_dir, cluster, 1, "--out", "run", "-q"))
            chief = _finish(processes[0], CLUSTER_TIMEOUT)
            worker = _finish(processes[1], CLUSTER_TIMEOUT)
        finally:
            _kill(processes)
        if not _port_taken(chief[2], worker[2]):
            break
    assert chief[0] == 0, chief[2]
    assert worker[0] == 0, worker[2]
    assert "trained as a worker, 2 epochs; the chief wrote the run directory" in worker[1]
    assert list(worker_dir.iterdir()) == []  # no run directory (its --out is the chief's)
    assert [p.name for p in (tmp_path / f"worker{attempt}-tmp").iterdir() if p.name.startswith("ktk")] == []
    run_dir = chief_dir / "run"
    assert {p.name for p in run_dir.iterdir()} == {".ktk-run", "config.yaml", "environment.json", "history.csv",
                                                  "labels.json", "metrics.json", "model.keras"}
    environment = json.loads((run_dir / "environment.json").read_text())
    assert environment["distribute"] == {"strategy": "multi_worker", "replicas": 2, "cluster": cluster.split(","),
                                         "index": 0, "devices": environment["distribute"]["devices"]}
    _assert_close(_metrics(run_dir), single_device)
    history = (run_dir / "history.csv").read_text().splitlines()
    assert history[0] == "epoch,accuracy,loss,val_accuracy,val_loss,learning_rate" and len(history) == 3


@pytest.mark.slow
def test_killed_worker_stops_the_chief_with_one_message(tmp_path):
    config = _config(tmp_path, distribute="multi_worker", epochs=500)
    for attempt in range(3):
        cluster = ",".join(f"127.0.0.1:{port}" for port in _free_ports(2))
        chief_dir = tmp_path / f"chief{attempt}"
        processes = []
        try:
            processes.append(_start(config, chief_dir, cluster, 0, "--out", "run", "-q"))
            processes.append(_start(config, tmp_path / f"worker{attempt}", cluster, 1, "-q", tf_config=True))
            deadline = time.monotonic() + CLUSTER_TIMEOUT
            history = chief_dir / "run" / "history.csv"
            while not (history.exists() and len(history.read_text().splitlines()) > 2):  # two epochs done
                assert time.monotonic() < deadline and processes[0].poll() is None and processes[1].poll() is None
                time.sleep(0.2)
            processes[1].send_signal(signal.SIGKILL)
            chief = _finish(processes[0], CLUSTER_TIMEOUT)
        finally:
            _kill(processes)
        if not _port_taken(chief[2]):
            break
    code, _, err = chief
    lines = err.strip().splitlines()
    assert code == 1, err
    assert lines[-1].startswith("ktk: error: a process of the cluster failed or stopped, so this chief of 2 "
                                f"processes ({cluster.replace(',', ', ')}) stops too: "), err
    assert "Traceback" not in err
    assert not (chief_dir / "run" / "metrics.json").exists()  # an unfinished run, as any failed one


@pytest.mark.slow
def test_a_cluster_that_never_forms_ends_after_the_timeout(tmp_path):
    config = _config(tmp_path, distribute="multi_worker")
    cluster = ",".join(f"127.0.0.1:{port}" for port in _free_ports(2))
    result = ktk("run", config, "--out", tmp_path / "run", "--role", "chief", "--cluster", cluster,
                 "--cluster-timeout", "3", cwd=tmp_path, timeout=CLUSTER_TIMEOUT)
    assert result.returncode == -signal.SIGKILL, result.stderr  # (TensorFlow's wait cannot be left otherwise)
    assert result.stderr.strip().splitlines()[-1] == (
        f"ktk: error: the cluster did not form within 3 s: this chief of 2 processes ({cluster.replace(',', ', ')}) "
        "waited for the others; start every process (each with its own --index), or wait longer with "
        "--cluster-timeout")
    assert not (tmp_path / "run").exists()
