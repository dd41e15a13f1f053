"""The sweep directory itself: what a folder is, what ``--overwrite`` may delete, the sweep's config.yaml.

Every sweep directory ktk creates gets a marker (``.ktk-sweep``) before anything else. ``--overwrite`` deletes
only the entries ktk writes into a sweep directory, and only in a folder with that marker: a folder holding
anything else, a run directory, or a sweep made before markers existed is refused with the reason, and
nothing is deleted. Every check here only reads; :func:`prepare` is the first write, after every check.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from toolkit.errors import UserError, show
from toolkit.results import (BEST_DIR, CONFIG_FILE, ENVIRONMENT_FILE, HISTORIES_DIR, HISTORY_FILE, LOGS_DIR,
                             METRICS_FILE, MODEL_FILE, RECORDS_DIR, RUN_MARKER, SWEEP_FILE, SWEEP_MARKER, TOP_DIR,
                             TRIALS_FILE, TUNER_DIR, atomic_write_text, write_json)
from toolkit.sweeps.lock import is_lock_file
from toolkit.results import utc_now

DEFAULT_SWEEPS_DIR = Path("sweeps")
TOP_RUN_PREFIX = "trial_"  # top/trial_<id>/
# Everything ktk writes at the top of a sweep directory (besides its locks and atomic writes' temporary files).
OWN_FILES = (SWEEP_MARKER, CONFIG_FILE, TRIALS_FILE, SWEEP_FILE)
OWN_DIRS = (RECORDS_DIR, HISTORIES_DIR, BEST_DIR, TOP_DIR, TUNER_DIR, LOGS_DIR)

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
    # an atomic write interrupted before its rename: .<name>.<random>.tmp
    return name.endswith(".tmp") and any(name.startswith(f".{own}.") for own in OWN_FILES)


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
        foreign = [name for name in entries(sweep_dir) if not is_own_entry(name)]
        if foreign:
            raise UserError(f"--overwrite deletes only what ktk wrote, and this sweep directory also holds "
                            f"{_listing(foreign)}; nothing was deleted. Move them out first, or use --out DIR for "
                            f"a new sweep", where="--out", received=str(sweep_dir))
    if not overwrite and kind in (SWEEP, UNMARKED_SWEEP):
        check_same_config(sweep_dir, config, spec)
    return kind


def _listing(names: List[str], most: int = 5) -> str:
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


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
        before = {k: v for k, v in stored.items() if k not in ("search", "name")}
        after = {k: v for k, v in resolved.items() if k not in ("search", "name")}
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
