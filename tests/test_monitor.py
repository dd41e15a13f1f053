"""The gradient-flow monitor: gradients.csv's content, its correctness, and that it changes no training."""

import csv
import subprocess
import sys

import numpy as np
import pytest

from toolkit.config import parse_config
from toolkit.results import GRADIENTS_FILE, HISTORY_FILE, MODEL_FILE

from helpers import REPO, subprocess_env

RAW = {"name": "mon", "seed": 3,
       "data": {"source": "synthetic.circles", "options": {"n_samples": 200, "noise": 0.1, "factor": 0.5}},
       "model": {"hidden": [6, 4], "batchnorm": True, "dropout": 0.2, "regularizer": {"l2": 0.01}},
       "training": {"epochs": 3, "batch_size": 32, "monitor": {"gradients": True},
                    "restore_best_weights": False}}  # the saved model holds the last epoch's weights


def read_rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_monitored_run_writes_gradients_csv_and_trains_exactly_as_unmonitored(tmp_path):
    import keras

    from toolkit.results import read_history_csv
    from toolkit.runs import run

    config = parse_config(RAW)
    monitored = run(config, out_dir=tmp_path / "on", verbose=0)
    path = monitored.run_dir / GRADIENTS_FILE
    with open(path) as handle:
        assert handle.readline().strip() == "epoch,layer,grad_norm,weight_norm"
    rows = read_rows(path)
    layers = ["dense_1", "batchnorm_1", "dense_2", "batchnorm_2", "output"]
    assert [(int(r["epoch"]), r["layer"]) for r in rows] == [(e, layer) for e in range(4) for layer in layers]
    assert all(float(r["grad_norm"]) > 0 and np.isfinite(float(r["weight_norm"])) for r in rows)

    # The last epoch's weight norms are those of the saved model (restore_best_weights: false).
    saved = keras.models.load_model(monitored.run_dir / MODEL_FILE)  # raw inputs in: the trained network inside
    model = [layer for layer in saved.layers if isinstance(layer, keras.Model)][-1]
    for row in rows[-len(layers):]:
        weights = model.get_layer(row["layer"]).trainable_weights
        expected = np.sqrt(sum(float(np.sum(np.square(w.numpy()))) for w in weights))
        assert float(row["weight_norm"]) == pytest.approx(expected, rel=1e-6)

    # Measuring gradients moves nothing: batch-norm statistics, dropout masks and weights are as without it.
    plain = run(config.with_values({"training.monitor.gradients": False}), out_dir=tmp_path / "off", verbose=0)
    assert not (plain.run_dir / GRADIENTS_FILE).exists()
    assert read_history_csv(monitored.run_dir / HISTORY_FILE) == read_history_csv(plain.run_dir / HISTORY_FILE)


def test_recorded_norms_are_the_gradient_of_the_full_cost(tmp_path):
    import keras
    import tensorflow as tf

    from toolkit.data import load_data
    from toolkit.models import build_model
    from toolkit.lessons.monitor import PROBE_EXAMPLES, gradient_monitor
    from toolkit.training import compile_model

    config = parse_config({**RAW, "model": {"hidden": [5], "regularizer": {"l2": 0.1}}})
    data = load_data(config)
    keras.utils.set_random_seed(0)
    model = build_model(config, data)
    compile_model(model, config, data)
    callback = gradient_monitor(config, data, tmp_path / GRADIENTS_FILE)
    callback.set_model(model)
    callback.on_train_begin()
    rows = read_rows(tmp_path / GRADIENTS_FILE)
    assert [r["layer"] for r in rows] == ["dense_1", "output"] and {r["epoch"] for r in rows} == {"0"}

    x, y = data.x_train[:PROBE_EXAMPLES], data.y_train[:PROBE_EXAMPLES]
    with tf.GradientTape() as tape:
        y_pred = model(x, training=True)
        cost = keras.losses.binary_crossentropy(y[:, None], y_pred)
        cost = tf.reduce_mean(cost) + tf.add_n(model.losses)
    grads = tape.gradient(cost, model.trainable_variables)
    for row, layer in zip(rows, ["dense_1", "output"]):
        variables = model.get_layer(layer).trainable_variables
        expected = np.sqrt(sum(float(np.sum(np.square(g.numpy()))) for g, v in zip(grads, model.trainable_variables)
                               if any(v is w for w in variables)))
        assert float(row["grad_norm"]) == pytest.approx(expected, rel=1e-5)

    callback.on_epoch_end(0)
    assert [r["epoch"] for r in read_rows(tmp_path / GRADIENTS_FILE)] == ["0", "0", "1", "1"]


def test_importing_the_monitor_does_not_import_tensorflow():
    code = "import sys, toolkit.lessons.monitor; print('tensorflow' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(), cwd=REPO)
    assert done.stdout.strip() == "False", done.stderr
