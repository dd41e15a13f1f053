"""Sweeps: ``ktk tune``, a keras-tuner search over a config's ``search:`` section into a sweep directory.

The package, one module per concern (in the order a sweep uses them):

- :mod:`~toolkit.sweeps.tuning`: :func:`tune`, the search loop, :class:`SweepResult`, :class:`Role`;
- :mod:`~toolkit.sweeps.directory`: what a folder is, what ``--overwrite`` may delete, the sweep's config.yaml;
- :mod:`~toolkit.sweeps.lock`: one sweep per directory at a time;
- :mod:`~toolkit.sweeps.space`: the search space as keras-tuner hyperparameters and oracles;
- :mod:`~toolkit.sweeps.runner`: running one trial, inline or in recycled worker processes;
- :mod:`~toolkit.sweeps.records`: ``records/<id>.json`` and ``trials.csv``, read and written there only;
- :mod:`~toolkit.sweeps.formatting`: progress lines and the summary;
- :mod:`~toolkit.sweeps.keras_tuner_compat`: every use of keras-tuner beyond its public API.

Names are imported lazily, so that reading a sweep's records (compare, report) loads neither Keras nor the
config schema.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> module that defines it
_API = {
    "tune": "toolkit.sweeps.tuning",
    "Role": "toolkit.sweeps.tuning",
    "SweepResult": "toolkit.sweeps.tuning",
    "DEFAULT_SWEEPS_DIR": "toolkit.sweeps.directory",
    "read_trials": "toolkit.sweeps.records",
    "trial_rows": "toolkit.sweeps.records",
    "format_trials_csv": "toolkit.sweeps.records",
    "trial_sort_key": "toolkit.sweeps.records",
    "format_progress": "toolkit.sweeps.formatting",
    "format_sweep_summary": "toolkit.sweeps.formatting",
    "run_trial_task": "toolkit.sweeps.runner",
    "rss_mb": "toolkit.sweeps.runner",
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'toolkit.sweeps' has no attribute {name!r}")


def __dir__() -> list:
    return __all__ + ["directory", "formatting", "keras_tuner_compat", "lock", "records", "runner", "space",
                      "sweep_data", "tuning"]
