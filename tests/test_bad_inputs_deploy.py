"""Bad inputs met by `ktk predict`, `ktk export` and `toolkit.load_run`, class by class.

The fast tests need no model: labels.json read strictly (every field, with its key path), input files read
against a hand-written schema (raw headers, every reader failure, values the model cannot take), in-memory
data for `LoadedRun.predict`, --output and --out paths refused before anything loads, model.keras archives
checked before Keras opens them. The slow tests train two tiny runs once (iris: one array; a CSV with a text
column and text classes) and run the real CLI in this process: a labels.json that does not describe its
model, --output FIFOs and devices, --evaluate's target errors, export paths. Every refusal is one
`ktk: error:` line and exit status 2, nothing is left behind, and nothing ktk did not write is replaced.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from toolkit.cli import main
from toolkit.deploy import inputs as raw_inputs
from toolkit.deploy.predict import check_archive, predict_file
from toolkit.errors import UserError
from toolkit.schema import parse_labels

WINE_LABELS = {
    "schema_version": 1, "task": "multiclass", "target": "cultivar", "class_names": ["barbera", "barolo", "grignolino"],
    "inputs": {"kind": "columns", "columns": [{"name": "alcohol", "dtype": "float64"},
                                              {"name": "ash", "dtype": "float64"},
                                              {"name": "region", "dtype": "string", "categories": ["coast", "north"]}]},
    "missing": "error", "normalize": "standard",
}
ARRAY_LABELS = {
    "schema_version": 1, "task": "regression", "target": "y", "class_names": None,
    "inputs": {"kind": "array", "shape": [3], "dtype": "float64", "features": None},
    "missing": "error", "normalize": "standard",
}
HEADER = "alcohol,ash,region"


def cli(capsys, *args):
    """`ktk ARGS` in this process: (exit status, stdout, stderr)."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as exit_info:
        code = exit_info.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_error(code, err):
    assert code == 2, err
    assert err.startswith("ktk: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def edited(base, path, value):
    """`base` with the value at a dot path (list indices as numbers) replaced; `...` deletes the key."""
    data = copy.deepcopy(base)
    keys = path.split(".")
    node = data
    for key in keys[:-1]:
        node = node[int(key)] if isinstance(node, list) else node[key]
    last = int(keys[-1]) if isinstance(node, list) else keys[-1]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return data


# ----------------------------------------------------------------------------- labels.json, read strictly


@pytest.mark.parametrize("path, value, where, words", [
    ("schema_version", 2, "schema_version", "expected version 1"),
    ("schema_version", "1", "schema_version", "received '1'"),
    ("schema_version", True, "schema_version", "received true"),
    ("task", "multilabel", "task", "Valid choices: binary, multiclass, regression"),
    ("target", ["a"], "target", "a non-empty string"),
    ("target", None, "target", "received null"),
    ("missing", "impute", "missing", "Valid choices: error, drop"),
    ("normalize", 3, "normalize", "Valid choices: none, standard, minmax"),
    ("class_names", ["a", "a", "b"], "class_names", "distinct"),
    ("class_names", [["a"], "b", "c"], "class_names[0]", "expected a string"),
    ("class_names", "abc", "class_names", "a list of at least 2"),
    ("inputs", [1, 2], "inputs", "a JSON object"),
    ("inputs.kind", "image", "inputs.kind", "Valid choices: array, columns"),
    ("inputs.columns", "abc", "inputs.columns", "a non-empty list"),
    ("inputs.columns", [], "inputs.columns", "a non-empty list"),
    ("inputs.columns.0", "alcohol", "inputs.columns[0]", "a JSON object"),
    ("inputs.columns.0.name", 5, "inputs.columns[0].name", "received 5"),
    ("inputs.columns.0.name", ..., "inputs.columns[0].name", "which ktk always writes"),
    ("inputs.columns.0.dtype", "int", "inputs.columns[0].dtype", "Valid choices: float64, string"),
    ("inputs.columns.1.name", "alcohol", "inputs.columns", "each column name once"),
    ("inputs.columns.2.categories", ..., "inputs.columns[2].categories", "which ktk always writes"),
    ("inputs.columns.2.categories", "abc", "inputs.columns[2].categories", "a list"),
    ("inputs.columns.2.categories", ["north", "north"], "inputs.columns[2].categories", "distinct"),
    ("inputs.columns.0.categories", ["x"], "inputs.columns[0].categories", "no categories for a float64 column"),
    ("inputs.columns.0.extra", 1, "inputs.columns[0].extra", "only the keys ktk writes"),
    ("extra", 1, "extra", "only the keys ktk writes"),
    ("inputs", ..., "inputs", "which ktk always writes"),
    ("target", "alcohol", "target", "not one of the model's input columns"),
])
def test_damaged_labels_json_names_the_key(path, value, where, words):
    with pytest.raises(UserError) as caught:
        parse_labels(edited(WINE_LABELS, path, value), "run/labels.json")
    message = str(caught.value)
    assert message.startswith(f"run/labels.json: {where}: labels.json is damaged"), message
    assert words in message, message


@pytest.mark.parametrize("path, value, words", [
    ("inputs.shape", ["a"], "positive whole numbers"),
    ("inputs.shape", [-1], "positive whole numbers"),
    ("inputs.shape", [4.7], "positive whole numbers"),
    ("inputs.shape", [True], "positive whole numbers"),
    ("inputs.shape", [10**12, 10**12], "at most 100,000,000 features"),
    ("inputs.features", ["a", "b"], "one name per feature: 3"),
    ("inputs.dtype", "int8", "float64"),
    ("class_names", ["a", "b"], "null for a regression model"),
])
def test_damaged_array_labels_name_the_key(path, value, words):
    with pytest.raises(UserError) as caught:
        parse_labels(edited(ARRAY_LABELS, path, value), "labels.json")
    assert path in str(caught.value) and words in str(caught.value), str(caught.value)


def test_labels_json_round_trip_and_binary_class_count():
    labels = parse_labels(WINE_LABELS)
    assert labels.inputs.names == ["alcohol", "ash", "region"] and labels.class_names == WINE_LABELS["class_names"]
    assert parse_labels(ARRAY_LABELS).inputs.shape == (3,)
    with pytest.raises(UserError, match="two class names for a binary model"):
        parse_labels(edited(WINE_LABELS, "task", "binary"))


@pytest.mark.parametrize("content, words", [
    (b"[1,2,3]", "expected a JSON object"),
    (b"\xff\xfe garbage", "cannot be read"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b"", "cannot be read"),
])
def test_unreadable_labels_json_is_one_message(tmp_path, capsys, content, words):
    run = _fake_run(tmp_path / "run")
    (run / "labels.json").write_bytes(content)
    (tmp_path / "in.csv").write_text(f"{HEADER}\n1,2,north\n")
    err = one_error(*cli(capsys, "predict", run, tmp_path / "in.csv")[::2])
    assert str(run / "labels.json") in err and words in err, err


# ------------------------------------------------------------------------------- input files and data


def _labels(raw=WINE_LABELS):
    return parse_labels(raw)


def _read_all(path, labels=None, chunk_rows=2):
    return list(raw_inputs.read_file(Path(path), labels or _labels(), chunk_rows, "INPUT"))


def _refused(path, words, labels=None):
    with pytest.raises(UserError) as caught:
        _read_all(path, labels)
    message = str(caught.value)
    assert message.startswith("INPUT: ") and words in message, message
    return message


def test_csv_header_is_read_as_written(tmp_path):
    (tmp_path / "dup.csv").write_text("alcohol,alcohol,ash,region\n1,2,3,north\n")
    _refused(tmp_path / "dup.csv", "column 'alcohol' appears more than once")
    (tmp_path / "unnamed.csv").write_text(",alcohol,ash,region\n0,1,2,north\n")
    _refused(tmp_path / "unnamed.csv", "column 1 of")
    (tmp_path / "trailing.csv").write_text(f"{HEADER}\n1,2,north,\n3,4,coast,\n")
    _refused(tmp_path / "trailing.csv", "its data rows have more fields")
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbf" + f"{HEADER}\n1,2,north\n".encode())
    assert len(_read_all(tmp_path / "bom.csv")[0]) == 1


def test_separator_follows_the_last_suffix(tmp_path):
    (tmp_path / "rows.v2.tsv").write_text("alcohol\tash\tregion\n1\t2\tnorth\n")
    chunk = _read_all(tmp_path / "rows.v2.tsv")[0]
    assert list(chunk.features["region"]) == ["north"]


@pytest.mark.parametrize("name, content", [
    ("bad.csv.gz", b"not gzip"), ("bad.csv.bz2", b"not bz2"), ("bad.csv.xz", b"not xz"), ("bad.csv.zip", b"not zip"),
    ("latin.csv", f"{HEADER}\n1,2,n\xf6rth\n".encode("latin-1")), ("quote.csv", f'{HEADER}\n1,2,"north\n'.encode()),
    ("fake.parquet", f"{HEADER}\n1,2,north\n".encode()),
])
def test_any_reader_failure_is_one_message(tmp_path, name, content):
    (tmp_path / name).write_bytes(content)
    _refused(tmp_path / name, "cannot be read as")


def test_a_reader_failure_deep_in_the_file_is_one_message(tmp_path):
    rows = "".join(f"{i},2,north\n" for i in range(50))
    (tmp_path / "late.csv").write_bytes(f"{HEADER}\n{rows}".encode() + "1,2,n\xf6rth\n".encode("latin-1"))
    _refused(tmp_path / "late.csv", "cannot be read as CSV")


def test_input_path_kinds(tmp_path):
    os.mkfifo(tmp_path / "fifo.csv")
    _refused(tmp_path / "fifo.csv", "not a regular file")
    (tmp_path / "folder.csv").mkdir()
    _refused(tmp_path / "folder.csv", "the input is a folder")
    _refused(tmp_path / "absent", "does not exist")
    (tmp_path / "rows.parquet.gz").write_bytes(b"x")
    _refused(tmp_path / "rows.parquet.gz", "only CSV files may be compressed")


@pytest.mark.parametrize("cell, words", [
    ("1e300", "within float32"), ("-1e39", "within float32"), ("inf", "not a finite number"),
    ("(1+2j)", "is not a number"), ("1,234", "is not a number"),
])
def test_numbers_the_model_cannot_take(tmp_path, cell, words):
    (tmp_path / "in.csv").write_text(f'{HEADER}\n1,2,north\n"{cell}",2,north\n')
    message = _refused(tmp_path / "in.csv", words)
    assert "row 1, column 'alcohol'" in message


def test_parquet_dates_and_complex_columns_are_refused(tmp_path):
    import pandas as pd

    frame = pd.DataFrame({"alcohol": pd.to_datetime(["2020-01-01"]), "ash": [2.0], "region": ["north"]})
    frame.to_parquet(tmp_path / "dates.parquet")
    _refused(tmp_path / "dates.parquet", "holds dates or times")


@pytest.mark.parametrize("arrays, words", [
    ({"x": np.zeros((3, 3)), "y": np.array(1.0)}, "array 'y'"),
    ({"x": np.zeros((3, 3)), "y": np.zeros((3, 2, 2))}, "array 'y'"),
    ({"x": np.array([1, "a", None], dtype=object)}, "does not unpickle"),
    ({"x": np.zeros((3, 3)), "y": np.array(["a"] * 3, dtype=object)}, "does not unpickle"),
    ({"x": np.zeros((3, 3)).astype(complex)}, "does not hold numbers"),
    ({"x": np.full((3, 3), 1e300)}, "within float32"),
    ({"x": np.zeros(3)}, "expected shape (n, 3): one row per example"),
    ({"X": np.zeros((3, 3))}, "no array named 'x'"),
])
def test_npz_inputs(tmp_path, arrays, words):
    np.savez(tmp_path / "in.npz", **arrays)
    _refused(tmp_path / "in.npz", words, _labels(ARRAY_LABELS))


def test_npy_named_npz_and_an_archive_unpacking_too_large_are_refused(tmp_path, monkeypatch):
    np.save(tmp_path / "x.npy", np.zeros((3, 3)))
    os.rename(tmp_path / "x.npy", tmp_path / "x.npz")
    _refused(tmp_path / "x.npz", "a .npy file", _labels(ARRAY_LABELS))
    # the bound is the archive's declared size, checked before numpy unpacks anything (a zip bomb's defence)
    monkeypatch.setattr("toolkit.data.MAX_DATA_BYTES", 1000)
    np.savez_compressed(tmp_path / "bomb.npz", x=np.zeros((1000, 3)))
    _refused(tmp_path / "bomb.npz", "24,128 bytes uncompressed, more than ktk loads into memory", _labels(ARRAY_LABELS))


@pytest.mark.parametrize("data, words", [
    ({"alcohol": [1.0, 2.0], "ash": [3.0], "region": ["north", "north"]}, "different lengths"),
    (None, "cannot predict from NoneType"),
    ("rows.csv", "cannot predict from str"),
])
def test_in_memory_data_of_the_wrong_form(data, words):
    with pytest.raises(UserError, match=words):
        raw_inputs.frame_from(data, _labels())


def test_in_memory_data_series_jagged_rows_and_records():
    import pandas as pd

    with pytest.raises(UserError, match="a pandas Series"):
        raw_inputs.frame_from(pd.Series([1.0, 2.0]), _labels())
    with pytest.raises(UserError, match="rows have different lengths"):
        raw_inputs.frame_from([[1, 2, 3], [1, 2]], _labels(ARRAY_LABELS))
    frame, _ = raw_inputs.frame_from([{"alcohol": 1.0, "ash": 2.0, "region": "north"}], _labels())
    assert list(frame.columns) == ["alcohol", "ash", "region"]
    notes = raw_inputs.Notes()
    for column, words in (("alcohol", "holds complex numbers"), ("ash", "holds dates or times")):
        bad = frame.assign(**{column: [1 + 2j] if column == "alcohol" else pd.to_datetime(["2020-01-01"])})
        with pytest.raises(UserError, match=words):
            raw_inputs.frame_chunk(bad, _labels(), "data", notes)


# ---------------------------------------------------------------- paths refused before anything loads


def _fake_run(path: Path) -> Path:
    """A directory with a run's file names (the model is no model): enough for checks made before loading."""
    path.mkdir(parents=True)
    (path / "model.keras").write_bytes(b"not a model")
    (path / "metrics.json").write_text("{}")
    (path / "config.yaml").write_text("name: x\n")
    (path / "labels.json").write_text(json.dumps(WINE_LABELS))
    return path


def test_output_is_never_inside_the_run_directory(tmp_path, capsys):
    run = _fake_run(tmp_path / "run")
    (tmp_path / "in.csv").write_text(f"{HEADER}\n1,2,north\n")
    os.symlink(run / "new.csv", tmp_path / "link.csv")
    for output in (run / "new.csv", tmp_path / "run" / ".." / "run" / "p.json", tmp_path / "link.csv"):
        err = one_error(*cli(capsys, "predict", run, tmp_path / "in.csv", "--output", output)[::2])
        assert "ktk never writes into the results it reads" in err, err
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "labels.json", "metrics.json", "model.keras"]
    sweep = tmp_path / "sweep"
    (sweep / ".ktk-sweep").parent.mkdir()
    (sweep / ".ktk-sweep").write_text("")
    shutil.copytree(run, sweep / "best")
    err = one_error(*cli(capsys, "predict", sweep, tmp_path / "in.csv", "--output", sweep / "out.csv")[::2])
    assert "ktk never writes into the results it reads" in err and not (sweep / "out.csv").exists()


@pytest.mark.parametrize("name, fmt", [("out.parquet", "json"), ("out.csv", "parquet"), ("out.pq", "csv")])
def test_format_contradicting_the_output_name_is_refused(tmp_path, capsys, name, fmt):
    run = _fake_run(tmp_path / "run")
    (tmp_path / "in.csv").write_text(f"{HEADER}\n1,2,north\n")
    err = one_error(*cli(capsys, "predict", run, tmp_path / "in.csv", "--output", tmp_path / name,
                         "--format", fmt)[::2])
    assert "--format:" in err and "which says" in err and not (tmp_path / name).exists()


def test_batch_size_and_export_paths_are_checked_first(tmp_path, capsys):
    run = _fake_run(tmp_path / "run")
    with pytest.raises(UserError, match="positive whole number"):
        predict_file(run, tmp_path / "in.csv", batch_size=True)
    err = one_error(*cli(capsys, "export", run, "--format", "saved_model", "--out", run / "served")[::2])
    assert "ktk never writes into the results it reads" in err and not (run / "served").exists()
    (tmp_path / "m.tflite.labels.json").write_text("mine")
    err = one_error(*cli(capsys, "export", run, "--format", "litert", "--out", tmp_path / "m.tflite")[::2])
    assert "m.tflite.labels.json already exists" in err
    assert (tmp_path / "m.tflite.labels.json").read_text() == "mine" and not (tmp_path / "m.tflite").exists()


def test_model_archive_is_checked_before_keras_reads_it(tmp_path, monkeypatch):
    (tmp_path / "garbage.keras").write_bytes(b"garbage")
    with pytest.raises(UserError, match="not a zip archive"):
        check_archive(tmp_path / "garbage.keras")
    monkeypatch.setattr("toolkit.deploy.predict.MAX_ARCHIVE_JSON_BYTES", 1000)
    with zipfile.ZipFile(tmp_path / "bomb.keras", "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("config.json", " " * 5000)
    with pytest.raises(UserError, match="config.json would unpack to 5,000 bytes"):
        check_archive(tmp_path / "bomb.keras")


def test_damaged_metrics_json_is_one_message(tmp_path, capsys):
    import toolkit

    run = _fake_run(tmp_path / "run")
    for content, words in (("{bad", "metrics.json cannot be read"), ("[1]", "metrics.json is damaged")):
        (run / "metrics.json").write_text(content)
        with pytest.raises(UserError, match=words):
            toolkit.load_run(run)


# --------------------------------------------------------------------------- real runs (trained once)


WINE_ROWS = 120


def _wine_csv(path: Path) -> None:
    rng = np.random.default_rng(0)
    alcohol = rng.normal(13, 1, WINE_ROWS)
    region = np.where(alcohol > 13.3, "north", np.where(alcohol > 12.7, "coast", "south"))
    cultivar = np.where(alcohol > 13, "barolo", "barbera")
    text = "alcohol,ash,region,cultivar\n" + "".join(
        f"{a:.3f},{2 + a / 10:.3f},{r},{c}\n" for a, r, c in zip(alcohol, region, cultivar))
    path.write_text(text)


@pytest.fixture(scope="module")
def trained_runs(tmp_path_factory):
    """name -> run directory: iris (one array, three classes) and a CSV with a text column (binary)."""
    from toolkit.config import parse_config
    from toolkit.runs import run

    root = tmp_path_factory.mktemp("deploy-bad")
    _wine_csv(root / "wine.csv")
    out = {}
    for name, data in (("iris", {"source": "sklearn.iris"}),
                       ("wine", {"source": "csv", "path": "wine.csv", "target": "cultivar"})):
        config = parse_config({"name": name, "data": data, "model": {"hidden": [4]},
                               "training": {"epochs": 1, "batch_size": 64}}, source=str(root / f"{name}.yaml"))
        out[name] = run(config, out_dir=root / name, verbose=0).run_dir
    return out


def _copy_run(runs, name, to: Path) -> Path:
    shutil.copytree(runs[name], to)
    return to


@pytest.mark.slow
def test_labels_json_that_does_not_describe_the_model(trained_runs, tmp_path, capsys):
    (tmp_path / "in.csv").write_text("alcohol,ash,region\n13,3,north\n")
    labels = json.loads((trained_runs["wine"] / "labels.json").read_text())
    region = next(i for i, c in enumerate(labels["inputs"]["columns"]) if c["name"] == "region")
    cases = {
        "class_names": (edited(labels, "task", "multiclass"), "the model has 1"),  # a binary model read as 2 classes
        "inputs.columns": (edited(labels, "inputs.columns", labels["inputs"]["columns"][:2]),
                           "the model's input columns"),
        f"inputs.columns[{region}].categories": (
            edited(labels, f"inputs.columns.{region}.categories", ["coast", "mars", "north", "south"]),
            "the model's 3 categories"),
    }
    for where, (content, words) in cases.items():
        run = _copy_run(trained_runs, "wine", tmp_path / where.replace("[", "_").replace("]", ""))
        (run / "labels.json").write_text(json.dumps(content))
        rows = "alcohol,ash\n13,3\n" if where == "inputs.columns" else "alcohol,ash,region\n13,3,north\n"
        (tmp_path / "in.csv").write_text(rows)  # rows that fit the edited labels: the model is what disagrees
        err = one_error(*cli(capsys, "predict", run, tmp_path / "in.csv")[::2])
        assert f"labels.json: {where}: labels.json does not describe model.keras" in err and words in err, err
    iris_in_wine = _copy_run(trained_runs, "wine", tmp_path / "swapped")
    shutil.copyfile(trained_runs["iris"] / "model.keras", iris_in_wine / "model.keras")
    (tmp_path / "in.csv").write_text("alcohol,ash,region\n13,3,north\n")
    err = one_error(*cli(capsys, "predict", iris_in_wine, tmp_path / "in.csv")[::2])
    assert "inputs.kind: labels.json does not describe model.keras" in err, err


@pytest.mark.slow
def test_output_targets_that_cannot_take_the_predictions(trained_runs, tmp_path, capsys):
    rows = tmp_path / "rows.csv"
    rows.write_text("alcohol,ash,region\n" + "13,3,north\n" * 30)
    os.mkfifo(tmp_path / "fifo")
    err = one_error(*cli(capsys, "predict", trained_runs["wine"], rows, "--output", tmp_path / "fifo")[::2])
    assert "a FIFO that no process is reading" in err  # refused at once, never a wait
    if os.path.exists("/dev/full"):
        err = one_error(*cli(capsys, "predict", trained_runs["wine"], rows, "--output", "/dev/full")[::2])
        assert "cannot write the predictions (No space left on device)" in err
    # a link to a new file: written where it points, and the link stays
    os.symlink(tmp_path / "target.csv", tmp_path / "link.csv")
    code, _, err = cli(capsys, "predict", trained_runs["wine"], rows, "--output", tmp_path / "link.csv")
    assert code == 0, err
    assert (tmp_path / "link.csv").is_symlink() and len((tmp_path / "target.csv").read_text().splitlines()) == 31
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo", "link.csv", "rows.csv", "target.csv"]


@pytest.mark.slow
def test_evaluate_target_errors_are_ktk_messages(trained_runs, tmp_path, capsys):
    cases = {
        "unknown class": (np.array([0, 1, 7]), "row 2, column 'y': '7' is not a class of this model"),
        "text class": (np.array(["setosa", "dog", "virginica"]), "'dog' is not a class"),
        "missing": (np.array([0.0, np.nan, 1.0]), "row 1, column 'y': a missing target value"),
        "two per row": (np.zeros((3, 2)), "the target 'y' has shape (2,) per row"),
    }
    for what, (y, words) in cases.items():
        np.savez(tmp_path / "in.npz", x=np.random.default_rng(0).random((3, 4)), y=y)
        err = one_error(*cli(capsys, "predict", trained_runs["iris"], tmp_path / "in.npz", "--evaluate", "--output",
                             tmp_path / "out.csv")[::2])
        assert err.startswith("ktk: error: --evaluate: ") and words in err, (what, err)
        assert not (tmp_path / "out.csv").exists()
    (tmp_path / "in.csv").write_text("alcohol,ash,region,cultivar\n13,3,north,barolo\n13,3,north,merlot\n")
    err = one_error(*cli(capsys, "predict", trained_runs["wine"], tmp_path / "in.csv", "--evaluate")[::2])
    assert "row 1, column 'cultivar': 'merlot' is not a class" in err and "Valid choices: barbera, barolo" in err


@pytest.mark.slow
def test_load_run_predict_with_empty_and_malformed_data(trained_runs):
    import pandas as pd

    import toolkit

    iris = toolkit.load_run(trained_runs["iris"])
    empty = iris.predict(np.zeros((0, 4)))
    assert len(empty) == 0 and list(empty.columns) == ["row", "prediction", *(f"p_{c}" for c in iris.class_names)]
    wine = toolkit.load_run(trained_runs["wine"])
    assert len(wine.predict(pd.DataFrame({"alcohol": [], "ash": [], "region": []}))) == 0
    records = wine.predict([{"alcohol": 13.0, "ash": 3.0, "region": "north"}])
    assert list(records["row"]) == [0]
    with pytest.raises(UserError, match="batch_size: expected a positive whole number"):
        iris.predict(np.zeros((2, 4)), batch_size=0)
    with pytest.raises(UserError, match="within float32"):
        wine.predict({"alcohol": [1e300], "ash": [3.0], "region": ["north"]})


@pytest.mark.slow
def test_export_into_a_new_path_only(trained_runs, tmp_path, capsys):
    code, out, err = cli(capsys, "export", trained_runs["iris"], "--format", "litert", "--out", tmp_path / "m.tflite")
    assert code == 0, err
    assert (tmp_path / "m.tflite").stat().st_size > 0
    assert json.loads((tmp_path / "m.tflite.labels.json").read_text()) == json.loads(
        (trained_runs["iris"] / "labels.json").read_text())
    err = one_error(*cli(capsys, "export", trained_runs["iris"], "--format", "litert", "--out",
                         tmp_path / "m.tflite")[::2])
    assert "already exists" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tflite", "m.tflite.labels.json"]  # no staging left
