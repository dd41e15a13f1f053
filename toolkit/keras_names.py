"""Keras' public names, read from Keras' generated API files without importing Keras.

Importing Keras imports TensorFlow (seconds). `ktk validate` must answer in well under a second, so it
checks optimizer, schedule, initializer, activation and layer names against the names Keras itself
exports, as listed in its auto-generated ``keras/<namespace>/__init__.py`` files (``... import Adam as
Adam``). Building the model (``ktk run``, ``ktk validate --deep``) remains the authoritative check, through
Keras' own ``get()``; this is a fast first look that catches typos early.
"""

from __future__ import annotations

import functools
import importlib.util
import re
from pathlib import Path
from typing import Any, List, Optional

from toolkit.errors import UserError

_NAMESPACES = {
    "optimizer": "optimizers",
    "schedule": "optimizers/schedules",
    "initializer": "initializers",
    "activation": "activations",
    "layer": "layers",
}
_NOT_OBJECTS = {"get", "serialize", "deserialize", "legacy", "schedules", "Optimizer", "OptimizerMap",
                "MultiOptimizer", "LossScaleOptimizer", "LearningRateSchedule", "Initializer", "Layer",
                "Input", "InputSpec"}


@functools.lru_cache(maxsize=None)
def exported(kind: str) -> Optional[List[str]]:
    """Names Keras exports for `kind` (optimizer, schedule, initializer, activation, layer); None if unknown."""
    spec = importlib.util.find_spec("keras")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / _NAMESPACES[kind] / "__init__.py"
    if not path.is_file():
        return None
    names = re.findall(r"\bas (\w+),?\s*\)?\s*$", path.read_text(encoding="utf-8"), re.M)
    names = [n for n in names if n not in _NOT_OBJECTS and not n.startswith("_")]
    if kind == "layer":
        names = [n for n in names if n[0].isupper()]
    return sorted(set(names)) or None


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def choices(kind: str) -> Optional[List[str]]:
    """The names a user may write for `kind` in a config, as ktk accepts them."""
    names = exported(kind)
    if names is None:
        return None
    if kind == "optimizer":
        return sorted({n.lower() for n in names})
    if kind == "schedule":
        return sorted({_snake(n) for n in names})
    return names


def check_config_names(config: Any) -> bool:
    """Raises UserError for a name Keras does not export; returns False when Keras' lists are unreadable."""
    checks = [("optimizer", "training.optimizer.name", config.training.optimizer.name.lower())]
    if config.training.schedule is not None:
        checks.append(("schedule", "training.schedule.name", _snake(config.training.schedule.name)))
    model = config.model
    checks.append(("activation", "model.activation", model.activation))
    _add_initializer(checks, "model.initializer", model.initializer)
    for i, layer in enumerate(model.layers or []):
        if layer.class_name is not None:
            if not model.custom_modules:  # registered custom classes are only known after importing them
                checks.append(("layer", f"model.layers.{i}.class_name", layer.class_name))
            continue
        if layer.activation is not None:
            checks.append(("activation", f"model.layers.{i}.activation", layer.activation))
        if layer.initializer is not None:
            _add_initializer(checks, f"model.layers.{i}.initializer", layer.initializer)
    readable = True
    for kind, where, name in checks:
        valid = choices(kind)
        if valid is None:
            readable = False
            continue
        lowered = {v.lower() for v in valid}
        if name not in valid and not (kind in ("initializer", "optimizer") and name.lower() in lowered):
            raise UserError(where=where, expected=f"a Keras {kind}", received=name, choices=valid)
    return readable


def _add_initializer(checks: List[Any], where: str, identifier: Any) -> None:
    if isinstance(identifier, str):
        checks.append(("initializer", where, identifier))
    elif isinstance(identifier, dict):
        checks.append(("initializer", f"{where}.class_name", identifier["class_name"]))
