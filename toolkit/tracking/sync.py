"""``ktk sync PATH --mlflow URI``: run and sweep directories made earlier, uploaded to an MLflow store.

Each run directory becomes an MLflow run as a live run would have made it (params, per-epoch and final
metrics, tags, artifacts), each sweep a parent run with a nested run per trial and ``best/`` (tagged best) and
``top/`` runs. A run already in the store (found by its ``ktk_run_key`` tag, a hash of its config.yaml and start
time; sweeps by ``ktk_sweep_key``) is skipped, so syncing twice, or syncing what was tracked live, uploads
nothing twice. Nothing is written into the directories synced.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

from toolkit.errors import UserError
from toolkit.results import (BEST_DIR, CONFIG_FILE, ENVIRONMENT_FILE, HISTORY_FILE, LABELS_FILE, METRICS_FILE,
                             MODEL_FILE, RECORDS_DIR, SWEEP_FILE, TOP_DIR, read_history_csv, read_json, read_yaml)


@dataclass
class SyncResult:
    """What a sync did: run directories uploaded and skipped (already there), sweeps, warnings."""

    uploaded: List[Path] = field(default_factory=list)
    skipped: List[Path] = field(default_factory=list)
    sweeps: List[Path] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)


def sync(paths: Union[str, Path, Sequence[Union[str, Path]]], tracking_uri: str, experiment: Optional[str] = None,
         log_model: bool = True, progress: Optional[Callable[[str], None]] = None) -> SyncResult:
    """Uploads run and sweep directories under `paths` to the MLflow store at `tracking_uri`.

    Args:
        experiment: the MLflow experiment; default each config's name.
        log_model: upload model.keras too.

    Raises:
        UserError: MLflow is not installed, a path holds no run or sweep, or the store cannot be used.
    """
    import importlib.util

    from toolkit.analysis.compare import find
    from toolkit.config import MLFLOW_EXTRA

    if importlib.util.find_spec("mlflow") is None:
        raise UserError(f"MLflow is not installed; it is an optional extra: {MLFLOW_EXTRA}", where="--mlflow")
    say = progress or (lambda line: None)
    found = find([paths] if isinstance(paths, (str, Path)) else list(paths))
    result = SyncResult(warnings=list(found.warnings))
    if not found.runs and not found.sweeps:
        raise UserError("no finished run or sweep directory there", where="PATH", received=str(paths),
                        expected="a run directory, a sweep directory or a folder holding them")
    syncer = _Syncer(tracking_uri, experiment, log_model, result, say)
    sweeps = [Path(s).resolve() for s in found.sweeps]
    for run_dir in found.runs:
        if any(s in Path(run_dir).resolve().parents for s in sweeps):
            continue  # a sweep's best/ or top/: synced with its sweep, nested
        syncer.run_dir(Path(run_dir))
    for sweep_dir in found.sweeps:
        syncer.sweep(Path(sweep_dir))
    return result


class _Syncer:
    def __init__(self, uri: str, experiment: Optional[str], log_model: bool, result: SyncResult,
                 say: Callable[[str], None]):
        from toolkit.tracking import mlflow as ml

        self.ml = ml
        self.uri = uri
        self.experiment = experiment
        self.log_model = log_model
        self.result = result
        self.say = say
        self.client = self._call("open the store", lambda: ml.client(uri))
        self.experiments: Dict[str, str] = {}

    def _call(self, what: str, action: Callable[[], Any]) -> Any:
        try:
            return action()
        except UserError:
            raise
        except Exception as error:
            raise UserError(f"MLflow failed to {what}: {self.ml.describe(error)}", where="--mlflow",
                            received=self.uri) from None

    def _experiment(self, name: str) -> str:
        name = self.experiment or name
        if name not in self.experiments:
            self.experiments[name] = self._call(f"open experiment {name!r}",
                                                lambda: self.ml.experiment_id(self.client, name, self.uri))
        return self.experiments[name]

    def _uploaded(self, key: str) -> bool:
        """Whether a run of this key is in any experiment of the store (it may have been tracked live)."""
        ids = [e.experiment_id for e in self.client.search_experiments()]
        return bool(ids) and self.ml.find_run(self.client, ids, self.ml.RUN_KEY_TAG, key) is not None

    def run_dir(self, run_dir: Path, parent: Optional[Dict[str, Any]] = None,
                experiment: Optional[str] = None) -> None:
        ml = self.ml
        try:
            config_text = (run_dir / CONFIG_FILE).read_text(encoding="utf-8")
            config = read_yaml(run_dir / CONFIG_FILE)
            metrics = read_json(run_dir / METRICS_FILE)
            environment = read_json(run_dir / ENVIRONMENT_FILE) if (run_dir / ENVIRONMENT_FILE).is_file() else {}
        except (OSError, ValueError) as error:
            self.result.warnings.append(f"{run_dir}: skipped, it cannot be read ({error})")
            return
        if not isinstance(config, dict) or not isinstance(metrics, dict):
            self.result.warnings.append(f"{run_dir}: skipped, its config.yaml or metrics.json is damaged")
            return
        name = _experiment_of(config) or str(config.get("name") or run_dir.name)
        experiment_id = experiment or self._experiment(name)
        key = ml.run_key(config_text, environment.get("started") if isinstance(environment, dict) else None)
        if self._call("search the store", lambda: self._uploaded(key)):
            self.result.skipped.append(run_dir)
            return
        source = environment.get("config_source") if isinstance(environment, dict) else None
        tags = ml.run_tags(source, run_dir, key)
        tags["ktk.synced"] = "true"
        if parent is not None:
            tags["mlflow.parentRunId"] = parent["run_id"]
            tags.update(parent.get("tags", {}))

        def upload() -> None:
            run = self.client.create_run(experiment_id, run_name=parent.get("name") if parent else run_dir.name,
                                         tags=tags)
            run_id = run.info.run_id
            ml._param_batch(self.client, run_id, ml.flat_params(config))
            _history_metrics(ml, self.client, run_id, run_dir / HISTORY_FILE)
            ml._metric_batch(self.client, run_id, ml.final_metrics(metrics), metrics.get("epochs_run") or 0)
            names = [CONFIG_FILE, METRICS_FILE, HISTORY_FILE, LABELS_FILE] + ([MODEL_FILE] if self.log_model else [])
            for name in names:
                if (run_dir / name).is_file():
                    self.client.log_artifact(run_id, str(run_dir / name))
            self.client.set_terminated(run_id, "FINISHED")

        self._call(f"upload {run_dir}", upload)
        self.result.uploaded.append(run_dir)
        self.say(f"uploaded {run_dir}")

    def sweep(self, sweep_dir: Path) -> None:
        from toolkit.config import parse_config
        from toolkit.search import apply_values, parse_search
        from toolkit.sweeps.records import Records, trial_history_file
        from toolkit.tracking.sweep import SweepTracking

        try:
            stored = read_yaml(sweep_dir / CONFIG_FILE)
            config = parse_config(stored, source=str(sweep_dir / CONFIG_FILE)).with_values({
                "tracking": {"mlflow": {"tracking_uri": self.uri,
                                        "experiment": self.experiment or _experiment_of(stored)},
                             "tensorboard": None}})
            spec = parse_search(config)
        except (OSError, ValueError, UserError) as error:
            self.result.warnings.append(f"{sweep_dir}: skipped, its config.yaml cannot be used ({error})")
            return
        base = config.with_values({"search": None})
        tracking = SweepTracking(base, spec, sweep_dir, say=lambda line: None, creates=True)
        tracking.start()
        self._raise_if_failed(tracking)
        records = Records(sweep_dir / RECORDS_DIR).load()
        for trial_id in sorted(records, key=lambda t: (len(t), t)):
            record = records[trial_id]
            try:
                trial_config = apply_values(base, record.get("values", {}))
            except UserError:
                trial_config = None
            tracking.trial_ended(record, trial_history_file(sweep_dir, trial_id), trial_config)
            self._raise_if_failed(tracking)
        parent_experiment = tracking.experiment
        for run_dir, best in [(sweep_dir / BEST_DIR, True)] + [
                (p, False) for p in sorted((sweep_dir / TOP_DIR).glob("trial_*")) if p.is_dir()]:
            if (run_dir / METRICS_FILE).is_file():
                trial_id = run_dir.name[len("trial_"):] if not best else _best_trial(sweep_dir)
                tags = {"ktk.kind": "best" if best else "top", "ktk.trial_id": str(trial_id)}
                if best:
                    tags["best"] = "true"
                self.run_dir(run_dir, parent={"run_id": tracking.parent_id, "tags": tags,
                                              "name": "best" if best else f"top_{trial_id}"},
                             experiment=parent_experiment)
        summary = read_json(sweep_dir / SWEEP_FILE) if (sweep_dir / SWEEP_FILE).is_file() else None
        tracking.end(summary is not None, summary if isinstance(summary, dict) else None)
        self._raise_if_failed(tracking)
        self.result.sweeps.append(sweep_dir)
        self.say(f"synced sweep {sweep_dir} ({len(records)} trials)")

    def _raise_if_failed(self, tracking: Any) -> None:
        if tracking.errors:
            raise UserError(tracking.errors[0], where="--mlflow", received=self.uri)


def _experiment_of(config: Any) -> Optional[str]:
    """The MLflow experiment a stored config names (tracking.mlflow.experiment), if any."""
    try:
        name = config["tracking"]["mlflow"]["experiment"]
    except (KeyError, TypeError):
        return None
    return name if isinstance(name, str) and name else None


def _best_trial(sweep_dir: Path) -> str:
    try:
        return str(read_json(sweep_dir / SWEEP_FILE).get("best_trial"))
    except (OSError, ValueError, AttributeError):
        return "?"


def _history_metrics(ml: Any, client: Any, run_id: str, path: Path) -> None:
    try:
        history = read_history_csv(path)
    except (OSError, ValueError):
        return
    epochs = history.get("epoch") or []
    for index, epoch in enumerate(epochs):
        ml._metric_batch(client, run_id, {k: v[index] for k, v in history.items() if k != "epoch" and index < len(v)},
                         int(epoch))
