"""One training run end to end: ``run(config)`` trains and evaluates into a run directory.

The order matters for honesty and for never losing data: the data is loaded and the model built before
anything is written (a bad name fails early, leaving nothing behind); the test split is evaluated exactly
once, after training; ``metrics.json`` is written last, atomically.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Union

from toolkit.config import Config, dump_yaml
from toolkit.results import (CONFIG_FILE, ENVIRONMENT_FILE, GRADIENTS_FILE, HISTORY_FILE, METRICS_FILE,
                             MODEL_FILE, atomic_write_text, check_new_dir, history_logger, make_dir, write_json)

DEFAULT_RUNS_DIR = Path("runs")


@dataclass
class RunResult:
    """What a run produced: where it is and its metrics (as in metrics.json)."""

    run_dir: Path
    metrics: Dict[str, Any]
    config: Config


def run(config: Config, out_dir: Optional[Union[str, Path]] = None, verbose: int = 1,
        data: Any = None) -> RunResult:
    """Trains and evaluates a config into a run directory.

    Args:
        config: the validated config.
        out_dir: the run directory; default ``runs/<name>/<timestamp>``. It must not already hold results.
        verbose: Keras' progress display (0 silent, 1 progress bar, 2 one line per epoch).
        data: an already loaded :class:`toolkit.data.Dataset` (sweeps load once); loaded when None.

    Returns:
        A :class:`RunResult` with the run directory and the metrics written to ``metrics.json``.
    """
    from toolkit import training
    from toolkit.data import load_data

    started = time.time()
    started_at = _now()
    run_dir = _new_run_dir(config, out_dir)
    if data is None:
        data = load_data(config)
    model = training.prepare_model(config, data)

    make_dir(run_dir)
    atomic_write_text(run_dir / CONFIG_FILE, dump_yaml(config.to_dict()))
    environment = _environment(config, started_at)
    write_json(run_dir / ENVIRONMENT_FILE, environment)

    callbacks = [history_logger(run_dir / HISTORY_FILE)]
    if config.training.monitor.gradients:
        from toolkit.lessons.monitor import gradient_monitor

        callbacks.append(gradient_monitor(config, data, run_dir / GRADIENTS_FILE))
    history = training.fit(model, config, data, callbacks=callbacks, verbose=verbose).history

    monitor = training.monitor_name(config)
    mode = training.monitor_mode(config)
    metrics: Dict[str, Any] = {
        split: training.evaluate(model, config, data, split) for split in ("train", "validation", "test")
    }
    epochs_run = len(history.get("loss", []))
    metrics.update({
        "epochs_run": epochs_run,
        "best_epoch": training.best_epoch(history, monitor, mode),
        "params": int(model.count_params()),
        "wall_time_s": round(time.time() - started, 3),
        "task": data.task,
        "num_classes": data.num_classes,
        "monitor": monitor,
        "seed": config.seed,
        "sizes": data.sizes(),
    })
    model.save(run_dir / MODEL_FILE)
    environment["finished"] = _now()
    write_json(run_dir / ENVIRONMENT_FILE, environment)
    write_json(run_dir / METRICS_FILE, metrics)  # last: its presence means the run is complete
    return RunResult(run_dir=run_dir, metrics=metrics, config=config)


def validate(config: Config, deep: bool = False) -> str:
    """Checks a config and that its data loads, without training; returns a printable report.

    With `deep`, also builds the model and optimizer with Keras (imports TensorFlow) to check layer,
    initializer, activation, optimizer and schedule names and report the parameter count.
    """
    from toolkit.data import load_data
    from toolkit.keras_names import check_config_names

    names_checked = check_config_names(config)
    spec = None
    if config.search is not None:  # every searched path, range end and choice, before any data loads
        from toolkit.search import parse_search

        spec = parse_search(config)
    data = load_data(config)
    lines = [f"# {config.source or config.name}: valid", f"# data: {data.describe()}"]
    if spec is not None:
        trials = f"{spec.max_trials} trials" if spec.max_trials else "trials until the space is covered"
        lines.append(f"# search: {spec.tuner}, {trials}, {spec.objective.direction} {spec.objective.name} "
                     f"over {', '.join(spec.paths)}")
    if not names_checked and not deep:
        lines.append("# Keras names: not checked (Keras' API listing not found); use --deep")
    if deep:
        from toolkit import training
        from toolkit.models import build_model

        model = build_model(config, data)
        training.compile_model(model, config, data)
        lines.append(f"# model: {len(model.layers)} layers, {model.count_params():,} parameters")
    return "\n".join(lines) + "\n" + dump_yaml(config.to_dict())


def _new_run_dir(config: Config, out_dir: Optional[Union[str, Path]]) -> Path:
    if out_dir is not None:
        return check_new_dir(out_dir, "run directory")
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = DEFAULT_RUNS_DIR / config.name / stamp
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{stamp}-{n}")
    return path


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _environment(config: Config, started_at: str) -> Dict[str, Any]:
    import keras
    import numpy
    import tensorflow

    from toolkit import __version__

    return {
        "ktk": __version__,
        "python": sys.version.split()[0],
        "tensorflow": tensorflow.__version__,
        "keras": keras.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "seed": config.seed,
        "deterministic_ops": True,
        "command": sys.argv,
        "cwd": os.getcwd(),
        "config_source": config.source,
        "started": started_at,
        "finished": None,
    }
