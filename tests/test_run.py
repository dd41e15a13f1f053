"""`ktk run` and `ktk validate` end to end on bundled data, through the real command line."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from toolkit import training
from toolkit.cli import main
from toolkit.results import read_history_csv

from helpers import REPO

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


def test_run_writes_the_run_directory(iris_config, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli("run", iris_config, "--out", out, "-q") == 0
    assert sorted(p.name for p in out.iterdir()) == [
        ".ktk-run", "config.yaml", "environment.json", "history.csv", "metrics.json", "model.keras"]
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


def test_same_config_and_seed_give_identical_metrics(iris_config, tmp_path):
    run_cli("run", iris_config, "--out", tmp_path / "a", "-q")
    run_cli("run", tmp_path / "a" / "config.yaml", "--out", tmp_path / "b", "-q")  # the resolved config reproduces
    a = json.loads((tmp_path / "a" / "metrics.json").read_text())
    b = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert {k: a[k] for k in ("train", "validation", "test")} == {k: b[k] for k in ("train", "validation", "test")}


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


def test_bad_name_fails_before_anything_is_written(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("data: {source: sklearn.iris}\nmodel: {initializer: he_normall}\n")
    assert run_cli("run", path, "--out", tmp_path / "run") == 2
    assert not (tmp_path / "run").exists()
    err = capsys.readouterr().err
    assert err.startswith(f"ktk: error: {path}: model.initializer: expected a Keras initializer; "
                          "received 'he_normall'.")
    assert "Did you mean 'he_normal'?" in err


def subprocess_ktk(*args, timeout=120):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "toolkit", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO)


def test_validate_prints_resolved_config_without_tensorflow():
    code = ("import sys; from toolkit.cli import main; main(['validate', 'configs/quickstart.yaml']); "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'heavy import'")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert "1259 train / 269 validation / 269 test examples" in out.stdout
    assert yaml.safe_load(out.stdout)["model"]["hidden"] == [128, 64]


def test_user_errors_exit_2_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {source: sklearn.iris}\nmodel: {dropout: 1.5}\n")
    result = subprocess_ktk("validate", bad)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr == f"ktk: error: {bad}: model.dropout: expected a rate in [0, 1); received 1.5.\n"
    result = subprocess_ktk("run", "configs/quickstart.yaml", "--set", "training.epochs")
    assert result.returncode == 2 and "--set: expected KEY=VALUE" in result.stderr
    result = subprocess_ktk("rnu")
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
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, env=env,
                         timeout=60)
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith(f"ktk: error: {path}: {message}")
    assert "Did you mean" in out.stderr


def test_fast_name_lists_match_keras_registries():
    import keras

    from toolkit.keras_names import choices
    from toolkit.models import initializer_names, keras_names

    assert choices("layer") == keras_names(keras.layers, keras.layers.Layer)
    assert choices("initializer") == initializer_names()
    assert set(choices("optimizer")) == {n.lower() for n in keras_names(keras.optimizers, keras.optimizers.Optimizer)
                                         } - {"lossscaleoptimizer", "multioptimizer"}


def test_validate_deep_builds_the_model(capsys):
    assert main(["validate", str(REPO / "configs" / "quickstart.yaml"), "--deep"]) == 0
    assert "17,802 parameters" in capsys.readouterr().out
