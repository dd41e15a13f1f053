"""`ktk compare` and `ktk plot` on real small runs and sweeps trained in this test session, and on result
directories written by hand (the fast tests).

The runs are trained once per session (three tiny MLPs on a noisy two-moons set, a few seconds each) by
:func:`toolkit.runs.run`; the sweep by :func:`toolkit.sweeps.tune` (tests/helpers.py, the `runs` and
`sweep` fixtures of conftest.py).
"""

import csv
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from helpers import REPO, RUN_VARIANTS, assert_png, ktk, parse_html, subprocess_env, write_run, write_sweep
from toolkit.analysis.compare import Parameter, compare, range_edge, read_sweep, render
from toolkit.errors import UserError

METRIC_PREFIXES = ("train.", "validation.", "test.", "gap.")
NOT_CONFIG = {"run", "kind", "status", "verdict", "epochs", "best_epoch", "params", "duration_s", "message", "path",
              "trial_id"}


def config_columns(df):
    return [c for c in df.columns if c not in NOT_CONFIG and not c.startswith(METRIC_PREFIXES)]


# ------------------------------------------------------------------------------------- real runs


@pytest.mark.slow
def test_only_the_differing_config_keys_appear(runs):
    df = compare(runs)
    assert list(df["run"]) == ["dropout", "fast", "plain"]
    assert config_columns(df) == ["model.dropout", "training.optimizer.learning_rate"]
    assert list(df["model.dropout"]) == [0.3, 0.0, 0.0]
    assert list(df["training.optimizer.learning_rate"]) == [0.05, 0.2, 0.05]
    # then the metrics of every split, the gap, epochs, params and duration
    assert [c for c in df.columns if c.startswith(METRIC_PREFIXES)] == [
        "train.loss", "train.accuracy", "validation.loss", "validation.accuracy", "test.loss", "test.accuracy",
        "gap.accuracy"]
    assert list(df.columns[-7:]) == ["verdict", "epochs", "best_epoch", "params", "duration_s", "path", "trial_id"]
    assert df.attrs["warnings"] == []
    # the verdict is ktk diagnose's, computed from the same metrics
    from toolkit.lessons.diagnosis import VERDICTS, verdict_for_run

    assert list(df["verdict"]) == [verdict_for_run(path) for path in df["path"]]
    assert set(df["verdict"]) <= set(VERDICTS)

    every = compare(runs, all_params=True)
    assert {"name", "seed", "data.source", "data.options.noise", "model.hidden", "training.batch_size",
            "training.early_stopping.patience", "model.dropout"} <= set(config_columns(every))
    assert every.loc[0, "model.hidden"] == "[64, 64]" and every.loc[0, "data.source"] == "synthetic.moons"
    assert {"kind", "status"} <= set(every.columns) and set(every["status"]) == {"completed"}


@pytest.mark.slow
def test_metrics_are_those_of_the_best_epoch(runs):
    from toolkit.results import read_history_csv

    df = compare(runs)
    stopped_before_the_end = 0
    for row in df.to_dict(orient="records"):
        history = read_history_csv(Path(row["path"]) / "history.csv")
        metrics = json.loads((Path(row["path"]) / "metrics.json").read_text())
        best = row["best_epoch"]
        assert best == metrics["best_epoch"] and row["epochs"] == len(history["epoch"]) == 8
        assert best == 1 + history["val_loss"].index(min(history["val_loss"]))
        # the table's validation loss is the best epoch's, not the last epoch's
        assert row["validation.loss"] == pytest.approx(history["val_loss"][best - 1], abs=1e-4)
        if best < len(history["epoch"]):
            stopped_before_the_end += 1
            assert abs(row["validation.loss"] - history["val_loss"][-1]) > 1e-4
        for split in ("train", "validation", "test"):
            for name, value in metrics[split].items():
                assert row[f"{split}.{name}"] == value
        assert row["gap.accuracy"] == pytest.approx(row["train.accuracy"] - row["validation.accuracy"])
        assert row["params"] == metrics["params"] and row["duration_s"] == metrics["wall_time_s"]
    assert stopped_before_the_end >= 1  # the check above is not vacuous


@pytest.mark.slow
def test_sort_filter_and_top(runs):
    df = compare(runs, sort="-validation.loss")
    assert list(df["validation.loss"]) == sorted(df["validation.loss"], reverse=True)
    ascending = compare(runs, sort="validation.loss")
    assert list(ascending["run"]) == list(reversed(list(df["run"])))

    assert list(compare(runs, sort="validation.loss", top=2)["run"]) == list(ascending["run"])[:2]
    assert list(compare(runs, filters=["model.dropout>0.1"])["run"]) == ["dropout"]
    assert list(compare(runs, filters=["model.dropout==0"], sort="run")["run"]) == ["fast", "plain"]
    assert list(compare(runs, filters=["status==completed"])["run"]) == ["dropout", "fast", "plain"]
    assert list(compare(runs, filters=["model.activation==relu", "training.optimizer.learning_rate<0.1",
                                       "model.dropout<=0"])["run"]) == ["plain"]
    assert len(compare(runs, filters=["status!=completed"])) == 0
    assert len(compare(runs, filters=["model.batchnorm==false", "model.hidden==[64, 64]", "kind==run"])) == 3
    assert len(compare(runs, filters=["model.batchnorm==true"])) == 0
    # a column used to sort or filter stays visible even when it does not differ among the rows left
    narrowed = compare(runs, filters=["training.optimizer.learning_rate==0.05"], sort="epochs")
    assert "training.optimizer.learning_rate" in narrowed.columns and "epochs" in narrowed.columns


@pytest.mark.slow
def test_unknown_columns_and_bad_filters_are_user_errors(runs):
    with pytest.raises(UserError) as error:
        compare(runs, sort="-validation.los")
    message = str(error.value)
    assert message.startswith("--sort: unknown column; received 'validation.los'. Valid choices: run, kind, ")
    assert message.endswith("Did you mean 'validation.loss'?")
    with pytest.raises(UserError, match=r"^--filter: unknown column; received 'model.dropot'\..*"
                                        r"Did you mean 'model.dropout'\?$"):
        compare(runs, filters=["model.dropot>0.1"])
    with pytest.raises(UserError) as error:
        compare(runs, filters=["model.dropout ~ 3"])
    assert str(error.value) == ("--filter: expected COLUMN OP VALUE, e.g. 'model.dropout>0.1' or "
                                "'status==completed', with OP one of the valid choices; received 'model.dropout ~ 3'. "
                                "Valid choices: ==, !=, >, >=, <, <=.")
    with pytest.raises(UserError, match=r"^--filter: expected a number after '>'; received 'high'\.$"):
        compare(runs, filters=["model.dropout>high"])
    with pytest.raises(UserError, match=r"^--top: expected a positive number of rows; received 0\.$"):
        compare(runs, top=0)
    with pytest.raises(UserError, match=r"^PATH: path not found; .*received '.*nowhere'\.$"):
        compare([runs / "nowhere"])

    result = ktk("compare", runs, "--sort=-validation.los")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("ktk: error: --sort: unknown column; received 'validation.los'.")
    assert result.stderr.rstrip().endswith("Did you mean 'validation.loss'?")


@pytest.mark.slow
def test_every_format_parses_back(runs):
    df = compare(runs)
    from_csv = pd.read_csv(io.StringIO(render(df, "csv")), keep_default_na=False, na_values=[""])
    assert list(from_csv.columns) == list(df.columns)
    pd.testing.assert_frame_equal(from_csv.drop(columns=["trial_id"]), df.drop(columns=["trial_id"]),
                                  check_dtype=False, check_exact=False, rtol=1e-12)

    records = json.loads(render(df, "json"))
    assert len(records) == 3 and list(records[0]) == list(df.columns)
    assert [r["validation.loss"] for r in records] == list(df["validation.loss"])
    pd.testing.assert_frame_equal(pd.DataFrame.from_records(records), df, check_dtype=False)

    shown = [c for c in df.columns if c not in ("path", "trial_id")]
    markdown = render(df, "markdown").splitlines()
    assert len(markdown) == 2 + len(df)
    assert [c.strip() for c in markdown[0].strip("|").split("|")] == shown
    assert [c.strip() for c in markdown[2].strip("|").split("|")][:3] == ["dropout", "0.3", "0.05"]

    page = parse_html(render(df, "html"))
    assert len(page.tables) == 1
    header, *rows = page.tables[0]
    assert header == shown and len(rows) == len(df)
    assert [r[0] for r in rows] == list(df["run"])
    assert [float(r[shown.index("validation.loss")]) for r in rows] == pytest.approx(
        list(df["validation.loss"]), rel=1e-3)

    table = render(df, "table").splitlines()
    assert len(table) == 2 + len(df) and table[0].split() == shown and set(table[1]) <= {"-", " "}

    with pytest.raises(UserError, match=r"^--format: expected a table format; received 'xml'\. Valid choices: "
                                        r"table, markdown, csv, json, html\.$"):
        render(df, "xml")


@pytest.mark.slow
def test_a_damaged_run_is_skipped_with_a_warning(runs, tmp_path):
    for name in RUN_VARIANTS:
        shutil.copytree(runs / name, tmp_path / name)
    shutil.copytree(runs / "plain", tmp_path / "half-written")
    shutil.copytree(runs / "plain", tmp_path / "unfinished")
    shutil.copytree(runs / "plain", tmp_path / "bad-config")
    text = (tmp_path / "half-written" / "metrics.json").read_text()
    (tmp_path / "half-written" / "metrics.json").write_text(text[: len(text) // 2])
    (tmp_path / "unfinished" / "metrics.json").unlink()
    (tmp_path / "bad-config" / "config.yaml").write_text("model: [unclosed\n")

    df = compare(tmp_path)
    assert list(df["run"]) == ["dropout", "fast", "plain"]
    warnings = df.attrs["warnings"]
    assert len(warnings) == 3
    assert any(w.startswith(f"{tmp_path / 'half-written'}: metrics.json is not valid JSON") for w in warnings)
    assert f"{tmp_path / 'unfinished'}: no metrics.json (unfinished or failed run); skipped" in warnings
    assert any(w.startswith(f"{tmp_path / 'bad-config'}: config.yaml cannot be read") for w in warnings)
    assert all(w.endswith("; skipped") for w in warnings)

    result = ktk("compare", tmp_path, "--format", "csv")
    assert result.returncode == 0
    assert len(pd.read_csv(io.StringIO(result.stdout))) == 3
    assert result.stderr.count("ktk: warning: ") == 3 and "half-written" in result.stderr


@pytest.mark.slow
def test_cli_writes_files_and_plots_without_importing_tensorflow(runs, tmp_path):
    out = tmp_path / "table.csv"
    result = ktk("compare", runs, "--format", "csv", "--sort", "-validation.accuracy", "--top", "2",
                 "--output", out, "--plot", tmp_path / "plots")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and f"wrote {out} (2 rows)" in result.stderr
    table = pd.read_csv(out)
    assert len(table) == 2 and list(table["validation.accuracy"]) == sorted(table["validation.accuracy"], reverse=True)
    assert_png(tmp_path / "plots" / "learning_curves.png")

    code = ("import sys; from toolkit.cli import main; "
            f"code = main(['compare', {str(runs)!r}, '--format', 'json']); "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'TensorFlow was imported'; "
            "sys.exit(code)")
    checked = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(),
                             timeout=60)
    assert checked.returncode == 0, checked.stderr
    assert len(json.loads(checked.stdout)) == 3


@pytest.mark.slow
def test_plot_writes_learning_curves(runs, tmp_path):
    result = ktk("plot", runs, "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(tmp_path / "learning_curves.png")]
    assert_png(tmp_path / "learning_curves.png", min_bytes=20_000)


# ------------------------------------------------------------------------------------ real sweep


@pytest.mark.slow
def test_each_trial_is_a_row_plus_the_best_run(sweep):
    trials = list(csv.DictReader(open(sweep / "trials.csv", newline="")))
    df = compare(sweep)
    assert list(df["run"]) == [f"sweep#{t['trial_id']}" for t in trials] + ["sweep/best"]
    assert list(df["kind"]) == ["trial"] * len(trials) + ["best"]
    assert config_columns(df) == ["model.dropout", "training.optimizer.learning_rate"]
    for row, trial in zip(df.to_dict(orient="records"), trials):
        assert row["status"] == trial["status"] and row["trial_id"] == trial["trial_id"]
        assert row["model.dropout"] == pytest.approx(float(trial["model.dropout"]))
        if trial["status"] == "completed":
            assert row["validation.loss"] == pytest.approx(float(trial["validation.loss"]))
            assert row["validation.loss"] == pytest.approx(float(trial["score"]))  # the objective, best epoch
            assert row["best_epoch"] == int(trial["best_epoch"])
            assert pd.isna(row["test.loss"])  # trials never see the test split
    failed = df[df["status"] == "failed"]
    assert len(failed) == 1 and failed.iloc[0]["training.optimizer.learning_rate"] == 1e30
    assert "NaN or infinite" in failed.iloc[0]["message"]
    best = df.iloc[-1]
    best_metrics = json.loads((sweep / "best" / "metrics.json").read_text())
    assert best["test.loss"] == best_metrics["test"]["loss"]
    from toolkit.lessons.diagnosis import verdict_for_run

    assert best["verdict"] == verdict_for_run(sweep / "best")
    assert df[df["kind"] == "trial"]["verdict"].isna().all()  # running means with dropout on are not judged
    sweep_info = read_sweep(sweep)
    winner = sweep_info.best_trial()
    assert best["model.dropout"] == pytest.approx(winner["model.dropout"])
    assert list(compare(sweep, filters=["kind==trial", "status==completed"], sort="validation.loss", top=1)["run"]) == [
        f"sweep#{winner['trial_id']}"]


@pytest.mark.slow
def test_runs_and_sweeps_together(runs, sweep):
    df = compare([runs, sweep])
    assert len(df) == 3 + 5 and set(df["kind"]) == {"run", "trial", "best"}
    assert {"model.hidden", "training.epochs", "model.dropout"} <= set(config_columns(df))
    assert "search.tuner" not in df.columns  # a sweep's search section is not a run's config


@pytest.mark.slow
def test_sweep_plots_are_png_files(sweep, tmp_path):
    from toolkit.analysis.plots import plot

    result = plot(sweep, tmp_path)
    names = sorted(p.name for p in result.files)
    assert names == sorted(["learning_curves.png", "param-model.dropout.png",
                            "param-training.optimizer.learning_rate.png", "trial-status.png", "best-trials.png"])
    for path in result.files:
        assert_png(path)
    assert result.warnings == []  # every trial, the failed one too, left its history


# ------------------------------------------------------------------------------------ unit checks


def test_edges_of_searched_ranges():
    assert range_edge(Parameter("p", "float", low=0.0, high=0.5, best=0.49)) == "high"
    assert range_edge(Parameter("p", "float", low=0.0, high=0.5, best=0.01)) == "low"
    assert range_edge(Parameter("p", "float", low=0.0, high=0.5, best=0.25)) is None
    # on a log scale the middle of [1e-4, 1e-1] is about 3e-3, and 2e-2 is not at the edge
    assert range_edge(Parameter("p", "float", low=1e-4, high=1e-1, log=True, best=2e-2)) is None
    assert range_edge(Parameter("p", "float", low=1e-4, high=1e-1, log=True, best=1.5e-4)) == "low"
    assert range_edge(Parameter("p", "float", low=1e-4, high=1e-1, log=False, best=1e-3)) == "low"
    assert range_edge(Parameter("p", "choice", choices=[32, 64, 128], best=128)) == "high"
    assert range_edge(Parameter("p", "choice", choices=[32, 64, 128], best=64)) is None
    assert range_edge(Parameter("p", "choice", choices=[32, 64], best=64)) is None  # two choices: both are edges
    assert range_edge(Parameter("p", "choice", choices=["sgd", "adam", "rmsprop"], best="sgd")) is None
    assert range_edge(Parameter("p", "unknown", low=1, high=5, best=5)) is None
    message = Parameter("model.dropout", "float", low=0.0, high=0.5, best=0.49, edge="high").edge_message
    assert message == ("the best value 0.49 is at the high edge of the searched range (near 0.5): "
                       "consider widening the range")


def test_trials_csv_text_is_kept_as_written(tmp_path):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "config.yaml").write_text("name: s\nmodel: {regularizer: null}\n")
    (sweep / "trials.csv").write_text(
        "trial_id,status,score,model.activation,model.dropout,validation.loss,epochs,message\n"
        "03,completed,0.5,none,0.1,0.5,3,\n"
        "10,failed,,relu,,,1,diverged\n")
    trials = read_sweep(sweep).trials
    assert [t["trial_id"] for t in trials] == ["03", "10"]  # ids name files: "03" is not 3
    assert trials[0]["model.activation"] == "none"  # a searched choice "none" is the text, not a missing value
    assert trials[1]["model.dropout"] is None and trials[0]["model.dropout"] == 0.1
    df = compare(sweep)
    assert list(df["run"]) == ["sweep#03", "sweep#10"] and list(df["trial_id"]) == ["03", "10"]


def test_nothing_found_is_a_user_error(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UserError) as error:
        compare(tmp_path)
    assert str(error.value) == (
        "PATH: no run or sweep directories found; expected a run directory (metrics.json + config.yaml), "
        "a sweep directory (trials.csv + config.yaml) or a folder holding them; received "
        f"'{tmp_path}'.")
    with pytest.raises(UserError, match=r"^PATH: not a run or sweep directory; .*received '.*notes.txt'\.$"):
        compare(tmp_path / "notes.txt")


@pytest.mark.slow
def test_rows_of_one_kind_still_plot_and_a_best_run_is_listed_once(sweep, tmp_path):
    from toolkit.analysis.plots import plot_table

    trials = compare(sweep, filters=["kind==trial"])
    trials = trials.drop(columns=[c for c in ("kind",) if c in trials.columns])  # as the CLI's table can be
    result = plot_table(trials, tmp_path / "plots")
    assert "learning_curves.png" in {p.name for p in result.files} and result.warnings == []
    assert any(p.name.startswith("param-") for p in result.files)  # the trials' sweep was recognised
    both = compare([sweep, sweep / "best"])
    assert list(both["run"]).count("sweep/best") == 1 and len(both) == len(compare(sweep))


@pytest.mark.slow
def test_mixed_values_sort_and_unreadable_files_are_skipped(runs, tmp_path):
    for name, batch in (("a", 64), ("b", "full"), ("c", 16)):
        shutil.copytree(runs / "plain", tmp_path / name)
        config = yaml.safe_load((tmp_path / name / "config.yaml").read_text())
        config["training"]["batch_size"] = batch
        (tmp_path / name / "config.yaml").write_text(yaml.safe_dump(config))
    assert list(compare(tmp_path, sort="training.batch_size")["training.batch_size"]) == [16, 64, "full"]
    (tmp_path / "a" / "config.yaml").unlink()
    (tmp_path / "a" / "config.yaml").mkdir()  # not a file: reported, not a crash
    df = compare(tmp_path)
    assert list(df["run"]) == ["b", "c"]
    assert any(w.startswith(f"{tmp_path / 'a'}: config.yaml cannot be read") for w in df.attrs["warnings"])


# ------------------------------------------------------------------------------- hand-made sweeps

HAND_TRIALS = ("trial_id,status,score,model.dropout,model.hidden.0,train.loss,validation.loss,epochs,best_epoch,"
               "params,started,duration_s,message\n"
               "0,completed,0.41,0.1,8,0.3,0.41,3,2,42,2026-01-01T00:00:00+00:00,1.5,\n"
               "1,completed,0.39,0.3,32,0.35,0.39,3,3,80,2026-01-01T00:00:00+00:00,1.7,\n"
               "2,failed,,0.2,16,,,1,,,2026-01-01T00:00:00+00:00,0.5,\"the loss became NaN or infinite at epoch 1 "
               "(try a lower learning rate, gradient clipping or a normalizer)\"\n")


def hand_sweep(tmp_path, trials=HAND_TRIALS, config=None):
    sweep = write_sweep(tmp_path / "sweep", trials, config)
    write_run(sweep / "best", {"name": "hand-sweep", "model": {"hidden": [32], "dropout": 0.3},
                               "training": {"optimizer": {"name": "adam", "learning_rate": 0.01}}})
    return sweep


def test_a_searched_list_item_replaces_the_list_column_it_spells_out(tmp_path):
    sweep = hand_sweep(tmp_path)
    df = compare(sweep)
    assert config_columns(df) == ["model.dropout", "model.hidden.0"]  # model.hidden says nothing more
    assert list(df["model.hidden.0"]) == [8, 32, 16, 32]  # best/ gets its item from its list
    assert list(compare(sweep, filters=["model.hidden.0>=32"])["run"]) == ["sweep#1", "sweep/best"]
    every = compare(sweep, all_params=True)
    assert list(every["model.hidden"]) == ["[8]", "[32]", "[16]", "[32]"]
    assert "model.hidden" in compare(sweep, sort="model.hidden").columns  # a column asked for is shown

    # when the list has items no column shows (its depth searched too), it says more: both are kept
    deeper = HAND_TRIALS.replace("model.hidden.0,", "model.hidden.0,model.depth,").replace(",8,", ",8,2,").replace(
        ",32,", ",32,1,").replace(",16,", ",16,3,")
    df = compare(hand_sweep(tmp_path / "deeper", deeper))
    assert {"model.hidden", "model.hidden.0", "model.depth"} <= set(config_columns(df))
    assert list(df["model.hidden"])[:3] == ["[8, 16]", "[32]", "[16, 16, 16]"]  # the base [16] resized, item 0 set


def test_the_terminal_table_fits_the_width_and_files_stay_whole(tmp_path, capsys, monkeypatch):
    sweep = hand_sweep(tmp_path)
    df = compare(sweep, all_params=True)
    whole = render(df, "table")
    assert len(whole.splitlines()) == 2 + len(df) and max(map(len, whole.splitlines())) > 200
    fitted = render(df, "table", width=80)
    blocks = fitted.split("\n\n")
    assert len(blocks) > 2 and max(map(len, fitted.splitlines())) <= 80
    for block in blocks:  # each block: a header, a rule and every row, led by the run names
        lines = block.strip("\n").splitlines()
        assert len(lines) == 2 + len(df) and lines[0].startswith("run ")
        assert [line.split()[0] for line in lines[2:]] == list(df["run"])
    headers = [word for block in blocks for word in block.splitlines()[0].split()[1:]]
    assert "t.optimizer.learning_rate" in headers or "training.optimizer.learning_rate" in headers
    assert "the loss became NaN or infinite at ep..." in fitted  # a long value is cut

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setenv("COLUMNS", "100")
    monkeypatch.setattr(sys, "stdout", Terminal())
    from toolkit.cli import main

    assert main(["compare", str(sweep)]) == 0
    shown = sys.stdout.getvalue()
    monkeypatch.undo()
    assert max(map(len, shown.splitlines())) <= 100 and "\n\n" in shown
    assert main(["compare", str(sweep)]) == 0  # to a pipe: whole
    assert capsys.readouterr().out == render(compare(sweep), "table")


def test_terminal_tables_show_control_characters_escaped():
    from toolkit.tables import text_table

    text = text_table(["run", "note"], [["a\x1b[31mred", "two\nlines"]], width=80)
    assert "\x1b" not in text and "\\x1b[31mred" in text and "two\\nlines" in text


# ---------------------------------------------------------------------------------------- tables


def test_values_for_reading():
    from toolkit.tables import compact, format_metric, format_value, json_value, shorten

    assert [format_value(v) for v in (None, float("nan"), True, 3, 3.0, 0.123456, 1e30, "x", [1, [2]])] == [
        "", "", "true", "3", "3", "0.1235", "1e+30", "x", "[1, [2]]"]
    assert format_value(None, missing="-") == "-"
    assert [format_metric(v) for v in (None, 0.5, 3)] == ["-", "0.5000", "3"]
    assert compact({"a": [1, None, True], "b": {"c": "x"}}) == "{a: [1, null, true], b: {c: x}}"
    assert compact(list(range(10_000))).endswith("...") and len(compact(list(range(10_000)))) == 10_003
    assert shorten("a  b\nc", 10) == "a b c" and shorten("abcdefghijk", 8) == "abcde..."
    assert [json_value(v) for v in (float("inf"), float("nan"), 2.5, True, None, "x", [1])] == [
        None, None, 2.5, True, None, "x", "[1]"]


def test_markdown_text_and_code_blocks():
    from toolkit.tables import markdown_code, markdown_table, markdown_text

    assert markdown_text("<b>x</b> & [a](b) `c` *d* | e\nf") == (
        "&lt;b&gt;x&lt;/b&gt; &amp; \\[a\\](b) \\`c\\` \\*d\\* \\| e f")
    assert [markdown_text(t) for t in ("# h", "- i", "1. j", "-0.5", "0.3", "#tag")] == [
        "\\# h", "\\- i", "1\\. j", "-0.5", "0.3", "#tag"]
    assert markdown_code("ktk run x") == "```\nktk run x\n```"
    assert markdown_code("a ``` b") == "````\na ``` b\n````"  # the fence outlasts any run of backticks inside
    assert markdown_table(["a|b", "n"], [["<i>", "1"]], [False, True]) == (
        "| a\\|b | n |\n| --- | ---: |\n| &lt;i&gt; | 1 |\n")


def test_text_tables_and_abbreviations():
    from toolkit.tables import abbreviate, rows_table, text_table

    assert abbreviate("training.optimizer.learning_rate", 30) == "t.optimizer.learning_rate"
    assert abbreviate("training.optimizer.learning_rate", 20) == "t.o.learning_rate"
    assert abbreviate("a_very_long_single_name_without_dots", 12) == "a_very_lo..."
    assert text_table(["x", "n"], [["a", "1"], ["bb", "22"]], [False, True]) == "x    n\n--  --\na    1\nbb  22\n"
    assert text_table(["", "loss"], [["train", "0.5000"]], [False, True], rule=False, indent="  ", min_width=10) == (
        " " * 20 + "loss\n  train           0.5000\n")  # the run summary's layout
    assert rows_table([{"run": "a", "loss": 0.5, "note": None}, {"run": "bb", "loss": float("nan"), "note": "x"}]) == (
        "run  loss  note\n---  ----  ----\na     0.5  -\nbb      -  x\n")


def test_the_run_summary_reads_as_the_readme_shows():
    from types import SimpleNamespace

    from toolkit.summary import format_run_summary

    metrics = {"train": {"accuracy": 0.99841, "loss": 0.0606}, "validation": {"accuracy": 0.9777, "loss": 0.1853},
               "test": {"accuracy": 0.9814, "loss": 0.1395}, "epochs_run": 30, "best_epoch": 30,
               "monitor": "val_loss", "params": 17802, "wall_time_s": 10.0,
               "sizes": {"train": 1259, "validation": 269, "test": 269}}
    result = SimpleNamespace(metrics=metrics, config=SimpleNamespace(name="digits-mlp"),
                             run_dir="runs/digits-mlp/20261122-032000")
    readme = (REPO / "README.md").read_text()
    assert format_run_summary(result).strip("\n") + "\n```" in readme
