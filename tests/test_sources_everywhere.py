"""Every command on the data sources beyond one in-memory table: an images folder (decoded into memory, or read
from its files each epoch: cache: none), a streamed csv table and a user's own pipelines. Each command works or
says no in one message (exit status 2), never with a traceback."""

import json
import sys

import numpy as np
import pytest
import yaml

from helpers import REPO, ktk, ktk_here
from toolkit.config import parse_config
from toolkit.data import load_data
from toolkit.errors import UserError

sys.path.insert(0, str(REPO / "tests"))
from test_images import write_folder  # noqa: E402
from test_streaming import shards  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:.*currentThread|getName.*:DeprecationWarning")

CNN = {"layers": [{"class_name": "Conv2D", "config": {"filters": 4, "kernel_size": 3}},
                  {"class_name": "GlobalAveragePooling2D"}]}


def images_run(folder, **data):
    return {"name": "img", "data": {"source": "images", "path": str(folder), **data}, "model": CNN,
            "training": {"epochs": 2, "batch_size": 8}}


def test_cache_auto_reads_the_files_above_its_memory_limit_and_memory_refuses_more(tmp_path, monkeypatch):
    from toolkit import data as data_module
    from toolkit.sources import images

    folder = write_folder(tmp_path / "imgs", per_class=6)
    in_memory = load_data(parse_config(images_run(folder)))
    monkeypatch.setattr(images, "MEMORY_CACHE_BYTES", 100)
    files = load_data(parse_config(images_run(folder)))
    assert isinstance(files, images.ImageFiles) and not hasattr(files, "x_train")
    assert files.split_files == in_memory.split_files and files.sizes() == in_memory.sizes()
    assert np.allclose(files.normalization["center"], in_memory.normalization["center"])
    assert np.allclose(files.normalization["scale"], in_memory.normalization["scale"])
    monkeypatch.setattr(data_module, "MAX_DATA_BYTES", 100)
    with pytest.raises(UserError, match="data.cache: the decoded images take .* expected none or auto"):
        load_data(parse_config(images_run(folder, cache="memory")))


def test_cache_none_skips_undecodable_files_as_memory_does(tmp_path):
    folder = write_folder(tmp_path / "imgs", per_class=6)
    truncated = (folder / "b" / "000.png").read_bytes()
    (folder / "b" / "truncated.png").write_bytes(truncated[: len(truncated) // 2])  # its header reads
    with pytest.warns(Warning, match="skipped 1 of 19 images"):
        files = load_data(parse_config(images_run(folder, cache="none")))
    with pytest.warns(Warning, match="skipped 1 of 19 images"):
        memory = load_data(parse_config(images_run(folder, cache="memory")))
    assert files.split_files == memory.split_files


@pytest.mark.slow
def test_cache_none_trains_with_the_split_and_metrics_of_cache_memory(tmp_path):
    import toolkit

    folder = write_folder(tmp_path / "imgs", per_class=8)
    results = {cache: toolkit.run(parse_config(images_run(folder, cache=cache, augment=["RandomFlip"])),
                                  out_dir=tmp_path / cache, verbose=0) for cache in ("memory", "none")}
    for name in ("train.txt", "validation.txt", "test.txt"):
        assert (tmp_path / "memory" / "splits" / name).read_text() == (tmp_path / "none" / "splits" / name).read_text()
    memory, none = results["memory"].metrics, results["none"].metrics
    assert memory["sizes"] == none["sizes"] == {"train": 18, "validation": 3, "test": 3}
    for split in ("train", "validation", "test"):  # same files, order and pixels: up to the statistics' rounding
        for name, value in memory[split].items():
            assert none[split][name] == pytest.approx(value, rel=1e-4, abs=1e-5), (split, name)


@pytest.mark.slow
def test_a_sweep_decodes_each_image_once(tmp_path, monkeypatch):
    """Trials and best/ reuse the sweep's decoded images (toolkit.sweeps.sweep_data.DataCache): no trial decodes."""
    from toolkit.sources import images
    from toolkit.sweeps.tuning import tune

    folder = write_folder(tmp_path / "imgs", per_class=6)
    decoded = []
    original = images.load_image
    monkeypatch.setattr(images, "load_image", lambda path, *a: decoded.append(path) or original(path, *a))
    config = parse_config({**images_run(folder), "training": {"epochs": 1, "batch_size": 8}, "search": {
        "tuner": "random", "objective": "val_accuracy", "max_trials": 3, "trials_per_process": "inline",
        "space": {"model.layers.0.config.filters": {"choice": [2, 3, 4]}}}})
    result = tune(config, out_dir=tmp_path / "sweep")
    assert result.completed == 3 and (tmp_path / "sweep" / "best" / "metrics.json").is_file()
    assert sorted(decoded) == sorted(str(p) for p in folder.rglob("*.png"))  # 18 images, each decoded once


def sweep_of(tmp_path, kind):
    """A 2-trial sweep asking for packs of 2: in-memory images pack; pipelines (image files, streamed) run alone."""
    if kind == "streamed":
        shards(tmp_path / "shards", n=200)
        base = {"name": "s", "data": {"source": "csv", "path": "shards", "target": "y", "features": ["a", "b", "c"],
                                      "shuffle_buffer": 100},
                "model": {"hidden": [4]}, "training": {"epochs": 1, "batch_size": 32}}
        space = {"model.hidden.0": {"choice": [2, 4]}}
    else:
        write_folder(tmp_path / "imgs", per_class=6)
        base = {**images_run("imgs", **({"cache": "none"} if kind == "image files" else {"augment": ["RandomFlip"]})),
                "training": {"epochs": 1, "batch_size": 8}}
        space = {"model.layers.0.config.filters": {"choice": [2, 4]}}
    file = tmp_path / "sweep.yaml"
    file.write_text(yaml.safe_dump({**base, "search": {"tuner": "grid", "objective": "val_loss",
                                                       "trials_per_process": 2, "pack": 2, "space": space}}))
    return file


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["images", "image files", "streamed"])
def test_tune_compare_diagnose_and_gradcheck_on_the_source(tmp_path, kind):
    config = sweep_of(tmp_path, kind)
    done = ktk("tune", config, "--out", tmp_path / "sweep")
    assert done.returncode == 0 and "2 trials completed, 0 failed" in done.stdout, done.stdout + done.stderr
    for command in (("compare", tmp_path / "sweep"), ("diagnose", tmp_path / "sweep" / "best")):
        done = ktk_here(*command)
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    done = ktk("gradcheck", config, "--samples", "4", "--format", "json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["status"] in ("pass", "warn") and report["samples"] == 4


def test_tune_refuses_a_config_of_user_pipelines_in_one_message(tmp_path):
    """Your own pipelines live in your process: a sweep (whose trials run in worker processes) cannot take them."""
    file = tmp_path / "sweep.yaml"
    file.write_text(yaml.safe_dump({"name": "u", "data": {"source": "python"}, "search": {
        "space": {"model.hidden.0": {"choice": [2, 4]}}}}))
    done = ktk_here("tune", file, "--out", tmp_path / "sweep")
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "your own pipelines cannot be sent" in \
        done.stderr and "toolkit.run(config, data=...)" in done.stderr, done.stderr
    assert not (tmp_path / "sweep").exists()


def _interrupting(after_epoch):
    import keras

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch + 1 == after_epoch:
                raise KeyboardInterrupt

    return Interrupt()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["augmented images", "streamed"])
def test_an_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch, kind):
    """Bit for bit: augmentation's random generators and a streamed table's per-epoch shuffle come back."""
    import toolkit

    monkeypatch.setenv("KTK_BACKUP_EVERY_EPOCH", "1")
    if kind == "streamed":
        shards(tmp_path / "shards", n=200)
        raw = {"name": "s", "data": {"source": "csv", "path": str(tmp_path / "shards"), "target": "y",
                                     "features": ["a", "b", "c"], "shuffle_buffer": 50},
               "model": {"hidden": [8], "dropout": 0.2}, "training": {"epochs": 4, "batch_size": 32}}
    else:
        folder = write_folder(tmp_path / "imgs", per_class=8)
        raw = {**images_run(folder, augment=["RandomFlip", {"class_name": "RandomBrightness",
                                                             "config": {"factor": 0.2}}]),
               "training": {"epochs": 4, "batch_size": 8}}
    config = parse_config(raw)
    whole = toolkit.run(config, out_dir=tmp_path / "whole", verbose=0)
    with pytest.raises(KeyboardInterrupt):
        toolkit.run(config, out_dir=tmp_path / "cut", verbose=0, callbacks=[_interrupting(2)])
    assert not (tmp_path / "cut" / "metrics.json").exists()
    resumed = toolkit.run(config, out_dir=tmp_path / "cut", verbose=0, resume=True)
    for result in (whole, resumed):
        result.metrics.pop("wall_time_s")
    assert resumed.metrics == whole.metrics
    assert (tmp_path / "cut" / "history.csv").read_text() == (tmp_path / "whole" / "history.csv").read_text()
