"""One training run end to end: ``run(config)`` trains and evaluates into a run directory.

The order matters for honesty and for never losing data: the data is loaded and the model built before
anything is written (a bad name fails early, leaving nothing behind); only then is the run directory
claimed, atomically (two runs never share one); the test split is evaluated exactly once, after
training; ``metrics.json`` is written last, atomically.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Union

from toolkit.config import Config, check_with_data, dump_yaml
from toolkit.errors import UserError
from toolkit.results import (CONFIG_FILE, ENVIRONMENT_FILE, GRADIENTS_FILE, HISTORY_FILE, METRICS_FILE, MODEL_FILE,
                             RUN_MARKER, SPLITS, TENSORBOARD_DIR, atomic_write_text, check_new_dir, history_logger,
                             make_dir, utc_now, write_json)
from toolkit.tracking import RunTracking

DEFAULT_RUNS_DIR = Path("runs")


@dataclass
class RunResult:
    """What a run produced: where it is and its metrics (as in metrics.json)."""

    run_dir: Path
    metrics: Dict[str, Any]
    config: Config


def run(config: Config, out_dir: Optional[Union[str, Path]] = None, verbose: int = 1,
        data: Any = None, callbacks: Sequence[Any] = ()) -> RunResult:
    """Trains and evaluates a config into a run directory.

    Args:
        config: the validated config.
        out_dir: the run directory; default ``runs/<name>/<timestamp>``. It must be new or empty.
        verbose: Keras' progress display (0 silent, 1 progress bar, 2 one line per epoch; see
            :func:`toolkit.training.progress_verbosity`).
        data: an already loaded :class:`toolkit.data.Dataset` (sweeps load once); loaded when None.
        callbacks: more Keras callbacks for ``fit``, after ktk's own (``tracking:`` and ``training.callbacks``
            are the config's way to add them).

    Returns:
        A :class:`RunResult` with the run directory and the metrics written to ``metrics.json``.

    Raises:
        UserError: a bad config or data (nothing is written then), or an `out_dir` that is not empty or
            that another run claimed first.
    """
    from toolkit import training
    from toolkit.data import load_data

    started = time.time()
    started_at = utc_now()
    if out_dir is not None:
        check_new_dir(out_dir, "run directory")  # said now, not after seconds of importing TensorFlow
    if data is None:
        data = load_data(config)
    check_with_data(config, data)  # class weights, the monitor of the data's task: before anything is written
    model = training.prepare_model(config, data)
    claim = claim_run_dir(out_dir) if out_dir is not None else claim_default_run_dir(config.name, started)
    tracker = RunTracking(config, claim.path, started_at)
    try:
        metrics = _train_into(claim.path, config, data, model, started, started_at, verbose, tracker, callbacks)
    except BaseException as error:
        tracker.abort(interrupted=isinstance(error, KeyboardInterrupt))
        if not (claim.path / HISTORY_FILE).exists():  # stopped before its first epoch: nothing worth keeping
            claim.release()
        raise
    return RunResult(run_dir=claim.path, metrics=metrics, config=config)


def _train_into(run_dir: Path, config: Config, data: Any, model: Any, started: float, started_at: str,
                verbose: int, tracker: RunTracking, extra_callbacks: Sequence[Any] = ()) -> Dict[str, Any]:
    from toolkit import training

    atomic_write_text(run_dir / CONFIG_FILE, dump_yaml(config.to_dict()))
    environment = _environment(config, started_at)
    write_json(run_dir / ENVIRONMENT_FILE, environment)

    callbacks = [history_logger(run_dir / HISTORY_FILE)]
    if config.training.monitor.gradients:
        from toolkit.lessons.monitor import gradient_monitor

        callbacks.append(gradient_monitor(config, data, run_dir / GRADIENTS_FILE))
    callbacks += tracker.callbacks(callbacks[-1] if config.training.monitor.gradients else None)
    callbacks += list(extra_callbacks)
    history = training.fit(model, config, data, callbacks=callbacks, verbose=verbose).history

    monitor = training.monitor_name(config)
    mode = training.monitor_mode(config)
    metrics: Dict[str, Any] = {split: training.evaluate(model, config, data, split) for split in SPLITS}
    epochs_run = len(history.get("loss", []))
    metrics.update({
        "epochs_run": epochs_run,
        "best_epoch": training.best_epoch(history, monitor, mode),
        "params": int(model.count_params()),
        "wall_time_s": round(time.time() - started, 3),
        "task": data.task,
        "num_classes": data.num_classes,
        "monitor": monitor,
        "seed": config.seed,
        "sizes": data.sizes(),
    })
    save_model(run_dir, model, data)
    environment.update(tracker.finish(metrics))  # MLflow's copy of metrics.json is these metrics
    environment["finished"] = utc_now()
    write_json(run_dir / ENVIRONMENT_FILE, environment)
    write_json(run_dir / METRICS_FILE, metrics)  # last: its presence means the run is complete
    return metrics


def save_model(run_dir: Path, model: Any, data: Any) -> None:
    """Saves the trained model wrapped to take raw inputs (``model.keras``) and what it takes and gives
    (``labels.json``): see :mod:`toolkit.deploy.serving` and :mod:`toolkit.schema`."""
    from toolkit.schema import write_labels
    from toolkit.deploy.serving import serving_model

    serving_model(model, data.inputs, data.normalization).save(run_dir / MODEL_FILE)
    write_labels(run_dir, data)


def validate(config: Config, deep: bool = False) -> str:
    """Checks a config and that its data loads, without training; returns a printable report.

    Makes every check ``ktk run`` and ``ktk tune`` make before training, except those only Keras can make:
    names and arguments of Keras objects are read from Keras' files, and the data's task and classes
    check the class weights and the early-stopping monitor. With `deep`, also builds the model and
    optimizer with Keras (imports TensorFlow), and every candidate trial of a search, and reports the
    parameter count.
    """
    from toolkit.data import load_data
    from toolkit.keras_names import check_config_names

    names_checked = check_config_names(config)
    spec = None
    if config.search is not None:  # every searched path, range end and choice, before any data loads
        from toolkit.search import parse_search

        spec = parse_search(config)
    data = load_data(config)
    check_with_data(config, data)
    base = config.with_values({"search": None}) if spec is not None else config
    if spec is not None:
        from toolkit.search import check_space_with_data

        check_space_with_data(spec, base, data)
    lines = [f"# {config.source or config.name}: valid", f"# data: {data.describe()}"]
    if spec is not None:
        trials = f"{spec.max_trials} trials" if spec.max_trials else "trials until the space is covered"
        lines.append(f"# search: {spec.tuner}, {trials}, {spec.objective.direction} {spec.objective.name} "
                     f"over {', '.join(spec.paths)}")
    if not names_checked and not deep:
        lines.append("# Keras names: not checked (Keras' API listing not found); use --deep")
    if deep:
        from toolkit import training
        from toolkit.models import build_model

        model = build_model(config, data)
        training.compile_model(model, config, data)
        lines.append(f"# model: {len(model.layers)} layers, {model.count_params():,} parameters")
        if spec is not None:
            from toolkit.search import check_with_keras

            check_with_keras(spec, base, data)
    else:
        lines.append("# model: not built (--deep builds it, and every searched value, with Keras)")
    return "\n".join(lines) + "\n" + dump_yaml(config.to_dict())


@dataclass
class RunDirClaim:
    """A run directory held by one run: its marker (:data:`toolkit.results.RUN_MARKER`) was created here,
    exclusively, so no other run writes into it."""

    path: Path
    created: bool  # this run made the directory (so it may remove it again)
    parents_made: Tuple[Path, ...] = ()  # folders above it that this run made, deepest first

    def release(self) -> None:
        """Removes what this run wrote before its first epoch, and the folders this run made if still empty."""
        for name in (CONFIG_FILE, ENVIRONMENT_FILE, GRADIENTS_FILE, RUN_MARKER):
            with contextlib.suppress(FileNotFoundError):
                (self.path / name).unlink()
        tensorboard = self.path / TENSORBOARD_DIR
        if tensorboard.is_dir() and not tensorboard.is_symlink():
            shutil.rmtree(tensorboard, ignore_errors=True)
        for folder in ((self.path,) if self.created else ()) + self.parents_made:
            with contextlib.suppress(OSError):  # not empty: someone else's files or runs; they stay
                folder.rmdir()


def claim_run_dir(path: Union[str, Path]) -> RunDirClaim:
    """Claims `path` (new, or an empty directory) for one run, atomically: of two runs given the same
    directory, one gets it and the other a UserError (exit status 2), even when they start together."""
    path = Path(path)
    parents = _make_parents(path)
    created = False
    try:
        path.mkdir()
        created = True
    except FileExistsError:
        pass
    except OSError as error:
        raise UserError(f"cannot create the directory ({error.strerror or error})", where="--out",
                        received=str(path)) from None
    if not path.is_dir():
        raise UserError("this is a file, not a directory", where="--out", expected="a new or empty directory",
                        received=str(path))
    if not _take_marker(path):
        raise UserError("another ktk run has claimed this directory", where="--out",
                        expected="a new or empty directory", received=str(path))
    claim = RunDirClaim(path, created, parents)
    if any(entry.name != RUN_MARKER for entry in path.iterdir()):  # filled since it was checked
        claim.release()
        raise UserError("the run directory already exists and is not empty; results are never overwritten",
                        where="--out", expected="a new or empty directory", received=str(path))
    return claim


def claim_default_run_dir(name: str, started: float) -> RunDirClaim:
    """Claims ``runs/<name>/<timestamp>`` of the start time; a folder already there (another run started in
    the same second) makes it ``<timestamp>-2``, ``-3``... The claim is an exclusive mkdir, then the marker."""
    stamp = _dt.datetime.fromtimestamp(started).strftime("%Y%m%d-%H%M%S")
    parents: Tuple[Path, ...] = ()
    n = 1
    while True:
        path = DEFAULT_RUNS_DIR / name / (stamp if n == 1 else f"{stamp}-{n}")
        parents += _make_parents(path)  # again when a failed run removed them meanwhile
        try:
            path.mkdir()
        except FileExistsError:
            n += 1
            continue
        except FileNotFoundError:  # the parent went between the two calls (a refused run tidying up): again
            continue
        except OSError as error:
            raise UserError(f"cannot create the run directory ({error.strerror or error}); choose one with --out",
                            where="--out", received=str(path)) from None
        if _take_marker(path):
            return RunDirClaim(path, created=True, parents_made=parents)
        n += 1


def _make_parents(path: Path) -> Tuple[Path, ...]:
    """Creates the folders above `path` that are missing; returns them, deepest first."""
    missing = tuple(folder for folder in path.parents if not folder.exists())
    make_dir(path.parent, where="--out")
    return missing


def _take_marker(directory: Path) -> bool:
    """Creates the run marker with O_EXCL: True for the one process that made it."""
    try:
        fd = os.open(directory / RUN_MARKER, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    except OSError as error:
        raise UserError(f"cannot write into the run directory ({error.strerror or error})", where="--out",
                        received=str(directory)) from None
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(f"ktk run, process {os.getpid()}, started {utc_now()}\n")  # for a person wondering what it is
    return True


def _environment(config: Config, started_at: str) -> Dict[str, Any]:
    import keras
    import numpy
    import tensorflow

    from toolkit import __version__

    return {
        "ktk": __version__,
        "python": sys.version.split()[0],
        "tensorflow": tensorflow.__version__,
        "keras": keras.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "seed": config.seed,
        "deterministic_ops": True,
        "command": sys.argv,
        "cwd": os.getcwd(),
        "config_source": config.source,
        "started": started_at,
        "finished": None,
    }
