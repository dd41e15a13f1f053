"""Result files: atomic writes never leave a half-written file; class weights; best-epoch selection."""

import json
import os

import numpy as np
import pytest

from toolkit.config import parse_config
from toolkit.data import Dataset
from toolkit.errors import UserError
from toolkit.results import atomic_write_text, read_history_csv, write_history_csv, write_json
from toolkit.training import best_epoch, class_weights


def test_interrupted_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    write_json(path, {"old": 1})

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("os.replace", crash)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(path, '{"new": 2}')
    assert json.loads(path.read_text()) == {"old": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temporary file left behind


def test_json_has_no_nan(tmp_path):
    write_json(tmp_path / "m.json", {"loss": float("nan"), "x": np.float32(0.5)})
    assert json.loads((tmp_path / "m.json").read_text()) == {"loss": None, "x": 0.5}


def test_history_round_trip(tmp_path):
    write_history_csv(tmp_path / "h.csv", {"loss": [1.0, 0.5], "val_loss": [1.1, float("nan")]}, [0.1, 0.05])
    history = read_history_csv(tmp_path / "h.csv")
    assert history["epoch"] == [1, 2] and history["loss"] == [1.0, 0.5] and history["learning_rate"] == [0.1, 0.05]
    assert np.isnan(history["val_loss"][1])


def test_best_epoch():
    assert best_epoch({"val_loss": [3.0, 1.0, 2.0]}, "val_loss") == 2
    assert best_epoch({"val_accuracy": [0.1, 0.9, 0.5]}, "val_accuracy") == 2
    assert best_epoch({"val_loss": [float("nan"), 2.0, 3.0]}, "val_loss") == 2


def data_with_labels(y):
    x = np.zeros((len(y), 1), dtype=np.float32)
    y = np.asarray(y, dtype=np.int32)
    return Dataset(x, y, x, y, x, y, task="multiclass", num_classes=3, class_names=["a", "b", "c"])


def test_class_weights_balanced_and_by_name():
    data = data_with_labels([0, 0, 0, 0, 1, 1, 2, 2])
    config = parse_config({"name": "x", "data": {"source": "sklearn.iris"}, "training": {"class_weight": "balanced"}})
    assert class_weights(config, data) == pytest.approx({0: 8 / 12, 1: 8 / 6, 2: 8 / 6})
    config = parse_config({"name": "x", "data": {"source": "sklearn.iris"},
                           "training": {"class_weight": {"b": 2.0, 0: 0.5}}})
    assert class_weights(config, data) == {1: 2.0, 0: 0.5}
    config = parse_config({"name": "x", "data": {"source": "sklearn.iris"}, "training": {"class_weight": {"d": 1}}})
    with pytest.raises(UserError, match="training.class_weight.d: expected a class name or index"):
        class_weights(config, data)


def test_written_files_get_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
        os.umask(0o077)
        atomic_write_text(tmp_path / "b.json", "{}")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.json").stat().st_mode & 0o777 == 0o600
