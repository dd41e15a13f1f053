"""The config language: YAML in, one validated :class:`Config` out.

This is the one boundary where user YAML is parsed and checked. Past it, code reads typed attributes
(``config.training.optimizer.learning_rate``), never nested dicts. Types are strict (a YAML ``yes`` is not
the integer 1, ``3.0`` is not an integer) and numbers are finite and in the range their consumer takes
(a seed fits NumPy's, a float fits float32), so a config that validates does not fail later on a number.
Names of Keras objects are checked by :mod:`toolkit.keras_names` (fast, without importing Keras) and by
Keras' own ``get()`` when the model is built, so no argument list of Keras is re-declared here.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import sys
import typing
import unicodedata
from pathlib import Path
from typing import Annotated, Any, Dict, Iterable, List, Literal, Mapping, Optional, Sequence, Tuple, Union

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, PrivateAttr,
                      ValidationError, field_validator, model_validator)

from toolkit.dotpath import get_path, set_path
from toolkit.errors import InvalidValue, UserError
from toolkit.safe_yaml import ValueLoader, dump_yaml, parse_yaml, read_yaml_file

# The dot-path helpers (toolkit.dotpath) and the YAML helpers (toolkit.safe_yaml) belong to the config
# language too: other modules import them from here.
__all__ = ["Config", "load_config", "parse_config", "parse_override", "deep_merge", "schema_step", "get_path",
           "set_path", "dump_yaml", "read_yaml_file", "parse_yaml"]

INT32_MAX = 2**31 - 1  # sizes and counts TensorFlow holds in 32 bits
SEED_MAX = 2**32 - 1  # NumPy's and scikit-learn's seeds
FLOAT32_MAX = 3.4028234663852886e38  # Keras computes in float32
MAX_EPOCHS = 1_000_000
MAX_NAME = 100  # characters of a run name, and twice that in UTF-8 bytes (a folder name has at most 255)


# ---------------------------------------------------------------------------------------- --set


def parse_override(text: str) -> Tuple[str, Any]:
    """Parses one ``--set key.path=value``; the value is read as YAML (so ``[64,32]`` is a list).

    The value is bounded as a config is (:mod:`toolkit.safe_yaml`), and may not alias lists or mappings.
    """
    if "=" not in text:
        raise UserError(where="--set", expected="KEY=VALUE, e.g. training.epochs=10", received=text)
    key, _, raw_value = text.partition("=")
    key = key.strip()
    value = parse_yaml(raw_value, source=f"--set {key}", loader=ValueLoader) if raw_value.strip() else None
    return key, value


def deep_merge(base: dict, override: Mapping) -> dict:
    """`override` merged over `base`: mappings merge key by key; anything else (lists too) replaces."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


# -------------------------------------------------------------------------------------- the schema


class _Section(BaseModel):
    # Strict: a bool is not a number and 3.0 is not an integer; floats must be finite.
    model_config = ConfigDict(extra="forbid", validate_default=True, strict=True, allow_inf_nan=False)


def _int_from(low: int, high: int) -> AfterValidator:
    def check(value: int) -> int:
        if not low <= value <= high:
            raise InvalidValue(expected=f"an integer from {low} to {high}", received=value)
        return value

    return AfterValidator(check)


def _float32(value: float) -> float:
    if abs(value) > FLOAT32_MAX:
        raise InvalidValue(expected="a number Keras can hold (float32: at most 3.4e+38 in size)", received=value)
    return value


Number = Annotated[float, AfterValidator(_float32)]


def _positive_int_or(word: str, value: Any) -> Any:
    if value == word:
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidValue(expected=f"a positive integer or '{word}'", received=value)
    if value > INT32_MAX:
        raise InvalidValue(expected=f"a positive integer of at most {INT32_MAX} or '{word}'", received=value)
    return value


def _rate(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise InvalidValue(expected="a rate in [0, 1)", received=value)
    return float(value)


Rate = Annotated[float, BeforeValidator(_rate)]  # a dropout rate


def _keras_arguments(value: Any, where: Optional[str] = None) -> Any:
    """Arguments handed to Keras as they are (optimizer, schedule, layer configs): every number must fit.

    A float Keras stores in float32 must be finite and within its range; an integer must fit in 64 bits.
    """
    if isinstance(value, Mapping):
        for key, item in value.items():
            _keras_arguments(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _keras_arguments(item, f"{where}.{index}" if where else str(index))
    elif isinstance(value, float) and not (math.isfinite(value) and abs(value) <= FLOAT32_MAX):
        raise InvalidValue(where=where, expected="a finite number (float32: at most 3.4e+38 in size)", received=value)
    elif isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**63:
        raise InvalidValue(where=where, expected="an integer that fits in 64 bits", received=value)
    return value


def _identifier(value: Any) -> Any:
    """A Keras identifier: a name, or ``{class_name: ..., config: {...}}`` (checked against Keras later)."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, dict):
        unknown = set(value) - {"class_name", "config", "module", "registered_name"}
        if isinstance(value.get("class_name"), str) and value["class_name"] and not unknown and \
                isinstance(value.get("config", {}), dict):
            return _keras_arguments(value)
    raise InvalidValue(expected="a name or {class_name: ..., config: {...}}", received=value)


KerasIdentifier = Annotated[Any, AfterValidator(_identifier)]


def _run_name(value: str) -> str:
    """A run name is a folder name under runs/: never a path, never empty, printable."""
    if (not value or len(value) > MAX_NAME or len(value.encode("utf-8", "replace")) > 2 * MAX_NAME
            or value in (".", "..") or any(c in "/\\" for c in value)
            or any(unicodedata.category(c).startswith("C") for c in value)):
        raise InvalidValue(expected=f"a run name: 1 to {MAX_NAME} characters without '/', '\\' or control characters, "
                                    "not '.' or '..' (it names the run's folder under runs/)", received=value)
    return value


# Top-level standard-library modules (Python >= 3.10 lists them): `this` prints, `antigravity` opens a browser.
_STDLIB = frozenset(getattr(sys, "stdlib_module_names", ()))


def _custom_module(value: str) -> str:
    """``model.custom_modules`` entries: importable module names, or paths of .py files next to the config."""
    if value.endswith(".py") and "\0" not in value:
        return value
    if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", value):
        raise InvalidValue(expected="a module name (my_layers, my_package.layers) or the path of a .py file "
                                    "relative to the config", received=value)
    if "__main__" in value.split("."):
        raise InvalidValue("a __main__ module runs a program when it is imported", received=value,
                           expected="a module that defines Keras classes")
    if value.split(".")[0] in _STDLIB:
        raise InvalidValue("a standard-library module, not a module of custom Keras classes", received=value,
                           expected="your own module (installed, on PYTHONPATH, or a .py path)")
    return value


class SplitConfig(_Section):
    """How the data is split three ways. Fractions are of the whole data set."""

    train: Optional[Number] = Field(None, gt=0, lt=1)
    validation: Optional[Number] = Field(None, gt=0, lt=1)
    test: Optional[Number] = Field(None, ge=0, lt=1)
    stratify: Optional[bool] = None  # default: true for classification
    column: Optional[str] = None  # a column holding train / validation / test for each row


class DataConfig(_Section):
    source: str
    path: Optional[str] = None
    target: Optional[str] = None
    features: Optional[List[str]] = None
    test_path: Optional[str] = None
    options: Dict[str, Any] = Field(default_factory=dict)
    split: SplitConfig = Field(default_factory=SplitConfig)
    normalize: Literal["standard", "minmax", "none"] = "standard"
    missing: Literal["error", "drop"] = "error"

    @field_validator("options", mode="before")
    @classmethod
    def _options_mapping(cls, value: Any) -> Any:
        return {} if value is None else value

    @model_validator(mode="after")
    def _fill_split(self) -> "DataConfig":
        from toolkit.data import check_source_keys  # the sources' own table of the keys each reads

        check_source_keys(self)
        split = self.split
        if split.column is not None:
            if any(f is not None for f in (split.train, split.validation, split.test)):
                raise InvalidValue("expected either split.column or split fractions, not both; received column "
                                   f"{split.column!r} and fractions", where="split")
            return self
        has_test_file = self.test_path is not None
        if split.test is None:
            split.test = 0.0 if has_test_file else 0.15
        if has_test_file and split.test:
            raise InvalidValue(where="split", expected="split.test to be 0 when test_path gives the test split",
                               received=split.test)
        if split.validation is None:
            split.validation = 0.15
        if split.train is None:
            split.train = round(1.0 - split.validation - split.test, 10)
        total = split.train + split.validation + split.test
        if abs(total - 1.0) > 1e-6:
            raise InvalidValue("expected split fractions train + validation + test to sum to 1; received "
                               f"{split.train} + {split.validation} + {split.test} = {round(total, 6)}", where="split")
        if split.train <= 0:
            raise InvalidValue(where="split", expected="a positive train fraction", received=split.train)
        return self


class RegularizerConfig(_Section):
    """L1 and/or L2 penalties on a kernel: ``{l2: 1.0e-4}``, ``{l1: ..., l2: ...}``."""

    l1: Number = Field(0.0, ge=0)
    l2: Number = Field(0.0, ge=0)


Units = Annotated[int, _int_from(1, INT32_MAX)]


class LayerConfig(_Section):
    """One entry of ``model.layers``: a Dense block overriding the model's defaults, or any Keras layer.

    A Dense block gives ``units`` (and optionally activation, initializer, regularizer, dropout,
    batchnorm). Any other Keras layer gives ``class_name`` and its ``config``, deserialized by Keras.
    """

    units: Optional[Units] = None
    activation: Optional[str] = None
    initializer: Optional[KerasIdentifier] = None
    regularizer: Optional[RegularizerConfig] = None
    dropout: Optional[Rate] = None
    batchnorm: Optional[bool] = None
    class_name: Optional[str] = None
    config: Dict[str, Any] = Field(default_factory=dict)

    @field_validator("config")
    @classmethod
    def _config_numbers(cls, value: Dict[str, Any]) -> Dict[str, Any]:
        return _keras_arguments(value)

    @model_validator(mode="after")
    def _one_kind(self) -> "LayerConfig":
        dense_keys = [k for k in ("units", "activation", "initializer", "regularizer", "dropout", "batchnorm")
                      if getattr(self, k) is not None]
        if self.class_name is None and self.units is None:
            raise InvalidValue("expected 'units' (a Dense block) or 'class_name' (any Keras layer); received neither")
        if self.class_name is not None and dense_keys:
            raise InvalidValue(f"expected either Dense-block keys or class_name, not both; received class_name "
                               f"{self.class_name!r} with {', '.join(dense_keys)} (put layer arguments under config:)")
        if self.class_name is None and self.config:
            raise InvalidValue("expected config: only with class_name; received config for a Dense block")
        return self


class ModelConfig(_Section):
    hidden: Optional[List[int]] = None  # default [64] when layers is not given
    layers: Optional[List[LayerConfig]] = None
    activation: str = "relu"
    initializer: KerasIdentifier = "glorot_uniform"
    regularizer: Optional[RegularizerConfig] = None
    dropout: Rate = 0.0
    batchnorm: bool = False
    custom_modules: List[Annotated[str, AfterValidator(_custom_module)]] = Field(default_factory=list)

    @model_validator(mode="after")
    def _hidden_or_layers(self) -> "ModelConfig":
        if self.layers is not None and self.hidden is not None:
            raise InvalidValue(expected="either hidden (Dense widths) or layers (per-layer specs), not both")
        if self.layers is None and self.hidden is None:
            self.hidden = [64]
        return self

    @field_validator("hidden", mode="before")
    @classmethod
    def _hidden_list(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            value = [value]
        if isinstance(value, list):
            for i, units in enumerate(value):
                if isinstance(units, bool) or not isinstance(units, int) or units < 1:
                    raise InvalidValue(expected=f"a positive integer at index {i}", received=units)
                if units > INT32_MAX:
                    raise InvalidValue(expected=f"a positive integer of at most {INT32_MAX} at index {i}",
                                       received=units)
        return value

    @field_validator("regularizer", mode="before")
    @classmethod
    def _no_regularizer(cls, value: Any) -> Any:
        return None if value in (None, False, "none") else value


class _KerasArguments(BaseModel):
    """A Keras object by name with its own arguments as extra keys (checked against Keras by keras_names)."""

    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)

    name: str

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _argument_numbers(self) -> "_KerasArguments":
        _keras_arguments(dict(self.model_extra or {}))
        return self


class OptimizerConfig(_KerasArguments):
    """``{name: ..., learning_rate: ..., <any argument of that Keras optimizer>}``.

    Extra keys are the optimizer's own arguments (``momentum``, ``nesterov``, ``clipnorm``, ...).
    """

    name: str = "adam"
    learning_rate: Number = Field(0.001, gt=0)

    @property
    def arguments(self) -> Dict[str, Any]:
        """The keyword arguments for the Keras optimizer (everything except `name`)."""
        return {"learning_rate": self.learning_rate, **(self.model_extra or {})}


class ScheduleConfig(_KerasArguments):
    """A Keras learning-rate schedule by snake_case name with its arguments.

    ``initial_learning_rate`` defaults to the optimizer's learning_rate.
    """

    @property
    def arguments(self) -> Dict[str, Any]:
        return dict(self.model_extra or {})


class EarlyStoppingConfig(_Section):
    monitor: str = "val_loss"
    patience: Annotated[int, _int_from(0, INT32_MAX)] = 5
    min_delta: Number = Field(0.0, ge=0)
    mode: Literal["auto", "min", "max"] = "auto"
    restore_best_weights: bool = True


class MonitorConfig(_Section):
    gradients: bool = False  # record per-layer gradient and weight norms each epoch (gradients.csv)


class TrainingConfig(_Section):
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: Optional[ScheduleConfig] = None
    batch_size: Any = 32
    epochs: Annotated[int, _int_from(1, MAX_EPOCHS)] = 20
    early_stopping: Optional[EarlyStoppingConfig] = None
    # Without early stopping, the run still ends with the weights of its best epoch (by val_loss), so
    # metrics.json and model.keras are the best epoch's; false keeps the last epoch's weights. With
    # early_stopping, its own restore_best_weights decides.
    restore_best_weights: bool = True
    loss: Optional[KerasIdentifier] = None
    metrics: Optional[List[KerasIdentifier]] = None
    class_weight: Optional[Any] = None  # "balanced" or {class name or index: weight}
    shuffle: bool = True
    steps_per_execution: Any = "auto"
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)

    @field_validator("batch_size")
    @classmethod
    def _batch_size(cls, value: Any) -> Any:
        return _positive_int_or("full", value)

    @field_validator("class_weight")
    @classmethod
    def _class_weight(cls, value: Any) -> Any:
        if value is None or value == "balanced":
            return value
        if not isinstance(value, dict):
            raise InvalidValue(expected="'balanced' or a mapping {class name or index: weight}", received=value)
        weights = {}
        for key, weight in value.items():
            if isinstance(key, bool) or not isinstance(key, (int, str)):
                raise InvalidValue(where=str(key), expected="a class name or index as key", received=key)
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) \
                    or not 0 <= weight <= FLOAT32_MAX:
                raise InvalidValue(where=str(key), expected="a finite weight >= 0", received=weight)
            weights[key] = float(weight)
        return weights

    @field_validator("steps_per_execution")
    @classmethod
    def _spe(cls, value: Any) -> Any:
        return _positive_int_or("auto", value)

    @field_validator("early_stopping", "schedule", mode="before")
    @classmethod
    def _switch(cls, value: Any) -> Any:
        if value is False or value == "none":
            return None
        return {} if value is True else value


class DiagnoseConfig(_Section):
    baseline_error: Optional[Number] = Field(None, ge=0)  # Bayes/human-level error; 0 when unknown


Task = Literal["auto", "binary", "multiclass", "regression"]


class Config(_Section):
    """A whole experiment: data, model, training (and optionally a search and diagnosis settings)."""

    name: Annotated[str, AfterValidator(_run_name)]
    seed: Annotated[int, _int_from(0, SEED_MAX)] = 42
    task: Task = "auto"
    data: DataConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    diagnose: DiagnoseConfig = Field(default_factory=DiagnoseConfig)
    # A toolkit.search.SearchConfig, validated here (its schema is loaded only for configs that have one);
    # toolkit.search.parse_search checks it against the rest of the config.
    search: Optional[Any] = None

    _source: Optional[str] = PrivateAttr(default=None)

    @field_validator("search", mode="before")
    @classmethod
    def _search_section(cls, value: Any) -> Any:
        if value is None:
            return value
        from toolkit.search import SearchConfig

        if isinstance(value, SearchConfig):
            return value
        if not isinstance(value, Mapping):
            raise InvalidValue(expected="a mapping (tuner, objective, max_trials, space, ...)", received=value)
        return SearchConfig.model_validate(value)  # its errors are located below search. by _problems

    @property
    def source(self) -> Optional[str]:
        """The YAML file this config came from (None when built from a dict)."""
        return self._source

    @property
    def base_dir(self) -> Path:
        """Folder that relative paths in the config (data files, custom module files) are resolved against."""
        return Path(self._source).parent if self._source else Path.cwd()

    def to_dict(self) -> Dict[str, Any]:
        """The fully resolved config as plain data (defaults filled in), ready to dump as YAML."""
        return _yaml_data(self.model_dump(mode="python"))

    def with_values(self, values: Mapping[str, Any]) -> "Config":
        """A new validated config with dot-path values applied (``{"model.dropout": 0.3}``)."""
        raw = self.to_dict()
        for path, value in values.items():
            set_path(raw, path, copy.deepcopy(value), where=path)
        return parse_config(raw, source=self._source)


def _yaml_data(value: Any) -> Any:
    """Dumped config data as YAML writes it: tuples as lists, keys as text (integer keys stay integers)."""
    if isinstance(value, dict):
        return {str(k) if not isinstance(k, int) else k: _yaml_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_yaml_data(v) for v in value]
    return value


# ----------------------------------------------------------------------------------- entry points


def load_config(path: Union[str, Path], overrides: Iterable[str] = ()) -> Config:
    """Reads a YAML config (following ``extends:``), applies ``--set`` overrides and validates it.

    Raises:
        UserError: for a missing, unreadable or malformed file, or any invalid value, naming file and key path.
    """
    path = Path(path)
    raw = _read_with_extends(path, chain=())
    for text in overrides:
        key, value = parse_override(text)
        set_path(raw, key, value, where=f"--set {key}")
    raw.setdefault("name", path.stem)
    return parse_config(raw, source=str(path))


def parse_config(raw: Any, source: Optional[str] = None) -> Config:
    """Validates a plain dict (as read from YAML) into a :class:`Config`."""
    if not isinstance(raw, dict):
        raise UserError(expected="a mapping of config sections (data, model, training, ...)",
                        received=raw, file=source)
    raw = copy.deepcopy(raw)  # Keras deserializers and our defaults must never mutate the caller's dict
    raw.pop("extends", None)
    if "name" not in raw and source:
        raw["name"] = Path(source).stem
    try:
        config = Config.model_validate(raw)
    except ValidationError as error:
        raise _translate(error, source) from None
    config._source = source
    return config


def _read_with_extends(path: Path, chain: Tuple[Path, ...], named_by: Optional[Path] = None) -> dict:
    where = "extends" if named_by is not None else None
    file = str(named_by) if named_by is not None else None
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError, ValueError):  # a loop of links, a name too long: said when it is read
        resolved = path.absolute()
    if resolved in chain:
        cycle = " -> ".join(str(p) for p in (*chain, resolved))
        raise UserError("extends: forms a cycle", received=cycle, file=file, where=where)
    raw = read_yaml_file(path, where=where, file=file)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(expected="a mapping of config sections (data, model, training, ...)",
                        received=raw, file=str(path))
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    if not isinstance(parent, str) or not parent:
        raise UserError(where="extends", expected="the path of a base config file", received=parent,
                        file=str(path))
    base_path = (path.parent / parent) if not Path(parent).is_absolute() else Path(parent)
    base = _read_with_extends(base_path, (*chain, resolved), named_by=path)
    base.pop("name", None)  # a derived config is named after its own file unless it says otherwise
    return deep_merge(base, raw)


# ------------------------------------------------------------------------------- the schema's shape


@dataclasses.dataclass(frozen=True)
class SchemaStep:
    """One step of a key path through the schema (see :func:`schema_step`).

    Attributes:
        kind: ``field`` (a key of a section), ``index`` (an item of a list), ``open`` (free-form data:
            a mapping of options, the arguments of an optimizer) or ``unknown`` (not a key of the section).
        schema: what the value there is: a section class, or the annotation of a list item or leaf.
        choices: for ``unknown``, the valid keys.
    """

    kind: str
    schema: Any = None
    choices: List[str] = dataclasses.field(default_factory=list)


def schema_step(schema: Any, part: str) -> SchemaStep:
    """Where key `part` leads from `schema` (a section class or an annotation) in the config schema.

    The one reading of the schema's shape: used for "unknown key" choices and error locations here, and
    by :mod:`toolkit.search` to check that a searched dot path exists.
    """
    kind, inner = _shape(schema)
    if kind == "section":
        fields = {(f.alias or name): f for name, f in inner.model_fields.items()}
        if inner is Config and part == "search":
            from toolkit.search import SearchConfig  # a section validated on its own (see Config.search)

            return SchemaStep("field", Optional[SearchConfig])
        if part in fields:
            return SchemaStep("field", fields[part].annotation)
        if inner.model_config.get("extra") == "allow":
            return SchemaStep("open")
        return SchemaStep("unknown", choices=sorted(fields))
    if kind == "list":
        return SchemaStep("index", inner)
    if kind == "union":  # a discriminated union: `part` is the tag pydantic puts in error locations
        return SchemaStep("tag", inner.get(part))
    return SchemaStep("open")


def _shape(annotation: Any) -> Tuple[str, Any]:
    """('section', class) | ('list', item) | ('union', {tag: class}) | ('open', annotation)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section", annotation
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        if any(isinstance(meta, Discriminator) for meta in annotation.__metadata__):
            members = typing.get_args(args[0])
            return "union", {typing.get_args(m)[1].tag: typing.get_args(m)[0] for m in members}
        return _shape(args[0])
    if origin in (list, List, tuple, Tuple):
        return "list", args[0] if args else Any
    if origin in (dict, Dict) and args:
        return "dict", args[1]
    if origin is Union:
        shapes = [_shape(arg) for arg in args if arg is not type(None)]
        return next((s for s in shapes if s[0] != "open"), ("open", annotation))
    return "open", annotation


def _located(loc: Sequence[Any]) -> Tuple[str, List[str]]:
    """A pydantic error location as a key path (union tags left out) and the valid keys where it ends."""
    node: Any = Config
    parts: List[str] = []
    for part in map(str, loc):
        kind, inner = _shape(node)
        if kind == "union":
            node = inner.get(part)
            continue
        parts.append(part)
        if kind == "dict":
            node = inner
        elif kind in ("list", "section"):
            step = schema_step(node, part)
            node = step.schema if step.kind in ("field", "index") else None
        else:
            node = None
    kind, inner = _shape(node)
    keys = sorted((f.alias or name) for name, f in inner.model_fields.items()) if kind == "section" else []
    return ".".join(parts), keys


# ------------------------------------------------------------------------- pydantic -> UserError


def _translate(error: ValidationError, source: Optional[str]) -> UserError:
    # (pydantic reports the errors of a section validated on its own, search:, at their full locations)
    problems = [_one(item, source) for item in error.errors(include_url=False)]
    if len(problems) > 1:
        return _Multiple(problems[0], "\n".join("  also: " + p.message for p in problems[1:]))
    return problems[0]


class _Multiple(UserError):
    def __init__(self, first: UserError, extra: str):
        self.first, self.extra = first, extra
        super().__init__(file=first.file)

    @property
    def message(self) -> str:  # type: ignore[override]
        return self.first.message + "\n" + self.extra


def _one(item: Mapping[str, Any], source: Optional[str]) -> UserError:
    kind = item["type"]
    received = item.get("input")
    cause = item.get("ctx", {}).get("error")
    if kind == "extra_forbidden":
        where, _ = _located(item["loc"])
        _, keys = _located(item["loc"][:-1])
        return UserError("unknown key", where=where, received=str(item["loc"][-1]), choices=keys, file=source)
    where = _located(item["loc"])[0] or None
    if isinstance(cause, InvalidValue):
        located = copy.copy(cause.error)
        return located.at(file=source, prefix=where)
    if kind == "missing":
        return UserError("required key is missing", where=where, file=source)
    if kind == "literal_error":
        choices = re.findall(r"'([^']*)'", str(item.get("ctx", {}).get("expected", "")))
        return UserError(where=where, expected="one of the valid choices", received=received, choices=choices,
                         file=source)
    message = re.sub(r"^(Value error, |Input should be )", "", str(item["msg"]))
    return UserError(where=where, expected=_PLAIN_TYPES.get(kind, message), received=received, file=source)


_PLAIN_TYPES = {
    "int_parsing": "an integer", "int_type": "an integer", "int_from_float": "an integer",
    "float_parsing": "a number", "float_type": "a number", "finite_number": "a finite number",
    "bool_parsing": "true or false", "bool_type": "true or false",
    "string_type": "a string", "list_type": "a list", "dict_type": "a mapping", "tuple_type": "a list",
    "model_type": "a mapping of keys", "model_attributes_type": "a mapping of keys",
}
