"""Tracking: what ``tracking:`` adds to a run or a sweep (TensorBoard event files, an MLflow tracking store).

Tracking never decides whether a run or sweep succeeds: a tracker that fails (an unreachable server, an
unwritable store, a missing package) is switched off for the rest of the run after one warning on stderr, and
its failure is recorded in the run's ``environment.json`` (``tracking_errors``). Training, ``metrics.json``
and every other result file are written as without it.

- :mod:`toolkit.tracking.tensorboard`: ``tensorboard/`` in every run and sweep directory;
- :mod:`toolkit.tracking.mlflow`: MLflow runs (a sweep is a parent run with one nested run per trial), and
  ``ktk sync`` for run directories made without it.

This module is light (no TensorFlow, no MLflow at import).
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

# The MLflow run that runs started now are nested in (a sweep's parent run, for best/ and top/ retrains),
# and the tags they get: {"run_id": ..., "tags": {...}}.
_PARENT: contextvars.ContextVar[Optional[Dict[str, Any]]] = contextvars.ContextVar("ktk_mlflow_parent",
                                                                                    default=None)
TRACKING_ERRORS = "tracking_errors"  # the key of environment.json listing tracking failures


def warn(text: str) -> None:
    """One warning line on stderr (tracking problems never stop a run)."""
    print(f"ktk: warning: {text}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def nested_in(parent: Optional[Dict[str, Any]]) -> Iterator[None]:
    """Runs started inside are nested in the MLflow run `parent` (``{"run_id", "tags"}``; None: not nested)."""
    token = _PARENT.set(parent)
    try:
        yield
    finally:
        _PARENT.reset(token)


class RunTracking:
    """The trackers of one run (:func:`toolkit.runs.run`): callbacks for ``fit``, then the run's end.

    Call :meth:`callbacks` once the run directory holds config.yaml, :meth:`finish` once model.keras and
    history.csv are written (before metrics.json, which it is given), and :meth:`abort` when the run fails.
    """

    def __init__(self, config: Any, run_dir: Path, started_at: str):
        self.config = config
        self.run_dir = Path(run_dir)
        self.started_at = started_at
        self.errors: List[str] = []
        self.mlflow: Any = None

    def callbacks(self, gradient_monitor: Any = None) -> List[Any]:
        """Keras callbacks writing ``tensorboard/`` and the MLflow run's per-epoch metrics."""
        made: List[Any] = []
        tracking = self.config.tracking
        if tracking.tensorboard_on:
            from toolkit.tracking.tensorboard import run_callbacks

            made += run_callbacks(self.config, self.run_dir, gradient_monitor, on_error=self._failed)
        if tracking.mlflow_on:
            from toolkit.tracking.mlflow import RunLogger

            self.mlflow = RunLogger(self.config, self.run_dir, self.started_at, parent=_PARENT.get(),
                                    on_error=self._failed)
            self.mlflow.start()
            made.append(self.mlflow.epoch_callback())
        return made

    def finish(self, metrics: Dict[str, Any]) -> Dict[str, Any]:
        """Ends the MLflow run with the final metrics and artifacts; returns what environment.json adds."""
        if self.mlflow is not None:
            self.mlflow.finish(metrics)
        return {TRACKING_ERRORS: list(self.errors)} if self.errors else {}

    def abort(self, interrupted: bool = False) -> None:
        """Marks the MLflow run failed (or killed, for Ctrl-C)."""
        if self.mlflow is not None:
            self.mlflow.end("KILLED" if interrupted else "FAILED")

    def _failed(self, text: str) -> None:
        self.errors.append(text)
        warn(f"{text}; the run goes on without it")


def apply_switches(overrides: List[str], tensorboard: bool, mlflow: Any) -> List[str]:
    """``--tensorboard`` and ``--mlflow [URI]`` as ``--set`` overrides (keeping a section's other settings).

    Args:
        mlflow: None (not given), True (given without a URI) or the URI.
    """
    import json

    out = list(overrides)
    if tensorboard:
        out.append("tracking.tensorboard.enabled=true")
    if mlflow is not None:
        out.append("tracking.mlflow.enabled=true")
        if mlflow is not True:
            out.append(f"tracking.mlflow.tracking_uri={json.dumps(str(mlflow))}")  # JSON is YAML: any text stays text
    return out
