"""Resumable runs (``ktk run ... --resume``) and provenance in environment.json.

The slow tests kill a real ``ktk run`` (SIGKILL, SIGINT) after a few epochs, resume it and compare it with an
uninterrupted run of the same config: with op determinism on, metrics and history must be equal bit for bit.
The fast tests pin the refusals: what is not an unfinished ktk run of this config and data is never resumed.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from helpers import REPO, default_sigint, ktk, ktk_here, subprocess_env, write_run

# Dropout (a random generator Keras does not save), early stopping with best weights restored (state Keras does not
# save) and shuffling every epoch: all three must come back exactly after a resume.
CONFIG = {
    "name": "resume-test",
    "seed": 5,
    "data": {"source": "csv", "path": "points.csv", "target": "label"},
    "model": {"hidden": [16, 16], "dropout": 0.2},
    "training": {"epochs": 14, "batch_size": 16, "optimizer": {"name": "adam", "learning_rate": 0.01},
                 "early_stopping": {"patience": 4}},
}


def _write_data(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 2))
    label = ((x[:, 0] * x[:, 1] + 0.3 * rng.normal(size=300)) > 0).astype(int)
    lines = ["a,b,label"] + [f"{a!r},{b!r},{c}" for (a, b), c in zip(x.tolist(), label.tolist())]
    path = folder / "points.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    _write_data(tmp_path)
    path = tmp_path / "resume.yaml"
    path.write_text(yaml.safe_dump(CONFIG, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """An uninterrupted run of CONFIG (its config file beside it: ``../resume.yaml``), trained once for the module."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    _write_data(folder)
    (folder / "resume.yaml").write_text(yaml.safe_dump(CONFIG, sort_keys=False))
    done = ktk("run", folder / "resume.yaml", "--out", folder / "whole", "-q")
    assert done.returncode == 0, done.stderr
    return folder / "whole"


def _history_rows(path: Path) -> int:
    try:
        return max(0, len(path.read_text().strip().splitlines()) - 1)
    except OSError:
        return 0


def _interrupt_after(config_file: Path, out: Path, epochs: int, sig: int, every_epoch: bool = False) -> int:
    """Starts ``ktk run CONFIG --out OUT`` and sends `sig` once history.csv has `epochs` rows; its exit status.
    `every_epoch`: back up after every epoch (by default short epochs are backed up every so many)."""
    env = subprocess_env(**({"KTK_BACKUP_EVERY_EPOCH": "1"} if every_epoch else {}))
    process = subprocess.Popen([sys.executable, "-m", "toolkit", "run", str(config_file), "--out", str(out), "-q"],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               preexec_fn=default_sigint)
    deadline = time.time() + 120
    while process.poll() is None and time.time() < deadline:
        if _history_rows(out / "history.csv") >= epochs:
            # Frozen first (SIGSTOP acts at once, whatever the load on the machine), so that the signal lands
            # before the run could finish its short epochs; then let go: it sees `sig` as a user's Ctrl-C or kill.
            process.send_signal(signal.SIGSTOP)
            process.send_signal(sig)
            process.send_signal(signal.SIGCONT)
            break
        time.sleep(0.01)
    _, stderr = process.communicate(timeout=120)
    assert _history_rows(out / "history.csv") < CONFIG["training"]["epochs"], "the run ended before it was stopped"
    return process.returncode


def _outcome(run_dir: Path) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics.pop("wall_time_s")
    return {"metrics": metrics, "history": (run_dir / "history.csv").read_text()}


@pytest.mark.slow
def test_a_run_killed_after_some_epochs_resumes_to_the_uninterrupted_result(uninterrupted, tmp_path):
    expected = _outcome(uninterrupted)
    assert 4 < expected["metrics"]["epochs_run"]  # the kill below comes before early stopping ends the run

    killed = tmp_path / "killed"
    assert _interrupt_after(uninterrupted.parent / "resume.yaml", killed, 3, signal.SIGKILL,
                            every_epoch=True) == -signal.SIGKILL
    assert (killed / "backup").is_dir() and not (killed / "metrics.json").exists()
    resumed = ktk("run", "--resume", killed, "-q")
    assert resumed.returncode == 0, resumed.stderr
    assert _outcome(killed) == expected  # bit for bit: every metric and every epoch of history.csv
    assert not (killed / "backup").exists()  # a finished run keeps no backup
    environment = json.loads((killed / "environment.json").read_text())
    assert [r["from_epoch"] for r in environment["resumed"]] in ([2], [3])  # it went on; it did not start again

    again = ktk("run", "--resume", killed)
    assert again.returncode == 2 and "this run has finished" in again.stderr
    assert _outcome(killed) == expected


@pytest.mark.slow
def test_a_run_stopped_with_ctrl_c_resumes_with_its_config_and_out(uninterrupted, tmp_path):
    config_file, stopped = uninterrupted.parent / "resume.yaml", tmp_path / "stopped"
    assert _interrupt_after(config_file, stopped, 2, signal.SIGINT) == 130
    resumed = ktk("run", config_file, "--out", stopped, "--resume", "-q")
    assert resumed.returncode == 0, resumed.stderr
    assert _outcome(stopped) == _outcome(uninterrupted)  # short epochs, backed up every so many: replayed alike
    environment = json.loads((stopped / "environment.json").read_text())
    assert [r["from_epoch"] for r in environment["resumed"]][0] in (1, 2)  # the first epoch is always backed up


@pytest.mark.slow
def test_environment_json_records_provenance(uninterrupted):
    out, folder = uninterrupted, uninterrupted.parent
    environment = json.loads((out / "environment.json").read_text())
    data = (folder / "points.csv").read_bytes()
    assert environment["data_files"] == {"data.path": {"path": str((folder / "points.csv").resolve()),
                                                       "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}}
    assert environment["git"] is None  # the config is in no git repository
    assert environment["deterministic_ops"] is True
    assert environment["host"] and environment["cpu_count"] >= 1 and environment["gpus"] == []
    for package in ("keras-tuner", "pandas", "scikit-learn", "numpy", "keras"):
        assert environment["packages"][package], package
    table = ktk("compare", out, "--all-params", "--format", "json")
    row = json.loads(table.stdout)[0]
    assert row["env.data_files.data.path.sha256"] == hashlib.sha256(data).hexdigest()
    assert row["env.deterministic_ops"] is True and row["env.packages.pandas"]


# ------------------------------------------------------------------------------------- provenance, fast


def test_the_recorded_dependencies_are_pyprojects():
    import tomllib

    from toolkit.provenance import DIRECT_DEPENDENCIES

    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    names = [d.split(";")[0].split("[")[0].strip() for d in declared]
    names = [n.split("<")[0].split(">")[0].split("=")[0].split("!")[0].split("~")[0].strip().lower() for n in names]
    assert sorted(names) == sorted(DIRECT_DEPENDENCIES)


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_git_commit_and_dirty_flag_of_the_configs_repository(tmp_path):
    from toolkit.provenance import git_state

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True,
                       env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                            "GIT_COMMITTER_EMAIL": "t@t"})

    assert git_state(tmp_path) is None  # not in git (tmp_path lies outside any repository)
    git("init", "-q")
    (tmp_path / "config.yaml").write_text("name: x\n")
    git("add", "config.yaml")
    git("commit", "-q", "-m", "c")
    head = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    assert git_state(tmp_path) == {"commit": head.strip(), "dirty": False}
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "new.txt").write_text("untracked files, such as runs, do not count")
    assert git_state(tmp_path)["dirty"] is False
    (tmp_path / "config.yaml").write_text("name: y\n")
    assert git_state(tmp_path)["dirty"] is True


def test_compare_shows_provenance_columns_only_with_all_params(tmp_path):
    run_dir = write_run(tmp_path / "r1")
    (run_dir / "environment.json").write_text(json.dumps({
        "ktk": "0.1.0", "git": {"commit": "abc123", "dirty": True}, "host": "box", "cpu_count": 8,
        "gpus": ["NVIDIA H100"], "deterministic_ops": True, "packages": {"pandas": "2.2.0", "keras-tuner": "1.4.8"},
        "data_files": {"data.path": {"path": "/d/x.csv", "bytes": 3, "sha256": "f00d"}}}))
    plain = json.loads(ktk_here("compare", run_dir, "--format", "json").stdout)[0]
    assert not [c for c in plain if c.startswith("env.")]
    row = json.loads(ktk_here("compare", run_dir, "--all-params", "--format", "json").stdout)[0]
    assert {k: v for k, v in row.items() if k.startswith("env.")} == {
        "env.ktk": "0.1.0", "env.host": "box", "env.cpu_count": 8, "env.gpus": "NVIDIA H100",
        "env.deterministic_ops": True, "env.git.commit": "abc123", "env.git.dirty": True,
        "env.packages.pandas": "2.2.0", "env.packages.keras-tuner": "1.4.8", "env.data_files.data.path.sha256": "f00d"}
    damaged = write_run(tmp_path / "r2")
    (damaged / "environment.json").write_text("{not json")
    assert ktk_here("compare", damaged, "--all-params").returncode == 0  # provenance never makes a run skipped


# --------------------------------------------------------------------------------- refusals, fast


def _unfinished_run(run_dir: Path, config_file: Path) -> Path:
    """What a killed `ktk run` leaves before its first backup: marker, resolved config, environment."""
    from toolkit.config import dump_yaml, load_config

    run_dir.mkdir()
    (run_dir / ".ktk-run").write_text("ktk run\n")
    (run_dir / "config.yaml").write_text(dump_yaml(load_config(config_file).to_dict()))
    return run_dir


def _error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1, result.stderr
    return result.stderr


def _listing(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_resume_of_a_missing_directory_or_a_file(tmp_path, config_file):
    assert "no such directory" in _error(ktk_here("run", "--resume", tmp_path / "nothing"))
    assert "this is a file, not a run directory" in _error(ktk_here("run", "--resume", config_file))


def test_resume_refuses_a_folder_that_ktk_run_did_not_make(tmp_path, config_file):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    (folder / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    before = _listing(folder)
    message = _error(ktk_here("run", config_file, "--out", folder, "--resume"))
    assert "not a run directory that ktk run made" in message and ".ktk-run" in message
    assert _listing(folder) == before


def test_resume_refuses_a_finished_run(tmp_path):
    run_dir = write_run(tmp_path / "done")
    (run_dir / ".ktk-run").write_text("ktk run\n")
    before = _listing(run_dir)
    assert "this run has finished (metrics.json is there)" in _error(ktk_here("run", "--resume", run_dir))
    assert _listing(run_dir) == before


def test_resume_refuses_another_config_and_names_the_difference(tmp_path, config_file):
    run_dir = _unfinished_run(tmp_path / "run", config_file)
    before = _listing(run_dir)
    message = _error(ktk_here("run", config_file, "--out", run_dir, "--resume", "--set", "model.dropout=0.3"))
    assert "the run was started with another config: model.dropout: 0.2 there, 0.3 here" in message
    assert _listing(run_dir) == before


def test_resume_refuses_changed_data(tmp_path, config_file):
    run_dir = _unfinished_run(tmp_path / "run", config_file)
    (run_dir / "environment.json").write_text(json.dumps(
        {"config_source": str(config_file), "data_files": {"data.path": {"path": str(tmp_path / "points.csv"),
                                                                          "sha256": "0" * 64}}}))
    message = _error(ktk_here("run", "--resume", run_dir))
    assert "data.path: the data file has changed since the run started" in message


def test_resume_refuses_a_run_a_process_is_still_training(tmp_path, config_file):
    run_dir = _unfinished_run(tmp_path / "run", config_file)
    with open(run_dir / ".ktk-run", "rb") as marker:
        fcntl.flock(marker, fcntl.LOCK_EX)  # as the training process holds it until it ends
        assert "a ktk process is still training this run" in _error(ktk_here("run", "--resume", run_dir))


@pytest.mark.parametrize("args, expected", [
    (["run", "CFG", "--resume"], "--resume: --resume needs the run directory"),
    (["run"], "CONFIG: the config file is missing"),
    (["run", "--resume", "RUN", "--out", "OTHER"], "--resume: the run directory is given twice"),
    (["run", "--resume", "RUN", "--set", "model.dropout=0.3"], "--set: a run resumes with its own config"),
])
def test_resume_flags_that_do_not_fit_together(tmp_path, config_file, args, expected):
    run_dir = _unfinished_run(tmp_path / "run", config_file)
    names = {"CFG": str(config_file), "RUN": str(run_dir), "OTHER": str(tmp_path / "other")}
    assert expected in _error(ktk_here(*[names.get(a, a) for a in args]))


def test_sweep_overwrite_knows_an_unfinished_runs_backup_and_nothing_else_in_it(tmp_path):
    from toolkit.sweeps.directory import foreign_entries

    run_dir = tmp_path / "best"
    (run_dir / "backup").mkdir(parents=True)
    for name in (".ktk-run", "config.yaml", "environment.json", "history.csv"):
        (run_dir / name).write_text("x")
    for name in ("state.json", "latest.weights.h5", "training_metadata.json", "epoch-12.weights.h5", "rng-12.npz",
                 "best-9.npz", ".rng-13.npz.k2j4h1.tmp"):
        (run_dir / "backup" / name).write_text("x")
    assert foreign_entries(run_dir, run_dir=True) == []
    (run_dir / "backup" / "notes.txt").write_text("mine")
    assert foreign_entries(run_dir, run_dir=True) == ["backup/notes.txt"]
