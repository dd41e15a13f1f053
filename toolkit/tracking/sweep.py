"""A sweep's tracking: the HParams data in ``tensorboard/`` and an MLflow parent run with a nested run per trial.

Called by :mod:`toolkit.sweeps.tuning` at the sweep's start, at the end of every trial (after its record is
written, from the record and ``histories/<id>.csv``) and at the end. Trials themselves write their per-epoch
scalars (``tensorboard/trial_<id>/train``, ``validation``) in the process that trains them. Like a run's
trackers, none of this ever stops the sweep: the first failure of a tracker switches it off with one warning,
and the failures are listed in ``sweep.json`` (``tracking_errors``).
"""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

from toolkit.results import SWEEP_MARKER, read_history_csv
from toolkit.tracking import TRACKING_ERRORS, nested_in


def sweep_key(sweep_dir: Path) -> str:
    """The key naming a sweep in a tracking store: a hash of its marker (written once, when it was made)."""
    try:
        text = (Path(sweep_dir) / SWEEP_MARKER).read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = str(Path(sweep_dir).resolve())
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


class SweepTracking:
    """The trackers of one call of ``tune`` (see the module's doc)."""

    def __init__(self, config: Any, spec: Any, sweep_dir: Path, say: Callable[[str], None], creates: bool):
        """`creates`: this process starts the MLflow parent run (a one-process sweep or the chief); a
        distributed worker only finds it."""
        self.config = config
        self.spec = spec
        self.dir = Path(sweep_dir)
        self.say = say
        self.creates = creates
        self.errors: List[str] = []
        self.tensorboard = config.tracking.tensorboard_on
        self.mlflow = config.tracking.mlflow_on
        self.client: Any = None
        self.experiment: Optional[str] = None
        self.parent_id: Optional[str] = None

    def _guard(self, tracker: str, what: str, action: Callable[[], Any]) -> Any:
        if not getattr(self, tracker):
            return None
        try:
            return action()
        except Exception as error:  # never stops the sweep: switched off, said once, recorded
            from toolkit.tracking.mlflow import describe

            setattr(self, tracker, False)
            where = f"MLflow ({self.config.tracking.mlflow.tracking_uri})" if tracker == "mlflow" else "TensorBoard"
            text = f"{where} failed to {what}: {describe(error)}"
            self.errors.append(text)
            self.say(f"warning: {text}; the sweep goes on without it")
            return None

    # -- the sweep

    def start(self) -> None:
        if self.creates:
            from toolkit.tracking.tensorboard import write_experiment

            self._guard("tensorboard", "write the HParams experiment", lambda: write_experiment(self.dir, self.spec))
        self._guard("mlflow", "start the sweep's run", self._find_parent)

    def _find_parent(self) -> None:
        from toolkit import __version__
        from toolkit.tracking import mlflow as ml

        settings = self.config.tracking.mlflow
        self.client = ml.client(settings.tracking_uri)
        self.experiment = ml.experiment_id(self.client, settings.experiment or self.config.name,
                                           settings.tracking_uri)
        key = sweep_key(self.dir)
        found = ml.find_run(self.client, self.experiment, ml.SWEEP_KEY_TAG, key)
        if found is not None:
            self.parent_id = found.info.run_id
            if self.creates and found.info.status != "RUNNING":
                self.client.update_run(self.parent_id, status="RUNNING")  # resumed
            return
        if not self.creates:
            return  # a worker: the chief makes it
        tags = {ml.SWEEP_KEY_TAG: key, "ktk.version": __version__, "ktk.sweep_dir": str(self.dir.resolve()),
                "ktk.kind": "sweep"}
        if self.config.source:
            tags["ktk.config_path"] = str(self.config.source)
        commit = ml.git_commit(Path(self.config.source).parent if self.config.source else Path.cwd())
        if commit:
            tags["ktk.git_commit"] = commit
        run = self.client.create_run(self.experiment, run_name=self.dir.name, tags=tags)
        self.parent_id = run.info.run_id
        search = {f"search.{k}": v for k, v in ml.flat_params(self.spec.to_dict()).items()}
        ml._param_batch(self.client, self.parent_id, {**ml.flat_params(self.config.to_dict()), **search})

    def end(self, completed: bool, summary: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        """Ends the parent run (with the best score); returns what sweep.json adds."""
        if self.creates and self.parent_id is not None:
            from toolkit.tracking import mlflow as ml

            def finish() -> None:
                if summary:
                    values = {k: summary[k] for k in ("best_score", "completed", "failed") if k in summary}
                    ml._metric_batch(self.client, self.parent_id, values, 0)
                    if summary.get("best_trial") is not None:
                        self.client.set_tag(self.parent_id, "ktk.best_trial", str(summary["best_trial"]))
                self.client.set_terminated(self.parent_id, "FINISHED" if completed else "FAILED")

            self._guard("mlflow", "end the sweep's run", finish)
        return {TRACKING_ERRORS: list(self.errors)} if self.errors else {}

    def end_errors(self) -> Dict[str, Any]:
        """What sweep.json adds: the trackers' failures so far."""
        return {TRACKING_ERRORS: list(self.errors)} if self.errors else {}

    # -- trials

    def trial_task(self, trial_id: str) -> Dict[str, Any]:
        """What a trial's task needs to write its own scalars (its TensorBoard folder)."""
        if not self.tensorboard:
            return {}
        from toolkit.tracking.tensorboard import trial_log_dir

        return {"tensorboard_dir": str(trial_log_dir(self.dir, trial_id))}

    def trial_ended(self, record: Dict[str, Any], history_file: Path, trial_config: Any) -> None:
        """A finished trial (completed or failed), from its record: its HParams session and MLflow run."""
        completed = record.get("status") == "completed"
        score = record.get("score") if completed else None
        if self.tensorboard:
            from toolkit.tracking.tensorboard import write_trial

            self._guard("tensorboard", f"record trial {record['trial_id']}", lambda: write_trial(
                self.dir, record["trial_id"], record.get("values", {}), completed, score))
        if self.mlflow and self.parent_id is None and not self.creates:
            self._guard("mlflow", "find the sweep's run", self._find_parent)
        if self.mlflow and self.parent_id is not None:
            self._guard("mlflow", f"record trial {record['trial_id']}",
                        lambda: self._trial_run(record, history_file, trial_config, completed, score))

    def _trial_run(self, record: Dict[str, Any], history_file: Path, trial_config: Any, completed: bool,
                   score: Optional[float]) -> None:
        from toolkit.tracking import mlflow as ml

        key = f"{sweep_key(self.dir)}-trial-{record['trial_id']}"
        if ml.find_run(self.client, self.experiment, ml.RUN_KEY_TAG, key) is not None:
            return  # logged before an interruption
        tags = {"mlflow.parentRunId": self.parent_id, ml.RUN_KEY_TAG: key, "ktk.kind": "trial",
                "ktk.trial_id": str(record["trial_id"]), "ktk.status": str(record.get("status"))}
        if record.get("message"):
            tags["ktk.message"] = str(record["message"])[:5000]
        run = self.client.create_run(self.experiment, run_name=f"trial_{record['trial_id']}", tags=tags)
        run_id = run.info.run_id
        params = ml.flat_params(trial_config.to_dict()) if trial_config is not None else {}
        params.update({f"searched.{k}": v for k, v in
                       ml.flat_params({k: v for k, v in record.get("values", {}).items()}).items()})
        ml._param_batch(self.client, run_id, params)
        try:
            history = read_history_csv(history_file)
        except (OSError, ValueError):
            history = {}
        epochs = history.get("epoch") or []
        for index, epoch in enumerate(epochs):
            ml._metric_batch(self.client, run_id, {k: v[index] for k, v in history.items()
                                                   if k != "epoch" and index < len(v)}, int(epoch))
        final: Dict[str, float] = {}
        if score is not None:
            final["score"] = score
        for split in ("train", "validation"):
            for name, value in (record.get(split) or {}).items():
                final[f"{split}.{name}"] = value
        for name in ("epochs", "best_epoch", "params", "duration_s"):
            if record.get(name) is not None:
                final[name] = record[name]
        ml._metric_batch(self.client, run_id, final, len(epochs))
        self.client.set_terminated(run_id, "FINISHED" if completed else "FAILED")

    @contextlib.contextmanager
    def retraining(self, best: bool, trial_id: str) -> Iterator[None]:
        """Runs started inside (best/, top/) are nested in the sweep's MLflow run, tagged."""
        if not (self.mlflow and self.parent_id is not None):
            yield
            return
        tags = {"ktk.kind": "best" if best else "top", "ktk.trial_id": str(trial_id)}
        if best:
            tags["best"] = "true"
        with nested_in({"run_id": self.parent_id, "tags": tags, "name": "best" if best else f"top_{trial_id}"}):
            yield
