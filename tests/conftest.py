"""Shared test set-up: quiet TensorFlow, one thread pool, small fixtures."""

import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")


# Real runs and a real sweep, trained once per session and read by test_compare.py and test_report.py
# (built by test_compare's helpers).
@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    from test_compare import runs_folder

    return runs_folder(tmp_path_factory)


@pytest.fixture(scope="session")
def sweep(tmp_path_factory):
    from test_compare import sweep_folder

    return sweep_folder(tmp_path_factory)
