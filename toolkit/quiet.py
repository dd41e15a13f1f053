"""A quiet TensorFlow start: the log lines TensorFlow's C++ code writes while it is imported are hidden.

``import tensorflow`` writes lines such as::

    WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
    I0000 00:00:1796287418.196832   14940 cpu_feature_guard.cc:227] This TensorFlow binary is optimized ...
    To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow with ...

straight to file descriptor 2, and some builds ignore ``TF_CPP_MIN_LOG_LEVEL`` for them. They bypass
``sys.stderr``, so Python cannot filter them: while TensorFlow's package runs its ``__init__``, fd 2 is
pointed at a temporary file, and afterwards everything written there is replayed except those start-up
lines (a Python warning raised during the import still shows).

Every process ktk starts that may import TensorFlow calls :func:`quiet_tensorflow` once, early: the
command line, sweep trial workers and distributed workers; an interpreter started without ktk's command line
(the fork server of sweep trial workers, which imports TensorFlow first thing) imports :mod:`toolkit.quiet_start`.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from typing import Any, Iterator, Optional

# The lines TensorFlow writes while it starts: absl's notice, absl/glog-formatted log lines
# ("I0000 00:00:1796287418.196832   14940 cpu_feature_guard.cc:227] ..."), and the second line of the
# cpu_feature_guard message.
_STARTUP_LINE = re.compile(
    rb"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    rb"|[IWE]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ [\w./-]+:\d+\] .*"
    rb"|To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags\.)\r?$"
)


VERBOSE_ENV = "KTK_VERBOSE_TENSORFLOW"  # set by a verbose process for the interpreters it starts


def quiet_tensorflow(verbose: bool = False) -> None:
    """Makes this process's first ``import tensorflow`` quiet, wherever it happens (e.g. inside ``import keras``).

    Imports nothing itself, so it costs nothing in commands that never train. Does nothing when
    TensorFlow is already imported, or with `verbose` (the start-up lines then show, as do TensorFlow's
    C++ logs at ``TF_CPP_MIN_LOG_LEVEL``'s default).

    Args:
        verbose: show TensorFlow's start-up lines and its C++ logs (``-v``/``--verbose``).
    """
    if verbose:
        os.environ[VERBOSE_ENV] = "1"  # for the interpreters this process starts (quiet_start)
        return
    if "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's C++ logs after the start, where honoured
    if not any(isinstance(finder, _QuietImportFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _QuietImportFinder())


def without_startup_lines(text: bytes) -> bytes:
    """`text` (what was written to stderr during the import) less TensorFlow's start-up lines."""
    kept = [line for line in text.splitlines(keepends=True) if not _STARTUP_LINE.match(line.rstrip(b"\n"))]
    return b"".join(kept)


class _QuietImportFinder:
    """A meta path finder that finds nothing itself: on the import of ``tensorflow``, wraps the real loader
    so that its ``exec_module`` runs with the start-up lines hidden. Removes itself after that one import.
    (Duck-typed rather than an ``importlib.abc`` subclass: importing that costs ``ktk --help`` 8 ms.)"""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Optional[Any]:
        if name != "tensorflow":
            return None
        import importlib.util

        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _QuietLoader(spec.loader)
        return spec


class _QuietLoader:
    def __init__(self, loader: Any):
        self.loader = loader

    def create_module(self, spec: Any) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        module.__spec__.loader = module.__loader__ = self.loader  # the package sees its own loader
        with _startup_lines_hidden():
            self.loader.exec_module(module)
            _find_gpus(module)


def _find_gpus(tensorflow: Any) -> None:
    """Lets TensorFlow look for GPUs now, while its lines are hidden: a CUDA build on a machine without a
    GPU logs "failed call to cuInit" the first time it looks. (Listing physical devices does not start the
    runtime, so logical devices and distribution strategies can still be set up after.)"""
    with contextlib.suppress(Exception):
        tensorflow.config.list_physical_devices("GPU")


@contextlib.contextmanager
def _startup_lines_hidden() -> Iterator[None]:
    """fd 2 goes to a temporary file (a pipe could fill up and block) and is replayed, filtered, after."""
    import tempfile

    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no stderr to redirect: nothing to hide either
        yield
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(OSError, ValueError, AttributeError):
                sys.stderr.flush()  # Python's own writes during the import belong to the capture
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = without_startup_lines(capture.read())
            while kept:
                kept = kept[os.write(2, kept):]
