"""Result files: atomic writes, the per-epoch history log, and the run directory's names.

Every result file is written to a temporary name and renamed into place, so an interrupted process
never leaves a half-written ``metrics.json`` behind.
"""

from __future__ import annotations

import csv
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from toolkit.errors import UserError
from toolkit.safe_yaml import ResultLoader, load, read_bytes

# The loader for YAML in result files (a run's config.yaml, list and mapping cells of trials.csv): libyaml's
# C parser, safe, and bounded in size, depth and alias expansion (toolkit.safe_yaml).
YAML_LOADER: Any = ResultLoader

# The on-disk layout (docs/ARCHITECTURE.md, "Contracts"): every file and folder name ktk writes, defined here only.
# A run directory:
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.csv"
MODEL_FILE = "model.keras"
ENVIRONMENT_FILE = "environment.json"
GRADIENTS_FILE = "gradients.csv"
RUN_MARKER = ".ktk-run"            # made with O_EXCL when a run claims its directory
# A sweep directory (its config.yaml is CONFIG_FILE too):
TRIALS_FILE = "trials.csv"
RECORDS_DIR = "records"            # records/<trial_id>.json, one per finished trial
HISTORIES_DIR = "histories"        # histories/<trial_id>.csv
BEST_DIR = "best"                  # a run directory: the best configuration retrained
TOP_DIR = "top"                    # top/trial_<id>/: run directories of the next best
SWEEP_FILE = "sweep.json"
TUNER_DIR = "tuner"                # keras-tuner's project
LOGS_DIR = "logs"                  # distributed sweeps: chief.json and one log per local worker
SWEEP_MARKER = ".ktk-sweep"        # written first into every sweep directory: what --overwrite may delete
SPLITS = ("train", "validation", "test")

PathLike = Union[str, Path]


def atomic_write_text(path: PathLike, text: str) -> None:
    """Writes `text` to `path` so that readers see either the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes it owner-only; results are for anyone to read
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def check_new_dir(path: PathLike, what: str = "directory") -> Path:
    """`path` if it is absent or an empty directory: results go only where nothing would be overwritten."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError("this is a file, not a directory", where="--out", expected="a new or empty directory",
                        received=str(path))
    if path.is_dir() and any(path.iterdir()):
        raise UserError(f"the {what} already exists and is not empty; results are never overwritten",
                        where="--out", expected="a new or empty directory", received=str(path))
    return path


def make_dir(path: PathLike, where: str = "--out") -> Path:
    """Creates a result directory (and its parents); an impossible place is the user's mistake in `where`."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create the directory ({error.strerror or error})", where=where,
                        received=str(path)) from None
    if not os.access(path, os.W_OK):
        raise UserError("the directory is not writable", where=where, received=str(path))
    return path


def _swap_umask() -> int:
    mask = os.umask(0o022)  # reading it this way means setting it: done once, at import
    os.umask(mask)
    return mask


_IMPORT_UMASK = _swap_umask()


def _umask() -> int:
    """The current umask without setting it (other threads would see a swap): Linux reports it in
    /proc/self/status; elsewhere the umask at import."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return _IMPORT_UMASK


def write_json(path: PathLike, data: Any) -> None:
    atomic_write_text(path, json.dumps(_finite(data), indent=2, sort_keys=False) + "\n")


def read_yaml(path: PathLike) -> Any:
    """A result directory's YAML file (a run's resolved config.yaml) as plain data: safe, unvalidated, fast.

    Raises:
        OSError: the file is missing, unreadable, not a regular file (a FIFO is refused, never waited on)
            or larger than 1 MiB.
        yaml.YAMLError: malformed YAML, or YAML that :mod:`toolkit.safe_yaml` refuses (too deep, too large
            once its aliases are expanded).
    """
    return load(read_bytes(path), YAML_LOADER)


def read_json(path: PathLike) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _finite(value: Any) -> Any:
    """JSON has no NaN/Infinity: such values are written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return _finite(value.item())
    return value


def write_history_csv(path: PathLike, history: Dict[str, List[float]],
                      learning_rates: Optional[List[float]] = None) -> None:
    """Writes a per-epoch history (epoch 1-based; train metrics, then val_ metrics, then learning_rate)."""
    keys = [k for k in history if not k.startswith("val_")] + [k for k in history if k.startswith("val_")]
    keys = [k for k in keys if k != "learning_rate"]
    epochs = max((len(v) for v in history.values()), default=0)
    rows = []
    for i in range(epochs):
        row = {"epoch": i + 1}
        row.update({k: history[k][i] if i < len(history[k]) else "" for k in keys})
        if learning_rates is not None and i < len(learning_rates):
            row["learning_rate"] = learning_rates[i]
        rows.append(row)
    columns = ["epoch", *keys] + (["learning_rate"] if learning_rates is not None else [])
    lines = [",".join(columns)]
    for row in rows:
        lines.append(",".join(_cell(row.get(c, "")) for c in columns))
    atomic_write_text(path, "\n".join(lines) + "\n")


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else "nan"
    return str(value)


def read_history_csv(path: PathLike) -> Dict[str, List[float]]:
    with open(path, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return {}
    return {key: [float(r[key]) if r[key] not in ("", None) else math.nan for r in rows] for key in rows[0]}


def history_logger(path: PathLike) -> Any:
    """A Keras callback rewriting history.csv after every epoch (so an interrupted run keeps its curves)."""
    import keras

    class HistoryLogger(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.history: Dict[str, List[float]] = {}
            self.learning_rates: List[float] = []

        def on_epoch_end(self, epoch: int, logs: Optional[Dict[str, Any]] = None) -> None:
            for key, value in (logs or {}).items():
                if key == "learning_rate":
                    continue
                self.history.setdefault(key, []).append(float(value))
            self.learning_rates.append(current_learning_rate(self.model))
            write_history_csv(path, self.history, self.learning_rates)

    return HistoryLogger()


def current_learning_rate(model: Any) -> float:
    """The optimizer's learning rate now (a schedule evaluated at the current step)."""
    optimizer = model.optimizer
    try:
        return float(optimizer.learning_rate.numpy() if hasattr(optimizer.learning_rate, "numpy")
                     else optimizer.learning_rate)
    except (TypeError, ValueError):  # pragma: no cover - exotic optimizers
        return math.nan
