"""Test helpers shared by every test module: the repository root and the real command line in a subprocess.

Tests reach ktk through public names and these helpers, never through private attributes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Optional

REPO = Path(__file__).resolve().parents[1]


def subprocess_env(**extra: str) -> Dict[str, str]:
    """The environment for a ktk subprocess: this checkout first on PYTHONPATH, TensorFlow's C++ logging off."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    env.setdefault("KERAS_BACKEND", "tensorflow")
    env.update(extra)
    return env


def ktk(*args: Any, cwd: Optional[Path] = None, timeout: float = 300, **kwargs: Any) -> subprocess.CompletedProcess:
    """Runs ``python -m toolkit ARGS`` as a user would; returns the finished process (text output captured)."""
    return subprocess.run([sys.executable, "-m", "toolkit", *map(str, args)], capture_output=True, text=True,
                          env=subprocess_env(), cwd=cwd, timeout=timeout, **kwargs)
