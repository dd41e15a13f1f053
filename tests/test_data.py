"""Data sources, split guarantees (disjoint, stratified, reproducible) and train-only normalization."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from toolkit.config import parse_config
from toolkit.data import SKLEARN_DATASETS, load_data, split_indices
from toolkit.errors import UserError


def config(data, task="auto", seed=0, source_dir=None):
    source = str(source_dir / "c.yaml") if source_dir else None
    return parse_config({"name": "t", "seed": seed, "task": task, "data": data}, source=source)


def rows(x):
    return {tuple(np.round(r, 5)) for r in x.reshape(len(x), -1)}


@pytest.mark.parametrize("name", ["digits", "iris", "wine", "breast_cancer", "diabetes"])
def test_bundled_readers_equal_sklearn_loaders(name):
    import sklearn.datasets

    ours = SKLEARN_DATASETS[name]({})
    theirs = getattr(sklearn.datasets, f"load_{name}")(**({"scaled": False} if name == "diabetes" else {}))
    np.testing.assert_array_equal(ours.x, theirs.data)
    np.testing.assert_array_equal(ours.y, theirs.target)
    assert ours.feature_names == list(theirs.feature_names)


def test_loading_bundled_data_does_not_import_sklearn_or_tensorflow():
    code = ("import sys; from toolkit.config import parse_config; from toolkit.data import load_data; "
            "load_data(parse_config({'name': 'x', 'data': {'source': 'sklearn.digits'}})); "
            "print('sklearn' in sys.modules, 'tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_digits_split_sizes_disjoint_and_stratified():
    data = load_data(config({"source": "sklearn.digits"}))
    assert data.task == "multiclass" and data.num_classes == 10 and data.input_shape == (64,)
    sizes = data.sizes()
    assert sum(sizes.values()) == 1797
    assert abs(sizes["test"] / 1797 - 0.15) < 0.01 and abs(sizes["validation"] / 1797 - 0.15) < 0.01
    # disjoint: no example appears in two splits (digits has a few duplicate images, so compare indices)
    train, val, test = split_indices(1797, (0.7, 0.15, 0.15), 0, SKLEARN_DATASETS["digits"]({}).y)
    assert not (set(train) & set(val)) and not (set(train) & set(test)) and not (set(val) & set(test))
    assert len(set(train) | set(val) | set(test)) == 1797
    # stratified: every class keeps its share in every split
    overall = np.bincount(data.y_train, minlength=10) / len(data.y_train)
    for y in (data.y_val, data.y_test):
        assert np.abs(np.bincount(y, minlength=10) / len(y) - overall).max() < 0.02


def test_split_is_reproducible_and_depends_on_seed():
    a = load_data(config({"source": "sklearn.iris"}, seed=1))
    b = load_data(config({"source": "sklearn.iris"}, seed=1))
    c = load_data(config({"source": "sklearn.iris"}, seed=2))
    np.testing.assert_array_equal(a.x_test, b.x_test)
    assert not np.array_equal(a.x_test, c.x_test)


def test_standard_normalization_uses_training_statistics_only():
    data = load_data(config({"source": "sklearn.wine"}))
    np.testing.assert_allclose(data.x_train.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(data.x_train.std(axis=0), 1, atol=1e-4)
    assert np.abs(data.x_test.mean(axis=0)).max() > 1e-3  # the test split was not used to fit
    raw = load_data(config({"source": "sklearn.wine", "normalize": "none"}))
    np.testing.assert_allclose(data.x_test, (raw.x_test - raw.x_train.mean(0)) / raw.x_train.std(0), rtol=1e-4,
                               atol=1e-4)


def test_minmax_normalization():
    data = load_data(config({"source": "sklearn.iris", "normalize": "minmax"}))
    np.testing.assert_allclose(data.x_train.min(axis=0), 0, atol=1e-6)
    np.testing.assert_allclose(data.x_train.max(axis=0), 1, atol=1e-6)


def test_regression_and_binary_tasks_are_inferred():
    assert load_data(config({"source": "sklearn.diabetes"})).task == "regression"
    assert load_data(config({"source": "sklearn.breast_cancer"})).task == "binary"
    assert load_data(config({"source": "synthetic.regression", "options": {"n_samples": 60}})).task == "regression"


def test_synthetic_options_and_seed():
    data = load_data(config({"source": "synthetic.moons", "options": {"n_samples": 200, "noise": 0.1}}))
    assert sum(data.sizes().values()) == 200 and data.task == "binary" and data.input_shape == (2,)


def test_synthetic_unknown_option():
    with pytest.raises(UserError) as info:
        load_data(config({"source": "synthetic.moons", "options": {"nosie": 0.1}}))
    assert str(info.value).startswith("data.options.nosie: expected an option of make_moons; received 'nosie'.")
    assert "Did you mean 'noise'?" in str(info.value)


def test_unknown_source_suggests():
    with pytest.raises(UserError) as info:
        load_data(config({"source": "sklearn.digitz"}))
    assert "Did you mean 'sklearn.digits'?" in str(info.value)


def test_csv_with_categorical_and_text_target(tmp_path):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({
        "size": rng.normal(size=90), "color": rng.choice(["red", "green", "blue"], 90),
        "label": rng.choice(["cat", "dog"], 90),
    })
    frame.to_csv(tmp_path / "d.csv", index=False)
    data = load_data(config({"source": "csv", "path": "d.csv", "target": "label"}, source_dir=tmp_path))
    assert data.task == "binary" and data.class_names == ["cat", "dog"]
    assert data.feature_names == ["size", "color_blue", "color_green", "color_red"]


def test_csv_missing_target_column(tmp_path):
    pd.DataFrame({"a": [1, 2], "b": [0, 1]}).to_csv(tmp_path / "d.csv", index=False)
    with pytest.raises(UserError) as info:
        load_data(config({"source": "csv", "path": "d.csv", "target": "lable"}, source_dir=tmp_path))
    assert str(info.value) == "data.target: column not found in d.csv; received 'lable'. Valid choices: a, b."


def test_csv_missing_values_are_reported(tmp_path):
    pd.DataFrame({"a": [1.0, None, 3.0, 4.0], "y": [0, 1, 0, 1]}).to_csv(tmp_path / "d.csv", index=False)
    with pytest.raises(UserError, match=r"^data.path: missing values in column\(s\) 'a' \(data row 2\) of d.csv;"):
        load_data(config({"source": "csv", "path": "d.csv", "target": "y"}, source_dir=tmp_path))


def test_csv_non_numeric_value_in_numeric_column(tmp_path):
    values = [str(v) for v in range(20)]
    values[7] = "abc"
    pd.DataFrame({"a": values, "y": [0, 1] * 10}).to_csv(tmp_path / "d.csv", index=False)
    with pytest.raises(UserError) as info:
        load_data(config({"source": "csv", "path": "d.csv", "target": "y"}, source_dir=tmp_path))
    assert str(info.value) == ("data.path: non-numeric value in numeric feature column 'a' of d.csv at data row 8; "
                               "expected a number; received 'abc'.")


def test_missing_file(tmp_path):
    with pytest.raises(UserError) as info:
        load_data(config({"source": "csv", "path": "nope.csv", "target": "y"}, source_dir=tmp_path))
    assert str(info.value) == "data.path: file not found; received 'nope.csv'."


def test_csv_split_column_and_separate_test_file(tmp_path):
    n = 40
    frame = pd.DataFrame({"a": np.arange(n, dtype=float), "y": [0, 1] * (n // 2),
                          "part": ["train"] * 30 + ["validation"] * 5 + ["test"] * 5})
    frame.to_csv(tmp_path / "d.csv", index=False)
    data = load_data(config({"source": "csv", "path": "d.csv", "target": "y", "split": {"column": "part"},
                             "normalize": "none"}, source_dir=tmp_path))
    assert data.sizes() == {"train": 30, "validation": 5, "test": 5}
    assert rows(data.x_test) == {(float(v),) for v in range(35, 40)}
    frame.drop(columns="part").iloc[:30].to_csv(tmp_path / "train.csv", index=False)
    frame.drop(columns="part").iloc[30:].to_csv(tmp_path / "test.csv", index=False)
    data = load_data(config({"source": "csv", "path": "train.csv", "test_path": "test.csv", "target": "y",
                             "normalize": "none"}, source_dir=tmp_path))
    assert data.sizes()["test"] == 10 and rows(data.x_test) == {(float(v),) for v in range(30, 40)}
    assert not rows(data.x_train) & rows(data.x_test)


def test_parquet(tmp_path):
    pd.DataFrame({"a": np.arange(30.0), "y": np.arange(30.0) * 1.5}).to_parquet(tmp_path / "d.parquet")
    data = load_data(config({"source": "parquet", "path": "d.parquet", "target": "y"}, source_dir=tmp_path))
    assert data.task == "regression" and sum(data.sizes().values()) == 30


def test_npz(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.normal(size=(50, 3, 2)), y=rng.integers(0, 3, 50))
    data = load_data(config({"source": "npz", "path": "d.npz"}, source_dir=tmp_path))
    assert data.input_shape == (3, 2) and data.task == "multiclass"
    np.savez(tmp_path / "bad.npz", features=np.zeros((3, 2)))
    with pytest.raises(UserError, match="array 'x' not found in the npz file"):
        load_data(config({"source": "npz", "path": "bad.npz"}, source_dir=tmp_path))


def test_empty_split_is_an_error():
    with pytest.raises(UserError) as info:
        load_data(config({"source": "synthetic.moons", "options": {"n_samples": 4},
                          "split": {"train": 0.9, "validation": 0.05, "test": 0.05}}))
    assert "split is empty (4 examples in all)" in str(info.value)


def test_statistics_of_large_values_do_not_overflow(tmp_path):
    # 1e20 squared overflows float32: the statistics are computed before the cast
    np.savez(tmp_path / "d.npz", x=np.arange(60.0).reshape(30, 2) * 1e20, y=np.arange(30.0) + 0.5)
    data = load_data(config({"source": "npz", "path": "d.npz"}, source_dir=tmp_path))
    assert np.isfinite(data.x_train).all() and np.isfinite(data.normalization["scale"]).all()
    np.testing.assert_allclose(data.x_train.std(axis=0), 1, atol=1e-4)


def test_generator_option_lists_are_tuples_and_sizes_bounded():
    data = load_data(config({"source": "synthetic.moons", "options": {"n_samples": [40, 60]}}))
    assert sum(data.sizes().values()) == 100
    with pytest.raises(UserError) as info:
        load_data(config({"source": "synthetic.regression", "options": {"n_samples": 2_000_000}}))
    assert str(info.value) == ("data.options.n_samples: make_regression would generate 202,000,000 values, more "
                               "than ktk holds in memory (100,000,000); expected fewer samples or features; "
                               "received 2000000.")


def test_text_and_numeric_columns_of_a_test_file_are_encoded_like_the_training_file(tmp_path):
    train = pd.DataFrame({"a": [1.0, 2.0, 3.0, 4.0] * 10, "color": ["red", "blue"] * 20, "y": ["no", "yes"] * 20})
    test = pd.DataFrame({"color": ["green", "red"], "a": [5.0, 6.0], "y": ["yes", "no"], "extra": [0, 0]})
    train.to_csv(tmp_path / "train.csv", index=False)
    test.to_csv(tmp_path / "test.csv", index=False)
    data = load_data(config({"source": "csv", "path": "train.csv", "test_path": "test.csv", "target": "y",
                             "normalize": "none"}, source_dir=tmp_path))
    # "green" is only in the test file: no feature of its own, it encodes as none of the training categories,
    # as the saved model encodes a value it never saw; labels.json lists the training split's categories only
    assert data.feature_names == ["a", "color_blue", "color_red"]
    np.testing.assert_array_equal(data.x_test, [[5, 0, 0], [6, 0, 1]])
    assert list(data.y_test) == [1, 0] and data.class_names == ["no", "yes"]
    assert [(c.name, c.categories) for c in data.inputs.columns] == [("a", None), ("color", ("blue", "red"))]
    assert list(data.rows["test"]) == [0, 1]


@pytest.mark.slow
def test_keras_dataset_options_are_checked_by_its_signature():
    with pytest.raises(UserError) as info:
        load_data(config({"source": "keras.mnist", "options": {"pth": "mnist.npz"}}))
    assert str(info.value) == ("data.options.pth: expected an option of keras.datasets.mnist.load_data; received "
                               "'pth'. Valid choices: path. Did you mean 'path'?")


@pytest.mark.slow
def test_keras_dataset_offline_gives_clear_message(monkeypatch):
    import keras

    def offline(**kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(keras.datasets.mnist, "load_data", offline)
    with pytest.raises(UserError) as info:
        load_data(config({"source": "keras.mnist"}))
    assert str(info.value) == ("data.source: could not load keras.mnist (OSError: network is unreachable); "
                               "it is downloaded on first use, so this needs network access once.")


def test_rows_named_in_messages_are_rows_of_the_file_after_dropping_missing_ones(tmp_path):
    pd.DataFrame({"a": [1.0, None, 2.0, None, float("inf")] * 4, "y": [0, 1] * 10}).to_csv(tmp_path / "d.csv",
                                                                                          index=False)
    with pytest.raises(UserError) as info:
        load_data(config({"source": "csv", "path": "d.csv", "target": "y", "missing": "drop"}, source_dir=tmp_path))
    assert str(info.value) == ("data.path: column 'a' of d.csv has infinite values in data rows 5, 10, 15, 20; "
                               "expected finite numbers; received inf.")

