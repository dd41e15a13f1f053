"""Shared test set-up: quiet TensorFlow, one thread pool, small fixtures."""

import os

import pytest

from helpers import built_once, train_runs, train_sweep

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")


# Real runs and a real sweep, trained once per session and read by test_compare.py and test_report.py
# (built by tests/helpers.py).
@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    return built_once(tmp_path_factory, "runs", train_runs)


@pytest.fixture(scope="session")
def sweep(tmp_path_factory):
    return built_once(tmp_path_factory, "sweep", train_sweep) / "sweep"
