"""Result files: the on-disk layout's names, atomic writes, and readers that never hang or crash.

Every result file is written to a temporary name and renamed into place, so an interrupted process
never leaves a half-written ``metrics.json`` behind; a path that is not a regular file (a link, a FIFO,
a device) is never replaced (:func:`atomic_write_bytes`). The readers read only regular files of bounded
size and raise OSError (cannot be read) or ValueError (damaged) for everything else, so a caller can
skip a damaged file with one warning.

What ktk writes for people (a table, plots, a report) never lands inside the results it reads
(:func:`check_outside`), and files ktk names itself in a folder (plots, a report) never replace a file ktk did
not write there (:class:`OutputFolder`).
"""

from __future__ import annotations

import csv
import errno
import io
import json
import math
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

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
LABELS_FILE = "labels.json"        # what model.keras takes and gives (toolkit.schema)
RUN_MARKER = ".ktk-run"            # made with O_EXCL when a run claims its directory (locked while it trains)
TENSORBOARD_DIR = "tensorboard"    # with tracking.tensorboard: event files (runs: train/, validation/; sweeps: the
                                   # HParams experiment and trial_<id>/ folders), toolkit.tracking.tensorboard
SPLITS_DIR = "splits"              # images: splits/train.txt, validation.txt, test.txt, the files of each split
BACKUP_DIR = "backup"              # an unfinished run's training state, for --resume (removed when the run finishes)
RUN_FILES = (CONFIG_FILE, METRICS_FILE, HISTORY_FILE, MODEL_FILE, LABELS_FILE, ENVIRONMENT_FILE, GRADIENTS_FILE,
             RUN_MARKER)
RUN_DIRS = (TENSORBOARD_DIR,)      # folders of a finished run directory (each holds only TensorBoard's files)
SPLIT_FILES = ("train.txt", "validation.txt", "test.txt")  # in SPLITS_DIR: one path a line, relative to data.path
# In BACKUP_DIR: Keras' BackupAndRestore files, and ktk's commit record pointing at the epoch's own files.
BACKUP_STATE_FILE = "state.json"   # the last finished epoch and the files that hold its state, written last
BACKUP_KERAS_FILES = ("latest.weights.h5", "training_metadata.json", "latest.weights.h5.bkp",
                      "training_metadata.json.bkp")
BACKUP_FILE_PATTERN = r"epoch-[0-9]{1,9}\.weights\.h5|rng-[0-9]{1,9}\.npz|best-[0-9]{1,9}\.npz"
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
# A folder of plots or a report: the files ktk wrote there, each with its size and hash (what may be replaced)
WRITTEN_LIST = ".ktk-written"
SPLITS = ("train", "validation", "test")

PathLike = Union[str, Path]


def finished_best_run(sweep_dir: PathLike) -> Optional[Path]:
    """The sweep's retrained best run directory (``best/``) when it finished (holds ``metrics.json``), else None.

    Never raises: a path too long, with a NUL byte or that cannot be searched is simply not a finished run.
    """
    best = Path(sweep_dir) / BEST_DIR
    try:
        return best if (best / METRICS_FILE).is_file() else None
    except (OSError, ValueError):
        return None


def atomic_write_text(path: PathLike, text: str, make_parents: bool = True) -> None:
    """Writes `text` to `path` (UTF-8) so that readers see either the old file or the whole new one.

    See :func:`atomic_write_bytes` for what happens when `path` is a link, a FIFO or a device.
    """
    atomic_write_bytes(path, text.encode("utf-8"), make_parents=make_parents)


def atomic_write_bytes(path: PathLike, data: bytes, make_parents: bool = True) -> None:
    """Writes `data` to `path` so that readers see either the old file or the whole new one.

    A regular file is replaced atomically (a temporary file renamed over it, keeping the old file's
    permissions). What is not a regular file is never replaced:

    - a symbolic link is followed: its target is written (atomically, as a regular file), the link stays;
    - a FIFO or a character device (``/dev/stdout``, ``/dev/null``) is written through, as a shell's ``>``
      would; a FIFO that no process reads is refused rather than waited for;
    - a directory, a block device or a socket is refused.

    Args:
        path: the file to write.
        data: its new content.
        make_parents: create missing parent folders (False: a missing folder is an error).

    Raises:
        OSError: the file cannot be written (its ``strerror`` says why in words).
    """
    path = Path(path)
    try:
        info: Optional[os.stat_result] = os.stat(path)  # follows links: what a write would reach
    except FileNotFoundError:
        info = None  # absent, or a link to something absent: created where the link points
    if info is not None and not stat.S_ISREG(info.st_mode):
        _write_through(path, data, info)
        return
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    if make_parents:
        target.parent.mkdir(parents=True, exist_ok=True)
    mode = stat.S_IMODE(info.st_mode) if info is not None else 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)  # mkstemp makes it owner-only; results are for anyone to read
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _write_through(path: Path, data: bytes, info: os.stat_result) -> None:
    """Writes into an existing FIFO or character device; refuses what cannot take a file's content."""
    kind = _kind(info.st_mode)
    if kind not in ("a FIFO", "a character device"):
        raise OSError(errno.EISDIR if kind == "a directory" else errno.EINVAL, f"{kind}, not a file", str(path))
    try:  # O_NONBLOCK: a FIFO with no reader fails at once (ENXIO) instead of blocking forever
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as error:
        if error.errno == errno.ENXIO:
            raise OSError(errno.ENXIO, "a FIFO that no process is reading", str(path)) from None
        raise
    try:
        os.set_blocking(fd, True)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def check_output_path(path: PathLike, where: Optional[str] = None) -> Path:
    """`path` if a file can be written there: not a folder, and in a folder that exists.

    Raises:
        UserError: naming `where` and the path.
    """
    path = Path(path)
    if path.is_dir():
        raise UserError("this is a folder, not a file", where=where, expected="a file to write", received=str(path))
    if not path.parent.is_dir():
        problem = "does not exist" if not path.parent.exists() else "is not a folder"
        raise UserError(f"cannot write the file: {path.parent} {problem}", where=where, received=str(path))
    return path


def save_output(path: PathLike, content: Union[str, bytes], where: Optional[str] = None) -> Path:
    """Writes a file the user named (``--output``, a report, a plot) with :func:`atomic_write_bytes`.

    Its folder must exist. Every failure is the user's to fix: one :class:`UserError` naming `where`
    and the path, never a traceback.
    """
    path = check_output_path(path, where)
    _write_user_file(path, content, where)
    return path


def _write_user_file(path: Path, content: Union[str, bytes], where: Optional[str]) -> None:
    """:func:`atomic_write_bytes` into an existing folder; a failure is one UserError naming `where` and the path."""
    data = content.encode("utf-8") if isinstance(content, str) else content
    try:
        atomic_write_bytes(path, data, make_parents=False)
    except OSError as error:
        raise UserError(f"cannot write the file ({error.strerror or error})", where=where,
                        received=str(path)) from None


def check_path_given(path: Any, where: Optional[str], what: str = "a file path", problem: Optional[str] = None) -> None:
    """Refuses an empty (or blank) path for a flag or argument: ``Path("")`` is the current folder, so an empty
    argument would mean "." or nothing at all, never what was meant. None (not given) passes.

    Raises:
        UserError: naming `where`, with `problem` before what was expected when given.
    """
    if path is not None and not str(path).strip():
        raise UserError(problem, where=where, expected=what, received=str(path))


def _real(path: PathLike) -> Optional[Path]:
    """`path` with every link resolved (None when it cannot be: a NUL byte, a loop of links...)."""
    try:
        return Path(os.path.realpath(path))
    except (OSError, ValueError):
        return None


def check_outside(path: PathLike, folders: Sequence[PathLike], where: Optional[str], own: Optional[PathLike] = None,
                  what: str = "a run or sweep directory this command reads") -> None:
    """Refuses to write `path` (a file or a folder of outputs) inside any of `folders`: the results a command reads.

    Links are followed, as a write would follow them. `own` is the one place inside them that the command
    owns (``report``'s ``SWEEP/report`` folder): `path` may be it, or lie below it.

    Raises:
        UserError: naming `where`, `path` and the folder it lies in.
    """
    target = _real(path)
    if target is None:
        return  # a path that cannot be resolved cannot be written either: the write says why
    owned = _real(own) if own is not None else None
    if owned is not None and (target == owned or owned in target.parents):
        return
    for folder in folders:
        real = _real(folder)
        if real is not None and (target == real or real in target.parents):
            raise UserError(f"this is inside {folder}, {what}; ktk never writes into the results it reads",
                            where=where, expected="a path outside the runs and sweeps given", received=str(path))


class OutputFolder:
    """A folder of files that ktk names itself (plots, a report), written without replacing anything else.

    A file there may be replaced only when ktk wrote it, and it is unchanged since: the folder's
    :data:`WRITTEN_LIST` lists the files ktk wrote with their size and SHA-256. Any other file of a name ktk
    is about to write (the user's own ``learning_curves.png``, a link, a FIFO, a folder) is refused, before
    anything is written (:meth:`check`); files of other names are left alone.

    Args:
        path: the folder (created by :meth:`create` when absent).
        where: the flag or argument that named it, for messages.
    """

    def __init__(self, path: PathLike, where: Optional[str] = None):
        self.path = Path(path)
        self.where = where
        self._written: Optional[Dict[str, Any]] = None

    def check(self, names: Sequence[str]) -> None:
        """Checks, only reading, that every file in `names` may be written: absent, or written by ktk and unchanged.

        Raises:
            UserError: the folder is a file or cannot be read, or a name is taken by something ktk did not write.
        """
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            return
        except (OSError, ValueError) as error:
            raise UserError(f"cannot use this path ({getattr(error, 'strerror', None) or error})", where=self.where,
                            received=str(self.path)) from None
        if not stat.S_ISDIR(info.st_mode):
            raise UserError("this is a file, not a folder", where=self.where, expected="a folder for the files",
                            received=str(self.path))
        written = self._read_written()
        for name in names:
            problem = self._problem(name, written)
            if problem:
                raise UserError(f"{problem}; ktk replaces only files it wrote there itself. Move it away, or give a "
                                f"new or empty folder", where=self.where, received=str(self.path / name))

    def _problem(self, name: str, written: Dict[str, Any]) -> Optional[str]:
        path = self.path / name
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return None
        except OSError as error:
            return f"{name} cannot be checked ({error.strerror or error})"
        if not stat.S_ISREG(info.st_mode):
            kind = "a link" if stat.S_ISLNK(info.st_mode) else _kind(info.st_mode)
            return f"{name} is already there, {kind} that ktk did not write"
        entry = written.get(name)
        if not isinstance(entry, dict):
            return f"{name} is already there, and ktk did not write it"
        if entry.get("bytes") != info.st_size or entry.get("sha256") != _sha256(path):
            return f"{name} is already there, changed since ktk wrote it"
        return None

    def _read_written(self) -> Dict[str, Any]:
        if self._written is None:
            self._written = {}
            path = self.path / WRITTEN_LIST
            try:
                if not stat.S_ISREG(os.lstat(path).st_mode):
                    raise UserError(f"{WRITTEN_LIST} (ktk's list of the files it wrote there) is not a file",
                                    where=self.where, received=str(path))
                data = read_json(path)
            except (OSError, ValueError):
                data = None  # absent or damaged: ktk vouches for no file here
            files = data.get("files") if isinstance(data, dict) else None
            self._written = dict(files) if isinstance(files, dict) else {}
        return self._written

    def create(self) -> Path:
        """Creates the folder if needed; returns its path."""
        return make_dir(self.path, where=self.where)

    def write(self, name: str, content: Union[str, bytes]) -> Path:
        """Writes one file (checked before with :meth:`check`) and adds it to the folder's list."""
        _write_user_file(self.path / name, content, self.where)
        return self.record(name)

    def record(self, name: str) -> Path:
        """Adds a file just written into the folder (by :meth:`write`, or by a library) to the folder's list."""
        path = self.path / name
        self._written = None  # read again: another writer of this folder may have added files since
        written = self._read_written()
        try:
            written[name] = {"bytes": os.lstat(path).st_size, "sha256": _sha256(path)}
            write_json(self.path / WRITTEN_LIST, {"made_by": "ktk", "files": written})
        except OSError as error:
            raise UserError(f"cannot write the file ({error.strerror or error})", where=self.where,
                            received=str(self.path / WRITTEN_LIST)) from None
        return path


def _sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_new_dir(path: PathLike, what: str = "directory") -> Path:
    """`path` if it is absent or an empty directory: results go only where nothing would be overwritten."""
    path = Path(path)
    expected = "a new or empty directory"
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return path
    except (OSError, ValueError) as error:  # a name too long, a NUL byte, a loop of links, no permission...
        raise UserError(f"cannot use this path ({getattr(error, 'strerror', None) or error})", where="--out",
                        expected=expected, received=str(path)) from None
    if not stat.S_ISDIR(info.st_mode):
        raise UserError("this is a file, not a directory", where="--out", expected=expected, received=str(path))
    try:
        with os.scandir(path) as entries:
            empty = next(entries, None) is None
    except OSError as error:
        raise UserError(f"cannot read the directory ({error.strerror or error})", where="--out", expected=expected,
                        received=str(path)) from None
    if not empty:
        raise UserError(f"the {what} already exists and is not empty; results are never overwritten",
                        where="--out", expected=expected, received=str(path))
    return path


def make_dir(path: PathLike, where: Optional[str] = "--out") -> Path:
    """Creates a result directory (and its parents); an impossible place is the user's mistake in `where`."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (OSError, ValueError) as error:  # ValueError: a NUL byte in the path
        raise UserError(f"cannot create the directory ({getattr(error, 'strerror', None) or error})", where=where,
                        received=str(path)) from None
    if not os.access(path, os.W_OK):
        raise UserError("the directory is not writable", where=where, received=str(path))
    return path


def _swap_umask() -> int:
    mask = os.umask(0o022)  # reading it this way means setting it: done once, at import
    os.umask(mask)
    return mask


_IMPORT_UMASK = _swap_umask()


def new_file_mode() -> int:
    """The permissions a new result file gets: 0o666 less the process umask (mkstemp makes owner-only files)."""
    return 0o666 & ~_umask()


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


def utc_now() -> str:
    """The time now, UTC, to the second, in ISO format: every time stamp ktk writes (environment, records, locks)."""
    import datetime

    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


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


# The most a result file may hold before it is taken for damaged: far beyond what ktk writes (a metrics.json
# is a few hundred bytes, a history of 10,000 epochs about a megabyte), and small enough to read at once.
MAX_JSON_BYTES = 16 * 2**20
MAX_CSV_BYTES = 64 * 2**20
MAX_COLUMNS = 10_000  # of a CSV result file: a history or trials.csv has tens


def check_small_file(path: PathLike, limit: int) -> None:
    """Checks that `path` is a regular file of at most `limit` bytes before a reader opens it.

    Raises:
        OSError: the file is missing, cannot be reached, is not a regular file (a folder, a FIFO, a
            device), or is larger than `limit`; its ``strerror`` says which in words.
    """
    _check_regular(os.stat(path), limit, path)


def read_small_file(path: PathLike, limit: int) -> bytes:
    """The bytes of a regular file of at most `limit` bytes.

    A FIFO or a device is never opened in a way that could block, nor read from.

    Raises:
        OSError: as :func:`check_small_file`, or the file cannot be read.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    try:
        _check_regular(os.fstat(fd), limit, path)
    except OSError:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:  # it grew after the check
        raise OSError(errno.EFBIG, f"larger than {limit // 2**20} MiB: not a file ktk wrote", str(path))
    return data


def _check_regular(info: os.stat_result, limit: int, path: PathLike) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise OSError(errno.EINVAL, f"{_kind(info.st_mode)}, not a file", str(path))
    if info.st_size > limit:
        raise OSError(errno.EFBIG, f"larger than {limit // 2**20} MiB: not a file ktk wrote", str(path))


def parse_json(text: Union[str, bytes]) -> Any:
    """JSON text as Python data. NaN and infinities (not JSON, though Python writes them) are read as None,
    as :func:`write_json` writes them.

    Raises:
        ValueError: invalid JSON, bytes that are not UTF-8, or nesting too deep to read.
    """
    try:
        return json.loads(text, parse_constant=lambda name: None, parse_float=_finite_float)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _finite_float(text: str) -> Optional[float]:
    value = float(text)
    return value if math.isfinite(value) else None  # 1e999 overflows to infinity


def read_json(path: PathLike) -> Any:
    """A result JSON file (metrics.json, records/<id>.json, sweep.json...) as Python data.

    Raises:
        OSError: the file is missing, cannot be read, is not a regular file or is too large.
        ValueError: it is not valid JSON (see :func:`parse_json`).
    """
    return parse_json(read_small_file(path, MAX_JSON_BYTES).decode("utf-8"))  # ktk writes UTF-8, nothing else


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
    """A per-epoch history (history.csv, histories/<id>.csv) as {column: one float per epoch}.

    Empty cells and ``nan`` are NaN. A file with no rows gives ``{}``.

    Raises:
        OSError: the file is missing, cannot be read, is not a regular file or is too large.
        ValueError: it is damaged: not UTF-8 text, a header with empty or repeated names, a row with
            more or fewer fields than the header, or a cell that is not a number.
    """
    header, body = read_csv_rows(path)
    if any(not name for name in header) or len(set(header)) != len(header):
        raise ValueError(f"the header {','.join(header)!r} has an empty or repeated column name")
    columns: Dict[str, List[float]] = {name: [] for name in header}
    for number, cells in body:
        if len(cells) != len(header):
            raise ValueError(f"line {number} has {len(cells)} fields, expected {len(header)}")
        for name, text in zip(header, cells):
            try:
                columns[name].append(float(text) if text.strip() else math.nan)
            except ValueError:
                raise ValueError(f"line {number}, column {name}: {text[:40]!r} is not a number") from None
    return columns if body else {}


def read_csv_rows(path: PathLike, limit: int = MAX_CSV_BYTES) -> Tuple[List[str], List[Tuple[int, List[str]]]]:
    """A CSV result file as its header (empty for an empty file) and (line number, cells) of each non-empty row.

    Raises:
        OSError: the file is missing, cannot be read, is not a regular file or is too large.
        ValueError: not UTF-8, or not CSV.
    """
    return parse_csv_text(read_small_file(path, limit).decode("utf-8"))


def parse_csv_text(text: str) -> Tuple[List[str], List[Tuple[int, List[str]]]]:
    """CSV text as its header and (line number, cells) of each non-empty row (see :func:`read_csv_rows`).

    Raises:
        ValueError: not CSV, or more columns than a result file has.
    """
    try:
        reader = csv.reader(io.StringIO(text, newline=""))
        header = next(reader, [])
        if len(header) > MAX_COLUMNS:
            raise ValueError(f"more than {MAX_COLUMNS} columns: not a file ktk wrote")
        rows = [(reader.line_num, cells) for cells in reader if cells]
    except csv.Error as error:
        raise ValueError(f"not CSV ({error})") from None
    return header, rows


MAX_CELL_JSON = 10_000  # characters: a searched list or mapping is short; longer text stays text


def parse_cell(text: str, structured: bool = False, words: bool = False) -> Any:
    """A CSV cell or a filter value as the type it spells: int, float, bool, None (empty) or str.

    Never YAML, so no cell can expand into more than its own text.

    Args:
        text: the cell.
        structured: read ``[128, 64]`` or ``{"name": "adam"}`` (how trials.csv writes list and mapping
            values: JSON) back as a list or dict; text that is not such JSON stays text.
        words: read ``none``/``null`` as None too (filters); trials.csv writes None as an empty cell, so
            there a searched choice ``"none"`` stays the text it was.
    """
    if text == "":
        return None
    if structured and text[:1] in "[{" and len(text) <= MAX_CELL_JSON:
        try:
            return parse_json(text)
        except ValueError:
            return text
    if re.fullmatch(r"[-+]?\d{1,4300}", text):  # Python refuses to convert longer digit strings
        return int(text)
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if words and lowered in ("none", "null"):
        return None
    try:
        return float(text)
    except ValueError:
        return text


def history_logger(path: PathLike, earlier: Optional[Dict[str, List[float]]] = None) -> Any:
    """A Keras callback rewriting history.csv after every epoch (so an interrupted run keeps its curves).

    Args:
        earlier: the epochs already run (a resumed run: history.csv as read by :func:`read_history_csv`); the
            file goes on after them.
    """
    import keras

    earlier = {k: list(v) for k, v in (earlier or {}).items() if k != "epoch"}
    rows = max((len(v) for v in earlier.values()), default=0)
    earlier_rates = earlier.pop("learning_rate", None) or [math.nan] * rows

    class HistoryLogger(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.history: Dict[str, List[float]] = earlier
            self.learning_rates: List[float] = earlier_rates

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
