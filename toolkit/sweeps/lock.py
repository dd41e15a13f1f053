"""The sweep lock: a second ``ktk tune`` on a directory is refused while the first one works on it.

The lock is a small JSON file (pid, host, start time) created exclusively. A lock left by a process that no
longer exists on this machine is taken over; one from another machine is respected. In a distributed sweep
each process locks its own tuner id (``.lock.<tuner id>``), so the chief and its workers share the directory
while a plain ``ktk tune`` is refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from toolkit.errors import UserError
from toolkit.results import make_dir
from toolkit.results import utc_now

LOCK_FILE = ".lock"


def lock_path(sweep_dir: Path, tuner_id: Optional[str] = None) -> Path:
    """``.lock`` for a one-process sweep, ``.lock.<tuner id>`` for a process of a distributed one."""
    return Path(sweep_dir) / (LOCK_FILE if tuner_id is None else f"{LOCK_FILE}.{tuner_id}")


def is_lock_file(name: str) -> bool:
    """Whether a file name is a sweep lock (or one being written or taken over)."""
    return name == LOCK_FILE or name.startswith(LOCK_FILE + ".")


class SweepLock:
    """Holds a sweep directory for this process (a context manager; creates the directory).

    Args:
        sweep_dir: the sweep directory.
        tuner_id: None for a one-process sweep, which excludes every other process; else this process's id
            in a distributed sweep, which excludes only a one-process sweep and another process of that id.
    """

    def __init__(self, sweep_dir: Path, tuner_id: Optional[str] = None):
        self.dir = Path(sweep_dir)
        self.tuner_id = tuner_id
        self.path = lock_path(self.dir, tuner_id)
        self.owned = False

    def check_free(self) -> None:
        """Refuses now, without writing anything, if a running process holds the directory.

        Raises:
            UserError: naming that process.
        """
        if self.dir.is_dir():
            for other in [*self._others(), self.path]:
                self._refuse_if_alive(other)

    def __enter__(self) -> "SweepLock":
        make_dir(self.dir)
        for other in self._others():
            self._refuse_if_alive(other)
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._refuse_if_alive(self.path)
                _remove_stale(self.path)
                continue
            except OSError as error:
                raise UserError(f"cannot create the sweep's lock file ({error.strerror or error})", where="--out",
                                received=str(self.dir)) from None
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(_me(self.tuner_id), handle)
            self.owned = True
            return self
        raise UserError("could not take the sweep's lock", received=str(self.path))

    def __exit__(self, *exc: Any) -> None:
        if self.owned:
            with contextlib.suppress(OSError, ValueError, AttributeError):
                if json.loads(self.path.read_text(encoding="utf-8")).get("pid") == os.getpid():
                    self.path.unlink()
            self.owned = False

    def _others(self) -> List[Path]:
        """Locks that exclude this one: a one-process sweep excludes all; a distributed process, a single one."""
        if self.tuner_id is None:
            return [p for p in self.dir.glob(LOCK_FILE + ".*") if not p.name.endswith(".tmp")
                    and ".stale-" not in p.name]
        return [lock_path(self.dir)]

    def _refuse_if_alive(self, path: Path) -> None:
        """Raises if `path` is held by a running process."""
        info = read_lock(path)
        if info is not None and holder_alive(info):
            where = f"pid {info.get('pid')} on {info.get('host')}"
            raise UserError(f"another sweep ({where}, started {info.get('started')}) is writing into this "
                            f"directory; wait for it to finish, or use another --out. If that process is "
                            f"gone, delete {path}", where="--out", received=str(self.dir))


def _remove_stale(path: Path) -> None:
    stale = path.with_name(f"{path.name}.stale-{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        os.replace(path, stale)  # atomic: two processes never both remove a fresh lock
        stale.unlink()


def _me(tuner_id: Optional[str]) -> Dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": utc_now(),
            "process_start": process_start(os.getpid()), "tuner_id": tuner_id}


def read_lock(path: Path) -> Optional[Dict[str, Any]]:
    """A lock's contents; None if there is none; an unreadable or damaged one reads as held by someone unknown."""
    for _ in range(3):
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (ValueError, OSError, RecursionError):
            time.sleep(0.1)  # being written right now
            continue
        if isinstance(info, dict):
            return info
        break
    return {"pid": None, "host": "?", "started": "?"}


def holder_alive(info: Dict[str, Any]) -> bool:
    """Whether the process that wrote a lock may still run (another machine's: assumed so)."""
    pid = info.get("pid")
    if info.get("host") != socket.gethostname() or not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    # The pid may have been reused by an unrelated process since.
    recorded = info.get("process_start")
    return recorded is None or recorded == process_start(pid)


def process_start(pid: int) -> Optional[str]:
    """When process `pid` started (clock ticks since boot, from /proc), to tell a reused pid; None if unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[19]
    except (OSError, IndexError):
        return None
