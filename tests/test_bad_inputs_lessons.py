"""Bad inputs to `ktk diagnose`, `ktk gradcheck` and `ktk experiment`, through the real command line in one process.

Every case exits with status 2 and one `ktk: error:` line naming what is wrong, never a traceback, and
loses nothing. Run directories are built by hand; nothing here trains or imports TensorFlow.
"""

import io
import json
import math
import os
import zipfile

import pytest

from toolkit.cli import main
from toolkit.errors import UserError
from toolkit.lessons.diagnosis import diagnose, gradient_notes
from toolkit.lessons.experiments import lesson_rows, run_suite, suite_configs
from toolkit.lessons.gradcheck import GradcheckResult, LayerCheck, default_max_parameters, spread
from toolkit.lessons.run_files import MAX_CSV_BYTES, MAX_JSON_BYTES
from toolkit.results import (BEST_DIR, CONFIG_FILE, GRADIENTS_FILE, HISTORY_FILE, METRICS_FILE, MODEL_FILE,
                             SWEEP_MARKER, TRIALS_FILE)

from test_diagnosis import make_run

GOOD_HISTORY = [(0.9, 0.95), (0.7, 0.8), (0.5, 0.7)]
GRADIENTS_HEADER = "epoch,layer,grad_norm,weight_norm\n"


def fails(capsys, *argv):
    """Runs ktk with `argv` in this process; asserts one user-error message and exit 2; returns the message."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as stop:  # argparse's own refusals (bad flag values) exit from inside the parser
        code = stop.code
    out, err = capsys.readouterr()
    assert code == 2, (argv, out, err)
    assert "Traceback" not in err and "Traceback" not in out
    lines = [line for line in err.splitlines() if line.startswith("ktk: error:")]
    assert len(lines) == 1, err
    return lines[0]


def succeeds(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def strict_json(text):
    """JSON as the standard defines it: NaN and Infinity are not JSON."""
    def refuse(name):
        raise ValueError(f"{name} in JSON output")
    return json.loads(text, parse_constant=refuse)


# --------------------------------------------------------------------------------- ktk diagnose


DAMAGED_METRICS = {
    "infinity": (b'{"task": "binary", "train": {"loss": Infinity, "accuracy": 0.9}}',
                 "unreadable JSON (Infinity is not JSON (ktk writes null for a value that is not finite))."),
    "nan": (b'{"train": {"accuracy": NaN}}',
            "unreadable JSON (NaN is not JSON (ktk writes null for a value that is not finite))."),
    "1e400": (b'{"train": {"accuracy": 1e400}}', "train.accuracy: expected a finite number or null; received inf."),
    "nested array": (b"[" * 10000 + b"]" * 10000, "unreadable JSON (nested too deeply)."),
    "nested object": (b'{"train": ' + b'{"a": ' * 10000 + b"1" + b"}" * 10001,
                      "unreadable JSON (nested too deeply)."),
    "a list": (b"[1, 2]", "expected a JSON object; received 'list'."),
    "a string": (b'"metrics"', "expected a JSON object; received 'str'."),
    "empty": (b"", "unreadable JSON (Expecting value at line 1)."),
    "truncated": (b'{"train": {"accuracy": 0.9', "unreadable JSON (Expecting ',' delimiter at line 1)."),
    "5000 digits": (b'{"train": {"accuracy": ' + b"1" * 5000 + b"}}", "unreadable JSON (Exceeds the limit"),
    "not utf-8": (b'{"task": "caf\xe9"}', "not UTF-8 text (byte 13)."),
    "no train": (b'{"validation": {"accuracy": 0.9}}',
                 "no training results; expected a \"train\" section mapping metric names to numbers; received null."),
    "train a list": (b'{"train": [0.9]}', "no training results; expected a \"train\" section mapping metric names to "
                                          "numbers; received 'list'."),
    "text value": (b'{"train": {"accuracy": "0.9"}}', "train.accuracy: expected a finite number or null; "
                                                      "received '0.9'."),
    "bool value": (b'{"train": {"accuracy": true}}', "train.accuracy: expected a finite number or null; "
                                                     "received true."),
    "nested value": (b'{"train": {"accuracy": {"a": [1]}}}', "train.accuracy: expected a finite number or null; "
                                                            "received 'dict'."),
    "huge integer": (b'{"train": {"accuracy": 1' + b"0" * 400 + b"}}",
                     "train.accuracy: expected a finite number or null; received an integer of 401 digits."),
    "validation a list": (b'{"train": {"accuracy": 0.9}, "validation": [1]}',
                          "validation: expected a mapping of metric names to numbers; received 'list'."),
    "test value": (b'{"train": {"accuracy": 0.9}, "test": {"loss": "x"}}',
                   "test.loss: expected a finite number or null; received 'x'."),
    "task a list": (b'{"task": ["binary"], "train": {"accuracy": 0.9}}',
                    "task: expected the run's task; received 'list'. Valid choices: binary, multiclass, regression."),
    "task misspelt": (b'{"task": "multiclas", "train": {"accuracy": 0.9}}',
                      "task: expected the run's task; received 'multiclas'. Valid choices: binary, multiclass, "
                      "regression. Did you mean 'multiclass'?"),
    "num_classes text": (b'{"task": "multiclass", "num_classes": "3", "train": {"accuracy": 0.9}}',
                         "num_classes: expected a whole number of at least 1, or null; received '3'."),
    "num_classes 0": (b'{"task": "multiclass", "num_classes": 0, "train": {"accuracy": 0.9}}',
                      "num_classes: expected a whole number of at least 1, or null; received 0."),
    "num_classes float": (b'{"task": "multiclass", "num_classes": 1e308, "train": {"accuracy": 0.9}}',
                          "num_classes: expected a whole number of at least 1, or null; received 1e+308."),
    "epochs_run negative": (b'{"train": {"accuracy": 0.9}, "epochs_run": -1}',
                            "epochs_run: expected a whole number of at least 0, or null; received -1."),
    "no error metric": (b'{"train": {"auc": 0.9}}',
                        "train: no metric in the training results to take an error from; expected accuracy, a "
                        "regression error (mae, mse, ...) or the loss; received 'auc'."),
}


@pytest.mark.parametrize("content, message", DAMAGED_METRICS.values(), ids=DAMAGED_METRICS.keys())
def test_damaged_metrics_json(tmp_path, capsys, content, message):
    run = make_run(tmp_path / "run", 0.9, 0.8)
    (run / METRICS_FILE).write_bytes(content)
    for argv in ([], ["--format", "json"]):
        line = fails(capsys, "diagnose", run, *argv)
        assert line.startswith(f"ktk: error: {run / METRICS_FILE}: {message}"), line
    assert (run / METRICS_FILE).read_bytes() == content  # read, never rewritten


DAMAGED_HISTORY = {
    "extra field": ("epoch,loss,val_loss\n1,0.5,0.6\n2,0.4,0.5,9\n", "line 3: expected 3 fields, as in the "
                                                                     "header; received 4."),
    "missing field": ("epoch,loss,val_loss\n1,0.5,0.6\n2,0.4\n", "line 3: expected 3 fields, as in the header; "
                                                                 "received 2."),
    "text cell": ("epoch,loss,val_loss\n1,0.5,0.6\n2,low,0.5\n", "line 3, column loss: expected a number; "
                                                                "received 'low'."),
    "fractional epoch": ("epoch,loss\n1.5,0.5\n", "line 2, column epoch: expected a whole number of at least 0; "
                                                  "received '1.5'."),
    "infinite epoch": ("epoch,loss\n1e400,0.5\n", "line 2, column epoch: expected a whole number of at least 0; "
                                                  "received '1e400'."),
    "no epoch column": ("loss,val_loss\n0.5,0.6\n", "the header lacks columns; expected epoch; received "
                                                    "'loss, val_loss'."),
    "column twice": ("epoch,loss,loss\n1,0.5,0.6\n", "a column is named twice in the header; received 'loss'."),
    "empty file": ("", "no header line; expected a CSV file written by ktk."),
    "field too long": ("epoch,loss\n1," + "9" * 200_000 + "\n", "line 2: unreadable CSV (field larger than field "
                                                                "limit (131072))."),
    "unclosed quote": ('epoch,loss\n1,"0.5\n', "line 2: unreadable CSV (unexpected end of data)."),
}


@pytest.mark.parametrize("content, message", DAMAGED_HISTORY.values(), ids=DAMAGED_HISTORY.keys())
def test_damaged_history_csv(tmp_path, capsys, content, message):
    run = make_run(tmp_path / "run", 0.9, 0.8, history=GOOD_HISTORY)
    (run / HISTORY_FILE).write_text(content)
    assert fails(capsys, "diagnose", run) == f"ktk: error: {run / HISTORY_FILE}: {message}"
    with pytest.raises(UserError, match="history.csv"):  # the experiment table reads it the same way
        lesson_rows([run])


DAMAGED_GRADIENTS = {
    "extra field": (GRADIENTS_HEADER + "0,dense_1,0.1,1.0,7\n", "line 2: expected 4 fields, as in the header; "
                                                                "received 5."),
    "missing field": (GRADIENTS_HEADER + "0,dense_1\n", "line 2: expected 4 fields, as in the header; received 2."),
    "text norm": (GRADIENTS_HEADER + "0,dense_1,big,1.0\n", "line 2, column grad_norm: expected a number; "
                                                            "received 'big'."),
    "no layer": (GRADIENTS_HEADER + "0,,0.1,1.0\n", "line 2, column layer: expected text; received ''."),
    "negative epoch": (GRADIENTS_HEADER + "-1,dense_1,0.1,1.0\n", "line 2, column epoch: expected a whole number "
                                                                  "of at least 0; received '-1'."),
    "another header": ("epoch,layer,norm\n0,dense_1,0.1\n", "the header lacks columns; expected epoch, layer, "
                                                            "grad_norm, weight_norm; received 'epoch, layer, norm'."),
}


@pytest.mark.parametrize("content, message", DAMAGED_GRADIENTS.values(), ids=DAMAGED_GRADIENTS.keys())
def test_damaged_gradients_csv(tmp_path, capsys, content, message):
    run = make_run(tmp_path / "run", 0.9, 0.8)
    (run / GRADIENTS_FILE).write_text(content)
    assert fails(capsys, "diagnose", run) == f"ktk: error: {run / GRADIENTS_FILE}: {message}"


DAMAGED_CONFIG = {
    "not a mapping": ("- 1\n- 2\n", "expected a mapping of config sections; received 'list'."),
    "unclosed": ("model: [unclosed\n", "unreadable YAML (while parsing a flow sequence)."),
    "nested too deeply": ("[" * 5000 + "]" * 5000 + "\n", "unreadable YAML (while increasing flow level)."),
    "baseline text": ("diagnose: {baseline_error: low}\n", "diagnose.baseline_error: expected a number; "
                                                          "received 'low'."),
    "baseline a list": ("diagnose: {baseline_error: [0.1]}\n", "diagnose.baseline_error: expected a number; "
                                                              "received 'list'."),
    "baseline infinite": ("diagnose: {baseline_error: .inf}\n", "diagnose.baseline_error: expected a non-negative "
                                                               "error; received inf."),
    "baseline negative": ("diagnose: {baseline_error: -0.1}\n", "diagnose.baseline_error: expected a non-negative "
                                                               "error; received -0.1."),
}


@pytest.mark.parametrize("content, message", DAMAGED_CONFIG.values(), ids=DAMAGED_CONFIG.keys())
def test_damaged_config_yaml(tmp_path, capsys, content, message):
    run = make_run(tmp_path / "run", 0.9, 0.8, config=content)
    assert fails(capsys, "diagnose", run).startswith(f"ktk: error: {run / CONFIG_FILE}: {message}")


def test_a_config_alias_bomb_is_never_walked(tmp_path, capsys):
    # Nine levels of nine aliases: 387 million leaves if anything walked the structure.
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    bomb = "\n".join(lines) + "\n"
    # The safe YAML loader refuses it outright (one message, exit 2) rather than expanding it.
    run = make_run(tmp_path / "run", 0.99, 0.8, config=bomb + "model: {layers: *a8, regularizer: *a8}\n")
    assert "more than 100000 values once its aliases are expanded" in fails(capsys, "diagnose", run)


def test_run_dir_paths(tmp_path, capsys):
    expected = "expected a run directory written by ktk run"
    (tmp_path / "file").write_text("x")
    os.mkfifo(tmp_path / "fifo")
    cases = {
        tmp_path / "missing": f"run directory not found; {expected}",
        tmp_path / "file": f"not a directory; {expected}",
        tmp_path / "fifo": f"not a directory; {expected}",
        "/dev/null": f"not a directory; {expected}",
        tmp_path / ("x" * 300): f"cannot read the run directory (File name too long); {expected}",
        f"{tmp_path}/a\x00b": f"run directory not found; {expected}",
        tmp_path: f"no metrics.json in the run directory (an unfinished or failed run?); {expected}",
    }
    for path, message in cases.items():
        assert fails(capsys, "diagnose", path).startswith(f"ktk: error: {message}"), path


def test_sweep_directories(tmp_path, capsys):
    for marker in (TRIALS_FILE, SWEEP_MARKER):
        sweep = tmp_path / marker.strip(".")
        sweep.mkdir()
        (sweep / marker).write_text("")
        (sweep / BEST_DIR).mkdir()  # the retrained best run has not finished
        assert fails(capsys, "diagnose", sweep) == (
            f"ktk: error: this is a sweep directory without a retrained best run (best/ has no metrics.json: the "
            f"sweep has not finished); run its ktk tune command again to finish it, then diagnose {sweep / BEST_DIR}; "
            f"expected a run directory written by ktk run; received '{sweep}'.")
        assert fails(capsys, "diagnose", sweep / BEST_DIR).startswith("ktk: error: no metrics.json in the run dir")
        make_run(sweep / BEST_DIR, 0.99, 0.8)
        assert fails(capsys, "diagnose", sweep).startswith(
            f"ktk: error: this is a sweep directory: diagnose its retrained best run, ktk diagnose {sweep / BEST_DIR};")
        assert "high_variance" in succeeds(capsys, "diagnose", sweep / BEST_DIR)


def test_result_files_that_are_not_regular_files(tmp_path, capsys):
    # Each is refused at once: nothing waits for a FIFO's writer or reads /dev/zero without end.
    for name in (METRICS_FILE, HISTORY_FILE, GRADIENTS_FILE, CONFIG_FILE):
        for kind in ("fifo", "folder", "/dev/zero"):
            run = make_run(tmp_path / f"{name}-{kind.strip('/')}", 0.9, 0.8)
            target = run / name
            target.unlink(missing_ok=True)
            if kind == "fifo":
                os.mkfifo(target)
            elif kind == "folder":
                target.mkdir()
            else:
                target.symlink_to(kind)
            assert fails(capsys, "diagnose", run) == (
                f"ktk: error: {target}: not a regular file (a device, FIFO or folder in its place?).")


def test_result_files_over_the_size_limit_are_not_read(tmp_path, capsys):
    for name, limit in ((METRICS_FILE, MAX_JSON_BYTES), (HISTORY_FILE, MAX_CSV_BYTES)):
        run = make_run(tmp_path / name, 0.9, 0.8)
        with open(run / name, "ab") as handle:
            handle.truncate(limit + 1)  # sparse: costs no disk
        assert fails(capsys, "diagnose", run) == (
            f"ktk: error: {run / name}: the file is {limit + 1:,} bytes; ktk reads result files of at most {limit:,}.")


def test_a_zip_bomb_model_keras_is_never_opened(tmp_path, capsys, monkeypatch):
    # A multiclass run without num_classes in metrics.json (older runs) once sent diagnose into model.keras.
    run = make_run(tmp_path / "run", 0.5, 0.5, task="multiclass", history=[(30.0, 30.0), (20.0, 20.0), (10.0, 9.0)])
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("config.json", b" " * (64 * 2**20))  # 64 MiB that compress to 64 kB
    (run / MODEL_FILE).write_bytes(buffer.getvalue())

    def refuse(*args, **kwargs):
        raise AssertionError("model.keras was opened")

    monkeypatch.setattr(zipfile, "ZipFile", refuse)
    out = strict_json(succeeds(capsys, "diagnose", run, "--format", "json"))
    assert out["verdict"] == "high_bias"
    assert "chance_level" not in {note["kind"] for note in out["notes"]}  # the class count is unknown: not judged


def test_diagnose_flags(tmp_path, capsys):
    run = make_run(tmp_path / "run", 0.9, 0.8)
    for flag, value, message in (
            ("--baseline-error", "nan", "--baseline-error: expected a non-negative error; received nan."),
            ("--baseline-error=-inf", None, "--baseline-error: expected a non-negative error; received -inf."),
            ("--baseline-error", "1e400", "--baseline-error: expected a non-negative error; received inf."),
            ("--baseline-error=-0.5", None, "--baseline-error: expected a non-negative error; received -0.5."),
            ("--tolerance", "nan", "--tolerance: expected a non-negative gap; received nan."),
            ("--tolerance=-1", None, "--tolerance: expected a non-negative gap; received -1.0."),
            ("--tolerance", "1e400", "--tolerance: expected a non-negative gap; received inf."),
            ("--baseline-error", "low", "argument --baseline-error: invalid float value: 'low'"),
            ("--format", "yaml", "argument --format: invalid choice: 'yaml' (choose from 'text', 'json')"),
    ):
        argv = [flag] if value is None else [flag, value]  # '-inf' alone would be read as an option
        assert fails(capsys, "diagnose", run, *argv) == f"ktk: error: {message}"
    with pytest.raises(UserError, match="--tolerance: expected a non-negative gap; received '0.1'"):
        diagnose(run, tolerance="0.1")  # from Python, a string is not a number either


def test_diagnose_fractions_are_at_most_1_for_classification(tmp_path, capsys):
    # A classification error (1 - accuracy) and a gap between two of them lie in [0, 1].
    run = make_run(tmp_path / "run", 0.9, 0.8)
    at_most = "at most 1 (a classification error is 1 - accuracy)"
    for argv, message in (
            (["--baseline-error", "2"], f"--baseline-error: expected a non-negative error of {at_most}; received 2.0."),
            (["--baseline-error", "1.0001"], f"--baseline-error: expected a non-negative error of {at_most}; "
                                             "received 1.0001."),
            (["--tolerance", "1.5"], f"--tolerance: expected a non-negative gap of {at_most}; received 1.5."),
            (["--baseline-error", "inf"], "--baseline-error: expected a non-negative error; received inf."),
    ):
        assert fails(capsys, "diagnose", run, *argv) == f"ktk: error: {message}", argv
    assert "baseline error   1.0000" in succeeds(capsys, "diagnose", run, "--baseline-error", "1")
    # the run's own config is held to the same range, and named
    configured = make_run(tmp_path / "configured", 0.9, 0.8, config="diagnose: {baseline_error: 3}\n")
    assert fails(capsys, "diagnose", configured) == (
        f"ktk: error: {configured / CONFIG_FILE}: diagnose.baseline_error: expected a non-negative error of "
        f"{at_most}; received 3.0.")
    # A regression error has units: a baseline above 1 and a tolerance above 1 (a multiple of it) are fine.
    regression = make_run(tmp_path / "regression", 40.0, 52.0, task="regression", key="mae")
    out = strict_json(succeeds(capsys, "diagnose", regression, "--baseline-error", "35", "--tolerance", "1.5",
                               "--format", "json"))
    assert (out["baseline_error"], out["verdict"]) == (35.0, "ok")
    assert fails(capsys, "diagnose", regression, "--baseline-error=-2") == (
        "ktk: error: --baseline-error: expected a non-negative error; received -2.0.")


def test_gradient_notes_grow_with_the_rows_only():
    # Every row a new layer at a new epoch (a damaged or hostile gradients.csv): one pass and a sort, not
    # layers x epochs (which would be 10^10 steps here), and a message that names ten layers, not 100,000.
    rows = [{"epoch": float(i), "layer": f"l{i}", "grad_norm": 1.0, "weight_norm": 1.0} for i in range(100_000)]
    rows += [{"epoch": 0.0, "layer": f"l{i}", "grad_norm": math.nan, "weight_norm": 1.0} for i in range(20)]
    notes = gradient_notes(rows)
    assert [note.kind for note in notes] == ["exploding_gradients"]
    assert notes[0].message == ("gradient or weight norms became NaN/inf from epoch 0 in layers l0, l1, l2, l3, l4, "
                                "l5, l6, l7, l8, l9 and 10 more: exploding gradients")
    assert notes[0].layers == [f"l{i}" for i in range(20)]


def test_json_outputs_are_strict_json(tmp_path, capsys):
    # A diverged run: metrics.json holds null for its NaN figures, and so does the JSON report.
    run = make_run(tmp_path / "nan", None, None, history=[(0.7, 0.7), (float("nan"), float("nan"))])
    out = strict_json(succeeds(capsys, "diagnose", run, "--format", "json"))
    assert out["train_error"] is None and out["avoidable_bias"] is None and out["variance"] is None
    assert out["verdict"] == "high_bias" and out["notes"][0]["kind"] == "nan_loss"

    layer = LayerCheck("dense_1", math.nan, "fail", 4, 4, math.inf)
    result = GradcheckResult(difference=math.inf, status="fail", layers=[layer], samples=8, epsilon=1e-7,
                             cost=math.nan, checked=4, parameters=4)
    data = strict_json(json.dumps(result.to_dict()))
    assert (data["difference"], data["cost"], data["layers"][0]["difference"], data["layers"][0]["grad_norm"]) == \
        (None, None, None, None)


# -------------------------------------------------------------------------------- ktk gradcheck


def test_gradcheck_flags_and_paths(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("data: {source: sklearn.iris}\nmodel: {hidden: [2]}\n")
    for argv, message in (
            (["--samples", "0"], "--samples: expected a positive number of examples; received 0."),
            (["--samples", "-3"], "--samples: expected a positive number of examples; received -3."),
            (["--max-per-layer", "0"], "--max-per-layer: expected a positive number of parameters; received 0."),
            (["--max-per-layer", "-1"], "--max-per-layer: expected a positive number of parameters; received -1."),
            (["--samples", "nan"], "argument --samples: invalid int value: 'nan'"),
            (["--samples", "1e9"], "argument --samples: invalid int value: '1e9'"),
            (["--max-params", "0"], "--max-params: expected a positive number of parameters; received 0."),
            (["--max-params", "-5"], "--max-params: expected a positive number of parameters; received -5."),
            (["--max-params", "inf"], "argument --max-params: invalid int value: 'inf'"),
            (["--all", "--max-params", "10"], "--all: --all compares every parameter; expected --all without "
                                              "--max-params; received '--max-params'."),
            (["--all", "--max-per-layer", "3"], "--all: --all compares every parameter; expected --all without "
                                                "--max-per-layer; received '--max-per-layer'."),
            (["--format", "xml"], "argument --format: invalid choice: 'xml' (choose from 'text', 'json')"),
            (["--set", "model.hiden=[3]"], f"{config}: model.hiden: unknown key"),
    ):
        assert fails(capsys, "gradcheck", config, *argv).startswith(f"ktk: error: {message}"), argv
    assert "file not found" in fails(capsys, "gradcheck", tmp_path / "missing.yaml")


def test_gradcheck_compares_a_bounded_sample_by_default():
    # Each compared parameter costs two evaluations of the whole model: the default compares 1,000, fewer in
    # a big model, but never fewer than 100; every weight tensor gets at least one entry.
    assert [default_max_parameters(n) for n in (10, 1_000, 200_000, 1_000_000, 10**9)] == [1000, 1000, 1000, 200, 100]
    assert spread([3, 10, 1_000_000], None) == [3, 10, 1_000_000]  # no cap: everything
    assert spread([3, 10, 20], 100) == [3, 10, 20]  # under the cap: everything
    assert spread([3, 10, 1_000_000, 5_000], 100) == [3, 10, 44, 43]  # small tensors whole, the rest shared
    assert spread([1, 1, 1, 0, 500], 2) == [1, 1, 1, 0, 1]  # more tensors than the cap: one of each
    assert sum(spread([7, 9_000, 300, 65_536, 1], 1000)) <= 1000


# ------------------------------------------------------------------------------- ktk experiment


def make_suite(path, **configs):
    path.mkdir(parents=True)
    (path / "base.yaml").write_text("data: {source: sklearn.iris}\nmodel: {hidden: [2]}\ntraining: {epochs: 1}\n")
    for name, text in configs.items():
        (path / f"{name}.yaml").write_text(text)
    return path


def test_experiment_suite_folders(tmp_path, capsys):
    expected = "expected a folder of configs, e.g. experiments/initialization"
    (tmp_path / "file").write_text("x")
    os.mkfifo(tmp_path / "fifo")
    only_base = make_suite(tmp_path / "only_base")
    hidden = make_suite(tmp_path / "hidden", _draft="extends: base.yaml\n", **{"base_wide": "extends: base.yaml\n"})
    (hidden / "notes.txt").write_text("not a config")
    (hidden / "folder.yaml").mkdir()
    broken_variant = make_suite(tmp_path / "broken_variant", a="extends: base.yaml\nmodel: [unclosed\n")
    broken_base = make_suite(tmp_path / "broken_base", a="extends: base.yaml\n")
    (broken_base / "base.yaml").write_text("model: {hidden: [2]\n")
    cases = {
        tmp_path / "missing": f"suite folder not found; {expected}",
        tmp_path / "file": f"not a folder; {expected}",
        tmp_path / "fifo": f"not a folder; {expected}",
        tmp_path / ("x" * 300): f"cannot read the suite folder (File name too long); {expected}",
        f"{tmp_path}/a\x00b": f"suite folder not found; {expected}",
        only_base: "the suite folder holds no configs; expected one or more *.yaml files besides base.yaml",
        hidden: "the suite folder holds no configs; expected one or more *.yaml files besides base.yaml",
        broken_variant: f"{broken_variant / 'a.yaml'}: line 3, column 1: malformed YAML",
        broken_base: f"{broken_base / 'base.yaml'}: line 2, column 1: malformed YAML",
    }
    for path, message in cases.items():
        assert fails(capsys, "experiment", path, "--out", tmp_path / "out").startswith(f"ktk: error: {message}"), path
    assert not (tmp_path / "out").exists()


def test_experiment_flags_refused_before_anything_trains(tmp_path, capsys):
    suite = make_suite(tmp_path / "suite", small="extends: base.yaml\n", wide="extends: base.yaml\n"
                       "model: {hidden: [8]}\n",
                       sweep="extends: base.yaml\nsearch: {max_trials: 2, space: {model.hiden.0: {int: [1, 4]}}}\n")
    (tmp_path / "file").write_text("x")
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "thesis.tex").write_text("mine")
    out = tmp_path / "out"
    cases = [
        (["--only", "wdie"], "--only: expected a config of the suite; received 'wdie'. Valid choices: small, sweep, "
                             "wide. Did you mean 'wide'?"),
        (["--only", "base"], "--only: expected a config of the suite; received 'base'."),
        (["--only", ""], "--only: expected a config of the suite; received ''."),
        (["--only", "small", "--set", "training.epochs=-1"], f"{suite / 'small.yaml'}: training.epochs: expected"),
        (["--only", "small", "--set", "nonsense"], "--set: expected KEY=VALUE"),
        ([], f"{suite / 'sweep.yaml'}: search.space.model.hiden.0: unknown config key; received 'hiden'."),
        (["--only", "small", "--out", tmp_path / "file"], "--out: this is a file, not a directory"),
        (["--only", "small", "--out", tmp_path / "file" / "below"], "--out: cannot use this path"),
        (["--only", "small", "--out", kept], "--out: the output folder already exists and is not empty; results "
                                             "are never overwritten"),
        (["--only", "small", "--out", tmp_path / ("x" * 300)], "--out: cannot use this path (File name too long)"),
        (["--only", "small", "--out", f"{tmp_path}/a\x00b"], "--out: cannot use this path (embedded null byte)"),
    ]
    for argv, message in cases:
        flags = argv if "--out" in argv else [*argv, "--out", out]
        assert fails(capsys, "experiment", suite, *flags).startswith(f"ktk: error: {message}"), argv
    assert not out.exists()  # every refusal came before the output folder was made
    assert [p.name for p in kept.iterdir()] == ["thesis.tex"] and (kept / "thesis.tex").read_text() == "mine"


# ------------------------------------------------------------------------------- paths, every command


def test_an_empty_path_is_refused_by_every_command(tmp_path, capsys):
    # Path('') is the current folder: an empty argument must not quietly become '.' (nor, for an option,
    # "not given").
    config = tmp_path / "c.yaml"
    config.write_text("data: {source: sklearn.iris}\nmodel: {hidden: [2]}\n")
    run = make_run(tmp_path / "run", 0.9, 0.8)
    suite = make_suite(tmp_path / "suite", a="extends: base.yaml\n")
    config_file = "expected a YAML config file; received ''."
    cases = [
        (["diagnose", ""], "RUN_DIR: expected a run directory written by ktk run; received ''."),
        (["gradcheck", ""], f"CONFIG: {config_file}"),
        (["run", ""], f"CONFIG: {config_file}"),
        (["run", config, "--out", ""], "--out: expected a folder; received ''."),
        (["validate", ""], f"CONFIG: {config_file}"),
        (["tune", ""], f"CONFIG: {config_file}"),
        (["tune", config, "--out", ""], "--out: expected a folder; received ''."),
        (["experiment", ""], "SUITE: expected a folder of configs, e.g. experiments/initialization; received ''."),
        (["experiment", suite, "--out", ""], "--out: expected a folder; received ''."),
        (["compare", ""], "PATH: expected a run or sweep directory, or a folder holding them; received ''."),
        (["compare", run, ""], "PATH: expected a run or sweep directory, or a folder holding them; received ''."),
        (["compare", run, "--output", ""], "--output: expected a file; received ''."),
        (["compare", run, "--plot", ""], "--plot: expected a folder; received ''."),
        (["plot", "", "--out", tmp_path / "plots"], "PATH: expected a run or sweep directory, or a folder "
                                                    "holding them; received ''."),
        (["plot", run, "--out", ""], "--out: expected a folder; received ''."),
        (["report", ""], "SWEEP_OR_DIR: expected a sweep directory or a folder of runs; received ''."),
        (["report", run, "--out", ""], "--out: expected a folder; received ''."),
    ]
    before = sorted(p.name for p in tmp_path.iterdir())
    for argv, message in cases:
        assert fails(capsys, *argv) == f"ktk: error: argument {message}", argv
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written anywhere
    # The library refuses it too.
    with pytest.raises(UserError, match="^an empty path; expected a run directory written by ktk run; received ''"):
        diagnose("")
    with pytest.raises(UserError, match="^an empty path; expected a folder of configs"):
        suite_configs("")
    with pytest.raises(UserError, match="^--out: an empty path; expected a new or empty folder; received ''"):
        run_suite(suite, out_dir="")


# ------------------------------------------------------------------------------- data read for the lessons


def test_whole_numbers_and_words_in_a_target_are_class_names(tmp_path, capsys):
    # (0, 1, 'a') are three classes, as text labels are; a word among fractional values stays a typo in a
    # numeric target, named with its row.
    rows = "".join(f"{i % 7},{i % 5},{['0', '1', 'a'][i % 3]},{i / 10 + 0.05:.2f}\n" for i in range(60))
    (tmp_path / "d.csv").write_text("x1,x2,label,amount\n" + rows)
    lines = [line for line in (tmp_path / "d.csv").read_text().splitlines()]
    lines[5] = lines[5].rsplit(",", 1)[0] + ",oops"
    (tmp_path / "typo.csv").write_text("\n".join(lines) + "\n")
    mixed = tmp_path / "mixed.yaml"
    mixed.write_text("data: {source: csv, path: d.csv, target: label, features: [x1, x2]}\n")
    out = succeeds(capsys, "validate", mixed)
    assert "multiclass, 3 classes" in out
    typo = tmp_path / "typo.yaml"
    typo.write_text("data: {source: csv, path: typo.csv, target: amount, features: [x1, x2]}\n")
    assert fails(capsys, "validate", typo) == (
        f"ktk: error: {typo}: data.path: non-numeric value in numeric target column 'amount' of typo.csv at data "
        "row 5; expected a number; received 'oops'.")
