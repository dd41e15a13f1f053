"""Comparison tables of run and sweep directories: what differed between runs, and how each scored.

:func:`compare` finds run directories (``metrics.json`` + ``config.yaml``) and sweep directories
(``trials.csv`` + ``config.yaml``, each trial a row plus the sweep's ``best/`` run) under the given paths
and returns one pandas DataFrame row per run or trial. :func:`render` turns it into a terminal table,
Markdown, CSV, JSON or a self-contained HTML page (drawn by :mod:`toolkit.tables`).

Only the small result files are read (never ``model.keras``), through the bounded readers of
:mod:`toolkit.results`, and TensorFlow is never imported. A damaged or half-written directory is skipped
and reported in ``df.attrs["warnings"]``; the library never prints.
"""

from __future__ import annotations

import collections
import copy
import json
import math
import numbers
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple, Union

import yaml

from toolkit import tables
from toolkit.dotpath import get_path, set_path
from toolkit.errors import UserError, first_line
from toolkit.lessons.diagnosis import verdict_of
from toolkit.metrics import direction_of
from toolkit.results import (BEST_DIR, CONFIG_FILE, ENVIRONMENT_FILE, HISTORY_FILE, MAX_JSON_BYTES, METRICS_FILE,
                             MODEL_FILE, SPLITS, SWEEP_MARKER, TOP_DIR, TRIALS_FILE, check_small_file, parse_cell, read_json,
                             read_yaml)
from toolkit.sweeps.records import TRIAL_COLUMNS, read_trials_table, trial_history_file
from toolkit.search import DEPTH_PATH, resize_hidden
from toolkit.tables import compact, is_finite, is_missing, is_number

FORMATS = ("table", "markdown", "csv", "json", "html")
# What a row is (its `kind` column): a run, a sweep's trial, a sweep's best/ or one of its top/trial_<id>/.
RUN, TRIAL, BEST, TOP = KINDS = ("run", "trial", "best", "top")

# Columns describing the row itself; like config keys they are shown only when they differ.
META_COLUMNS = ("kind", "status")
# Columns that locate a row's files; kept in CSV/JSON (for scripts) but not shown in the tables.
LOCATION_COLUMNS = ("path", "trial_id")
# Columns of a run's environment.json (its provenance: code, data, packages, machine), shown with all_params.
ENV_PREFIX = "env."
ENV_FIELDS = ("ktk", "python", "tensorflow", "keras", "numpy", "platform", "host", "cpu_count", "gpus",
              "deterministic_ops", "devices")
# Folders never searched for runs: hidden folders, caches, and keras-tuner's own project.
_SKIP_DIRS = {"__pycache__", "node_modules", "site-packages"}


# ------------------------------------------------------------------------------------------ entries


@dataclass
class Entry:
    """One row before it becomes a DataFrame row: a run, a sweep trial, or a sweep's best run."""

    label: str
    kind: str  # one of KINDS
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
    environment: Dict[str, Any] = field(default_factory=dict)  # env.<field> -> value, from a run's environment.json
    nested: Dict[str, Any] = field(default_factory=dict, repr=False)  # the config before flattening

    @property
    def history_path(self) -> Path:
        """The per-epoch history file of this run or trial (it may be absent)."""
        return history_file(self.path, self.kind, self.trial_id)


def history_file(path: Path, kind: str, trial_id: str = "") -> Path:
    """Where the per-epoch history of a row is: a trial's in its sweep's histories/, a run's beside it.

    Raises:
        ValueError: a trial id that is not a plain file name.
    """
    return trial_history_file(path, trial_id) if kind == TRIAL else path / HISTORY_FILE


def row_kind(row: Mapping[str, Any]) -> str:
    """The kind of a table row (run, trial, best or top), also when compare() left out the kind column
    because every row had the same one."""
    kind = row.get("kind")
    if isinstance(kind, str) and kind:
        return kind
    trial_id = row.get("trial_id")
    if isinstance(trial_id, str) and trial_id:
        return TRIAL
    path = Path(row["path"])
    if path.name == BEST_DIR and _is_sweep(path.parent):
        return BEST
    if path.parent.name == TOP_DIR and _is_sweep(path.parent.parent):
        return TOP
    return RUN


def main_metric(metric_names: Iterable[str]) -> str:
    """The metric a table and plot lead with: the first compiled metric, or the loss when there is none."""
    names = [m for m in metric_names if m != "loss"]
    return names[0] if names else "loss"


# The columns row() makes besides the config keys (a config key of the same name is left out).
ROW_COLUMNS = ("run", *META_COLUMNS, "verdict", "epochs", "best_epoch", "params", "duration_s", "message",
               *LOCATION_COLUMNS)


def row(entry: Entry) -> Dict[str, Any]:
    """The table row of one entry. Every column is added here, so a new column is one line."""
    out: Dict[str, Any] = {"run": entry.label, "kind": entry.kind, "status": entry.status}
    out.update((k, v) for k, v in entry.config.items() if k not in ROW_COLUMNS)
    for split in SPLITS:
        for name, value in entry.metrics.get(split, {}).items():
            out[f"{split}.{name}"] = value
    metric = main_metric(entry.metrics.get("train", {}) or entry.metrics.get("validation", {}))
    train, validation = entry.metrics.get("train", {}).get(metric), entry.metrics.get("validation", {}).get(metric)
    if is_number(train) and is_number(validation):
        out[f"gap.{metric}"] = train - validation  # train minus validation of the main metric
    if entry.kind != TRIAL:  # a trial's train.* are the epoch's running means with dropout on: not judged
        out["verdict"] = verdict_of(entry.metrics, entry.task, entry.config.get("diagnose.baseline_error")) or None
    out["epochs"] = entry.epochs
    out["best_epoch"] = entry.best_epoch
    out["params"] = entry.params
    out["duration_s"] = entry.duration_s
    out.update(entry.environment)
    if entry.message:
        out["message"] = entry.message
    out["path"] = str(entry.path)
    out["trial_id"] = entry.trial_id
    return out


# -------------------------------------------------------------------------------------- reading


def read_config(path: Union[str, Path]) -> Dict[str, Any]:
    """A config.yaml as a plain dict.

    Raises:
        OSError: the file is missing or cannot be read (a folder, a FIFO, too large...).
        ValueError: it does not hold a mapping.
    """
    check_small_file(path, MAX_JSON_BYTES)  # never opens a FIFO or a device, which could block or never end
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ValueError(f"{CONFIG_FILE} does not hold a mapping")
    return data


MAX_KEYS = 10_000  # flattened keys of one config: far beyond a real one (~100), short of what aliases expand to


def flatten(config: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    """Nested config dicts as dot paths (``model.dropout``); lists kept whole as compact text.

    The ``search`` and ``tracking`` sections are left out: they describe how a sweep searched and where a run was
    also recorded, not how it trained.

    Raises:
        ValueError: more than :data:`MAX_KEYS` keys (a document of nested YAML aliases).
    """
    flat: Dict[str, Any] = {}
    stack = [(prefix, iter(config.items()))]
    steps = 0
    while stack:  # depth first without recursion: a document nested thousands deep is read like any other
        path_prefix, items = stack[-1]
        for key, value in items:
            steps += 1
            if steps > MAX_KEYS:  # counts mappings too: empty ones aliased a billion times add no key
                raise ValueError(f"more than {MAX_KEYS} keys and mappings (nested YAML aliases?)")
            if not path_prefix and key in ("search", "tracking"):
                continue
            path = f"{path_prefix}{key}"
            if isinstance(value, dict):
                stack.append((path + ".", iter(value.items())))
                break  # the mapping first; this loop goes on where it stopped when the mapping is done
            flat[path] = compact(value) if isinstance(value, (list, tuple)) else value
        else:
            stack.pop()
    return flat


def _counts(source: Dict[str, Any], epochs: str, duration: str) -> Dict[str, Any]:
    """An Entry's epochs, best epoch, parameters and duration, from metrics.json or a trials.csv row."""
    return {"epochs": _int_or_none(source.get(epochs)), "best_epoch": _int_or_none(source.get("best_epoch")),
            "params": _int_or_none(source.get("params")), "duration_s": _float_or_none(source.get(duration))}


def read_run(run_dir: Path, label: str, kind: str = RUN) -> Entry:
    """Reads one run directory (metrics.json and config.yaml only).

    Raises:
        ValueError: when a file is missing, damaged or lacks the contract's keys.
    """
    try:
        metrics = read_json(run_dir / METRICS_FILE)
    except FileNotFoundError:
        raise ValueError(f"no {METRICS_FILE} (the run did not finish)") from None
    except ValueError as error:
        raise ValueError(f"{METRICS_FILE} is not valid JSON ({error})") from None
    except OSError as error:  # an unreadable file by that name
        raise ValueError(f"{METRICS_FILE} cannot be read ({error.strerror or error})") from None
    if not isinstance(metrics, dict) or not any(isinstance(metrics.get(s), dict) for s in SPLITS):
        raise ValueError(f"{METRICS_FILE} has no train/validation/test results")
    if sum(len(metrics[s]) for s in SPLITS if isinstance(metrics.get(s), dict)) > MAX_KEYS:
        raise ValueError(f"{METRICS_FILE} has more than {MAX_KEYS} metrics: not a file ktk wrote")
    nested, config = _config_of(run_dir)
    results = {s: {str(k): v for k, v in metrics[s].items() if is_number(v)}
               for s in SPLITS if isinstance(metrics.get(s), dict)}
    return Entry(
        label=label,
        kind=kind,
        path=run_dir,
        config=config,
        metrics=results,
        **_counts(metrics, epochs="epochs_run", duration="wall_time_s"),
        task=str(metrics.get("task") or "unknown"),
        nested=nested,
        environment=environment_columns(run_dir),
    )


def environment_columns(run_dir: Path) -> Dict[str, Any]:
    """A run's provenance as ``env.*`` columns: versions, ``env.git.commit``/``env.git.dirty``, ``env.host``,
    ``env.cpu_count``, ``env.gpus``, ``env.deterministic_ops``, ``env.devices``, ``env.packages.<name>``,
    ``env.data_files.<key>.sha256`` and ``env.training_switches.<switch>.in_effect``; {} when environment.json is
    missing or damaged (it is only provenance)."""
    try:
        environment = read_json(run_dir / ENVIRONMENT_FILE)
    except (OSError, ValueError):
        return {}
    if not isinstance(environment, dict):
        return {}
    out: Dict[str, Any] = {}
    for key in ENV_FIELDS:
        if key in environment:
            out[ENV_PREFIX + key] = _env_value(environment[key])
    if "git" in environment:
        git = environment["git"] if isinstance(environment["git"], dict) else {}
        for key in ("commit", "dirty"):
            out[f"{ENV_PREFIX}git.{key}"] = _env_value(git.get(key))
    for section, leaf in (("packages", None), ("data_files", "sha256"), ("training_switches", "in_effect")):
        values = environment.get(section)
        for name, value in list(values.items())[:MAX_ENV_ITEMS] if isinstance(values, dict) else ():
            if leaf is not None:
                value = value.get(leaf) if isinstance(value, dict) else None
            out[f"{ENV_PREFIX}{section}.{name}" + (f".{leaf}" if leaf else "")] = _env_value(value)
    return out


MAX_ENV_ITEMS = 200  # packages or data files of one environment.json: ktk writes about 15 and 2


def _env_value(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v)[:200] for v in value[:MAX_ENV_ITEMS])
    return str(value)[:500]


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
        scored = [t for t in self.trials if t.get("status") == "completed" and is_finite(t.get("score"))]
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
            text = f"{self.kind} in [{tables.format_value(self.low)}, {tables.format_value(self.high)}]"
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
        return (f"the best value {tables.format_value(self.best)} is at the {self.edge} edge of the searched range "
                f"(near {tables.format_value(bound)}): consider widening the range")


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
        parameter.edge = range_edge(parameter)
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


def range_edge(parameter: Parameter) -> Optional[str]:
    """"low" or "high" when the parameter's best value sits at that edge of its searched range, else None."""
    value = parameter.best
    if parameter.kind == "choice":
        numeric = [c for c in parameter.choices or [] if is_number(c)]
        if len(numeric) < 3 or len(numeric) != len(parameter.choices or []) or not is_number(value):
            return None  # two choices are both edges; unordered (text) choices have none
        return "low" if value == min(numeric) else "high" if value == max(numeric) else None
    if parameter.kind == "unknown":
        return None  # without the searched range there is no edge to speak of
    low, high = parameter.low, parameter.high
    if not all(is_number(v) and math.isfinite(v) for v in (value, low, high)) or high <= low:
        return None
    if parameter.log and low > 0 and value > 0:
        low, high, value = math.log(low), math.log(high), math.log(value)
    position = (value - low) / (high - low)
    return "low" if position <= EDGE_FRACTION else "high" if position >= 1 - EDGE_FRACTION else None


def read_sweep(sweep_dir: Union[str, Path]) -> Sweep:
    """Reads a sweep directory's config.yaml and trials.csv.

    Raises:
        ValueError: when config.yaml or trials.csv is missing or damaged.
    """
    sweep_dir = Path(sweep_dir)
    config, _ = _config_of(sweep_dir)
    path = sweep_dir / TRIALS_FILE
    try:
        header, trials, skipped = read_trials_table(sweep_dir)
    except FileNotFoundError:
        raise ValueError(f"no {TRIALS_FILE}") from None
    except ValueError as error:
        raise ValueError(f"{TRIALS_FILE} cannot be read ({error})") from None
    except OSError as error:
        raise ValueError(f"{TRIALS_FILE} cannot be read ({error.strerror or error})") from None
    warnings = []
    if skipped:
        lines = ", ".join(map(str, skipped[:5])) + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else "")
        warnings.append(f"{path}: {len(skipped)} line(s) with a wrong number of fields (half-written?) skipped: "
                        f"line {lines}")
    for trial in trials:
        trial.setdefault("status", "")
    metric_prefixes = tuple(s + "." for s in SPLITS)
    parameters = [c for c in header if c not in TRIAL_COLUMNS and not c.startswith(metric_prefixes)]
    return Sweep(sweep_dir, config, trials, parameters, warnings)


DEPTH_PARAMETER = DEPTH_PATH  # a sweep helper, not a config key: model.hidden cut or extended to it
MAX_DEPTH = 10_000


def trial_entries(sweep: Sweep, label: str) -> List[Entry]:
    """One entry per trial: the sweep's config with the trial's searched values applied."""
    base = {k: v for k, v in sweep.config.items() if k != "search"}
    entries = []
    for trial in sweep.trials:
        config = copy.deepcopy(base)
        depth = trial.get(DEPTH_PARAMETER)
        hidden = config.get("model", {}).get("hidden") if isinstance(config.get("model"), dict) else None
        # as toolkit.search applies it (a depth beyond any real network is a damaged cell, not a list to build)
        if isinstance(depth, int) and 0 <= depth <= MAX_DEPTH and isinstance(hidden, list) and hidden:
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
            kind=TRIAL,
            path=sweep.path,
            config=flat,
            metrics=metrics,
            status=trial["status"] or "unknown",
            trial_id=trial["trial_id"],
            **_counts(trial, epochs="epochs", duration="duration_s"),
            message=str(trial.get("message") or ""),
            nested=config,
        ))
    return entries


# ------------------------------------------------------------------------------------ discovery


@dataclass
class Found:
    runs: List[Path] = field(default_factory=list)
    sweeps: List[Path] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    unfinished: List[Path] = field(default_factory=list)  # run directories without metrics.json (skipped)


def result_dirs(paths: Union[str, Path, Sequence[Union[str, Path]]]) -> List[Path]:
    """Every run and sweep directory under `paths` (unfinished runs included): where a command that reads
    them must never write (:func:`toolkit.results.check_outside`).

    Raises:
        UserError: as :func:`find`.
    """
    found = find([paths] if isinstance(paths, (str, Path)) else paths)
    return found.runs + found.sweeps + found.unfinished


def find(paths: Sequence[Union[str, Path]]) -> Found:
    """Run and sweep directories under `paths` (searched recursively), in a stable order.

    Raises:
        UserError: for a path that does not exist or is a file that is not a result file.
    """
    found = Found()
    seen: set = set()
    for given in paths:
        path = Path(given)
        if not path.is_dir() and path.exists():
            if path.name not in (METRICS_FILE, CONFIG_FILE, TRIALS_FILE):
                raise UserError("not a run or sweep directory", where="PATH", received=str(path),
                                expected="a run directory, a sweep directory or a folder holding them")
            path = path.parent
        elif not path.is_dir():
            raise UserError("path not found", where="PATH", received=str(path),
                            expected="a run directory, a sweep directory or a folder holding them")
        _walk(path, found, seen)
    return found


def _walk(top: Path, found: Found, seen: set) -> None:
    """Adds the run and sweep directories at or below `top`, depth first in name order (no recursion: a tree of
    any depth is walked)."""
    pending = [top]
    while pending:
        directory = pending.pop()
        try:
            info = os.stat(directory)
            if (info.st_dev, info.st_ino) in seen:  # the same folder given twice, or reached through a link
                continue
            seen.add((info.st_dev, info.st_ino))
            with os.scandir(directory) as scan:
                items = list(scan)
        except OSError as error:
            found.warnings.append(f"{directory}: cannot be read ({error.strerror}); skipped")
            continue
        names = {item.name for item in items}
        if CONFIG_FILE in names and (TRIALS_FILE in names or SWEEP_MARKER in names):  # a sweep, even before trials.csv
            found.sweeps.append(directory)
        elif METRICS_FILE in names:
            found.runs.append(directory)
        elif CONFIG_FILE in names and names & {HISTORY_FILE, ENVIRONMENT_FILE, MODEL_FILE}:
            found.warnings.append(f"{directory}: no {METRICS_FILE} (unfinished or failed run); skipped")
            found.unfinished.append(directory)
        else:
            subdirs = sorted((item.name for item in items if not item.name.startswith(".")
                              and item.name not in _SKIP_DIRS and _is_dir(item)), reverse=True)
            pending.extend(directory / name for name in subdirs)  # reversed: popped in name order


def _is_sweep(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file() and ((path / TRIALS_FILE).is_file() or (path / SWEEP_MARKER).exists())


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
    retrained_dirs = {run.resolve() for sweep in found.sweeps for run in _retrained(sweep)}
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
            try:
                trials = trial_entries(sweep, labels[directory])
            except RecursionError:  # parameter paths thousands of keys deep: a damaged header
                warnings.append(f"{directory}: {TRIALS_FILE} names parameters nested too deeply; skipped")
                continue
            warnings.extend(sweep.warnings)
            rows.extend(trials)
            for run_dir, kind in _retrained(directory).items():
                if not (run_dir / METRICS_FILE).exists():
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


def _retrained(sweep_dir: Path) -> Dict[Path, str]:
    """The run directories a sweep retrained, by kind: best/ and each top/trial_<id>/ (those that exist)."""
    runs = {sweep_dir / BEST_DIR: BEST}
    try:
        with os.scandir(sweep_dir / TOP_DIR) as scan:
            runs.update({Path(item.path): TOP for item in sorted(scan, key=lambda i: i.name) if _is_dir(item)})
    except OSError:  # no top/ (retrain_top 1), or not a readable folder
        pass
    return runs


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
    config_keys = [k for k in _ordered_union(e.config for e in found) if k not in ROW_COLUMNS]
    implied = spell_out_items(found, config_keys)
    records = [row(e) for e in found]
    columns = _column_order(records, config_keys)
    frame = pd.DataFrame.from_records(records, columns=columns)

    used = set()
    for text in filters:
        column, mask = _filter_mask(frame, text)
        used.add(column)
        frame = frame[mask]
    if sort is not None:
        column, descending = _sort_column(frame, sort)
        used.add(column)
        # numbers before text (a batch size of 64 and one of "full"), in order; missing values last
        frame = frame.sort_values(column, ascending=not descending, na_position="last", kind="stable",
                                  key=lambda series: series.map(_sort_key))
    if top is not None:
        if isinstance(top, bool) or not isinstance(top, int) or top < 1:
            raise UserError(where="--top", expected="a positive number of rows", received=top)
        frame = frame.head(top)

    keep = [c for c in frame.columns if _keep(frame[c], c, config_keys, all_params, used)
            and (all_params or c in used or c not in implied)]
    frame = frame[keep].reset_index(drop=True)
    frame.attrs["warnings"] = warnings
    return frame


def spell_out_items(found: Sequence[Entry], config_keys: Sequence[str]) -> Set[str]:
    """Gives every row the list items a sweep searched (``model.hidden.0``), and says which lists they spell out.

    A sweep that searched ``model.hidden.0`` has that column for its trials; a run (or the sweep's
    ``best/``) has only the whole list, ``model.hidden: [32]``. Rows without the item column get it from
    their list, so the searched value can be sorted and filtered on in every row.

    Returns:
        The list columns (``model.hidden``) that the item columns spell out completely in every row: they
        say nothing more, and the tables leave them out (``all_params`` shows them).
    """
    items: Dict[str, Set[int]] = {}
    for key in config_keys:
        parent, _, index = key.rpartition(".")
        if parent in config_keys and re.fullmatch(r"[0-9]{1,6}", index):
            items.setdefault(parent, set()).add(int(index))
    implied = set()
    for parent, indices in items.items():
        spelled_out = True
        for entry in found:
            try:
                value = get_path(entry.nested, parent)
            except KeyError:
                continue  # no such list in this row: nothing to spell out
            if not isinstance(value, list) or set(range(len(value))) - indices:
                spelled_out = False  # not a list, or items no column shows (model.depth searched too)
                continue
            for index in indices:
                key = f"{parent}.{index}"
                if key not in entry.config and index < len(value):
                    item = value[index]
                    entry.config[key] = compact(item) if isinstance(item, (list, tuple, Mapping)) else item
        if spelled_out:
            implied.add(parent)
    return implied


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
    environment = [c for c in present if c.startswith(ENV_PREFIX) and c not in config_keys]
    return ["run", *META_COLUMNS, *config_keys, *metric_columns, *gap, *tail, *environment, *LOCATION_COLUMNS]


def _keep(column, name: str, config_keys: List[str], all_params: bool, used: set) -> bool:
    if name in used or name == "run" or name in LOCATION_COLUMNS:
        return True
    if name in META_COLUMNS or name in config_keys:
        return all_params or _differs(column)
    if name.startswith(ENV_PREFIX):
        return all_params  # provenance: shown when asked for (a field no run has, as an empty column)
    return column.notna().any()  # metrics: drop a split no row has (e.g. test for trials)


def _differs(column) -> bool:
    values = {_hashable(v) for v in column}
    return len(values) > 1


def _hashable(value: Any) -> Any:
    if is_missing(value):
        return ("missing",)
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return ("bool", bool(value))
    if isinstance(value, numbers.Real):
        return ("number", float(value))
    return ("text", str(value))


# ------------------------------------------------------------------------------- sort and filter

OPERATORS = ("==", "!=", ">", ">=", "<", "<=")
_FILTER = re.compile(r"^\s*(?P<column>[^<>=!\s]+?)\s*(?P<op>==|!=|>=|<=|>|<|=)\s*(?P<value>.*?)\s*$")
_FILTER_FORM = "COLUMN OP VALUE, e.g. 'model.dropout>0.1' or 'status==completed', with OP one of the valid choices"


def _column_error(flag: str, column: str, frame) -> UserError:
    return UserError("unknown column", where=flag, received=column, choices=list(frame.columns))


def _sort_column(frame, sort: str) -> Tuple[str, bool]:
    descending = sort.startswith("-")
    column = sort[1:] if descending else sort
    if not column.strip():
        raise UserError(where="--sort", expected="a column name, with a leading '-' to sort in descending order",
                        received=sort, choices=list(frame.columns))
    if column not in frame.columns:
        raise _column_error("--sort", column, frame)
    return column, descending


def column_kind(series) -> str:
    """What a table column holds, in words: "numbers", "text", "true/false", "numbers and text" or "no values"."""
    cells = [v for v in series if not is_missing(v)]
    has_numbers = any(is_number(v) for v in cells)
    others = [v for v in cells if not is_number(v)]
    if not cells:
        return "no values"
    if not others:
        return "numbers"
    if has_numbers:
        return "numbers and text"
    return "true/false" if all(isinstance(v, bool) or type(v).__name__ == "bool_" for v in others) else "text"


def _filter_mask(frame, text: str):
    import pandas as pd

    match = _FILTER.match(text)
    if not match:
        raise UserError(where="--filter", expected=_FILTER_FORM, received=text, choices=OPERATORS)
    column, op, raw = match.group("column"), match.group("op"), match.group("value")
    if op == "=":
        raise UserError("'=' is not an operator (did you mean '=='?)", where="--filter", expected=_FILTER_FORM,
                        received=text, choices=OPERATORS)
    if raw[:1] in ("=", "<", ">"):  # 'x===1', 'x>=>1': a mistyped operator, not a value
        raise UserError(f"the value after '{op}' starts with '{raw[0]}'", where="--filter", expected=_FILTER_FORM,
                        received=text, choices=OPERATORS)
    if column not in frame.columns:
        raise _column_error("--filter", column, frame)
    value = parse_cell(raw.strip("'\""), words=True)
    series = frame[column]
    kind = column_kind(series)
    is_a_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if op not in ("==", "!="):
        if not is_a_number:
            raise UserError(where="--filter", expected=f"a number after '{op}'", received=raw)
        if kind in ("text", "true/false"):
            raise UserError(f"column {column!r} holds {kind}, so '{op}' cannot compare it with the number {raw}",
                            where="--filter", expected=f"a column of numbers for {' '.join(OPERATORS[2:])}",
                            received=text)
    elif value is not None and kind == "numbers" and not is_a_number:
        raise UserError(f"column {column!r} holds numbers, so it never equals {raw!r}", where="--filter",
                        expected=f"a number after '{op}'", received=text)
    elif value is not None and kind == "true/false" and not isinstance(value, bool):
        raise UserError(f"column {column!r} holds true/false, so it never equals {raw!r}", where="--filter",
                        expected=f"true or false after '{op}'", received=text)
    if is_a_number and kind not in ("text", "true/false"):
        numbers = pd.to_numeric(series.map(lambda v: v if is_number(v) else None), errors="coerce")
        compare = {"==": numbers.__eq__, "!=": numbers.__ne__, ">": numbers.__gt__, ">=": numbers.__ge__,
                   "<": numbers.__lt__, "<=": numbers.__le__}[op]
        return column, compare(value).fillna(False).astype(bool)
    text_value = compact(value) if value is not None else ""
    equal = series.map(lambda v: _cell_text(v) == text_value)
    return column, equal if op == "==" else ~equal


def _sort_key(value: Any) -> Any:
    if is_missing(value):
        return None
    return (0, float(value), "") if is_number(value) else (1, 0.0, compact(value))


def _cell_text(value: Any) -> str:
    return "" if is_missing(value) else compact(value)


# ---------------------------------------------------------------------------------------- render


def render(df, fmt: str = "table", width: Optional[int] = None) -> str:
    """The table as text in one of :data:`FORMATS`.

    ``csv`` and ``json`` keep every column at full precision (``json`` is a list of records, missing
    values as null); ``table``, ``markdown`` and ``html`` round numbers for reading and leave out the
    ``path`` and ``trial_id`` columns. Text from the results is escaped in ``markdown`` and ``html``.

    Args:
        df: a table from :func:`compare`.
        fmt: the format.
        width: for ``table``, the terminal's width: long names and values are abbreviated and columns
            that do not fit are wrapped into blocks below (see :func:`toolkit.tables.text_table`).
    """
    if fmt not in FORMATS:
        raise UserError(where="--format", expected="a table format", received=fmt, choices=FORMATS)
    if fmt == "csv":
        return df.to_csv(index=False)
    if fmt == "json":
        records = [{str(k): tables.json_value(v) for k, v in r.items()} for r in df.to_dict(orient="records")]
        return json.dumps(records, indent=2, allow_nan=False) + "\n"
    header, cells, numeric = table_cells(df)
    if fmt == "table":
        return tables.text_table(header, cells, numeric, width=width)
    if fmt == "markdown":
        return tables.markdown_table(header, cells, numeric)
    return tables.html_page("ktk compare", [tables.html_table(header, cells, numeric)])


def table_cells(df) -> Tuple[List[str], List[List[str]], List[bool]]:
    """The header, the formatted cells and which columns are numeric, for a table to read (no locations)."""
    shown = df[[c for c in df.columns if c not in LOCATION_COLUMNS]]
    header = [str(c) for c in shown.columns]
    cells = [[tables.format_value(v) for v in values] for values in shown.itertuples(index=False, name=None)]
    numeric = [tables.is_numeric_column(shown[c]) for c in shown.columns]
    return header, cells, numeric


# ---------------------------------------------------------------------------------------- helpers


def _config_of(folder: Path) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """The folder's config.yaml, nested and flattened; ValueError saying what is wrong with it."""
    path = folder / CONFIG_FILE
    try:
        nested = read_config(path)
        return nested, flatten(nested)
    except FileNotFoundError:
        raise ValueError(f"no {CONFIG_FILE}") from None
    except (yaml.YAMLError, ValueError, UserError) as error:
        raise ValueError(f"{CONFIG_FILE} cannot be read ({first_line(error)})") from None
    except RecursionError:
        raise ValueError(f"{CONFIG_FILE} cannot be read (nested too deeply)") from None
    except OSError as error:
        raise ValueError(f"{CONFIG_FILE} cannot be read ({error.strerror or error})") from None


def _int_or_none(value: Any) -> Optional[int]:
    return int(value) if is_number(value) and math.isfinite(value) else None


def _float_or_none(value: Any) -> Optional[float]:
    return float(value) if is_number(value) else None

