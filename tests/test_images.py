"""The ``images`` source: a folder of class folders, split by file (recorded in splits/), normalized and augmented
inside the model, predicted from files and folders. Refusals run in one process, before TensorFlow."""

import re
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from helpers import REPO, ktk, ktk_here
from toolkit.config import parse_config
from toolkit.data import load_data
from toolkit.errors import DataWarning, UserError

sys.path.insert(0, str(REPO / "configs"))
from make_shapes import write_shapes  # noqa: E402  (the generator configs/images_cnn.yaml documents)


def write_folder(root: Path, per_class: int = 12, size=(8, 8), classes=("a", "b", "c")) -> Path:
    """`per_class` PNG images of each class: class c is bright in channel c (learnable in a few epochs)."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 60, size=(*size, 3))
            pixels[..., c % 3] += 150
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{i:03d}.png")
    return root


def images_config(path: Path, **data):
    return parse_config({"name": "images", "data": {"source": "images", "path": str(path), **data}})


def test_split_is_by_file_stratified_reproducible_and_recorded(tmp_path):
    folder = write_folder(tmp_path / "imgs", per_class=20)
    first = load_data(images_config(folder))
    again = load_data(images_config(folder))
    assert first.split_files == again.split_files
    files = [f for name in ("train", "validation", "test") for f in first.split_files[name]]
    assert sorted(files) == sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png"))
    for name in ("validation", "test"):  # 0.15 of 20 per class: 3 of each class
        assert sorted(f.split("/")[0] for f in first.split_files[name]) == ["a"] * 3 + ["b"] * 3 + ["c"] * 3
    assert first.class_names == ["a", "b", "c"] and first.task == "multiclass"
    assert first.input_shape == (8, 8, 3) and first.x_train.dtype == np.float32
    assert first.x_train.max() > 150  # raw pixels: the model normalizes them
    assert first.normalization["in_model"] and first.normalization["center"].shape == (3,)
    other_seed = load_data(parse_config({"name": "images", "seed": 7, "data": {"source": "images",
                                                                                 "path": str(folder)}}))
    assert other_seed.split_files != first.split_files


def test_image_size_and_color_mode(tmp_path):
    folder = write_folder(tmp_path / "imgs", per_class=8, size=(10, 6))
    data = load_data(images_config(folder, image_size=[4, 5], color_mode="grayscale"))
    assert data.input_shape == (4, 5, 1)


def test_unreadable_images_are_skipped_with_a_count(tmp_path):
    folder = write_folder(tmp_path / "imgs", per_class=10)
    (folder / "a" / "broken.png").write_bytes(b"not an image")
    truncated = (folder / "b" / "000.png").read_bytes()
    (folder / "b" / "truncated.png").write_bytes(truncated[: len(truncated) // 2])
    with pytest.warns(DataWarning, match=r"skipped 2 of 32 images .*cannot be read.*a/broken.png"):
        data = load_data(images_config(folder))
    used = [f for files in data.split_files.values() for f in files]
    assert len(used) == 30 and "a/broken.png" not in used and "b/truncated.png" not in used


@pytest.mark.parametrize("make, message", [
    (lambda root: [Image.new("RGB", (4, 4)).save(root / f"{i}.png") for i in range(3)],
     re.escape("has no class sub-folders: it holds 3 image file(s) directly in it (0.png, 1.png, 2.png) and no "
               "sub-folder")),
    (lambda root: (root / "only").mkdir(), "has a single class folder, 'only'"),
    (lambda root: [(root / "x").mkdir(), (root / "y").mkdir(), Image.new("RGB", (4, 4)).save(root / "x" / "1.png")],
     "class folder 'y' of"),
    (lambda root: [write_folder(root, per_class=3), Image.new("RGB", (9, 7)).save(root / "a" / "big.png")],
     "the images of .* have 2 sizes \\(height x width\\): 8x8 \\(9 images, e.g. a/000.png\\); 7x9 \\(1 images, "
     "e.g. a/big.png\\); expected data.image_size: \\[height, width\\]"),
    (lambda root: [(root / c).mkdir() or (root / c / "x.png").write_bytes(b"junk") for c in "ab"],
     "none of the 2 image files of .* can be read"),
])
def test_bad_folders_get_one_message(tmp_path, make, message):
    root = tmp_path / "imgs"
    root.mkdir()
    make(root)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"name": "c", "data": {"source": "images", "path": str(root)}}))
    done = ktk_here("validate", config)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert re.search(message, done.stderr), done.stderr


@pytest.mark.parametrize("data, message", [
    ({"source": "images", "path": "x", "augment": ["RandomFlp"]}, "Did you mean 'RandomFlip'?"),
    ({"source": "images", "path": "x", "augment": [{"class_name": "MixUp"}]}, "mixes labels too"),
    ({"source": "images", "path": "x", "image_size": [0, 3]}, "expected [height, width]"),
    ({"source": "images", "path": "x", "color_mode": "cmyk"}, "data.color_mode"),
    ({"source": "sklearn.digits", "augment": ["RandomFlip"]}, "source 'sklearn.digits' does not read augment"),
    ({"source": "csv", "path": "x.csv", "target": "y", "image_size": [8, 8]}, "does not read image_size"),
])
def test_bad_image_keys_are_refused_by_the_schema(data, message):
    with pytest.raises(UserError) as error:
        parse_config({"name": "c", "data": data})
    assert message in str(error.value)


def test_new_data_keys_stay_out_of_config_yaml_at_their_defaults():
    data = parse_config({"name": "c", "data": {"source": "sklearn.iris"}}).to_dict()["data"]
    assert not {"image_size", "color_mode", "cache", "augment", "stream", "shuffle_buffer"} & set(data)
    assert "key" not in data["split"]


@pytest.mark.slow
def test_cnn_with_augmentation_trains_saves_splits_and_predicts_files(tmp_path):
    folder = write_folder(tmp_path / "imgs", per_class=12)
    config = tmp_path / "cnn.yaml"
    config.write_text(yaml.safe_dump({
        "name": "cnn", "data": {"source": "images", "path": "imgs", "augment": [
            {"class_name": "RandomFlip", "config": {"mode": "horizontal"}},
            {"class_name": "RandomBrightness", "config": {"factor": 0.1}}]},
        "model": {"layers": [{"class_name": "Conv2D", "config": {"filters": 4, "kernel_size": 3}},
                             {"class_name": "GlobalAveragePooling2D"}]},
        "training": {"epochs": 2, "batch_size": 8}}))
    done = ktk("run", config, "--out", tmp_path / "run", "-q")
    assert done.returncode == 0, done.stderr
    run = tmp_path / "run"
    lists = {name: (run / "splits" / f"{name}.txt").read_text().splitlines() for name in ("train", "validation",
                                                                                            "test")}
    assert sum(map(len, lists.values())) == 36 and not set(lists["train"]) & set(lists["test"])
    out = tmp_path / "test.csv"
    done = ktk("predict", run, *[folder / f for f in lists["test"]], "--output", out)
    assert done.returncode == 0, done.stderr
    import json

    import pandas as pd

    table = pd.read_csv(out)
    assert list(table.columns[:3]) == ["row", "file", "prediction"] and len(table) == len(lists["test"])
    # The saved model (augmentation inside, off at inference) gives the test accuracy ktk measured
    truth = [Path(f).parent.name for f in table["file"]]
    accuracy = float(np.mean(table["prediction"].to_numpy() == np.asarray(truth)))
    metrics = json.loads((run / "metrics.json").read_text())
    assert accuracy == pytest.approx(metrics["test"]["accuracy"], abs=1e-6)
    done = ktk("predict", run, folder, "--evaluate", "--output", tmp_path / "all.csv")
    assert done.returncode == 0 and "evaluated on 36 rows" in done.stderr, done.stderr


@pytest.mark.slow
def test_the_configs_example_trains_a_cnn_on_a_generated_folder(tmp_path):
    write_shapes(tmp_path / "data" / "shapes", per_class=10)
    config = tmp_path / "images_cnn.yaml"
    config.write_text((REPO / "configs" / "images_cnn.yaml").read_text())
    done = ktk("run", config, "--out", tmp_path / "run", "--set", "training.epochs=2", "-q")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "run" / "splits" / "test.txt").read_text().count("\n") == 6  # 0.15 of 10, per class


def test_predict_refuses_images_for_a_table_run_and_unreadable_files(tmp_path):
    from toolkit.deploy.inputs import image_chunks
    from toolkit.schema import InputSchema, Labels

    labels = Labels(task="binary", inputs=InputSchema("array", shape=(4,)), class_names=["a", "b"])
    image = tmp_path / "x.png"
    Image.new("RGB", (4, 4)).save(image)
    with pytest.raises(UserError, match="this run's model does not take images"):
        next(image_chunks([image], labels))
    labels = Labels(task="binary", inputs=InputSchema("array", shape=(4, 4, 3)), class_names=["a", "b"])
    (tmp_path / "bad.png").write_bytes(b"junk")
    with pytest.raises(UserError, match="cannot read the image"):
        next(image_chunks([tmp_path / "bad.png"], labels))
    (tmp_path / "bad.png").unlink()
    assert next(image_chunks([tmp_path], labels)).features.shape == (1, 4, 4, 3)
