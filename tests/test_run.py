"""`ktk run` and `ktk validate` end to end on bundled data, through the real command line."""

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from toolkit import training
from toolkit.cli import main
from toolkit.errors import UserError
from toolkit.quiet import without_startup_lines
from toolkit.results import RUN_MARKER, read_history_csv
from toolkit.runs import claim_default_run_dir, claim_run_dir

from helpers import REPO, ktk, subprocess_env

IRIS = """\
name: iris-test
seed: 3
data: {source: sklearn.iris}
model: {hidden: [8], dropout: 0.1, regularizer: {l2: 1.0e-4}}
training:
  optimizer: {name: adam, learning_rate: 0.05}
  batch_size: 16
  epochs: 4
"""


@pytest.fixture()
def iris_config(tmp_path):
    path = tmp_path / "iris.yaml"
    path.write_text(IRIS)
    return path


def run_cli(*args):
    return main([str(a) for a in args])


@pytest.mark.slow
def test_run_writes_the_run_directory(iris_config, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli("run", iris_config, "--out", out, "-q") == 0
    assert sorted(p.name for p in out.iterdir()) == [
        ".ktk-run", "config.yaml", "environment.json", "history.csv", "labels.json", "metrics.json", "model.keras"]
    metrics = json.loads((out / "metrics.json").read_text())
    for split in ("train", "validation", "test"):
        assert set(metrics[split]) == {"loss", "accuracy"}
        assert 0 <= metrics[split]["accuracy"] <= 1
    assert metrics["epochs_run"] == 4 and 1 <= metrics["best_epoch"] <= 4
    assert metrics["params"] == 4 * 8 + 8 + 8 * 3 + 3
    assert metrics["wall_time_s"] > 0 and metrics["seed"] == 3 and metrics["task"] == "multiclass"
    history = read_history_csv(out / "history.csv")
    assert history["epoch"] == [1, 2, 3, 4]
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"} <= set(history)
    environment = json.loads((out / "environment.json").read_text())
    assert environment["seed"] == 3 and environment["tensorflow"] and environment["finished"]
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["training"]["steps_per_execution"] == "auto"  # defaults are filled in
    printed = capsys.readouterr().out
    assert "iris-test: 4 epochs" in printed and "test" in printed and str(out) in printed


@pytest.mark.slow
def test_same_config_and_seed_give_identical_metrics(iris_config, tmp_path):
    run_cli("run", iris_config, "--out", tmp_path / "a", "-q")
    run_cli("run", tmp_path / "a" / "config.yaml", "--out", tmp_path / "b", "-q")  # the resolved config reproduces
    a = json.loads((tmp_path / "a" / "metrics.json").read_text())
    b = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert {k: a[k] for k in ("train", "validation", "test")} == {k: b[k] for k in ("train", "validation", "test")}


@pytest.mark.slow
def test_test_split_is_evaluated_exactly_once_after_training(iris_config, tmp_path, monkeypatch):
    calls = []
    real_evaluate, real_fit = training.evaluate, training.fit

    def spy_fit(*args, **kwargs):
        calls.append("fit")
        return real_fit(*args, **kwargs)

    def spy_evaluate(model, config, data, split):
        calls.append(split)
        return real_evaluate(model, config, data, split)

    monkeypatch.setattr(training, "fit", spy_fit)
    monkeypatch.setattr(training, "evaluate", spy_evaluate)
    run_cli("run", iris_config, "--out", tmp_path / "run", "-q")
    assert calls.count("test") == 1 and calls.index("test") > calls.index("fit")


@pytest.mark.slow
def test_early_stopping_restores_best_epoch(tmp_path):
    path = tmp_path / "es.yaml"
    path.write_text(IRIS.replace("epochs: 4", "epochs: 60\n  early_stopping: {monitor: val_loss, patience: 2}"))
    assert run_cli("run", path, "--out", tmp_path / "run", "-q") == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    history = read_history_csv(tmp_path / "run" / "history.csv")
    assert metrics["epochs_run"] < 60
    assert metrics["best_epoch"] == 1 + history["val_loss"].index(min(history["val_loss"]))
    # restored weights: the validation loss reported is the best epoch's, not the last one's
    assert metrics["validation"]["loss"] == pytest.approx(min(history["val_loss"]), rel=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("restore", [True, False])
def test_without_early_stopping_the_best_epoch_is_kept_unless_told(tmp_path, restore):
    path = tmp_path / "noes.yaml"
    # a large learning rate makes validation loss bounce, so the best epoch is rarely the last
    text = IRIS.replace("learning_rate: 0.05", "learning_rate: 0.3").replace("epochs: 4", "epochs: 12")
    path.write_text(text + f"  restore_best_weights: {str(restore).lower()}\n")
    assert run_cli("run", path, "--out", tmp_path / "run", "-q") == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    history = read_history_csv(tmp_path / "run" / "history.csv")
    assert metrics["epochs_run"] == 12  # it never stops early
    best = history["val_loss"][metrics["best_epoch"] - 1]
    assert best == min(history["val_loss"])
    assert metrics["best_epoch"] < 12, "the test needs a run whose best epoch is not its last"
    expected = best if restore else history["val_loss"][-1]
    assert metrics["validation"]["loss"] == pytest.approx(expected, rel=1e-3)


@pytest.mark.slow
def test_regression_full_batch_with_schedule(tmp_path):
    path = tmp_path / "reg.yaml"
    path.write_text("""\
data: {source: sklearn.diabetes}
model: {hidden: [8]}
training:
  optimizer: {name: sgd, learning_rate: 0.01, momentum: 0.9, nesterov: true}
  schedule: {name: exponential_decay, decay_steps: 1, decay_rate: 0.5}
  batch_size: full
  epochs: 3
""")
    assert run_cli("run", path, "--out", tmp_path / "run", "-q") == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(metrics["test"]) == {"loss", "mae"} and metrics["task"] == "regression"
    rates = read_history_csv(tmp_path / "run" / "history.csv")["learning_rate"]
    assert rates == pytest.approx([0.005, 0.0025, 0.00125])  # one full-batch step per epoch


def test_existing_run_directory_is_never_overwritten(iris_config, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    assert run_cli("run", iris_config, "--out", out) == 2
    assert (out / "metrics.json").read_text() == "{}"
    assert "--out: the run directory already exists and is not empty" in capsys.readouterr().err


@pytest.mark.slow
def test_bad_name_fails_before_anything_is_written(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("data: {source: sklearn.iris}\nmodel: {initializer: he_normall}\n")
    assert run_cli("run", path, "--out", tmp_path / "run") == 2
    assert not (tmp_path / "run").exists()
    err = capsys.readouterr().err
    assert err.startswith(f"ktk: error: {path}: model.initializer: expected a Keras initializer; "
                          "received 'he_normall'.")
    assert "Did you mean 'he_normal'?" in err


def test_validate_prints_resolved_config_without_tensorflow():
    code = ("import sys; from toolkit.cli import main; main(['validate', 'configs/quickstart.yaml']); "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'heavy import'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(), cwd=REPO,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert "1259 train / 269 validation / 269 test examples" in out.stdout
    assert yaml.safe_load(out.stdout)["model"]["hidden"] == [128, 64]


def test_user_errors_exit_2_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {source: sklearn.iris}\nmodel: {dropout: 1.5}\n")
    result = ktk("validate", bad)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr == f"ktk: error: {bad}: model.dropout: expected a rate in [0, 1); received 1.5.\n"
    result = ktk("run", "configs/quickstart.yaml", "--set", "training.epochs", cwd=REPO)
    assert result.returncode == 2 and "--set: expected KEY=VALUE" in result.stderr
    result = ktk("rnu")
    assert result.returncode == 2 and "Did you mean 'run'?" in result.stderr


@pytest.mark.parametrize("section, message", [
    ("training: {optimizer: {name: adamm}}",
     "training.optimizer.name: expected a Keras optimizer; received 'adamm'."),
    ("model: {activation: relux}", "model.activation: expected a Keras activation; received 'relux'."),
    ("model: {initializer: he_normall}", "model.initializer: expected a Keras initializer; received 'he_normall'."),
    ("model: {layers: [{class_name: Conv2d, config: {}}]}",
     "model.layers.0.class_name: expected a Keras layer; received 'Conv2d'."),
    ("training: {schedule: {name: exponential_decai}}",
     "training.schedule.name: expected a Keras schedule; received 'exponential_decai'."),
])
def test_validate_catches_keras_name_typos_without_importing_keras(tmp_path, section, message):
    path = tmp_path / "bad.yaml"
    path.write_text("data: {source: sklearn.iris}\n" + section + "\n")
    code = ("import sys; from toolkit.cli import main; rc = main(['validate', sys.argv[1]]); "
            "assert 'keras' not in sys.modules; sys.exit(rc)")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, env=subprocess_env(),
                         timeout=60)
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith(f"ktk: error: {path}: {message}")
    assert "Did you mean" in out.stderr


@pytest.mark.slow
def test_fast_name_lists_match_keras_registries():
    import keras

    from toolkit.keras_names import choices
    from toolkit.models import exported_classes as keras_names, initializer_names

    assert choices("layer") == keras_names(keras.layers, keras.layers.Layer)
    assert choices("initializer") == initializer_names()
    assert set(choices("optimizer")) == {n.lower() for n in keras_names(keras.optimizers, keras.optimizers.Optimizer)
                                         } - {"lossscaleoptimizer", "multioptimizer"}


@pytest.mark.slow
def test_validate_deep_builds_the_model(capsys):
    assert main(["validate", str(REPO / "configs" / "quickstart.yaml"), "--deep"]) == 0
    assert "17,802 parameters" in capsys.readouterr().out


# ------------------------------------------------------------------------- one run, one directory


def test_a_run_directory_is_claimed_by_one_run_only(tmp_path):
    first = claim_run_dir(tmp_path / "out")
    assert first.created and sorted(p.name for p in first.path.iterdir()) == [RUN_MARKER]
    with pytest.raises(UserError) as info:
        claim_run_dir(tmp_path / "out")
    assert str(info.value) == (f"--out: another ktk run has claimed this directory; expected a new or empty "
                               f"directory; received '{tmp_path / 'out'}'.")
    first.release()
    assert not (tmp_path / "out").exists()
    nested = claim_run_dir(tmp_path / "new" / "deeper" / "out")
    nested.release()  # the folders it made go too, the ones that were there stay
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_an_empty_directory_given_by_the_user_is_claimed_and_kept(tmp_path):
    (tmp_path / "mine").mkdir()
    claim = claim_run_dir(tmp_path / "mine")
    assert not claim.created
    claim.release()
    assert (tmp_path / "mine").is_dir() and not any((tmp_path / "mine").iterdir())


def test_a_directory_holding_other_files_is_refused_and_left_as_it_was(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("keep me")
    with pytest.raises(UserError, match="already exists and is not empty"):
        claim_run_dir(tmp_path / "mine")
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["thesis.tex"]


def test_default_run_directories_started_in_the_same_second_differ(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    started = 1_700_000_000.0
    first, second, third = (claim_default_run_dir("exp", started) for _ in range(3))
    stamp = first.path.name
    assert first.path.parent == Path("runs") / "exp"
    assert [second.path.name, third.path.name] == [f"{stamp}-2", f"{stamp}-3"]
    for claim in (third, second):
        claim.release()
    assert sorted(p.name for p in (tmp_path / "runs" / "exp").iterdir()) == [stamp]
    first.release()  # it made runs/exp: a refused run leaves no empty runs/<name>/ behind
    assert not (tmp_path / "runs").exists()


def two_runs(config, *, out=None, cwd):
    """Starts two `ktk run`s of `config` at once, one with model.hidden [8], the other [16]; waits for both."""
    processes = []
    for hidden in (8, 16):
        args = ["run", config, "-q", "--set", f"model.hidden=[{hidden}]"] + (["--out", out] if out else [])
        processes.append(subprocess.Popen([sys.executable, "-m", "toolkit", *map(str, args)], cwd=cwd,
                                          env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True))
    outputs = [p.communicate(timeout=600) for p in processes]
    return [(p.returncode, *output) for p, output in zip(processes, outputs)]


def assert_self_consistent(run_dir):
    """config.yaml, environment.json and metrics.json describe one and the same run."""
    hidden = yaml.safe_load((run_dir / "config.yaml").read_text())["model"]["hidden"][0]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    environment = json.loads((run_dir / "environment.json").read_text())
    assert metrics["params"] == 4 * hidden + hidden + hidden * 3 + 3  # iris: 4 inputs, 3 classes
    assert f"model.hidden=[{hidden}]" in environment["command"]
    return hidden


@pytest.mark.slow
def test_two_runs_given_one_out_directory_one_wins_the_other_exits_2(iris_config, tmp_path):
    out = tmp_path / "shared"
    results = sorted(two_runs(iris_config, out=out, cwd=tmp_path))
    (won, _, _), (lost, _, lost_err) = results
    assert (won, lost) == (0, 2), results
    assert lost_err in (
        f"ktk: error: --out: another ktk run has claimed this directory; expected a new or empty directory; "
        f"received '{out}'.\n",
        # the loser was slow to start, and checked after the winner had written
        f"ktk: error: --out: the run directory already exists and is not empty; results are never overwritten; "
        f"expected a new or empty directory; received '{out}'.\n")
    assert_self_consistent(out)


@pytest.mark.slow
def test_two_default_runs_started_together_get_two_folders(iris_config, tmp_path):
    results = two_runs(iris_config, cwd=tmp_path)
    assert [r[0] for r in results] == [0, 0], results
    folders = sorted((tmp_path / "runs" / "iris-test").iterdir())
    assert len(folders) == 2
    assert sorted(assert_self_consistent(folder) for folder in folders) == [8, 16]


@pytest.mark.slow
def test_a_run_refused_before_its_first_epoch_leaves_nothing(tmp_path, capsys):
    config = tmp_path / "weights.yaml"
    config.write_text("data: {source: sklearn.diabetes}\nmodel: {hidden: [4]}\n"
                      "training: {epochs: 1, class_weight: {0: 2.0}}\n")
    assert run_cli("run", config, "--out", tmp_path / "new" / "run") == 2
    assert not (tmp_path / "new").exists()
    (tmp_path / "empty").mkdir()
    assert run_cli("run", config, "--out", tmp_path / "empty") == 2
    assert (tmp_path / "empty").is_dir() and not any((tmp_path / "empty").iterdir())
    assert capsys.readouterr().err.count("training.class_weight: expected no class weights") == 2


# --------------------------------------------------------------------------- a quiet start, clean logs

TENSORFLOW_STARTUP = (
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
    "I0000 00:00:1796287418.196832   14940 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use "
    "available CPU instructions in performance-critical operations.\n"
    "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow with the appropriate "
    "compiler flags.\n"
    "E0000 00:00:1796287418.2   14940 cuda_dnn.cc:8310] Unable to register cuDNN factory\n"
)


def test_tensorflow_startup_lines_are_recognised_and_nothing_else():
    other = "/x/protobuf/runtime_version.py:98: UserWarning: Protobuf gencode version is older\n"
    assert without_startup_lines((TENSORFLOW_STARTUP + other).encode()) == other.encode()


@pytest.mark.parametrize("verbose", [False, True])
def test_the_first_tensorflow_import_is_quiet_unless_verbose(tmp_path, verbose):
    # A stand-in for TensorFlow: its __init__ writes the start-up lines to fd 2, as TensorFlow's C++ code does.
    package = tmp_path / "fake" / "tensorflow"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        f"import os\nos.write(2, {TENSORFLOW_STARTUP.encode()!r})\nos.write(2, b'a line that matters\\n')\n")
    code = (f"from toolkit.quiet import quiet_tensorflow; quiet_tensorflow(verbose={verbose}); "
            "import tensorflow; print(tensorflow.__spec__.loader.__class__.__name__)")
    env = subprocess_env(PYTHONPATH=os.pathsep.join([str(tmp_path / "fake"), str(REPO)]))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "SourceFileLoader\n"  # the package sees its own loader
    assert out.stderr == (TENSORFLOW_STARTUP if verbose else "") + "a line that matters\n"


def test_progress_is_a_bar_on_a_terminal_and_one_line_per_epoch_elsewhere():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    assert training.progress_verbosity(True, Terminal()) == 1
    assert training.progress_verbosity(True, io.StringIO()) == 2
    assert training.progress_verbosity(False, Terminal()) == 0


@pytest.mark.slow
def test_a_run_into_a_pipe_has_a_quiet_start_and_no_redraws(iris_config, tmp_path):
    # TF_CPP_MIN_LOG_LEVEL=0 asks TensorFlow for every log line: the start-up lines are hidden all the same.
    out = subprocess.run([sys.executable, "-m", "toolkit", "run", str(iris_config), "--out", str(tmp_path / "run")],
                         capture_output=True, text=True, env=subprocess_env(TF_CPP_MIN_LOG_LEVEL="0"), timeout=600)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    assert "\r" not in out.stdout and "\x1b" not in out.stdout
    epochs = [line for line in out.stdout.splitlines() if re.match(r"\d+/\d+ - .* - val_loss: ", line)]
    assert len(epochs) == 4, out.stdout


@pytest.mark.slow
def test_a_sweep_and_its_trial_workers_start_quietly(tmp_path):
    # The trial workers' fork server imports TensorFlow first thing (its preload): quietly too.
    from helpers import IRIS_SWEEP

    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump({**IRIS_SWEEP, "training": {**IRIS_SWEEP["training"], "epochs": 1}, "search": {
        "tuner": "random", "objective": "val_loss", "max_trials": 1, "space": {"model.hidden.0": {"choice": [4, 8]}}}}))
    out = subprocess.run([sys.executable, "-m", "toolkit", "tune", str(config), "--out", str(tmp_path / "sweep")],
                         capture_output=True, text=True, env=subprocess_env(TF_CPP_MIN_LOG_LEVEL="0"), timeout=600)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
