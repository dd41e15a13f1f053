"""ktk, the Keras experiment toolkit: run, tune, compare and diagnose Keras experiments from YAML.

The public API is listed in ``__all__``. Names are imported lazily so that ``import toolkit`` stays fast
and never imports TensorFlow; each function imports what it needs when called.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_API = {
    "UserError": "toolkit.errors",
    "Config": "toolkit.config",
    "load_config": "toolkit.config",
    "parse_config": "toolkit.config",
    "load_data": "toolkit.data",
    "build_model": "toolkit.models",
    "run": "toolkit.runs",
    "validate": "toolkit.runs",
    # results that leave ktk
    "load_run": "toolkit.deploy.predict",
    "LoadedRun": "toolkit.deploy.predict",
    "export_run": "toolkit.deploy.export",
    # sweeps
    "parse_search": "toolkit.search",
    "QuasiRandomOracle": "toolkit.sweeps.space",
    "tune": "toolkit.sweeps",
    "SweepResult": "toolkit.sweeps",
    "tune_distributed": "toolkit.distributed",
    # comparing
    "compare": "toolkit.analysis.compare",
    "render": "toolkit.analysis.compare",
    "plot": "toolkit.analysis.plots",
    "report": "toolkit.analysis.report",
    # lessons
    "diagnose": "toolkit.lessons.diagnosis",
    "Diagnosis": "toolkit.lessons.diagnosis",
    "verdict_for_run": "toolkit.lessons.diagnosis",
    "format_diagnosis": "toolkit.lessons.diagnosis",
    "gradient_check": "toolkit.lessons.gradcheck",
    "GradcheckResult": "toolkit.lessons.gradcheck",
    "format_gradcheck": "toolkit.lessons.gradcheck",
    "gradient_monitor": "toolkit.lessons.monitor",
    "run_suite": "toolkit.lessons.experiments",
    "SuiteResult": "toolkit.lessons.experiments",
    "lesson_rows": "toolkit.lessons.experiments",
}

__all__ = sorted(_API) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'toolkit' has no attribute {name!r}")


def __dir__() -> list:
    return __all__
