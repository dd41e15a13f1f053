"""Where a run came from, as ``environment.json`` records it: code, data, packages and machine.

Everything here is best effort and bounded: a missing or slow ``git``, a data file that cannot be read, a
package that is not installed give ``None`` for that field, never a failed run. TensorFlow is imported only by
:func:`machine` (a run imports it anyway).
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

# ktk's direct dependencies, as pyproject.toml's [project] dependencies name them (a test keeps the two equal).
DIRECT_DEPENDENCIES = ("tensorflow", "keras", "keras-tuner", "tensorboard", "six", "grpcio", "protobuf", "numpy",
                       "scipy", "pandas", "pyarrow", "pyyaml", "pydantic", "scikit-learn", "matplotlib", "pillow")
# Distributions that install the same package under another name (TensorFlow's CPU-only build).
_ALTERNATIVES = {"tensorflow": ("tensorflow-cpu",)}
GIT_TIMEOUT_S = 5.0
_FILE_SOURCES = ("csv", "parquet", "npz", "images")  # images: a folder, hashed file by file
_MAX_FILES_IN_FOLDER = 10_000  # a parquet data set given as a folder: hashed file by file, up to this many


def package_versions() -> Dict[str, Optional[str]]:
    """{distribution name: installed version, or None} for each direct dependency (importlib.metadata)."""
    from importlib import metadata

    versions: Dict[str, Optional[str]] = {}
    for name in DIRECT_DEPENDENCIES:
        for candidate in (name, *_ALTERNATIVES.get(name, ())):
            try:
                versions[candidate] = metadata.version(candidate)
                break
            except metadata.PackageNotFoundError:
                continue
        else:
            versions[name] = None
    return versions


def git_state(folder: Optional[Path]) -> Optional[Dict[str, Any]]:
    """``{"commit", "dirty"}`` of the git repository holding `folder`; None when it is not in one (or git is
    missing, slow or fails). ``dirty``: tracked files differ from the commit (untracked files, such as the run
    directories themselves, do not count)."""
    if folder is None:
        return None
    commit = _git(folder, "rev-parse", "HEAD")
    if not commit:
        return None
    status = _git(folder, "status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def _git(folder: Path, *args: str) -> Optional[str]:
    try:
        done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True,
                              timeout=GIT_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def data_files(config: Any) -> Dict[str, Dict[str, Any]]:
    """{config key: {"path", "bytes", "sha256"}} of each data file the config names (``data.path``,
    ``data.test_path``); empty for the sklearn., synthetic. and keras. sources. A file that cannot be read
    has ``sha256`` None."""
    data = config.data
    if data.source not in _FILE_SOURCES:
        return {}
    files = {}
    for key, given in (("data.path", data.path), ("data.test_path", data.test_path)):
        if given:
            path = resolve_data_path(given, config.base_dir)
            files[key] = {"path": str(path.absolute()), **_digest(path)}
    return files


def resolve_data_path(given: str, base_dir: Path) -> Path:
    """A data path as the data loader finds it: relative to the config's folder, else to the current folder."""
    path = Path(given)
    if path.is_absolute():
        return path
    beside_config = base_dir / path
    try:
        return path if not beside_config.exists() and path.exists() else beside_config
    except (OSError, ValueError):
        return beside_config


def _digest(path: Path) -> Dict[str, Any]:
    """{"bytes", "sha256"} of a file, or of a folder's files (name and content of each, in name order)."""
    try:
        if path.is_dir():
            digest, total = hashlib.sha256(), 0
            files = sorted(p for p in path.rglob("*") if p.is_file())[:_MAX_FILES_IN_FOLDER]
            for file in files:
                size, hexdigest = _hash_file(file)
                total += size
                digest.update(f"{file.relative_to(path).as_posix()}\0{hexdigest}\n".encode("utf-8"))
            return {"bytes": total, "sha256": digest.hexdigest()}
        size, hexdigest = _hash_file(path)
        return {"bytes": size, "sha256": hexdigest}
    except (OSError, ValueError):
        return {"bytes": None, "sha256": None}


def _hash_file(path: Path) -> Tuple[int, str]:
    """(size, sha256) of a regular file, read in blocks (bounded memory); a FIFO or device is refused."""
    import stat

    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"not a regular file: {path}")
        digest, size = hashlib.sha256(), 0
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()


def machine() -> Dict[str, Any]:
    """Host name, CPU count, the GPUs TensorFlow sees, and whether op determinism is on (imports TensorFlow)."""
    from toolkit.hardware.devices import gpu_names, op_determinism

    return {"host": socket.gethostname(), "cpu_count": os.cpu_count(), "gpus": gpu_names(),
            "deterministic_ops": op_determinism()}


def provenance(config: Any) -> Dict[str, Any]:
    """The provenance fields of environment.json: ``git``, ``data_files``, ``packages``, ``host``, ``cpu_count``,
    ``gpus``, ``deterministic_ops``."""
    folder = Path(config.source).resolve().parent if config.source else None
    return {"git": git_state(folder), "data_files": data_files(config), "packages": package_versions(),
            **machine()}
