"""Bad inputs to `ktk tune`: one clear message, exit status 2, no traceback, nothing lost or left behind.

The fast tests run many bad flags and folders through the real CLI in this process; every one of them is
refused before TensorFlow is imported. The damaged-file tests read records and locks without Keras. Tests that
need Keras (a refused objective, a damaged sweep on resume, --overwrite that really starts over) are slow.
"""

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import IRIS_SWEEP, subprocess_env
from toolkit.cli import main
from toolkit.config import parse_config
from toolkit.errors import UserError
from toolkit.results import SWEEP_MARKER
from toolkit.search import parse_search
from toolkit.sweeps import directory, keras_tuner_compat as compat, read_trials, trial_rows
from toolkit.sweeps.lock import SweepLock
from toolkit.sweeps.records import MAX_RECORD_BYTES, Records, format_trials_csv, trials_csv_text

pytestmark = pytest.mark.filterwarnings("ignore:.*currentThread|getName.*:DeprecationWarning")

IRIS = {
    **IRIS_SWEEP,
    "name": "iris-bad",
    "training": {**IRIS_SWEEP["training"], "epochs": 1},
    "search": {"max_trials": 1, "trials_per_process": "inline", "space": {"model.dropout": {"float": [0.0, 0.5]}}},
}


@pytest.fixture()
def config_file(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(IRIS, sort_keys=False))
    return path


def snapshot(folder):
    """Every file under `folder` with its bytes: what must survive a refusal unchanged."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def refused(capsys, argv):
    """Runs `ktk ARGV` in this process; returns its one error message (asserting exit 2 and no traceback)."""
    status = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert status == 2, err
    assert "Traceback" not in err
    assert err.startswith("ktk: error: ") and err.count("ktk: error: ") == 1, err
    return err[len("ktk: error: "):].strip()


def fake_sweep(folder, marked=True, extra=()):
    """A sweep directory as ktk leaves it (its files are stand-ins: nothing trains)."""
    folder.mkdir()
    config = parse_config(IRIS)
    resolved = dict(config.to_dict(), search=parse_search(config).to_dict())
    (folder / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
    for name in ("records", "histories", "tuner"):
        (folder / name).mkdir()
    (folder / "records" / "0.json").write_text(json.dumps({"trial_id": "0", "status": "failed", "values": {}}))
    (folder / "trials.csv").write_text("trial_id,status\n0,failed\n")
    if marked:
        (folder / SWEEP_MARKER).write_text("{}")
    for name in extra:
        (folder / name).write_text("years of work")
    return folder


# ------------------------------------------------------------------------------------ flags and folders


def test_bad_folders_are_refused_before_anything_is_written(tmp_path, config_file, capsys):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    assert refused(capsys, ["tune", config_file, "--out", a_file]) == (
        f"--out: this is a file, not a directory; expected a new or empty directory, or an existing sweep; "
        f"received '{a_file}'.")
    with pytest.raises(SystemExit) as exit_info:  # argparse refuses an empty path, with its usage line
        main(["tune", str(config_file), "--out", ""])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.endswith("ktk: error: argument --out: expected a folder; received ''.\n")
    long_name = tmp_path / ("x" * 300)
    assert refused(capsys, ["tune", config_file, "--out", long_name]).startswith(
        "--out: cannot use this path (File name too long)")
    inside_a_file = a_file / "sweeps" / "x"
    assert refused(capsys, ["tune", config_file, "--out", inside_a_file]) == (
        f"--out: cannot use this path ({a_file} is a file, not a directory); received '{inside_a_file}'.")

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(dict(IRIS, search=None)))
    (run / "metrics.json").write_text("{}")
    for extra in ([], ["--overwrite"]):
        assert refused(capsys, ["tune", config_file, "--out", run, *extra]) == (
            f"--out: this is a run directory (made by ktk run), not a sweep directory; give --out a new or empty "
            f"directory, or the directory of a sweep to resume; received '{run}'.")

    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    (precious / "config.yaml").write_text("mine")
    assert refused(capsys, ["tune", config_file, "--out", precious]) == (
        f"--out: this folder is not empty and holds no sweep (it holds config.yaml, thesis.tex); a sweep needs a "
        f"new or empty directory; received '{precious}'.")
    assert refused(capsys, ["tune", config_file, "--out", precious, "--overwrite"]) == (
        f"--out: --overwrite deletes only sweep directories made by ktk, and this folder is not one (it holds "
        f"config.yaml, thesis.tex); nothing was deleted. Use --out DIR for a new sweep; received '{precious}'.")
    assert snapshot(precious) == {"config.yaml": b"mine", "thesis.tex": b"years of work"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "precious", "run", "sweep.yaml"]


def test_overwrite_deletes_only_a_marked_sweep_holding_nothing_else(tmp_path, config_file, capsys):
    mixed = fake_sweep(tmp_path / "mixed", extra=["thesis.tex", "data.csv"])
    before = snapshot(mixed)
    assert refused(capsys, ["tune", config_file, "--out", mixed, "--overwrite"]) == (
        f"--out: --overwrite deletes only what ktk wrote, and this sweep directory also holds data.csv, thesis.tex; "
        f"nothing was deleted. Move them out first, or use --out DIR for a new sweep; received '{mixed}'.")
    assert snapshot(mixed) == before

    old = fake_sweep(tmp_path / "old", marked=False)
    before = snapshot(old)
    assert refused(capsys, ["tune", config_file, "--out", old, "--overwrite"]) == (
        f"--out: this sweep was made by an older ktk that did not mark its directories (.ktk-sweep), so "
        f"--overwrite cannot tell its files from others and deletes nothing; delete the folder yourself, or use "
        f"--out DIR for a new sweep; received '{old}'.")
    assert snapshot(old) == before

    # a config that is refused is refused before --overwrite deletes anything
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(dict(IRIS, search=dict(IRIS["search"], tuner="randm"))))
    clean = fake_sweep(tmp_path / "clean")
    before = snapshot(clean)
    assert "search.tuner" in refused(capsys, ["tune", broken, "--out", clean, "--overwrite"])
    assert snapshot(clean) == before


RUN_FILES = ("config.yaml", "metrics.json", "history.csv", "model.keras", "environment.json", ".ktk-run")


def full_sweep(folder):
    """A sweep directory holding every kind of file ktk (and keras-tuner under tuner/) writes into one."""
    fake_sweep(folder)
    (folder / "sweep.json").write_text("{}")
    (folder / "histories" / "0.csv").write_text("epoch,loss\n1,0.5\n")
    (folder / "records" / "1.json").write_text("{}")
    (folder / "records" / ".2.json.k3x9_a.tmp").write_text("")  # an atomic write cut short
    (folder / ".lock.tuner1").write_text("{}")
    for run in (folder / "best", folder / "top" / "trial_1"):
        run.mkdir(parents=True)
        for name in RUN_FILES + ("gradients.csv",):
            (run / name).write_text("x")
    (folder / "tuner" / "oracle.json").write_text('{"ongoing_trials": {}}')
    (folder / "tuner" / "tuner0.json").write_text("{}")
    (folder / "tuner" / "chief.json").write_text("{}\n")
    for trial in ("trial_0", "trial_1"):
        (folder / "tuner" / trial).mkdir()
        (folder / "tuner" / trial / "trial.json").write_text("{}")
    (folder / "tuner" / "trial_1" / "checkpoint.weights.h5").write_text("x")
    (folder / "logs").mkdir()
    for name in ("chief.json", "workers.json", "tuner0.log", "tuner12.log"):
        (folder / "logs" / name).write_text("x")
    return folder


FOREIGN = {  # what the user adds -> the path the refusal names first
    "best/thesis.tex": "best/thesis.tex",
    "histories/notes.txt": "histories/notes.txt",
    "records/notes.json": "records/notes.json",
    "tuner/mine/d.txt": "tuner/mine/",
    "tuner/notes.json": "tuner/notes.json",  # a tuner's own state is always "{}"
    "tuner/trial_0/mine.txt": "tuner/trial_0/mine.txt",
    "top/trial_1/plots/a.png": "top/trial_1/plots/",
    "top/mine/config.yaml": "top/mine/",
    "logs/notes.txt": "logs/notes.txt",
    "sweep.json.bak": "sweep.json.bak",
    ".git/config": ".git/",
}


@pytest.mark.parametrize("added", sorted(FOREIGN))
def test_overwrite_refuses_a_file_ktk_did_not_write_anywhere_in_the_sweep(tmp_path, config_file, capsys, added):
    sweep = full_sweep(tmp_path / "sweep")
    assert directory.foreign_entries(sweep) == []  # ktk's own layout, all of it: --overwrite may delete it
    (sweep / added).parent.mkdir(parents=True, exist_ok=True)
    (sweep / added).write_text("years of work")
    before = snapshot(sweep)
    assert refused(capsys, ["tune", config_file, "--out", sweep, "--overwrite"]) == (
        f"--out: --overwrite deletes only what ktk wrote, and this sweep directory also holds {FOREIGN[added]}; "
        f"nothing was deleted. Move them out first, or use --out DIR for a new sweep; received '{sweep}'.")
    assert snapshot(sweep) == before


def test_overwrite_refuses_links_fifos_and_files_of_the_wrong_kind(tmp_path, config_file, capsys):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    cases = {
        "histories": lambda p: (shutil.rmtree(p), p.symlink_to(outside)),  # a link where ktk makes a folder
        "best/model.keras": lambda p: (p.unlink(), p.symlink_to(outside / "keep.txt")),
        "records/5.json": lambda p: os.mkfifo(p),
        "records/0.json": lambda p: (p.unlink(), p.mkdir()),  # a folder where ktk writes a file
        "tuner/trial_0/trial.json": lambda p: (p.unlink(), p.mkdir(), (p / "x").write_text("x")),
    }
    for number, (name, change) in enumerate(cases.items()):
        sweep = full_sweep(tmp_path / f"sweep{number}")
        change(sweep / name)
        message = refused(capsys, ["tune", config_file, "--out", sweep, "--overwrite"])
        assert message.startswith(f"--out: --overwrite deletes only what ktk wrote, and this sweep directory also "
                                  f"holds {name}"), message
        assert os.path.lexists(sweep / name) and (sweep / "trials.csv").is_file()
    assert (outside / "keep.txt").read_text() == "mine"


def test_overwrite_names_the_first_foreign_files_in_order(tmp_path, config_file, capsys):
    sweep = full_sweep(tmp_path / "sweep")
    for name in ("tuner/z.txt", "best/a.txt", "records/b.txt", "histories/c.txt", "logs/d.txt", "top/e",
                 "z.txt", "a.txt"):
        (sweep / name).write_text("x")
    assert directory.foreign_entries(sweep, most=20) == [
        "a.txt", "z.txt", "best/a.txt", "histories/c.txt", "logs/d.txt", "records/b.txt", "top/e", "tuner/z.txt"]
    assert "also holds a.txt, z.txt, best/a.txt, histories/c.txt, logs/d.txt and more; nothing was deleted" in refused(
        capsys, ["tune", config_file, "--out", sweep, "--overwrite"])


def test_a_retrained_run_holding_other_files_is_never_deleted(tmp_path):
    sweep = full_sweep(tmp_path / "sweep")
    directory.check_replaceable_run(sweep / "best", sweep)  # only ktk's files: may be retrained
    (sweep / "best" / "notes.md").write_text("mine")
    with pytest.raises(UserError) as error:
        directory.check_replaceable_run(sweep / "best", sweep)
    assert str(error.value) == (
        f"--out: best/ must be retrained, but ktk deletes only what it wrote, and it also holds notes.md; nothing "
        f"was deleted. Move them out and run ktk tune again; received '{sweep}'.")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (sweep / "top" / "trial_2").symlink_to(outside)
    with pytest.raises(UserError, match=r"top/trial_2/ must be retrained, .* also holds \(a link\)"):
        directory.check_replaceable_run(sweep / "top" / "trial_2", sweep)


def test_a_damaged_or_changed_sweep_config_is_refused_not_overwritten(tmp_path, config_file, capsys):
    sweep = fake_sweep(tmp_path / "sweep")
    (sweep / "config.yaml").write_text("- just\n- a list\n")
    assert refused(capsys, ["tune", config_file, "--out", sweep]) == (
        f"--out: the sweep's config.yaml is not a config; start over with --overwrite, or use --out DIR for a new "
        f"sweep; received '{sweep}'.")
    (sweep / "config.yaml").write_text("a: [unclosed\n")
    assert refused(capsys, ["tune", config_file, "--out", sweep]).startswith(
        "--out: the sweep's config.yaml cannot be read (")
    assert (sweep / "config.yaml").read_text() == "a: [unclosed\n"
    changed = fake_sweep(tmp_path / "changed")
    before = snapshot(changed)
    assert "the config changed since this sweep started (training.epochs was 1, now 3)" in refused(
        capsys, ["tune", config_file, "--out", changed, "--set", "training.epochs=3"])
    assert snapshot(changed) == before


@pytest.mark.parametrize("flags, message", [
    (["--workers", "0"], "--workers: expected a whole number of worker processes, 1 or more; received 0."),
    (["--workers", "-1"], "--workers: expected a whole number of worker processes, 1 or more; received -1."),
    (["--chief", "127.0.0.1:99999"], "--chief: expected a port between 1 and 65535; received 99999."),
    (["--chief", "localhost"], "--chief: the port is missing; expected HOST:PORT, e.g. 127.0.0.1:8470 or "
                               "10.0.0.5:8470; received 'localhost'."),
    (["--chief", "a:b:c"], "--chief: expected HOST:PORT, e.g. 127.0.0.1:8470 or 10.0.0.5:8470; received 'a:b:c'."),
    (["--chief", "h:1", "--chief-timeout", "nan"], "--chief-timeout: expected a number of seconds above 0; "
                                                   "received nan."),
    (["--chief", "h:1", "--chief-timeout", "-1"], "--chief-timeout: expected a number of seconds above 0; "
                                                  "received -1.0."),
    (["--chief", "h:1", "--chief-timeout", "inf"], "--chief-timeout: expected at most 86400 seconds (a day); "
                                                   "received inf."),
    (["--chief", "h:1", "--worker-id", "a b"], "--worker-id: expected a name of letters, digits, '.', '_' or '-' "
                                               "(at most 64); received 'a b'."),
    (["--listen", "127.0.0.1:70000"], "--listen: expected a port between 1 and 65535; received 70000."),
    (["--listen", "x" * 300 + ":80"], None),
    (["--role", "worker"], "--chief: a worker needs the chief's address; expected HOST:PORT, e.g. --chief "
                           "10.0.0.5:8470."),
])
def test_bad_distributed_flags(tmp_path, config_file, capsys, flags, message):
    text = refused(capsys, ["tune", config_file, "--out", tmp_path / "sweep", *flags])
    if message is None:
        assert text.startswith("--listen: the chief cannot listen there (")
    else:
        assert text == message
    assert not (tmp_path / "sweep").exists()


@pytest.mark.parametrize("flags", [["--workers", "two"], ["--role", "boss"], ["--chief-timeout", "soon"]])
def test_flags_argparse_refuses(config_file, capsys, flags):
    with pytest.raises(SystemExit) as caught:
        main(["tune", str(config_file), *flags])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert "ktk: error: " in err and "Traceback" not in err


def test_refusals_before_training_import_no_tensorflow(tmp_path, config_file):
    (tmp_path / "a_file").write_text("")
    code = ("import sys; from toolkit.cli import main; "
            f"codes = [main(['tune', {str(config_file)!r}, '--out', {str(tmp_path / 'a_file')!r}]), "
            f"main(['tune', {str(config_file)!r}, '--workers', '0'])]; "
            "print(codes, 'tensorflow' in sys.modules, 'keras_tuner' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(),
                          timeout=120)
    assert done.stdout.strip() == "[2, 2] False False", done.stderr


# ------------------------------------------------------------------------------------- damaged files


def write_record(folder, name, content):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


GOOD = {"trial_id": "1", "status": "completed", "score": 0.5, "values": {"model.dropout": 0.1},
        "train": {"loss": 1.0}, "validation": {"loss": 1.1}, "epochs": 2, "best_epoch": 2, "params": 10,
        "started": "t", "duration_s": 1.0}


@pytest.mark.parametrize("name, content, reason", [
    ("0.json", "not json", "not JSON: Expecting value at line 1"),
    ("0.json", "", "not JSON: Expecting value at line 1"),
    ("0.json", "[]", "a JSON list, not a trial record"),
    ("0.json", "null", "a JSON null, not a trial record"),
    ("0.json", "3", "a JSON number, not a trial record"),
    ("0.json", "[" * 100_000, "nested too deeply"),
    ("0.json", b"\xff\xfe{}", "not UTF-8 text"),
    ("0.json", json.dumps(dict(GOOD, trial_id="7")), "its trial_id is '7', not '0'"),
    ("1.json", json.dumps(dict(GOOD, status="done")), "its status is 'done', not one of completed, failed"),
    ("1.json", json.dumps(dict(GOOD, score="high")), "its score is 'high', not a number"),
    ("1.json", json.dumps(dict(GOOD, score=True)), "its score is True, not a number"),
    ("1.json", json.dumps(dict(GOOD, values=[1, 2])), "its values are not a mapping of parameter paths"),
    ("1.json", json.dumps(dict(GOOD, values={"a": json.loads("[" * 40 + "1" + "]" * 40)})),
     "its values are nested too deeply"),
    ("1.json", json.dumps(dict(GOOD, train={"loss": "x"})), "its train metrics are not numbers by name"),
    ("1.json", json.dumps(dict(GOOD, epochs=2.5)), "its epochs is 2.5, not a whole number"),
    ("1.json", json.dumps(dict(GOOD, message=["a"])), "its message is ['a'], not text"),
    ("1.json", " " * (MAX_RECORD_BYTES + 1), "larger than 4 MB"),
])
def test_a_damaged_record_is_left_out_with_one_warning(tmp_path, name, content, reason):
    folder = tmp_path / "records"
    path = write_record(folder, name, content)
    write_record(folder, "2.json", json.dumps(dict(GOOD, trial_id="2")))
    warnings = []
    records = Records(folder, warn=warnings.append)
    assert list(records.load()) == ["2"]
    assert list(records.load()) == ["2"]  # read again: warned once
    assert warnings == [f"{path} is damaged ({reason}); it is left out of trials.csv"]
    assert [r["trial_id"] for r in read_trials(tmp_path)] == ["2"]


def test_a_good_record_written_over_a_damaged_one_is_read(tmp_path):
    folder = tmp_path / "records"
    write_record(folder, "1.json", "garbage")
    records = Records(folder)
    assert records.load() == {}
    Records(folder).write(GOOD)  # e.g. the trial run again on resume, by another process
    assert records.load()["1"]["score"] == 0.5


def test_trials_are_listed_by_number_whatever_the_width_of_their_ids(tmp_path):
    # keras-tuner pads ids to the width of max_trials: a sweep extended past 10 trials goes 0..8, then 09, 10
    ids = ["0", "1", "10", "08", "09", "2", "11"]
    folder = tmp_path / "records"
    for trial_id in ids:
        write_record(folder, f"{trial_id}.json", json.dumps(dict(GOOD, trial_id=trial_id)))
    expected = ["0", "1", "2", "08", "09", "10", "11"]
    assert [r["trial_id"] for r in read_trials(tmp_path)] == expected
    spec = parse_search(parse_config(IRIS))
    rows = trial_rows(read_trials(tmp_path)[::-1], spec)
    assert [r["trial_id"] for r in rows] == expected
    table = list(csv.DictReader(format_trials_csv(rows, spec).splitlines()))
    assert [r["trial_id"] for r in table] == expected


def test_readers_get_a_trials_table_that_is_never_behind_the_records(tmp_path):
    sweep = fake_sweep(tmp_path / "sweep")  # its trials.csv lists trial 0
    assert trials_csv_text(sweep) == (sweep / "trials.csv").read_text()
    # a trial recorded after trials.csv was written (a process killed before it rewrote the table)
    write_record(sweep / "records", "1.json", json.dumps(GOOD))
    os.utime(sweep / "trials.csv", ns=(0, 0))
    table = list(csv.DictReader(trials_csv_text(sweep).splitlines()))
    assert [(r["trial_id"], r["status"], r["model.dropout"]) for r in table] == [
        ("0", "failed", ""), ("1", "completed", "0.1")]
    (sweep / "trials.csv").unlink()
    assert len(list(csv.DictReader(trials_csv_text(sweep).splitlines()))) == 2
    (sweep / "config.yaml").write_text("search: 3\n")
    with pytest.raises(ValueError, match=r"^config.yaml cannot be read \(TypeError"):
        trials_csv_text(sweep)


def test_a_damaged_or_foreign_lock_is_refused_with_a_message(tmp_path):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / ".lock").write_text("[1, 2]")
    with pytest.raises(UserError) as caught:
        with SweepLock(sweep):
            pass
    assert str(caught.value) == (f"--out: another sweep (pid None on ?, started ?) is writing into this directory; "
                                 f"wait for it to finish, or use another --out. If that process is gone, delete "
                                 f"{sweep / '.lock'}; received '{sweep}'.")
    # a lock of a process that is gone is taken over
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (sweep / ".lock").write_text(json.dumps({"pid": int(gone.stdout), "host": socket.gethostname()}))
    with SweepLock(sweep) as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    assert not (sweep / ".lock").exists()


def test_an_untested_keras_tuner_is_refused_unless_allowed(monkeypatch):
    monkeypatch.delenv(compat.ALLOW_UNTESTED, raising=False)
    compat.check_version("1.4.8")
    compat.check_version("1.4.7")
    with pytest.raises(UserError) as caught:
        compat.check_version("1.4.9")  # an untested patch release too
    assert str(caught.value) == (
        "keras-tuner: ktk's sweeps rely on keras-tuner internals tested with keras-tuner 1.4.7, 1.4.8 only; install "
        "one of those, or set KTK_ALLOW_UNTESTED_KERAS_TUNER=1 to try this one anyway; expected 1.4.7, 1.4.8; "
        "received '1.4.9'.")
    monkeypatch.setenv(compat.ALLOW_UNTESTED, "1")
    compat.check_version("1.5.0")
    assert compat.installed_version() in compat.TESTED_VERSIONS  # what this checkout installs


def test_what_overwrite_may_delete():
    for name in (".ktk-sweep", "config.yaml", "trials.csv", "records", "best", "top", "tuner", "logs", ".lock",
                 ".lock.tuner0", ".trials.csv.a1b2.tmp", "sweep.json", "histories"):
        assert directory.is_own_entry(name), name
    for name in ("thesis.tex", "report", ".git", "notes.tmp", ".thesis.tex.x.tmp", "trials.csv.bak"):
        assert not directory.is_own_entry(name), name


# ----------------------------------------------------------------------------- refusals that need Keras


@pytest.mark.slow
def test_a_refused_objective_leaves_nothing_behind_and_the_fix_runs(tmp_path, config_file, capsys):
    out = tmp_path / "sweep"
    assert refused(capsys, ["tune", config_file, "--out", out, "--set", "search.objective=val_acc"]) == (
        f"{config_file}: search.objective: not a metric of this model; received 'val_acc'. Valid choices: "
        f"val_accuracy, val_loss. Did you mean 'val_accuracy'?")
    assert not out.exists()
    out.mkdir()  # an empty folder the user made: also left as it was
    assert refused(capsys, ["tune", config_file, "--out", out, "--set", "search.objective=val_acc"])
    assert list(out.iterdir()) == []
    assert main(["tune", str(config_file), "--out", str(out), "--set", "search.objective=val_accuracy"]) == 0
    assert (out / SWEEP_MARKER).is_file() and (out / "best" / "metrics.json").is_file()


@pytest.mark.slow
def test_damaged_results_never_stop_a_resume_and_overwrite_starts_over(tmp_path, config_file, capsys):
    out = tmp_path / "sweep"
    assert main(["tune", str(config_file), "--out", str(out)]) == 0
    capsys.readouterr()
    write_record(out / "records", "0.json", "[" * 50_000)  # the one finished trial, damaged
    write_record(out / "records", "5.json", "{}")  # and one that never was
    assert main(["tune", str(config_file), "--out", str(out), "--set", "search.max_trials=2"]) == 0
    printed = capsys.readouterr().out
    assert f"warning: {out / 'records' / '0.json'} is damaged (nested too deeply); it is left out of trials.csv" \
        in printed
    assert "warning: " + str(out / "records" / "5.json") + " is damaged (its trial_id is None, not '5')" in printed
    assert [r["trial_id"] for r in csv.DictReader((out / "trials.csv").read_text().splitlines())] == ["1"]

    (out / "tuner" / "oracle.json").write_text("{\"ongoing_trials\": 3}")
    assert refused(capsys, ["tune", config_file, "--out", out, "--set", "search.max_trials=3"]).startswith(
        f"--out: cannot resume: keras-tuner's state in {out / 'tuner'} is damaged (")

    assert main(["tune", str(config_file), "--out", str(out), "--overwrite"]) == 0  # only ktk's files: allowed
    assert sorted(p.name for p in (out / "records").iterdir()) == ["0.json"]
    assert [r["trial_id"] for r in csv.DictReader((out / "trials.csv").read_text().splitlines())] == ["0"]
