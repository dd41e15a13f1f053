"""toolkit.run(config, data=...) with a user's own tf.data.Dataset or keras.utils.PyDataset pipelines."""

import json

import numpy as np
import pytest

from toolkit.config import parse_config
from toolkit.errors import UserError

RNG = np.random.default_rng(0)
X = RNG.normal(size=(240, 4)).astype("float32")
Y = (X[:, 0] + X[:, 1] > 0).astype("int64")
CONFIG = {"name": "user", "data": {"source": "python"}, "training": {"epochs": 2, "batch_size": 32}}


def batches(x, y, size=32):
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices((x, y)).batch(size)


@pytest.mark.slow
def test_tf_data_pipelines_train_evaluate_and_save_a_model(tmp_path):
    import toolkit
    from toolkit.deploy.predict import load_run

    config = parse_config(CONFIG)
    result = toolkit.run(config, out_dir=tmp_path / "run", verbose=0, data={
        "train": batches(X[:160], Y[:160]), "validation": batches(X[160:200], Y[160:200]),
        "test": batches(X[200:], Y[200:])})
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(metrics) >= {"train", "validation", "test"} and metrics["task"] == "binary"
    assert metrics["sizes"] == {"train": 160, "validation": 40, "test": 40} and metrics["epochs_run"] == 2
    loaded = load_run(result.run_dir)
    table = loaded.predict(X[200:])
    accuracy = np.mean(table["prediction"].astype(int).to_numpy() == Y[200:])
    assert accuracy == pytest.approx(metrics["test"]["accuracy"], abs=1e-6)


@pytest.mark.slow
def test_a_py_dataset_trains_without_a_test_split(tmp_path):
    import keras

    import toolkit

    class Batches(keras.utils.PyDataset):
        def __init__(self, x, y):
            super().__init__()
            self.x, self.y = x, y

        def __len__(self):
            return len(self.x) // 40

        def __getitem__(self, i):
            return self.x[i * 40:(i + 1) * 40], self.y[i * 40:(i + 1) * 40]

    config = parse_config({**CONFIG, "task": "multiclass", "training": {"epochs": 1, "batch_size": 32,
                                                                          "class_weight": "balanced"}})
    result = toolkit.run(config, out_dir=tmp_path / "run", verbose=0, data=(Batches(X[:200], Y[:200]),
                                                                             batches(X[200:], Y[200:])))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics == result.metrics and metrics["num_classes"] == 2
    # no test pipeline: said in metrics.json (null), not left out; the run's readers take it
    assert metrics["test"] is None and metrics["sizes"] == {"train": 200, "validation": 40, "test": None}
    from helpers import ktk_here

    for command in (("diagnose", tmp_path / "run"), ("compare", tmp_path / "run")):
        done = ktk_here(*command)
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    from toolkit.summary import format_run_summary

    assert "examples (train / validation / test): 200 / 40 / none" in format_run_summary(result)


@pytest.mark.slow
@pytest.mark.parametrize("data, message", [
    ({"train": "x", "validation": "y"}, "data['train']: not a pipeline"),
    ({"train": None}, "no train pipeline"),
    ({"training": 1}, "unknown split"),
    ((1,), "data= takes two or three pipelines"),
    ("pipelines", "data= is not a data set ktk knows"),
])
def test_bad_user_data_gets_one_message(tmp_path, data, message):
    import toolkit

    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
        toolkit.run(parse_config(CONFIG), out_dir=tmp_path / "run", verbose=0, data=data)
    assert not (tmp_path / "run").exists()


def test_source_python_says_where_its_data_comes_from(tmp_path):
    from toolkit.data import load_data

    with pytest.raises(UserError, match=r"toolkit.run\(config, data="):
        load_data(parse_config(CONFIG))
