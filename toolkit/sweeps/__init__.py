"""``tune(config)``: a keras-tuner sweep over the config's ``search:`` section into a sweep directory.

keras-tuner's Oracle chooses the values of each trial; the trial itself is the base config with those
values applied, built by :func:`toolkit.models.build_model` and trained by :mod:`toolkit.training`
exactly as a single run is. The sweep keeps its own record of every trial (keras-tuner keeps no
timings, histories or failure reasons in a usable form), so the directory reads::

    <sweep>/config.yaml            the resolved config with its normalized search: section
    <sweep>/trials.csv             one row per finished trial (rebuilt from records/ after each trial)
    <sweep>/records/<id>.json      one small file per finished trial (safe with several processes)
    <sweep>/histories/<id>.csv     per-epoch history of each trial
    <sweep>/best/                  the best trial retrained as a normal run, the only use of the test split
    <sweep>/top/trial_<id>/        runs of the next best trials with search.retrain_top > 1
    <sweep>/sweep.json             the outcome: best trial, counts, planned trials
    <sweep>/tuner/                 the keras-tuner project (oracle state, trial.json files)

Trials run in a worker process that is replaced every ``search.trials_per_process`` trials, because
TensorFlow keeps several MB per trial that no ``clear_session`` returns; ``trials_per_process: inline``
runs them in this process instead.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime as _dt
import functools
import io
import json
import math
import os
import shutil
import socket
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

from toolkit.config import Config, dump_yaml, parse_config, read_yaml_file
from toolkit.errors import UserError, show
from toolkit.results import atomic_write_text, make_dir, read_json, write_json
from toolkit.sweeps.space import declare, make_oracle
from toolkit.search import SearchSpec, apply_values, check_with_keras, parse_search
from toolkit.summary import format_metric

DEFAULT_SWEEPS_DIR = Path("sweeps")
TRIALS_FILE = "trials.csv"
SWEEP_FILE = "sweep.json"
CONFIG_FILE = "config.yaml"
RECORDS_DIR = "records"
HISTORIES_DIR = "histories"
BEST_DIR = "best"
TOP_DIR = "top"
TUNER_DIR = "tuner"
LOCK_FILE = ".lock"

Progress = Callable[[str], None]


@dataclass
class SweepResult:
    """What a sweep produced.

    Attributes:
        sweep_dir: the sweep directory.
        spec: the validated search section.
        trials: the rows of trials.csv (dicts keyed by column name).
        best: the row of the best completed trial (None in a distributed worker, or if none completed).
        best_run: the :class:`toolkit.runs.RunResult` of ``best/`` (None in a distributed worker).
        top_runs: runs of the next best trials (``search.retrain_top`` > 1), best first.
        planned: the number of trials the search plans (None when unknown).
        resumed: trials already finished when this call started.
        role: ``"single"``, ``"chief"`` or ``"worker"`` (distributed mode).
    """

    sweep_dir: Path
    spec: SearchSpec
    trials: List[Dict[str, Any]]
    best: Optional[Dict[str, Any]]
    best_run: Any = None
    top_runs: List[Any] = field(default_factory=list)
    planned: Optional[int] = None
    resumed: int = 0
    role: str = "single"

    @property
    def completed(self) -> int:
        return sum(1 for t in self.trials if t["status"] == "completed")

    @property
    def failed(self) -> int:
        return sum(1 for t in self.trials if t["status"] != "completed")


def tune(config: Config, out_dir: Optional[Union[str, Path]] = None, overwrite: bool = False,
         verbose: bool = False, progress: Optional[Progress] = None, *, chief_reports: bool = True) -> SweepResult:
    """Runs (or resumes) the config's search into a sweep directory.

    Args:
        config: a validated config with a ``search:`` section.
        out_dir: the sweep directory; default ``sweeps/<name>``. An existing sweep there is resumed:
            finished trials are kept and not re-run; an interrupted trial is run again.
        overwrite: delete the sweep there first and start over (never done by a distributed worker;
            a directory that is not a sweep is never deleted).
        verbose: show Keras' per-epoch progress of each trial.
        progress: called with one line per finished trial (trial k/N, score, best so far, elapsed,
            time left) and a few lines about resuming and retraining; None for silence.
        chief_reports: in a distributed chief, report each trial a worker records (False when the caller
            reports trials itself, as :mod:`toolkit.distributed`'s chief does from the oracle).

    Returns:
        A :class:`SweepResult`. ``best/`` holds the best configuration retrained on the training split
        and evaluated once on the test split, which no trial ever sees.

    Raises:
        UserError: a bad search section (before anything trains), a changed search on resume, another
            sweep writing into the directory, or a run of failed trials that stopped the search.

    In keras-tuner's distributed mode (``KERASTUNER_TUNER_ID``, ``KERASTUNER_ORACLE_IP``,
    ``KERASTUNER_ORACLE_PORT`` set) every process calls this same function on one shared directory:
    the chief serves the oracle and then retrains ``best/``; workers run trials and record them.
    """
    say = progress or (lambda line: None)
    spec = parse_search(config)
    role = _role()
    sweep_dir = Path(out_dir) if out_dir is not None else DEFAULT_SWEEPS_DIR / config.name
    base = config.with_values({"search": None})  # trials and best/ are plain runs
    with _SweepLock(sweep_dir, role):
        if overwrite and role != "worker":
            _clear_sweep_dir(sweep_dir)
        _check_or_write_config(sweep_dir, config, spec)
        runner = _InlineRunner() if spec.trials_per_process is None else _ProcessRunner(spec.trials_per_process)
        finished = False
        try:
            if role != "chief":
                runner.prestart()  # the worker imports TensorFlow while this process checks the space
            data_cache = _DataCache()
            with _quiet_tensorflow(verbose):
                check_with_keras(spec, base, data_cache.get(base))
                sweep = _Sweep(spec, base, sweep_dir, data_cache, runner, verbose=verbose, say=say, role=role)
                sweep.chief_reports = chief_reports
                result = sweep.run()
            finished = True
            return result
        finally:
            runner.close(now=not finished)  # Ctrl-C or an error: do not wait for the worker's trial to end


@contextlib.contextmanager
def _quiet_tensorflow(verbose: bool) -> Any:
    """Hides TensorFlow's Python warnings (a sweep builds many models, so "retracing" is expected)."""
    import logging

    logger = logging.getLogger("tensorflow")
    level = logger.level
    if not verbose:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


# ------------------------------------------------------------------------------------- the sweep


class _Sweep:
    """One call of :func:`tune`: the keras-tuner search, the trial records, progress, best/."""

    def __init__(self, spec: SearchSpec, base: Config, sweep_dir: Path, data_cache: "_DataCache", runner: Any,
                 verbose: bool, say: Progress, role: str):
        self.spec = spec
        self.base = base
        self.dir = sweep_dir
        self.data_cache = data_cache
        self.verbose = verbose
        self.say = say
        self.role = role
        self.chief_reports = True
        self.worker_id = os.environ.get("KERASTUNER_TUNER_ID") or None
        self.records = _Records(sweep_dir / RECORDS_DIR)
        self.pending: Dict[str, Dict[str, Any]] = {}
        self.started = time.time()
        self.failures_in_a_row = 0
        self.resumed = 0
        self.runner = runner

    def run(self) -> SweepResult:
        resumed = self.resumed = len(self.records.load())
        planned = self.spec.planned_trials()
        if resumed and self.role != "worker":
            self.say(f"resuming the sweep in {self.dir}: {resumed} of {planned or '?'} trials already done")
        watcher = _RecordWatcher(self) if self.role == "chief" and self.chief_reports else None
        try:
            tuner = self._make_tuner()
            with _keras_tuner_quiet():
                tuner.search(verbose=0)  # the chief serves the oracle here until the workers are done
        except _SearchStopped as stop:
            self.runner.close()
            self._write_trials_csv()
            raise UserError(str(stop), where="search.max_consecutive_failures", file=self.base.source) from None
        finally:
            if watcher is not None:
                watcher.stop()
        self.runner.close()  # its memory is not needed for retraining best/
        rows = self._write_trials_csv()
        result = SweepResult(sweep_dir=self.dir, spec=self.spec, trials=rows, best=None, planned=planned,
                             resumed=resumed, role=self.role)
        if self.role == "worker":
            return result
        ranked = self._ranked(rows)
        if not ranked:
            raise UserError(f"no trial completed, so there is no best configuration; the failure reasons are "
                            f"in the message column of {self.dir / TRIALS_FILE}", where="search",
                            file=self.base.source)
        result.best = ranked[0]
        result.best_run = self._retrain(ranked[0], self.dir / BEST_DIR)
        for row in ranked[1:self.spec.retrain_top]:
            result.top_runs.append(self._retrain(row, self.dir / TOP_DIR / f"trial_{row['trial_id']}"))
        write_json(self.dir / SWEEP_FILE, {
            "objective": self.spec.objective.to_dict(),
            "best_trial": ranked[0]["trial_id"],
            "best_score": ranked[0]["score"],
            "best_values": self.records.get(ranked[0]["trial_id"])["values"],
            "planned": planned,
            "completed": result.completed,
            "failed": result.failed,
            "top": [row["trial_id"] for row in ranked[:self.spec.retrain_top]],
            "finished": _now(),
        })
        return result

    # -- keras-tuner

    def _make_tuner(self) -> Any:
        tuner_class = _tuner_class()
        with contextlib.redirect_stdout(io.StringIO()):  # keras-tuner prints "Reloading Tuner from ..."
            return tuner_class(sweep=self, oracle=make_oracle(self.spec), hypermodel=_space_model(self.spec),
                               directory=str(self.dir), project_name=TUNER_DIR, overwrite=False)

    def run_trial(self, trial: Any) -> Dict[str, float]:
        """Runs one keras-tuner trial; returns {objective: score} or raises FailedTrialError."""
        from keras_tuner.errors import FailedTrialError

        trial_id = trial.trial_id
        started_at, started = _now(), time.time()
        values = self.spec.config_values(trial.hyperparameters.values)
        record: Dict[str, Any] = {"trial_id": trial_id, "values": values, "started": started_at}
        extra = {k: v for k, v in trial.hyperparameters.values.items() if k.startswith("tuner/")}
        if extra:
            record["hyperband"] = extra
        self.pending[trial_id] = record
        try:
            trial_config = apply_values(self.base, values)
        except UserError as error:  # a combination the per-parameter checks could not see
            error.file = None
            record.update(status="failed", message=f"invalid combination: {error.message}",
                          duration_s=round(time.time() - started, 3))
            raise FailedTrialError(record["message"]) from None
        data_key, data = self.data_cache.get_for_trials(trial_config)
        task = {
            "trial_id": trial_id,
            "config": trial_config.to_dict(),
            "source": trial_config.source,
            "executions": self.spec.executions_per_trial,
            "objective": [self.spec.objective.name, self.spec.objective.direction],
            "history_dir": str(self.dir / HISTORIES_DIR),
            "verbose": 1 if self.verbose else 0,
            "data_key": data_key,
            "free_memory": self.spec.trials_per_process is None,
        }
        outcome = self.runner.run(task, data)
        record.update(outcome)
        record["duration_s"] = round(time.time() - started, 3)
        if outcome["status"] != "completed":
            raise FailedTrialError(outcome["message"])
        return {self.spec.objective.name: outcome["score"]}

    def on_trial_end(self, trial: Any) -> None:
        """Called by the tuner before keras-tuner ends the trial: the record is written first."""
        record = self.pending.pop(trial.trial_id, None)
        if record is None:  # failed before run_trial (keras-tuner itself); keep its reason
            record = {"trial_id": trial.trial_id, "started": _now(), "duration_s": 0.0,
                      "values": self.spec.config_values(trial.hyperparameters.values)}
        if trial.status != "COMPLETED":
            record["status"] = "failed"
            if not record.get("message"):
                record["message"] = _last_line(trial.message) or "failed"
        else:
            record["status"] = "completed"
        if self.worker_id:
            record["worker"] = self.worker_id
        self.records.write(record)

    def after_trial(self, trial: Any) -> None:
        """Called after keras-tuner saved the trial's end: trials.csv, progress, the failure count."""
        record = self.records.get(trial.trial_id)
        self._write_trials_csv()
        self.failures_in_a_row = 0 if record["status"] == "completed" else self.failures_in_a_row + 1
        self.say(self._progress_line(record))
        if self.failures_in_a_row >= self.spec.max_consecutive_failures:
            raise _SearchStopped(
                f"the search stopped after {self.failures_in_a_row} failed trials in a row (limit "
                f"{self.spec.max_consecutive_failures}); the last failed with: {record.get('message')}. "
                f"Finished trials are kept: fix the cause and run the same command to resume, or raise the limit")

    def _progress_line(self, record: Dict[str, Any]) -> str:
        done = len(self.records.load())
        ranked = self._ranked(self._rows())
        return format_progress(
            done=done, planned=self.spec.planned_trials(), trial_id=record["trial_id"], worker=self.worker_id,
            objective=self.spec.objective.name, completed=record["status"] == "completed",
            score=record.get("score"), message=record.get("message"),
            best=(ranked[0]["score"], ranked[0]["trial_id"]) if ranked else None,
            elapsed=time.time() - self.started,
            finished_since_start=done - self.resumed)  # by every process, in distributed mode

    # -- results

    def _rows(self) -> List[Dict[str, Any]]:
        return trial_rows(list(self.records.load().values()), self.spec)

    def _write_trials_csv(self) -> List[Dict[str, Any]]:
        rows = self._rows()
        atomic_write_text(self.dir / TRIALS_FILE, format_trials_csv(rows, self.spec))
        return rows

    def _ranked(self, rows: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
        done = [r for r in rows if r["status"] == "completed" and r["score"] is not None
                and not (isinstance(r["score"], float) and math.isnan(r["score"]))]
        return sorted(done, key=lambda r: r["score"], reverse=self.spec.objective.direction == "max")

    def _retrain(self, row: Dict[str, Any], run_dir: Path) -> Any:
        """Retrains one trial's config as a normal run (the test split's only use), unless already done."""
        from toolkit.runs import RunResult, run

        record = self.records.get(row["trial_id"])
        run_config = apply_values(self.base, record["values"])
        wanted = dump_yaml(run_config.to_dict())
        metrics_file = run_dir / "metrics.json"
        if metrics_file.is_file() and (run_dir / CONFIG_FILE).read_text(encoding="utf-8") == wanted:
            return RunResult(run_dir=run_dir, metrics=read_json(metrics_file), config=run_config)
        if run_dir.exists():  # an interrupted retrain, or the best trial changed since (max_trials raised)
            shutil.rmtree(run_dir)
        self.say(f"retraining trial {row['trial_id']} into {run_dir} (evaluated once on the test split)")
        return run(run_config, out_dir=run_dir, verbose=1 if self.verbose else 0,
                   data=self.data_cache.get(run_config))


class _RecordWatcher:
    """In the chief (which runs no trials), one progress line per trial recorded by any worker."""

    def __init__(self, sweep: _Sweep):
        import threading

        self.sweep = sweep
        self.reported = set(sweep.records.load())
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._watch, name="ktk-progress", daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        while not self.done.wait(1.0):
            self._report()

    def _report(self) -> None:
        for trial_id, record in sorted(self.sweep.records.load().items()):
            if trial_id not in self.reported:
                self.reported.add(trial_id)
                self.sweep.say(self.sweep._progress_line(record))

    def stop(self) -> None:
        self.done.set()
        self.thread.join(timeout=5)
        self._report()


class _SearchStopped(Exception):
    """Too many failed trials in a row."""


@contextlib.contextmanager
def _keras_tuner_quiet() -> Any:
    """keras-tuner prints the traceback of every failed trial (its DEBUG flag); the sweep records the reason."""
    from keras_tuner.src import config as keras_tuner_config

    saved = keras_tuner_config.DEBUG
    keras_tuner_config.DEBUG = False
    try:
        yield
    finally:
        keras_tuner_config.DEBUG = saved


@functools.lru_cache(maxsize=None)
def _tuner_class() -> type:
    import keras_tuner

    class SweepTuner(keras_tuner.engine.base_tuner.BaseTuner):
        """keras-tuner's BaseTuner whose trials are run and recorded by a :class:`_Sweep`."""

        def __init__(self, sweep: _Sweep, **kwargs: Any):
            self.sweep = sweep
            super().__init__(**kwargs)

        def run_trial(self, trial, *args, **kwargs):
            return self.sweep.run_trial(trial)

        def on_trial_end(self, trial):
            self.sweep.on_trial_end(trial)  # our record first: a crash after it only re-runs the trial
            super().on_trial_end(trial)
            self.sweep.after_trial(trial)

    return SweepTuner


def _space_model(spec: SearchSpec) -> Any:
    import keras_tuner

    class SpaceModel(keras_tuner.HyperModel):
        """Declares the search space; trials are built from the config, never here."""

        def build(self, hp):
            declare(spec, hp)
            return None

    return SpaceModel()


# ------------------------------------------------------------------------------- trials.csv


def trial_rows(records: Sequence[Dict[str, Any]], spec: SearchSpec) -> List[Dict[str, Any]]:
    """Rows of trials.csv from trial records, ordered by trial id."""
    rows = []
    for record in sorted(records, key=lambda r: str(r["trial_id"])):
        row: Dict[str, Any] = {
            "trial_id": record["trial_id"],
            "status": record.get("status", "failed"),
            "score": record.get("score"),
        }
        for path in _param_columns(spec):
            row[path] = record.get("values", {}).get(path)
        for split in ("train", "validation"):
            for name, value in (record.get(split) or {}).items():
                row[f"{split}.{name}"] = value
        for key in ("epochs", "best_epoch", "params", "started", "duration_s", "message"):
            row[key] = record.get(key)
        if record.get("worker"):
            row["worker"] = record["worker"]
        rows.append(row)
    return rows


def _param_columns(spec: SearchSpec) -> List[str]:
    paths = list(spec.paths)
    if spec.tuner == "hyperband":
        paths.append("training.epochs")  # hyperband's epoch budget of each trial
    return paths


def format_trials_csv(rows: Sequence[Dict[str, Any]], spec: SearchSpec) -> str:
    """trials.csv text: trial_id, status, score, searched paths, train.*, validation.*, epochs, ... [worker]."""
    metric_columns: Dict[str, List[str]] = {"train": [], "validation": []}
    for row in rows:
        for key in row:
            split = key.split(".", 1)[0]
            if split in metric_columns and key not in metric_columns[split] and key not in spec.paths:
                metric_columns[split].append(key)
    columns = ["trial_id", "status", "score", *_param_columns(spec), *metric_columns["train"],
               *metric_columns["validation"], "epochs", "best_epoch", "params", "started", "duration_s", "message"]
    if any(row.get("worker") for row in rows):
        columns.append("worker")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_csv_cell(row.get(c)) for c in columns])
    return buffer.getvalue()


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else "nan"
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(", ", ": "))
    return str(value)


def read_trials(sweep_dir: Union[str, Path]) -> List[Dict[str, Any]]:
    """The trial records of a sweep directory (one dict per finished trial, as in records/<id>.json)."""
    return sorted(_Records(Path(sweep_dir) / RECORDS_DIR).load().values(), key=lambda r: str(r["trial_id"]))


class _Records:
    """records/<trial_id>.json: one file per finished trial, written atomically by whichever process ran it."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._cache: Dict[str, Any] = {}
        self._seen: Dict[str, float] = {}

    def write(self, record: Dict[str, Any]) -> None:
        path = self.folder / f"{record['trial_id']}.json"
        write_json(path, record)
        self._cache[str(record["trial_id"])] = json.loads(json.dumps(record, default=str))
        self._seen[path.name] = path.stat().st_mtime

    def load(self) -> Dict[str, Any]:
        if self.folder.is_dir():
            for path in self.folder.glob("*.json"):
                mtime = path.stat().st_mtime
                if self._seen.get(path.name) != mtime:  # new, or rewritten by another process
                    record = read_json(path)
                    self._cache[str(record["trial_id"])] = record
                    self._seen[path.name] = mtime
        return self._cache

    def get(self, trial_id: str) -> Dict[str, Any]:
        return self.load()[str(trial_id)]


# --------------------------------------------------------------------------------------- data


class _DataCache:
    """Data loaded and split once per sweep (once per distinct data section when data.* is searched)."""

    def __init__(self) -> None:
        self._full: Dict[str, Any] = {}
        self._trials: Dict[str, Any] = {}

    @staticmethod
    def key(config: Config) -> str:
        return json.dumps({"data": config.to_dict()["data"], "seed": config.seed, "task": config.task},
                          sort_keys=True, default=str)

    def get(self, config: Config) -> Any:
        """The full data set (all three splits): for best/ and the checks before the search."""
        from toolkit.data import load_data

        key = self.key(config)
        if key not in self._full:
            self._full[key] = load_data(config)
        return self._full[key]

    def get_for_trials(self, config: Config) -> Any:
        """(key, data set without its test split): trials cannot use the test split, even by mistake."""
        key = self.key(config)
        if key not in self._trials:
            full = self.get(config)
            self._trials[key] = dataclasses.replace(full, x_test=full.x_test[:0], y_test=full.y_test[:0])
        return key, self._trials[key]


# ------------------------------------------------------------------------------ running a trial


def run_trial_task(task: Dict[str, Any], data: Any) -> Dict[str, Any]:
    """Builds, compiles and fits one trial config as a single run does; never raises.

    Returns:
        ``{"status": "completed", "score", "train", "validation", "epochs", "best_epoch", "params"}``,
        or ``{"status": "failed", "message", "traceback"?}``.
    """
    try:
        return _run_trial_task(task, data)
    except UserError as error:
        return {"status": "failed", "message": f"invalid configuration: {error}"}
    except MemoryError:
        return {"status": "failed", "message": "out of memory (MemoryError)"}
    except Exception as error:  # noqa: BLE001 - a trial's crash is recorded with its reason; the sweep goes on
        name = type(error).__name__
        text = _last_line(str(error)) or name
        if name == "ResourceExhaustedError" or "OOM" in text:
            text = f"out of memory: {text}"
        return {"status": "failed", "message": f"{name}: {_shorten(text, 300)}",
                "traceback": traceback.format_exc()}


def _run_trial_task(task: Dict[str, Any], data: Any) -> Dict[str, Any]:
    import keras

    from toolkit import training
    from toolkit.results import history_logger
    from toolkit.search import Objective

    config = parse_config(task["config"], source=task["source"])
    objective = Objective(*task["objective"])
    executions = []
    fit_seconds = 0.0
    for execution in range(task["executions"]):
        suffix = "" if execution == 0 else f".execution{execution + 1}"
        history_path = Path(task["history_dir"]) / f"{task['trial_id']}{suffix}.csv"
        # Python's full garbage collection (free_memory) costs ~0.5 s per trial once TensorFlow is loaded;
        # a recycled worker process gives its memory back anyway.
        keras.backend.clear_session(free_memory=task.get("free_memory", True))
        model = training.prepare_model(config, data, seed=config.seed + execution)  # executions differ in init only
        logger = history_logger(history_path)
        fit_started = time.perf_counter()
        training.fit(model, config, data, callbacks=[logger, _stop_on_nan()], verbose=task["verbose"],
                     keep_best=False)
        fit_seconds += time.perf_counter() - fit_started
        history = logger.history
        losses = history.get("loss", [])
        bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
        if bad is not None or not losses:
            return {"status": "failed", "message": f"diverged: the training loss became NaN or infinite in "
                                                   f"epoch {(bad or 0) + 1}; try a smaller learning rate"}
        if objective.name not in history:
            names = [k for k in history if k.startswith("val_")]
            return {"status": "failed", "message": f"the objective {objective.name} is not among the "
                                                   f"metrics: {', '.join(names)}"}
        series = history[objective.name]
        best = objective.best_index(series)
        if not math.isfinite(series[best]):
            return {"status": "failed", "message": f"{objective.name} was never finite (diverged)"}
        executions.append({
            "score": series[best],
            "train": {k: history[k][best] for k in history if not k.startswith("val_")},
            "validation": {k[4:]: history[k][best] for k in history if k.startswith("val_")},
            "epochs": len(losses),
            "best_epoch": best + 1,
            "params": int(model.count_params()),
        })
    first = executions[0]
    return {
        "status": "completed",
        # like keras-tuner: the score of a trial is the mean over its executions
        "score": _mean([e["score"] for e in executions]),
        "train": {k: _mean([e["train"][k] for e in executions]) for k in first["train"]},
        "validation": {k: _mean([e["validation"][k] for e in executions]) for k in first["validation"]},
        "epochs": first["epochs"],
        "best_epoch": first["best_epoch"],
        "params": first["params"],
        # for benchmarks/sweep_overhead.py: time inside fit, and the memory of the process that ran it
        "fit_s": round(fit_seconds, 4),
        "rss_mb": rss_mb(),
    }


def rss_mb(pid: Optional[int] = None) -> Optional[float]:
    """Resident memory of a process (this one by default) in MB, from /proc (None where unavailable)."""
    try:
        for line in Path(f"/proc/{pid or 'self'}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def _stop_on_nan() -> Any:
    """Stops training at the first non-finite batch loss (Keras' TerminateOnNaN, without its print)."""
    return _stop_on_nan_class()()


@functools.lru_cache(maxsize=None)
def _stop_on_nan_class() -> Any:
    import keras

    class StopOnNaN(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            loss = (logs or {}).get("loss")
            if loss is not None and not math.isfinite(float(loss)):
                self.model.stop_training = True

    return StopOnNaN


class _InlineRunner:
    """Runs trials in this process (``search.trials_per_process: inline``)."""

    def prestart(self) -> None:
        pass

    def run(self, task: Dict[str, Any], data: Any) -> Dict[str, Any]:
        return run_trial_task(task, data)

    def close(self, now: bool = False) -> None:
        pass


# Imported once by the fork server, so that forked workers start with them loaded.
_WORKER_PRELOAD = ("tensorflow", "keras", "toolkit.sweeps", "toolkit.training", "toolkit.models", "toolkit.data")


@contextlib.contextmanager
def _main_module_not_rerun() -> Any:
    """Starts processes without re-importing the caller's ``__main__`` in them.

    multiprocessing's fork server and spawn re-run the main script in each new process (as ``__mp_main__``),
    so a user's script calling :func:`tune` without an ``if __name__ == "__main__":`` guard would start its
    sweep again inside every trial worker. The worker's code lives in this module and needs nothing from
    ``__main__``, so the main module is left out of what the new process prepares.
    """
    from multiprocessing import spawn

    original = spawn.get_preparation_data

    def preparation_data(name: str) -> Dict[str, Any]:
        data = original(name)
        data.pop("init_main_from_path", None)
        data.pop("init_main_from_name", None)
        return data

    spawn.get_preparation_data = preparation_data
    try:
        yield
    finally:
        spawn.get_preparation_data = original


class _ProcessRunner:
    """Runs trials in a worker process replaced every `limit` trials, so memory does not grow.

    The next worker is started while the current one runs its last trial. A worker that dies (killed, out of memory) fails its trial
    only; the next trial gets a fresh worker.
    """

    def __init__(self, limit: int):
        import multiprocessing

        self.limit = limit
        # Never fork this process (TensorFlow's threads run here). A fork server imports TensorFlow once,
        # before running anything, and forks each worker from that: a new worker then starts in about a
        # second instead of re-importing TensorFlow (10 s or more on a busy machine). Where there is no
        # fork server (Windows), each worker is a fresh interpreter.
        if "forkserver" in multiprocessing.get_all_start_methods():
            self.context = multiprocessing.get_context("forkserver")
            self.context.set_forkserver_preload(list(_WORKER_PRELOAD))
        else:  # pragma: no cover - Windows
            self.context = multiprocessing.get_context("spawn")
        self.current: Optional[_Worker] = None
        self.spare: Optional[_Worker] = None

    def _start(self) -> "_Worker":
        parent, child = self.context.Pipe()
        process = self.context.Process(target=_worker_main, args=(child,), name="ktk-trial", daemon=True)
        with _main_module_not_rerun():
            process.start()
        child.close()
        return _Worker(process, parent)

    def prestart(self) -> None:
        """Starts the first worker now, so that its start-up overlaps with other work."""
        if self.current is None and self.spare is None:
            self.spare = self._start()

    def run(self, task: Dict[str, Any], data: Any) -> Dict[str, Any]:
        if self.current is None:
            self.current, self.spare = self.spare or self._start(), None
        worker = self.current
        try:
            if task["data_key"] not in worker.data_keys:
                worker.connection.send(("data", task["data_key"], data))
                worker.data_keys.add(task["data_key"])
            worker.connection.send(("trial", task))
        except (BrokenPipeError, OSError):
            pass  # the worker is gone: reported below
        worker.trials += 1
        if worker.trials >= self.limit and self.spare is None:
            self.spare = self._start()
        outcome = worker.wait()
        if outcome is None:
            code = worker.process.exitcode
            self.current = None
            worker.stop()
            how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit status {code}"
            hint = " (often: out of memory)" if code == -9 else ""
            return {"status": "failed", "message": f"the trial's worker process died ({how}){hint}"}
        if worker.trials >= self.limit:
            worker.stop()
            self.current = None
        return outcome

    def close(self, now: bool = False) -> None:
        """Stops the workers: politely between trials, or at once (`now`) when the sweep is interrupted."""
        for worker in (self.current, self.spare):
            if worker is not None:
                worker.stop(now=now)
        self.current = self.spare = None


class _Worker:
    def __init__(self, process: Any, connection: Any):
        self.process = process
        self.connection = connection
        self.data_keys: set = set()
        self.trials = 0

    def wait(self) -> Optional[Dict[str, Any]]:
        """The trial's outcome, or None if the process died first."""
        while True:
            try:
                if self.connection.poll(0.2):
                    return self.connection.recv()
            except (EOFError, OSError):
                return None
            if not self.process.is_alive():
                try:
                    return self.connection.recv() if self.connection.poll(0) else None
                except (EOFError, OSError):
                    return None

    def stop(self, now: bool = False) -> None:
        if now:
            self.process.kill()
        try:
            self.connection.send(("stop",))
        except (BrokenPipeError, OSError):
            pass
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=5)
        self.connection.close()


def _worker_main(connection: Any) -> None:
    """A trial worker: receives data sets and trial tasks, sends back outcomes, until told to stop."""
    import signal

    # Ctrl-C reaches the whole process group: the sweep decides, and stops this worker itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import logging

    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # "retracing" warnings: expected in a sweep
    datasets: Dict[str, Any] = {}
    while True:
        try:
            message = connection.recv()
        except (EOFError, OSError):
            return  # the sweep is gone
        if message[0] == "stop":
            return
        if message[0] == "data":
            datasets[message[1]] = message[2]
            continue
        task = message[1]
        outcome = run_trial_task(task, datasets[task["data_key"]])
        sys.stdout.flush()
        try:
            connection.send(outcome)
        except (BrokenPipeError, OSError):
            return  # the sweep is gone


# ------------------------------------------------------------------- the sweep directory itself


def _role() -> str:
    if not os.environ.get("KERASTUNER_ORACLE_IP"):
        return "single"
    return "chief" if "chief" in os.environ.get("KERASTUNER_TUNER_ID", "") else "worker"


def _is_sweep_dir(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file() and ((path / TUNER_DIR).is_dir() or (path / RECORDS_DIR).is_dir())


def _clear_sweep_dir(path: Path) -> None:
    """Deletes a sweep's results (not its lock). Refuses to delete a folder that is not a sweep."""
    if not path.is_dir():
        return
    entries = [p for p in path.iterdir() if not p.name.startswith(LOCK_FILE)]
    if entries and not _is_sweep_dir(path):
        raise UserError("--overwrite deletes sweep directories only, and this folder is not one (it has no "
                        "config.yaml with records/ or tuner/)", where="--out", received=str(path))
    for entry in entries:
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _check_or_write_config(sweep_dir: Path, config: Config, spec: SearchSpec) -> None:
    resolved = config.to_dict()
    resolved["search"] = spec.to_dict()
    path = sweep_dir / CONFIG_FILE
    if not path.is_file():
        others = [p for p in sweep_dir.iterdir() if not p.name.startswith(LOCK_FILE)] if sweep_dir.is_dir() else []
        if others:
            raise UserError("this folder is not empty and holds no sweep; a sweep needs a new or empty "
                            "directory", where="--out", received=str(sweep_dir))
        atomic_write_text(path, dump_yaml(resolved))
        return
    stored = read_yaml_file(path)
    stored_spec = parse_search(parse_config(stored, source=str(path)))
    changes = _differences(stored_spec.identity(), spec.identity(), "search")
    what = "search"
    if not changes:
        what = "config"
        before = {k: v for k, v in stored.items() if k not in ("search", "name")}
        after = {k: v for k, v in resolved.items() if k not in ("search", "name")}
        changes = _differences(before, after, "")
    if changes:
        shown = "; ".join(changes[:3]) + ("; ..." if len(changes) > 3 else "")
        raise UserError(
            f"the {what} changed since this sweep started ({shown}); its trials would not be comparable. "
            f"Use --overwrite to start over, or --out DIR for a new sweep",
            where="search" if what == "search" else None, file=config.source,
            received=str(sweep_dir))
    if stored["search"] != resolved["search"]:  # e.g. max_trials raised: keep the new settings
        atomic_write_text(path, dump_yaml(resolved))


def _differences(before: Any, after: Any, prefix: str) -> List[str]:
    if isinstance(before, dict) and isinstance(after, dict):
        out: List[str] = []
        for key in list(before) + [k for k in after if k not in before]:
            path = f"{prefix}.{key}" if prefix else str(key)
            if key not in after:
                out.append(f"{path} removed")
            elif key not in before:
                out.append(f"{path} added: {show(after[key])}")
            else:
                out.extend(_differences(before[key], after[key], path))
        return out
    if before != after:
        return [f"{prefix} was {show(before)}, now {show(after)}"]
    return []


class _SweepLock:
    """A lock file refusing a second sweep in the same directory while the first one runs.

    A lock left by a process that no longer exists (on this machine) is taken over. In distributed
    mode each process locks its own tuner id, so the chief and its workers share the directory.
    """

    def __init__(self, sweep_dir: Path, role: str):
        self.dir = sweep_dir
        tuner_id = os.environ.get("KERASTUNER_TUNER_ID", "")
        self.path = sweep_dir / (LOCK_FILE if role == "single" else f"{LOCK_FILE}.{tuner_id}")
        self.role = role
        self.owned = False

    def __enter__(self) -> "_SweepLock":
        make_dir(self.dir)
        for other in self._others():
            self._refuse_if_alive(other)
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not self._refuse_if_alive(self.path):
                    self._remove_stale(self.path)
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(_me(), handle)
            self.owned = True
            return self
        raise UserError("could not take the sweep's lock", received=str(self.path))

    def __exit__(self, *exc: Any) -> None:
        if self.owned:
            with contextlib.suppress(OSError, ValueError):
                if json.loads(self.path.read_text(encoding="utf-8")).get("pid") == os.getpid():
                    self.path.unlink()
            self.owned = False

    def _others(self) -> List[Path]:
        """Locks that exclude this one: a single sweep excludes all; a distributed process, a single one."""
        if self.role == "single":
            return [p for p in self.dir.glob(LOCK_FILE + ".*") if not p.name.endswith(".tmp")]
        return [self.dir / LOCK_FILE]

    def _refuse_if_alive(self, path: Path) -> bool:
        """Raises if `path` is held by a running process; False if it is stale (or gone)."""
        info = _read_lock(path)
        if info is None:
            return False
        if _alive(info):
            where = f"pid {info.get('pid')} on {info.get('host')}"
            raise UserError(f"another sweep ({where}, started {info.get('started')}) is writing into this "
                            f"directory; wait for it to finish, or use another --out. If that process is "
                            f"gone, delete {path}", where="--out", received=str(self.dir))
        return False

    @staticmethod
    def _remove_stale(path: Path) -> None:
        stale = path.with_name(f"{path.name}.stale-{os.getpid()}")
        with contextlib.suppress(FileNotFoundError):
            os.replace(path, stale)  # atomic: two processes never both remove a fresh lock
            stale.unlink()


def _me() -> Dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": _now(),
            "process_start": _process_start(os.getpid()),
            "tuner_id": os.environ.get("KERASTUNER_TUNER_ID")}


def _read_lock(path: Path) -> Optional[Dict[str, Any]]:
    for _ in range(3):
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (ValueError, OSError):
            time.sleep(0.1)  # being written right now
    return {"pid": None, "host": "?", "started": "?"}  # unreadable: treat as held


def _alive(info: Dict[str, Any]) -> bool:
    pid = info.get("pid")
    if info.get("host") != socket.gethostname() or not isinstance(pid, int):
        return True  # another machine's process: cannot tell, so assume it runs
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # The pid may have been reused by an unrelated process since.
    recorded = info.get("process_start")
    return recorded is None or recorded == _process_start(pid)


def _process_start(pid: int) -> Optional[str]:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[19]  # starttime, in clock ticks since boot
    except (OSError, IndexError):
        return None


# ---------------------------------------------------------------------------------- formatting


def format_sweep_summary(result: SweepResult) -> str:
    """A few lines for the end of `ktk tune`: counts, the best trial, its test metrics, the paths."""
    spec = result.spec
    lines = ["", f"sweep {result.sweep_dir}: {result.completed} trials completed, {result.failed} failed "
                 f"({spec.tuner} search, objective {spec.objective.name}, {spec.objective.direction})"]
    if result.best is not None:
        best = result.best
        values = ", ".join(f"{p}={_show_value(best.get(p))}" for p in _param_columns(spec) if best.get(p) is not None)
        lines.append(f"  best: trial {best['trial_id']}, {spec.objective.name} {format_metric(best['score'])}: {values}")
    if result.best_run is not None:
        metrics = result.best_run.metrics
        for split in ("validation", "test"):
            shown = ", ".join(f"{k} {format_metric(v)}" for k, v in metrics.get(split, {}).items())
            lines.append(f"  best retrained, {split}: {shown}")
        lines.append(f"  best run directory: {result.best_run.run_dir}")
    for run in result.top_runs:
        lines.append(f"  also retrained: {run.run_dir}")
    lines.append(f"  trials table: {result.sweep_dir / TRIALS_FILE}")
    return "\n".join(lines)


def _show_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def format_progress(*, done: int, planned: Optional[int], trial_id: Any, worker: Optional[str], objective: str,
                    completed: bool, score: Optional[float], message: Optional[str], best: Optional[tuple],
                    elapsed: float, finished_since_start: int) -> str:
    """The one line printed per finished trial (by a sweep, and by a distributed sweep's chief).

    ``best`` is (score, trial id) of the best trial so far; the time left is estimated from the
    `finished_since_start` trials finished in `elapsed` seconds.
    """
    outcome = f"{objective} {format_metric(score)}" if completed else f"failed: {_shorten(message or 'failed', 80)}"
    best_text = f"best {format_metric(best[0])} (trial {best[1]})" if best is not None else "best -"
    eta = "?"
    if planned and finished_since_start > 0:
        eta = _clock(elapsed / finished_since_start * max(0, planned - done))
    tag = f" [{worker}]" if worker else ""
    return (f"trial {done}/{planned or '?'} (id {trial_id}){tag}: {outcome} | {best_text} | "
            f"elapsed {_clock(elapsed)} | eta {eta}")


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values))


def _last_line(text: Optional[str]) -> str:
    lines = [line.strip() for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _shorten(text: str, width: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 3] + "..."
