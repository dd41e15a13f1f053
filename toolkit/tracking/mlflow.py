"""MLflow: each run an MLflow run; a sweep a parent run with one nested run per trial and ``best/``.

A run's MLflow run holds: params, the resolved config as dot paths (as ``ktk compare`` shows them); metrics,
every epoch's (``loss``, ``val_loss``, ..., ``learning_rate``; step = the 1-based epoch) and the final ones
(``train.loss``, ``validation.accuracy``, ``test.accuracy``, ``best_epoch``, ...); tags ``ktk.version``,
``ktk.git_commit``, ``ktk.config_path``, ``ktk.run_dir`` and ``ktk_run_key``; artifacts config.yaml,
metrics.json, history.csv, labels.json and model.keras.

``ktk_run_key`` names a run directory (a hash of its config.yaml and start time), so ``ktk sync`` uploads a run
directory once, however often it is synced. The tracking store is any MLflow tracking URI; the default is a
SQLite file, ``sqlite:///mlflow.db`` in the current folder (``mlflow ui --backend-store-uri sqlite:///mlflow.db``).

Every call into MLflow is guarded: the first failure switches MLflow off for the rest of the run, with one
warning, and is recorded (:class:`toolkit.tracking.RunTracking`). An HTTP tracking server is asked without
retries and with a short timeout, so an unreachable one costs seconds, not minutes.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from toolkit.results import CONFIG_FILE, HISTORY_FILE, LABELS_FILE, METRICS_FILE, MODEL_FILE, SPLITS

RUN_KEY_TAG = "ktk_run_key"
SWEEP_KEY_TAG = "ktk_sweep_key"
MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value
BATCH = 100  # params or metrics per request
HTTP_TIMEOUT_S = "10"


class TrackingFailed(Exception):
    """MLflow failed; the message says what and why, in one line."""


def run_key(config_text: str, started_at: Any) -> str:
    """The key naming one run directory in a tracking store: its config.yaml and its start time."""
    return hashlib.sha256(f"{config_text}\0{started_at}".encode("utf-8", "replace")).hexdigest()[:32]


def client(uri: str) -> Any:
    """An MlflowClient for `uri`; HTTP requests without retries and with a short timeout (unless set)."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", HTTP_TIMEOUT_S)
    import logging

    from mlflow.tracking import MlflowClient

    for name in ("mlflow", "alembic"):  # MLflow logs its store's migrations and a notice per run at INFO
        logging.getLogger(name).setLevel(logging.WARNING)
    return MlflowClient(tracking_uri=uri)


def artifact_location(uri: str) -> Optional[str]:
    """Where a new experiment of a SQLite store keeps its artifacts: ``mlartifacts/`` beside the database file
    (MLflow's default, ``./mlruns``, would depend on the folder ktk runs in). None: the store's default."""
    if not uri.startswith("sqlite:///"):
        return None
    database = Path(uri[len("sqlite:///"):])
    return (database.parent.absolute() / "mlartifacts").as_uri() if str(database) not in ("", ":memory:") else None


def experiment_id(mlflow_client: Any, name: str, uri: str) -> str:
    """The id of experiment `name`, created when missing (and restored when deleted)."""
    found = mlflow_client.get_experiment_by_name(name)
    if found is None:
        try:
            location = artifact_location(uri)
            return mlflow_client.create_experiment(name, **({"artifact_location": location} if location else {}))
        except Exception:  # another process created it meanwhile
            found = mlflow_client.get_experiment_by_name(name)
            if found is None:
                raise
    if getattr(found, "lifecycle_stage", "active") == "deleted":
        mlflow_client.restore_experiment(found.experiment_id)
    return found.experiment_id


def flat_params(config_dict: Dict[str, Any]) -> Dict[str, str]:
    """The resolved config as MLflow params: dot paths (as ``ktk compare``'s columns) to text."""
    from toolkit.analysis.compare import flatten

    params = {}
    for key, value in flatten(config_dict).items():
        text = "null" if value is None else json.dumps(value) if isinstance(value, bool) else str(value)
        params[key] = text[:MAX_PARAM_LENGTH]
    return params


def final_metrics(metrics: Dict[str, Any]) -> Dict[str, float]:
    """metrics.json's numbers as MLflow metrics: ``train.loss``, ``test.accuracy``, ``best_epoch``, ..."""
    out: Dict[str, float] = {}
    for split in SPLITS:
        for name, value in (metrics.get(split) or {}).items():
            if _is_number(value):
                out[f"{split}.{name}"] = float(value)
    for key in ("epochs_run", "best_epoch", "params", "wall_time_s"):
        if _is_number(metrics.get(key)):
            out[key] = float(metrics[key])
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def git_commit(folder: Path) -> Optional[str]:
    """The commit checked out in the git work tree holding `folder`, or None."""
    try:
        done = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and len(commit) == 40 else None


def run_tags(config_path: Optional[str], run_dir: Path, key: str) -> Dict[str, str]:
    from toolkit import __version__

    tags = {"ktk.version": __version__, "ktk.run_dir": str(Path(run_dir).resolve()), RUN_KEY_TAG: key}
    if config_path:
        tags["ktk.config_path"] = str(config_path)
    commit = git_commit(Path(config_path).parent if config_path else Path.cwd())
    if commit:
        tags["ktk.git_commit"] = commit
    return tags


def _metric_batch(mlflow_client: Any, run_id: str, values: Dict[str, float], step: int) -> None:
    from mlflow.entities import Metric

    import time

    now = int(time.time() * 1000)
    items = [Metric(name, float(v), now, step) for name, v in values.items() if _is_number(v)]
    for start in range(0, len(items), BATCH):
        mlflow_client.log_batch(run_id, metrics=items[start:start + BATCH])


def _param_batch(mlflow_client: Any, run_id: str, params: Dict[str, str]) -> None:
    from mlflow.entities import Param

    items = [Param(k, v) for k, v in params.items()]
    for start in range(0, len(items), BATCH):
        mlflow_client.log_batch(run_id, params=items[start:start + BATCH])


def find_run(mlflow_client: Any, experiment: Any, tag: str, value: str) -> Optional[Any]:
    """A run of the experiment (an id, or a list of ids) tagged ``tag = value`` (not deleted), or None."""
    experiments = list(experiment) if isinstance(experiment, (list, tuple)) else [experiment]
    runs = mlflow_client.search_runs(experiments, filter_string=f"tags.{tag} = '{value}'", max_results=1)
    return runs[0] if runs else None


def describe(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return f"{type(error).__name__}: {text[:300]}"


class RunLogger:
    """One ktk run as an MLflow run; every call guarded (see the module's doc)."""

    def __init__(self, config: Any, run_dir: Path, started_at: str, parent: Optional[Dict[str, Any]],
                 on_error: Callable[[str], None]):
        self.config = config
        self.run_dir = Path(run_dir)
        self.started_at = started_at
        self.parent = parent
        self.on_error = on_error
        self.settings = config.tracking.mlflow
        self.client: Any = None
        self.run_id: Optional[str] = None
        self.failed = False

    def _guard(self, what: str, action: Callable[[], Any]) -> Any:
        if self.failed:
            return None
        try:
            return action()
        except Exception as error:  # a tracker never fails the run: switched off, said once, recorded
            self.failed = True
            self.on_error(f"MLflow ({self.settings.tracking_uri}) failed to {what}: {describe(error)}")
            return None

    def start(self) -> None:
        self._guard("start the run", self._start)

    def _start(self) -> None:
        self.client = client(self.settings.tracking_uri)
        experiment = experiment_id(self.client, self.settings.experiment or self.config.name,
                                   self.settings.tracking_uri)
        config_text = (self.run_dir / CONFIG_FILE).read_text(encoding="utf-8")
        tags = run_tags(self.config.source, self.run_dir, run_key(config_text, self.started_at))
        if self.parent is not None:
            tags["mlflow.parentRunId"] = self.parent["run_id"]
            tags.update(self.parent.get("tags", {}))
        run = self.client.create_run(experiment, run_name=self.run_dir.name if self.parent is None
                                     else self.parent.get("name", self.run_dir.name), tags=tags)
        self.run_id = run.info.run_id
        _param_batch(self.client, self.run_id, flat_params(self.config.to_dict()))

    def log_epoch(self, epoch: int, logs: Dict[str, Any]) -> None:
        if self.run_id is not None:
            self._guard("log an epoch", lambda: _metric_batch(self.client, self.run_id, logs, epoch))

    def epoch_callback(self) -> Any:
        return _epoch_callback_class()(self)

    def finish(self, metrics: Dict[str, Any]) -> None:
        if self.run_id is not None:
            self._guard("log the run's results", lambda: self._finish(metrics))
            self.end("FINISHED")

    def _finish(self, metrics: Dict[str, Any]) -> None:
        _metric_batch(self.client, self.run_id, final_metrics(metrics), metrics.get("epochs_run") or 0)
        self.client.log_text(self.run_id, json.dumps(metrics, indent=2) + "\n", METRICS_FILE)
        names = [CONFIG_FILE, HISTORY_FILE, LABELS_FILE] + ([MODEL_FILE] if self.settings.log_model else [])
        for name in names:
            if (self.run_dir / name).is_file():
                self.client.log_artifact(self.run_id, str(self.run_dir / name))

    def end(self, status: str) -> None:
        if self.run_id is not None:
            run_id, self.run_id = self.run_id, None
            if not self.failed:
                self._guard("end the run", lambda: self.client.set_terminated(run_id, status))


@functools.lru_cache(maxsize=None)
def _epoch_callback_class() -> type:
    import keras

    from toolkit.results import current_learning_rate

    class MLflowEpochs(keras.callbacks.Callback):
        """Each epoch's logs (and learning rate) as MLflow metrics at step epoch + 1 (history.csv's epoch)."""

        def __init__(self, logger: RunLogger) -> None:
            super().__init__()
            self.logger = logger

        def on_epoch_end(self, epoch: int, logs: Optional[Dict[str, Any]] = None) -> None:
            values = {k: float(v) for k, v in (logs or {}).items() if _is_number(_plain(v))}
            values["learning_rate"] = current_learning_rate(self.model)
            self.logger.log_epoch(epoch + 1, values)

    return MLflowEpochs


def _plain(value: Any) -> Any:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
