"""What a trained model takes and gives: the input schema and the labels, saved as ``labels.json``.

``labels.json`` sits in every run directory beside ``model.keras``. It is the contract for using the model
outside ktk (``ktk predict``, ``ktk export``, :func:`toolkit.load_run`, or plain
``keras.saving.load_model``):

- ``task``: binary, multiclass or regression; ``target``: the target column's name (``y`` for arrays);
- ``class_names``: the classes in output order (the model's output unit ``i`` is ``class_names[i]``; a
  binary model has one unit, the probability of ``class_names[1]``); null for regression;
- ``inputs``: the raw input format. ``{"kind": "array", "shape": [...], "features": [...]}``: one float
  array of shape ``(n, *shape)``, features in that order along the last axis. ``{"kind": "columns",
  "columns": [{"name", "dtype", "categories"}]}``: a dict of columns, each of shape ``(n,)``; ``dtype``
  is ``float64`` for numbers and ``string`` for text, whose ``categories`` are the values seen in the
  training split (any other value encodes as none of them);
- ``missing``: ``error`` or ``drop`` (data.missing of the run: rows with missing values were dropped);
- ``normalize``: the input scaling inside the model (``none``, ``standard`` or ``minmax``).

This module is light (no TensorFlow): ``ktk compare`` and the readers of old runs may import it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from toolkit.errors import UserError
from toolkit.results import LABELS_FILE, read_json, write_json

SCHEMA_VERSION = 1
NUMBER = "float64"
TEXT = "string"
TASKS = ("binary", "multiclass", "regression")


@dataclass(frozen=True)
class Column:
    """One raw input column: its name, ``float64`` (numbers) or ``string`` (text), and the text's categories
    in the order of the one-hot features the model was trained on."""

    name: str
    dtype: str = NUMBER
    categories: Optional[Tuple[str, ...]] = None

    def to_dict(self) -> Dict[str, Any]:
        entry: Dict[str, Any] = {"name": self.name, "dtype": self.dtype}
        if self.dtype == TEXT:
            entry["categories"] = list(self.categories or ())
        return entry


@dataclass
class InputSchema:
    """The raw inputs of a model: one array (``kind="array"``) or a dict of named columns (``"columns"``)."""

    kind: str
    shape: Tuple[int, ...] = ()
    features: Optional[List[str]] = None
    columns: Tuple[Column, ...] = ()
    missing: str = "error"

    @property
    def names(self) -> List[str]:
        """The feature names a user gives: the columns, or the array's feature names (when known)."""
        if self.kind == "columns":
            return [c.name for c in self.columns]
        return list(self.features or [])

    @property
    def has_text(self) -> bool:
        return any(c.dtype == TEXT for c in self.columns)

    def to_dict(self) -> Dict[str, Any]:
        if self.kind == "columns":
            return {"kind": "columns", "columns": [c.to_dict() for c in self.columns]}
        return {"kind": "array", "shape": list(self.shape), "dtype": NUMBER, "features": self.features}


@dataclass
class Labels:
    """The content of ``labels.json``."""

    task: str
    inputs: InputSchema
    class_names: Optional[List[str]] = None
    target: str = "y"
    normalize: str = "none"
    extra: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, "task": self.task, "target": self.target,
                "class_names": self.class_names, "inputs": self.inputs.to_dict(),
                "missing": self.inputs.missing, "normalize": self.normalize}


def labels_of(data: Any) -> Labels:
    """The labels of a loaded :class:`toolkit.data.Dataset`."""
    return Labels(task=data.task, inputs=data.inputs, class_names=data.class_names, target=data.target_name,
                  normalize=data.normalization.get("method", "none"))


def write_labels(run_dir: Union[str, Path], data: Any) -> None:
    write_json(Path(run_dir) / LABELS_FILE, labels_of(data).to_dict())


def read_labels(run_dir: Union[str, Path]) -> Labels:
    """The ``labels.json`` of a run directory.

    Raises:
        UserError: the file is missing (a run made before ktk saved it), unreadable or damaged.
    """
    path = Path(run_dir) / LABELS_FILE
    if not path.exists() and not path.is_symlink():
        raise UserError(f"{run_dir} has no {LABELS_FILE}: it was made by an older ktk, before runs saved what "
                        "their model takes as input", where=str(run_dir),
                        expected=f"a run directory with {LABELS_FILE} (train it again with `ktk run "
                        f"{Path(run_dir) / 'config.yaml'}`)")
    try:
        raw = read_json(path)
        return _parse(raw)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UserError(f"{path} is damaged ({getattr(error, 'strerror', None) or error})", where=str(path),
                        expected=f"the {LABELS_FILE} that ktk wrote for this run") from None


def _parse(raw: Any) -> Labels:
    if not isinstance(raw, dict):
        raise ValueError("not a JSON object")
    version = raw.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ValueError(f"schema_version {version!r}; this ktk reads version {SCHEMA_VERSION}")
    task = raw["task"]
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}")
    inputs = raw["inputs"]
    if inputs["kind"] == "columns":
        columns = []
        for entry in inputs["columns"]:
            dtype = entry["dtype"]
            if dtype not in (NUMBER, TEXT):
                raise ValueError(f"unknown column dtype {dtype!r}")
            categories = tuple(str(c) for c in entry["categories"]) if dtype == TEXT else None
            columns.append(Column(str(entry["name"]), dtype, categories))
        schema = InputSchema("columns", columns=tuple(columns), missing=raw.get("missing", "error"))
    elif inputs["kind"] == "array":
        features = inputs.get("features")
        schema = InputSchema("array", shape=tuple(int(d) for d in inputs["shape"]),
                             features=[str(f) for f in features] if features else None,
                             missing=raw.get("missing", "error"))
    else:
        raise ValueError(f"unknown inputs kind {inputs['kind']!r}")
    class_names = raw.get("class_names")
    if task != "regression" and not (isinstance(class_names, list) and len(class_names) >= 2):
        raise ValueError("class_names missing for a classification task")
    return Labels(task=task, inputs=schema, class_names=[str(c) for c in class_names] if class_names else None,
                  target=str(raw.get("target", "y")), normalize=str(raw.get("normalize", "none")))


def output_columns(labels: Labels, units: int) -> List[str]:
    """The columns ``ktk predict`` writes after ``row``: the prediction, then one probability per class
    (binary: the positive class's only), or one value per regression output."""
    if labels.task == "regression":
        return ["prediction"] if units == 1 else [f"prediction_{i}" for i in range(units)]
    names: Sequence[str] = labels.class_names or []
    shown = names[1:] if labels.task == "binary" else names
    return ["prediction", *(f"p_{name}" for name in shown)]
