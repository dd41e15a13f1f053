"""One rule for which direction is better: toolkit.metrics agrees with Keras, and runs agree with it."""

import inspect
import json
import math

import pytest

from toolkit import metrics
from toolkit.cli import main
from toolkit.results import read_history_csv


@pytest.mark.parametrize("name, direction", [
    ("val_loss", "min"), ("loss", "min"), ("val_accuracy", "max"), ("val_precision", "max"), ("val_auc", "max"),
    ("val_auc_1", "max"), ("validation.accuracy", "max"), ("train.loss", "min"), ("mae", "min"),
    ("val_mape", "min"), ("val_r2_score", "max"), ("val_cosine_similarity", "max"), ("val_false_negatives", "min"),
    ("val_true_positives", "max"), ("val_recall", "max"), ("my_custom_error", "min"), ("val_mean_iou", "max"),
])
def test_direction_of_names(name, direction):
    assert metrics.direction_of(name) == direction


def test_unknown_names_have_no_direction_and_auto_defaults_to_min():
    assert metrics.direction_of("val_widgets") is None
    assert metrics.resolve_mode("val_widgets") == "min"
    assert metrics.resolve_mode("val_precision", "min") == "min"


def test_best_index_keeps_the_first_of_equals_and_skips_nan():
    assert metrics.best_index([0.5, 0.2, 0.2, math.nan], "min") == 1
    assert metrics.best_index([math.nan, 0.1, 0.9, 0.9], "max") == 2
    assert metrics.best_index([], "max") == 0


def test_directions_match_every_keras_metric_class():
    import keras

    checked = 0
    for _, cls in inspect.getmembers(keras.metrics, inspect.isclass):
        if not issubclass(cls, keras.metrics.Metric):
            continue
        for kwargs in ({}, {"thresholds": 0.5}, {"num_classes": 2}, {"num_classes": 2, "target_class_ids": [0]},
                       {"target_class_ids": [0]}):
            try:
                metric = cls(**kwargs)
                break
            except (TypeError, ValueError):
                continue
        else:
            continue
        keras_direction = getattr(metric, "_direction", None)
        if keras_direction is None:
            continue
        checked += 1
        expected = "max" if keras_direction == "up" else "min"
        assert metrics.direction_of(metric.name) == expected, metric.name
        assert metrics.direction_of("val_" + metric.name) == expected, metric.name
    assert checked >= 30


BINARY = """\
name: es-{monitor}
seed: 5
data: {{source: sklearn.breast_cancer}}
model: {{hidden: [8]}}
training:
  optimizer: {{name: sgd, learning_rate: 0.3}}
  metrics: [accuracy, precision, auc]
  batch_size: 32
  epochs: 8
  early_stopping: {{monitor: {monitor}, patience: 8}}
"""


@pytest.mark.slow
@pytest.mark.parametrize("monitor", ["val_precision", "val_auc"])
def test_best_epoch_restored_weights_and_metrics_agree(monitor, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(BINARY.format(monitor=monitor))
    out = tmp_path / "run"
    assert main(["run", str(config), "--out", str(out), "-q"]) == 0
    result = json.loads((out / "metrics.json").read_text())
    history = read_history_csv(out / "history.csv")
    values = history[monitor]
    expected = metrics.best_index(values, "max") + 1
    assert result["best_epoch"] == expected
    assert result["monitor"] == monitor
    # the restored weights are that epoch's: evaluating them on validation gives the epoch's value
    assert result["validation"][monitor[len("val_"):]] == pytest.approx(values[expected - 1], abs=1e-5)
