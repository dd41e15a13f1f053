"""Comparison tables of run and sweep directories: what differed between runs, and how each scored.

:func:`compare` finds run directories (``metrics.json`` + ``config.yaml``) and sweep directories
(``trials.csv`` + ``config.yaml``, each trial a row plus the sweep's ``best/`` run) under the given paths
and returns one pandas DataFrame row per run or trial. :func:`render` turns it into a terminal table,
Markdown, CSV, JSON or a self-contained HTML page.

Only the small result files are read (never ``model.keras``), with the C YAML parser when available, and
TensorFlow is never imported, so a thousand runs compare in about a second. A damaged or half-written
directory is skipped and reported in ``df.attrs["warnings"]``; the library never prints.
"""

from __future__ import annotations

import collections
import copy
import csv
import html
import json
import math
import numbers
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import yaml

from toolkit.lessons.diagnosis import verdict_of
from toolkit.dotpath import set_path
from toolkit.errors import UserError
from toolkit.results import YAML_LOADER as _YamlLoader
from toolkit.results import read_yaml
from toolkit.metrics import direction_of
from toolkit.search import DEPTH_PATH, resize_hidden

FORMATS = ("table", "markdown", "csv", "json", "html")

# Columns describing the row itself; like config keys they are shown only when they differ.
META_COLUMNS = ("kind", "status")
# Columns that locate a row's files; kept in CSV/JSON (for scripts) but not shown in the tables.
LOCATION_COLUMNS = ("path", "trial_id")
SPLITS = ("train", "validation", "test")
# trials.csv columns that are not searched parameters (see docs/ARCHITECTURE.md, sweep directory).
_TEXT_COLUMNS = ("trial_id", "status", "message", "worker", "started")  # kept as written ("03" stays "03")
_TRIAL_FIXED = {"trial_id", "status", "score", "epochs", "best_epoch", "params", "started", "duration_s",
                "message", "worker"}
# Folders never searched for runs: hidden folders, caches, and keras-tuner's own project.
_SKIP_DIRS = {"__pycache__", "node_modules", "site-packages"}


# ------------------------------------------------------------------------------------------ entries


@dataclass
class Entry:
    """One row before it becomes a DataFrame row: a run, a sweep trial, or a sweep's best run."""

    label: str
    kind: str  # "run" | "trial" | "best" (a sweep's best/) | "top" (a sweep's top/trial_<id>/)
    path: Path  # the run directory; for a trial, its sweep directory
    config: Dict[str, Any]  # flattened: dot path -> scalar (lists shown compactly)
    metrics: Dict[str, Dict[str, float]]  # split -> metric name -> value, at the best epoch
    status: str = "completed"
    trial_id: str = ""
    epochs: Optional[int] = None
    best_epoch: Optional[int] = None
    params: Optional[int] = None
    duration_s: Optional[float] = None
    message: str = ""
    task: str = "unknown"  # metrics.json's task (trials do not record it)

    @property
    def history_path(self) -> Path:
        """The per-epoch history file of this run or trial (it may be absent)."""
        return history_file(self.path, self.kind, self.trial_id)


def history_file(path: Path, kind: str, trial_id: str = "") -> Path:
    """Where the per-epoch history of a row is: a trial's in its sweep's histories/, a run's beside it."""
    return path / "histories" / f"{trial_id}.csv" if kind == "trial" else path / "history.csv"


def row_kind(row: Mapping[str, Any]) -> str:
    """The kind of a table row (run, trial, best or top), also when compare() left out the kind column
    because every row had the same one."""
    kind = row.get("kind")
    if isinstance(kind, str) and kind:
        return kind
    trial_id = row.get("trial_id")
    if isinstance(trial_id, str) and trial_id:
        return "trial"
    path = Path(row["path"])
    if path.name == "best" and (path.parent / "trials.csv").is_file():
        return "best"
    if path.parent.name == "top" and (path.parent.parent / "trials.csv").is_file():
        return "top"
    return "run"


def main_metric(metric_names: Iterable[str]) -> str:
    """The metric a table and plot lead with: the first compiled metric, or the loss when there is none."""
    names = [m for m in metric_names if m != "loss"]
    return names[0] if names else "loss"


def row(entry: Entry) -> Dict[str, Any]:
    """The table row of one entry. Every column is added here, so a new column is one line."""
    out: Dict[str, Any] = {"run": entry.label, "kind": entry.kind, "status": entry.status}
    out.update(entry.config)
    for split in SPLITS:
        for name, value in entry.metrics.get(split, {}).items():
            out[f"{split}.{name}"] = value
    metric = main_metric(entry.metrics.get("train", {}) or entry.metrics.get("validation", {}))
    train, validation = entry.metrics.get("train", {}).get(metric), entry.metrics.get("validation", {}).get(metric)
    if is_number(train) and is_number(validation):
        out[f"gap.{metric}"] = train - validation  # train minus validation of the main metric
    if entry.kind != "trial":  # a trial's train.* are the epoch's running means with dropout on: not judged
        out["verdict"] = verdict_of(entry.metrics, entry.task, entry.config.get("diagnose.baseline_error")) or None
    out["epochs"] = entry.epochs
    out["best_epoch"] = entry.best_epoch
    out["params"] = entry.params
    out["duration_s"] = entry.duration_s
    if entry.message:
        out["message"] = entry.message
    out["path"] = str(entry.path)
    out["trial_id"] = entry.trial_id
    return out


# -------------------------------------------------------------------------------------- reading


def read_config(path: Union[str, Path]) -> Dict[str, Any]:
    """A config.yaml as a plain dict (raises ValueError when it is not a mapping)."""
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ValueError("config.yaml does not hold a mapping")
    return data


# Flattened config sections by their exact text. Runs of one experiment share most of their config
# word for word, so each distinct section (a top-level key, or below it a nested key) is parsed once. YAML
# parsing is most of the time of a large comparison: this makes a thousand runs about four times faster.
_SECTION_CACHE: Dict[Tuple[str, str], Any] = {}
_UNSURE = object()
_BLOCK_KEY = re.compile(r"([A-Za-z_][\w-]*):[ \t]*\r?\n")  # "model:" opening a nested block


def read_flat_config(path: Union[str, Path]) -> Dict[str, Any]:
    """A config.yaml flattened to dot paths (see :func:`flatten`), parsing each distinct section once.

    Text the section split cannot be sure about (anchors used across sections, merge keys, flow text
    continued at column 0, several documents, ...) is parsed whole, so the result always equals
    ``flatten(read_config(path))``.
    """
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    flat = _flat_text(text, "")
    if flat is _UNSURE:
        data = yaml.load(text, Loader=_YamlLoader)  # noqa: S506 - a safe loader
        if not isinstance(data, dict):
            raise ValueError("config.yaml does not hold a mapping")
        return flatten(data)
    if not flat and not text.strip():
        raise ValueError("config.yaml is empty")
    return flat


def _flat_text(text: str, prefix: str) -> Any:
    flat: Dict[str, Any] = {}
    for section in _sections(text):
        key = (prefix, section)
        cached = _SECTION_CACHE.get(key)
        if cached is None:
            cached = _flat_section(section, prefix)
            if len(_SECTION_CACHE) < 100_000:
                _SECTION_CACHE[key] = cached
        if cached is _UNSURE:
            return _UNSURE
        flat.update(cached)
    return flat


def _sections(text: str) -> List[str]:
    """The text split before each line that starts a key at column 0 (not a comment, not indented)."""
    sections: List[str] = []
    current: List[str] = []
    has_key = False
    for line in text.splitlines(keepends=True):
        starts_key = line[:1] not in ("", " ", "\t", "#", "\n", "\r")
        if starts_key and has_key:
            sections.append("".join(current))
            current, has_key = [], False
        current.append(line)
        has_key = has_key or starts_key
    if current:
        sections.append("".join(current))
    return sections


def _flat_section(section: str, prefix: str) -> Any:
    """One section (a single key and its value) flattened, or _UNSURE when it cannot stand alone."""
    if section.startswith(("---", "...", "%", "<<", "- ", "? ")):
        return _UNSURE
    opening = _BLOCK_KEY.match(section)
    if opening:  # "key:" then an indented block: split that block into its own sections
        if not prefix and opening.group(1) == "search":
            return {}
        body = section[opening.end():]
        lines = [line for line in body.splitlines(keepends=True)]
        content = [line for line in lines if line.strip()]
        indent = content[0][: len(content[0]) - len(content[0].lstrip(" "))] if content else ""
        if indent and all(line.startswith(indent) or not line.strip() for line in lines):
            nested = _flat_text("".join(line[len(indent):] if line.strip() else line for line in lines),
                                f"{prefix}{opening.group(1)}.")
            if nested is not _UNSURE and nested:
                return nested
    try:
        data = yaml.load(section, Loader=_YamlLoader)  # noqa: S506 - a safe loader
    except yaml.YAMLError:
        return _UNSURE
    if data is None:
        return {}  # only comments
    if not isinstance(data, dict) or len(data) != 1:
        return _UNSURE
    key = next(iter(data))
    if not isinstance(key, str):
        return _UNSURE
    if not prefix:
        return flatten(data)
    value = data[key]
    if isinstance(value, Mapping):
        return flatten(value, f"{prefix}{key}.")
    return {f"{prefix}{key}": compact(value) if isinstance(value, (list, tuple)) else value}


def flatten(config: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    """Nested config dicts as dot paths (``model.dropout``); lists kept whole as compact text.

    The ``search`` section is left out: it describes how a sweep searched, not how a run trained.
    """
    flat: Dict[str, Any] = {}
    for key, value in config.items():
        if not prefix and key == "search":
            continue
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, path + "."))
        elif isinstance(value, (list, tuple)):
            flat[path] = compact(value)
        else:
            flat[path] = value
    return flat


def compact(value: Any) -> str:
    """A value as short YAML-like text: ``[128, 64]``, ``{l2: 0.0001}``, ``true``, ``null``."""
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {compact(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(compact(v) for v in value) + "]"
    if value is None:
        return "null"
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return "true" if value else "false"
    return str(value)


def read_run(run_dir: Path, label: str, kind: str = "run") -> Entry:
    """Reads one run directory (metrics.json and config.yaml only).

    Raises:
        ValueError: when a file is missing, malformed or lacks the contract's keys.
    """
    metrics_path = run_dir / "metrics.json"
    try:
        with open(metrics_path, "rb") as handle:
            metrics = json.load(handle)
    except FileNotFoundError:
        raise ValueError("no metrics.json (the run did not finish)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"metrics.json is not valid JSON ({error})") from None
    except OSError as error:  # a folder or an unreadable file by that name
        raise ValueError(f"metrics.json cannot be read ({error.strerror or error})") from None
    if not isinstance(metrics, dict) or not any(isinstance(metrics.get(s), dict) for s in SPLITS):
        raise ValueError("metrics.json has no train/validation/test results")
    config = _config_of(run_dir, read_flat_config)
    results = {s: {k: v for k, v in metrics[s].items() if is_number(v)}
               for s in SPLITS if isinstance(metrics.get(s), dict)}
    return Entry(
        label=label,
        kind=kind,
        path=run_dir,
        config=config,
        metrics=results,
        epochs=_int_or_none(metrics.get("epochs_run")),
        best_epoch=_int_or_none(metrics.get("best_epoch")),
        params=_int_or_none(metrics.get("params")),
        duration_s=_float_or_none(metrics.get("wall_time_s")),
        task=str(metrics.get("task") or "unknown"),
    )


@dataclass
class Sweep:
    """What a sweep directory holds, read from its small files."""

    path: Path
    config: Dict[str, Any]  # the resolved config, search section included
    trials: List[Dict[str, Any]]  # trials.csv rows, values typed (int, float, bool, str or None)
    parameters: List[str]  # searched parameters (dot paths), in trials.csv order
    warnings: List[str] = field(default_factory=list)

    @property
    def search(self) -> Dict[str, Any]:
        section = self.config.get("search")
        return section if isinstance(section, dict) else {}

    @property
    def space(self) -> Dict[str, Any]:
        space = self.search.get("space")
        return space if isinstance(space, dict) else {}

    @property
    def objective(self) -> Tuple[str, str]:
        """The objective's name and direction ("min" or "max"), as keras-tuner infers it."""
        objective = self.search.get("objective", "val_loss")
        if isinstance(objective, dict):
            name = str(objective.get("name", "val_loss"))
            direction = objective.get("direction")
        else:
            name, direction = str(objective), None
        if direction not in ("min", "max"):
            direction = direction_of(name) or "max"
        return name, direction

    def ranked(self) -> List[Dict[str, Any]]:
        """The completed trials with a score, best first (ties keep trial order)."""
        _, direction = self.objective
        scored = [t for t in self.trials if t.get("status") == "completed" and is_number(t.get("score"))]
        return sorted(scored, key=lambda t: -t["score"] if direction == "max" else t["score"])

    def best_trial(self) -> Optional[Dict[str, Any]]:
        """The completed trial with the best score (None when no trial completed)."""
        ranked = self.ranked()
        return ranked[0] if ranked else None

    def status_counts(self) -> Dict[str, int]:
        """How many trials ended in each status."""
        return dict(collections.Counter(t.get("status") or "unknown" for t in self.trials))


@dataclass
class Parameter:
    """One searched parameter: its range or choices (from the search space) and where the best trial sits."""

    name: str  # dot path, as in trials.csv
    kind: str  # "int" | "float" | "choice" | "unknown" (not described by the search space)
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    choices: Optional[List[Any]] = None
    when: Optional[Dict[str, Any]] = None
    best: Any = None  # the best trial's value (None when inactive there or no trial completed)
    edge: Optional[str] = None  # "low" or "high" when the best value sits at an edge of the range

    def describe(self) -> str:
        """The range in words: ``float in [0.0001, 0.1], log scale`` or ``one of sgd, adam``."""
        if self.kind in ("int", "float"):
            text = f"{self.kind} in [{format_value(self.low)}, {format_value(self.high)}]"
            return text + (", log scale" if self.log else "")
        if self.kind == "choice":
            return "one of " + ", ".join(compact(c) for c in self.choices or [])
        return "(not in the search space)"

    @property
    def edge_message(self) -> Optional[str]:
        if self.edge is None:
            return None
        bound = self.low if self.edge == "low" else self.high
        if self.kind == "choice":
            return (f"the best value {compact(self.best)} is the {'lowest' if self.edge == 'low' else 'highest'}"
                    f" choice: consider extending the choices beyond it")
        return (f"the best value {format_value(self.best)} is at the {self.edge} edge of the searched range "
                f"(near {format_value(bound)}): consider widening the range")


EDGE_FRACTION = 0.1  # the outer tenth of a range (of its logarithm for log-scale parameters) is its edge


def parameters(sweep: "Sweep") -> List[Parameter]:
    """The searched parameters of a sweep with their ranges, the best trial's values and edge flags.

    The search space (``search.space``: ``{int: [lo, hi]}``, ``{float: [lo, hi], log: true}``,
    ``{choice: [...]}``, optionally ``when:``) gives the ranges; a parameter found only in trials.csv
    gets the range of the values tried.
    """
    best = sweep.best_trial()
    names = list(sweep.parameters) + [n for n in sweep.space if n not in sweep.parameters]
    result = []
    for name in names:
        spec = sweep.space.get(name)
        parameter = _parameter_from_spec(name, spec)
        if parameter.kind == "unknown":
            tried = [t.get(name) for t in sweep.trials if is_number(t.get(name))]
            if tried:
                parameter.low, parameter.high = min(tried), max(tried)
        parameter.best = best.get(name) if best else None
        parameter.edge = _edge(parameter)
        result.append(parameter)
    return result


def _parameter_from_spec(name: str, spec: Any) -> Parameter:
    if not isinstance(spec, Mapping):
        return Parameter(name, "unknown")
    when = spec.get("when") if isinstance(spec.get("when"), Mapping) else None
    for kind in ("int", "float"):
        bounds = spec.get(kind)
        if isinstance(bounds, (list, tuple)) and len(bounds) == 2 and all(is_number(b) for b in bounds):
            return Parameter(name, kind, low=bounds[0], high=bounds[1], log=bool(spec.get("log")), when=when)
    if isinstance(spec.get("choice"), (list, tuple)):
        return Parameter(name, "choice", choices=list(spec["choice"]), when=when)
    return Parameter(name, "unknown", when=when)


def _edge(parameter: Parameter) -> Optional[str]:
    value = parameter.best
    if parameter.kind == "choice":
        numeric = [c for c in parameter.choices or [] if is_number(c)]
        if len(numeric) < 3 or len(numeric) != len(parameter.choices or []) or not is_number(value):
            return None  # two choices are both edges; unordered (text) choices have none
        return "low" if value == min(numeric) else "high" if value == max(numeric) else None
    if parameter.kind == "unknown":
        return None  # without the searched range there is no edge to speak of
    low, high = parameter.low, parameter.high
    if not (is_number(value) and is_number(low) and is_number(high)) or high <= low:
        return None
    if parameter.log and low > 0 and value > 0:
        low, high, value = math.log(low), math.log(high), math.log(value)
    position = (value - low) / (high - low)
    return "low" if position <= EDGE_FRACTION else "high" if position >= 1 - EDGE_FRACTION else None


def read_sweep(sweep_dir: Union[str, Path]) -> Sweep:
    """Reads a sweep directory's config.yaml and trials.csv.

    Raises:
        ValueError: when config.yaml or trials.csv is missing or malformed.
    """
    sweep_dir = Path(sweep_dir)
    config = _config_of(sweep_dir, read_config)
    warnings: List[str] = []
    try:
        with open(sweep_dir / "trials.csv", newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if not header or "trial_id" not in header:
                raise ValueError("trials.csv has no header with trial_id")
            trials = []
            for number, cells in enumerate(reader, start=2):
                if not cells:
                    continue
                if len(cells) != len(header):
                    warnings.append(f"{sweep_dir / 'trials.csv'}: line {number} has {len(cells)} fields, "
                                    f"expected {len(header)} (half-written?); skipped")
                    continue
                trials.append({name: text if name in _TEXT_COLUMNS
                               else _typed(text, flow=name not in _TRIAL_FIXED, words=False)
                               for name, text in zip(header, cells)})
    except FileNotFoundError:
        raise ValueError("no trials.csv") from None
    except (csv.Error, UnicodeDecodeError) as error:
        raise ValueError(f"trials.csv cannot be read ({error})") from None
    except OSError as error:
        raise ValueError(f"trials.csv cannot be read ({error.strerror or error})") from None
    for trial in trials:
        trial.setdefault("status", "")
    parameters = [c for c in header if c not in _TRIAL_FIXED and not c.startswith(tuple(s + "." for s in SPLITS))]
    return Sweep(sweep_dir, config, trials, parameters, warnings)


DEPTH_PARAMETER = DEPTH_PATH  # a sweep helper, not a config key: model.hidden cut or extended to it


def trial_entries(sweep: Sweep, label: str) -> List[Entry]:
    """One entry per trial: the sweep's config with the trial's searched values applied."""
    base = {k: v for k, v in sweep.config.items() if k != "search"}
    entries = []
    for trial in sweep.trials:
        config = copy.deepcopy(base)
        depth = trial.get(DEPTH_PARAMETER)
        hidden = config.get("model", {}).get("hidden") if isinstance(config.get("model"), dict) else None
        if isinstance(depth, int) and isinstance(hidden, list) and hidden:  # as toolkit.search applies it
            config["model"]["hidden"] = resize_hidden(hidden, depth)
        for parameter in sweep.parameters:
            value = trial.get(parameter)
            if value is None or parameter == DEPTH_PARAMETER:  # inactive (conditional), or not a config key
                continue
            try:
                set_path(config, parameter, value, where=parameter)
            except UserError:
                pass  # the value stays visible in its own column below
        flat = flatten(config)
        for parameter in sweep.parameters:  # searched paths that flatten does not spell out (list items)
            if parameter not in flat and trial.get(parameter) is not None:
                flat[parameter] = trial[parameter]
        metrics: Dict[str, Dict[str, float]] = {}
        for column, value in trial.items():
            split, _, name = column.partition(".")
            if split in SPLITS and name and is_number(value):
                metrics.setdefault(split, {})[name] = value
        entries.append(Entry(
            label=f"{label}#{trial['trial_id']}",
            kind="trial",
            path=sweep.path,
            config=flat,
            metrics=metrics,
            status=trial["status"] or "unknown",
            trial_id=trial["trial_id"],
            epochs=_int_or_none(trial.get("epochs")),
            best_epoch=_int_or_none(trial.get("best_epoch")),
            params=_int_or_none(trial.get("params")),
            duration_s=_float_or_none(trial.get("duration_s")),
            message=str(trial.get("message") or ""),
        ))
    return entries


# ------------------------------------------------------------------------------------ discovery


@dataclass
class Found:
    runs: List[Path] = field(default_factory=list)
    sweeps: List[Path] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)


def find(paths: Sequence[Union[str, Path]]) -> Found:
    """Run and sweep directories under `paths` (searched recursively), in a stable order.

    Raises:
        UserError: for a path that does not exist or is a file that is not a result file.
    """
    found = Found()
    seen: set = set()
    for given in paths:
        path = Path(given)
        if path.is_file():
            if path.name not in ("metrics.json", "config.yaml", "trials.csv"):
                raise UserError("not a run or sweep directory", where="PATH", received=str(path),
                                expected="a run directory, a sweep directory or a folder holding them")
            path = path.parent
        elif not path.is_dir():
            raise UserError("path not found", where="PATH", received=str(path),
                            expected="a run directory, a sweep directory or a folder holding them")
        _walk(path, found, seen)
    return found


def _walk(directory: Path, found: Found, seen: set) -> None:
    try:
        info = os.stat(directory)
        if (info.st_dev, info.st_ino) in seen:  # the same folder given twice, or reached through a link
            return
        seen.add((info.st_dev, info.st_ino))
        with os.scandir(directory) as scan:
            items = list(scan)
    except OSError as error:
        found.warnings.append(f"{directory}: cannot be read ({error.strerror}); skipped")
        return
    names = {item.name for item in items}
    if "trials.csv" in names and "config.yaml" in names:
        found.sweeps.append(directory)
        return
    if "metrics.json" in names:
        found.runs.append(directory)
        return
    if "config.yaml" in names and names & {"history.csv", "environment.json", "model.keras"}:
        found.warnings.append(f"{directory}: no metrics.json (unfinished or failed run); skipped")
        return
    subdirs = sorted(item.name for item in items
                     if not item.name.startswith(".") and item.name not in _SKIP_DIRS and _is_dir(item))
    for name in subdirs:
        _walk(directory / name, found, seen)


def _is_dir(item: os.DirEntry) -> bool:
    try:
        return item.is_dir()
    except OSError:
        return False


def _labels(directories: Sequence[Path]) -> Dict[Path, str]:
    """Short unique names: each directory's path relative to what all of them share."""
    if not directories:
        return {}
    absolute = [Path(os.path.abspath(d)) for d in directories]
    common = Path(os.path.commonpath([str(a) for a in absolute]))
    if len(set(absolute)) == 1 or common in absolute:
        common = common.parent
    return {d: os.path.relpath(a, common) for d, a in zip(directories, absolute)}


def entries(paths: Sequence[Union[str, Path]]) -> Tuple[List[Entry], List[str]]:
    """Every run, trial and best run under `paths`, and the warnings about what was skipped."""
    found = find(paths)
    warnings = list(found.warnings)
    # a sweep's best/ and top/ runs are listed with their sweep (as best and top), not again as plain runs
    retrained_dirs = {run.resolve() for sweep in found.sweeps for run in [sweep / "best", *_top_runs(sweep)]}
    found.runs = [run for run in found.runs if run.resolve() not in retrained_dirs]
    labels = _labels(found.runs + found.sweeps)
    rows: List[Entry] = []
    for directory in sorted(found.runs + found.sweeps, key=lambda d: labels[d]):
        if directory in found.sweeps:
            try:
                sweep = read_sweep(directory)
            except ValueError as error:
                warnings.append(f"{directory}: {error}; skipped")
                continue
            warnings.extend(sweep.warnings)
            rows.extend(trial_entries(sweep, labels[directory]))
            retrained = [(directory / "best", "best")] + [(run_dir, "top") for run_dir in _top_runs(directory)]
            for run_dir, kind in retrained:
                if not (run_dir / "metrics.json").is_file():
                    continue  # not retrained yet (a sweep still running, or retrain_top 1)
                try:
                    rows.append(read_run(run_dir, f"{labels[directory]}/{os.path.relpath(run_dir, directory)}", kind=kind))
                except ValueError as error:
                    warnings.append(f"{run_dir}: {error}; skipped")
        else:
            try:
                rows.append(read_run(directory, labels[directory]))
            except ValueError as error:
                warnings.append(f"{directory}: {error}; skipped")
    return rows, sorted(warnings)  # each starts with its path: in path order, like the rows


def _top_runs(sweep_dir: Path) -> List[Path]:
    top = sweep_dir / "top"
    return [run_dir for run_dir in sorted(top.iterdir()) if run_dir.is_dir()] if top.is_dir() else []


# -------------------------------------------------------------------------------------- compare


def compare(
    paths: Union[str, Path, Sequence[Union[str, Path]]],
    *,
    all_params: bool = False,
    sort: Optional[str] = None,
    top: Optional[int] = None,
    filters: Iterable[str] = (),
):
    """One row per run, sweep trial and sweep best run found under `paths`.

    Columns: ``run`` (a short name), then the config keys that differ between the rows (dot paths;
    every key with `all_params`), then ``train.*``, ``validation.*`` and ``test.*`` metrics at the best
    epoch, ``gap.<metric>`` (train minus validation of the main metric), ``verdict`` (the bias/variance
    verdict of ``ktk diagnose``: high_bias, high_variance, high_bias_and_variance or ok), ``epochs``, ``best_epoch``,
    ``params``, ``duration_s``, and ``path``/``trial_id`` locating each row's files. Directories that
    cannot be read are skipped and described in ``df.attrs["warnings"]``.

    Args:
        paths: run directories, sweep directories, or folders holding them (searched recursively).
        all_params: show every config key, not only those that differ.
        sort: a column to sort by; a leading '-' sorts in descending order. Missing values go last.
        top: keep the first `top` rows (after filtering and sorting).
        filters: expressions like ``model.dropout>0.1`` or ``status==completed`` that rows must match
            (operators ``== != > >= < <=``).

    Returns:
        A pandas DataFrame.

    Raises:
        UserError: for a missing path, nothing found, an unknown column or a malformed filter.
    """
    import pandas as pd

    if isinstance(paths, (str, Path)):
        paths = [paths]
    found, warnings = entries(paths)
    if not found:
        detail = f" ({len(warnings)} skipped; first: {warnings[0]})" if warnings else ""
        raise UserError("no run or sweep directories found" + detail, where="PATH",
                        expected="a run directory (metrics.json + config.yaml), a sweep directory "
                                 "(trials.csv + config.yaml) or a folder holding them",
                        received=", ".join(str(p) for p in paths))
    records = [row(e) for e in found]
    config_keys = _ordered_union(e.config for e in found)
    columns = _column_order(records, config_keys)
    frame = pd.DataFrame.from_records(records, columns=columns)

    used = set()
    for text in filters:
        column, mask = _filter_mask(frame, text)
        used.add(column)
        frame = frame[mask]
    if sort:
        column, descending = _sort_column(frame, sort)
        used.add(column)
        # numbers before text (a batch size of 64 and one of "full"), in order; missing values last
        frame = frame.sort_values(column, ascending=not descending, na_position="last", kind="stable",
                                  key=lambda series: series.map(_sort_key))
    if top is not None:
        if isinstance(top, bool) or not isinstance(top, int) or top < 1:
            raise UserError(where="--top", expected="a positive number of rows", received=top)
        frame = frame.head(top)

    keep = [c for c in frame.columns if _keep(frame[c], c, config_keys, all_params, used)]
    frame = frame[keep].reset_index(drop=True)
    frame.attrs["warnings"] = warnings
    return frame


def _ordered_union(dicts: Iterable[Mapping[str, Any]]) -> List[str]:
    keys: Dict[str, None] = {}
    for d in dicts:
        keys.update(dict.fromkeys(d))
    return list(keys)


def _column_order(records: List[Dict[str, Any]], config_keys: List[str]) -> List[str]:
    present = _ordered_union(records)
    metric_columns = [c for c in present if c.split(".", 1)[0] in SPLITS and c not in config_keys]
    metric_columns.sort(key=lambda c: (SPLITS.index(c.split(".", 1)[0]), c.split(".", 1)[1] != "loss"))
    gap = [c for c in present if c.startswith("gap.")] + (["verdict"] if "verdict" in present else [])
    tail = [c for c in ("epochs", "best_epoch", "params", "duration_s", "message") if c in present]
    return ["run", *META_COLUMNS, *config_keys, *metric_columns, *gap, *tail, *LOCATION_COLUMNS]


def _keep(column, name: str, config_keys: List[str], all_params: bool, used: set) -> bool:
    if name in used or name == "run" or name in LOCATION_COLUMNS:
        return True
    if name in META_COLUMNS or name in config_keys:
        return all_params or _differs(column)
    return column.notna().any()  # metrics: drop a split no row has (e.g. test for trials)


def _differs(column) -> bool:
    values = {_hashable(v) for v in column}
    return len(values) > 1


def _hashable(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ("missing",)
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return ("bool", bool(value))
    if isinstance(value, numbers.Real):
        return ("number", float(value))
    return ("text", str(value))


# ------------------------------------------------------------------------------- sort and filter

_FILTER = re.compile(r"^\s*(?P<column>[^<>=!\s]+?)\s*(?P<op>==|!=|>=|<=|>|<|=)\s*(?P<value>.*?)\s*$")


def _column_error(flag: str, column: str, frame) -> UserError:
    return UserError("unknown column", where=flag, received=column, choices=list(frame.columns))


def _sort_column(frame, sort: str) -> Tuple[str, bool]:
    descending = sort.startswith("-")
    column = sort[1:] if descending else sort
    if column not in frame.columns:
        raise _column_error("--sort", column, frame)
    return column, descending


def _filter_mask(frame, text: str):
    import pandas as pd

    match = _FILTER.match(text)
    if not match:
        raise UserError(where="--filter", expected="COLUMN OP VALUE with OP one of == != > >= < <= "
                        "(e.g. 'model.dropout>0.1' or 'status==completed')", received=text)
    column, op, raw = match.group("column"), match.group("op"), match.group("value")
    op = "==" if op == "=" else op
    if column not in frame.columns:
        raise _column_error("--filter", column, frame)
    value = _typed(raw.strip("'\""))
    series = frame[column]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        numbers = pd.to_numeric(series.map(lambda v: v if is_number(v) else None), errors="coerce")
        compare = {"==": numbers.__eq__, "!=": numbers.__ne__, ">": numbers.__gt__, ">=": numbers.__ge__,
                   "<": numbers.__lt__, "<=": numbers.__le__}[op]
        return column, compare(value).fillna(False).astype(bool)
    if op not in ("==", "!="):
        raise UserError(where="--filter", expected=f"a number after '{op}'", received=raw)
    text_value = compact(value) if value is not None else ""
    equal = series.map(lambda v: _cell_text(v) == text_value)
    return column, equal if op == "==" else ~equal


def _sort_key(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return (0, float(value), "") if is_number(value) else (1, 0.0, compact(value))


def _cell_text(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return compact(value)


# ---------------------------------------------------------------------------------------- render


def render(df, fmt: str = "table") -> str:
    """The table as text in one of :data:`FORMATS`.

    ``csv`` and ``json`` keep every column at full precision (``json`` is a list of records, missing
    values as null); ``table``, ``markdown`` and ``html`` round numbers for reading and leave out the
    ``path`` and ``trial_id`` columns.
    """
    if fmt not in FORMATS:
        raise UserError(where="--format", expected="a table format", received=fmt, choices=FORMATS)
    if fmt == "csv":
        return df.to_csv(index=False)
    if fmt == "json":
        records = [{str(k): _plain(v) for k, v in r.items()} for r in df.to_dict(orient="records")]
        return json.dumps(records, indent=2, allow_nan=False) + "\n"
    header, cells, numeric = table_cells(df)
    if fmt == "table":
        return text_table(header, cells, numeric)
    if fmt == "markdown":
        return markdown_table(header, cells, numeric)
    return html_page("ktk compare", [html_table(header, cells, numeric)])


def table_cells(df) -> Tuple[List[str], List[List[str]], List[bool]]:
    """The header, the formatted cells and which columns are numeric, for a table to read (no locations)."""
    shown = df[[c for c in df.columns if c not in LOCATION_COLUMNS]]
    header = [str(c) for c in shown.columns]
    cells = [[format_value(v) for v in values] for values in shown.itertuples(index=False, name=None)]
    numeric = [_numeric_column(shown[c]) for c in shown.columns]
    return header, cells, numeric


def format_value(value: Any) -> str:
    """A cell for reading: 4 significant digits, integers whole, missing values empty."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return "true" if value else "false"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        value = float(value)
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return f"{value:.4g}"
    return str(value)


def _numeric_column(series) -> bool:
    values = [v for v in series if not (v is None or (isinstance(v, float) and math.isnan(v)))]
    return bool(values) and all(is_number(v) for v in values)


def text_table(header: List[str], cells: List[List[str]], numeric: List[bool]) -> str:
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(header)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if n else v.ljust(w) for v, w, n in zip(values, widths, numeric)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in cells)]) + "\n"


def markdown_table(header: List[str], cells: List[List[str]], numeric: Optional[List[bool]] = None) -> str:
    """A Markdown (GitHub) pipe table of already formatted cells; numeric columns right-aligned."""
    numeric = numeric or [False] * len(header)

    def escape(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(escape(h) for h in header) + " |",
             "| " + " | ".join("---:" if n else "---" for n in numeric) + " |"]
    lines += ["| " + " | ".join(escape(c) for c in r) + " |" for r in cells]
    return "\n".join(lines) + "\n"


def html_table(header: Sequence[str], cells: Sequence[Sequence[str]], numeric: Optional[Sequence[bool]] = None,
               highlight: Optional[int] = None) -> str:
    """An HTML <table> of already formatted cells (numbers right-aligned; row `highlight` marked)."""
    numeric = numeric or [False] * len(header)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for index, values in enumerate(cells):
        tds = "".join(f'<td class="num">{html.escape(v)}</td>' if n else f"<td>{html.escape(v)}</td>"
                      for v, n in zip(values, numeric))
        mark = ' class="best"' if index == highlight else ""
        body.append(f"<tr{mark}>{tds}</tr>")
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(body) + "\n</tbody>\n</table>"


_STYLE = """
body { font-family: -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; margin: 2em;
       color: #1a1a1a; max-width: 1400px; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; white-space: nowrap; }
th { background: #f2f2f2; position: sticky; top: 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr:nth-child(even) td { background: #fafafa; }
tr.best td { background: #e6f4ea; font-weight: 600; }
.scroll { overflow-x: auto; }
figure { display: inline-block; margin: 0.5em 1em 1em 0; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.85em; color: #555; max-width: 600px; }
pre, code { background: #f6f8fa; padding: 0.1em 0.3em; border-radius: 3px; }
pre { padding: 0.7em; overflow-x: auto; }
.warning { color: #8a4b00; }
"""


def html_page(title: str, parts: Sequence[str]) -> str:
    """A self-contained HTML page (inline CSS, no scripts, no external files) around `parts`."""
    body = "\n".join(f'<div class="scroll">{p}</div>' if p.startswith("<table") else p for p in parts)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
            f"<h1>{html.escape(title)}</h1>\n{body}\n</body>\n</html>\n")


# ---------------------------------------------------------------------------------------- helpers


def is_number(value: Any) -> bool:
    """True for a real number that is not NaN (bools are not numbers here)."""
    if isinstance(value, bool) or type(value).__name__ == "bool_" or not isinstance(value, numbers.Real):
        return False
    return not math.isnan(value)


def _plain(value: Any) -> Any:
    """A cell as a JSON value: numpy scalars to Python, NaN to None."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return None if math.isnan(value) or math.isinf(value) else float(value)
    return str(value)


def _typed(text: str, flow: bool = False, words: bool = True) -> Any:
    """A CSV or filter value as the type it spells: int, float, bool, None (empty) or str.

    With `words` (filters), ``none``/``null`` also mean None; without it (trials.csv, which writes None
    as an empty cell) they stay text, so a searched choice ``"none"`` is kept as the string it was.

    With `flow`, text like ``[128, 64]`` or ``{name: adam}`` (how trials.csv writes list and mapping
    choices) is read back as YAML.
    """
    if text == "":
        return None
    if flow and text[:1] in "[{":
        try:
            return yaml.load(text, Loader=_YamlLoader)  # noqa: S506 - a safe loader
        except yaml.YAMLError:
            return text
    if re.fullmatch(r"[-+]?\d+", text):
        return int(text)
    try:
        number = float(text)
    except ValueError:
        lowered = text.lower()
        if lowered in ("true", "false"):
            return lowered == "true"
        if words and lowered in ("none", "null"):
            return None
        return text
    return number


def _config_of(folder: Path, read: Any) -> Dict[str, Any]:
    """`read` (read_config or read_flat_config) of the folder's config.yaml; ValueError saying what is wrong."""
    try:
        return read(folder / "config.yaml")
    except FileNotFoundError:
        raise ValueError("no config.yaml") from None
    except (yaml.YAMLError, ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"config.yaml cannot be read ({_first_line(error)})") from None
    except OSError as error:
        raise ValueError(f"config.yaml cannot be read ({error.strerror or error})") from None


def _int_or_none(value: Any) -> Optional[int]:
    return int(value) if is_number(value) else None


def _float_or_none(value: Any) -> Optional[float]:
    return float(value) if is_number(value) else None


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
