"""Test helpers shared by every test module: the repository root and the real command line in a subprocess.

Tests reach ktk through public names and these helpers, never through private attributes.
"""

from __future__ import annotations

import os
import signal
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


def default_sigint() -> None:
    """``preexec_fn`` of a subprocess that a test stops with Ctrl-C (SIGINT): SIGINT acts as in a user's terminal
    even when the test suite itself was started with SIGINT ignored (a background job of a non-interactive shell
    is, and Python then leaves it ignored in every child)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def ktk(*args: Any, cwd: Optional[Path] = None, timeout: float = 300, **kwargs: Any) -> subprocess.CompletedProcess:
    """Runs ``python -m toolkit ARGS`` as a user would; returns the finished process (text output captured)."""
    return subprocess.run([sys.executable, "-m", "toolkit", *map(str, args)], capture_output=True, text=True,
                          env=subprocess_env(), cwd=cwd, timeout=timeout, **kwargs)


def ktk_here(*args: Any) -> subprocess.CompletedProcess:
    """Runs ``ktk ARGS`` in this process (no interpreter start-up: for the fast tier's refusals and small commands);
    returns what :func:`ktk` returns. A command that would import TensorFlow belongs in a subprocess."""
    import contextlib
    import io

    from toolkit.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exit_info:  # argparse's refusals and --help
            code = exit_info.code if isinstance(exit_info.code, int) else 2
    return subprocess.CompletedProcess(["ktk", *map(str, args)], code, out.getvalue(), err.getvalue())


# ------------------------------------------------------------------------ result folders for compare/report
# Real runs and a real sweep (trained once per test session by the `runs` and `sweep` fixtures of conftest.py),
# and hand-written result directories for the fast tests, which must train nothing.

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

RUNS_BASE = {
    "name": "moons",
    "seed": 3,
    "data": {"source": "synthetic.moons", "options": {"n_samples": 200, "noise": 0.45}},
    "model": {"hidden": [64, 64]},
    # patience above the epoch count: never stops, but restores the best epoch's weights at the end
    "training": {"epochs": 8, "batch_size": 16, "optimizer": {"name": "adam", "learning_rate": 0.05},
                 "early_stopping": {"patience": 20}},
}
# name -> values that differ from RUNS_BASE: dropout and learning rate differ, nothing else
RUN_VARIANTS = {
    "plain": {"model.dropout": 0.0, "training.optimizer.learning_rate": 0.05},
    "dropout": {"model.dropout": 0.3, "training.optimizer.learning_rate": 0.05},
    "fast": {"model.dropout": 0.0, "training.optimizer.learning_rate": 0.2},
}
SWEEP_CONFIG = {
    **RUNS_BASE,
    "name": "moons-sweep",
    "model": {"hidden": [16]},
    "training": {"epochs": 3, "batch_size": 32, "optimizer": {"name": "adam", "learning_rate": 0.05}},
    "search": {
        "tuner": "quasi_random",
        "objective": "val_loss",
        "max_trials": 4,
        "trials_per_process": "inline",
        "space": {
            "model.dropout": {"float": [0.0, 0.5]},
            # 1e30 makes the loss overflow in the first epoch: that trial fails and is recorded as failed
            "training.optimizer.learning_rate": {"choice": [0.01, 0.05, 1.0e30]},
        },
    },
}


# A tiny iris MLP for sweep tests (test_sweeps.py, test_bad_inputs_sweeps.py): seconds per trial.
IRIS_SWEEP = {
    "name": "iris-sweep",
    "seed": 1,
    "data": {"source": "sklearn.iris"},
    "model": {"hidden": [8]},
    "training": {"optimizer": {"name": "adam", "learning_rate": 0.02}, "batch_size": 32, "epochs": 2},
}


def built_once(tmp_path_factory: Any, name: str, build: Any) -> Path:
    """A data folder made once per session by `build(root)` (shared by every test module that asks)."""
    root = tmp_path_factory.getbasetemp() / "compare-data" / name
    if not (root / ".done").exists():
        if root.exists():
            import shutil

            shutil.rmtree(root)
        root.mkdir(parents=True)
        build(root)
        (root / ".done").write_text("")
    return root


def train_runs(root: Path) -> None:
    """Trains the three RUN_VARIANTS into root/<name> (a few seconds each)."""
    from toolkit.config import parse_config
    from toolkit.runs import run

    base = parse_config(RUNS_BASE)
    for name, values in RUN_VARIANTS.items():
        run(base.with_values(values), out_dir=root / name, verbose=0)


def train_sweep(root: Path) -> None:
    """Runs SWEEP_CONFIG's four trials (one fails) into root/sweep."""
    from toolkit.config import parse_config
    from toolkit.sweeps import tune

    tune(parse_config(SWEEP_CONFIG), out_dir=root / "sweep")


def write_run(run_dir: Path, config: Optional[Dict[str, Any]] = None, metrics: Optional[Dict[str, Any]] = None,
              history: Optional[str] = None) -> Path:
    """A run directory written by hand, in the layout `ktk run` writes (no model.keras: compare never opens it)."""
    import json

    import yaml

    run_dir.mkdir(parents=True, exist_ok=True)
    config = config if config is not None else {"name": run_dir.name, "model": {"hidden": [8], "dropout": 0.1}}
    metrics = metrics if metrics is not None else {
        "train": {"loss": 0.30, "accuracy": 0.90}, "validation": {"loss": 0.40, "accuracy": 0.85},
        "test": {"loss": 0.42, "accuracy": 0.84}, "epochs_run": 3, "best_epoch": 2, "params": 42,
        "wall_time_s": 1.5, "task": "binary", "monitor": "val_loss"}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    (run_dir / "history.csv").write_text(history if history is not None else (
        "epoch,loss,accuracy,val_loss,val_accuracy\n1,0.6,0.7,0.6,0.7\n2,0.3,0.9,0.4,0.85\n3,0.25,0.92,0.45,0.84\n"))
    return run_dir


def write_sweep(sweep_dir: Path, trials: str, config: Optional[Dict[str, Any]] = None,
                histories: Optional[Dict[str, str]] = None) -> Path:
    """A sweep directory written by hand: config.yaml (with a search: section), trials.csv and histories/."""
    import yaml

    sweep_dir.mkdir(parents=True, exist_ok=True)
    config = config if config is not None else {
        "name": "hand-sweep", "model": {"hidden": [16], "dropout": 0.0},
        "training": {"optimizer": {"name": "adam", "learning_rate": 0.01}},
        "search": {"objective": "val_loss", "space": {"model.dropout": {"float": [0.0, 0.5]},
                                                      "model.hidden.0": {"choice": [8, 16, 32]}}}}
    (sweep_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (sweep_dir / "trials.csv").write_text(trials)
    (sweep_dir / "histories").mkdir(exist_ok=True)
    for trial_id, text in (histories or {}).items():
        (sweep_dir / "histories" / f"{trial_id}.csv").write_text(text)
    return sweep_dir


def assert_png(path: Path, min_bytes: int = 5_000) -> None:
    """`path` is a real, non-blank PNG image of a sensible size."""
    data = Path(path).read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG file"
    assert len(data) > min_bytes, f"{path} is suspiciously small ({len(data)} bytes)"
    from matplotlib.image import imread

    pixels = imread(path)
    assert pixels.shape[0] > 200 and pixels.shape[1] > 400
    assert pixels[..., :3].std() > 0.05  # not a blank image


def parse_html(text: str) -> Any:
    """The cells of every <table> (header and body rows) and the <img> sources of an HTML page."""
    from html.parser import HTMLParser

    class Tables(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.tables: list = []
            self.images: list = []
            self._cell: Optional[str] = None

        def handle_starttag(self, tag: str, attrs: Any) -> None:
            if tag == "table":
                self.tables.append([])
            elif tag == "tr":
                self.tables[-1].append([])
            elif tag in ("td", "th"):
                self._cell = ""
            elif tag == "img":
                self.images.append(dict(attrs).get("src", ""))

        def handle_data(self, data: str) -> None:
            if self._cell is not None:
                self._cell += data

        def handle_endtag(self, tag: str) -> None:
            if tag in ("td", "th"):
                self.tables[-1][-1].append(self._cell)
                self._cell = None

    parser = Tables()
    parser.feed(text)
    return parser
