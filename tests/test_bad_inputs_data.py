"""Bad data through the real command line, in one process: `ktk validate` loads the data, so each case is
refused with exit status 2 and one message naming the file, the column or array and the rows, never a
traceback, and never a change to the user's files. Nothing here trains or imports TensorFlow."""

import gzip
import os
import pickle
import warnings

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import toolkit.data
from toolkit.cli import main
from toolkit.config import parse_config
from toolkit.errors import show

RNG = np.random.default_rng(0)
X = RNG.normal(size=(100, 3))
Y = RNG.integers(0, 3, 100)
TABLE = pd.DataFrame({"a": RNG.normal(size=60), "b": RNG.normal(size=60), "y": RNG.integers(0, 2, 60)})


def npz(**arrays):
    return lambda path: np.savez(path, **arrays)


def with_x(row, column, value):
    x = X.copy()
    x[row, column] = value
    return x


def csv(frame=None, text=None, encoding="utf-8", change=None):
    def write(path):
        if text is not None:
            path.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
            return
        table = (frame if frame is not None else TABLE).copy()
        if change is not None:
            column, row, value = change
            table[column] = table[column].astype(object)
            table.loc[row, column] = value
        table.to_csv(path, index=False)

    return write


def parquet(frame):
    return lambda path: frame.to_parquet(path)


def raw(content):
    return lambda path: path.write_bytes(content)


def fifo(path):
    os.mkfifo(path)


nan_label = Y.astype(float)
nan_label[4] = np.nan
ids = pd.DataFrame({"id": [f"user{i:06d}" for i in range(30000)], "a": RNG.normal(size=30000),
                    "y": RNG.integers(0, 2, 30000)})
names = pd.DataFrame({"a": RNG.normal(size=300), "name": [f"person {i}" for i in range(300)]})
small_classes = pd.DataFrame({"a": RNG.normal(size=300), "c": [f"c{i % 120}" for i in range(300)]})

NPZ = "{source: npz, path: {file}}"
CSV = "{source: csv, path: {file}, target: y}"
# A bad cell of TABLE (column, row counted from 0, text) and the message after "data.path: "
CELL_CASES = [
    ("csv-inf", ("a", 5, "inf"),
     "column 'a' of {file} has infinite values in data row 6; expected finite numbers; received inf."),
    ("csv-beyond-float32", ("b", 2, "-1e39"),
     "column 'b' of {file} has values too large for float32 (the type Keras trains in) in data row 3; expected "
     "numbers within ±3.4e+38; received -1e+39."),
    ("csv-nan-feature", ("a", 5, "NaN"),
     "missing values in column(s) 'a' (data row 6) of {file}; expected no missing values, or data.missing: drop to "
     "drop those rows."),
    ("csv-nan-label", ("y", 0, ""),
     "missing values in column(s) 'y' (data row 1) of {file}; expected no missing values, or data.missing: drop to "
     "drop those rows."),
    ("csv-inf-label", ("y", 8, "-inf"),
     "column 'y' of {file} has infinite values in data row 9; expected finite numbers; received -inf."),
    ("csv-word-in-numbers", ("b", 7, "abc"),
     "non-numeric value in numeric feature column 'b' of {file} at data row 8; expected a number; received 'abc'."),
]

# (case, data section with {file} for the bad file's name, writer of the bad file, the message after the config)
CASES = [(case, CSV, csv(change=cell), "data.path: " + message) for case, cell, message in CELL_CASES] + [
    # npz: shapes, kinds and values
    ("npz-x-longer-than-y", NPZ, npz(x=X, y=Y[:50]),
     "data.path: array 'x' of {file} has 100 rows and 'y' has 50; expected one label per example: x and y with "
     "the same number of rows."),
    ("npz-y-longer-than-x", NPZ, npz(x=X[:50], y=Y),
     "data.path: array 'x' of {file} has 50 rows and 'y' has 100; expected one label per example: x and y with "
     "the same number of rows."),
    ("npz-nan-feature", NPZ, npz(x=with_x(7, 1, np.nan), y=Y),
     "data.path: array 'x' of {file} has missing (NaN) values in row 7 (counting from 0); expected finite numbers; "
     "received nan."),
    ("npz-inf-feature", NPZ, npz(x=with_x(9, 0, -np.inf), y=Y),
     "data.path: array 'x' of {file} has infinite values in row 9 (counting from 0); expected finite numbers; "
     "received -inf."),
    ("npz-beyond-float32", NPZ, npz(x=with_x(3, 0, 1e39), y=Y),
     "data.path: array 'x' of {file} has values too large for float32 (the type Keras trains in) in row 3 "
     "(counting from 0); expected numbers within ±3.4e+38; received 1e+39."),
    ("npz-one-nan-label", NPZ, npz(x=X, y=nan_label),
     "data.path: array 'y' of {file} has missing (NaN) labels in row 4 (counting from 0); expected finite numbers; "
     "received nan."),
    ("npz-complex-x", NPZ, npz(x=X + 1j, y=Y),
     "data.path: array 'x' of {file} holds complex numbers; expected real numbers; received 'dtype complex128'."),
    ("npz-complex-y", NPZ, npz(x=X, y=Y + 1j),
     "data.path: array 'y' of {file} holds complex numbers; expected real numbers or text labels; "
     "received 'dtype complex128'."),
    ("npz-pickled-objects", NPZ, npz(x=np.array([[1, "a"]] * 10, dtype=object), y=Y[:10]),
     "data.path: array 'x' of {file} holds Python objects, which ktk does not unpickle (unpickling runs code); "
     "expected an array of numbers (or of text labels for y)."),
    ("npz-text-x", NPZ, npz(x=np.array([["a", "b"]] * 10), y=Y[:10]),
     "data.path: array 'x' of {file} is not numeric; expected an array of numbers; received 'dtype <U1'."),
    ("npz-empty-archive", NPZ, npz(),
     "data.path: array 'x' not found in the npz file {file}. Valid choices: (none)."),
    ("npz-0-d", NPZ, npz(x=np.array(1.0), y=np.array(2.0)),
     "data.path: array 'x' of {file} has shape (); expected one row per example, shape (examples, features...); "
     "for one feature per example use x.reshape(-1, 1)."),
    ("npz-1-d-x", NPZ, npz(x=X[:, 0], y=Y),
     "data.path: array 'x' of {file} has shape (100,); expected one row per example, shape (examples, "
     "features...); for one feature per example use x.reshape(-1, 1)."),
    ("npz-no-rows", NPZ, npz(x=X[:0], y=Y[:0]),
     "data.path: array 'x' of {file} has no examples; expected at least one row; received 'shape (0, 3)'."),
    ("npz-no-features", NPZ, npz(x=np.zeros((10, 0)), y=Y[:10]),
     "data.path: array 'x' of {file} has no features; expected at least one value per example; "
     "received 'shape (10, 0)'."),
    ("npz-y-3-d", NPZ, npz(x=X, y=np.zeros((100, 2, 2))),
     "data.path: array 'y' of {file} has shape (100, 2, 2); expected one label (or one row of targets) per "
     "example: shape (n,) or (n, k)."),
    # npz: files that are not npz archives
    ("npz-is-npy", NPZ, lambda path: np.save(open(path, "wb"), X),
     "data.path: {file} is a .npy file, which holds a single array; expected an npz archive with arrays x and y, "
     "as np.savez(path, x=x, y=y) writes."),
    ("npz-not-a-zip", NPZ, raw(b"hello,world\n1,2\n"),
     "data.path: {file} is not an npz archive (npz files are zip archives); expected an npz archive with arrays "
     "x and y, as np.savez(path, x=x, y=y) writes."),
    ("npz-pickle", NPZ, raw(pickle.dumps({"x": 1})),
     "data.path: {file} is not an npz archive (npz files are zip archives); expected an npz archive with arrays "
     "x and y, as np.savez(path, x=x, y=y) writes."),
    ("npz-truncated", NPZ, raw(b"PK\x03\x04" + bytes(300)),
     "data.path: could not read the npz file (File is not a zip file); received '{path}'."),
    # csv and parquet: values
    ("csv-header-only", CSV, csv(text="a,b,y\n"),
     "data.path: {file} has no data rows (only a header); expected at least one row of data; received '{file}'."),
    ("csv-empty-file", CSV, csv(text=""),
     "data.path: the file is empty; received '{path}'."),
    ("csv-complex", CSV,
     csv(TABLE.assign(a=[f"({v}+1j)" for v in range(60)])),
     "data.path: column 'a' of {file} holds complex numbers; expected real numbers; received '(0+1j)'."),
    ("csv-id-column", CSV, csv(ids),
     "data.features: text column 'id' has 30,000 distinct values in 30,000 rows: an ID or free text, not a "
     "category (one-hot encoding it would add 30,000 features); list the columns to use in data.features to "
     "leave it out, or encode it as numbers; received 'id'."),
    ("csv-text-target-of-names", "{source: csv, path: {file}, target: name}", csv(names),
     "data.target: the target column 'name' has 300 distinct text values in 300 rows, so most classes would have "
     "a single example: an ID or free text, not a class label; expected a column of class labels or numbers; "
     "received 'name'."),
    ("csv-classes-too-small-to-stratify", "{source: csv, path: {file}, target: c}", csv(small_classes),
     "data.split.validation: a stratified split leaves the validation split empty: validation: 0.15 gives each of "
     "the 120 classes of 'c' less than one example (0.15 of the largest class, 'c0', with 3 examples, is 0.45, "
     "which rounds to 0); expected a validation fraction above 0.167, classes with more examples (is data.target "
     "the right column?), or data.split.stratify: false; received 0.15."),
    ("csv-one-class", CSV, csv(TABLE.assign(y="spam")),
     "data.target: the target 'y' has a single value, 'spam'; expected at least two classes to learn from."),
    ("csv-every-row-missing", "{source: csv, path: {file}, target: y, missing: drop}", csv(TABLE.assign(a=np.nan)),
     "data.path: every row of {file} has a missing value, so none is left to use; expected some complete rows; "
     "received '60 rows'."),
    ("csv-only-the-target", CSV, csv(TABLE[["y"]]),
     "data.path: {file} has no column besides the target; expected at least one feature column; received ['y']."),
    # csv: data.features and the split column
    ("features-hold-the-target", "{source: csv, path: {file}, target: y, features: [a, y]}", csv(),
     "data.features.1: column 'y' is the target (data.target), so it cannot be a feature; expected a feature "
     "column; received 'y'. Valid choices: a, b."),
    ("features-hold-a-duplicate", "{source: csv, path: {file}, target: y, features: [a, b, a]}", csv(),
     "data.features.2: column 'a' is listed twice; expected each feature once; received 'a'."),
    ("features-misspelt", "{source: csv, path: {file}, target: y, features: [bb]}", csv(),
     "data.features.0: column not found in {file}; received 'bb'. Valid choices: a, b. Did you mean 'b'?"),
    ("features-empty", "{source: csv, path: {file}, target: y, features: []}", csv(),
     "data.features: expected at least one feature column (or no data.features: every column but the target); "
     "received []. Valid choices: a, b."),
    ("features-hold-the-split-column", "{source: csv, path: {file}, target: y, split: {column: s}, features: [s]}",
     csv(TABLE.assign(s="train")),
     "data.features.0: column 's' is the split column (data.split.column), so it cannot be a feature; expected a "
     "feature column; received 's'. Valid choices: a, b."),
    ("split-column-without-validation-rows", "{source: csv, path: {file}, target: y, split: {column: s}}",
     csv(TABLE.assign(s="train")),
     "data.split.column: the split column 's' has no validation rows; expected rows of each split: train, "
     "validation and test (or a test_path); received 's'."),
    # csv and parquet: headers that do not name each column once
    ("csv-repeated-name", CSV, csv(text="x,b,x,y\n1,2,3,0\n4,5,6,1\n"),
     "data.path: columns 1 and 3 of {file} are both named 'x' in the header; expected a different name for each "
     "column; received 'x'."),
    ("csv-repeated-quoted-name", "{source: csv, path: {file}, target: x}", csv(text='"x",y,x\n1,2,3\n4,5,6\n'),
     "data.path: columns 1 and 3 of {file} are both named 'x' in the header; expected a different name for each "
     "column; received 'x'."),
    ("csv-empty-name", CSV, csv(text="a, ,y\n1,2,0\n4,5,1\n"),
     "data.path: column 2 of {file} has no name in the header; expected a name for every column; "
     "received ['a', ' ', 'y']."),
    ("csv-saved-with-its-index", CSV, lambda path: TABLE.to_csv(path),
     "data.path: column 1 of {file} has no name in the header; expected a name for every column (pandas' to_csv "
     "saves the index as an unnamed first column: save with index=False); received ['', 'a', 'b', 'y']."),
    ("csv-a-comma-ending-each-row", CSV, csv(text="a,b,y\n1,2,0,\n4,5,1,\n"),
     "data.path: the header of {file} names 3 columns, but its data rows have 4 fields (a comma at the end of each "
     "row?); expected a header naming every field of a row; received '{path}'."),
    ("parquet-repeated-name", "{source: parquet, path: {file}, target: y}",
     lambda path: pq.write_table(pa.table([[1, 2], [3, 4], [0, 1]], names=["a", "a", "y"]), path),
     "data.path: columns 1 and 2 of {file} are both named 'a' in its schema; expected a different name for each "
     "column; received 'a'."),
    ("parquet-empty-name", "{source: parquet, path: {file}, target: y}",
     parquet(pd.DataFrame({"a": [1.0, 2.0], "": [3.0, 4.0], "y": [0, 1]})),
     "data.path: column 2 of {file} has no name in its schema; expected a name for every column; "
     "received ['a', '', 'y']."),
    ("split-column-is-the-target", "{source: csv, path: {file}, target: y, split: {column: y}}", csv(),
     "data.split.column: column 'y' is the target (data.target), so it cannot be the split column; expected a "
     "column naming each row's split (train, validation or test), other than the target and the features; "
     "received 'y'."),
    # csv and parquet: files that cannot be read
    ("csv-latin-1", CSV, csv(text="a,b,y\n1,caf\xe9,0\n", encoding="latin-1"),
     "data.path: could not read the csv file ('utf-8' codec can't decode byte 0xe9 in position 3: unexpected end "
     "of data); received '{path}'."),
    ("csv-ragged", CSV, csv(text="a,b,y\n1,2,0\n1,2,3,4,5\n"),
     "data.path: could not read the csv file (Error tokenizing data. C error: Expected 3 fields in line 3, saw 5); "
     "received '{path}'."),
    ("parquet-garbage", "{source: parquet, path: {file}, target: y}", raw(b"PAR1 not really PAR1"),
     None),  # pyarrow's own words vary by version: only the start of the message is pinned
    ("parquet-lists", "{source: parquet, path: {file}, target: y}",
     parquet(pd.DataFrame({"a": [[1, 2]] * 20, "y": [0, 1] * 10})),
     "data.path: column 'a' of {file} holds lists or other objects in data rows 1, 2, 3, 4, 5 and 15 more; "
     "expected one number or text value per cell; received 'ndarray'."),
    ("parquet-dates", "{source: parquet, path: {file}, target: y}",
     parquet(pd.DataFrame({"a": pd.date_range("2020", periods=20), "y": [0, 1] * 10})),
     "data.path: column 'a' of {file} holds dates or times, which are not features as they are; expected numbers "
     "or text; derive numbers from it (e.g. day of year) or leave it out with data.features; "
     "received 'datetime64[us]'."),
    # files that are not files
    ("csv-fifo", CSV, fifo,
     "data.path: this is a FIFO (named pipe), not a data file; expected a regular file; received '{path}'."),
    ("npz-fifo", NPZ, fifo,
     "data.path: this is a FIFO (named pipe), not a data file; expected a regular file; received '{path}'."),
    ("csv-directory", "{source: csv, path: ., target: y, stream: false}", None,
     "data.path: this is a directory, not a data file; expected a regular file; received '{dir}'."),
    ("csv-directory-streamed", "{source: csv, path: ., target: y}", None,  # a folder of shards, streamed
     "data.path: the folder holds no csv files; expected a folder of csv shards (.csv, .csv.gz, .csv.bz2, .csv.xz, "
     ".csv.zip, .tsv, .txt); received '.'."),
    ("npz-dev-zero", "{source: npz, path: /dev/zero}", None,
     "data.path: this is a device, not a data file; expected a regular file; received '/dev/zero'."),
    ("csv-name-too-long", "{source: csv, path: " + "a" * 300 + ".csv, target: y}", None,
     "data.path: cannot use this path (File name too long); received " + show("a" * 300 + ".csv")),  # ends "..."
    ("options-for-a-file", "{source: csv, path: {file}, target: y, options: {sep: ';'}}", csv(),
     "data.options: source 'csv' does not read options (arguments of the data set or generator, read by the "
     "sklearn., synthetic. and keras. sources); expected only the keys that apply to csv; received {sep: ';'}. "
     "Valid choices: source, path, target, features, test_path, missing, stream, shuffle_buffer, split, split.column, split.key, normalize."),
]

TEST_FILE_CASES = [
    ("test-file-without-a-column", csv(TABLE.rename(columns={"a": "A"})),
     "data.test_path: column 'a' of the training file is not in the test file {file}; expected the training "
     "file's feature and target columns; received 'a'. Valid choices: A, b, y. Did you mean 'A'?"),
    ("test-file-with-a-word", csv(change=("a", 3, "oops")),
     "data.test_path: non-numeric value in numeric feature column 'a' of {file} at data row 4; expected a number; "
     "received 'oops'."),
    ("test-file-with-a-gap", csv(change=("b", 3, "")),
     "data.test_path: missing values in column(s) 'b' (data row 4) of {file}; expected no missing values, or "
     "data.missing: drop to drop those rows."),
    ("test-file-with-inf", csv(change=("b", 0, "inf")),
     "data.test_path: column 'b' of {file} has infinite values in data row 1; expected finite numbers; "
     "received inf."),
]

GENERATOR_CASES = [
    ("n_samples: 1e12", "data.options.n_samples: expected an int in the range [1, inf) or an instance of 'tuple'; "
     "received 1000000000000.0."),
    ("n_samples: 1000000000000", "data.options.n_samples: expected at most 100,000,000; received 1000000000000."),
    ("n_samples: many", "data.options.n_samples: expected an int in the range [1, inf) or an instance of 'tuple'; "
     "received 'many'."),
    ("n_samples: -3", "data.options.n_samples: expected an int in the range [1, inf) or an instance of 'tuple'; "
     "received -3."),
    ("n_samples: true", "data.options.n_samples: expected a number, not true/false; received true."),
    ("noise: .inf", "data.options.noise: expected a float in the range [0.0, inf) or None; received inf."),
    ("nosie: 0.1", "data.options.nosie: expected an option of make_moons; received 'nosie'. Valid choices: "
     "n_samples, shuffle, noise, random_state. Did you mean 'noise'?"),
    ("shuffle: maybe", "data.options.shuffle: expected an instance of 'bool' or an instance of 'numpy.bool'; "
     "received 'maybe'."),
    ("return_X_y: false", "data.options.return_X_y: expected an option of make_moons; received 'return_X_y'. "
     "Valid choices: n_samples, shuffle, noise, random_state."),
]

OTHER_SOURCE_CASES = [
    ("{source: synthetic.classification, options: {n_samples: 100000, n_features: 100000}}",
     "data.options.n_samples: make_classification would generate 10,000,100,000 values, more than ktk holds in "
     "memory (100,000,000); expected fewer samples or features; received 100000."),
    ("{source: synthetic.blobs, options: {centers: 1000000000}}",
     "data.options.centers: expected at most 100,000,000; received 1000000000."),
    ("{source: synthetic.classification, options: {n_features: 2}}",
     "data.options: make_classification rejected the options (Number of informative, redundant and repeated "
     "features must sum to less than the number of total features); received {n_features: 2}."),
    ("{source: synthetic.regression, options: {bias: 1.0e+300}}",
     "data.options: the target make_regression generated has values too large for float32 (the type Keras "
     "trains in) in rows 0, 1, 2, 3, 4 and 95 more (counting from 0); expected numbers within ±3.4e+38; "
     "received 1e+300."),
    ("{source: sklearn.digits, options: {n_class: ten}}",
     "data.options.n_class: expected an integer from 2 to 10 (the digits kept); received 'ten'."),
    ("{source: sklearn.linnerud, options: {return_X_y: true}}",
     "data.options.return_X_y: expected an option of sklearn.linnerud; received 'return_X_y'. Valid choices: "
     "(none)."),
]


def files_of(folder):
    return {p.name: (p.read_bytes() if p.is_file() else None) for p in folder.iterdir()}


def validate(config, capsys):
    status = main(["validate", str(config)])
    captured = capsys.readouterr()
    return status, captured.err


def assert_data_section_refused(tmp_path, capsys, data, message):
    """A config of just `data: DATA` is refused by validate with `message`."""
    config = tmp_path / "config.yaml"
    config.write_text(f"data: {data}\n")
    status, err = validate(config, capsys)
    assert_refused(status, err, config, message)


def assert_refused(status, err, config, message):
    assert "Traceback" not in err
    assert status == 2, err
    assert err.count("ktk: error:") == 1 and err.endswith("\n") and err.count("\n") == 1, err
    if message is not None:
        assert err == f"ktk: error: {config}: {message}\n"


@pytest.mark.parametrize("case, data, write, message", CASES, ids=[c[0] for c in CASES])
def test_bad_data_file_is_refused_with_one_message(tmp_path, monkeypatch, capsys, case, data, write, message):
    monkeypatch.chdir(tmp_path)
    file = f"{case}.{'npz' if 'npz' in data else 'parquet' if 'parquet' in data else 'csv'}"
    if write is not None:
        write(tmp_path / file)
    config = tmp_path / "config.yaml"
    config.write_text(f"data: {data.replace('{file}', file)}\n")
    before = files_of(tmp_path)
    status, err = validate(config, capsys)
    expected = None if message is None else (message.replace("{file}", file).replace("{path}", str(tmp_path / file))
                                              .replace("{dir}", str(tmp_path)))
    assert_refused(status, err, config, expected)
    if message is None:
        assert err.startswith(f"ktk: error: {config}: data.path: could not read the parquet file (")
    assert files_of(tmp_path) == before  # nothing written, nothing lost


@pytest.mark.parametrize("case, write, message", TEST_FILE_CASES, ids=[c[0] for c in TEST_FILE_CASES])
def test_a_bad_test_file_is_blamed_not_the_training_file(tmp_path, capsys, case, write, message):
    csv()(tmp_path / "train.csv")
    write(tmp_path / "test.csv")
    config = tmp_path / "config.yaml"
    config.write_text("data: {source: csv, path: train.csv, test_path: test.csv, target: y}\n")
    status, err = validate(config, capsys)
    assert_refused(status, err, config, message.replace("{file}", "test.csv"))


@pytest.mark.parametrize("option, message", GENERATOR_CASES, ids=[c[0] for c in GENERATOR_CASES])
def test_generator_options_are_checked(tmp_path, capsys, option, message):
    config = tmp_path / "config.yaml"
    config.write_text(f"data: {{source: synthetic.moons, options: {{{option}}}}}\n")
    status, err = validate(config, capsys)
    assert_refused(status, err, config, message)


@pytest.mark.parametrize("data, message", OTHER_SOURCE_CASES, ids=[c[0] for c in OTHER_SOURCE_CASES])
def test_source_options_are_checked_before_anything_is_allocated(tmp_path, capsys, data, message):
    assert_data_section_refused(tmp_path, capsys, data, message)



@pytest.mark.parametrize("name, write", [
    ("big.csv", csv()),
    ("bomb.csv.gz", lambda path: path.write_bytes(gzip.compress(b"a,y\n" + b"1,0\n" * 100_000))),
    ("bomb.parquet", parquet(pd.DataFrame({"a": np.zeros(100_000), "y": np.zeros(100_000)}))),
    ("bomb.npz", lambda path: np.savez_compressed(path, x=np.zeros((100_000, 2)), y=np.zeros(100_000))),
])
def test_sizes_are_capped_before_reading_everything(tmp_path, monkeypatch, capsys, name, write):
    monkeypatch.setattr(toolkit.data, "MAX_DATA_BYTES", 2_000)  # smaller than each file, once expanded
    write(tmp_path / name)
    config = tmp_path / "config.yaml"
    source = name.split(".")[-1].replace("gz", "csv")
    config.write_text(f"data: {{source: {source}, path: {name}" + (", target: y}\n" if source != "npz" else "}\n"))
    status, err = validate(config, capsys)
    assert_refused(status, err, config, None)
    assert "more than ktk loads into memory (1.95 KiB)" in err


def test_compressed_csv_files_are_read(tmp_path, capsys):
    TABLE.to_csv(tmp_path / "d.csv.gz", index=False)
    TABLE.to_csv(tmp_path / "d.csv.zip", index=False)
    for name in ("d.csv.gz", "d.csv.zip"):
        config = tmp_path / "config.yaml"
        config.write_text(f"data: {{source: csv, path: {name}, target: y}}\n")
        assert main(["validate", str(config)]) == 0
        assert "# data: 44 train / 8 validation / 8 test examples, 2 inputs, binary" in capsys.readouterr().out


# Keys a source does not read would do nothing: each is refused by name, before any data loads (the source
# need not exist on disk: keras.mnist is never downloaded here).
SOURCE_KEY_CASES = [
    ("{source: sklearn.iris, path: d.csv, target: y, features: [a]}",
     "data.path: source 'sklearn.iris' does not read path (the data file or folder, read by the csv, parquet, npz "
     "and images sources), nor target, features; expected only the keys that apply to sklearn.iris; received 'd.csv'. "
     "Valid choices: source, options, split, normalize."),
    ("{source: sklearn.iris, split: {column: s}}",
     "data.split.column: source 'sklearn.iris' does not read split.column (a column naming each row's split, read "
     "by the csv and parquet sources); expected only the keys that apply to sklearn.iris; received 's'. "
     "Valid choices: source, options, split, normalize."),
    ("{source: synthetic.moons, test_path: t.csv}",
     "data.test_path: source 'synthetic.moons' does not read test_path (a separate test file, read by the csv, "
     "parquet and npz sources); expected only the keys that apply to synthetic.moons; received 't.csv'. "
     "Valid choices: source, options, split, normalize."),
    ("{source: npz, path: d.npz, features: [a], split: {column: s}}",
     "data.features: source 'npz' does not read features (the feature columns, read by the csv and parquet "
     "sources), nor split.column; expected only the keys that apply to npz; received ['a']. "
     "Valid choices: source, path, test_path, split, normalize."),
    ("{source: keras.mnist, target: label, missing: drop}",
     "data.target: source 'keras.mnist' does not read target (the target column, read by the csv and parquet "
     "sources), nor missing; expected only the keys that apply to keras.mnist; received 'label'. "
     "Valid choices: source, options, split, normalize."),
    ("{source: synthetic.blobs, missing: drop}",
     "data.missing: source 'synthetic.blobs' does not read missing (what to do with missing values in a table, "
     "read by the csv and parquet sources); expected only the keys that apply to synthetic.blobs; received 'drop'. "
     "Valid choices: source, options, split, normalize."),
]


@pytest.mark.parametrize("data, message", SOURCE_KEY_CASES, ids=[c[0] for c in SOURCE_KEY_CASES])
def test_keys_the_source_does_not_read_are_refused(tmp_path, capsys, data, message):
    assert_data_section_refused(tmp_path, capsys, data, message)


@pytest.mark.parametrize("data", ["{source: sklearn.iris}", "{source: npz, path: d.npz}",
                                  "{source: csv, path: d.csv, target: y, split: {column: s}}"])
def test_a_resolved_config_with_its_defaults_written_out_is_valid_again(data):
    # a run directory's config.yaml holds every default (path: null, options: {}, missing: error...)
    config = load_config_text(f"name: t\ndata: {data}\n")
    assert parse_config(config.to_dict()).to_dict() == config.to_dict()


def load_config_text(text):
    from toolkit.config import parse_yaml

    return parse_config(parse_yaml(text))


@pytest.mark.parametrize("spelling", ["d.{ext}", "./d.{ext}", "sub/../d.{ext}", "{dir}/d.{ext}", "link.{ext}",
                                      "hardlink.{ext}", "copy.{ext}"])
@pytest.mark.parametrize("ext", ["csv", "npz"])
def test_the_training_file_as_test_file_is_refused_however_it_is_named(tmp_path, capsys, spelling, ext):
    (csv() if ext == "csv" else npz(x=X, y=Y))(tmp_path / f"d.{ext}")
    (tmp_path / "sub").mkdir()
    (tmp_path / f"link.{ext}").symlink_to(f"d.{ext}")
    os.link(tmp_path / f"d.{ext}", tmp_path / f"hardlink.{ext}")
    (tmp_path / f"copy.{ext}").write_bytes((tmp_path / f"d.{ext}").read_bytes())
    test_path = spelling.format(ext=ext, dir=tmp_path)
    config = tmp_path / "config.yaml"
    config.write_text(f"data: {{source: {ext}, path: d.{ext}, test_path: {test_path}"
                      + (", target: y}\n" if ext == "csv" else "}\n"))
    status, err = validate(config, capsys)
    what = "a copy of the training file" if spelling.startswith("copy") else "the training file"
    assert_refused(status, err, config, f"data.test_path: the test file is {what} (d.{ext}), so the test split "
                   "would be training data; expected a file of held-out examples, or no test_path (then split.test "
                   f"holds out part of the training file); received '{test_path}'.")


def test_a_split_column_may_not_name_test_rows_when_a_test_file_gives_the_test_split(tmp_path, capsys):
    parts = ["train"] * 40 + ["validation"] * 10 + ["test"] * 10
    csv(TABLE.assign(s=parts))(tmp_path / "d.csv")
    csv()(tmp_path / "t.csv")
    config = tmp_path / "config.yaml"
    config.write_text("data: {source: csv, path: d.csv, test_path: t.csv, target: y, split: {column: s}}\n")
    status, err = validate(config, capsys)
    assert_refused(status, err, config, "data.split.column: the split column 's' names 10 test rows, and "
                   "data.test_path gives the test split too; expected only train and validation rows in the split "
                   "column when test_path is set (or no test_path); received 's'.")
    csv(TABLE.assign(s=["train"] * 50 + ["validation"] * 10))(tmp_path / "d.csv")  # no test rows: nothing is lost
    assert main(["validate", str(config)]) == 0
    assert "# data: 50 train / 10 validation / 60 test examples" in capsys.readouterr().out


SPLIT_FRACTION_CASES = [
    ("{source: sklearn.iris, split: {train: 0.98, validation: 0.01, test: 0.01}}",
     "data.split.validation: a stratified split leaves the validation split empty: validation: 0.01 gives each of "
     "the 3 classes of 'y' less than one example (0.01 of the largest class, 'setosa', with 50 examples, is 0.5, "
     "which rounds to 0); expected a validation fraction above 0.01, classes with more examples (is data.target "
     "the right column?), or data.split.stratify: false; received 0.01."),
    ("{source: sklearn.wine, split: {train: 0.5, validation: 0.495, test: 0.005}}",
     "data.split.test: a stratified split leaves the test split empty: test: 0.005 gives each of the 3 classes of "
     "'y' less than one example (0.005 of the largest class, 'class_1', with 71 examples, is 0.35, which rounds to 0); "
     "expected a test fraction above 0.00704, classes with more examples (is data.target the right column?), or "
     "data.split.stratify: false; received 0.005."),
]


@pytest.mark.parametrize("data, message", SPLIT_FRACTION_CASES, ids=[c[0] for c in SPLIT_FRACTION_CASES])
def test_a_fraction_too_small_for_every_class_is_named(tmp_path, capsys, data, message):
    assert_data_section_refused(tmp_path, capsys, data, message)


def test_a_stratified_split_far_from_its_fractions_warns_once_with_the_sizes(tmp_path, capsys):
    config = tmp_path / "config.yaml"
    config.write_text("task: multiclass\ndata: {source: sklearn.diabetes}\n")
    assert main(["validate", str(config)]) == 0
    captured = capsys.readouterr()
    assert "# data: 384 train / 29 validation / 29 test examples" in captured.out
    assert captured.err == (
        "ktk: warning: task: multiclass, but the target 'y' holds 214 distinct numbers in 442 examples (about 2.1 of "
        "each): is it a regression target (task: regression)?\n"
        "ktk: warning: data.split.stratify: 185 of 214 classes of 'y' have too few examples to be split (fewer than "
        "4), so they stay whole in the training split: 384 train / 29 validation / 29 test examples instead of about "
        "309 / 66 / 66; data.split.stratify: false gives the fractions asked for\n")
    # a few rare classes in a table: the same warning, naming them; without stratification, no warning
    rare = pd.DataFrame({"a": RNG.normal(size=100), "c": ["big"] * 60 + [f"r{i}" for i in range(40)]})
    rare.to_csv(tmp_path / "rare.csv", index=False)
    config.write_text("data: {source: csv, path: rare.csv, target: c}\n")
    assert main(["validate", str(config)]) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ktk: warning: data.split.stratify: 40 of 41 classes of 'c' have "
                                                   "too few examples to be split (fewer than 4)"), err
    config.write_text("data: {source: csv, path: rare.csv, target: c, split: {stratify: false}}\n")
    assert main(["validate", str(config)]) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("source", ["sklearn.iris", "sklearn.digits", "sklearn.wine", "synthetic.blobs"])
def test_well_balanced_data_gives_no_warning(tmp_path, capsys, source):
    config = tmp_path / "config.yaml"
    config.write_text(f"data: {{source: {source}}}\n")
    assert main(["validate", str(config)]) == 0
    assert capsys.readouterr().err == ""


VALID_ARRAYS = {
    "float16": RNG.normal(size=(60, 3)).astype(np.float16),
    "float16-extremes": np.tile(np.array([65504, -65504, 0], dtype=np.float16), (60, 1)),
    "float32-extremes": np.tile(np.array([3.4e38, -3.4e38, 0], dtype=np.float32), (60, 1)),
    "int64-large": RNG.integers(-2**63, 2**63 - 1, (60, 3), dtype=np.int64),
    "uint64-large": RNG.integers(0, 2**64 - 1, (60, 3), dtype=np.uint64),
    "uint8-images": RNG.integers(0, 255, (60, 4, 4, 1), dtype=np.uint8),
    "int8": RNG.integers(-128, 127, (60, 3), dtype=np.int8),
    "bool": RNG.random((60, 3)) > 0.5,
    "longdouble": RNG.normal(size=(60, 3)).astype(np.longdouble),
}


@pytest.mark.parametrize("normalize", ["standard", "minmax", "none"])
@pytest.mark.parametrize("dtype", list(VALID_ARRAYS))
def test_valid_data_of_any_dtype_loads_without_python_warnings(tmp_path, capsys, dtype, normalize):
    y = RNG.integers(0, 2, 60)
    np.savez(tmp_path / "x.npz", x=VALID_ARRAYS[dtype], y=y.astype(np.float16) if dtype == "float16" else y)
    config = tmp_path / "config.yaml"
    config.write_text(f"data: {{source: npz, path: x.npz, normalize: {normalize}}}\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a stray RuntimeWarning ("overflow encountered in cast") fails here
        assert main(["validate", str(config)]) == 0
    assert capsys.readouterr().err == ""
