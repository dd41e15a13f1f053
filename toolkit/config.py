"""The config language: YAML in, one validated :class:`Config` out.

This is the one boundary where user YAML is parsed and checked. Past it, code reads typed attributes
(``config.training.optimizer.learning_rate``), never nested dicts. Names of Keras objects (optimizers,
initializers, activations, layers) are checked by Keras' own ``get()`` when the model is built, so no
argument list of Keras is re-declared here.
"""

from __future__ import annotations

import copy
import re
import typing
from pathlib import Path
from typing import Any, Dict, Iterable, List, Literal, Mapping, Optional, Sequence, Tuple, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from toolkit.dotpath import get_path, set_path  # noqa: F401 - re-exported: config users reach them here
from toolkit.errors import UserError

# --------------------------------------------------------------------------------------------- YAML


class _Loader(yaml.SafeLoader):
    """Safe YAML (no object construction) that reads ``1e-4`` as a number, as users mean it.

    YAML 1.1 only reads floats with a dot (``1.0e-4``); ``1e-4`` would otherwise be a string.
    """


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _no_duplicate_keys(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicate_keys)


def parse_yaml(text: str, source: str = "<string>") -> Any:
    """Parses YAML text safely; malformed YAML becomes a UserError naming the line."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else None
        problem = getattr(error, "problem", None) or str(error)
        raise UserError(f"malformed YAML: {problem}", where=where, file=source) from None


def read_yaml_file(path: Union[str, Path]) -> Any:
    path = Path(path)
    if not path.is_file():
        raise UserError(
            "file not found" if not path.exists() else "not a file",
            expected="a YAML config file",
            received=str(path),
        )
    return parse_yaml(path.read_text(encoding="utf-8"), source=str(path))


def dump_yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=100)


# ---------------------------------------------------------------------------------------- dot paths


def parse_override(text: str) -> Tuple[str, Any]:
    """Parses one ``--set key.path=value``; the value is read as YAML (so ``[64,32]`` is a list)."""
    if "=" not in text:
        raise UserError(where="--set", expected="KEY=VALUE, e.g. training.epochs=10", received=text)
    key, _, raw_value = text.partition("=")
    key = key.strip()
    value = parse_yaml(raw_value, source=f"--set {key}") if raw_value.strip() else None
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
    model_config = ConfigDict(extra="forbid", validate_default=True)


def _positive_int_or_full(value: Any) -> Any:
    if value == "full":
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"expected a positive integer or 'full'; received {_show(value)}")
    return value


def _rate(value: Any) -> Any:
    if value is None:
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"expected a rate in [0, 1); received {_show(value)}")
    return float(value)


def _show(value: Any) -> str:
    from toolkit.errors import show

    return show(value)


class SplitConfig(_Section):
    """How the data is split three ways. Fractions are of the whole data set."""

    train: Optional[float] = Field(None, gt=0, lt=1)
    validation: Optional[float] = Field(None, gt=0, lt=1)
    test: Optional[float] = Field(None, ge=0, lt=1)
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
        split = self.split
        if split.column is not None:
            if any(f is not None for f in (split.train, split.validation, split.test)):
                raise ValueError(
                    "@split: expected either split.column or split fractions, not both; "
                    f"received column {split.column!r} and fractions"
                )
            return self
        has_test_file = self.test_path is not None
        if split.test is None:
            split.test = 0.0 if has_test_file else 0.15
        if has_test_file and split.test:
            raise ValueError(
                f"@split: expected split.test to be 0 when test_path gives the test split; received {split.test}"
            )
        if split.validation is None:
            split.validation = 0.15
        if split.train is None:
            split.train = round(1.0 - split.validation - split.test, 10)
        total = split.train + split.validation + split.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(
                "@split: expected split fractions train + validation + test to sum to 1; received "
                f"{split.train} + {split.validation} + {split.test} = {round(total, 6)}"
            )
        if split.train <= 0:
            raise ValueError(f"@split: expected a positive train fraction; received {split.train}")
        return self


class RegularizerConfig(_Section):
    """L1 and/or L2 penalties on a kernel: ``{l2: 1.0e-4}``, ``{l1: ..., l2: ...}``."""

    l1: float = Field(0.0, ge=0)
    l2: float = Field(0.0, ge=0)


KerasIdentifier = Union[str, Dict[str, Any]]


def _check_identifier(value: Any) -> Any:
    """A Keras identifier: a name, or ``{class_name: ..., config: {...}}`` (checked by Keras later)."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, dict):
        unknown = set(value) - {"class_name", "config", "module", "registered_name"}
        if "class_name" not in value or unknown:
            raise ValueError(
                "expected a name or {class_name: ..., config: {...}}; received " + _show(value)
            )
        return value
    raise ValueError("expected a name or {class_name: ..., config: {...}}; received " + _show(value))


class LayerConfig(_Section):
    """One entry of ``model.layers``: a Dense block overriding the model's defaults, or any Keras layer.

    A Dense block gives ``units`` (and optionally activation, initializer, regularizer, dropout,
    batchnorm). Any other Keras layer gives ``class_name`` and its ``config``, deserialized by Keras.
    """

    units: Optional[int] = Field(None, ge=1)
    activation: Optional[str] = None
    initializer: Optional[Any] = None
    regularizer: Optional[RegularizerConfig] = None
    dropout: Optional[float] = None
    batchnorm: Optional[bool] = None
    class_name: Optional[str] = None
    config: Dict[str, Any] = Field(default_factory=dict)

    @field_validator("initializer")
    @classmethod
    def _initializer(cls, value: Any) -> Any:
        return value if value is None else _check_identifier(value)

    @field_validator("dropout", mode="before")
    @classmethod
    def _dropout(cls, value: Any) -> Any:
        return _rate(value)

    @model_validator(mode="after")
    def _one_kind(self) -> "LayerConfig":
        dense_keys = [k for k in ("units", "activation", "initializer", "regularizer", "dropout", "batchnorm")
                      if getattr(self, k) is not None]
        if self.class_name is None and self.units is None:
            raise ValueError("expected 'units' (a Dense block) or 'class_name' (any Keras layer); received neither")
        if self.class_name is not None and dense_keys:
            raise ValueError(
                f"expected either Dense-block keys or class_name, not both; received class_name "
                f"{self.class_name!r} with {', '.join(dense_keys)} (put layer arguments under config:)"
            )
        if self.class_name is None and self.config:
            raise ValueError("expected config: only with class_name; received config for a Dense block")
        return self


class ModelConfig(_Section):
    hidden: Optional[List[int]] = None  # default [64] when layers is not given
    layers: Optional[List[LayerConfig]] = None
    activation: str = "relu"
    initializer: Any = "glorot_uniform"
    regularizer: Optional[RegularizerConfig] = None
    dropout: float = 0.0
    batchnorm: bool = False
    custom_modules: List[str] = Field(default_factory=list)

    @field_validator("initializer")
    @classmethod
    def _initializer(cls, value: Any) -> Any:
        return _check_identifier(value)

    @field_validator("dropout", mode="before")
    @classmethod
    def _dropout(cls, value: Any) -> Any:
        return _rate(value)

    @model_validator(mode="after")
    def _hidden_or_layers(self) -> "ModelConfig":
        if self.layers is not None and self.hidden is not None:
            raise ValueError("expected either hidden (Dense widths) or layers (per-layer specs), not both")
        if self.layers is None and self.hidden is None:
            self.hidden = [64]
        return self

    @field_validator("hidden", mode="before")
    @classmethod
    def _hidden_list(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            return [value]
        if isinstance(value, list):
            for i, units in enumerate(value):
                if isinstance(units, bool) or not isinstance(units, int) or units < 1:
                    raise ValueError(f"expected a positive integer at index {i}; received {_show(units)}")
        return value

    @field_validator("regularizer", mode="before")
    @classmethod
    def _no_regularizer(cls, value: Any) -> Any:
        return None if value in (None, False, "none") else value


class OptimizerConfig(BaseModel):
    """``{name: ..., learning_rate: ..., <any argument of that Keras optimizer>}``.

    Extra keys are the optimizer's own arguments (``momentum``, ``nesterov``, ``clipnorm``, ...);
    Keras checks them when the optimizer is built.
    """

    model_config = ConfigDict(extra="allow")

    name: str = "adam"
    learning_rate: float = Field(0.001, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @property
    def arguments(self) -> Dict[str, Any]:
        """The keyword arguments for the Keras optimizer (everything except `name`)."""
        return {"learning_rate": self.learning_rate, **(self.model_extra or {})}


class ScheduleConfig(BaseModel):
    """A Keras learning-rate schedule by snake_case name with its arguments.

    ``initial_learning_rate`` defaults to the optimizer's learning_rate.
    """

    model_config = ConfigDict(extra="allow")

    name: str

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @property
    def arguments(self) -> Dict[str, Any]:
        return dict(self.model_extra or {})


class EarlyStoppingConfig(_Section):
    monitor: str = "val_loss"
    patience: int = Field(5, ge=0)
    min_delta: float = Field(0.0, ge=0)
    mode: Literal["auto", "min", "max"] = "auto"
    restore_best_weights: bool = True


class MonitorConfig(_Section):
    gradients: bool = False  # record per-layer gradient and weight norms each epoch (gradients.csv)


class TrainingConfig(_Section):
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: Optional[ScheduleConfig] = None
    batch_size: Any = 32
    epochs: int = Field(20, ge=1)
    early_stopping: Optional[EarlyStoppingConfig] = None
    # Without early stopping, the run still ends with the weights of its best epoch (by val_loss), so
    # metrics.json and model.keras are the best epoch's; false keeps the last epoch's weights. With
    # early_stopping, its own restore_best_weights decides.
    restore_best_weights: bool = True
    loss: Optional[Any] = None
    metrics: Optional[List[Any]] = None
    class_weight: Optional[Union[Literal["balanced"], Dict[Union[int, str], float]]] = None
    shuffle: bool = True
    steps_per_execution: Any = "auto"
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)

    @field_validator("batch_size")
    @classmethod
    def _batch_size(cls, value: Any) -> Any:
        return _positive_int_or_full(value)

    @field_validator("steps_per_execution")
    @classmethod
    def _spe(cls, value: Any) -> Any:
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            return value
        raise ValueError(f"expected a positive integer or 'auto'; received {_show(value)}")

    @field_validator("early_stopping", "schedule", mode="before")
    @classmethod
    def _switch(cls, value: Any) -> Any:
        if value is False or value == "none":
            return None
        return {} if value is True else value


class DiagnoseConfig(_Section):
    baseline_error: Optional[float] = Field(None, ge=0)  # Bayes/human-level error; 0 when unknown


Task = Literal["auto", "binary", "multiclass", "regression"]


class Config(_Section):
    """A whole experiment: data, model, training (and optionally a search and diagnosis settings)."""

    name: str
    seed: int = Field(42, ge=0)
    task: Task = "auto"
    data: DataConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    diagnose: DiagnoseConfig = Field(default_factory=DiagnoseConfig)
    search: Optional[Dict[str, Any]] = None  # validated by toolkit.search

    _source: Optional[str] = PrivateAttr(default=None)

    @property
    def source(self) -> Optional[str]:
        """The YAML file this config came from (None when built from a dict)."""
        return self._source

    @property
    def base_dir(self) -> Path:
        """Folder that relative paths in the config (data files) are resolved against."""
        return Path(self._source).parent if self._source else Path.cwd()

    def to_dict(self) -> Dict[str, Any]:
        """The fully resolved config as plain data (defaults filled in), ready to dump as YAML."""
        return _plain(self.model_dump(mode="python"))

    def with_values(self, values: Mapping[str, Any]) -> "Config":
        """A new validated config with dot-path values applied (``{"model.dropout": 0.3}``)."""
        raw = self.to_dict()
        for path, value in values.items():
            set_path(raw, path, copy.deepcopy(value), where=path)
        return parse_config(raw, source=self._source)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k) if not isinstance(k, int) else k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# ----------------------------------------------------------------------------------- entry points


def load_config(path: Union[str, Path], overrides: Iterable[str] = ()) -> Config:
    """Reads a YAML config (following ``extends:``), applies ``--set`` overrides and validates it.

    Raises:
        UserError: for a missing file, malformed YAML or any invalid value, naming file and key path.
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
        raise _translate(error, raw, source) from None
    config._source = source
    return config


def _read_with_extends(path: Path, chain: Tuple[Path, ...]) -> dict:
    resolved = path.resolve()
    if resolved in chain:
        cycle = " -> ".join(str(p) for p in (*chain, resolved))
        raise UserError("extends: forms a cycle", received=cycle, file=str(path), where="extends")
    raw = read_yaml_file(path)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(expected="a mapping of config sections (data, model, training, ...)",
                        received=raw, file=str(path))
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    if not isinstance(parent, str):
        raise UserError(where="extends", expected="the path of a base config file", received=parent,
                        file=str(path))
    base_path = (path.parent / parent) if not Path(parent).is_absolute() else Path(parent)
    if not base_path.is_file():
        raise UserError("base config not found", where="extends", received=str(base_path), file=str(path))
    base = _read_with_extends(base_path, (*chain, resolved))
    base.pop("name", None)  # a derived config is named after its own file unless it says otherwise
    return deep_merge(base, raw)


# ------------------------------------------------------------------------- pydantic -> UserError


def _translate(error: ValidationError, raw: dict, source: Optional[str]) -> UserError:
    problems = [_one(item, raw, source) for item in error.errors(include_url=False)]
    first = problems[0]
    if len(problems) > 1:
        first.problem = (first.problem + "; " if first.problem else "")
        extra = "\n".join("  also: " + p.message for p in problems[1:])
        return _Multiple(first, extra)
    return first


class _Multiple(UserError):
    def __init__(self, first: UserError, extra: str):
        self.first, self.extra = first, extra
        super().__init__(file=first.file)

    @property
    def message(self) -> str:  # type: ignore[override]
        return self.first.message + "\n" + self.extra


def _one(item: Mapping[str, Any], raw: dict, source: Optional[str]) -> UserError:
    loc = [str(p) for p in item["loc"]]
    where = ".".join(loc) or None
    kind = item["type"]
    received = item.get("input")
    if kind == "extra_forbidden":
        return UserError("unknown key", where=where, received=loc[-1], choices=_keys_at(loc[:-1]), file=source)
    if kind == "missing":
        return UserError("required key is missing", where=where, choices=None, file=source)
    if kind == "literal_error":
        expected = str(item.get("ctx", {}).get("expected", ""))
        choices = re.findall(r"'([^']*)'", expected)
        return UserError(where=where, expected="one of the valid choices", received=received,
                         choices=choices, file=source)
    message = str(item["msg"])
    if message.startswith("Value error, "):
        message = message[len("Value error, "):]
        sub = re.match(r"@([\w.]+): ", message)  # a model-level check naming the key it is about
        if sub:
            where = ".".join(p for p in (where, sub.group(1)) if p)
            message = message[sub.end():]
        return UserError(message, where=where, file=source)
    expected = _PLAIN_TYPES.get(kind) or re.sub(r"^Input should be ", "", message)
    return UserError(where=where, expected=expected, received=received, file=source)


_PLAIN_TYPES = {
    "int_parsing": "an integer", "int_type": "an integer", "int_from_float": "an integer",
    "float_parsing": "a number", "float_type": "a number",
    "bool_parsing": "true or false", "bool_type": "true or false",
    "string_type": "a string", "list_type": "a list", "dict_type": "a mapping",
    "model_type": "a mapping of keys", "model_attributes_type": "a mapping of keys",
}


def _keys_at(loc: Sequence[str]) -> List[str]:
    """The valid keys of the config section at `loc` (for 'unknown key' messages)."""
    model: Any = Config
    for part in loc:
        if re.fullmatch(r"\d+", part):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return []
        model = _section_type(field.annotation)
        if model is None:
            return []
    return sorted(model.model_fields)


def _section_type(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _section_type(arg)
        if found is not None:
            return found
    return None
