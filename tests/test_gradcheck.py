"""Gradient checking: passes on standard models, fails on a deliberately wrong custom gradient.

The checks that take seconds each (two checks of one model, the command line's TensorFlow subprocesses)
are marked slow; the fast tier keeps one failing and one passing check.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from toolkit.config import parse_config
from toolkit.errors import UserError
from toolkit.lessons.gradcheck import gradient_check, relative_difference, status_for, without_dropout

from helpers import REPO, subprocess_env

MOONS = {"source": "synthetic.moons", "options": {"n_samples": 100, "noise": 0.2}}


def config(model, data=MOONS, **extra):
    return parse_config({"name": "gc", "data": data, "model": model, **extra})


def test_relative_difference_and_thresholds():
    assert relative_difference(np.array([1.0, 2.0]), np.array([1.0, 2.0])) == 0.0
    assert relative_difference(np.zeros(3), np.zeros(3)) == 0.0
    assert relative_difference(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == pytest.approx(np.sqrt(2) / 2)
    assert [status_for(d) for d in (1e-9, 9.9e-8, 1e-7, 1e-5, 1.1e-5, float("nan"))] == \
        ["pass", "pass", "warn", "warn", "fail", "fail"]


@pytest.mark.slow
def test_dense_with_l2_and_dropout_passes_in_float64():
    import keras

    cfg = config({"hidden": [6, 5], "regularizer": {"l2": 0.05}, "dropout": 0.5, "initializer": "he_normal"})
    result = gradient_check(cfg, samples=8)
    assert result.status == "pass", result.to_dict()
    assert result.difference < 1e-7
    assert result.checked == result.parameters == (2 * 6 + 6) + (6 * 5 + 5) + (5 + 1)
    assert [c.layer for c in result.layers] == ["dense_1", "dense_2", "output"]
    assert keras.config.floatx() == "float32" and keras.config.dtype_policy().name == "float32"
    # The L2 penalty is part of the checked cost: the same weights without it cost less.
    plain = gradient_check(cfg.with_values({"model.regularizer": None}), samples=8)
    assert plain.cost < result.cost - 1e-3


@pytest.mark.slow
def test_batchnorm_model_passes_and_sampling_limits_parameters():
    cfg = config({"hidden": [8, 4], "batchnorm": True, "activation": "tanh"}, data={"source": "sklearn.iris"})
    result = gradient_check(cfg, samples=16)
    assert result.status == "pass", result.to_dict()
    assert "batchnorm_1" in [c.layer for c in result.layers]
    limited = gradient_check(cfg, samples=16, max_parameters_per_layer=5)
    assert all(c.checked == min(5, c.parameters) for c in limited.layers)
    assert limited.status == "pass"


WRONG = {"custom_modules": ["custom_layers_for_tests"],
         "layers": [{"units": 6},
                    {"class_name": "ktk_tests>WrongGradientDense", "config": {"units": 4, "name": "cube"}},
                    {"units": 3, "activation": "tanh"}]}


def test_wrong_custom_gradient_fails_naming_the_layer():
    result = gradient_check(config(WRONG), samples=8)
    assert result.status == "fail"
    assert result.suspect == "cube"
    assert {c.layer for c in result.worst[:2]} == {"cube", "dense_1"}  # dense_1 inherits cube's error
    assert next(c for c in result.layers if c.layer == "cube").difference > 1e-2
    statuses = {c.layer: c.status for c in result.layers}
    assert statuses == {"dense_1": "fail", "cube": "fail", "dense_3": "pass", "output": "pass"}


def test_right_custom_gradient_passes():
    right = {**WRONG, "layers": [WRONG["layers"][0], {"class_name": "ktk_tests>CubeDense", "config": {"units": 4}},
                                 WRONG["layers"][2]]}
    assert gradient_check(config(right), samples=8).status == "pass"


def test_dropout_everywhere_is_switched_off():
    cfg = config({"layers": [{"units": 4, "dropout": 0.3}, {"class_name": "Dropout", "config": {"rate": 0.5}},
                             {"class_name": "GaussianNoise", "config": {"stddev": 0.2}}, {"units": 3}],
                  "dropout": 0.2})
    off = without_dropout(cfg)
    assert off.model.dropout == 0.0
    assert off.model.layers[0].dropout == 0.0
    assert off.model.layers[1].config == {"rate": 0.0}
    assert off.model.layers[2].config == {"stddev": 0.0}
    assert gradient_check(cfg).status == "pass"


def test_random_cost_is_a_user_error():
    noisy = {"custom_modules": ["custom_layers_for_tests"],
             "layers": [{"units": 4}, {"class_name": "ktk_tests>NoisyIdentity", "config": {}}]}
    with pytest.raises(UserError) as error:
        gradient_check(config(noisy))
    assert str(error.value) == ("model.layers: the cost differs between two evaluations with the same weights: a "
                                "layer is random in training mode (dropout or noise that gradcheck could not "
                                "switch off).")
    with pytest.raises(UserError, match="--samples: expected a positive number of examples; received 0"):
        gradient_check(config({"hidden": [2]}), samples=0)
    # a check of nothing would pass: refused in the library too, not only by the command line
    with pytest.raises(UserError, match="--max-per-layer: expected a positive number of parameters; received 0"):
        gradient_check(config({"hidden": [2]}), max_parameters_per_layer=0)
    with pytest.raises(UserError, match=r"epsilon: expected a finite-difference step in \(0, 1\); received 0"):
        gradient_check(config({"hidden": [2]}), epsilon=0)


@pytest.mark.slow
def test_cli_exit_status_and_json(tmp_path):
    env = subprocess_env(PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")]))  # the custom layers
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(json.dumps({"data": MOONS, "model": WRONG}))
    done = subprocess.run([sys.executable, "-m", "toolkit", "gradcheck", str(wrong)], capture_output=True,
                          text=True, env=env)
    assert done.returncode == 1, done.stderr
    assert "gradcheck: comparing 65 of 65 parameters\n" in done.stderr  # on stderr: --format json stays JSON
    assert done.stdout.startswith("Gradient check of wrong: FAIL")
    assert "The wrong gradient most likely starts in layer 'cube'" in done.stdout
    ok = subprocess.run([sys.executable, "-m", "toolkit", "gradcheck", str(wrong), "--format", "json",
                         "--set", "model.layers.1.class_name=ktk_tests>CubeDense"],
                        capture_output=True, text=True, env=env)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["status"] == "pass"
    bad = subprocess.run([sys.executable, "-m", "toolkit", "gradcheck", str(wrong), "--samples", "0"],
                         capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


@pytest.mark.slow
def test_large_regression_cost_passes_with_a_scaled_step():
    cfg = config({"hidden": [4], "regularizer": {"l1": 0.001, "l2": 0.001}}, data={"source": "sklearn.diabetes"})
    result = gradient_check(cfg)
    assert result.cost > 1e3  # mean squared error on targets in the hundreds
    assert result.epsilon == pytest.approx(1e-7 * result.cost ** (1 / 3))
    assert result.status == "pass", result.to_dict()
    assert gradient_check(cfg, epsilon=1e-7).difference > result.difference  # round-off at the fixed step


@pytest.mark.slow
def test_a_big_model_is_checked_on_a_seeded_sample_of_every_tensor():
    # 91,501 parameters: all of them would take minutes; the default compares 1,000 (in seconds), says so
    # before it starts, and spreads them over every weight tensor.
    cfg = config({"hidden": [300, 300]})
    lines = []
    result = gradient_check(cfg, progress=lines.append)
    assert (result.checked, result.parameters) == (1000, (2 * 300 + 300) + (300 * 300 + 300) + (300 + 1))
    assert lines[0] == "gradcheck: comparing 1,000 of 91,501 parameters (a seeded sample of every weight tensor)"
    assert all(0 < c.checked <= c.parameters for c in result.layers)
    assert [c.checked for c in result.layers] == [399, 400, 201]  # kernel and bias of each layer
    assert result.status == "pass", result.to_dict()
    assert any(note.startswith("1,000 of 91,501 parameters compared: a sample of every weight tensor, drawn with "
                               "the config's seed (at most 1,000 in all, the default for this size)")
               for note in result.notes)
    # An explicit cap, and the same sample (the same figures) for the same seed.
    small = [gradient_check(cfg, max_parameters=30, max_parameters_per_layer=12) for _ in range(2)]
    assert small[0].checked == 30 and all(0 < c.checked <= 12 for c in small[0].layers)
    assert small[0].to_dict() == small[1].to_dict()
