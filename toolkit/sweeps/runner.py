"""Running one trial, in this process or in a trial worker process that is replaced every N trials.

A trial is trained exactly as ``ktk run`` trains: :func:`toolkit.training.prepare_model` (seed, build,
compile), then :func:`toolkit.training.fit`. What is particular to a trial is only its bookkeeping: the
history file, the score at the objective's best epoch, the mean over executions, and that it never raises
(a crash is the trial's failure, recorded with its reason).

Trials run in a worker process replaced every ``search.trials_per_process`` trials, because TensorFlow keeps
several MB per trial that no ``clear_session`` returns; ``trials_per_process: inline`` runs them in the
sweep's own process (:class:`InlineRunner`).
"""

from __future__ import annotations

import functools
import math
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from toolkit.errors import UserError
from toolkit.sweeps.formatting import last_line, shorten
from toolkit.sweeps.keras_tuner_compat import main_module_not_rerun
from toolkit.sweeps.records import COMPLETED, FAILED

# Imported once by the fork server, so that forked workers start with them loaded (quietly: quiet_start first).
WORKER_PRELOAD = ("toolkit.quiet_start", "tensorflow", "keras", "toolkit.sweeps.runner", "toolkit.training", "toolkit.models",
                  "toolkit.data")


def run_trial_task(task: Dict[str, Any], data: Any) -> Dict[str, Any]:
    """Builds, compiles and fits one trial config as a single run does; never raises.

    Args:
        task: ``trial_id``, ``config`` (resolved dict), ``source``, ``executions``, ``objective``
            ([name, direction]), ``history_dir``, ``verbose``, ``free_memory``.
        data: the trial's data set (without its test split).

    Returns:
        ``{"status": "completed", "score", "train", "validation", "epochs", "best_epoch", "params"}``,
        or ``{"status": "failed", "message", "traceback"?}``.
    """
    try:
        return _run_trial_task(task, data)
    except Exception as error:  # a trial's crash is recorded with its reason; the sweep goes on
        return failure_outcome(error)


def failure_outcome(error: BaseException) -> Dict[str, Any]:
    """The outcome of a trial that raised `error`: failed, with its reason (and traceback when unexpected)."""
    if isinstance(error, UserError):
        return {"status": FAILED, "message": f"invalid configuration: {error}"}
    if isinstance(error, MemoryError):
        return {"status": FAILED, "message": "out of memory (MemoryError)"}
    name = type(error).__name__
    text = last_line(str(error)) or name
    if name == "ResourceExhaustedError" or "OOM" in text:
        text = f"out of memory: {text}"
    return {"status": FAILED, "message": f"{name}: {shorten(text, 300)}",
            "traceback": "".join(traceback.format_exception(type(error), error, error.__traceback__))}


def _run_trial_task(task: Dict[str, Any], data: Any) -> Dict[str, Any]:
    import keras

    from toolkit import training
    from toolkit.config import parse_config
    from toolkit.results import history_logger

    config = parse_config(task["config"], source=task["source"])
    executions = []
    fit_seconds = 0.0
    for execution in range(task["executions"]):
        suffix = "" if execution == 0 else f".execution{execution + 1}"
        history_path = Path(task["history_dir"]) / f"{task['trial_id']}{suffix}.csv"
        # Python's full garbage collection (free_memory) costs ~0.5 s per trial once TensorFlow is loaded;
        # a recycled worker process gives its memory back anyway.
        keras.backend.clear_session(free_memory=task.get("free_memory", True))
        model = training.prepare_model(config, data, seed=config.seed + execution)  # executions differ in init only
        # Its optimizer and metric variables made now: fit then traces its train function once, not twice
        # (about half of a small trial's overhead); training is unchanged (tests/test_packing.py).
        training.build_training_state(model, data)
        logger = history_logger(history_path)
        callbacks = [logger, stop_on_nan_class()()]
        if task.get("tensorboard_dir"):  # tracking.tensorboard: the trial's scalars beside its HParams session
            from toolkit.tracking.tensorboard import EXECUTION_PREFIX, Switch, guarded, keras_callback

            log_dir = Path(task["tensorboard_dir"])
            log_dir = log_dir if execution == 0 else log_dir / f"{EXECUTION_PREFIX}{execution + 1}"
            callbacks.append(guarded(keras_callback(config, log_dir), Switch(log_dir)))  # fails: a warning
        fit_started = time.perf_counter()
        training.fit(model, config, data, callbacks=callbacks, verbose=task["verbose"], keep_best=False)
        fit_seconds += time.perf_counter() - fit_started
        executions.append((logger.history, int(model.count_params())))
        failed = trial_outcome(executions[-1:], task)
        if failed["status"] != COMPLETED:
            return failed  # (later executions are not run)
    outcome = trial_outcome(executions, task)
    if outcome["status"] == COMPLETED:
        # for benchmarks/sweep_overhead.py: time inside fit, and the memory of the process that ran it
        outcome.update(fit_s=round(fit_seconds, 4), rss_mb=rss_mb())
    return outcome


def trial_outcome(executions: Sequence[Tuple[Dict[str, List[float]], int]], task: Dict[str, Any]) -> Dict[str, Any]:
    """A trial's outcome from the (history, parameter count) of each execution: the score at the objective's
    best epoch (mean over executions), or why it failed (a non-finite loss, a missing objective)."""
    from toolkit.metrics import best_index

    objective, direction = task["objective"]
    results = []
    for history, params in executions:
        losses = history.get("loss", [])
        bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
        if bad is not None or not losses:
            return {"status": FAILED, "message": f"diverged: the training loss became NaN or infinite in "
                                                 f"epoch {(bad or 0) + 1}; try a smaller learning rate"}
        if objective not in history:
            names = [k for k in history if k.startswith("val_")]
            return {"status": FAILED, "message": f"the objective {objective} is not among the metrics: "
                                                 f"{', '.join(names)}"}
        series = history[objective]
        best = best_index(series, direction)
        if not math.isfinite(series[best]):
            return {"status": FAILED, "message": f"{objective} was never finite (diverged)"}
        results.append({
            "score": series[best],
            "train": {k: history[k][best] for k in history if not k.startswith("val_")},
            "validation": {k[4:]: history[k][best] for k in history if k.startswith("val_")},
            "epochs": len(losses),
            "best_epoch": best + 1,
            "params": params,
        })
    first = results[0]
    return {
        "status": COMPLETED,
        # like keras-tuner: the score of a trial is the mean over its executions
        "score": _mean([e["score"] for e in results]),
        "train": {k: _mean([e["train"][k] for e in results]) for k in first["train"]},
        "validation": {k: _mean([e["validation"][k] for e in results]) for k in first["validation"]},
        "epochs": first["epochs"],
        "best_epoch": first["best_epoch"],
        "params": first["params"],
    }


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values))


def rss_mb(pid: Optional[int] = None) -> Optional[float]:
    """Resident memory of a process (this one by default) in MB, from /proc (None where unavailable)."""
    try:
        for line in Path(f"/proc/{pid or 'self'}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


@functools.lru_cache(maxsize=None)
def stop_on_nan_class() -> type:
    """A Keras callback class stopping training at the first non-finite batch loss (TerminateOnNaN, silent)."""
    import keras

    class StopOnNaN(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            loss = (logs or {}).get("loss")
            if loss is not None and not math.isfinite(float(loss)):
                self.model.stop_training = True

    return StopOnNaN


# ------------------------------------------------------------------------------------------- runners


class InlineRunner:
    """Runs trials in this process (``search.trials_per_process: inline``)."""

    def prestart(self) -> None:
        pass

    def run(self, task: Dict[str, Any], data: Any) -> Dict[str, Any]:
        return run_trial_task(task, data)

    def run_pack(self, tasks: Sequence[Dict[str, Any]], datasets: Dict[str, Any]) -> List[Dict[str, Any]]:
        """Trains several trials together (:mod:`toolkit.sweeps.packed`); one outcome per task."""
        from toolkit.sweeps.packed import run_pack_tasks

        return run_pack_tasks(tasks, datasets)

    def close(self, now: bool = False) -> None:
        pass


class ProcessRunner:
    """Runs trials in a worker process replaced every `limit` trials, so memory does not grow.

    The next worker is started while the current one runs its last trial. A worker that dies (killed, out of
    memory) fails its trial only; the next trial gets a fresh worker.
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
            self.context.set_forkserver_preload(list(WORKER_PRELOAD))
        else:  # pragma: no cover - Windows
            self.context = multiprocessing.get_context("spawn")
        self.current: Optional[TrialProcess] = None
        self.spare: Optional[TrialProcess] = None
        self.starting: Any = None  # the thread starting the first worker (prestart)

    def _start(self) -> "TrialProcess":
        parent, child = self.context.Pipe()
        process = self.context.Process(target=trial_process_main, args=(child,), name="ktk-trial", daemon=True)
        with main_module_not_rerun():
            process.start()
        child.close()
        return TrialProcess(process, parent)

    def prestart(self) -> None:
        """Starts the first worker in the background, so that its start-up (the fork server importing
        TensorFlow, several seconds) overlaps with this process's own work until the first trial."""
        import threading

        if self.current is None and self.spare is None and self.starting is None:
            self.starting = threading.Thread(target=self._prestart, name="ktk-prestart", daemon=True)
            self.starting.start()

    def _prestart(self) -> None:
        try:
            self.spare = self._start()
        except Exception:  # noqa: BLE001 - the first trial starts its worker itself, and reports any failure
            self.spare = None

    def _started(self) -> None:
        """Waits for a worker started in the background (:meth:`prestart`)."""
        if self.starting is not None:
            self.starting.join()
            self.starting = None

    def run(self, task: Dict[str, Any], data: Any) -> Dict[str, Any]:
        return self._run(("trial", task), 1, {task["data_key"]: data})

    def run_pack(self, tasks: Sequence[Dict[str, Any]], datasets: Dict[str, Any]) -> List[Dict[str, Any]]:
        """Trains several trials together in the worker (:mod:`toolkit.sweeps.packed`); one outcome per task."""
        outcome = self._run(("pack", list(tasks)), len(tasks), datasets)
        return outcome if isinstance(outcome, list) else [dict(outcome) for _ in tasks]

    def _run(self, message: Any, trials: int, datasets: Dict[str, Any]) -> Any:
        self._started()
        if self.current is None:
            self.current, self.spare = self.spare or self._start(), None
        worker = self.current
        try:
            for key, data in datasets.items():
                if key not in worker.data_keys:
                    worker.connection.send(("data", key, data))
                    worker.data_keys.add(key)
            worker.connection.send(message)
        except (BrokenPipeError, OSError):
            pass  # the worker is gone: reported below
        worker.trials += trials
        if worker.trials >= self.limit and self.spare is None:
            self.spare = self._start()
        outcome = worker.wait()
        if outcome is None:
            code = worker.process.exitcode
            self.current = None
            worker.stop()
            how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit status {code}"
            hint = " (often: out of memory)" if code == -9 else ""
            return {"status": FAILED, "message": f"the trial's worker process died ({how}){hint}"}
        if isinstance(outcome, list):
            # A stack's members left one traced graph between them, not one each: they count as one trial
            # towards the worker's limit (measured: ~2 MB per stack of 16, against ~2.5 MB per trial otherwise).
            stacked = [o["stack"] for o in outcome if o.get("stack")]
            worker.trials -= len(stacked) - len(set(stacked))
        if worker.trials >= self.limit:
            worker.stop()
            self.current = None
        return outcome

    def close(self, now: bool = False) -> None:
        """Stops the workers: politely between trials, or at once (`now`) when the sweep is interrupted."""
        self._started()
        for worker in (self.current, self.spare):
            if worker is not None:
                worker.stop(now=now)
        self.current = self.spare = None


def make_runner(trials_per_process: Optional[int]) -> Any:
    """The runner for ``search.trials_per_process`` (None: inline)."""
    return InlineRunner() if trials_per_process is None else ProcessRunner(trials_per_process)


class TrialProcess:
    """One trial worker process and the pipe to it."""

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


def trial_process_main(connection: Any) -> None:
    """A trial worker: receives data sets and trial tasks, sends back outcomes, until told to stop."""
    import logging
    import signal

    # Ctrl-C reaches the whole process group: the sweep decides, and stops this worker itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
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
        if message[0] == "pack":
            from toolkit.sweeps.packed import run_pack_tasks

            outcome: Any = run_pack_tasks(message[1], datasets)
        else:
            task = message[1]
            outcome = run_trial_task(task, datasets[task["data_key"]])
        sys.stdout.flush()
        try:
            connection.send(outcome)
        except (BrokenPipeError, OSError):
            return  # the sweep is gone
