"""Resuming an interrupted run: ``ktk run CONFIG --out DIR --resume`` or ``ktk run --resume DIR``.

Every run backs up its training state after its epochs into ``<run_dir>/backup/``
(:data:`toolkit.results.BACKUP_DIR`), so that a run stopped by Ctrl-C, ``kill -9``, a crash or a lost machine can
go on from its last backed-up epoch. A backup costs tens of milliseconds (Keras writes every weight and optimizer
variable), as much as a whole epoch of a small model. So an epoch is backed up only when the training since the
last backup took at least 20 times as long as that backup did (:data:`BACKUP_SHARE`): backups cost at most about
5% of the training time, an epoch of a second or more is always backed up, and short epochs every so many (a
resume then replays them, to the same result). ``KTK_BACKUP_EVERY_EPOCH=1`` backs up every epoch.

- Keras' ``BackupAndRestore`` writes the model's weights with the optimizer's state (``latest.weights.h5``) and
  the epoch (``training_metadata.json``); on a resume it loads them back.
- ktk then commits the epoch: a copy of those weights (``epoch-<N>.weights.h5``), the states of the models' random
  generators (dropout's: Keras saves no such state; ``rng-<N>.npz``), the best epoch's weights for
  ``restore_best_weights`` (``best-<B>.npz``), and last, atomically, ``state.json`` naming them. Only what
  ``state.json`` names counts, so a process killed halfway through writing resumes from the epoch before.

A resume rewinds to the committed epoch: Keras' files are replaced by the commit's, ``history.csv`` is cut to the
committed epochs (and then goes on), early stopping's counters are replayed from ``history.csv`` (Keras saves
none), and training continues with the same per-epoch shuffling (a function of the seed and the epoch, see
:func:`toolkit.training.make_dataset`). With op determinism on, the final metrics equal an uninterrupted run's.

Only a directory that ``ktk run`` claimed (its ``.ktk-run`` marker), unfinished (no ``metrics.json``), for this
same config and data, and that no running process holds, is resumed; anything else is refused with one message.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from toolkit.errors import UserError
from toolkit.results import (BACKUP_FILE_PATTERN, BACKUP_KERAS_FILES, BACKUP_STATE_FILE, CONFIG_FILE,
                             ENVIRONMENT_FILE, METRICS_FILE, RUN_MARKER, YAML_LOADER, read_history_csv, read_json,
                             read_yaml, utc_now, write_history_csv, write_json, atomic_write_bytes)

WHERE = "--resume"
BACKUP_SHARE = 0.05  # backups may take about this share of the training time (see the module's docstring)
EVERY_EPOCH_ENV = "KTK_BACKUP_EVERY_EPOCH"  # "1": back up after every epoch, whatever it costs
_KERAS_WEIGHTS, _KERAS_METADATA = BACKUP_KERAS_FILES[:2]
_SHOWN_DIFFERENCES = 3


# ------------------------------------------------------------------------------------------ the checks


def load_run_config(run_dir: Union[str, Path]) -> Any:
    """The config an unfinished run was started with (its ``config.yaml``), for ``ktk run --resume DIR``.

    Relative data paths are resolved as they were for the original run: against the folder of the config file it
    was started from (``environment.json`` records it).

    Raises:
        UserError: `run_dir` is not an unfinished ktk run, or holds no readable config.
    """
    from toolkit.config import parse_config

    run_dir = _check_run_dir(run_dir)
    path = run_dir / CONFIG_FILE
    try:
        raw = read_yaml(path)
    except FileNotFoundError:
        raise UserError(f"the run stopped before writing {CONFIG_FILE}; resume it with its config: ktk run CONFIG "
                        f"--out {run_dir} --resume", where=WHERE, received=str(run_dir)) from None
    except Exception as error:  # OSError, or YAML that is damaged
        raise UserError(f"{CONFIG_FILE} cannot be read ({_reason(error)})", where=WHERE, received=str(path)) from None
    return parse_config(raw, source=_original_source(run_dir) or str(path))


def _original_source(run_dir: Path) -> Optional[str]:
    """The config file the run was started from, as an absolute path (None when unknown)."""
    try:
        environment = read_json(run_dir / ENVIRONMENT_FILE)
    except (OSError, ValueError):
        return None
    if not isinstance(environment, dict) or not isinstance(environment.get("config_source"), str):
        return None
    source = Path(environment["config_source"])
    if not source.is_absolute() and isinstance(environment.get("cwd"), str):
        source = Path(environment["cwd"]) / source
    return str(source)


def check_resumable(run_dir: Union[str, Path], config: Any) -> Path:
    """Checks, only reading, that `run_dir` is an unfinished run that ``ktk run`` claimed for this config and data.

    Raises:
        UserError: (at ``--resume``) no such directory, not a ktk run, a finished run, another config, changed data.
    """
    run_dir = _check_run_dir(run_dir)
    try:
        saved = read_yaml(run_dir / CONFIG_FILE)
    except FileNotFoundError:
        saved = None  # stopped before its config was written: nothing ran, nothing to compare
    except Exception as error:
        raise UserError(f"{CONFIG_FILE} cannot be read ({_reason(error)})", where=WHERE,
                        received=str(run_dir / CONFIG_FILE)) from None
    if saved is not None:
        differences = config_differences(saved, config)
        if differences:
            shown = "; ".join(differences[:_SHOWN_DIFFERENCES])
            more = f" (and {len(differences) - _SHOWN_DIFFERENCES} more)" if len(differences) > _SHOWN_DIFFERENCES else ""
            raise UserError(f"the run was started with another config: {shown}{more}. A run resumes only with its "
                            f"own config; start a new run with another --out", where=WHERE, received=str(run_dir))
    _check_data_unchanged(run_dir, config)
    return run_dir


def _check_run_dir(run_dir: Union[str, Path]) -> Path:
    run_dir = Path(run_dir)
    expected = "an unfinished run directory of ktk run"
    try:
        if not run_dir.is_dir():
            problem = "no such directory" if not run_dir.exists() else "this is a file, not a run directory"
            raise UserError(problem, where=WHERE, expected=expected, received=str(run_dir))
        marked = (run_dir / RUN_MARKER).is_file()
        finished = (run_dir / METRICS_FILE).exists()
    except (OSError, ValueError) as error:
        raise UserError(f"cannot use this path ({_reason(error)})", where=WHERE, expected=expected,
                        received=str(run_dir)) from None
    if not marked:
        raise UserError(f"not a run directory that ktk run made (it has no {RUN_MARKER}); ktk resumes only its own "
                        f"runs", where=WHERE, expected=expected, received=str(run_dir))
    if finished:
        raise UserError(f"this run has finished ({METRICS_FILE} is there): there is nothing to resume", where=WHERE,
                        expected=expected, received=str(run_dir))
    return run_dir


def config_differences(saved: Any, config: Any) -> List[str]:
    """The keys where a run's saved config.yaml and `config` (resolved the same way) differ, as
    ``"key: A there, B here"``."""
    from toolkit.config import dump_yaml
    from toolkit.safe_yaml import load

    here = load(dump_yaml(config.to_dict()).encode("utf-8"), YAML_LOADER)
    there_flat, here_flat = _flatten(saved), _flatten(here)
    missing = object()
    out = []
    for key in sorted(set(there_flat) | set(here_flat)):
        a, b = there_flat.get(key, missing), here_flat.get(key, missing)
        if a != b or type(a) is not type(b):
            show = lambda v: "absent" if v is missing else repr(v)  # noqa: E731
            out.append(f"{key or '(the whole config)'}: {show(a)} there, {show(b)} here")
    return out


def _flatten(value: Any, prefix: str = "") -> Dict[str, Any]:
    if isinstance(value, dict) and value:
        out: Dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def _check_data_unchanged(run_dir: Path, config: Any) -> None:
    """Refuses a data file whose SHA-256 differs from the one environment.json recorded when the run started."""
    from toolkit.provenance import data_files

    try:
        recorded = read_json(run_dir / ENVIRONMENT_FILE).get("data_files")
    except (OSError, ValueError, AttributeError):
        return  # not recorded (stopped before, or a run of an older ktk): nothing to compare with
    if not isinstance(recorded, dict):
        return
    for key, now in data_files(config).items():
        then = recorded.get(key)
        if isinstance(then, dict) and then.get("sha256") and now.get("sha256") and then["sha256"] != now["sha256"]:
            raise UserError("the data file has changed since the run started (its SHA-256 differs); a run resumes "
                            "only on the data it started with; start a new run with another --out", where=key,
                            received=now.get("path"))


def resumed_environment(run_dir: Path, environment: Dict[str, Any], epoch: int) -> Dict[str, Any]:
    """environment.json for a resumed run: this process's environment, the original start time, and the list
    of resumes (``resumed``: when, on which host, from which epoch)."""
    try:
        before = read_json(run_dir / ENVIRONMENT_FILE)
    except (OSError, ValueError):
        before = None
    before = before if isinstance(before, dict) else {}
    resumes = before.get("resumed") if isinstance(before.get("resumed"), list) else []
    out = dict(environment)
    if isinstance(before.get("started"), str):
        out["started"] = before["started"]
    out["resumed"] = [*resumes, {"at": utc_now(), "host": environment.get("host"), "from_epoch": epoch}]
    return out


def _reason(error: BaseException) -> str:
    return str(getattr(error, "strerror", None) or error).splitlines()[0] if str(error) else type(error).__name__


# ------------------------------------------------------------------------------------------ the backup


class Checkpoint:
    """A run's training state in its backup folder: written after every epoch, read back by a resume.

    Args:
        folder: ``<run_dir>/backup``.
    """

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.initial_epoch = 0  # epochs finished before this process (after rewind)
        self._state: Dict[str, Any] = {}
        self._stopping_state: Optional[Dict[str, Any]] = None
        self._history: Dict[str, List[float]] = {}  # the committed epochs' history.csv (after rewind)

    # -- a resume

    def rewind(self, history_path: Path, config: Any) -> Dict[str, List[float]]:
        """Goes back to the last committed epoch: Keras' files made the commit's, history.csv cut to its epochs.

        Returns:
            The committed epochs' history (history.csv's columns), for the history logger to go on from.

        Raises:
            UserError: the backup or history.csv is damaged.
        """
        state = self._read_state()
        epochs = state.get("epoch", 0)
        if not isinstance(epochs, int) or isinstance(epochs, bool) or not 0 <= epochs <= config.training.epochs:
            self._damaged(f"{BACKUP_STATE_FILE} names epoch {epochs!r}, not one of this config's")
        named = [state.get(key) for key in ("weights", "rng", "best")]
        for name in named:
            if name is not None and not (isinstance(name, str) and re.fullmatch(BACKUP_FILE_PATTERN, name)
                                         and (self.folder / name).is_file()):
                self._damaged(f"{name!r}, named by {BACKUP_STATE_FILE}, is missing")
        if epochs and state.get("weights") is None:
            self._damaged(f"{BACKUP_STATE_FILE} names no weights")
        for name in BACKUP_KERAS_FILES:  # Keras' own: perhaps written after the commit, or half written
            with contextlib.suppress(FileNotFoundError):
                (self.folder / name).unlink()
        if epochs:
            _atomic_copy(self.folder / state["weights"], self.folder / _KERAS_WEIGHTS)
        self._remove_unnamed(named)
        self._state, self.initial_epoch = state, epochs
        self._history = self._rewind_history(history_path, epochs)
        return self._history

    def _read_state(self) -> Dict[str, Any]:
        path = self.folder / BACKUP_STATE_FILE
        try:
            state = read_json(path)
        except FileNotFoundError:
            return {}  # no epoch finished (or it was being committed): from the start
        except (OSError, ValueError) as error:
            self._damaged(f"{BACKUP_STATE_FILE} cannot be read ({_reason(error)})")
        if not isinstance(state, dict):
            self._damaged(f"{BACKUP_STATE_FILE} is not a mapping")
        return state

    def _rewind_history(self, path: Path, epochs: int) -> Dict[str, List[float]]:
        if not epochs:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # rows of an epoch that was not backed up: it runs again
            return {}
        try:
            history = read_history_csv(path)
        except (OSError, ValueError) as error:
            self._damaged(f"{path.name} cannot be read ({_reason(error)})")
        rows = min((len(v) for v in history.values()), default=0)
        if rows < epochs:
            self._damaged(f"{path.name} has {rows} epochs, the backup {epochs}")
        history = {k: v[:epochs] for k, v in history.items()}
        rates = history.pop("learning_rate", None)
        columns = {k: v for k, v in history.items() if k != "epoch"}
        write_history_csv(path, columns, rates)
        if rates is not None:
            columns["learning_rate"] = rates
        return columns

    def _damaged(self, problem: str) -> None:
        raise UserError(f"the run's backup is damaged: {problem}; it cannot be resumed. Start it again with another "
                        f"--out", where=WHERE, received=str(self.folder.parent))

    def epochs(self, configured: int) -> int:
        """The epochs to pass to fit: none left when early stopping had stopped the run before it was killed."""
        stopped = self._stopping_state is not None and self._stopping_state["stopped_epoch"] > 0
        return self.initial_epoch if stopped else configured

    # -- every run

    def callbacks(self, model: Any, early_stopping: Any = None) -> List[Any]:
        """Keras' ``BackupAndRestore`` and ktk's commit of each epoch (to follow `early_stopping` in the list)."""
        if early_stopping is not None and self.initial_epoch:
            self._stopping_state = self._replay(model, early_stopping)
        backup = _backup_class()(str(self.folder), save_freq="epoch", delete_checkpoint=False)
        return [backup, _commit_class()(self, early_stopping, backup)]

    def _replay(self, model: Any, stopping: Any) -> Dict[str, Any]:
        """Early stopping's counters after the committed epochs, replayed from history.csv's values (the very
        floats Keras gave it) through its own ``on_epoch_end``."""
        history = self._history
        restore, stopping.restore_best_weights = stopping.restore_best_weights, False
        stopping.set_model(model)
        stopping.on_train_begin()
        try:
            for epoch in range(self.initial_epoch):
                value = history.get(stopping.monitor, [])[epoch] if stopping.monitor in history else None
                stopping.on_epoch_end(epoch, {} if value is None else {stopping.monitor: value})
        finally:
            stopping.restore_best_weights = restore
            model.stop_training = False
        return {name: getattr(stopping, name) for name in ("wait", "stopped_epoch", "best", "best_epoch")}

    def restore(self, model: Any, stopping: Any) -> None:
        """At the start of training (after Keras' own restore and early stopping's reset): the random generators'
        states and early stopping's counters and best weights."""
        import numpy as np

        if not self.initial_epoch:
            return
        rng = self._state.get("rng")
        if rng:
            with np.load(self.folder / rng) as saved:
                values = [saved[f"arr_{i}"] for i in range(len(saved.files))]
            variables = _rng_variables(model)
            if len(values) != len(variables) or any(v.shape != a.shape for v, a in zip(variables, values)):
                self._damaged(f"{rng} does not fit this model's random generators")
            for variable, value in zip(variables, values):
                variable.assign(value)
        if stopping is not None and self._stopping_state is not None:
            for name, value in self._stopping_state.items():
                setattr(stopping, name, value)
            best = self._state.get("best")
            if stopping.restore_best_weights and best:
                with np.load(self.folder / best) as saved:
                    stopping.best_weights = [saved[f"arr_{i}"] for i in range(len(saved.files))]

    def commit(self, model: Any, epoch: int, stopping: Any) -> None:
        """Commits a finished epoch (0-based `epoch`): after Keras' ``BackupAndRestore`` has written it."""
        number = epoch + 1
        weights = f"epoch-{number}.weights.h5"
        _atomic_copy(self.folder / _KERAS_WEIGHTS, self.folder / weights)
        rng = f"rng-{number}.npz"
        atomic_write_bytes(self.folder / rng, _npz([v.numpy() for v in _rng_variables(model)]))
        best = self._state.get("best")
        best_epoch = self._state.get("best_epoch")
        if (stopping is not None and stopping.restore_best_weights and stopping.best_weights is not None
                and stopping.best_epoch != best_epoch):  # a new best since the last commit (epochs may be skipped)
            best, best_epoch = f"best-{number}.npz", stopping.best_epoch
            atomic_write_bytes(self.folder / best, _npz(stopping.best_weights))
        self._state = {"epoch": number, "weights": weights, "rng": rng, "best": best, "best_epoch": best_epoch,
                       "committed": utc_now()}
        write_json(self.folder / BACKUP_STATE_FILE, self._state)  # last: the epoch counts from now on
        self._remove_unnamed([weights, rng, best])

    def _remove_unnamed(self, named: Sequence[Optional[str]]) -> None:
        """Removes ktk's epoch files that the commit does not name (older epochs, an interrupted commit's)."""
        try:
            entries = list(os.scandir(self.folder))
        except FileNotFoundError:
            return
        for entry in entries:
            if entry.name not in named and (re.fullmatch(BACKUP_FILE_PATTERN, entry.name) or _is_temporary(entry.name)):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)

    def remove(self) -> None:
        """Removes the backup of a finished run: ktk's and Keras' files, then the folder if nothing else is there."""
        try:
            entries = list(os.scandir(self.folder))
        except FileNotFoundError:
            return
        for entry in entries:
            if (entry.name == BACKUP_STATE_FILE or entry.name in BACKUP_KERAS_FILES
                    or re.fullmatch(BACKUP_FILE_PATTERN, entry.name) or _is_temporary(entry.name)):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
        with contextlib.suppress(OSError):
            self.folder.rmdir()


def _backup_class() -> type:
    import keras

    class BudgetedBackup(keras.callbacks.BackupAndRestore):
        """Keras' ``BackupAndRestore``, saving after an epoch only when the training since the last save took at
        least 1/BACKUP_SHARE times as long as that save did (always after the first epoch)."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.saved = False  # whether the epoch that just ended was backed up
            self._every_epoch = os.environ.get(EVERY_EPOCH_ENV) == "1"
            self._since = time.monotonic()
            self._cost: Optional[float] = None

        def on_epoch_end(self, epoch: int, logs: Optional[Dict[str, Any]] = None) -> None:
            now = time.monotonic()
            due = self._every_epoch or self._cost is None or now - self._since >= self._cost / BACKUP_SHARE
            if not due:
                self.saved = False  # Keras' next save records its own epoch: nothing to keep up to date here
                return
            super().on_epoch_end(epoch, logs)
            self.saved = True
            self._since = time.monotonic()
            self._cost = self._since - now

    return BudgetedBackup


def _commit_class() -> type:
    import keras

    class CommitEpoch(keras.callbacks.Callback):
        """ktk's side of the backup: restores what Keras does not at the start, commits each backed-up epoch."""

        def __init__(self, checkpoint: Checkpoint, stopping: Any, backup: Any) -> None:
            super().__init__()
            self.checkpoint = checkpoint
            self.stopping = stopping
            self.backup = backup

        def on_train_begin(self, logs: Optional[Dict[str, Any]] = None) -> None:
            self.checkpoint.restore(self.model, self.stopping)

        def on_epoch_end(self, epoch: int, logs: Optional[Dict[str, Any]] = None) -> None:
            if self.backup.saved:
                self.checkpoint.commit(self.model, epoch, self.stopping)

    return CommitEpoch


def _rng_variables(model: Any) -> List[Any]:
    """The model's variables that are not weights: the states of its layers' random generators (dropout, noise),
    which Keras' weight files leave out."""
    weights = {id(w) for w in model.weights}
    return [v for v in model.variables if id(v) not in weights]


def _npz(arrays: Sequence[Any]) -> bytes:
    import numpy as np

    buffer = io.BytesIO()
    np.savez(buffer, *arrays)
    return buffer.getvalue()


def _is_temporary(name: str) -> bool:
    return re.fullmatch(r"\..+\.[A-Za-z0-9_]+\.tmp", name) is not None


def _atomic_copy(source: Path, target: Path) -> None:
    """Copies a file so that `target` is either absent/old or the whole copy (a temporary file renamed)."""
    from toolkit.results import new_file_mode

    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, new_file_mode())  # mkstemp makes it owner-only
        with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
            shutil.copyfileobj(src, out, 1 << 20)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
