"""Diagnosis on constructed run directories: verdicts, figures, learning-curve and gradient-flow notes."""

import csv
import json
import math
import subprocess
import sys

import pytest

from toolkit.errors import UserError
from toolkit.lessons.diagnosis import diagnose, format_diagnosis, verdict_for_run
from toolkit.results import BEST_DIR, CONFIG_FILE, GRADIENTS_FILE, HISTORY_FILE, METRICS_FILE, TRIALS_FILE

from helpers import REPO, ktk, subprocess_env


def make_run(path, train, validation, test=None, task="binary", history=None, config=None, gradients=None,
             key="accuracy", epochs_run=None):
    path.mkdir(parents=True, exist_ok=True)
    metrics = {"train": {"loss": 0.3, key: train}, "validation": {"loss": 0.4, key: validation},
               "epochs_run": epochs_run or (len(history) if history else 10), "best_epoch": 1, "task": task,
               "monitor": "val_loss", "seed": 42}
    if test is not None:
        metrics["test"] = {"loss": 0.4, key: test}
    (path / METRICS_FILE).write_text(json.dumps(metrics))
    if history is not None:
        with (path / HISTORY_FILE).open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["epoch", "loss", "val_loss", "learning_rate"])
            for i, (loss, val_loss) in enumerate(history, start=1):
                writer.writerow([i, loss, val_loss, 0.001])
    if config is not None:
        (path / CONFIG_FILE).write_text(config)
    if gradients is not None:
        with (path / GRADIENTS_FILE).open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["epoch", "layer", "grad_norm", "weight_norm"])
            writer.writerows(gradients)
    return path


def test_overfitting_run_is_high_variance(tmp_path):
    history = [(0.60, 0.62), (0.40, 0.45), (0.30, 0.40), (0.20, 0.42), (0.12, 0.48), (0.08, 0.55), (0.05, 0.60)]
    run = make_run(tmp_path / "over", train=0.99, validation=0.89, test=0.88, history=history)
    result = diagnose(run)
    assert result.verdict == "high_variance"
    assert result.avoidable_bias == pytest.approx(0.01)
    assert result.variance == pytest.approx(0.10)
    assert result.mismatch == pytest.approx(0.01)
    assert "regularization: L2 (model.regularizer: {l2: 1.0e-3}) or dropout (model.dropout: 0.2)" in result.remedies
    overfit = result.note("overfitting")
    assert overfit is not None and overfit.epoch == 3
    assert "overfitting from epoch 3 on" in overfit.message
    assert result.note("train_longer") is None
    assert result.note("mismatch") is None


def test_underfitting_run_is_high_bias_and_still_improving(tmp_path):
    history = [(0.69, 0.69), (0.62, 0.63), (0.58, 0.59), (0.55, 0.56), (0.52, 0.53), (0.50, 0.51)]
    config = "name: x\ntraining: {epochs: 6}\n"
    run = make_run(tmp_path / "under", train=0.80, validation=0.79, history=history, config=config)
    result = diagnose(run)
    assert result.verdict == "high_bias"
    assert result.avoidable_bias == pytest.approx(0.20)
    assert result.variance == pytest.approx(0.01)
    assert result.remedies[0].startswith("a bigger network")
    assert result.note("train_longer") is not None
    assert result.note("overfitting") is None


def test_good_run_is_ok_and_both_is_both(tmp_path):
    assert diagnose(make_run(tmp_path / "good", train=0.995, validation=0.99)).verdict == "ok"
    both = diagnose(make_run(tmp_path / "both", train=0.85, validation=0.70))
    assert both.verdict == "high_bias_and_variance"
    assert both.remedies[0].startswith("fix the bias first")


def test_baseline_from_flag_then_config_then_zero(tmp_path):
    run = make_run(tmp_path / "r", train=0.85, validation=0.84, config="name: r\ndiagnose: {baseline_error: 0.14}\n")
    from_config = diagnose(run)
    assert (from_config.baseline_error, from_config.baseline_source) == (0.14, "config")
    assert from_config.avoidable_bias == pytest.approx(0.01)
    assert from_config.verdict == "ok"
    from_flag = diagnose(run, baseline_error=0.05)
    assert (from_flag.baseline_source, from_flag.verdict) == ("flag", "high_bias")
    plain = diagnose(make_run(tmp_path / "p", train=0.85, validation=0.84))
    assert (plain.baseline_error, plain.baseline_source, plain.verdict) == (0.0, "default", "high_bias")


def test_mismatch_between_validation_and_test(tmp_path):
    result = diagnose(make_run(tmp_path / "m", train=0.99, validation=0.98, test=0.85))
    assert result.verdict == "ok"
    note = result.note("mismatch")
    assert note is not None and "validation and test sets look different" in note.message


def test_regression_uses_its_error_metric_with_relative_tolerance(tmp_path):
    run = make_run(tmp_path / "reg", train=10.0, validation=16.0, task="regression", key="mae")
    result = diagnose(run)
    assert result.error_name == "mae"
    assert result.verdict == "high_variance"  # 16 is 60% above 10
    assert result.bias_tolerance is None and result.note("bias_not_judged") is not None
    close = diagnose(make_run(tmp_path / "reg2", train=10.0, validation=11.0, task="regression", key="mae"))
    assert close.verdict == "ok"
    with_baseline = diagnose(run, baseline_error=5.0)
    assert with_baseline.verdict == "high_bias_and_variance"  # 10 is twice the baseline 5
    assert diagnose(run, baseline_error=9.5).verdict == "high_variance"


def test_nan_and_exploding_and_huge_initial_loss(tmp_path):
    nan = diagnose(make_run(tmp_path / "nan", 0.5, 0.5, history=[(0.7, 0.7), (3.0, 4.0), (float("nan"), float("nan"))]))
    assert nan.note("nan_loss").epoch == 3
    blowing_up = [(0.7, 0.7), (0.5, 0.5), (9.0, 9.0), (80.0, 90.0)]
    exploding = diagnose(make_run(tmp_path / "ex", 0.5, 0.5, history=blowing_up))
    assert exploding.note("exploding_loss").epoch == 3
    huge = diagnose(make_run(tmp_path / "huge", 0.8, 0.8, history=[(25.0, 20.0), (12.0, 11.0), (6.0, 6.0)]))
    note = huge.note("huge_initial_loss")
    assert note is not None and "36 times that of a chance-level guess" in note.message


def test_flat_loss_and_chance_level_are_flagged(tmp_path):
    result = diagnose(make_run(tmp_path / "flat", 0.5, 0.5, history=[(0.6931, 0.6932)] * 3 + [(0.6930, 0.6932)]))
    assert result.note("flat_loss") is not None
    assert result.note("chance_level") is None  # one note for one symptom
    stuck = diagnose(make_run(tmp_path / "stuck", 0.5, 0.5, history=[(9.0, 5.0), (1.2, 0.9), (0.70, 0.70)]))
    assert stuck.note("flat_loss") is None
    message = stuck.note("chance_level").message
    assert "never got clearly below that of a chance-level guess (0.693; best 0.7)" in message
    learning = diagnose(make_run(tmp_path / "learning", 0.9, 0.9, history=[(0.69, 0.69), (0.6, 0.6), (0.5, 0.5)]))
    assert learning.note("chance_level") is None and learning.note("flat_loss") is None
    regularized = make_run(tmp_path / "reg", 0.5, 0.5, history=[(9.0, 5.0), (1.2, 0.9), (0.70, 0.70)],
                           config="name: reg\nmodel: {regularizer: {l2: 0.1}}\n")
    notes = {n.kind for n in diagnose(regularized).notes}  # the loss holds the penalty: no chance level
    assert "chance_level" not in notes and "huge_initial_loss" not in notes


def test_gradient_flow_vanishing_exploding_and_zeros(tmp_path):
    vanishing = [(e, layer, norm, 1.0) for e in (0, 1, 2)
                 for layer, norm in (("dense_1", 1e-9), ("batchnorm_1", 1e-4), ("dense_2", 1e-6), ("dense_3", 0.1),
                                     ("output", 0.5))]
    note = diagnose(make_run(tmp_path / "v", 0.9, 0.9, gradients=vanishing)).note("vanishing_gradients")
    assert note.layers == ["dense_1", "dense_2"]
    assert "early layers" in note.message and "batch normalization (model.batchnorm: true)" in note.remedies

    exploding = [(0, "dense_1", 1.0, 1.0), (0, "output", 1.0, 1.0), (1, "dense_1", 500.0, 10.0),
                 (1, "output", 2.0, 1.0), (2, "dense_1", float("nan"), float("nan")), (2, "output", 3.0, 1.0)]
    note = diagnose(make_run(tmp_path / "e", 0.5, 0.5, gradients=exploding)).note("exploding_gradients")
    assert note.layers == ["dense_1"] and note.epoch == 2
    assert "gradient clipping (training.optimizer.clipnorm: 1.0)" in note.remedies

    growing = [(0, "dense_1", 0.1, 1.0), (1, "dense_1", 50.0, 1.0), (0, "output", 0.1, 1.0), (1, "output", 0.2, 1.0)]
    note = diagnose(make_run(tmp_path / "g", 0.5, 0.5, gradients=growing)).note("exploding_gradients")
    assert note.layers == ["dense_1"] and "500 times" in note.message

    zeros = [(e, layer, g, w) for e in (0, 1) for layer, g, w in (("dense_1", 0.0, 0.0), ("output", 0.2, 0.1))]
    note = diagnose(make_run(tmp_path / "z", 0.5, 0.5, gradients=zeros)).note("vanishing_gradients")
    assert note.layers == ["dense_1"] and "symmetry is never broken" in note.message

    healthy = [(e, layer, g, 1.0) for e in (0, 1) for layer, g in (("dense_1", 0.05), ("output", 0.2))]
    result = diagnose(make_run(tmp_path / "h", 0.5, 0.5, gradients=healthy))
    assert result.note("vanishing_gradients") is None and result.note("exploding_gradients") is None


def test_diverged_run_and_early_stopping(tmp_path):
    run = make_run(tmp_path / "nan", train=0.5, validation=0.5, task="regression", key="mae",
                   history=[(1.0, 1.0), (50.0, 60.0), (float("nan"), float("nan"))])
    metrics = json.loads((run / METRICS_FILE).read_text())
    metrics["train"]["mae"] = metrics["validation"]["mae"] = None  # how results.write_json stores NaN
    (run / METRICS_FILE).write_text(json.dumps(metrics))
    result = diagnose(run)
    assert math.isnan(result.train_error) and result.verdict == "high_bias"
    assert result.note("nan_loss").epoch == 3

    improving = [(0.69, 0.69), (0.6, 0.61), (0.5, 0.52), (0.4, 0.45), (0.3, 0.40)]
    stopped = make_run(tmp_path / "es", 0.9, 0.9, history=improving,
                       config="name: es\ntraining: {epochs: 50, early_stopping: {patience: 2}}\n")
    assert diagnose(stopped).note("train_longer") is None  # early stopping decided when to end
    plain = make_run(tmp_path / "plain", 0.9, 0.9, history=improving, config="name: p\ntraining: {epochs: 5}\n")
    assert diagnose(plain).note("train_longer") is not None


def test_user_errors(tmp_path):
    with pytest.raises(UserError) as error:
        diagnose(tmp_path / "nope")
    assert str(error.value) == (f"run directory not found; expected a run directory written by ktk run; "
                                f"received '{tmp_path / 'nope'}'.")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no metrics.json in the run directory"):
        diagnose(tmp_path / "empty")
    assert verdict_for_run(tmp_path / "empty") == ""
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / TRIALS_FILE).write_text("trial_id,status\n")
    with pytest.raises(UserError, match=r"this is a sweep directory without a retrained best run \(best/ has no "
                                        r"metrics.json: the sweep has not finished\)"):
        diagnose(tmp_path / "sweep")
    make_run(tmp_path / "sweep" / BEST_DIR, 0.9, 0.9)
    with pytest.raises(UserError) as error:
        diagnose(tmp_path / "sweep")
    assert str(error.value).startswith("this is a sweep directory: diagnose its retrained best run, ktk diagnose "
                                       f"{tmp_path / 'sweep' / 'best'};")
    run = make_run(tmp_path / "r", 0.9, 0.9)
    with pytest.raises(UserError, match="--baseline-error: expected a non-negative error; received -0.1"):
        diagnose(run, baseline_error=-0.1)
    with pytest.raises(UserError, match="--tolerance: expected a non-negative gap; received -1"):
        diagnose(run, tolerance=-1)


def test_verdict_for_run_and_json_and_text(tmp_path):
    run = make_run(tmp_path / "r", train=0.99, validation=0.80)
    assert verdict_for_run(run) == "high_variance"
    data = diagnose(run).to_dict()
    assert {"verdict", "avoidable_bias", "variance", "notes"} <= set(data)
    assert json.loads(json.dumps(data))["variance"] == pytest.approx(0.19)
    text = format_diagnosis(diagnose(run))
    assert text.splitlines()[0] == f"Diagnosis of {run}: high_variance"
    assert "variance         0.1900  (validation - train, high above 0.03): HIGH" in text


def test_cli_diagnose_json_and_errors(tmp_path):
    run = make_run(tmp_path / "r", train=0.99, validation=0.80)
    done = ktk("diagnose", run, "--format", "json", "--baseline-error", "0.0", cwd=REPO)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["verdict"] == "high_variance" and out["baseline_source"] == "flag"
    assert "tensorflow" not in done.stderr.lower()
    missing = ktk("diagnose", tmp_path / "none", cwd=REPO)
    assert missing.returncode == 2 and missing.stderr.startswith("ktk: error: run directory not found")
    assert "Traceback" not in missing.stderr


def test_diagnose_does_not_import_tensorflow(tmp_path):
    run = make_run(tmp_path / "r", train=0.99, validation=0.80, config="name: r\n")
    code = ("import sys; from toolkit.lessons.diagnosis import verdict_for_run; "
            f"print(verdict_for_run({str(run)!r})); print('tensorflow' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(),
                          cwd=REPO)
    assert done.stdout.split() == ["high_variance", "False"], done.stderr
    # the whole command, with every file it reads: no TensorFlow, and no config schema (pydantic) either
    full = make_run(tmp_path / "full", train=0.99, validation=0.80, config="name: r\ntraining: {epochs: 3}\n",
                    history=[(0.5, 0.6), (0.4, 0.55), (0.3, 0.5)], gradients=[(1, "dense", 0.1, 1.0)])
    code = ("import sys; from toolkit.cli import main; code = main(['diagnose', %r]); "
            "print(code, 'tensorflow' in sys.modules, 'pydantic' in sys.modules)" % str(full))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(),
                          cwd=REPO)
    assert done.stdout.split()[-3:] == ["0", "False", "False"], done.stdout + done.stderr


def test_damaged_run_files_are_user_errors(tmp_path):
    cases = {
        "list": (METRICS_FILE, b"[1, 2]", "expected a JSON object; received 'list'"),
        "text value": (METRICS_FILE, b'{"train": {"loss": 0.1, "accuracy": "x"}, "task": "binary"}',
                       "train.accuracy: expected a finite number or null; received 'x'"),
        "latin-1": (HISTORY_FILE, "epoch,loss\n1,0.5\xe9\n".encode("latin-1"), r"not UTF-8 text \(byte 16\)"),
        "bad yaml": (CONFIG_FILE, b"model: [unclosed\n", "unreadable YAML"),
    }
    for name, (file, content, message) in cases.items():
        run = make_run(tmp_path / name.replace(" ", "-"), 0.9, 0.9)
        (run / file).write_bytes(content)
        with pytest.raises(UserError, match=message):
            diagnose(run)
    # config.yaml is a record of the run, not its result: odd but readable values there are tolerated
    run = make_run(tmp_path / "odd", 0.9, 0.9, history=[(0.5, 0.6), (0.4, 0.5), (0.3, 0.45)],
                   config="model: {layers: 5}\ntraining: {epochs: 3}\n")
    assert diagnose(run).verdict == "high_bias"
    # metrics.json's fields that diagnosis uses must have their types
    metrics = json.loads((run / METRICS_FILE).read_text())
    (run / METRICS_FILE).write_text(json.dumps(dict(metrics, epochs_run="x")))
    with pytest.raises(UserError, match="metrics.json: epochs_run: expected a whole number of at least 0, or null; "
                                        "received 'x'"):
        diagnose(run)
