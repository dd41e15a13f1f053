"""Bad inputs met by `ktk compare`, `ktk plot` and `ktk report`, run through the real CLI in this process.

Two promises are checked class by class, with result directories written by hand (nothing trains):

- A file the user names (``--output``) is written atomically when it is a regular file, written through when
  it is a link (to its target), a FIFO or a character device, and never replaced by a plain file; files ktk
  names itself in a folder (``plot --out``, ``compare --plot``, ``report``) never replace a file ktk did not
  write there; no writer writes inside a run or sweep it reads. What cannot be written is one message, exit 2.
- A damaged result file (metrics.json, config.yaml, history.csv, trials.csv) is skipped with one warning
  naming it, and the rest is shown: never a traceback, never a hang.
"""

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import subprocess_env, write_run, write_sweep
from toolkit.cli import main

TRIALS = ("trial_id,status,score,model.dropout,model.hidden.0,train.loss,validation.loss,epochs,best_epoch,params,"
          "started,duration_s,message\n"
          "0,completed,0.41,0.1,8,0.3,0.41,3,2,42,2026-01-01T00:00:00+00:00,1.5,\n"
          "1,completed,0.39,0.3,32,0.35,0.39,3,3,80,2026-01-01T00:00:00+00:00,1.7,\n")
HISTORY = "epoch,loss,val_loss\n1,0.6,0.6\n2,0.3,0.4\n3,0.25,0.45\n"


def cli(capsys, *args):
    """`ktk ARGS` in this process: (exit status, stdout, stderr)."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as exit_info:  # argparse's own refusals (an empty path) exit from parse_args
        code = exit_info.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_user_error(code, err, *parts):
    assert code == 2, err
    assert err.count("ktk: error: ") == 1 and "Traceback" not in err, err
    for part in parts:
        assert part in err, err


def warnings_of(err):
    return [line for line in err.splitlines() if line.startswith("ktk: warning: ")]


@pytest.fixture
def runs(tmp_path):
    """Two good runs."""
    write_run(tmp_path / "runs" / "a", {"name": "a", "model": {"dropout": 0.1}})
    write_run(tmp_path / "runs" / "b", {"name": "b", "model": {"dropout": 0.2}})
    return tmp_path / "runs"


# ------------------------------------------------------------------------ files the user names


def test_output_through_a_link_writes_the_links_target_and_keeps_the_link(runs, tmp_path, capsys):
    real = tmp_path / "real.csv"
    real.write_text("old\n")
    link, chain, dangling = tmp_path / "link.csv", tmp_path / "chain.csv", tmp_path / "dangling.csv"
    link.symlink_to(real)
    chain.symlink_to(link)
    dangling.symlink_to(tmp_path / "made-by-ktk.csv")
    os.chmod(real, 0o600)
    for target in (link, chain, dangling):
        code, out, err = cli(capsys, "compare", runs, "--format", "csv", "--output", target)
        assert code == 0 and out == "" and f"wrote {target} (2 rows)" in err, err
        assert target.is_symlink()
    assert real.read_text().startswith("run,") and stat.S_IMODE(real.stat().st_mode) == 0o600  # mode kept
    assert os.readlink(link) == str(real) and os.readlink(chain) == str(link)
    assert (tmp_path / "made-by-ktk.csv").read_text().startswith("run,")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chain.csv", "dangling.csv", "link.csv", "made-by-ktk.csv",
                                                          "real.csv", "runs"]  # no temporary file left behind


def test_output_into_a_fifo_is_written_through_or_refused_never_replaced(runs, tmp_path, capsys):
    fifo = tmp_path / "table.fifo"
    os.mkfifo(fifo)
    code, _, err = cli(capsys, "compare", runs, "--output", fifo)  # no process reads it: refused, not waited for
    assert_user_error(code, err, f"--output: cannot write the file (a FIFO that no process is reading); "
                                 f"received '{fifo}'.")
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # now a process reads it
    try:
        code, _, err = cli(capsys, "compare", runs, "--format", "json", "--output", fifo)
        assert code == 0, err
        assert [row["run"] for row in json.loads(os.read(reader, 1 << 20))] == ["a", "b"]
    finally:
        os.close(reader)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_output_to_character_devices_writes_through(runs, capsys):
    code, _, err = cli(capsys, "compare", runs, "--output", "/dev/null")
    assert code == 0, err
    code, _, err = cli(capsys, "compare", runs, "--output", "/dev/full")
    assert_user_error(code, err, "--output: cannot write the file (No space left on device); received '/dev/full'.")
    for device in ("/dev/null", "/dev/full"):
        assert stat.S_ISCHR(os.lstat(device).st_mode), f"{device} was replaced"


def test_a_block_device_is_refused(runs, tmp_path, capsys):
    device = tmp_path / "disk"
    try:
        os.mknod(device, stat.S_IFBLK | 0o600, os.makedev(7, 200))
    except OSError:
        pytest.skip("this machine does not let tests make a device node")
    code, _, err = cli(capsys, "compare", runs, "--output", device)
    assert_user_error(code, err, "cannot write the file (a block device, not a file)")
    assert stat.S_ISBLK(os.lstat(device).st_mode)


def test_outputs_that_cannot_be_written_are_one_message(runs, tmp_path, capsys):
    (tmp_path / "file.txt").write_text("mine\n")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder-link").symlink_to(tmp_path / "folder")
    cases = {
        tmp_path / "folder": "--output: this is a folder, not a file; expected a file to write; received",
        tmp_path / "folder-link": "--output: this is a folder, not a file",
        tmp_path / "missing" / "t.csv": f"--output: cannot write the file: {tmp_path / 'missing'} does not exist",
        tmp_path / "file.txt" / "t.csv": f"--output: cannot write the file: {tmp_path / 'file.txt'} is not a folder",
        "/proc/self/ktk-table.csv": "--output: cannot write the file (",  # a folder nobody may write, even root
    }
    for output, message in cases.items():
        code, out, err = cli(capsys, "compare", runs, "--output", output)
        assert_user_error(code, err, message)
        assert out == ""
    assert not (tmp_path / "missing").exists() and (tmp_path / "file.txt").read_text() == "mine\n"
    assert list((tmp_path / "folder").iterdir()) == []


def test_report_files_ktk_did_not_write_are_refused_never_written_through(runs, tmp_path, capsys):
    for history in runs.glob("*/history.csv"):
        history.unlink()  # no learning curves to draw: the report is quick
    out = tmp_path / "report"
    out.mkdir()
    (tmp_path / "kept.md").write_text("old\n")
    (out / "report.md").symlink_to(tmp_path / "kept.md")
    os.mkfifo(out / "report.html")
    code, _, err = cli(capsys, "report", runs, "--out", out)
    assert_user_error(code, err, f"--out: report.html is already there, a FIFO that ktk did not write; ktk replaces "
                                 f"only files it wrote there itself. Move it away, or give a new or empty folder; "
                                 f"received '{out / 'report.html'}'.")
    assert stat.S_ISFIFO(os.lstat(out / "report.html").st_mode)
    (out / "report.html").unlink()
    code, _, err = cli(capsys, "report", runs, "--out", out)
    assert_user_error(code, err, "--out: report.md is already there, a link that ktk did not write;")
    assert (out / "report.md").is_symlink() and (tmp_path / "kept.md").read_text() == "old\n"
    assert sorted(p.name for p in out.iterdir()) == ["report.md"]  # refused before anything was written


def test_plot_files_ktk_did_not_write_are_refused(runs, tmp_path, capsys):
    plots = tmp_path / "plots"
    plots.mkdir()
    (plots / "learning_curves.png").symlink_to(tmp_path / "curves.png")
    code, _, err = cli(capsys, "plot", runs, "--out", plots)
    assert_user_error(code, err, "--out: learning_curves.png is already there, a link that ktk did not write; ")
    assert (plots / "learning_curves.png").is_symlink() and not (tmp_path / "curves.png").exists()
    (plots / "learning_curves.png").unlink()
    (plots / "learning_curves.png").mkdir()
    code, out, err = cli(capsys, "compare", runs, "--plot", plots)
    assert_user_error(code, err, f"--plot: learning_curves.png is already there, a directory that ktk did not write; "
                                 f"ktk replaces only files it wrote there itself. Move it away, or give a new or "
                                 f"empty folder; received '{plots / 'learning_curves.png'}'.")
    assert out == ""  # refused before the table was written


# ----------------------------------------------------------- writers never touch the results they read


def two_sweeps(tmp_path):
    """Two sweeps whose folders have the same name (xx/sw and yy/sw)."""
    histories = {"0": HISTORY, "1": HISTORY}
    return [write_sweep(tmp_path / parent / "sw", TRIALS, histories=histories) for parent in ("xx", "yy")]


def test_no_writer_writes_inside_a_run_or_sweep_it_reads(runs, tmp_path, capsys):
    sweep, _ = two_sweeps(tmp_path)
    (tmp_path / "into-a").symlink_to(runs / "a")
    (tmp_path / "history-link.csv").symlink_to(runs / "a" / "history.csv")
    before = {path: path.read_bytes() for path in list(runs.rglob("*")) + list(sweep.rglob("*")) if path.is_file()}
    cases = [
        ("compare", runs / "a", "--output", runs / "a" / "history.csv", "--format", "csv"),
        ("compare", runs, "--output", runs / "b" / "metrics.json"),
        ("compare", runs / "a" / "metrics.json", "--output", runs / "a" / "config.yaml"),  # a file given as PATH
        ("compare", runs, "--output", runs / "a" / "table.md"),  # a new file, but inside a run
        ("compare", runs, "--output", tmp_path / "history-link.csv"),  # a link into a run
        ("compare", sweep, "--output", sweep / "histories" / "0.csv"),
        ("compare", sweep, "--output", sweep / "trials.csv"),
        ("compare", runs, "--plot", runs / "b"),
        ("compare", runs, "--plot", tmp_path / "into-a" / "plots"),
        ("plot", runs, "--out", runs / "a"),
        ("plot", sweep, "--out", sweep / "histories"),
        ("plot", tmp_path / "xx", "--out", sweep / "plots"),
        ("report", sweep, "--out", sweep),
        ("report", sweep, "--out", sweep / "histories"),
        ("report", runs, "--out", runs / "b" / "report"),
        ("report", tmp_path / "xx", "--out", sweep / "report"),  # report/ is the sweep's own only for `report SWEEP`
    ]
    for args in cases:
        flag, target = args[2], args[3]
        code, out, err = cli(capsys, *args)
        assert_user_error(code, err, f"{flag}: this is inside ", "ktk never writes into the results it reads; "
                          f"expected a path outside the runs and sweeps given; received '{target}'.")
        assert out == ""
    assert {path: path.read_bytes() for path in before} == before
    assert not (runs / "a" / "table.md").exists() and not (sweep / "plots").exists()
    assert not any(path.name == "report" for path in tmp_path.rglob("*"))
    code, _, err = cli(capsys, "compare", runs, "--output", tmp_path / "table.csv", "--plot", runs / "plots")
    assert code == 0, err  # beside the runs, not inside one: allowed


def test_a_report_writes_into_its_own_folder_of_the_sweep_or_run_and_never_through_a_link(runs, tmp_path, capsys):
    sweep, other = two_sweeps(tmp_path)
    code, out, err = cli(capsys, "report", sweep)
    assert code == 0, err
    assert out == f"wrote {sweep / 'report' / 'report.html'}\nwrote {sweep / 'report' / 'report.md'}\n"
    code, _, err = cli(capsys, "report", runs / "a")  # a run directory's report/ is the report's own too
    assert code == 0 and (runs / "a" / "report" / "report.md").is_file(), err

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "report.md").write_text("mine\n")
    (other / "report").symlink_to(Path("..") / ".." / "outside")
    code, out, err = cli(capsys, "report", other)
    assert_user_error(code, err, f"SWEEP_OR_DIR: {other / 'report'} is a link; a report is written into a real "
                                 f"report/ folder of the sweep, never through a link to elsewhere. Remove the link, "
                                 f"or give --out DIR; received '{other / 'report'}'.")
    assert sorted(p.name for p in outside.iterdir()) == ["report.md"] and (outside / "report.md").read_text() == \
        "mine\n"
    (other / "report").unlink()
    (other / "report").symlink_to(other / "histories")  # a link from the report folder into the sweep itself
    code, _, err = cli(capsys, "report", other, "--out", other / "report")
    assert_user_error(code, err, "--out: this is inside ")
    assert sorted(p.name for p in (other / "histories").iterdir()) == ["0.csv", "1.csv"]


def test_files_ktk_did_not_write_in_an_output_folder_are_never_replaced(runs, tmp_path, capsys):
    sweep, _ = two_sweeps(tmp_path)
    folder = tmp_path / "od"
    folder.mkdir()
    (folder / "learning_curves.png").write_text("mine")
    (folder / "notes.txt").write_text("mine too")
    for args in (("plot", runs, "--out", folder), ("compare", runs, "--plot", folder)):
        code, out, err = cli(capsys, *args)
        assert_user_error(code, err, f"{args[2]}: learning_curves.png is already there, and ktk did not write it; "
                                     f"ktk replaces only files it wrote there itself. Move it away, or give a new or "
                                     f"empty folder; received '{folder / 'learning_curves.png'}'.")
        assert out == ""
    assert (folder / "learning_curves.png").read_text() == "mine"
    assert sorted(p.name for p in folder.iterdir()) == ["learning_curves.png", "notes.txt"]  # nothing written

    (folder / "learning_curves.png").unlink()
    for _ in range(2):  # ktk's own plots of an earlier command are replaced; other files stay
        code, out, err = cli(capsys, "plot", runs, "--out", folder)
        assert code == 0 and out == f"{folder / 'learning_curves.png'}\n", err
    assert (folder / "notes.txt").read_text() == "mine too"
    (folder / "learning_curves.png").write_bytes(b"edited by hand")
    code, _, err = cli(capsys, "compare", runs, "--plot", folder)
    assert_user_error(code, err, "--plot: learning_curves.png is already there, changed since ktk wrote it; ")
    assert (folder / "learning_curves.png").read_bytes() == b"edited by hand"

    code, _, err = cli(capsys, "report", sweep)
    assert code == 0, err
    (sweep / "report" / "report.md").write_text("my notes\n")  # the user's own, over ktk's
    code, _, err = cli(capsys, "report", sweep)
    assert_user_error(code, err, "SWEEP_OR_DIR: report.md is already there, changed since ktk wrote it; ")
    assert (sweep / "report" / "report.md").read_text() == "my notes\n"
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "report.html").write_text("mine")
    code, _, err = cli(capsys, "report", runs, "--out", tmp_path / "r")
    assert_user_error(code, err, "--out: report.html is already there, and ktk did not write it; ")
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["report.html"]


def test_plots_of_sweeps_with_the_same_folder_name_never_share_a_file(tmp_path, capsys):
    first, second = two_sweeps(tmp_path)
    for args in (("plot", first, second, "--out", tmp_path / "p"), ("compare", tmp_path, "--plot", tmp_path / "q")):
        code, out, err = cli(capsys, *args)
        assert code == 0, err
        folder = args[-1]
        files = sorted(p.name for p in folder.iterdir() if p.suffix == ".png")
        assert len(files) == 9  # learning curves, then per sweep two parameters, trial status, best trials
        assert {name.split("-", 1)[0] for name in files} == {"learning_curves.png", "xx_sw", "yy_sw"}
        if args[0] == "plot":
            assert sorted(out.split()) == [str(folder / name) for name in files]  # each named file is there
        else:
            assert "wrote 9 plots into" in err


@pytest.mark.parametrize("flags, message", [
    (["--output", ""], "argument --output: expected a file; received ''."),
    (["--output", "  "], "--output: expected a file path; received '  '."),
    (["--plot", ""], "argument --plot: expected a folder; received ''."),
    (["--sort", ""], "--sort: expected a column name, with a leading '-' to sort in descending order; received ''. "
                     "Valid choices: run, "),
    (["--sort", "-"], "--sort: expected a column name, with a leading '-' to sort in descending order; received '-'."),
    (["--filter", "model.dropout=0.1"], "--filter: '=' is not an operator (did you mean '=='?); expected COLUMN OP "
     "VALUE, e.g. 'model.dropout>0.1' or 'status==completed', with OP one of the valid choices; received "
     "'model.dropout=0.1'. Valid choices: ==, !=, >, >=, <, <=."),
    (["--filter", "model.dropout=>0.1"], "--filter: '=' is not an operator"),
    (["--filter", "model.dropout===0.1"], "--filter: the value after '==' starts with '='; expected COLUMN OP VALUE"),
    (["--filter", "name>1"], "--filter: column 'name' holds text, so '>' cannot compare it with the number 1; "
     "expected a column of numbers for > >= < <=; received 'name>1'."),
    (["--filter", "validation.accuracy==abc"], "--filter: column 'validation.accuracy' holds numbers, so it never "
     "equals 'abc'; expected a number after '=='; received 'validation.accuracy==abc'."),
    (["--filter", "train.loss!=fast"], "--filter: column 'train.loss' holds numbers, so it never equals 'fast'; "
     "expected a number after '!='"),
    (["--filter", "validation.loss<low"], "--filter: expected a number after '<'; received 'low'."),
])
def test_compare_flags_that_mean_nothing_are_refused(runs, capsys, flags, message):
    code, out, err = cli(capsys, "compare", runs, *flags)
    assert_user_error(code, err, f"ktk: error: {message}")
    assert out == ""


def test_compare_filters_that_mean_something_still_work(runs, capsys):
    write_run(runs / "1", {"name": "1", "model": {"dropout": 0.5}})
    for expression, rows in (("name==1", ["1"]), ("name!=a", ["1", "b"]), ("model.dropout>=0.2", ["1", "b"]),
                             ("validation.accuracy==0.85", ["1", "a", "b"]), ("name==none", [])):
        code, out, err = cli(capsys, "compare", runs, "--filter", expression, "--format", "csv")
        assert code == 0, (expression, err)
        assert [line.split(",")[0] for line in out.splitlines()[1:]] == rows, expression


# ------------------------------------------------------------------------------ damaged results


def damage(path, content):
    """Replaces a result file by `content`: bytes, text, "dir" (a folder by its name) or "fifo"."""
    if path.exists() or path.is_symlink():
        path.unlink()
    if content == "dir":
        path.mkdir()
    elif content == "fifo":
        os.mkfifo(path)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)


DAMAGED_METRICS = {
    "deep": "[" * 10_000 + "]" * 10_000,
    "deep-object": '{"train": ' * 10_000 + "1" + "}" * 10_000,
    "empty": "",
    "garbage": bytes(range(256)) * 4,
    "latin1": '{"train": {"loss": 1}, "name": "caf\xe9"}'.encode("latin-1"),
    "list": "[1, 2, 3]",
    "no-splits": '{"epochs_run": 3}',
    "dir": "dir",
    "fifo": "fifo",
}


def test_damaged_metrics_are_skipped_with_one_warning_each(runs, capsys):
    for name, content in DAMAGED_METRICS.items():
        damage(write_run(runs / f"m-{name}") / "metrics.json", content)
    code, out, err = cli(capsys, "compare", runs, "--format", "csv")
    assert code == 0 and "Traceback" not in err, err
    assert [line.split(",")[0] for line in out.splitlines()[1:]] == ["a", "b"]
    warnings = warnings_of(err)
    assert len(warnings) == len(DAMAGED_METRICS), warnings
    for name in DAMAGED_METRICS:
        assert sum(f"{runs / f'm-{name}'}: metrics.json " in w and w.endswith("; skipped") for w in warnings) == 1
    assert f"ktk: warning: {runs / 'm-fifo'}: metrics.json cannot be read (a FIFO, not a file); skipped" in warnings
    assert any("m-deep: metrics.json is not valid JSON (nested too deeply)" in w for w in warnings)


def test_nan_and_infinity_in_metrics_read_as_missing_and_json_output_stays_json(runs, capsys):
    write_run(runs / "inf")
    (runs / "inf" / "metrics.json").write_text(
        '{"train": {"loss": Infinity, "accuracy": NaN}, "validation": {"loss": -Infinity, "accuracy": 1e999},'
        ' "test": {"loss": 0.5}, "epochs_run": NaN, "best_epoch": 1e400, "params": 3, "wall_time_s": Infinity}')
    code, out, err = cli(capsys, "compare", runs, "--format", "json")
    assert code == 0 and warnings_of(err) == [], err

    def no_constants(name):
        raise AssertionError(f"{name} is not JSON")

    rows = {row["run"]: row for row in json.loads(out, parse_constant=no_constants)}
    assert rows["inf"]["train.loss"] is None and rows["inf"]["validation.accuracy"] is None
    assert rows["inf"]["test.loss"] == 0.5 and rows["inf"]["epochs"] is None and rows["inf"]["params"] == 3
    for fmt in ("table", "markdown", "html", "csv"):
        code, _, err = cli(capsys, "compare", runs, "--format", fmt)
        assert code == 0, err


def test_damaged_configs_are_skipped_with_one_warning_each(runs, capsys):
    configs = {
        "deep": "a: " + "[" * 10_000 + "]" * 10_000 + "\n",
        "deep-block": "".join("  " * i + f"k{i}:\n" for i in range(3000)) + "  " * 3000 + "x: 1\n",
        "keys-bomb": "a: &a {}\n" + "".join(
            f"{c}: &{c} {{" + ", ".join(f"k{i}: *{p}" for i in range(9)) + "}\n"
            for p, c in zip("abcdefgh", "bcdefghi")),
        "not-a-mapping": "- 1\n- 2\n",
        "garbage": bytes(range(256)),
        "tabs": "model:\n\t dropout: 1\n",
        "dir": "dir",
        "fifo": "fifo",
    }
    for name, content in configs.items():
        damage(write_run(runs / f"c-{name}") / "config.yaml", content)
    code, out, err = cli(capsys, "compare", runs, "--format", "csv")
    assert code == 0 and "Traceback" not in err, err
    assert [line.split(",")[0] for line in out.splitlines()[1:]] == ["a", "b"]
    warnings = warnings_of(err)
    assert len(warnings) == len(configs), warnings
    for name in configs:
        assert sum(f"{runs / f'c-{name}'}: config.yaml cannot be read (" in w for w in warnings) == 1, name


def test_a_list_alias_bomb_in_a_config_costs_a_cut_cell_not_memory(tmp_path):
    # 9 levels of 9 aliases: 387 million items if expanded. Run in a subprocess so that a regression fails
    # the test at its timeout instead of hanging the suite.
    levels = ["a: &a [x, x, x, x, x, x, x, x, x]"] + [
        f"{c}: &{c} [" + ", ".join([f"*{p}"] * 9) + "]" for p, c in zip("abcdefgh", "bcdefghi")]
    write_run(tmp_path / "bomb", {"name": "bomb"})
    (tmp_path / "bomb" / "config.yaml").write_text("name: bomb\n" + "\n".join(levels) + "\n")
    write_run(tmp_path / "good", {"name": "good"})
    result = subprocess.run([sys.executable, "-m", "toolkit", "compare", str(tmp_path), "--format", "json"],
                            capture_output=True, text=True, env=subprocess_env(), timeout=120)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    rows = json.loads(result.stdout)
    assert "good" in [row["run"] for row in rows] and len(result.stdout) < 200_000
    bomb = [row for row in rows if row["run"] == "bomb"]
    assert bomb == [] or all(len(str(v)) <= 10_003 for v in bomb[0].values())  # shown cut, or skipped


DAMAGED_HISTORIES = {
    "extra-field": HISTORY + "4,0.2,0.5,0.7\n",
    "missing-field": HISTORY + "4,0.2\n",
    "text": HISTORY.replace("0.4", "fast"),
    "empty": "",
    "header-only": "epoch,loss,val_loss\n",
    "no-epoch": "loss,val_loss\n0.5,0.6\n",
    "repeated-column": "epoch,loss,loss\n1,0.5,0.6\n",
    "garbage": bytes(range(256)) * 4,
    "dir": "dir",
    "fifo": "fifo",
}


def test_damaged_histories_leave_the_other_curves_with_one_warning_each(runs, tmp_path, capsys):
    for name, content in DAMAGED_HISTORIES.items():
        damage(write_run(runs / f"h-{name}") / "history.csv", content)
    for args in (("plot", runs, "--out", tmp_path / "plots"),
                 ("compare", runs, "--plot", tmp_path / "compare-plots", "--output", tmp_path / "t.md"),
                 ("report", runs, "--out", tmp_path / "report")):
        code, _, err = cli(capsys, *args)
        assert code == 0 and "Traceback" not in err, err
        warnings = warnings_of(err)
        for name in DAMAGED_HISTORIES:
            named = [w for w in warnings if f"{runs / f'h-{name}' / 'history.csv'}: no learning curve (" in w]
            assert len(named) == 1, (args[0], name, warnings)
        assert len(warnings) == len(DAMAGED_HISTORIES), warnings
    assert (tmp_path / "plots" / "learning_curves.png").is_file()
    assert (tmp_path / "compare-plots" / "learning_curves.png").is_file()
    assert (tmp_path / "report" / "report.html").is_file()


def test_damaged_sweeps_are_skipped_or_shown_with_their_damage_said(tmp_path, capsys):
    ragged = write_sweep(tmp_path / "sweeps" / "ragged", TRIALS + "2,completed,0.5\n3,failed\n4,completed,1,2,3,4\n")
    write_sweep(tmp_path / "sweeps" / "garbage", "")
    damage(tmp_path / "sweeps" / "garbage" / "trials.csv", b"\xff\xfe\x00garbage" * 100)
    write_sweep(tmp_path / "sweeps" / "no-header", "0,completed\n")
    write_sweep(tmp_path / "sweeps" / "fifo", "")
    damage(tmp_path / "sweeps" / "fifo" / "trials.csv", "fifo")
    write_sweep(tmp_path / "sweeps" / "cells", TRIALS.replace(
        "0,completed,0.41,0.1,8,", '0,completed,0.41,"&a [x, *a]",' + '"' + "[" * 4000 + "]" * 4000 + '",').replace(
        "1,completed,0.39,0.3,32,", '../../../etc/passwd,completed,inf,nan,"{""a"": NaN}",'))
    code, out, err = cli(capsys, "compare", tmp_path / "sweeps", "--format", "json")
    assert code == 0 and "Traceback" not in err, err
    warnings = warnings_of(err)
    assert f"ktk: warning: {ragged / 'trials.csv'}: 3 line(s) with a wrong number of fields (half-written?) " \
           "skipped: line 4, 5, 6" in warnings
    for name in ("garbage", "no-header", "fifo"):
        assert sum(w.startswith(f"ktk: warning: {tmp_path / 'sweeps' / name}: trials.csv cannot be read (")
                   for w in warnings) == 1, (name, warnings)
    rows = {row["run"]: row for row in json.loads(out)}
    assert {"ragged#0", "ragged#1", "cells#0"} <= set(rows)
    assert rows["cells#0"]["model.dropout"] == "&a [x, *a]"  # YAML in a cell is text, never parsed
    assert rows["cells#0"]["model.hidden.0"].startswith("[[[[")  # too deep for JSON: the text as written
    assert rows["cells#../../../etc/passwd"]["model.hidden.0"] == "{a: null}"  # NaN read as missing, as in metrics


def test_a_trial_id_never_leads_outside_the_sweep(tmp_path, capsys):
    sweep = write_sweep(tmp_path / "sweep", TRIALS.replace("1,completed,", "../../../etc/passwd,completed,"))
    code, _, err = cli(capsys, "plot", sweep, "--out", tmp_path / "plots")
    assert code == 0, err
    assert f"ktk: warning: {sweep}: trial id '../../../etc/passwd' is not a plain name; no learning curve" in err


# --------------------------------------------------------------------------------- markup in data

ATTACKS = ["<script>alert(1)</script>", "<img src=x onerror=alert(1)>", "<svg onload=alert(1)>",
           "[click](javascript:alert(1))", "![x](http://tracker.example/p.png)"]


def test_markup_in_names_and_values_is_inert_in_markdown_and_html(tmp_path, capsys):
    runs = tmp_path / "runs"
    for i, attack in enumerate(ATTACKS):
        write_run(runs / attack.replace("/", "_"), {"name": f"r{i}", "model": {"activation": attack + " | `x`\ny"}})
    code, markdown, err = cli(capsys, "compare", runs, "--format", "markdown")
    assert code == 0, err
    lines = markdown.splitlines()
    assert len(lines) == 2 + len(ATTACKS)  # a newline in a value does not break a row
    for line in lines:
        assert line.replace("\\|", "").count("|") == lines[0].count("|")  # nor does a pipe add a column
    for text in ("<script", "<img", "<svg"):
        assert text not in markdown
    # links, images and code spans only with their marks escaped (shown as text)
    assert re.search(r"(?<!\\)[\[\]`]", markdown) is None
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in markdown and "\\[click\\](javascript:alert(1))" in markdown

    code, _, err = cli(capsys, "report", runs, "--out", tmp_path / "report")
    assert code == 0, err
    for name in ("report.md", "report.html"):
        text = (tmp_path / "report" / name).read_text()
        for attack in ("<script>alert", "<img src=x", "<svg onload"):
            assert attack not in text, (name, attack)
    markdown = (tmp_path / "report" / "report.md").read_text()
    outside_code = re.sub(r"^```\n.*?\n```$", "", markdown, flags=re.S | re.M)  # a code block shows text as is
    assert re.search(r"(?<!\\)\]\((?!learning_curves\.png\))", outside_code) is None  # no link but the plot's


def test_markup_in_a_sweep_report(tmp_path, capsys):
    config = {"name": "<script>alert('name')</script>", "model": {"hidden": [16], "dropout": 0.0},
              "search": {"objective": "val_loss", "tuner": "<img src=x onerror=alert(1)>",
                         "space": {"model.dropout": {"float": [0.0, 0.5]}}}}
    trials = ("trial_id,status,score,model.dropout,validation.loss,epochs,best_epoch,message\n"
              "0,completed,0.4,0.1,0.4,3,2,\n"
              '1,failed,,0.3,,1,,"<svg onload=alert(1)>\n# heading\n```"\n')
    sweep = write_sweep(tmp_path / "s", trials, config, histories={"0": HISTORY})
    code, _, err = cli(capsys, "report", sweep)
    assert code == 0, err
    markdown = (sweep / "report" / "report.md").read_text()
    assert markdown.startswith("# Sweep report: &lt;script&gt;alert('name')&lt;/script&gt;\n")
    for attack in ("<script", "<img", "<svg", "\n# heading"):
        assert attack not in markdown
    html = (sweep / "report" / "report.html").read_text()
    assert "<script" not in html and "<img src=x" not in html and "<svg" not in html


def _remove_chain(bottom, chain):
    """Removes the deep folder chain one level at a time: pytest's own clean-up (shutil.rmtree) recurses
    and would fail on it with RecursionError in a later session."""
    shutil.rmtree(bottom)
    for folder in reversed(chain):
        folder.rmdir()


def test_odd_folders_are_walked_and_named_on_one_line(runs, tmp_path, capsys, request):
    deep, chain = runs, []
    for _ in range(1200):  # deeper than Python's recursion limit (made one by one: makedirs recurses)
        deep = deep / "d"
        deep.mkdir()
        chain.append(deep)
    write_run(deep / "bottom")
    request.addfinalizer(lambda: _remove_chain(deep / "bottom", chain))
    damage(write_run(runs / "two\nlines\x1b[31m") / "metrics.json", "{")
    (runs / "loop").symlink_to(runs)  # a folder that holds itself
    many = write_run(runs / "many-metrics")
    (many / "metrics.json").write_text(json.dumps({"train": {f"m{i}": 0.5 for i in range(20_000)}}))
    code, out, err = cli(capsys, "compare", runs, "--format", "csv")
    assert code == 0, err
    assert [line.split(",")[0] for line in out.splitlines()[1:]] == ["a", "b", "/".join(["d"] * 1200) + "/bottom"]
    warnings = warnings_of(err)
    assert len(err.splitlines()) == len(warnings) == 2, err  # each warning on its own line
    assert f"ktk: warning: {runs}/two\\nlines\\x1b[31m: metrics.json is not valid JSON (" in warnings[1]
    assert warnings[0] == (f"ktk: warning: {many}: metrics.json has more than 10000 metrics: not a file ktk "
                           f"wrote; skipped")


def test_compare_sees_trials_that_only_records_hold(tmp_path, capsys):
    """A sweep stopped outright (kill -9) before trials.csv caught up: compare rebuilds the table from records/."""
    from toolkit.results import SWEEP_MARKER
    from toolkit.sweeps.records import Records

    header = "trial_id,status,score,model.dropout,model.hidden.0,validation.loss,epochs\n"
    sweep = write_sweep(tmp_path / "s", header + "0,completed,0.5,0.1,8,0.5,3\n")
    (sweep / SWEEP_MARKER).write_text("")
    records = Records(sweep / "records")
    for trial_id, dropout in (("0", 0.1), ("1", 0.2), ("2", 0.3)):
        records.write({"trial_id": trial_id, "status": "completed", "score": 0.4 + dropout,
                       "values": {"model.dropout": dropout, "model.hidden.0": 16},
                       "validation": {"loss": 0.4 + dropout}, "epochs": 3})
    old = (sweep / "records" / "0.json").stat().st_mtime_ns - 10**9
    os.utime(sweep / "trials.csv", ns=(old, old))  # older than the records: one trial behind
    code, out, err = cli(capsys, "compare", sweep, "--format", "csv")
    assert code == 0, err
    assert [line.split(",")[0] for line in out.splitlines()[1:]] == ["s#0", "s#1", "s#2"]
    (sweep / "trials.csv").unlink()  # not written yet at all
    code, out, err = cli(capsys, "compare", sweep, "--format", "csv")
    assert code == 0, err
    assert len(out.splitlines()) == 4
