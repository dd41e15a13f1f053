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
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Union

from toolkit.config import Config, check_with_data, dump_yaml
from toolkit.errors import UserError
from toolkit.hardware.cluster import Cluster, check_distribute
from toolkit.results import (BACKUP_DIR, CONFIG_FILE, ENVIRONMENT_FILE, GRADIENTS_FILE, HISTORY_FILE, METRICS_FILE,
                             MODEL_FILE, RUN_MARKER, SPLIT_FILES, SPLITS, SPLITS_DIR, TENSORBOARD_DIR,
                             atomic_write_text, check_new_dir, history_logger, make_dir, utc_now, write_json)
from toolkit.tracking import RunTracking

DEFAULT_RUNS_DIR = Path("runs")


@dataclass
class RunResult:
    """What a run produced: where it is and its metrics (as in metrics.json)."""

    run_dir: Optional[Path]  # None on a worker of a multi_worker run: the chief writes the run directory
    metrics: Dict[str, Any]
    config: Config


def run(config: Config, out_dir: Optional[Union[str, Path]] = None, verbose: int = 1,
        data: Any = None, callbacks: Sequence[Any] = (), resume: bool = False,
        cluster: Optional[Cluster] = None) -> RunResult:
    """Trains and evaluates a config into a run directory.

    Args:
        config: the validated config.
        out_dir: the run directory; default ``runs/<name>/<timestamp>``. It must be new or empty.
        verbose: Keras' progress display (0 silent, 1 progress bar, 2 one line per epoch; see
            :func:`toolkit.training.progress_verbosity`).
        data: an already loaded :class:`toolkit.data.Dataset` (sweeps load once); loaded when None. Or your own
            pipelines: ``{"train": ..., "validation": ...[, "test": ...]}`` (or a tuple in that order) of
            ``tf.data.Dataset`` or ``keras.utils.PyDataset`` yielding ``(x, y)`` batches, used as they are (the
            config's data section is then not read; see :mod:`toolkit.sources.pipelines`).
        callbacks: more Keras callbacks for ``fit``, after ktk's own (``tracking:`` and ``training.callbacks``
            are the config's way to add them).
        resume: continue the unfinished run in `out_dir` (one ktk claimed for this same config and data) from
            its last finished epoch (see :mod:`toolkit.resume`).
        cluster: with ``training.distribute: multi_worker``, this process's place in the cluster
            (:func:`toolkit.hardware.cluster.cluster_from_flags`); default: the ``TF_CONFIG`` environment variable.
            The chief writes the run directory; a worker trains the same model into a temporary folder it removes,
            and its result has no `run_dir`.

    Returns:
        A :class:`RunResult` with the run directory and the metrics written to ``metrics.json``.

    Raises:
        UserError: a bad config or data (nothing is written then), or an `out_dir` that is not empty or
            that another run claimed first; with `resume`, an `out_dir` that is not an unfinished ktk run of this
            config and data, or that a running process holds.
        ClusterError: (multi_worker) another process of the cluster failed.
    """
    from toolkit import training
    from toolkit.data import in_memory, load_data

    started = time.time()
    started_at = utc_now()
    cluster = check_distribute(config, cluster, resume, environ=os.environ)
    worker = cluster is not None and not cluster.is_chief  # the chief alone writes the run directory
    resumed: Optional[RunDirClaim] = None
    if resume:
        from toolkit.resume import check_resumable

        if out_dir is None:
            raise UserError("--resume needs the run directory", where="--resume",
                            expected="--resume RUN_DIR, or CONFIG --out RUN_DIR --resume")
        check_resumable(out_dir, config)  # said now, before the data loads
        resumed = claim_to_resume(out_dir)  # a process still training in it is said now too
    elif out_dir is not None and not worker:
        check_new_dir(out_dir, "run directory")  # said now, not after seconds of importing TensorFlow
    if config.training.distribute is not None:
        from toolkit.hardware.strategy import prepare

        prepare(config, cluster)  # before anything starts TensorFlow (multi_worker's strategy must be first)
    if config.data.augment:
        from toolkit.keras_names import check_augment

        check_augment(config)  # said now, as `ktk validate` says it, not after the images load
    try:
        if data is None:
            data = load_data(config)
        elif not hasattr(data, "task"):  # not a Dataset or Pipelines: a user's tf.data / PyDataset pipelines (toolkit.sources.pipelines)
            from toolkit.sources.pipelines import from_user

            data = from_user(data, config)
        if config.training.monitor.gradients and not in_memory(data):
            raise UserError("training.monitor.gradients probes examples held in memory", where="training.monitor."
                            "gradients", expected="false for streamed, image-file or your own pipelines", received=True)
        check_with_data(config, data)  # class weights, the monitor of the data's task: before anything is written
        model = training.prepare_model(config, data)
        if worker:
            return _train_as_worker(cluster, config, data, model, started, started_at, verbose, callbacks)
        if resumed is not None:
            claim = resumed
        else:
            claim = claim_run_dir(out_dir) if out_dir is not None else claim_default_run_dir(config.name, started)
        tracker = RunTracking(config, claim.path, started_at)
        try:
            with _in_cluster(config, cluster):
                metrics = _train_into(claim.path, config, data, model, started, started_at, verbose, tracker,
                                      callbacks, resume, cluster)
        except BaseException as error:
            tracker.abort(interrupted=isinstance(error, KeyboardInterrupt))
            if not resume and not (claim.path / HISTORY_FILE).exists():  # stopped before its first epoch
                claim.release()
            raise
        finally:
            claim.unlock()
    finally:
        if resumed is not None:
            resumed.unlock()
    return RunResult(run_dir=claim.path, metrics=metrics, config=config)


def _in_cluster(config: Config, cluster: Optional[Cluster]) -> Any:
    """Around a multi-worker run's training: a failed process as one ClusterError; at its end, every process waits
    for the others (workers end once the chief has written the run directory)."""
    if cluster is None:
        return contextlib.nullcontext()
    from toolkit.hardware.strategy import cluster_run

    return cluster_run(config, cluster)


def _train_as_worker(cluster: Cluster, config: Config, data: Any, model: Any, started: float, started_at: str,
                     verbose: int, callbacks: Sequence[Any]) -> RunResult:
    """A worker of a multi_worker run: the chief's training step for step (every collective is shared), into a
    temporary folder removed at the end; MLflow and TensorBoard are the chief's alone."""
    untracked = config.with_values({"tracking.tensorboard": None, "tracking.mlflow": None})
    scratch = Path(tempfile.mkdtemp(prefix="ktk-worker-"))
    try:
        with _in_cluster(config, cluster):
            metrics = _train_into(scratch, untracked, data, model, started, started_at, verbose,
                                  RunTracking(untracked, scratch, started_at), callbacks, cluster=cluster)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return RunResult(run_dir=None, metrics=metrics, config=config)


def _train_into(run_dir: Path, config: Config, data: Any, model: Any, started: float, started_at: str,
                verbose: int, tracker: RunTracking, extra_callbacks: Sequence[Any] = (),
                resume: bool = False, cluster: Optional[Cluster] = None) -> Dict[str, Any]:
    from toolkit import training
    from toolkit.resume import Checkpoint, resumed_environment

    checkpoint = Checkpoint(run_dir / BACKUP_DIR)
    earlier: Dict[str, Any] = {}
    if resume:
        earlier = checkpoint.rewind(run_dir / HISTORY_FILE, config)  # back to the last epoch backed up
        environment = resumed_environment(run_dir, _environment(config, started_at, model), checkpoint.initial_epoch)
    else:
        environment = _environment(config, started_at, model)
    if config.training.distribute is not None:
        from toolkit.hardware.strategy import describe

        environment["distribute"] = describe(config, cluster)
    atomic_write_text(run_dir / CONFIG_FILE, dump_yaml(config.to_dict()))
    write_json(run_dir / ENVIRONMENT_FILE, environment)
    write_split_files(run_dir, data)

    logger = history_logger(run_dir / HISTORY_FILE, earlier)
    callbacks = [logger]
    if config.training.monitor.gradients:
        from toolkit.lessons.monitor import gradient_monitor

        callbacks.append(gradient_monitor(config, data, run_dir / GRADIENTS_FILE))
    callbacks += tracker.callbacks(callbacks[-1] if config.training.monitor.gradients else None)
    callbacks += list(extra_callbacks)
    training.fit(model, config, data, callbacks=callbacks, verbose=verbose, checkpoint=checkpoint)
    history = logger.history  # every epoch, those before a resume too

    monitor = training.monitor_name(config)
    mode = training.monitor_mode(config)
    # (your own pipelines without a test split: "test": null, said in metrics.json rather than left out)
    metrics: Dict[str, Any] = {split: training.evaluate(model, config, data, split)
                               if getattr(data, "has_test", True) or split != "test" else None for split in SPLITS}
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
    checkpoint.remove()  # the run is complete: its backup has served
    return metrics


def write_split_files(run_dir: Path, data: Any) -> None:
    """``splits/train.txt``, ``validation.txt``, ``test.txt``: the files of each split (images), one path a line
    relative to ``data.path``, so that a run can be audited and repeated. Nothing for other sources."""
    files = getattr(data, "split_files", None)
    if not files:
        return
    make_dir(run_dir / SPLITS_DIR, where="--out")
    for name, file_name in zip(SPLITS, SPLIT_FILES):
        atomic_write_text(run_dir / SPLITS_DIR / file_name, "".join(f"{f}\n" for f in files.get(name, ())))


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
    if config.training.distribute is not None:
        from toolkit.hardware.cluster import distributed_steps_per_execution

        distributed_steps_per_execution(config)
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
    lock: Optional[int] = None  # the marker, open and locked (flock) while this process trains: see claim_to_resume

    def unlock(self) -> None:
        """Lets go of the marker's lock (the kernel does it too when the process ends, however it ends)."""
        if self.lock is not None:
            with contextlib.suppress(OSError):
                os.close(self.lock)
            self.lock = None

    def release(self) -> None:
        """Removes what this run wrote before its first epoch, and the folders this run made if still empty."""
        self.unlock()
        for name in (CONFIG_FILE, ENVIRONMENT_FILE, GRADIENTS_FILE, RUN_MARKER):
            with contextlib.suppress(FileNotFoundError):
                (self.path / name).unlink()
        for folder in (self.path / TENSORBOARD_DIR, self.path / SPLITS_DIR):
            if folder.is_dir() and not folder.is_symlink():
                shutil.rmtree(folder, ignore_errors=True)
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
    lock = _take_marker(path)
    if lock is None:
        raise UserError("another ktk run has claimed this directory", where="--out",
                        expected="a new or empty directory", received=str(path))
    claim = RunDirClaim(path, created, parents, lock)
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
        lock = _take_marker(path)
        if lock is not None:
            return RunDirClaim(path, created=True, parents_made=parents, lock=lock)
        n += 1


def _make_parents(path: Path) -> Tuple[Path, ...]:
    """Creates the folders above `path` that are missing; returns them, deepest first."""
    missing = tuple(folder for folder in path.parents if not folder.exists())
    make_dir(path.parent, where="--out")
    return missing


def _take_marker(directory: Path) -> Optional[int]:
    """Creates the run marker with O_EXCL, and locks it: its open descriptor for the one process that made it,
    else None."""
    try:
        fd = os.open(directory / RUN_MARKER, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return None
    except OSError as error:
        raise UserError(f"cannot write into the run directory ({error.strerror or error})", where="--out",
                        received=str(directory)) from None
    _lock(fd)
    os.write(fd, f"ktk run, process {os.getpid()}, started {utc_now()}\n".encode())  # for a person wondering
    return fd


def claim_to_resume(path: Union[str, Path]) -> RunDirClaim:
    """Holds an unfinished run's directory for this process: its marker's lock, which the process that trained
    it held until it ended (a killed process's lock goes with it).

    Raises:
        UserError: a process is still training in it.
    """
    path = Path(path)
    try:
        fd = os.open(path / RUN_MARKER, os.O_RDWR)
    except OSError as error:
        raise UserError(f"cannot open the run's marker ({error.strerror or error})", where="--resume",
                        received=str(path / RUN_MARKER)) from None
    if not _lock(fd):
        os.close(fd)
        raise UserError("a ktk process is still training this run; stop it first, or wait for it to finish",
                        where="--resume", received=str(path))
    return RunDirClaim(path, created=False, lock=fd)


def _lock(fd: int) -> bool:
    """An exclusive, non-blocking flock on `fd`: False when another process holds it. Where the file system
    has no locks, True (the O_EXCL marker still keeps two new runs apart)."""
    import errno
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        return error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)
    return True


def _environment(config: Config, started_at: str, model: Any) -> Dict[str, Any]:
    import keras
    import numpy
    import tensorflow

    from toolkit import __version__
    from toolkit.hardware.devices import switches_in_effect
    from toolkit.provenance import provenance

    return {
        "ktk": __version__,
        "python": sys.version.split()[0],
        "tensorflow": tensorflow.__version__,
        "keras": keras.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "seed": config.seed,
        **provenance(config),  # git, data_files, packages, host, cpu_count, gpus, deterministic_ops
        **switches_in_effect(config, model),  # devices, training_switches (precision, jit_compile, deterministic)
        "command": sys.argv,
        "cwd": os.getcwd(),
        "config_source": config.source,
        "started": started_at,
        "finished": None,
    }
