"""Models that take raw inputs: labels.json, `ktk predict`, `ktk export` and toolkit.load_run.

Four runs are trained once (a few epochs each): digits (numeric array), a wine CSV with a text feature and
text labels, diabetes (regression) and an npz file. Predicting their raw test rows must reproduce the test
loss and accuracy that metrics.json holds, through `ktk predict` and through plain keras.saving.load_model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from helpers import ktk

pytestmark = pytest.mark.slow

EPOCHS = {"epochs": 3, "batch_size": 32}


def _wine_csv(path: Path) -> None:
    """sklearn's wine with a text feature (a region derived from the alcohol) and text class labels."""
    import pandas as pd
    from sklearn.datasets import load_wine

    bunch = load_wine()
    frame = pd.DataFrame(bunch.data, columns=bunch.feature_names)
    frame["region"] = np.where(frame["alcohol"] > 13.5, "north", np.where(frame["alcohol"] > 12.5, "coast", "south"))
    frame["cultivar"] = np.asarray(["barolo", "grignolino", "barbera"])[bunch.target]
    frame.to_csv(path, index=False)


def _npz(path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 6)) * [1, 10, 100, 0.1, 5, 2] + [0, 50, -3, 1, 0, 9]
    y = (x[:, 0] + (x[:, 3] - 1) * 10 > 0).astype(np.int64)
    np.savez(path, x=x, y=y)


SOURCES = {
    "digits": {"source": "sklearn.digits"},
    "wine": {"source": "csv", "path": "wine.csv", "target": "cultivar"},
    "diabetes": {"source": "sklearn.diabetes"},
    "npz": {"source": "npz", "path": "points.npz", "normalize": "minmax"},
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """name -> (run directory, config, test rows as a raw data frame (or array), raw test target)."""
    import pandas as pd
    from sklearn.datasets import load_diabetes, load_digits

    from toolkit.config import parse_config
    from toolkit.data import load_data
    from toolkit.runs import run

    root = tmp_path_factory.mktemp("deploy")
    _wine_csv(root / "wine.csv")
    _npz(root / "points.npz")
    out = {}
    for name, data in SOURCES.items():
        config = parse_config({"name": name, "data": data, "model": {"hidden": [16]}, "training": EPOCHS},
                              source=str(root / f"{name}.yaml"))
        result = run(config, out_dir=root / name, verbose=0)
        rows = load_data(config).rows["test"]
        if name == "digits":
            bunch = load_digits()
            raw, target = bunch.data[rows], bunch.target[rows]
        elif name == "diabetes":
            bunch = load_diabetes(scaled=False)
            raw, target = bunch.data[rows], bunch.target[rows]
        elif name == "wine":
            frame = pd.read_csv(root / "wine.csv").iloc[rows]
            raw, target = frame.drop(columns=["cultivar"]), frame["cultivar"].to_numpy()
        else:
            with np.load(root / "points.npz") as archive:
                raw, target = archive["x"][rows], archive["y"][rows]
        out[name] = (result.run_dir, config, raw, target)
    return out


def _input_file(directory: Path, name: str, raw, target, labels: dict) -> Path:
    """The raw test rows (with the target) as the file a user would give ktk predict."""
    import pandas as pd

    if name == "npz":
        path = directory / f"{name}-test.npz"
        np.savez(path, x=raw, y=target)
        return path
    frame = raw.copy() if isinstance(raw, pd.DataFrame) else pd.DataFrame(raw, columns=labels["inputs"]["features"])
    frame[labels["target"]] = target
    path = directory / f"{name}-test.csv"
    frame.to_csv(path, index=False)
    return path


@pytest.mark.parametrize("name", list(SOURCES))
def test_predict_on_raw_test_rows_reproduces_the_test_metrics(trained, tmp_path, name):
    import keras
    import pandas as pd

    from toolkit.deploy.predict import predict_file

    run_dir, _, raw, target = trained[name]
    labels = json.loads((run_dir / "labels.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    source = _input_file(tmp_path, name, raw, target, labels)
    result = predict_file(run_dir, source, output=tmp_path / "out.csv", evaluate=True, chunk_rows=7)
    evaluation = result["evaluation"]
    assert evaluation["rows"] == len(target) == result["rows"]
    for key, value in metrics["test"].items():
        assert evaluation[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    written = pd.read_csv(tmp_path / "out.csv", dtype={"prediction": str if labels["class_names"] else float})
    assert list(written["row"]) == list(range(len(target)))

    # plain Keras on the raw rows gives the same answers as ktk predict
    model = keras.saving.load_model(run_dir / "model.keras")
    if isinstance(raw, pd.DataFrame):
        import tensorflow as tf

        outputs = model.predict({c: tf.constant(raw[c].to_numpy()) for c in raw.columns}, verbose=0)
    else:
        outputs = model.predict(raw, verbose=0)
    if labels["task"] == "regression":
        np.testing.assert_allclose(written["prediction"], outputs[:, 0], rtol=1e-5, atol=1e-5)
    elif labels["task"] == "binary":
        np.testing.assert_allclose(written[f"p_{labels['class_names'][1]}"], outputs[:, 0], atol=1e-6)
    else:
        expected = np.asarray(labels["class_names"])[outputs.argmax(axis=1)]
        assert list(written["prediction"]) == [str(e) for e in expected]
        accuracy = float(np.mean(written["prediction"].astype(str).to_numpy() == np.asarray(
            [str(labels["class_names"][t]) if not isinstance(t, str) else t for t in target])))
        assert accuracy == pytest.approx(metrics["test"]["accuracy"], abs=1e-6)


def test_labels_json_describes_inputs_and_classes(trained):
    wine = json.loads((trained["wine"][0] / "labels.json").read_text())
    assert wine["task"] == "multiclass" and wine["target"] == "cultivar"
    assert wine["class_names"] == ["barbera", "barolo", "grignolino"]
    columns = {c["name"]: c for c in wine["inputs"]["columns"]}
    assert wine["inputs"]["kind"] == "columns" and columns["region"]["categories"] == ["coast", "north", "south"]
    assert columns["alcohol"]["dtype"] == "float64" and "categories" not in columns["alcohol"]
    digits = json.loads((trained["digits"][0] / "labels.json").read_text())
    assert digits["inputs"] == {"kind": "array", "shape": [64], "dtype": "float64",
                                "features": [f"pixel_{r}_{c}" for r in range(8) for c in range(8)]}
    assert json.loads((trained["diabetes"][0] / "labels.json").read_text())["class_names"] is None


def test_load_run_predicts_frames_arrays_and_dicts(trained):
    import toolkit

    run_dir, config, raw, target = trained["wine"]
    loaded = toolkit.load_run(run_dir)
    assert loaded.class_names == ["barbera", "barolo", "grignolino"]
    assert loaded.metrics["test"]["accuracy"] >= 0 and loaded.config.name == "wine"
    table = loaded.predict(raw)
    assert list(table.columns) == ["row", "prediction", "p_barbera", "p_barolo", "p_grignolino"]
    assert list(table["row"]) == list(raw.index)
    np.testing.assert_allclose(table[["p_barbera", "p_barolo", "p_grignolino"]].sum(axis=1), 1.0, rtol=1e-5)
    as_dict = loaded.predict({c: raw[c].to_numpy() for c in raw.columns})
    np.testing.assert_allclose(as_dict["p_barolo"], table["p_barolo"].to_numpy(), rtol=1e-6)

    digits = toolkit.load_run(trained["digits"][0])
    one = digits.predict(trained["digits"][2][:3])
    assert len(one) == 3 and set(one["prediction"]) <= set(digits.class_names)


def test_a_sweep_directory_predicts_with_its_best_run(sweep, tmp_path):
    import pandas as pd

    frame = pd.DataFrame({"x0": [0.1, 1.5, -0.5], "x1": [0.2, -0.4, 0.9]})
    labels = json.loads((sweep / "best" / "labels.json").read_text())
    frame.columns = labels["inputs"]["features"] or frame.columns
    frame.to_csv(tmp_path / "in.csv", index=False)
    result = ktk("predict", sweep, tmp_path / "in.csv", "--format", "json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [r["row"] for r in rows] == [0, 1, 2] and all(r["prediction"] in labels["class_names"] for r in rows)


def test_predict_bad_inputs_get_one_message(trained, tmp_path):
    """Every bad input: exit 2 and one ktk: error line, never a traceback; nothing is written."""
    wine_dir = trained["wine"][0]
    raw = trained["wine"][2]
    good = raw.head(5)

    def write(name, frame):
        path = tmp_path / name
        frame.to_csv(path, index=False)
        return path

    cases = {
        "missing column": (write("missing.csv", good.drop(columns=["malic_acid"]).rename(columns={"ash": "ashes"})),
                           "missing from", "Did you mean"),
        "text in numbers": (write("text.csv", good.assign(alcohol=["13.2", "x13", "12", "11", "12"])),
                            "row 1, column 'alcohol'", "not a number"),
        "missing value": (write("nan.csv", good.assign(ash=[1.0, None, 2.0, 2.0, 2.0])), "row 1, column 'ash'",
                          "missing value"),
        "unseen category": (write("unseen.csv", good.assign(region=["north", "mars", "south", "coast", "north"])),
                            "'mars' never appeared", "Valid choices: coast, north, south"),
        "header only": (write("empty.csv", good.iloc[:0]), "no data rows", ""),
    }
    (tmp_path / "zero.csv").write_text("")
    cases["empty file"] = (tmp_path / "zero.csv", "is empty", "")
    for what, (path, first, second) in cases.items():
        result = ktk("predict", wine_dir, path, "--output", tmp_path / f"{what}.out.csv")
        assert result.returncode == 2, (what, result.stderr)
        assert result.stderr.startswith("ktk: error: ") and result.stderr.count("\n") == 1, (what, result.stderr)
        assert first in result.stderr and second in result.stderr, (what, result.stderr)
        assert "Traceback" not in result.stderr
        assert not (tmp_path / f"{what}.out.csv").exists()
        assert not list(tmp_path.glob(".*.tmp"))

    digits_dir = trained["digits"][0]
    np.savez(tmp_path / "bad.npz", x=np.zeros((3, 8, 8)))
    result = ktk("predict", digits_dir, tmp_path / "bad.npz")
    assert result.returncode == 2 and "expected shape (n, 64)" in result.stderr, result.stderr
    result = ktk("predict", wine_dir, tmp_path / "bad.npz")
    assert result.returncode == 2 and "npz file does not have" in result.stderr, result.stderr

    # extra columns: one note, and the predictions as usual
    result = ktk("predict", wine_dir, write("extra.csv", good.assign(notes="x", id=range(5))))
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("note: ignored 2 column(s)") == 1 and len(result.stdout.splitlines()) == 6

    # an existing output file is never replaced; an old run without labels.json gets a message
    (tmp_path / "taken.csv").write_text("mine")
    result = ktk("predict", wine_dir, write("ok.csv", good), "--output", tmp_path / "taken.csv")
    assert result.returncode == 2 and (tmp_path / "taken.csv").read_text() == "mine"
    old = tmp_path / "old-run"
    shutil.copytree(wine_dir, old)
    (old / "labels.json").unlink()
    for command in (["predict", old, tmp_path / "ok.csv"], ["export", old, "--format", "saved_model", "--out",
                                                              tmp_path / "old-export"]):
        result = ktk(*command)
        assert result.returncode == 2 and "older ktk" in result.stderr and "Traceback" not in result.stderr


def test_predict_streams_in_chunks_with_the_same_answers(trained, tmp_path):
    import pandas as pd

    from toolkit.deploy.predict import predict_file

    run_dir, _, raw, target = trained["digits"]
    labels = json.loads((run_dir / "labels.json").read_text())
    source = _input_file(tmp_path, "digits", raw, target, labels)
    predict_file(run_dir, source, output=tmp_path / "one.parquet", chunk_rows=100_000)
    predict_file(run_dir, source, output=tmp_path / "many.parquet", chunk_rows=5, batch_size=3)
    one, many = pd.read_parquet(tmp_path / "one.parquet"), pd.read_parquet(tmp_path / "many.parquet")
    pd.testing.assert_frame_equal(one, many, rtol=1e-6)
    pd.read_csv(source).to_parquet(tmp_path / "rows.parquet")  # parquet input, read in row batches
    predict_file(run_dir, tmp_path / "rows.parquet", output=tmp_path / "from-parquet.json", chunk_rows=50)
    from_parquet = pd.DataFrame(json.loads((tmp_path / "from-parquet.json").read_text()))
    assert list(from_parquet["prediction"].astype(str)) == list(one["prediction"].astype(str))


def test_export_saved_model_serves_raw_rows(trained, tmp_path):
    import keras
    import tensorflow as tf

    for name in ("wine", "digits"):
        run_dir, _, raw, _ = trained[name]
        result = ktk("export", run_dir, "--format", "saved_model", "--out", tmp_path / name)
        assert result.returncode == 0, result.stderr
        assert (tmp_path / name / "labels.json").is_file()
        served = tf.saved_model.load(str(tmp_path / name))
        model = keras.saving.load_model(run_dir / "model.keras")
        if name == "wine":
            feed = {c: tf.constant(raw[c].to_numpy().reshape(-1, 1)) for c in raw.columns}
            feed = {c: tf.cast(v, tf.float64) if v.dtype != tf.string else v for c, v in feed.items()}
            expected = model.predict({c: tf.constant(raw[c].to_numpy()) for c in raw.columns}, verbose=0)
        else:
            feed = tf.constant(raw, dtype=tf.float64)
            expected = model.predict(raw, verbose=0)
        assert np.max(np.abs(served.serve(feed).numpy() - expected)) < 1e-5
    again = ktk("export", trained["digits"][0], "--format", "saved_model", "--out", tmp_path / "digits")
    assert again.returncode == 2 and "already exists" in again.stderr


def test_export_litert_and_a_missing_converter(trained, tmp_path):
    import importlib.util

    run_dir = trained["npz"][0]
    result = ktk("export", run_dir, "--format", "litert", "--out", tmp_path / "model.tflite")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "model.tflite").stat().st_size > 0 and (tmp_path / "model.tflite.labels.json").is_file()
    if importlib.util.find_spec("tf2onnx") is None:
        result = ktk("export", run_dir, "--format", "onnx", "--out", tmp_path / "model.onnx")
        assert result.returncode == 2 and "pip install tf2onnx" in result.stderr
        assert not (tmp_path / "model.onnx").exists()


def test_the_readme_snippet_runs(trained, tmp_path, capsys):
    """README's "Using a trained model" Python block, run on a real digits run."""
    from helpers import REPO

    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Using a trained model"):]
    block = section[section.index("```python") + len("```python"):]
    block = block[:block.index("```")]
    run_dir, _, raw, _ = trained["digits"]
    np.savetxt(tmp_path / "rows.csv", raw[:4], delimiter=",")
    code = block.replace("runs/digits-mlp/20261206-101500", str(run_dir)).replace("new_digits.csv",
                                                                                  str(tmp_path / "rows.csv"))
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert len(namespace["probabilities"]) == 4
    np.testing.assert_allclose(namespace["probabilities"].max(axis=1),
                               namespace["run"].predict(namespace["rows"])[
                                   [f"p_{c}" for c in namespace["run"].class_names]].max(axis=1), rtol=1e-5)
