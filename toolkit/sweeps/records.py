"""A sweep's trial records and its table: ``records/<trial_id>.json`` and ``trials.csv``, read and written here only.

Whichever process runs a trial writes its record, atomically, one file per trial; ``trials.csv`` is always
rebuilt from the records (never appended to), so it is the same whoever writes it and whenever. A damaged
record (not JSON, wrong types, absurdly large or deep) never stops a sweep or a reader: it is left out, with
one warning.

Trial ids are keras-tuner's strings ("0".."9", then "08", "09"... once a sweep grows past ten trials); they are
kept as they are and ordered by number wherever trials are listed (:func:`trial_sort_key`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from toolkit.errors import shorten, show
from toolkit.results import (HISTORIES_DIR, RECORDS_DIR, SPLITS, TRIALS_FILE, atomic_write_text, parse_cell,
                             MAX_CSV_BYTES, parse_csv_text, read_small_file, write_json)

if TYPE_CHECKING:
    from toolkit.search import SearchSpec

COMPLETED = "completed"
FAILED = "failed"
STATUSES = (COMPLETED, FAILED)
MAX_RECORD_BYTES = 4_000_000  # a record is a few kB (with a failed trial's traceback); more is not one
MAX_VALUE_DEPTH = 32  # a searched value is a scalar, a list of widths or a small mapping
METRIC_SPLITS = SPLITS[:2]  # a trial's metrics: train and validation (trials never see the test split)
RECORD_SUFFIX = ".json"
# The columns after the searched parameters and metrics, in order (docs/ARCHITECTURE.md, trials.csv).
TAIL_COLUMNS = ("epochs", "best_epoch", "params", "started", "duration_s", "message")
WORKER_COLUMN = "worker"
# Every column that is neither a searched parameter nor a train./validation. metric.
TRIAL_COLUMNS = ("trial_id", "status", "score", *TAIL_COLUMNS, WORKER_COLUMN)
TRIAL_TEXT_COLUMNS = ("trial_id", "status", "message", "worker", "started")  # kept as written ("03" stays "03")

PathLike = Union[str, Path]
Warn = Callable[[str], None]


def trial_sort_key(trial_id: Any) -> Tuple[int, int, str]:
    """Orders trial ids by number ("2" before "08" before "10"); ids that are not numbers go last, by text."""
    text = str(trial_id)
    return (0, int(text), text) if text.isdigit() else (1, 0, text)


# ------------------------------------------------------------------------------------------- records


class Records:
    """``records/<trial_id>.json`` of one sweep: written by whichever process ran the trial, read by all.

    Args:
        folder: the sweep's records folder.
        warn: called once with a line of text for each damaged record found (which is left out).
    """

    def __init__(self, folder: Path, warn: Optional[Warn] = None):
        self.folder = Path(folder)
        self.warn = warn or (lambda text: None)
        self._cache: Dict[str, Dict[str, Any]] = {}
        self._seen: Dict[str, Tuple[int, int]] = {}

    def write(self, record: Dict[str, Any]) -> None:
        """Writes one trial's record atomically (readers see the old file or the whole new one)."""
        path = self.folder / f"{record['trial_id']}{RECORD_SUFFIX}"
        write_json(path, record)
        self._cache[str(record["trial_id"])] = json.loads(json.dumps(record, default=str))
        self._seen[path.name] = _stamp(path)

    def load(self) -> Dict[str, Dict[str, Any]]:
        """Every record by trial id (re-reading only files that changed); damaged ones left out."""
        try:
            paths = sorted(self.folder.glob(f"*{RECORD_SUFFIX}"), key=lambda p: trial_sort_key(p.stem)) \
                if self.folder.is_dir() else []
        except OSError:
            paths = []
        for path in paths:
            stamp = _stamp(path)
            if stamp is None or self._seen.get(path.name) == stamp:
                continue  # gone meanwhile, or unchanged
            self._seen[path.name] = stamp
            try:
                record = check_record(_read_record(path), path.stem)
            except ValueError as error:
                self._cache.pop(path.stem, None)
                self.warn(f"{path} is damaged ({error}); it is left out of {TRIALS_FILE}")
                continue
            self._cache[record["trial_id"]] = record
        return self._cache

    def get(self, trial_id: Any) -> Dict[str, Any]:
        return self.load()[str(trial_id)]

    def ordered(self) -> List[Dict[str, Any]]:
        """The records in trial-id order."""
        return sorted(self.load().values(), key=lambda r: trial_sort_key(r["trial_id"]))


def _stamp(path: Path) -> Optional[Tuple[int, int]]:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


def _read_record(path: Path) -> Any:
    try:
        if path.stat().st_size > MAX_RECORD_BYTES:
            raise ValueError(f"larger than {MAX_RECORD_BYTES // 1_000_000} MB")
        with open(path, "rb") as handle:
            text = handle.read(MAX_RECORD_BYTES + 1).decode("utf-8")
        return json.loads(text)
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"not JSON: {error.msg} at line {error.lineno}") from None
    except OSError as error:
        raise ValueError(f"unreadable: {error.strerror or error}") from None


def check_record(data: Any, trial_id: str) -> Dict[str, Any]:
    """`data` if it is a well-formed record of trial `trial_id`.

    Raises:
        ValueError: saying what is wrong with it.
    """
    if not isinstance(data, dict):
        raise ValueError(f"a JSON {_json_kind(data)}, not a trial record")
    if str(data.get("trial_id")) != trial_id or not isinstance(data.get("trial_id"), (str, int)):
        raise ValueError(f"its trial_id is {_short(data.get('trial_id'))}, not {trial_id!r}")
    if data.get("status") not in STATUSES:
        raise ValueError(f"its status is {_short(data.get('status'))}, not one of {', '.join(STATUSES)}")
    values = data.get("values", {})
    if not isinstance(values, dict) or not all(isinstance(k, str) for k in values):
        raise ValueError("its values are not a mapping of parameter paths")
    if _depth(values) > MAX_VALUE_DEPTH:
        raise ValueError("its values are nested too deeply")
    for split in METRIC_SPLITS:
        metrics = data.get(split) or {}
        if not isinstance(metrics, dict) or not all(_is_number_or_none(v) for v in metrics.values()):
            raise ValueError(f"its {split} metrics are not numbers by name")
    score = data.get("score")
    if not _is_number_or_none(score) or (data["status"] == COMPLETED and score is None):
        raise ValueError(f"its score is {_short(score)}, not a number")
    for key in ("epochs", "best_epoch", "params"):
        if data.get(key) is not None and not _is_int(data[key]):
            raise ValueError(f"its {key} is {_short(data[key])}, not a whole number")
    if not _is_number_or_none(data.get("duration_s")):
        raise ValueError(f"its duration_s is {_short(data.get('duration_s'))}, not a number")
    for key in ("started", "message", WORKER_COLUMN):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise ValueError(f"its {key} is {_short(data[key])}, not text")
    return dict(data, trial_id=trial_id)


def failure_record(trial_id: str, values: Dict[str, Any], message: str, worker: Optional[str] = None,
                   started: Optional[str] = None, duration_s: Optional[float] = None) -> Dict[str, Any]:
    """The record of a trial that failed before it could record itself (e.g. its process kept dying)."""
    record = {"trial_id": trial_id, "values": values, "status": FAILED, "message": message,
              "started": started, "duration_s": duration_s}
    if worker:
        record[WORKER_COLUMN] = worker
    return record


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    return {list: "list", str: "string", int: "number", float: "number"}.get(type(value), type(value).__name__)


def _is_number_or_none(value: Any) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _depth(value: Any) -> int:
    """How deeply lists and mappings nest in `value` (without recursion: a record may be hostile)."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > MAX_VALUE_DEPTH:
            break
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return deepest


def _short(value: Any) -> str:
    if isinstance(value, (int, str)) and not isinstance(value, bool):
        return show(value, 40)  # (safe for an integer too long to print, and cut between characters)
    return shorten(repr(value), 40)


def read_trials(sweep_dir: PathLike, warn: Optional[Warn] = None) -> List[Dict[str, Any]]:
    """The trial records of a sweep directory, in trial-id order; damaged ones left out (each passed to `warn`)."""
    return Records(Path(sweep_dir) / RECORDS_DIR, warn=warn).ordered()


# ----------------------------------------------------------------------------------------- trials.csv


def param_columns(spec: "SearchSpec") -> List[str]:
    """The searched parameters' columns of trials.csv (hyperband adds its epoch budget, training.epochs)."""
    paths = list(spec.paths)
    if spec.tuner == "hyperband":
        paths.append("training.epochs")
    return paths


def trial_rows(records: Sequence[Dict[str, Any]], spec: "SearchSpec") -> List[Dict[str, Any]]:
    """Rows of trials.csv from trial records, in trial-id order."""
    rows = []
    for record in sorted(records, key=lambda r: trial_sort_key(r["trial_id"])):
        row: Dict[str, Any] = {"trial_id": record["trial_id"], "status": record.get("status", FAILED),
                               "score": record.get("score")}
        values = record.get("values") or {}
        for path in param_columns(spec):
            row[path] = values.get(path)
        for split in METRIC_SPLITS:
            for name, value in (record.get(split) or {}).items():
                row[f"{split}.{name}"] = value
        for key in TAIL_COLUMNS:
            row[key] = record.get(key)
        if record.get(WORKER_COLUMN):
            row[WORKER_COLUMN] = record[WORKER_COLUMN]
        rows.append(row)
    return rows


def format_trials_csv(rows: Sequence[Dict[str, Any]], spec: "SearchSpec") -> str:
    """trials.csv text: trial_id, status, score, searched paths, train.*, validation.*, epochs, ... [worker]."""
    metric_columns: Dict[str, List[str]] = {split: [] for split in METRIC_SPLITS}
    for row in rows:
        for key in row:
            split = key.split(".", 1)[0]
            if split in metric_columns and key not in metric_columns[split] and key not in spec.paths:
                metric_columns[split].append(key)
    columns = ["trial_id", "status", "score", *param_columns(spec),
               *(c for split in METRIC_SPLITS for c in metric_columns[split]), *TAIL_COLUMNS]
    if any(row.get(WORKER_COLUMN) for row in rows):
        columns.append(WORKER_COLUMN)
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


def write_trials_csv(sweep_dir: Path, records: Sequence[Dict[str, Any]], spec: "SearchSpec") -> List[Dict[str, Any]]:
    """Rebuilds ``<sweep>/trials.csv`` from `records`, atomically; returns its rows."""
    rows = trial_rows(records, spec)
    atomic_write_text(Path(sweep_dir) / TRIALS_FILE, format_trials_csv(rows, spec))
    return rows


def trials_csv_text(sweep_dir: PathLike) -> str:
    """The text of a sweep's trials.csv, rebuilt from ``records/`` when the file is missing or older than a record.

    For readers (compare, report): ktk rewrites trials.csv after every trial and at every stop, but a process
    killed outright (``kill -9``, a power cut) can leave it one trial behind. Reads config.yaml as plain YAML
    (no config schema, no Keras).

    Raises:
        ValueError: config.yaml or its search section cannot be read (when a rebuild is needed).
    """
    from types import SimpleNamespace

    from toolkit.results import CONFIG_FILE, read_yaml

    sweep_dir = Path(sweep_dir)
    if trials_csv_is_current(sweep_dir):
        try:
            return (sweep_dir / TRIALS_FILE).read_text(encoding="utf-8")
        except OSError:
            pass  # removed meanwhile: rebuilt below
    try:
        search = (read_yaml(sweep_dir / CONFIG_FILE) or {}).get("search") or {}
        spec = SimpleNamespace(paths=[str(p) for p in search["space"]], tuner=search.get("tuner"))
    except Exception as error:  # any unreadable config.yaml: the reader says which sweep and why
        raise ValueError(f"{CONFIG_FILE} cannot be read ({type(error).__name__}: {error})") from None
    return format_trials_csv(trial_rows(read_trials(sweep_dir), spec), spec)


def trials_csv_is_current(sweep_dir: PathLike) -> bool:
    """Whether trials.csv exists and is no older than every record (else it can be rebuilt from them)."""
    sweep_dir = Path(sweep_dir)
    try:
        table = (sweep_dir / TRIALS_FILE).stat().st_mtime_ns
    except OSError:
        return False
    folder = sweep_dir / RECORDS_DIR
    try:
        with os.scandir(folder) as entries:
            return all(entry.stat().st_mtime_ns <= table for entry in entries if entry.name.endswith(RECORD_SUFFIX))
    except OSError:
        return True  # no records: nothing newer


def read_trials_table(sweep_dir: PathLike) -> Tuple[List[str], List[Dict[str, Any]], List[int]]:
    """A sweep's trials.csv as readers see it (compare, report, plot): its header, one dict per trial with typed
    values (see :func:`toolkit.results.parse_cell`), and the line numbers of rows skipped because their number
    of fields is wrong (half-written). Rebuilt from ``records/`` when the file is missing or behind them.

    Raises:
        FileNotFoundError: neither trials.csv nor records to build it from.
        OSError: trials.csv cannot be read (not a regular file, too large...).
        ValueError: it is damaged, or its header has no ``trial_id``.
    """
    sweep_dir = Path(sweep_dir)
    if trials_csv_is_current(sweep_dir):
        text = read_small_file(sweep_dir / TRIALS_FILE, MAX_CSV_BYTES).decode("utf-8")
    elif (sweep_dir / RECORDS_DIR).is_dir():
        text = trials_csv_text(sweep_dir)
    else:
        raise FileNotFoundError(sweep_dir / TRIALS_FILE)
    header, rows = parse_csv_text(text)
    if "trial_id" not in header:
        raise ValueError("no header with trial_id")
    trials, skipped = [], []
    for number, cells in rows:
        if len(cells) != len(header):
            skipped.append(number)
            continue
        trials.append({name: text if name in TRIAL_TEXT_COLUMNS
                       else parse_cell(text, structured=name not in TRIAL_COLUMNS)
                       for name, text in zip(header, cells)})
    return header, trials, skipped


def trial_history_file(sweep_dir: PathLike, trial_id: str) -> Path:
    """Where a sweep trial's per-epoch history is: ``histories/<trial_id>.csv``.

    Raises:
        ValueError: `trial_id` is not a plain file name (it would lead outside ``histories/``).
    """
    name = f"{trial_id}.csv"
    if not trial_id or Path(name).name != name or "\\" in name or trial_id in (".", ".."):
        raise ValueError(f"trial id {trial_id!r} is not a plain name")
    return Path(sweep_dir) / HISTORIES_DIR / name
