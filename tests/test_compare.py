"""`ktk compare` and `ktk plot` on real small runs and sweeps trained in this test session, and on result
directories written by hand (the fast tests).

The runs are trained once per session (three tiny MLPs on a noisy two-moons set, a few seconds each) by
:func:`toolkit.runs.run`; the sweep by :func:`toolkit.sweeps.tune` (tests/helpers.py, the `runs` and
`sweep` fixtures of conftest.py).
"""

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from helpers import REPO, RUN_VARIANTS, assert_png, ktk, parse_html, subprocess_env, write_run, write_sweep
from toolkit.analysis.compare import Parameter, compare, flatten, range_edge, read_config, read_sweep, render
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
    assert list(compare(runs, filters=["model.dropout=0"], sort="run")["run"]) == ["fast", "plain"]
    assert list(compare(runs, filters=["status==completed"])["run"]) == ["dropout", "fast", "plain"]
    assert list(compare(runs, filters=["model.activation==relu", "training.optimizer.learning_rate<0.1",
                                       "model.dropout<=0"])["run"]) == ["plain"]
    assert len(compare(runs, filters=["status!=completed"])) == 0
    assert len(compare(runs, filters=["model.batchnorm==false", "model.hidden==[64, 64]", "kind=run"])) == 3
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
    assert str(error.value) == ("--filter: expected COLUMN OP VALUE with OP one of == != > >= < <= "
                                "(e.g. 'model.dropout>0.1' or 'status==completed'); received 'model.dropout ~ 3'.")
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
