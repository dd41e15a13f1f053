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


def _pipelines(case):
    import keras
    import tensorflow as tf

    x = np.random.default_rng(0).random((64, 3)).astype("float32")
    y = (x[:, 0] > 0.5).astype("int64")

    def batches(x, y):
        return tf.data.Dataset.from_tensor_slices((x, y)).batch(16)

    class Endless(keras.utils.PyDataset):
        num_batches = None

        def __getitem__(self, i):
            return x[:16], y[:16]

    class Huge(keras.utils.PyDataset):
        def __len__(self):
            return 10 ** 12

        def __getitem__(self, i):
            return x[:16], y[:16]

    def broken():
        yield x[:16], y[:16]
        raise ValueError("the user's generator broke")

    spec = (tf.TensorSpec((None, 3)), tf.TensorSpec((None,), tf.int64))
    return {
        "repeat": lambda: (batches(x, y).repeat(), batches(x, y)),
        "endless": lambda: (batches(x, y), Endless()),
        "huge": lambda: (Huge(), batches(x, y)),
        "labels": lambda: (batches(x, y), batches(x, np.stack([y, y], 1))),
        "text labels": lambda: (batches(x, y.astype(str)), batches(x, y)),
        "text inputs": lambda: (batches(x.astype(str), y), batches(x, y)),
        "nan labels": lambda: (batches(x, x[:, 0] * np.nan), batches(x, x[:, 0])),
        "broken": lambda: (tf.data.Dataset.from_generator(broken, output_signature=spec), batches(x, y)),
    }[case]()


@pytest.mark.slow  # (imports TensorFlow; trains nothing)
@pytest.mark.parametrize("case, message", [
    ("repeat", r"data\['train'\]: the train pipeline never ends"),
    ("endless", r"data\['validation'\]: the validation pipeline never ends"),
    ("huge", r"data\['train'\]: the train pipeline has more batches than ktk counts"),
    ("labels", r"data\['validation'\]: the validation batches have labels of shape \(2,\) and the train batches \(\)"),
    ("text labels", r"data\['train'\]: the train labels are not numbers"),
    ("text inputs", r"data\['train'\]: the inputs are not numbers"),
    ("nan labels", r"data\['train'\]: the train labels hold missing or infinite values"),
    ("broken", r"data\['train'\]: reading the train pipeline failed \(ValueError: the user's generator broke\)\.$"),
])
def test_user_pipelines_of_any_shape_are_one_message_and_never_hang(tmp_path, case, message):
    from toolkit import run

    config = parse_config({"name": "p", "data": {"source": "python"}, "model": {"hidden": [4]},
                           "training": {"epochs": 1}})
    with pytest.raises(UserError, match=message):
        run(config, data=_pipelines(case), out_dir=tmp_path / "run", verbose=0)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("augment, message", [
    ({"class_name": "RandomFlip", "config": {"modee": "horizontal"}},
     "data.augment.0.config.modee: expected an argument of RandomFlip; received 'modee'. Valid choices:"),
    ({"class_name": "RandomRotation", "config": {"factor": "abc"}},
     "data.augment.0.config.factor: expected a number, or [lower, upper]: two numbers; received 'abc'."),
    ({"class_name": "RandomFlip", "config": {"mode": 3}},
     "data.augment.0.config.mode: expected a string (as Keras' default, 'horizontal_and_vertical'); received 3."),
    ({"class_name": "RandomRotation", "config": {}},
     "data.augment.0.config: missing argument of RandomRotation; expected data.augment.0.config.factor."),
    ({"class_name": "RandomZoom", "config": {"height_factor": 0.2, "name": "z"}},
     "data.augment.0.config.name: ktk names each augmentation layer itself"),
])
def test_augment_arguments_are_refused_by_validate_and_by_run_before_the_images_load(tmp_path, augment, message):
    from helpers import ktk_here

    path = tmp_path / "c.yaml"
    path.write_text(yaml_dump({"name": "aug", "data": {"source": "images", "path": str(tmp_path / "none"),
                                                       "image_size": [8, 8], "augment": [augment]}}))
    for command in ("validate", "run"):  # no image folder: the argument is said first, without TensorFlow
        result = ktk_here(command, str(path))
        assert result.returncode == 2 and message in result.stderr, (command, result.stderr)
        assert "Traceback" not in result.stderr and result.stderr.count("\n") <= 2, result.stderr


def test_valid_augment_arguments_pass_the_check():
    from toolkit.keras_names import check_augment

    config = parse_config({"name": "aug", "data": {"source": "images", "path": "x", "augment": [
        "RandomFlip", {"class_name": "RandomZoom", "config": {"height_factor": [-0.2, 0.3], "fill_mode": "nearest",
                                                               "seed": 3}},
        {"class_name": "RandomContrast", "config": {"factor": 0.2, "value_range": [0, 255]}},
        {"class_name": "AugMix", "config": {"all_ops": False, "alpha": 1}}]}})
    assert check_augment(config) is True


def yaml_dump(data):
    import yaml

    return yaml.safe_dump(data)


def _png_header(path, width, height):
    """A PNG whose header declares `width` x `height` pixels (no pixel data: Pillow reads the header only)."""
    import struct
    import zlib

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IEND", b""))


@pytest.mark.parametrize("pixels", [(10_000, 10_000), (20_000, 20_000)])  # Pillow warns, then refuses
def test_an_image_too_large_is_skipped_saying_so_and_pillow_global_is_left_alone(tmp_path, pixels, recwarn):
    from PIL import Image

    from toolkit.data import load_data
    from toolkit.errors import DataWarning

    folder = write_folder(tmp_path / "imgs", per_class=4)
    _png_header(folder / "a" / "bomb.png", *pixels)
    (folder / "b" / "junk.png").write_bytes(b"junk")
    before = Image.MAX_IMAGE_PIXELS
    load_data(parse_config({"name": "bomb", "data": {"source": "images", "path": str(folder)}}))
    assert Image.MAX_IMAGE_PIXELS == before
    shown = [str(w.message) for w in recwarn.list]
    assert [w for w in shown if "DecompressionBomb" in w or "decompression bomb" in w] == [], shown
    skipped = [w for w in recwarn.list if issubclass(w.category, DataWarning)]
    assert len(skipped) == 1 and ("skipped 2 of 14 images" in str(skipped[0].message)
                                  and "1 too large: more than 89,478,485 pixels: a/bomb.png" in str(skipped[0].message)
                                  and "1 damaged, truncated or not images: b/junk.png" in str(skipped[0].message))


def test_an_image_file_too_large_is_refused_from_its_header(tmp_path):
    from toolkit.sources.images import ImageTooLarge, load_image

    _png_header(tmp_path / "bomb.png", 10_000, 10_000)
    with pytest.raises(ImageTooLarge, match="10000x10000 pixels, too large"):
        load_image(str(tmp_path / "bomb.png"), (8, 8, 3), "rgb")


def test_predict_image_inputs_mixed_folder_refused_one_class_folder_read(tmp_path):
    from PIL import Image

    from toolkit.deploy.inputs import image_files

    mixed = write_folder(tmp_path / "mixed", per_class=1)
    Image.new("RGB", (8, 8)).save(mixed / "loose.png")
    with pytest.raises(UserError, match=r"holds class folders and 1 image file\(s\) beside them \(loose.png\); "
                                        r"expected either class folders"):
        image_files([mixed], "INPUT")
    one = write_folder(tmp_path / "one", per_class=2, classes=("b",))  # evaluating on one class is legitimate
    files, classes = image_files([one], "INPUT")
    assert [f.name for f in files] == ["000.png", "001.png"] and classes == ["b", "b"]


def test_evaluate_class_folders_are_names_never_class_indexes():
    from types import SimpleNamespace

    from toolkit.deploy.predict import _encode_target

    labels = SimpleNamespace(task="multiclass", class_names=["a", "b", "c"], target="class folder")
    rows = np.arange(2)
    assert _encode_target(np.array(["0", "2"], dtype=object), labels, rows).tolist() == [0, 2]  # a column of indexes
    with pytest.raises(UserError, match="'0' is not a class of this model.*Valid choices: a, b, c"):
        _encode_target(np.array(["0", "a"], dtype=object), labels, rows, by_index=False)  # a folder named 0


def test_an_image_that_is_not_one_is_said_in_words(tmp_path):
    from toolkit.sources.images import image_problem, load_image

    (tmp_path / "x.png").write_bytes(b"junk")
    with pytest.raises(Exception) as caught:
        load_image(str(tmp_path / "x.png"), (8, 8, 3), "rgb")
    assert image_problem(caught.value) == "not an image Pillow can read"


def _stream_config(path, **data):
    return parse_config({"name": "s", "data": {"source": "csv", "path": str(path), "target": "y",
                                               "features": ["a", "b", "c"], "stream": True, **data}})


def test_a_file_named_with_glob_characters_is_that_file(tmp_path):
    from toolkit.data import load_data

    folder = shards(tmp_path / "lit", count=1, n=100)
    literal = folder / "data[1].csv"
    (folder / "part-0.csv").rename(literal)
    data = load_data(_stream_config(literal))
    assert sum(data.counts.values()) == 100 and data.files == [str(literal)]


def test_a_glob_naming_too_many_files_is_refused_while_matching(tmp_path, monkeypatch):
    from toolkit.data import load_data
    from toolkit.sources import streaming

    monkeypatch.setattr(streaming, "MAX_SHARDS", 2)
    folder = shards(tmp_path / "many", count=3, n=20)
    for path in (str(folder / "*.csv"), str(folder)):
        with pytest.raises(UserError, match="data.path: the path names more than 2 files; expected at most 2 shards"):
            load_data(_stream_config(path))


def test_a_missing_split_key_value_is_refused_not_hashed_into_one_split(tmp_path):
    from toolkit.data import load_data

    folder = shards(tmp_path / "nan", count=2, n=50)
    part = pd.read_csv(folder / "part-1.csv")
    part["id"] = [f"r{i}" for i in range(len(part))]
    part.loc[7, "id"] = None
    first = pd.read_csv(folder / "part-0.csv")
    first["id"] = [f"q{i}" for i in range(len(first))]
    first.to_csv(folder / "part-0.csv", index=False)
    part.to_csv(folder / "part-1.csv", index=False)
    with pytest.raises(UserError, match=r"data.split.key: a row of .*part-1.csv \(row 57, counted from 0 over the "
                                        r"files\) has no value in the split key column 'id'"):
        load_data(_stream_config(folder, split={"key": "id"}))
