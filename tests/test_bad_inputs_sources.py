"""Data sources attacked: files changed after the pass before training, and the images and streamed-table inputs
that must each end in one message (never a TensorFlow traceback)."""

import sys

import numpy as np
import pandas as pd
import pytest

from helpers import REPO
from toolkit.config import parse_config
from toolkit.errors import UserError

sys.path.insert(0, str(REPO / "tests"))
from test_images import write_folder  # noqa: E402
from test_streaming import shards  # noqa: E402


def _after_first_epoch(action):
    import keras

    class Change(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                action()
    return Change()


def _run(tmp_path, data, change):
    from toolkit import run

    config = parse_config({"name": "changed", "data": data, "model": {"hidden": [4]},
                           "training": {"epochs": 3, "batch_size": 32}})
    with pytest.raises(UserError) as caught:
        run(config, out_dir=tmp_path / "run", verbose=0, callbacks=[_after_first_epoch(change)])
    return str(caught.value)


@pytest.mark.slow
@pytest.mark.parametrize("change", ["delete", "truncate"])
def test_a_shard_changed_during_training_is_one_message_naming_it(tmp_path, change):
    folder = shards(tmp_path / "shards", count=2, n=200)
    shard = folder / "part-1.csv"

    def act():
        if change == "delete":
            shard.unlink()
        else:
            shard.write_text(shard.read_text().splitlines()[0] + "\n1,0.5,3,x,1\n")

    message = _run(tmp_path, {"source": "csv", "path": str(folder), "target": "y", "features": ["a", "b", "c"]}, act)
    assert str(shard) in message and "changed after the pass before training" in message, message
    assert "Traceback" not in message and "tensorflow" not in message.lower()


@pytest.mark.slow
def test_an_image_deleted_during_training_is_one_message_naming_it(tmp_path):
    folder = write_folder(tmp_path / "imgs", per_class=6)
    gone = []

    def act():  # every image of a class: some are in the training split, read again next epoch
        for path in sorted((folder / "a").iterdir()):
            path.unlink()
            gone.append(str(path))

    message = _run(tmp_path, {"source": "images", "path": str(folder), "cache": "none"}, act)
    assert "can no longer be read" in message and any(path in message for path in gone), message
    assert "Traceback" not in message
