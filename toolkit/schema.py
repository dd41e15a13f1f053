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
    """The ``labels.json`` of a run directory, every field checked.

    Raises:
        UserError: the file is missing (a run made before ktk saved it), unreadable or damaged: one message
            naming the key path, what ktk writes there and what the file holds.
    """
    path = Path(run_dir) / LABELS_FILE
    if not path.exists() and not path.is_symlink():
        raise UserError(f"{run_dir} has no {LABELS_FILE}: it was made by an older ktk, before runs saved what "
                        "their model takes as input", where=str(run_dir),
                        expected=f"a run directory with {LABELS_FILE} (train it again with `ktk run "
                        f"{Path(run_dir) / 'config.yaml'}`)")
    try:
        raw = read_json(path)
    except (OSError, ValueError) as error:
        raise UserError(f"{LABELS_FILE} cannot be read ({getattr(error, 'strerror', None) or error})",
                        file=str(path), expected=f"the {LABELS_FILE} that ktk wrote for this run") from None
    return parse_labels(raw, str(path))


DAMAGED = f"{LABELS_FILE} is damaged (ktk writes it with the run: restore it, or train the run again)"
MAX_FEATURES = 100_000_000  # of an array input: more is no model ktk trained
_TOP_KEYS = ("schema_version", "task", "target", "class_names", "inputs", "missing", "normalize")
MISSING = ("error", "drop")
NORMALIZE = ("none", "standard", "minmax")


def parse_labels(raw: Any, file: Optional[str] = None) -> Labels:
    """``labels.json`` data as :class:`Labels`, checked strictly: the types, the values and the keys ktk writes.

    Raises:
        UserError: naming `file` and the key path of the first wrong value.
    """

    def wrong(where: str, expected: str, received: Any = UserError._UNSET, choices: Any = None) -> UserError:
        return UserError(DAMAGED, file=file, where=where or None, expected=expected, received=received,
                         choices=choices)

    def keys(value: Any, where: str, allowed: Sequence[str], required: Sequence[str]) -> Dict[str, Any]:
        if not isinstance(value, dict):
            raise wrong(where, "a JSON object", _kind(value))
        for key in value:
            if key not in allowed:
                raise wrong(f"{where}.{key}" if where else str(key), "only the keys ktk writes", key, allowed)
        for key in required:
            if key not in value:
                raise wrong(f"{where}.{key}" if where else key, "this key, which ktk always writes")
        return value

    def text(value: Any, where: str) -> str:
        if not isinstance(value, str) or not value:
            raise wrong(where, "a non-empty string", value)
        return value

    def texts(value: Any, where: str, least: int) -> List[str]:
        if not isinstance(value, list) or len(value) < least:
            raise wrong(where, f"a list of at least {least} distinct strings", _kind(value))
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise wrong(f"{where}[{i}]", "a string", item)
        seen = set()
        for item in value:
            if item in seen:
                raise wrong(where, "distinct strings", item)
            seen.add(item)
        return list(value)

    def choice(value: Any, where: str, allowed: Sequence[str]) -> str:
        if not isinstance(value, str) or value not in allowed:
            raise wrong(where, "one of the values ktk writes", value, allowed)
        return value

    top = keys(raw, "", _TOP_KEYS, _TOP_KEYS)
    version = top["schema_version"]
    if isinstance(version, bool) or version != SCHEMA_VERSION:
        raise wrong("schema_version", f"version {SCHEMA_VERSION}, the one this ktk reads (a newer ktk wrote "
                    "other versions)", version)
    task = choice(top["task"], "task", TASKS)
    target = text(top["target"], "target")
    missing = choice(top["missing"], "missing", MISSING)
    normalize = choice(top["normalize"], "normalize", NORMALIZE)
    class_names = top["class_names"]
    if task == "regression":
        if class_names is not None:
            raise wrong("class_names", "null for a regression model", _kind(class_names))
    else:
        class_names = texts(class_names, "class_names", 2)
        if task == "binary" and len(class_names) != 2:
            raise wrong("class_names", "two class names for a binary model", class_names)
    inputs = keys(top["inputs"], "inputs", ("kind", "columns", "shape", "dtype", "features"), ("kind",))
    kind = choice(inputs["kind"], "inputs.kind", ("array", "columns"))
    if kind == "columns":
        keys(inputs, "inputs", ("kind", "columns"), ("kind", "columns"))
        entries = inputs["columns"]
        if not isinstance(entries, list) or not entries:
            raise wrong("inputs.columns", "a non-empty list of columns", _kind(entries))
        columns = []
        for i, entry in enumerate(entries):
            where = f"inputs.columns[{i}]"
            keys(entry, where, ("name", "dtype", "categories"), ("name", "dtype"))
            name = text(entry["name"], f"{where}.name")
            dtype = choice(entry["dtype"], f"{where}.dtype", (NUMBER, TEXT))
            categories = None
            if dtype == TEXT:
                if "categories" not in entry:
                    raise wrong(f"{where}.categories", "the text column's categories, which ktk always writes")
                categories = tuple(texts(entry["categories"], f"{where}.categories", 1))
            elif "categories" in entry:
                raise wrong(f"{where}.categories", f"no categories for a {NUMBER} column", _kind(entry["categories"]))
            columns.append(Column(name, dtype, categories))
        names = [c.name for c in columns]
        repeated = next((n for n in names if names.count(n) > 1), None)
        if repeated is not None:
            raise wrong("inputs.columns", "each column name once", repeated)
        if target in names:
            raise wrong("target", "a column that is not one of the model's input columns", target)
        schema = InputSchema("columns", columns=tuple(columns), missing=missing)
    else:
        keys(inputs, "inputs", ("kind", "shape", "dtype", "features"), ("kind", "shape"))
        shape = inputs["shape"]
        if not isinstance(shape, list) or not shape or not all(
                isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
            raise wrong("inputs.shape", "a non-empty list of positive whole numbers", _kind(shape))
        size = 1
        for d in shape:
            size *= d
        if size > MAX_FEATURES:
            raise wrong("inputs.shape", f"at most {MAX_FEATURES:,} features in all", shape)
        if inputs.get("dtype", NUMBER) != NUMBER:
            raise wrong("inputs.dtype", f"{NUMBER!r}", inputs["dtype"], [NUMBER])
        features = inputs.get("features")
        if features is not None:
            features = texts(features, "inputs.features", 1)
            if len(features) != size:
                raise wrong("inputs.features", f"one name per feature: {size} for shape {shape}",
                            f"{len(features)} names")
        schema = InputSchema("array", shape=tuple(shape), features=features, missing=missing)
    return Labels(task=task, inputs=schema, class_names=class_names, target=target, normalize=normalize)


def _kind(value: Any) -> Any:
    """A value as a message shows it: short values themselves, containers by their type and length."""
    if isinstance(value, (dict, list)) and len(str(value)) > 80:
        return f"a {'JSON object' if isinstance(value, dict) else 'list'} of {len(value)} items"
    return value


def output_columns(labels: Labels, units: int) -> List[str]:
    """The columns ``ktk predict`` writes after ``row``: the prediction, then one probability per class
    (binary: the positive class's only), or one value per regression output."""
    if labels.task == "regression":
        return ["prediction"] if units == 1 else [f"prediction_{i}" for i in range(units)]
    names: Sequence[str] = labels.class_names or []
    shown = names[1:] if labels.task == "binary" else names
    return ["prediction", *(f"p_{name}" for name in shown)]
