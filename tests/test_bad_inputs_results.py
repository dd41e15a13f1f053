"""Bad inputs met by `ktk compare`, `ktk plot` and `ktk report`, run through the real CLI in this process.

Two promises are checked class by class, with result directories written by hand (nothing trains):

- A file the user names (``--output``, ``report --out``, ``plot --out``, ``compare --plot``) is written
  atomically when it is a regular file, written through when it is a link (to its target), a FIFO or a
  character device, and never replaced by a plain file; what cannot be written is one message, exit 2.
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
    code = main([str(a) for a in args])
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


def test_report_and_plot_files_are_never_replaced(runs, tmp_path, capsys):
    for history in runs.glob("*/history.csv"):
        history.unlink()  # no learning curves to draw: the report is quick
    out = tmp_path / "report"
    out.mkdir()
    (tmp_path / "kept.md").write_text("old\n")
    (out / "report.md").symlink_to(tmp_path / "kept.md")
    os.mkfifo(out / "report.html")
    code, _, err = cli(capsys, "report", runs, "--out", out)
    assert_user_error(code, err, "--out: cannot write the file (a FIFO that no process is reading)")
    assert stat.S_ISFIFO(os.lstat(out / "report.html").st_mode)
    (out / "report.html").unlink()
    code, _, err = cli(capsys, "report", runs, "--out", out)
    assert code == 0, err
    assert (out / "report.md").is_symlink() and (tmp_path / "kept.md").read_text().startswith("# Runs report")


def test_plot_files_are_never_replaced(runs, tmp_path, capsys):
    plots = tmp_path / "plots"
    plots.mkdir()
    (plots / "learning_curves.png").symlink_to(tmp_path / "curves.png")
    code, _, err = cli(capsys, "plot", runs, "--out", plots)
    assert code == 0, err
    assert (plots / "learning_curves.png").is_symlink()
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (plots / "learning_curves.png").unlink()
    (plots / "learning_curves.png").mkdir()
    code, _, err = cli(capsys, "compare", runs, "--plot", plots)
    assert err.endswith(f"ktk: error: this is a folder, not a file; expected a file to write; "
                        f"received '{plots / 'learning_curves.png'}'.\n")
    assert code == 2 and err.count("ktk: error:") == 1


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
    cells = write_sweep(tmp_path / "sweeps" / "cells", TRIALS.replace(
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
