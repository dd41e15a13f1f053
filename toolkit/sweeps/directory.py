"""The sweep directory itself: what a folder is, what ``--overwrite`` may delete, the sweep's config.yaml.

Every sweep directory ktk creates gets a marker (``.ktk-sweep``) before anything else. ``--overwrite`` deletes
only the entries ktk writes into a sweep directory, and only in a folder with that marker: a folder holding
anything else anywhere in its tree (a file of another name in ``best/``, a folder in ``tuner/``, a link), a run
directory, or a sweep made before markers existed is refused with the reason, and nothing is deleted. Every
check here only reads; :func:`prepare` is the first write, after every check.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from toolkit.errors import UserError, show
from toolkit.results import (BACKUP_DIR, BACKUP_FILE_PATTERN, BACKUP_KERAS_FILES, BACKUP_STATE_FILE, BEST_DIR,
                             CONFIG_FILE, ENVIRONMENT_FILE, HISTORIES_DIR, HISTORY_FILE, LOGS_DIR, METRICS_FILE,
                             MODEL_FILE, RECORDS_DIR, RUN_DIRS, RUN_FILES, RUN_MARKER, SPLIT_FILES, SPLITS_DIR,
                             SWEEP_FILE, SWEEP_MARKER,
                             TENSORBOARD_DIR, TOP_DIR, TRIALS_FILE, TUNER_DIR, atomic_write_text, write_json)
from toolkit.sweeps.lock import is_lock_file
from toolkit.results import utc_now

DEFAULT_SWEEPS_DIR = Path("sweeps")
TOP_RUN_PREFIX = "trial_"  # top/trial_<id>/
# Everything ktk writes at the top of a sweep directory (besides its locks and atomic writes' temporary files).
OWN_FILES = (SWEEP_MARKER, CONFIG_FILE, TRIALS_FILE, SWEEP_FILE)
OWN_DIRS = (RECORDS_DIR, HISTORIES_DIR, BEST_DIR, TOP_DIR, TUNER_DIR, LOGS_DIR, TENSORBOARD_DIR)

# What a folder given as a sweep directory is:
NEW = "new"  # absent, or empty (locks aside)
SWEEP = "sweep"  # a sweep directory with ktk's marker
UNMARKED_SWEEP = "unmarked sweep"  # a sweep made by a ktk without markers (config.yaml with tuner/ or records/)
RUN = "run"  # a run directory of `ktk run`
OTHER = "other"  # anything else: never written into, never deleted

PathLike = Union[str, Path]


def sweep_dir_for(config: Any, out_dir: Optional[PathLike]) -> Path:
    """``--out``, or ``sweeps/<name>`` by default.

    Raises:
        UserError: an empty ``--out`` (which would mean the current folder).
    """
    if out_dir is None:
        return DEFAULT_SWEEPS_DIR / config.name
    if not str(out_dir).strip():
        raise UserError(where="--out", expected="a directory path", received=str(out_dir))
    return Path(out_dir)


def top_run_dir(sweep_dir: Path, trial_id: Any) -> Path:
    """Where the retrained run of a next-best trial goes."""
    return sweep_dir / TOP_DIR / f"{TOP_RUN_PREFIX}{trial_id}"


def is_own_entry(name: str) -> bool:
    """Whether ktk writes an entry of this name at the top of a sweep directory."""
    if name in OWN_FILES or name in OWN_DIRS or is_lock_file(name):
        return True
    return _is_temporary(name, OWN_FILES.__contains__)


def _is_temporary(name: str, is_own_file: Any) -> bool:
    """An atomic write of an own file interrupted before its rename: ``.<name>.<random>.tmp``."""
    match = re.fullmatch(r"\.(.+)\.[A-Za-z0-9_]+\.tmp", name)
    return match is not None and bool(is_own_file(match.group(1)))


# ------------------------------------------------------------------ what ktk writes below the top of a sweep
# Each folder of a sweep directory holds only names of known patterns (docs/ARCHITECTURE.md, "Sweep directory"):
# records/<trial id>.json, histories/<trial id>.csv, best/ and top/trial_<trial id>/ (run directories), logs/
# (chief.json, workers.json, tuner<N>.log of local workers) and keras-tuner's project in tuner/: oracle.json,
# <tuner id>.json (always "{}": BaseTuner keeps no state) and trial_<trial id>/ with trial.json (and the
# checkpoint files keras-tuner's Tuner would add). Trial ids are keras-tuner's zero-padded counter (a 32-digit
# hash only for a Trial made without an id); tuner ids are "tuner0", "chief" or a worker id (toolkit.distributed).
_TRIAL_ID = r"(?:[0-9]{1,20}|[0-9a-f]{32})"
_TUNER_ID = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
_KERAS_TUNER_TRIAL_FILES = re.compile(r"trial\.json|build_config\.json|checkpoint(?:\.weights\.h5|\.index|"
                                      r"\.data-[0-9]+-of-[0-9]+)?")
# TensorBoard's event files (events.out.tfevents.<time>.<host>[.<pid>.<n>][.v2]) and the profiler's output
# (plugins/profile/<time>/<host>.xplane.pb, ...): ktk's tensorboard/ folders hold only these.
_EVENT_FILE = r"events\.out\.tfevents\.[0-9]+(\.[A-Za-z0-9_.-]+)?|[A-Za-z0-9_.-]+\.profile-empty"
_TB_NAME = r"[A-Za-z0-9_.-]{1,255}"
_MOST_CHECKED = 10_000_000  # entries: a sweep of a million trials has ~5 million


def _file_rule(pattern: str) -> Any:
    compiled = re.compile(pattern)
    return lambda name: compiled.fullmatch(name) is not None


# folder kind -> (which file names ktk writes there, {sub-folder pattern: its kind})
_LAYOUT: Dict[str, Tuple[Any, Dict[str, str]]] = {
    "sweep": (lambda name: name in OWN_FILES or is_lock_file(name),
              {RECORDS_DIR: "records", HISTORIES_DIR: "histories", BEST_DIR: "run", TOP_DIR: "top",
               TUNER_DIR: "tuner", LOGS_DIR: "logs", TENSORBOARD_DIR: "sweep tensorboard"}),
    "records": (_file_rule(_TRIAL_ID + r"\.json"), {}),
    "histories": (_file_rule(_TRIAL_ID + r"\.csv"), {}),
    "run": (RUN_FILES.__contains__, {**{re.escape(name): "tensorboard" for name in RUN_DIRS},
                                     re.escape(BACKUP_DIR): "backup",  # backup/: a run stopped before it finished
                                     re.escape(SPLITS_DIR): "splits"}),
    "splits": (SPLIT_FILES.__contains__, {}),
    "tensorboard": (_file_rule(_EVENT_FILE), {r"train|validation": "tensorboard", "plugins": "tensorboard plugins"}),
    "sweep tensorboard": (_file_rule(_EVENT_FILE), {r"trial_" + _TRIAL_ID: "tensorboard trial"}),
    "tensorboard trial": (_file_rule(_EVENT_FILE), {r"train|validation|execution[0-9]{1,6}": "tensorboard",
                                                    "plugins": "tensorboard plugins"}),
    "tensorboard plugins": (_file_rule(_TB_NAME), {_TB_NAME: "tensorboard plugins"}),
    "backup": (_file_rule("|".join([re.escape(BACKUP_STATE_FILE), *map(re.escape, BACKUP_KERAS_FILES),
                                    BACKUP_FILE_PATTERN])), {}),
    "top": (lambda name: False, {re.escape(TOP_RUN_PREFIX) + _TRIAL_ID: "run"}),
    "tuner": (_file_rule(rf"oracle\.json|{_TUNER_ID}\.json"), {r"trial_" + _TRIAL_ID: "tuner trial"}),
    "tuner trial": (_KERAS_TUNER_TRIAL_FILES.fullmatch, {}),
    "logs": (_file_rule(r"chief\.json|workers\.json|tuner[0-9]{1,6}\.log"), {}),
}


def foreign_entries(folder: Path, most: int = 5, run_dir: bool = False) -> List[str]:
    """The first `most` entries of a sweep directory's tree (or with `run_dir`, of a run directory) that ktk did
    not write, as paths relative to it, depth first in name order (a foreign folder is named, not entered). A
    link, a FIFO or a folder where ktk writes a file (or the other way round) is foreign too; a folder that cannot
    be read is named as foreign, since nothing in it can be vouched for.
    """
    found: List[str] = []
    pending: List[Tuple[Path, str, str]] = [(folder, "", "run" if run_dir else "sweep")]
    checked = 0
    while pending and len(found) < most:
        folder, relative, kind = pending.pop()
        is_file, folders = _LAYOUT[kind]
        try:
            with os.scandir(folder) as scan:
                items = sorted(scan, key=lambda item: item.name)
        except OSError as error:
            found.append(f"{relative or '.'} (cannot be read: {error.strerror or error})")
            continue
        below = []
        for item in items:
            checked += 1
            if checked > _MOST_CHECKED:
                found.append(f"{relative or '.'} (more entries than a sweep has)")
                return found
            path = f"{relative}{item.name}"
            sub_kind = next((k for pattern, k in folders.items() if re.fullmatch(pattern, item.name)), None)
            try:
                real_dir = item.is_dir(follow_symlinks=False)
                real_file = item.is_file(follow_symlinks=False)
            except OSError:
                real_dir = real_file = False
            if real_dir and sub_kind is not None:
                below.append((Path(item.path), path + "/", sub_kind))
            elif real_file and (_is_temporary(item.name, is_file) or is_file(item.name) and (
                    kind != "tuner" or item.name == "oracle.json" or _is_empty_state(Path(item.path)))):
                continue
            else:
                found.append(path + ("/" if real_dir else ""))
                if len(found) >= most:
                    break
        pending.extend(reversed(below))  # popped in name order
    return found


def check_replaceable_run(run_dir: Path, sweep_dir: Path) -> None:
    """Checks that a retrained run directory of a sweep (best/, top/trial_<id>/) holds only what ktk wrote, before
    it is deleted to be retrained again.

    Raises:
        UserError: it is a link or not a folder, or holds something else; nothing is deleted.
    """
    if run_dir.is_symlink() or not run_dir.is_dir():
        foreign = ["(a link)" if run_dir.is_symlink() else "(not a folder)"]
    else:
        foreign = foreign_entries(run_dir, most=6, run_dir=True)
    if foreign:
        shown = os.path.relpath(run_dir, sweep_dir)
        raise UserError(f"{shown}/ must be retrained, but ktk deletes only what it wrote, and it also holds "
                        f"{_listing(foreign, counted=False)}; nothing was deleted. Move them out and run ktk tune "
                        f"again", where="--out", received=str(sweep_dir))


def _is_empty_state(path: Path) -> bool:
    """Whether a tuner/<tuner id>.json holds keras-tuner's empty tuner state ("{}"), as every one ktk makes does."""
    try:
        with open(path, "rb") as handle:
            return handle.read(64).strip() == b"{}"
    except OSError:
        return False


def entries(path: Path) -> List[str]:
    """The names in a folder, locks left out, sorted; [] when it does not exist.

    Raises:
        UserError: it cannot be read.
    """
    try:
        if not path.is_dir():
            return []
        return sorted(p.name for p in path.iterdir() if not is_lock_file(p.name))
    except OSError as error:
        raise UserError(f"cannot read the directory ({error.strerror or error})", where="--out",
                        received=str(path)) from None


def kind_of(path: Path) -> str:
    """What `path` is: :data:`NEW`, :data:`SWEEP`, :data:`UNMARKED_SWEEP`, :data:`RUN` or :data:`OTHER`.

    Raises:
        UserError: it is not a directory, or cannot be read.
    """
    try:
        exists, is_dir = path.exists(), path.is_dir()
        if not exists:
            _check_creatable(path)
    except OSError as error:  # e.g. a name too long
        raise UserError(f"cannot use this path ({error.strerror or error})", where="--out",
                        received=str(path)) from None
    if exists and not is_dir:
        raise UserError("this is a file, not a directory", where="--out",
                        expected="a new or empty directory, or an existing sweep", received=str(path))
    if exists and not os.access(path, os.W_OK | os.X_OK):
        raise UserError("the directory is not writable", where="--out", received=str(path))
    names = set(entries(path))
    if not names:
        return NEW
    if SWEEP_MARKER in names:
        return SWEEP
    if RUN_MARKER in names or METRICS_FILE in names or (
            CONFIG_FILE in names and names & {HISTORY_FILE, MODEL_FILE, ENVIRONMENT_FILE}):
        return RUN
    if CONFIG_FILE in names and names & {TUNER_DIR, RECORDS_DIR}:
        return UNMARKED_SWEEP
    return OTHER


def _check_creatable(path: Path) -> None:
    """Raises if `path` (absent) could not be created: a part of it is a file, or its folder is not writable."""
    parent = path.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"cannot use this path ({parent} is a file, not a directory)", where="--out",
                        received=str(path))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"cannot create the directory ({parent} is not writable)", where="--out",
                        received=str(path))


def check(sweep_dir: Path, config: Any, spec: Any, *, overwrite: bool) -> str:
    """Checks that a sweep of `config` may start or resume in `sweep_dir`; only reads. Returns :func:`kind_of`.

    Raises:
        UserError: a file, a run directory, a folder that is neither new nor a sweep, ``--overwrite`` of a folder
            ktk cannot vouch for, or (resuming) a changed search or config.
    """
    kind = kind_of(sweep_dir)
    if kind == RUN:
        raise UserError("this is a run directory (made by ktk run), not a sweep directory; give --out a new or "
                        "empty directory, or the directory of a sweep to resume", where="--out",
                        received=str(sweep_dir))
    if kind == OTHER:
        shown = _listing(entries(sweep_dir))
        if overwrite:
            raise UserError(f"--overwrite deletes only sweep directories made by ktk, and this folder is not one "
                            f"(it holds {shown}); nothing was deleted. Use --out DIR for a new sweep",
                            where="--out", received=str(sweep_dir))
        raise UserError(f"this folder is not empty and holds no sweep (it holds {shown}); a sweep needs a new or "
                        f"empty directory", where="--out", received=str(sweep_dir))
    if overwrite and kind == UNMARKED_SWEEP:
        raise UserError(f"this sweep was made by an older ktk that did not mark its directories ({SWEEP_MARKER}), "
                        f"so --overwrite cannot tell its files from others and deletes nothing; delete the folder "
                        f"yourself, or use --out DIR for a new sweep", where="--out", received=str(sweep_dir))
    if overwrite and kind == SWEEP:
        foreign = foreign_entries(sweep_dir, most=6)
        if foreign:
            raise UserError(f"--overwrite deletes only what ktk wrote, and this sweep directory also holds "
                            f"{_listing(foreign, counted=False)}; nothing was deleted. Move them out first, or use "
                            f"--out DIR for a new sweep", where="--out", received=str(sweep_dir))
    if not overwrite and kind in (SWEEP, UNMARKED_SWEEP):
        check_same_config(sweep_dir, config, spec)
    return kind


def _listing(names: List[str], most: int = 5, counted: bool = True) -> str:
    shown = ", ".join(names[:most])
    if len(names) <= most:
        return shown
    return shown + (f" and {len(names) - most} more" if counted else " and more")


def prepare(sweep_dir: Path, config: Any, spec: Any, *, overwrite: bool, write_config: bool = True) -> None:
    """Makes `sweep_dir` ready (the caller holds its lock): checks it again, empties it for ``--overwrite``,
    marks a new sweep directory, and writes (or updates) its config.yaml.

    Raises:
        UserError: as :func:`check`.
    """
    kind = check(sweep_dir, config, spec, overwrite=overwrite)
    if overwrite and kind == SWEEP:
        for name in entries(sweep_dir):
            _delete(sweep_dir / name)
        kind = NEW
    if kind == NEW:
        write_json(sweep_dir / SWEEP_MARKER, {"made_by": "ktk tune", "created": utc_now()})  # first, always
    if write_config:
        resolved = sweep_config_dict(config, spec)
        path = sweep_dir / CONFIG_FILE
        if kind == NEW or not path.is_file() or _read_stored(path).get("search") != resolved["search"]:
            # (a resumable setting such as max_trials changed: the sweep goes on with the new one)
            atomic_write_text(path, _dump(resolved))


def _delete(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


# ------------------------------------------------------------------------------------------ config.yaml


def sweep_config_dict(config: Any, spec: Any) -> Dict[str, Any]:
    """The sweep's config.yaml: the resolved config with its normalized search section (every default filled)."""
    resolved = config.to_dict()
    resolved["search"] = spec.to_dict()
    return resolved


def _dump(data: Dict[str, Any]) -> str:
    from toolkit.config import dump_yaml

    return dump_yaml(data)


def _read_stored(path: Path) -> Dict[str, Any]:
    from toolkit.config import read_yaml_file

    try:
        stored = read_yaml_file(path)
    except UserError as error:
        raise UserError(f"the sweep's config.yaml cannot be read ({error}); start over with --overwrite, or use "
                        f"--out DIR for a new sweep", where="--out", received=str(path.parent)) from None
    if not isinstance(stored, dict):
        raise UserError("the sweep's config.yaml is not a config; start over with --overwrite, or use --out DIR "
                        "for a new sweep", where="--out", received=str(path.parent))
    return stored


def check_same_config(sweep_dir: Path, config: Any, spec: Any) -> None:
    """Refuses to resume a sweep whose search (or base config) changed; resumable settings may change.

    Raises:
        UserError: naming what changed.
    """
    from toolkit.config import parse_config
    from toolkit.search import parse_search

    path = sweep_dir / CONFIG_FILE
    if not path.is_file():
        return  # marked, but stopped before its config was written: nothing to compare with
    stored = _read_stored(path)
    try:
        stored_spec = parse_search(parse_config(stored, source=str(path)))
    except UserError as error:
        raise UserError(f"the sweep's config.yaml is not a valid sweep config ({error}); start over with "
                        f"--overwrite, or use --out DIR for a new sweep", where="--out",
                        received=str(sweep_dir)) from None
    changes = [text for _, text in differences(stored_spec.identity(), spec.identity(), "search")]
    what = "search"
    if not changes:
        what = "config"
        resolved = sweep_config_dict(config, spec)
        # (tracking: where results are also recorded does not change what a trial computes)
        before = {k: v for k, v in stored.items() if k not in ("search", "name", "tracking")}
        after = {k: v for k, v in resolved.items() if k not in ("search", "name", "tracking")}
        changes = [text for _, text in differences(before, after)]
    if changes:
        shown = "; ".join(changes[:3]) + ("; ..." if len(changes) > 3 else "")
        raise UserError(
            f"the {what} changed since this sweep started ({shown}); its trials would not be comparable. "
            f"Use --overwrite to start over, or --out DIR for a new sweep",
            where="search" if what == "search" else None, file=config.source, received=str(sweep_dir))


def differences(before: Any, after: Any, prefix: str = "") -> List[Tuple[str, str]]:
    """(dot path, what changed) for every place two plain config dicts differ, in the order of their keys."""
    if isinstance(before, dict) and isinstance(after, dict):
        out: List[Tuple[str, str]] = []
        for key in list(before) + [k for k in after if k not in before]:
            path = f"{prefix}.{key}" if prefix else str(key)
            if key not in after:
                out.append((path, f"{path} removed"))
            elif key not in before:
                out.append((path, f"{path} added: {show(after[key])}"))
            else:
                out.extend(differences(before[key], after[key], path))
        return out
    if before != after:
        return [(prefix or "(whole config)", f"{prefix} was {show(before)}, now {show(after)}")]
    return []
