"""Tracking: the ``tracking:`` section, ``callbacks``, TensorBoard event files and MLflow runs.

The fast tests check the config language and the directory layout; the slow ones train and read what was
written back with TensorBoard's event reader and ``mlflow.search_runs``.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import IRIS_SWEEP, ktk, ktk_here, subprocess_env

IRIS_RUN = {
    "name": "iris-track",
    "seed": 1,
    "data": {"source": "sklearn.iris"},
    "model": {"hidden": [8]},
    "training": {"optimizer": {"name": "adam", "learning_rate": 0.02}, "batch_size": 32, "epochs": 3},
}


def _config_file(tmp_path: Path, extra: dict, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({**IRIS_RUN, **extra}, sort_keys=False))
    return path


# --------------------------------------------------------------------------------- the config language


def test_callbacks_top_level_land_under_training():
    from toolkit.config import parse_config

    spec = [{"class_name": "ReduceLROnPlateau", "config": {"monitor": "val_loss", "factor": 0.5, "patience": 3}}]
    top = parse_config({**IRIS_RUN, "callbacks": spec})
    under = parse_config({**IRIS_RUN, "training": {**IRIS_RUN["training"], "callbacks": spec}})
    assert top.to_dict() == under.to_dict()
    assert top.to_dict()["training"]["callbacks"] == spec
    assert "callbacks" not in top.to_dict()
    # a config without callbacks or tracking resolves as before these keys existed
    plain = parse_config(IRIS_RUN).to_dict()
    assert "tracking" not in plain and "callbacks" not in plain["training"]


@pytest.mark.parametrize("extra, message", [
    ({"callbacks": [{"class_name": "LambdaCallback", "config": {}}]},
     "callbacks.0.class_name: LambdaCallback cannot be used here: it runs Python functions"),
    ({"callbacks": [{"class_name": "ModelCheckpoint", "config": {"filepath": "/tmp/x.keras"}}]},
     "ModelCheckpoint cannot be used here: ktk saves the best epoch's model itself"),
    ({"callbacks": [{"class_name": "TensorBoard"}]}, "use tracking.tensorboard"),
    ({"callbacks": [{"class_name": "CSVLogger", "config": {"filename": "h.csv"}}]}, "ktk writes history.csv"),
    ({"callbacks": [{"class_name": "BackupAndRestore", "config": {"backup_dir": "/tmp"}}]}, "checkpoints"),
    ({"callbacks": [{"class_name": "RemoteMonitor"}]}, "sends every epoch's logs to a URL"),
    ({"callbacks": [{"class_name": "EarlyStopping"}]}, "use training.early_stopping"),
    ({"callbacks": [{"class_name": "LearningRateScheduler"}]}, "takes a Python function"),
    ({"callbacks": [{"class_name": "ReduceLROnPlatau"}]},
     "training.callbacks.0.class_name: expected a Keras callback; received 'ReduceLROnPlatau'"),
    ({"callbacks": [{"class_name": "ReduceLROnPlateau", "config": {"factr": 0.5}}]},
     "training.callbacks.0.config.factr: expected an argument of ReduceLROnPlateau; received 'factr'"),
    ({"callbacks": [{"class_name": "ReduceLROnPlateau", "config": {"monitor": "val_mae"}}]},
     "training.callbacks.0.config.monitor: not a quantity this model reports; received 'val_mae'"),
    ({"callbacks": [{"class_name": "ReduceLROnPlateau"}],
      "training": {**IRIS_RUN["training"], "schedule": {"name": "exponential_decay", "decay_steps": 10,
                                                        "decay_rate": 0.9}}},
     "ReduceLROnPlateau sets the optimizer's learning rate, which a schedule"),
    ({"callbacks": ["TerminateOnNaN"], "training": {**IRIS_RUN["training"], "callbacks": ["TerminateOnNaN"]}},
     "callbacks: expected callbacks either at the top level or under training:, not both"),
    ({"tracking": {"tensorboard": {"histogram": 1}}},
     "tracking.tensorboard.histogram: unknown key; received 'histogram'"),
    ({"tracking": {"tensorboard": {"profile_batch": [3, 1]}}}, "tracking.tensorboard.profile_batch: expected"),
    ({"tracking": {"mlflow": {"tracking_uri": ""}}}, "tracking.mlflow.tracking_uri: expected an MLflow tracking URI"),
    ({"tracking": {"mlfow": True}}, "Did you mean 'mlflow'?"),
])
def test_bad_callbacks_and_tracking_are_one_message(tmp_path, extra, message):
    done = ktk_here("validate", _config_file(tmp_path, extra))
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr and done.stderr.count("ktk: error:") == 1


def test_validate_accepts_tracking_and_callbacks_without_tensorflow_or_mlflow(tmp_path):
    path = _config_file(tmp_path, {
        "tracking": {"tensorboard": {"histograms": 1}, "mlflow": {"tracking_uri": "sqlite:///x.db"}},
        "callbacks": [{"class_name": "ReduceLROnPlateau", "config": {"monitor": "val_accuracy", "factor": 0.5}}]})
    code = ("import sys; from toolkit import load_config, validate; "
            f"print(validate(load_config({str(path)!r}))); "
            "sys.exit(2 if 'tensorflow' in sys.modules or 'mlflow' in sys.modules else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env())
    assert done.returncode == 0, done.stderr
    assert "ReduceLROnPlateau" in done.stdout and "sqlite:///x.db" in done.stdout


def test_mlflow_missing_is_refused_naming_the_extra(monkeypatch):
    import importlib.util

    from toolkit.config import parse_config
    from toolkit.errors import UserError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(UserError) as caught:
        parse_config({**IRIS_RUN, "tracking": {"mlflow": True}})
    assert 'pip install "ktk[mlflow]"' in str(caught.value) and "tracking.mlflow" in str(caught.value)
    assert parse_config({**IRIS_RUN, "tracking": {"mlflow": False}}).tracking.mlflow_on is False


def test_switches_keep_a_section_s_settings(tmp_path):
    from toolkit.config import load_config
    from toolkit.tracking import apply_switches

    path = _config_file(tmp_path, {"tracking": {"tensorboard": {"histograms": 2}, "mlflow": {"experiment": "e"}}})
    config = load_config(path, overrides=apply_switches([], True, "sqlite:///other.db"))
    assert config.tracking.tensorboard.histograms == 2 and config.tracking.tensorboard_on
    assert config.tracking.mlflow.experiment == "e" and config.tracking.mlflow.tracking_uri == "sqlite:///other.db"
    off = load_config(_config_file(tmp_path, {"tracking": {"tensorboard": False}}, "off.yaml"),
                      overrides=apply_switches([], True, True))
    assert off.tracking.tensorboard_on and off.tracking.mlflow.tracking_uri == "sqlite:///mlflow.db"


def test_overwrite_knows_tensorboard_folders(tmp_path):
    from toolkit.sweeps.directory import foreign_entries

    sweep = tmp_path / "s"
    for folder in ("tensorboard/trial_0/train", "tensorboard/trial_0/validation", "best/tensorboard/train",
                   "best/tensorboard/train/plugins/profile/2026_01_01"):
        (sweep / folder).mkdir(parents=True)
    (sweep / ".ktk-sweep").write_text("{}")
    (sweep / "tensorboard/events.out.tfevents.1796532446.host.1.0").write_bytes(b"")
    (sweep / "tensorboard/trial_0/train/events.out.tfevents.1796532448.host.8587.0.v2").write_bytes(b"")
    (sweep / "best/tensorboard/train/plugins/profile/2026_01_01/host.xplane.pb").write_bytes(b"")
    assert foreign_entries(sweep) == []
    (sweep / "tensorboard/trial_0/notes.txt").write_text("mine")
    (sweep / "best/tensorboard/mine").mkdir()
    assert foreign_entries(sweep) == ["best/tensorboard/mine/", "tensorboard/trial_0/notes.txt"]


# ------------------------------------------------------------------------------------------ training


def _scalars(folder: Path) -> dict:
    """{tag: [(step, value)]} of the scalar summaries in one TensorBoard run folder."""
    from tensorboard.backend.event_processing import event_accumulator as ea
    from tensorboard.util import tensor_util

    acc = ea.EventAccumulator(str(folder), size_guidance={ea.TENSORS: 0, ea.SCALARS: 0})
    acc.Reload()
    out = {}
    for tag in acc.Tags()["tensors"]:
        if acc.SummaryMetadata(tag).plugin_data.plugin_name == "scalars":
            out[tag] = [(e.step, float(tensor_util.make_ndarray(e.tensor_proto))) for e in acc.Tensors(tag)]
    for tag in acc.Tags()["scalars"]:
        out[tag] = [(e.step, e.value) for e in acc.Scalars(tag)]
    return out


def _hparams(folder: Path) -> dict:
    from tensorboard.backend.event_processing import event_accumulator as ea
    from tensorboard.plugins.hparams import metadata

    acc = ea.EventAccumulator(str(folder))
    acc.Reload()
    return acc.PluginTagToContent(metadata.PLUGIN_NAME)


def _runs(uri: str, experiment: str):
    import mlflow

    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(experiment_names=[experiment])


@pytest.mark.slow
def test_run_writes_tensorboard_and_an_mlflow_run(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    path = _config_file(tmp_path, {
        "training": {**IRIS_RUN["training"], "monitor": {"gradients": True}},
        "callbacks": [{"class_name": "ReduceLROnPlateau", "config": {"monitor": "val_loss", "factor": 0.5,
                                                                      "patience": 0, "min_delta": 10.0}}],
    })
    done = ktk("run", path, "--out", tmp_path / "run", "-q", "--tensorboard", "--mlflow", uri, "--set",
               "tracking.mlflow.experiment=digits")
    assert done.returncode == 0, done.stderr
    assert "warning" not in done.stderr
    run_dir = tmp_path / "run"
    history = (run_dir / "history.csv").read_text().splitlines()
    train = _scalars(run_dir / "tensorboard" / "train")
    validation = _scalars(run_dir / "tensorboard" / "validation")
    for tag in ("epoch_loss", "epoch_accuracy"):
        assert [s for s, _ in train[tag]] == [0, 1, 2] and [s for s, _ in validation[tag]] == [0, 1, 2]
    val_loss = [float(line.split(",")[history[0].split(",").index("val_loss")]) for line in history[1:]]
    assert [v for _, v in validation["epoch_loss"]] == pytest.approx(val_loss, rel=1e-5)
    # ReduceLROnPlateau (min_delta 10: only the first epoch counts as an improvement, patience 0) halves the
    # rate after epoch 2; each epoch's scalar is the rate that epoch trained with, as in history.csv
    rates = [v for _, v in train["epoch_learning_rate"]]
    assert rates == pytest.approx([0.02, 0.02, 0.01])
    column = history[0].split(",").index("learning_rate")
    assert rates == pytest.approx([float(line.split(",")[column]) for line in history[1:]])
    assert any(tag.startswith("grad_norm/") for tag in train) and any(t.startswith("weight_norm/") for t in train)

    runs = _runs(uri, "digits")
    assert len(runs) == 1
    row = runs.iloc[0]
    assert row["status"] == "FINISHED"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert row["metrics.test.accuracy"] == pytest.approx(metrics["test"]["accuracy"])
    assert row["metrics.validation.loss"] == pytest.approx(metrics["validation"]["loss"])
    assert row["params.model.hidden"] == "[8]" and row["params.training.optimizer.name"] == "adam"
    assert row["tags.ktk.version"] and row["tags.ktk.config_path"].endswith("c.yaml")
    import mlflow

    client = mlflow.tracking.MlflowClient(uri)
    assert [m.step for m in client.get_metric_history(row["run_id"], "val_loss")] == [1, 2, 3]
    artifacts = {a.path for a in client.list_artifacts(row["run_id"])}
    assert {"config.yaml", "metrics.json", "history.csv", "model.keras"} <= artifacts
    environment = json.loads((run_dir / "environment.json").read_text())
    assert "tracking_errors" not in environment

    # synced later: nothing is uploaded twice
    done = ktk("sync", run_dir, "--mlflow", uri)
    assert done.returncode == 0, done.stderr
    assert "0 run directories uploaded, 1 already there" in done.stdout
    assert len(_runs(uri, "digits")) == 1


@pytest.mark.slow
def test_failing_trackers_never_fail_the_run(tmp_path):
    with socket.socket() as probe:  # a loopback port with nothing listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    blocked = tmp_path / "blocked"
    blocked.write_text("a file, so nothing can be created below it")
    for uri in (f"http://127.0.0.1:{port}", f"sqlite:///{blocked}/sub/mlflow.db", str(blocked / "store")):
        out = tmp_path / f"run{abs(hash(uri))}"
        done = ktk("run", _config_file(tmp_path, {}), "--out", out, "-q", "--mlflow", uri, timeout=240)
        assert done.returncode == 0, done.stderr
        assert done.stderr.count("ktk: warning:") == 1 and "MLflow" in done.stderr, done.stderr
        assert (out / "metrics.json").is_file() and (out / "model.keras").is_file()
        errors = json.loads((out / "environment.json").read_text())["tracking_errors"]
        assert len(errors) == 1 and uri in errors[0]


@pytest.mark.slow
def test_python_api_takes_callbacks(tmp_path):
    import keras

    import toolkit

    seen = []

    class Count(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(epoch)

    result = toolkit.run(toolkit.parse_config(IRIS_RUN), out_dir=tmp_path / "run", verbose=0, callbacks=[Count()])
    assert seen == [0, 1, 2] and result.metrics["epochs_run"] == 3


@pytest.mark.slow
def test_sweep_writes_hparams_and_nested_mlflow_runs(tmp_path):
    from tensorboard.plugins.hparams import api_pb2, metadata

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = {**IRIS_SWEEP, "search": {
        "tuner": "random", "objective": "val_accuracy", "max_trials": 3, "trials_per_process": "inline",
        "space": {"model.dropout": {"float": [0.0, 0.5]},
                  "training.optimizer.learning_rate": {"choice": [0.01, 0.05, 1.0e30]}}}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    sweep = tmp_path / "sweep"
    done = ktk("tune", path, "--out", sweep, "--tensorboard", "--mlflow", uri)
    assert done.returncode == 0, done.stderr
    assert "warning" not in done.stdout + done.stderr

    experiment = metadata.parse_experiment_plugin_data(_hparams(sweep / "tensorboard")[metadata.EXPERIMENT_TAG])
    assert sorted(h.name for h in experiment.hparam_infos) == ["model.dropout", "training.optimizer.learning_rate"]
    trials = [line.split(",") for line in (sweep / "trials.csv").read_text().splitlines()]
    header, rows = trials[0], trials[1:]
    assert len(rows) == 3
    for row in rows:
        trial = dict(zip(header, row))
        content = _hparams(sweep / "tensorboard" / f"trial_{trial['trial_id']}")
        start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
        end = metadata.parse_session_end_info_plugin_data(content[metadata.SESSION_END_INFO_TAG])
        assert start.hparams["model.dropout"].number_value == pytest.approx(float(trial["model.dropout"]))
        completed = trial["status"] == "completed"
        assert end.status == (api_pb2.STATUS_SUCCESS if completed else api_pb2.STATUS_FAILURE)
        if completed:
            score = _scalars(sweep / "tensorboard" / f"trial_{trial['trial_id']}")["score"]
            assert score[0][1] == pytest.approx(float(trial["score"]), rel=1e-6)
            assert "epoch_loss" in _scalars(sweep / "tensorboard" / f"trial_{trial['trial_id']}" / "validation")

    runs = _runs(uri, IRIS_SWEEP["name"])
    parents = runs[runs["tags.ktk.kind"] == "sweep"]
    assert len(parents) == 1 and parents.iloc[0]["status"] == "FINISHED"
    parent = parents.iloc[0]["run_id"]
    nested = runs[runs["tags.mlflow.parentRunId"] == parent]
    assert sorted(nested["tags.ktk.kind"]) == ["best", "trial", "trial", "trial"]
    best = nested[nested["tags.best"] == "true"]
    assert len(best) == 1 and best.iloc[0]["metrics.test.accuracy"] >= 0
    statuses = {r["tags.ktk.trial_id"]: r["status"] for _, r in nested[nested["tags.ktk.kind"] == "trial"].iterrows()}
    assert statuses == {dict(zip(header, r))["trial_id"]: "FINISHED" if dict(zip(header, r))["status"] == "completed"
                        else "FAILED" for r in rows}
    assert (sweep / "best" / "tensorboard" / "train").is_dir()

    # synced again: nothing duplicated; and --overwrite deletes the tensorboard folders ktk wrote
    done = ktk("sync", sweep, "--mlflow", uri)
    assert done.returncode == 0, done.stderr
    assert len(_runs(uri, IRIS_SWEEP["name"])) == len(runs)
    done = ktk("tune", path, "--out", sweep, "--overwrite", "--set", "search.max_trials=1")
    assert done.returncode == 0, done.stderr
    assert not (sweep / "tensorboard").exists()


@pytest.mark.slow
def test_sync_uploads_a_run_made_without_tracking_once(tmp_path):
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    assert ktk("run", _config_file(tmp_path, {}), "--out", tmp_path / "runs" / "a", "-q").returncode == 0
    first = ktk("sync", tmp_path / "runs", "--mlflow", uri)
    assert first.returncode == 0, first.stderr
    assert "1 run directories uploaded, 0 already there" in first.stdout
    second = ktk("sync", tmp_path / "runs", "--mlflow", uri)
    assert "0 run directories uploaded, 1 already there" in second.stdout
    runs = _runs(uri, IRIS_RUN["name"])
    assert len(runs) == 1 and runs.iloc[0]["tags.ktk.synced"] == "true"
    assert runs.iloc[0]["params.model.hidden"] == "[8]"


def test_compare_shows_no_tracking_columns(tmp_path):
    import toolkit
    from helpers import write_run

    write_run(tmp_path / "a", config={"name": "a", "model": {"hidden": [8]}})
    write_run(tmp_path / "b", config={"name": "b", "model": {"hidden": [16]},
                                      "tracking": {"tensorboard": {"enabled": True}, "mlflow": None}})
    table = toolkit.compare([tmp_path])
    assert "model.hidden" in table.columns
    assert not [c for c in table.columns if str(c).startswith("tracking")]


@pytest.mark.parametrize("command", ["run", "tune", "experiment"])
def test_tracking_switches_on_every_training_command(command):
    done = ktk_here(command, "--help")
    assert done.returncode == 0 and "--tensorboard" in done.stdout and "--mlflow [URI]" in done.stdout


def test_sync_of_nothing_is_one_message(tmp_path):
    (tmp_path / "empty").mkdir()
    for path in (tmp_path / "missing", tmp_path / "empty"):
        done = ktk_here("sync", path, "--mlflow", f"sqlite:///{tmp_path / 'x.db'}")
        assert done.returncode == 2 and done.stderr.count("ktk: error:") == 1, done.stderr
        assert "Traceback" not in done.stderr
    assert not (tmp_path / "x.db").exists()


@pytest.mark.slow
@pytest.mark.parametrize("provoke", ["writer_raises", "folder_is_a_file"])
def test_failing_tensorboard_never_fails_the_run(tmp_path, monkeypatch, capsys, provoke):
    import keras

    import toolkit

    out = tmp_path / "run"

    class Occupy(keras.callbacks.Callback):  # runs after ktk's callbacks are set up, before any event is written
        def on_train_begin(self, logs=None):
            import shutil

            shutil.rmtree(out / "tensorboard", ignore_errors=True)
            (out / "tensorboard").write_text("a file where TensorBoard's folder goes")

    extra = []
    if provoke == "writer_raises":
        def refuse(self, epoch, logs=None):  # as writing an event file on a full disk
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(keras.callbacks.TensorBoard, "on_epoch_end", refuse)
    else:
        extra = [Occupy()]
    config = toolkit.parse_config({**IRIS_RUN, "training": {**IRIS_RUN["training"], "epochs": 2,
                                                            "monitor": {"gradients": True}},
                                   "tracking": {"tensorboard": {"enabled": True}}})
    result = toolkit.run(config, out_dir=out, verbose=0, callbacks=extra)
    assert result.metrics["epochs_run"] == 2
    assert (out / "metrics.json").is_file() and (out / "model.keras").is_file()
    assert len((out / "history.csv").read_text().splitlines()) == 3
    errors = json.loads((out / "environment.json").read_text())["tracking_errors"]
    assert len(errors) == 1 and errors[0].startswith("TensorBoard") and str(out / "tensorboard") in errors[0]
    stderr = capsys.readouterr().err
    assert stderr.count("ktk: warning:") == 1 and "TensorBoard" in stderr, stderr
