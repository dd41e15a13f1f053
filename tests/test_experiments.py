"""Each experiment suite, shortened, reproduces its lesson's finding; and `ktk experiment` end to end.

The suites run with fewer epochs (and sometimes fewer variants) than their README's full runs; the
assertions are the lessons' findings, with margins, never recorded numbers. Every test that trains is
marked slow; the checks of the suite folders themselves are fast.
"""

import csv
import math

import pytest

from toolkit.config import load_config
from toolkit.errors import UserError
from toolkit.lessons.diagnosis import diagnose
from toolkit.lessons.experiments import lesson_rows, run_suite, suite_configs
from toolkit.results import BEST_DIR, HISTORY_FILE, METRICS_FILE, TRIALS_FILE

from helpers import REPO, ktk

SUITES = REPO / "experiments"


def short_suite(tmp_path, suite, epochs, only=None, extra=()):
    result = run_suite(SUITES / suite, out_dir=tmp_path / suite, overrides=[f"training.epochs={epochs}", *extra],
                       only=only)
    rows = lesson_rows(result.run_dirs, result.names)
    return {row["run"]: row for row in rows}, dict(zip(result.names, result.run_dirs))


def test_every_suite_folder_is_valid():
    for suite in ("initialization", "regularization", "optimizers", "learning_rate_decay", "batchnorm",
                  "input_normalization"):
        configs = suite_configs(SUITES / suite)
        assert len(configs) >= 2, suite
        for path in configs:
            assert path.read_text().lstrip().startswith(("#", "extends:")), path
            assert "extends: base.yaml" in path.read_text(), path
            load_config(path)
        assert (SUITES / suite / "README.md").is_file(), suite


@pytest.mark.slow
def test_initialization_zeros_stuck_large_random_huge_loss_he_learns(tmp_path):
    rows, dirs = short_suite(tmp_path, "initialization", 15, extra=["training.monitor.gradients=true"])
    zeros, large, he = rows["zeros"], rows["large_random"], rows["he"]
    assert zeros["train_error"] >= 0.4  # chance on two balanced classes is 0.5
    assert abs(zeros["final_loss"] - math.log(2)) < 0.01
    zeros_notes = {n.kind: n for n in diagnose(dirs["zeros"]).notes}
    assert "flat_loss" in zeros_notes
    assert zeros_notes["vanishing_gradients"].layers == ["dense_1", "dense_2"]
    assert large["first_loss"] > 10 * he["first_loss"]
    assert diagnose(dirs["large_random"]).note("huge_initial_loss") is not None
    assert he["train_error"] < 0.15 and he["val_error"] < 0.15
    assert he["train_error"] < large["train_error"] - 0.1
    assert he["mean_loss"] < large["mean_loss"] and he["mean_loss"] < zeros["mean_loss"]


@pytest.mark.slow
def test_regularization_shrinks_variance(tmp_path):
    rows, _ = short_suite(tmp_path, "regularization", 80, only=["none", "l2"])
    none, l2 = rows["none"], rows["l2"]
    assert none["verdict"] == "high_variance"
    assert none["variance"] > 0.08
    assert l2["variance"] < none["variance"] - 0.05


@pytest.mark.slow
def test_adaptive_optimizers_converge_fastest(tmp_path):
    rows, _ = short_suite(tmp_path, "optimizers", 25)
    adam = rows["adam"]["mean_loss"]
    assert adam < rows["momentum"]["mean_loss"] < rows["sgd"]["mean_loss"]
    assert adam < 0.8 * rows["sgd"]["mean_loss"]
    # Adam and RMSprop are close on this problem (see the README): Adam is never far behind.
    assert adam < 1.15 * rows["rmsprop"]["mean_loss"]


@pytest.mark.slow
def test_learning_rate_decay_settles_lower(tmp_path):
    rows, dirs = short_suite(tmp_path, "learning_rate_decay", 25, only=["constant", "exponential"])
    assert rows["exponential"]["final_loss"] < rows["constant"]["final_loss"]
    assert rows["exponential"]["tail_sd"] < 0.5 * rows["constant"]["tail_sd"]  # settled, not wandering
    from toolkit.results import read_history_csv

    constant_lr = read_history_csv(dirs["constant"] / HISTORY_FILE)["learning_rate"]
    decayed_lr = read_history_csv(dirs["exponential"] / HISTORY_FILE)["learning_rate"]
    assert max(constant_lr) == pytest.approx(min(constant_lr))
    assert decayed_lr[-1] < 0.2 * decayed_lr[0]


@pytest.mark.slow
def test_batchnorm_speeds_up_convergence(tmp_path):
    rows, dirs = short_suite(tmp_path, "batchnorm", 6)
    assert rows["with_batchnorm"]["mean_loss"] < 0.8 * rows["without"]["mean_loss"]
    assert rows["with_batchnorm"]["val_error"] < rows["without"]["val_error"] - 0.2
    assert diagnose(dirs["without"]).note("vanishing_gradients") is not None
    assert diagnose(dirs["with_batchnorm"]).note("vanishing_gradients") is None


@pytest.mark.slow
def test_input_normalization_speeds_up_convergence(tmp_path):
    rows, dirs = short_suite(tmp_path, "input_normalization", 10, only=["raw", "standardized"])
    raw, standard = rows["raw"], rows["standardized"]
    assert raw["first_loss"] > 10 * standard["first_loss"]
    notes = {n.kind for n in diagnose(dirs["raw"]).notes}  # 3 classes: chance is ln 3, from model.keras
    assert {"huge_initial_loss", "chance_level"} <= notes
    assert standard["mean_loss"] < raw["mean_loss"]
    assert standard["val_error"] < raw["val_error"] - 0.2


def test_tuning_suite_is_a_valid_coarse_to_fine_sweep():
    from toolkit.search import parse_search  # the sweeps module's validator of search: sections

    coarse = parse_search(load_config(SUITES / "tuning" / "coarse.yaml"))
    fine = parse_search(load_config(SUITES / "tuning" / "fine.yaml"))
    assert (coarse.tuner, fine.tuner) == ("quasi_random", "bayesian")
    paths = ["training.optimizer.learning_rate", "model.hidden.0", "model.regularizer.l2"]
    assert coarse.paths == fine.paths == paths
    for path in paths:
        wide, narrow = coarse.param(path), fine.param(path)
        assert wide.log and narrow.log  # every one spans decades
        assert wide.low <= narrow.low < narrow.high <= wide.high  # fine zooms into coarse


@pytest.mark.slow
def test_tuning_fine_sweep_stays_in_the_good_region(tmp_path):
    # The coarse sweep's wide ranges hold hopeless corners (a learning rate of 1e-4, an L2 of 0.5); the fine
    # sweep's ranges, drawn from the coarse results, hold none: its worst trial beats the coarse sweep's.
    result = run_suite(SUITES / "tuning", out_dir=tmp_path / "tuning",
                       overrides=["training.epochs=4", "search.max_trials=6", "search.trials_per_process=inline"])
    assert [p.name for p in result.sweep_dirs] == ["coarse", "fine"]
    scores = {}
    for sweep in result.sweep_dirs:
        with open(sweep / TRIALS_FILE, newline="") as handle:
            rows = list(csv.DictReader(handle))
        assert len(rows) == 6 and all(r["status"] == "completed" for r in rows)
        scores[sweep.name] = sorted(float(r["score"]) for r in rows)
        assert (sweep / BEST_DIR / METRICS_FILE).is_file()  # the winner, retrained and tested once
    assert scores["fine"][0] > scores["coarse"][0] + 0.1
    assert scores["fine"][-1] >= scores["coarse"][-1] - 0.05


@pytest.mark.slow
def test_cli_experiment_end_to_end_and_errors(tmp_path):
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "base.yaml").write_text(
        "data: {source: synthetic.moons, options: {n_samples: 120}}\nmodel: {hidden: [4]}\n"
        "training: {epochs: 2}\n")
    (suite / "small.yaml").write_text("extends: base.yaml\n")
    (suite / "wide.yaml").write_text("extends: base.yaml\nmodel: {hidden: [16]}\n")
    out = tmp_path / "out"
    done = ktk("experiment", suite, "--out", out, "-q", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (out / "small" / METRICS_FILE).is_file() and (out / "wide" / METRICS_FILE).is_file()
    lines = done.stdout.splitlines()
    header = next(line for line in lines if line.startswith("run ") and "mean_loss" in line)
    assert header.split() == ["run", "epochs", "first_loss", "mean_loss", "final_loss", "tail_sd",
                              "best_val_loss", "train_error", "val_error", "verdict", "variance"]
    assert any(line.startswith("small ") for line in lines) and any(line.startswith("wide ") for line in lines)

    again = ktk("experiment", suite, "--out", out, cwd=tmp_path)
    assert again.returncode == 2
    assert "the output folder already exists and is not empty; results are never overwritten" in again.stderr
    typo = ktk("experiment", suite, "--only", "wdie", cwd=tmp_path)
    assert typo.returncode == 2
    assert typo.stderr.strip() == ("ktk: error: --only: expected a config of the suite; received 'wdie'. "
                                   "Valid choices: small, wide. Did you mean 'wide'?")


def test_suite_user_errors(tmp_path):
    with pytest.raises(UserError, match="suite folder not found"):
        run_suite(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "base.yaml").write_text("data: {source: sklearn.iris}\n")
    with pytest.raises(UserError, match="the suite folder holds no configs"):
        run_suite(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.yaml").write_text("data: {source: sklearn.iris}\nmodel: {dropuot: 0.1}\n")
    with pytest.raises(UserError, match="model.dropuot: unknown key"):
        run_suite(bad, out_dir=tmp_path / "never")
    assert not (tmp_path / "never").exists()  # every config is checked before anything trains
    (bad / "a.yaml").write_text("data: {source: sklearn.iris}\n")
    (bad / "a.yml").write_text("data: {source: sklearn.iris}\n")
    with pytest.raises(UserError, match="two configs share a name; expected one config per variant name; "
                                        "received 'a.yaml, a.yml'"):
        run_suite(bad, out_dir=tmp_path / "never")
    (bad / "a.yml").unlink()
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="--out: this is a file, not a directory"):
        run_suite(bad, out_dir=tmp_path / "file")
    with pytest.raises(UserError, match="--out: cannot use this path"):
        run_suite(bad, out_dir=tmp_path / "file" / "below")
