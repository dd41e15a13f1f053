"""Result files: atomic writes never leave a half-written file nor replace a link, FIFO or device; readers refuse
damaged files with OSError/ValueError (never hang); class weights; best-epoch selection."""

import errno
import json
import math
import os
import re
import stat

import numpy as np
import pytest

from toolkit.config import parse_config
from toolkit.data import Dataset
from toolkit.errors import UserError
from toolkit.results import (atomic_write_bytes, atomic_write_text, parse_cell, read_history_csv, read_json,
                             read_small_file, save_output, write_history_csv, write_json)
from toolkit.sweeps.records import trial_history_file
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


# ------------------------------------------------------------------- writes that never replace what is not a file


def test_a_regular_file_is_replaced_keeping_its_mode_and_a_link_is_followed(tmp_path):
    target = tmp_path / "target.csv"
    target.write_text("old")
    os.chmod(target, 0o640)
    atomic_write_text(target, "new")
    assert target.read_text() == "new" and stat.S_IMODE(target.stat().st_mode) == 0o640
    link = tmp_path / "link.csv"
    link.symlink_to("target.csv")  # relative, as users make them
    atomic_write_bytes(link, b"through")
    assert link.is_symlink() and target.read_bytes() == b"through"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.csv", "target.csv"]


def test_what_is_not_a_file_is_written_through_or_refused(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(OSError) as error:
        atomic_write_text(fifo, "x")
    assert error.value.errno == errno.ENXIO and error.value.strerror == "a FIFO that no process is reading"
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        atomic_write_text(fifo, "through the fifo")
        assert os.read(reader, 100) == b"through the fifo"
    finally:
        os.close(reader)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    with pytest.raises(IsADirectoryError):
        atomic_write_text(tmp_path, "x")
    atomic_write_text("/dev/null", "gone")
    assert stat.S_ISCHR(os.lstat("/dev/null").st_mode)


def test_save_output_says_what_is_wrong_as_a_user_error(tmp_path):
    assert save_output(tmp_path / "t.txt", "x", where="--output") == tmp_path / "t.txt"
    with pytest.raises(UserError) as error:
        save_output(tmp_path / "no" / "t.txt", "x", where="--output")
    assert str(error.value) == (f"--output: cannot write the file: {tmp_path / 'no'} does not exist; "
                                f"received '{tmp_path / 'no' / 't.txt'}'.")
    with pytest.raises(UserError, match=r"^--out: cannot write the file \(No space left on device\); "):
        save_output("/dev/full", b"x", where="--out")


# -------------------------------------------------------------------------- readers of damaged files


def test_read_json_reads_nan_as_missing_and_refuses_what_is_not_json(tmp_path):
    path = tmp_path / "m.json"
    path.write_text('{"a": NaN, "b": [Infinity, -Infinity, 1e999, 1.5]}')
    assert read_json(path) == {"a": None, "b": [None, None, None, 1.5]}
    for text, message in (("[" * 100_000 + "]" * 100_000, "nested too deeply"), ("", "Expecting value"),
                          (b"\xff\xfe", "can't decode")):
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        with pytest.raises(ValueError, match=message):
            read_json(path)
    os.mkfifo(tmp_path / "fifo.json")
    for other, strerror in ((tmp_path / "fifo.json", "a FIFO, not a file"), (tmp_path, "a directory, not a file"),
                            ("/dev/zero", "a character device, not a file")):
        with pytest.raises(OSError) as error:
            read_json(other)
        assert error.value.strerror == strerror
    path.write_text("[" + "1," * 100 + "1]")
    with pytest.raises(OSError, match="larger than 0 MiB"):
        read_small_file(path, limit=100)


def test_read_history_csv_refuses_damaged_rows(tmp_path):
    path = tmp_path / "history.csv"
    cases = {
        "epoch,loss\n1,0.5\n2,0.4,9\n": "line 3 has 3 fields, expected 2",
        "epoch,loss\n1,0.5\n2\n": "line 3 has 1 fields, expected 2",
        "epoch,loss\n1,fast\n": "line 2, column loss: 'fast' is not a number",
        "epoch,loss,loss\n1,2,3\n": "has an empty or repeated column name",
        "epoch,,loss\n1,2,3\n": "has an empty or repeated column name",
    }
    for text, message in cases.items():
        path.write_text(text)
        with pytest.raises(ValueError, match=re.escape(message)):
            read_history_csv(path)
    for text in ("", "epoch,loss\n", "\n\n"):
        path.write_text(text)
        assert read_history_csv(path) == {}
    path.write_text("epoch,loss\n1, \n2,nan\n3,inf\n")
    history = read_history_csv(path)
    assert math.isnan(history["loss"][0]) and math.isnan(history["loss"][1]) and history["loss"][2] == math.inf


def test_trials_csv_cells_are_typed_without_yaml():
    assert [parse_cell(t) for t in ("", "3", "-3", "0.5", "1e-3", "true", "False", "none", "03")] == [
        None, 3, -3, 0.5, 1e-3, True, False, "none", 3]
    assert parse_cell("none", words=True) is None and parse_cell("null", words=True) is None
    assert parse_cell("[128, 64]", structured=True) == [128, 64]
    assert parse_cell('{"name": "adam"}', structured=True) == {"name": "adam"}
    alias_bomb = "[&a [x, x], &b [*a, *a], [*b, *b]]"
    for text in (alias_bomb, "{name: adam}", "[" * 5000 + "]" * 5000, "[1, 2"):
        assert parse_cell(text, structured=True) == text  # not JSON: kept as the text it is
    assert parse_cell("[1]") == "[1]"  # only parameter columns hold structured values
    assert parse_cell("9" * 5000) == float("inf")  # too long for an int: a float, not an error


def test_trial_histories_stay_inside_the_sweep(tmp_path):
    assert trial_history_file(tmp_path, "03") == tmp_path / "histories" / "03.csv"
    for bad in ("", ".", "..", "../x", "a/b", "/etc/passwd", "a\\b"):
        with pytest.raises(ValueError, match="is not a plain name"):
            trial_history_file(tmp_path, bad)
