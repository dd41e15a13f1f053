"""``tune(config)``: the keras-tuner search loop of a sweep, its records and progress, then ``best/``.

keras-tuner's Oracle chooses the values of each trial; the trial itself is the base config with those values
applied, trained by :mod:`toolkit.sweeps.runner` exactly as a single run is. keras-tuner keeps no timings,
histories or failure reasons in a usable form, so the sweep keeps its own record of every trial
(:mod:`toolkit.sweeps.records`). The directory layout is in docs/ARCHITECTURE.md ("Sweep directory").

Nothing is written before every check has passed: the search section, the sweep directory (and, on resume,
that the search did not change), the data, and the space and objective against Keras. ``trials.csv`` is
rebuilt from the records after every trial and at every stop (the end, an error, Ctrl-C), so it always lists
what ``records/`` holds.
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Union

from toolkit.config import Config
from toolkit.errors import UserError
from toolkit.results import (BEST_DIR, CONFIG_FILE, HISTORIES_DIR, METRICS_FILE, RECORDS_DIR, SWEEP_FILE,
                             TRIALS_FILE, TUNER_DIR, read_json, write_json)
from toolkit.results import utc_now
from toolkit.search import SearchSpec, apply_values, check_with_keras, parse_search
from toolkit.sweeps import directory, keras_tuner_compat as compat, packing, runner as runners
from toolkit.sweeps.formatting import format_progress, last_line
from toolkit.sweeps.lock import SweepLock
from toolkit.sweeps.records import COMPLETED, FAILED, Records, trial_history_file, trial_rows, write_trials_csv
from toolkit.sweeps.space import declare, make_oracle
from toolkit.sweeps.sweep_data import DataCache

Progress = Callable[[str], None]

SINGLE = "single"
CHIEF = "chief"
WORKER = "worker"


@dataclass(frozen=True)
class Role:
    """What this process does in a sweep, given to :func:`tune` explicitly.

    ``Role()`` is a one-process sweep. :mod:`toolkit.distributed` makes the other two: the chief, which serves
    keras-tuner's oracle with `serve` and then retrains ``best/``, and a worker, which runs trials for the
    chief at `host`:`port`. keras-tuner reads these settings from its environment variables, which
    :func:`tune` sets for the duration of the search.
    """

    kind: str = SINGLE
    tuner_id: Optional[str] = None  # a worker's id; "chief" for the chief
    host: Optional[str] = None  # the chief's address: where it serves, where a worker connects
    port: Optional[int] = None
    serve: Optional[Callable[[Any], None]] = None  # chief: serves the oracle until the search is over
    client_timeout: Optional[float] = None  # worker: how long one call to the chief may wait

    @classmethod
    def chief(cls, host: str, port: int, serve: Callable[[Any], None]) -> "Role":
        return cls(CHIEF, compat.CHIEF_ID, host, port, serve=serve)

    @classmethod
    def worker(cls, tuner_id: str, host: str, port: int, client_timeout: float) -> "Role":
        return cls(WORKER, tuner_id, host, port, client_timeout=client_timeout)

    @contextlib.contextmanager
    def keras_tuner_settings(self) -> Iterator[None]:
        """keras-tuner's environment (and, for a chief or worker, its server or client) for this role."""
        with contextlib.ExitStack() as stack:
            if self.kind == SINGLE:
                stack.enter_context(compat.tuner_environment())
            else:
                stack.enter_context(compat.tuner_environment(self.tuner_id, self.host, self.port))
            if self.kind == CHIEF:
                stack.enter_context(compat.oracle_served_by(self.serve))
            if self.kind == WORKER and self.client_timeout is not None:
                stack.enter_context(compat.oracle_client_timeout(self.client_timeout))
            yield


@dataclass
class SweepResult:
    """What a sweep produced.

    Attributes:
        sweep_dir: the sweep directory.
        spec: the validated search section.
        trials: the rows of trials.csv (dicts keyed by column name), in trial-id order.
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
    role: str = SINGLE

    @property
    def completed(self) -> int:
        return sum(1 for t in self.trials if t["status"] == COMPLETED)

    @property
    def failed(self) -> int:
        return sum(1 for t in self.trials if t["status"] != COMPLETED)


def tune(config: Config, out_dir: Optional[Union[str, Path]] = None, overwrite: bool = False,
         verbose: bool = False, progress: Optional[Progress] = None, *, role: Role = Role()) -> SweepResult:
    """Runs (or resumes) the config's search into a sweep directory.

    Args:
        config: a validated config with a ``search:`` section.
        out_dir: the sweep directory; default ``sweeps/<name>``. An existing sweep there is resumed:
            finished trials are kept and not re-run; an interrupted trial is run again.
        overwrite: delete the sweep there first and start over. Only a sweep directory ktk made (it has
            ktk's marker) holding only what ktk wrote is ever deleted; a worker never deletes.
        verbose: show Keras' per-epoch progress of each trial.
        progress: called with one line per finished trial (trial k/N, score, best so far, elapsed, time
            left), a few lines about resuming and retraining, and warnings; None for silence.
        role: this process's part in a distributed sweep (see :class:`Role`); default a one-process sweep.

    Returns:
        A :class:`SweepResult`. ``best/`` holds the best configuration retrained on the training split
        and evaluated once on the test split, which no trial ever sees.

    Raises:
        UserError: a bad search section, sweep directory, data, or space (before anything is written), a
            changed search on resume, another sweep writing into the directory, or a run of failed trials
            that stopped the search.
    """
    say = progress or (lambda line: None)
    compat.check_version()
    spec = parse_search(config)
    if config.data.source == "python":  # a user's pipelines live in their process; trials run in workers
        raise UserError("a sweep loads its data itself, once, for trials that run in worker processes: your own "
                        "pipelines cannot be sent to them", where="data.source", expected="a source ktk loads (your "
                        "pipelines train one run: toolkit.run(config, data=...))", received="python")
    sweep_dir = directory.sweep_dir_for(config, out_dir)
    if overwrite and role.kind == WORKER:
        raise UserError("workers never delete the shared sweep directory; use --overwrite on the chief",
                        where="--overwrite")
    directory.check(sweep_dir, config, spec, overwrite=overwrite)  # only reads
    lock = SweepLock(sweep_dir, None if role.kind == SINGLE else role.tuner_id)
    lock.check_free()  # (taken below, once everything is checked)
    base = config.with_values({"search": None})  # trials and best/ are plain runs
    runner = runners.make_runner(spec.trials_per_process)
    finished = False
    try:
        if role.kind != CHIEF:
            runner.prestart()  # the worker imports TensorFlow while this process checks the space
        data_cache = DataCache()
        with _quiet_tensorflow(verbose):
            check_with_keras(spec, base, data_cache.get(base))
            with lock:
                directory.prepare(sweep_dir, config, spec, overwrite=overwrite, write_config=role.kind != WORKER)
                sweep = _Sweep(spec, base, sweep_dir, data_cache, runner, verbose=verbose, say=say, role=role)
                try:
                    result = sweep.run()
                finally:
                    with contextlib.suppress(OSError):  # (never hiding why the sweep stopped)
                        sweep.write_table()  # at every stop: trials.csv lists what records/ holds
        finished = True
        return result
    finally:
        runner.close(now=not finished)  # Ctrl-C or an error: do not wait for the worker's trial to end


@contextlib.contextmanager
def _quiet_tensorflow(verbose: bool) -> Iterator[None]:
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


class _SearchStopped(Exception):
    """Too many failed trials in a row."""


class _Sweep:
    """One call of :func:`tune`: the keras-tuner search, the trial records, progress, best/."""

    def __init__(self, spec: SearchSpec, base: Config, sweep_dir: Path, data_cache: DataCache, runner: Any,
                 verbose: bool, say: Progress, role: Role):
        self.spec = spec
        self.base = base
        self.dir = sweep_dir
        self.data_cache = data_cache
        self.runner = runner
        self.verbose = verbose
        self.say = say
        self.role = role
        self.worker_id = role.tuner_id if role.kind == WORKER else None
        self.records = Records(sweep_dir / RECORDS_DIR, warn=lambda text: say(f"warning: {text}"))
        self.pending: Dict[str, Dict[str, Any]] = {}
        self.pack_size = packing.pack_size(spec.pack, spec.tuner)
        self.packed_trials: List[Any] = []  # trials taken with the tuner's own, to end after it
        self.started = time.time()
        self.failures_in_a_row = 0
        self.resumed = 0
        from toolkit.tracking.sweep import SweepTracking

        self.tracking = SweepTracking(base, spec, sweep_dir, say, creates=role.kind != WORKER)

    @property
    def tuner_oracle(self) -> Any:
        return self.tuner.oracle

    def run(self) -> SweepResult:
        planned = self.spec.planned_trials()
        self.tracking.start()
        completed = False
        try:
            result = self._search_and_retrain(planned)
            completed = True
            return result
        finally:
            self.tracking.end(completed, self._summary if completed else None)

    def _search_and_retrain(self, planned: Optional[int]) -> SweepResult:
        self._summary: Dict[str, Any] = {}
        with self.role.keras_tuner_settings():
            tuner = self.tuner = self._make_tuner()
            if self.role.kind != WORKER:
                self._end_recorded_trials(tuner.oracle)
            resumed = self.resumed = len(self.records.load())
            if resumed:
                self.write_table()  # it may lag behind the records after a crash
                if self.role.kind != WORKER:
                    self.say(f"resuming the sweep in {self.dir}: {resumed} of {planned or '?'} trials already done")
            try:
                with compat.quiet_trial_tracebacks():
                    tuner.search(verbose=0)  # the chief serves the oracle here until the workers are done
            except _SearchStopped as stop:
                self.runner.close()
                raise UserError(str(stop), where="search.max_consecutive_failures", file=self.base.source) from None
        self.runner.close()  # its memory is not needed for retraining best/
        rows = self.write_table()
        result = SweepResult(sweep_dir=self.dir, spec=self.spec, trials=rows, best=None, planned=planned,
                             resumed=resumed, role=self.role.kind)
        if self.role.kind == WORKER:
            return result
        ranked = self._ranked(rows)
        if not ranked:
            raise UserError(f"no trial completed, so there is no best configuration; the failure reasons are "
                            f"in the message column of {self.dir / TRIALS_FILE}", where="search",
                            file=self.base.source)
        result.best = ranked[0]
        result.best_run = self._retrain(ranked[0], self.dir / BEST_DIR)
        for row in ranked[1:self.spec.retrain_top]:
            result.top_runs.append(self._retrain(row, directory.top_run_dir(self.dir, row["trial_id"])))
        self._summary = {
            "objective": self.spec.objective.to_dict(),
            "best_trial": ranked[0]["trial_id"],
            "best_score": ranked[0]["score"],
            "best_values": self.records.get(ranked[0]["trial_id"]).get("values", {}),
            "planned": planned,
            "completed": result.completed,
            "failed": result.failed,
            "top": [row["trial_id"] for row in ranked[:self.spec.retrain_top]],
            "finished": utc_now(),
        }
        write_json(self.dir / SWEEP_FILE, {**self._summary, **self.tracking.end_errors()})
        return result

    # -- keras-tuner

    def _make_tuner(self) -> Any:
        project = self.dir / TUNER_DIR
        tuner_id = compat.SINGLE_ID if self.role.kind == SINGLE else self.role.tuner_id
        resuming = project.is_dir()
        if resuming and self.role.kind != WORKER:
            compat.make_reloadable(project, tuner_id)
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # keras-tuner prints "Reloading Tuner from ..."
                return sweep_tuner_class()(sweep=self, oracle=make_oracle(self.spec),
                                           hypermodel=space_model_class()(self.spec), directory=str(self.dir),
                                           project_name=TUNER_DIR, overwrite=False)
        except (RuntimeError, ValueError, KeyError, TypeError, AttributeError, OSError) as error:
            if not resuming:
                raise
            raise UserError(f"cannot resume: keras-tuner's state in {project} is damaged "
                            f"({type(error).__name__}: {last_line(str(error))}); start over with --overwrite, or "
                            f"use --out DIR for a new sweep", where="--out", received=str(self.dir)) from None

    def _end_recorded_trials(self, oracle: Any) -> None:
        """Trials recorded by a process stopped before keras-tuner ended them are ended now, not run again."""
        for trial_id in list(compat.retry_queue(oracle)):
            record = self.records.load().get(str(trial_id))
            if record is None:
                continue
            score = record.get("score") if record.get("status") == COMPLETED else None
            compat.end_recorded_trial(oracle, trial_id, self.spec.objective.name, score, record.get("message"))

    def run_trial(self, trial: Any, more: Sequence[Any] = ()) -> Dict[str, float]:
        """Runs one keras-tuner trial, and with it the trials in `more` (taken from the oracle at the same time,
        to train in packs); returns {objective: score} of `trial` or raises FailedTrialError.

        The trials in `more` are reported to the oracle (``update_trial``) here and ended by the tuner's
        ``on_trial_end`` after `trial` (:attr:`packed_trials`).
        """
        from keras_tuner.errors import FailedTrialError

        trials = [trial, *more]
        self.packed_trials = list(more)
        ready: List[Any] = []
        for each in trials:
            task = self._trial_task(each)
            if task is not None:
                ready.append(task)
        keys = [packing.pack_key(task["config"], task["executions"], task) for task, _ in ready]
        for pack in packing.group(keys, self.pack_size):
            started = time.time()
            tasks = [ready[i][0] for i in pack]
            if len(tasks) == 1:
                outcomes = [self.runner.run(tasks[0], ready[pack[0]][1])]
            else:
                outcomes = self.runner.run_pack(tasks, {ready[i][0]["data_key"]: ready[i][1] for i in pack})
            seconds = (time.time() - started) / len(tasks)  # a pack's trials share its time
            for task, outcome in zip(tasks, outcomes):
                record = self.pending[task["trial_id"]]
                record.update(outcome)
                record["duration_s"] = round(seconds, 3)
        for each in more:  # as keras-tuner reports the trial it runs itself
            record = self.pending[each.trial_id]
            if record["status"] == COMPLETED:
                compat.report_score(self.tuner_oracle, each, self.spec.objective.name, record["score"])
            else:
                compat.mark_failed(each, record["message"])
        record = self.pending[trial.trial_id]
        if record["status"] != COMPLETED:
            raise FailedTrialError(record["message"])
        return {self.spec.objective.name: record["score"]}

    def _trial_task(self, trial: Any) -> Optional[Any]:
        """(task, data) of one trial, its record pending; None when its values make no valid config."""
        trial_id = trial.trial_id
        values = self.spec.config_values(trial.hyperparameters.values)
        record: Dict[str, Any] = {"trial_id": trial_id, "values": values, "started": utc_now()}
        extra = {k: v for k, v in trial.hyperparameters.values.items() if k.startswith("tuner/")}
        if extra:
            record["hyperband"] = extra
        self.pending[trial_id] = record
        try:
            trial_config = apply_values(self.base, values)
        except UserError as error:  # a combination the per-parameter checks could not see
            error.file = None
            record.update(status=FAILED, message=f"invalid combination: {error.message}", duration_s=0.0)
            return None
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
            **self.tracking.trial_task(trial_id),
        }
        return task, data

    def on_trial_end(self, trial: Any) -> None:
        """Called by the tuner before keras-tuner ends the trial: the record is written first."""
        record = self.pending.pop(trial.trial_id, None)
        if record is None:  # failed before run_trial (keras-tuner itself); keep its reason
            record = {"trial_id": trial.trial_id, "started": utc_now(), "duration_s": 0.0,
                      "values": self.spec.config_values(trial.hyperparameters.values)}
        if trial.status != "COMPLETED":
            record["status"] = FAILED
            if not record.get("message"):
                record["message"] = last_line(trial.message) or FAILED
        else:
            record["status"] = COMPLETED
        if self.worker_id:
            record["worker"] = self.worker_id
        self.records.write(record)
        self._track(record)

    def _track(self, record: Dict[str, Any]) -> None:
        """The trial's HParams session and MLflow run (never failing the sweep: see toolkit.tracking.sweep)."""
        if not (self.tracking.tensorboard or self.tracking.mlflow):
            return
        try:
            trial_config = apply_values(self.base, record.get("values", {}))
        except UserError:
            trial_config = None
        self.tracking.trial_ended(record, trial_history_file(self.dir, record["trial_id"]), trial_config)

    def after_trial(self, trial: Any) -> None:
        """Called after keras-tuner saved the trial's end: trials.csv, progress, the failure count."""
        record = self.records.get(trial.trial_id)
        self.write_table()
        self.failures_in_a_row = 0 if record["status"] == COMPLETED else self.failures_in_a_row + 1
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
            objective=self.spec.objective.name, completed=record["status"] == COMPLETED,
            score=record.get("score"), message=record.get("message"),
            best=(ranked[0]["score"], ranked[0]["trial_id"]) if ranked else None,
            elapsed=time.time() - self.started,
            finished_since_start=done - self.resumed)  # by every process, in distributed mode

    # -- results

    def _rows(self) -> List[Dict[str, Any]]:
        return trial_rows(list(self.records.load().values()), self.spec)

    def write_table(self) -> List[Dict[str, Any]]:
        """Rebuilds trials.csv from every record (also those other processes wrote); returns its rows."""
        return write_trials_csv(self.dir, list(self.records.load().values()), self.spec)

    def _ranked(self, rows: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
        """Completed trials best first; ties keep trial-id order (the sort is stable)."""
        done = [r for r in rows if r["status"] == COMPLETED and isinstance(r["score"], (int, float))
                and math.isfinite(r["score"])]
        return sorted(done, key=lambda r: r["score"], reverse=self.spec.objective.direction == "max")

    def _retrain(self, row: Dict[str, Any], run_dir: Path) -> Any:
        """Retrains one trial's config as a normal run (the test split's only use), unless already done."""
        from toolkit.config import dump_yaml
        from toolkit.runs import RunResult, run
        from toolkit.training import progress_verbosity

        record = self.records.get(row["trial_id"])
        run_config = apply_values(self.base, record.get("values", {}))
        wanted = dump_yaml(run_config.to_dict())
        metrics_file = run_dir / METRICS_FILE
        if metrics_file.is_file() and (run_dir / CONFIG_FILE).read_text(encoding="utf-8") == wanted:
            return RunResult(run_dir=run_dir, metrics=read_json(metrics_file), config=run_config)
        if run_dir.exists() or run_dir.is_symlink():  # an interrupted retrain, or the best trial changed since
            directory.check_replaceable_run(run_dir, self.dir)  # (max_trials raised): only ktk's files go
            shutil.rmtree(run_dir)
        self.say(f"retraining trial {row['trial_id']} into {run_dir} (evaluated once on the test split)")
        with self.tracking.retraining(run_dir.name == BEST_DIR, row["trial_id"]):
            return run(run_config, out_dir=run_dir, verbose=progress_verbosity(self.verbose),
                       data=self.data_cache.get(run_config))


# ------------------------------------------------------------------------------ keras-tuner classes
# Built on first use, once (keras-tuner is imported lazily); instances get what they need as arguments.


@functools.lru_cache(maxsize=None)
def sweep_tuner_class() -> type:
    """keras-tuner's BaseTuner whose trials are run and recorded by a sweep (``sweep=`` argument)."""
    import keras_tuner

    class SweepTuner(keras_tuner.engine.base_tuner.BaseTuner):
        def __init__(self, sweep: _Sweep, **kwargs: Any):
            self.sweep = sweep
            super().__init__(**kwargs)

        def run_trial(self, trial, *args, **kwargs):
            more = []
            if self.sweep.pack_size > 1:  # more trials at once, each under a tuner id of its own
                more = compat.take_trials(self.oracle, self.tuner_id, self.sweep.pack_size - 1)
            return self.sweep.run_trial(trial, more)

        def on_trial_end(self, trial):
            trials = [trial, *self.sweep.packed_trials]
            self.sweep.packed_trials = []
            for each in trials:
                self.sweep.on_trial_end(each)  # our records first: a crash after them only re-runs trials
            for each in trials:
                super().on_trial_end(each)
            for each in trials:
                self.sweep.after_trial(each)

    return SweepTuner


@functools.lru_cache(maxsize=None)
def space_model_class() -> type:
    """A keras-tuner HyperModel that only declares a sweep's space (``SpaceModel(spec)``)."""
    import keras_tuner

    class SpaceModel(keras_tuner.HyperModel):
        """Declares the search space; trials are built from the config, never here."""

        def __init__(self, spec: SearchSpec):
            super().__init__()
            self.spec = spec

        def build(self, hp):
            declare(self.spec, hp)
            return None

    return SpaceModel
