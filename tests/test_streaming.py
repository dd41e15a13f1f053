"""Streamed csv/parquet tables: files, globs and folders of shards read in batches; the hash split; statistics of
one pass over the training rows; refusals of shards with other columns and of empty globs."""

import re

import numpy as np
import pandas as pd
import pytest
import yaml

from helpers import ktk, ktk_here
from toolkit.config import parse_config
from toolkit.data import load_data
from toolkit.errors import UserError
from toolkit.sources.streaming import split_of

RNG = np.random.default_rng(0)


def frame(n, seed=0):
    rng = np.random.default_rng(seed)
    table = pd.DataFrame({"id": np.arange(seed * n, (seed + 1) * n), "a": rng.normal(size=n),
                          "b": rng.normal(size=n) * 10 + 5, "c": rng.choice(["x", "y", "z"], n)})
    table["y"] = ((table.a + (table.c == "x")) > 0.5).astype(int)
    return table


def shards(folder, kind="csv", count=3, n=400):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        part = frame(n, i)
        if kind == "csv":
            part.to_csv(folder / f"part-{i}.csv", index=False)
        else:
            part.to_parquet(folder / f"part-{i}.parquet")
    return folder


def config(path, **data):
    return parse_config({"name": "s", "data": {"source": data.pop("source", "csv"), "path": str(path),
                                               "target": "y", "features": ["a", "b", "c"], **data}})


def test_the_hash_split_is_stable_and_follows_the_fractions():
    index = np.arange(100_000, dtype=np.uint64)
    first = split_of(index, 42, (0.7, 0.15, 0.15))
    assert np.array_equal(first, split_of(index, 42, (0.7, 0.15, 0.15)))
    assert np.bincount(first) / len(first) == pytest.approx([0.7, 0.15, 0.15], abs=0.01)
    assert not np.array_equal(first, split_of(index, 43, (0.7, 0.15, 0.15)))


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_a_glob_of_shards_streams_with_training_split_statistics(tmp_path, kind):
    folder = shards(tmp_path / "shards", kind)
    data = load_data(config(folder / f"part-*.{kind}", source=kind))
    assert data.kind == "streamed" and data.task == "binary" and data.class_names == ["0", "1"]
    assert sum(data.sizes().values()) == 1200 and data.inputs.kind == "columns"
    whole = pd.concat([frame(400, i) for i in range(3)], ignore_index=True)
    train = whole[split_of(np.arange(1200, dtype=np.uint64), 42, (0.7, 0.15, 0.15)) == 0]
    assert data.sizes()["train"] == len(train)
    assert data.normalization["center"][:2] == pytest.approx([train.a.mean(), train.b.mean()])
    assert data.normalization["scale"][:2] == pytest.approx([train.a.std(ddof=0), train.b.std(ddof=0)])
    shares = train.c.value_counts(normalize=True).sort_index()
    assert data.normalization["center"][2:] == pytest.approx(shares.to_numpy())
    assert [c.name for c in data.inputs.columns] == ["a", "b", "c"]
    assert data.inputs.columns[2].categories == ("x", "y", "z")


def test_a_folder_streams_automatically_and_a_key_column_keeps_rows_in_their_split(tmp_path):
    folder = shards(tmp_path / "shards")
    by_key = load_data(config(folder, split={"key": "id"}))
    assert by_key.kind == "streamed"
    reordered = shards(tmp_path / "again")
    for file in sorted(reordered.iterdir()):  # the same rows, in another order
        pd.read_csv(file).iloc[::-1].to_csv(file, index=False)
    assert load_data(config(reordered, split={"key": "id"})).sizes() == by_key.sizes()


def test_one_small_file_stays_in_memory_unless_streamed(tmp_path):
    frame(300).to_csv(tmp_path / "t.csv", index=False)
    assert not hasattr(load_data(config(tmp_path / "t.csv")), "kind")
    assert load_data(config(tmp_path / "t.csv", stream=True)).kind == "streamed"


@pytest.mark.parametrize("make, path, message", [
    (lambda d: shards(d / "s"), "s/none-*.csv", "data.path: no file matches the glob"),
    (lambda d: (d / "e").mkdir(), "e", "data.path: the folder holds no csv files"),
    (lambda d: [shards(d / "s", count=2), frame(10).drop(columns="b").to_csv(d / "s" / "part-9.csv", index=False)],
     "s/part-*.csv", "the shard .*part-9.csv has other columns than .*part-0.csv \\(it lacks \\['b'\\]\\)"),
    (lambda d: [shards(d / "s", count=1), frame(10).assign(a="word").to_csv(d / "s" / "part-1.csv", index=False)],
     "s", "non-numeric value in numeric column 'a'"),
    (lambda d: shards(d / "s", count=1), "s", None),
])
def test_bad_shards_get_one_message(tmp_path, make, path, message):
    make(tmp_path)
    data = {"source": "csv", "path": path, "target": "y", "features": ["a", "b", "c"], "stream": True}
    if message is None:  # keys a streamed table does not read
        data["split"] = {"column": "c"}
        message = "data.split.column: a streamed table splits its rows by hash"
    file = tmp_path / "c.yaml"
    file.write_text(yaml.safe_dump({"name": "c", "data": data}))
    done = ktk_here("validate", file)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert re.search(message, done.stderr), done.stderr


def test_stream_keys_belong_to_tables():
    with pytest.raises(UserError, match="does not read stream"):
        parse_config({"name": "c", "data": {"source": "sklearn.iris", "stream": True}})


@pytest.mark.slow
def test_a_streamed_run_trains_and_its_model_predicts_raw_rows(tmp_path):
    folder = shards(tmp_path / "shards", "parquet")
    file = tmp_path / "c.yaml"
    file.write_text(yaml.safe_dump({"name": "s", "data": {"source": "parquet", "path": "shards", "target": "y",
                                                          "features": ["a", "b", "c"], "shuffle_buffer": 100},
                                    "model": {"hidden": [8]}, "training": {"epochs": 2, "batch_size": 64}}))
    done = ktk("run", file, "--out", tmp_path / "run", "-q")
    assert done.returncode == 0, done.stderr
    done = ktk("predict", tmp_path / "run", folder / "part-0.parquet", "--evaluate", "--output", tmp_path / "p.csv")
    assert done.returncode == 0 and "evaluated on 400 rows" in done.stderr, done.stderr


@pytest.mark.slow
def test_shards_are_interleaved_in_an_order_of_seed_and_epoch(tmp_path):
    """With a shuffle buffer of one row, only the shards' order can change an epoch's order: it does, per epoch,
    reproducibly, and every training row is read once; the offsets keep each row in its split."""
    import tensorflow as tf

    table = load_data(config(shards(tmp_path / "s", count=5, n=300), shuffle_buffer=1))
    assert table.offsets == [0, 300, 600, 900, 1200]
    epoch = tf.Variable(0, dtype=tf.int64)

    def first_feature(dataset):
        return np.concatenate([x[:, 0] for x, _ in dataset.as_numpy_iterator()])

    first, again = first_feature(table.train(64, 1, epoch)), first_feature(table.train(64, 1, epoch))
    epoch.assign(1)
    second = first_feature(table.train(64, 1, epoch))
    in_order = first_feature(table.split("train", 64))
    assert np.array_equal(first, again) and not np.array_equal(first, second)
    assert np.array_equal(np.sort(first), np.sort(in_order)) and len(first) == table.sizes()["train"]
