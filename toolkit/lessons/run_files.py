"""One run directory's result files, read strictly and within bounds, for ``ktk diagnose`` and the lessons.

``ktk compare`` reads many runs and skips a damaged one; a diagnosis is about one run, so a damaged or
unexpected file is a :class:`UserError` naming the file (exit status 2), never a traceback and never a
guess. Every file is opened without blocking and read only when it is a regular file under a size
limit (a FIFO or ``/dev/zero`` in its place is refused at once). ``model.keras`` is never opened: what
the lessons need from a run is in ``metrics.json``, ``config.yaml``, ``history.csv`` and
``gradients.csv``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import stat
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from toolkit import errors
from toolkit.errors import UserError
from toolkit.results import (BEST_DIR, CONFIG_FILE, GRADIENTS_FILE, HISTORY_FILE, METRICS_FILE, SPLITS, SWEEP_FILE,
                             SWEEP_MARKER, TRIALS_FILE, YAML_LOADER, check_path_given, finished_best_run)

PathLike = Union[str, Path]

# ktk writes metrics.json and config.yaml of a few kB, and a history.csv or gradients.csv of a few MB for
# thousands of epochs: the limits leave room for that and keep a damaged or hostile file from filling memory.
MAX_JSON_BYTES = 16 * 2**20
MAX_YAML_BYTES = 4 * 2**20
MAX_CSV_BYTES = 64 * 2**20
TASKS = ("binary", "multiclass", "regression")
GRADIENT_COLUMNS = ("epoch", "layer", "grad_norm", "weight_norm")  # gradients.csv, written by the monitor
RUN_DIR_EXPECTED = "a run directory written by ktk run"


def first_line(error: BaseException) -> str:
    """:func:`toolkit.errors.first_line`, but an OS error's own words (its path is named by the message)."""
    strerror = getattr(error, "strerror", None)
    return strerror if strerror else errors.first_line(error)


def check_run_dir(run_dir: PathLike) -> Path:
    """`run_dir` as a Path when it is a finished run directory (it holds ``metrics.json``).

    Raises:
        UserError: the path is empty, missing, not a directory, a sweep directory (pointing at its ``best/``), or a
            directory without ``metrics.json``.
    """
    check_path_given(run_dir, None, RUN_DIR_EXPECTED, problem="an empty path")
    path = Path(run_dir)
    try:
        if not path.is_dir():
            raise UserError("run directory not found" if not path.exists() else "not a directory",
                            expected=RUN_DIR_EXPECTED, received=str(path))
        finished = (path / METRICS_FILE).exists()
        sweep = any((path / name).exists() for name in (TRIALS_FILE, SWEEP_MARKER, SWEEP_FILE))
        best_finished = finished_best_run(path) is not None
    except (OSError, ValueError) as error:  # a name too long, a NUL byte, a folder that cannot be searched
        raise UserError(f"cannot read the run directory ({first_line(error)})", expected=RUN_DIR_EXPECTED,
                        received=str(path)) from None
    if not finished and sweep:
        if best_finished:
            raise UserError("this is a sweep directory: diagnose its retrained best run, "
                            f"ktk diagnose {path / BEST_DIR}", expected=RUN_DIR_EXPECTED, received=str(path))
        raise UserError(f"this is a sweep directory without a retrained best run ({BEST_DIR}/ has no "
                        f"{METRICS_FILE}: the sweep has not finished); run its ktk tune command again to finish "
                        f"it, then diagnose {path / BEST_DIR}", expected=RUN_DIR_EXPECTED, received=str(path))
    if not finished:
        raise UserError(f"no {METRICS_FILE} in the run directory (an unfinished or failed run?)",
                        expected=RUN_DIR_EXPECTED, received=str(path))
    return path


def read_bounded(path: PathLike, limit: int) -> bytes:
    """The bytes of a regular file of at most `limit` bytes.

    Opened without blocking, so a FIFO in the file's place is refused instead of waiting for a writer.

    Raises:
        UserError: the file cannot be opened, is not a regular file, or is larger than `limit`.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except (OSError, ValueError) as error:
        raise UserError(f"unreadable file ({first_line(error)})", file=str(path)) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UserError("not a regular file (a device, FIFO or folder in its place?)", file=str(path))
        if info.st_size > limit:
            raise UserError(f"the file is {info.st_size:,} bytes; ktk reads result files of at most {limit:,}",
                            file=str(path))
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read(limit + 1)  # a file still growing is cut off here, not read without end
    except OSError as error:
        raise UserError(f"unreadable file ({first_line(error)})", file=str(path)) from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise UserError(f"the file is over {limit:,} bytes; ktk reads result files of at most {limit:,}",
                        file=str(path))
    return data


def _text(path: PathLike, limit: int) -> str:
    try:
        return read_bounded(path, limit).decode("utf-8")
    except UnicodeDecodeError as error:
        raise UserError(f"not UTF-8 text (byte {error.start})", file=str(path)) from None


def _kind(value: Any) -> Any:
    """`value` for a message: scalars as they are, containers by their type (never walked: they may be huge)."""
    return value if value is None or isinstance(value, (str, int, float, bool)) else type(value).__name__


class _NotJson(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    raise _NotJson(f"{name} is not JSON (ktk writes null for a value that is not finite)")


def read_json_object(path: PathLike, limit: int = MAX_JSON_BYTES) -> Dict[str, Any]:
    """A JSON file holding one object, parsed strictly: ``NaN``/``Infinity`` and over-deep nesting refused."""
    text = _text(path, limit)
    try:
        data = json.loads(text, parse_constant=_refuse_constant)
    except _NotJson as error:
        raise UserError(f"unreadable JSON ({error})", file=str(path)) from None
    except json.JSONDecodeError as error:
        raise UserError(f"unreadable JSON ({error.msg} at line {error.lineno})", file=str(path)) from None
    except (ValueError, RecursionError) as error:  # an integer of over 4,300 digits; nesting too deep
        reason = "nested too deeply" if isinstance(error, RecursionError) else first_line(error)
        raise UserError(f"unreadable JSON ({reason})", file=str(path)) from None
    if not isinstance(data, dict):
        raise UserError(expected="a JSON object", received=type(data).__name__, file=str(path))
    return data


def _finite_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:  # an integer too large for a float
        return False


def read_metrics(run_dir: PathLike) -> Dict[str, Any]:
    """A run's ``metrics.json``, with the fields the lessons use checked.

    ``train`` (required), ``validation`` and ``test`` map metric names to finite numbers or null (ktk
    writes a value that is not finite as null); ``task`` is binary, multiclass or regression;
    ``num_classes`` and ``epochs_run`` are whole numbers. Other fields are not looked at.

    Raises:
        UserError: the file is unreadable or damaged, naming the file and the key.
    """
    path = Path(run_dir) / METRICS_FILE
    metrics = read_json_object(path)
    train = metrics.get("train")
    if not isinstance(train, dict) or not train:
        raise UserError("no training results", expected='a "train" section mapping metric '
                        "names to numbers", received=_kind(train), file=str(path))
    for split in SPLITS:
        values = metrics.get(split)
        if values is None:
            continue
        if not isinstance(values, dict):
            raise UserError(where=split, expected="a mapping of metric names to numbers", received=_kind(values),
                            file=str(path))
        for name, value in values.items():
            if value is not None and not _finite_number(value):
                raise UserError(where=f"{split}.{name}", expected="a finite number or null",
                                received=_kind(value), file=str(path))
    task = metrics.get("task")
    if task is not None and task not in TASKS:
        raise UserError(where="task", expected="the run's task", received=_kind(task), choices=TASKS,
                        file=str(path))
    for key, smallest in (("num_classes", 1), ("epochs_run", 0)):
        value = metrics.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < smallest):
            raise UserError(where=key, expected=f"a whole number of at least {smallest}, or null",
                            received=_kind(value), file=str(path))
    return metrics


def read_config(run_dir: PathLike) -> Optional[Dict[str, Any]]:
    """A run's resolved ``config.yaml`` as plain data (safe, unvalidated), or None when the run has none."""
    import yaml

    path = Path(run_dir) / CONFIG_FILE
    if not os.path.lexists(path):
        return None
    text = _text(path, MAX_YAML_BYTES)
    try:
        raw = yaml.load(text, Loader=YAML_LOADER)
    except yaml.YAMLError as error:
        raise UserError(f"unreadable YAML ({first_line(error)})", file=str(path)) from None
    except RecursionError:
        raise UserError("unreadable YAML (nested too deeply)", file=str(path)) from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UserError(expected="a mapping of config sections", received=_kind(raw), file=str(path))
    return raw


def read_csv_rows(path: PathLike, text_columns: Sequence[str] = (), required: Sequence[str] = (),
                  limit: int = MAX_CSV_BYTES) -> List[Dict[str, Any]]:
    """The rows of a result CSV file as dicts: numbers as floats (an empty cell is NaN), `text_columns` as text.

    Strict, because one run's files are diagnosed: every line must have the header's fields, a text cell
    must not be empty, every other cell must be a number, and ``epoch`` (when present) a whole number of at
    least 0. The header must hold the `required` columns.

    Raises:
        UserError: naming the file, the line and the column.
    """
    text = _text(path, limit)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
        if not header:
            raise UserError("no header line", expected="a CSV file written by ktk", file=str(path))
        twice = sorted({name for name in header if header.count(name) > 1})
        if twice:
            raise UserError("a column is named twice in the header", received=", ".join(twice), file=str(path))
        missing = [name for name in required if name not in header]
        if missing:
            raise UserError("the header lacks columns", expected=", ".join(required), received=", ".join(header),
                            file=str(path))
        rows = []
        for fields in reader:
            if not fields:
                continue  # a blank line
            line = f"line {reader.line_num}"
            if len(fields) != len(header):
                raise UserError(where=line, expected=f"{len(header)} fields, as in the header",
                                received=len(fields), file=str(path))
            rows.append({name: _cell_text(cell, name, line, path) if name in text_columns
                         else _cell_number(cell, name, line, path) for name, cell in zip(header, fields)})
    except csv.Error as error:
        raise UserError(f"unreadable CSV ({first_line(error)})", where=f"line {reader.line_num}",
                        file=str(path)) from None
    return rows


def _cell_text(cell: str, column: str, line: str, path: PathLike) -> str:
    if not cell:
        raise UserError(where=f"{line}, column {column}", expected="text", received=cell, file=str(path))
    return cell


def _cell_number(cell: str, column: str, line: str, path: PathLike) -> float:
    try:
        value = float(cell) if cell.strip() else math.nan
    except ValueError:
        raise UserError(where=f"{line}, column {column}", expected="a number", received=cell[:100],
                        file=str(path)) from None
    if column == "epoch" and not (math.isfinite(value) and value >= 0 and value == int(value)):
        raise UserError(where=f"{line}, column {column}", expected="a whole number of at least 0",
                        received=cell[:100], file=str(path))
    return value


def read_history_rows(run_dir: PathLike) -> Optional[List[Dict[str, float]]]:
    """A run's ``history.csv`` as rows of numbers (see :func:`read_csv_rows`), or None when it has none."""
    path = Path(run_dir) / HISTORY_FILE
    return read_csv_rows(path, required=("epoch",)) if os.path.lexists(path) else None


def read_gradient_rows(run_dir: PathLike) -> Optional[List[Dict[str, Any]]]:
    """A run's ``gradients.csv`` (epoch, layer, grad_norm, weight_norm), or None when it recorded none."""
    path = Path(run_dir) / GRADIENTS_FILE
    return read_csv_rows(path, text_columns=("layer",), required=GRADIENT_COLUMNS) if os.path.lexists(path) else None


def columns(rows: Sequence[Dict[str, Any]]) -> Dict[str, List[Any]]:
    """Rows as columns (``history.csv``'s shape in :func:`toolkit.results.read_history_csv`)."""
    return {name: [row[name] for row in rows] for name in (rows[0] if rows else {})}

