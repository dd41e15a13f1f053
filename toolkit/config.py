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
from toolkit.errors import InvalidValue, UserError, did_you_mean, quote_hint, show
from toolkit.safe_yaml import ValueLoader, dump_yaml, parse_yaml, read_text, read_yaml_file

# The dot-path helpers (toolkit.dotpath) and the YAML helpers (toolkit.safe_yaml) belong to the config
# language too: other modules import them from here.
__all__ = ["Config", "load_config", "parse_config", "parse_override", "deep_merge", "schema_step", "get_path",
           "set_path", "dump_yaml", "read_yaml_file", "parse_yaml", "check_with_data", "class_weight_indices"]

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
    key: Optional[str] = None  # streamed tables: the column whose hash picks each row's split (default: row index)


# Keras' random augmentation layers data.augment may name (active in training only). MixUp and CutMix are left
# out: they mix labels too, which a layer inside the model cannot do.
AUGMENT_LAYERS = ("RandomFlip", "RandomRotation", "RandomZoom", "RandomTranslation", "RandomCrop", "RandomContrast",
                  "RandomBrightness", "RandomShear", "RandomGrayscale", "RandomHue", "RandomSaturation",
                  "RandomColorJitter", "RandomColorDegeneration", "RandomSharpness", "RandomPosterization",
                  "RandomInvert", "RandomErasing", "RandomGaussianBlur", "RandomElasticTransform", "RandomPerspective",
                  "RandAugment", "AugMix", "Solarization")


def _augment_name(value: str) -> str:
    if value not in AUGMENT_LAYERS:
        why = f"{value} mixes labels too, which a layer inside the model cannot do" if value in ("MixUp", "CutMix") \
            else None
        raise InvalidValue(why, expected="a Keras random augmentation layer (active in training only)",
                           received=value, choices=list(AUGMENT_LAYERS))
    return value


class _KerasClassEntry(_Section):
    """A Keras object by class: ``{class_name: ..., config: {...}}``, or its name alone (subclasses check the
    name; Keras checks the arguments when it makes the object)."""

    class_name: str
    config: Dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: Any) -> Any:
        return {"class_name": value} if isinstance(value, str) else value

    @field_validator("config", mode="before")
    @classmethod
    def _config_mapping(cls, value: Any) -> Any:
        return {} if value is None else value

    @field_validator("config")
    @classmethod
    def _config_numbers(cls, value: Dict[str, Any]) -> Dict[str, Any]:
        return _keras_arguments(value)


class AugmentConfig(_KerasClassEntry):
    """One entry of ``data.augment``: a Keras random preprocessing layer by class, ``{class_name: RandomFlip,
    config: {mode: horizontal}}`` (or its name alone), active in training only."""

    class_name: Annotated[str, AfterValidator(_augment_name)]


def _image_size(value: Any) -> Any:
    if (not isinstance(value, list) or len(value) != 2
            or not all(isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= 65_535 for d in value)):
        raise InvalidValue(expected="[height, width]: two whole numbers of pixels from 1 to 65535", received=value)
    return value


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
    # images (toolkit.sources.images)
    image_size: Annotated[Optional[List[int]], AfterValidator(lambda v: v if v is None else _image_size(v))] = None
    color_mode: Literal["rgb", "grayscale", "rgba"] = "rgb"
    cache: Literal["auto", "memory", "none"] = "auto"
    augment: List[AugmentConfig] = Field(default_factory=list)
    # streamed tables (toolkit.sources.streaming)
    stream: Optional[bool] = None  # None: automatic (several files, or more than STREAM_THRESHOLD_BYTES)
    shuffle_buffer: Annotated[int, _int_from(1, 10**8)] = 10_000

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


@dataclasses.dataclass(frozen=True)
class _Range:
    """What one optimizer or schedule argument takes: a number in a range, an integer, or true/false."""

    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False  # low itself excluded
    high_open: bool = False
    integer: bool = False
    boolean: bool = False
    nullable: bool = False  # null (Keras' default, "off") is allowed
    why: str = ""

    def expected(self) -> str:
        if self.boolean:
            text = "true or false"
        else:
            text = "an integer" if self.integer else "a number"
            if self.low is not None and self.high is not None:
                opening, closing = "(" if self.low_open else "[", ")" if self.high_open else "]"
                text += f" in {opening}{self.low:g}, {self.high:g}{closing}"
            elif self.low is not None:
                text += f" {'>' if self.low_open else '>='} {self.low:g}"
            elif self.high is not None:
                text += f" {'<' if self.high_open else '<='} {self.high:g}"
        return text + (" or null" if self.nullable else "") + (f" ({self.why})" if self.why else "")

    def takes(self, value: Any) -> bool:
        if value is None:
            return self.nullable
        if self.boolean:
            return isinstance(value, bool)
        if isinstance(value, bool) or not isinstance(value, int if self.integer else (int, float)):
            return False
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or not (value >= self.high if self.high_open else value > self.high)


_POSITIVE = _Range(0, low_open=True)
_NON_NEGATIVE = _Range(0)
_FRACTION = _Range(0, 1, high_open=True)  # a decay or averaging factor: 1 would never move
_UNIT = _Range(0, 1)
_BOOLEAN = _Range(boolean=True)
_CLIP = _Range(0, low_open=True, nullable=True)

# Every argument of Keras' optimizers that takes a number or a flag, by name (the same name means the same
# thing in every optimizer), with the ranges Keras itself enforces or outside which training breaks (NaN,
# a division by zero, a rate that never moves). Arguments not listed are still checked to be finite.
OPTIMIZER_ARGUMENTS: Dict[str, _Range] = {
    "beta_1": _FRACTION, "beta_2": _FRACTION, "adam_beta_1": _FRACTION, "adam_beta_2": _FRACTION,
    "rho": _FRACTION, "momentum": _UNIT, "ema_momentum": _UNIT,
    "epsilon": _POSITIVE, "epsilon_1": _POSITIVE, "epsilon_2": _POSITIVE, "clip_threshold": _POSITIVE,
    "clipnorm": _CLIP, "clipvalue": _CLIP, "global_clipnorm": _CLIP,
    "weight_decay": _Range(0, nullable=True), "adam_weight_decay": _NON_NEGATIVE,
    "initial_accumulator_value": _NON_NEGATIVE, "learning_rate_power": _Range(high=0),
    "l1_regularization_strength": _NON_NEGATIVE, "l2_regularization_strength": _NON_NEGATIVE,
    "l2_shrinkage_regularization_strength": _NON_NEGATIVE, "beta": _NON_NEGATIVE,
    "beta_2_decay": _Range(high=0, why="the decay exponent of beta_2"), "rms_rate": _NON_NEGATIVE,
    "adam_lr_ratio": _POSITIVE, "loss_scale_factor": _CLIP,
    "gradient_accumulation_steps": _Range(2, integer=True, nullable=True),
    "ema_overwrite_frequency": _Range(1, integer=True, nullable=True),
    "ns_steps": _Range(1, integer=True), "warmup_steps": _Range(0, integer=True),
    "use_ema": _BOOLEAN, "amsgrad": _BOOLEAN, "nesterov": _BOOLEAN, "centered": _BOOLEAN,
    "relative_step": _BOOLEAN, "exclude_embeddings": _BOOLEAN,
}
# (optimizer, argument) where one optimizer differs from the rest.
OPTIMIZER_EXCEPTIONS: Dict[Tuple[str, str], _Range] = {
    ("lion", "beta_1"): _Range(0, 1, low_open=True),
    ("adamw", "weight_decay"): _NON_NEGATIVE,
}
# Keras refuses more than one way of clipping gradients.
_CLIPPING = ("clipnorm", "clipvalue", "global_clipnorm")

# The same for learning-rate schedules (by snake_case name). Steps count mini-batches.
SCHEDULE_ARGUMENTS: Dict[str, _Range] = {
    "initial_learning_rate": _POSITIVE, "decay_steps": _POSITIVE, "first_decay_steps": _POSITIVE,
    "alpha": _Range(0, 1, why="the fraction of the initial rate the decay ends at"),
    "end_learning_rate": _NON_NEGATIVE, "power": _NON_NEGATIVE,
    "warmup_target": _CLIP, "warmup_steps": _NON_NEGATIVE, "staircase": _BOOLEAN, "cycle": _BOOLEAN,
}
SCHEDULE_EXCEPTIONS: Dict[Tuple[str, str], _Range] = {
    ("exponential_decay", "decay_rate"): _Range(0, 1, low_open=True, why="above 1 the rate grows without bound"),
    ("inverse_time_decay", "decay_rate"): _NON_NEGATIVE,
    ("cosine_decay", "initial_learning_rate"): _Range(0, why="0 with a warmup_target warms up from 0"),
    ("cosine_decay_restarts", "t_mul"): _Range(1, why="the growth of each period; below 1 the periods shrink to "
                                                     "nothing and the rate becomes NaN"),
    ("cosine_decay_restarts", "m_mul"): _Range(0, 1, why="the fraction of the rate each restart keeps"),
}


def _check_ranges(arguments: Dict[str, Any], table: Mapping[str, _Range],
                  exceptions: Mapping[Tuple[str, str], _Range], name: str) -> None:
    """Refuses an argument outside its range; integers given for numbers become floats (Keras wants floats)."""
    for key, value in arguments.items():
        wanted = exceptions.get((name, key)) or table.get(key)
        if wanted is None:
            continue
        if not wanted.takes(value):
            raise InvalidValue(where=key, expected=wanted.expected(), received=value)
        if not (wanted.integer or wanted.boolean) and isinstance(value, int) and not isinstance(value, bool):
            arguments[key] = float(value)


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

    Extra keys are the optimizer's own arguments (``momentum``, ``nesterov``, ``clipnorm``, ...), each
    checked against :data:`OPTIMIZER_ARGUMENTS`.
    """

    name: str = "adam"
    learning_rate: Number = Field(0.001, gt=0)

    @model_validator(mode="after")
    def _argument_ranges(self) -> "OptimizerConfig":
        extra = self.model_extra or {}
        _check_ranges(extra, OPTIMIZER_ARGUMENTS, OPTIMIZER_EXCEPTIONS, self.name.lower())
        clipping = [key for key in _CLIPPING if extra.get(key) is not None]
        if len(clipping) > 1:
            raise InvalidValue(f"Keras clips gradients one way only; received {' and '.join(clipping)}",
                               expected=f"one of {', '.join(_CLIPPING)}")
        return self

    @property
    def arguments(self) -> Dict[str, Any]:
        """The keyword arguments for the Keras optimizer (everything except `name`)."""
        return {"learning_rate": self.learning_rate, **(self.model_extra or {})}


class ScheduleConfig(_KerasArguments):
    """A Keras learning-rate schedule by snake_case name with its arguments (see :data:`SCHEDULE_ARGUMENTS`).

    ``initial_learning_rate`` defaults to the optimizer's learning_rate, for the schedules that take one.
    """

    @model_validator(mode="after")
    def _argument_ranges(self) -> "ScheduleConfig":
        from toolkit.keras_names import snake_case

        extra = self.model_extra or {}
        name = snake_case(self.name)
        _check_ranges(extra, SCHEDULE_ARGUMENTS, SCHEDULE_EXCEPTIONS, name)
        if name == "piecewise_constant_decay":
            _piecewise(extra.get("boundaries"), extra.get("values"))
        return self

    @property
    def arguments(self) -> Dict[str, Any]:
        return dict(self.model_extra or {})


def _piecewise(boundaries: Any, values: Any) -> None:
    """PiecewiseConstantDecay: ascending step boundaries, and one learning rate more than boundaries."""
    if boundaries is None or values is None:
        return  # a missing argument is named by the argument check
    if not isinstance(boundaries, list) or not boundaries or not all(_NON_NEGATIVE.takes(b) for b in boundaries) \
            or any(b >= a for a, b in zip(boundaries[1:], boundaries)):
        raise InvalidValue(where="boundaries", expected="a list of steps >= 0 in ascending order, e.g. [1000, 2000]",
                           received=boundaries)
    if not isinstance(values, list) or not all(_POSITIVE.takes(v) for v in values) or \
            len(values) != len(boundaries) + 1:
        raise InvalidValue(where="values", expected=f"a list of {len(boundaries) + 1} learning rates > 0 (one more "
                                                    f"than boundaries: before, between and after them)",
                           received=values)
    values[:] = [float(v) for v in values]  # learning rates: one dtype, whatever the YAML wrote


class EarlyStoppingConfig(_Section):
    monitor: str = "val_loss"
    patience: Annotated[int, _int_from(0, INT32_MAX)] = 5
    min_delta: Number = Field(0.0, ge=0)
    mode: Literal["auto", "min", "max"] = "auto"
    restore_best_weights: bool = True


class MonitorConfig(_Section):
    gradients: bool = False  # record per-layer gradient and weight norms each epoch (gradients.csv)


# Keras callbacks a config may not name, and why: ktk manages what they do (checkpoints, logs, early stopping,
# progress), or they run code or send data out of the run directory. Any other callback of keras.callbacks is
# allowed by class name (checked against Keras' files by toolkit.keras_names, and again by Keras).
REFUSED_CALLBACKS: Dict[str, str] = {
    "LambdaCallback": "it runs Python functions, and nothing in a config runs code",
    "LearningRateScheduler": "it takes a Python function; use training.schedule (or ReduceLROnPlateau)",
    "RemoteMonitor": "it sends every epoch's logs to a URL; use tracking.mlflow for a tracking server",
    "ModelCheckpoint": "ktk saves the best epoch's model itself (model.keras in the run directory)",
    "BackupAndRestore": "ktk manages its own checkpoints in the run directory",
    "OrbaxCheckpoint": "ktk manages its own checkpoints in the run directory",
    "CSVLogger": "ktk writes history.csv itself",
    "TensorBoard": "use tracking.tensorboard (or --tensorboard): ktk writes tensorboard/ in the run directory",
    "EarlyStopping": "use training.early_stopping: it also decides the best epoch ktk restores and reports",
    "ProgbarLogger": "ktk shows progress itself (-q hides it)",
    "History": "ktk records the history itself (history.csv)",
    "Callback": "the base class does nothing",
    "CallbackList": "not a callback",
}


def _callback_name(value: str) -> str:
    reason = REFUSED_CALLBACKS.get(value)
    if reason is not None:
        raise InvalidValue(f"{value} cannot be used here: {reason}", expected="a Keras callback ktk does not manage, "
                           "e.g. ReduceLROnPlateau or TerminateOnNaN", received=value)
    return value


class CallbackConfig(_KerasClassEntry):
    """One Keras callback by class: ``{class_name: ReduceLROnPlateau, config: {monitor: val_loss, ...}}``."""

    class_name: Annotated[str, AfterValidator(_callback_name)]


MAX_CPU_DEVICES = 64  # logical CPU devices a mirrored run may split the CPU into (each a replica on shared cores)


class DistributeConfig(_Section):
    """``training.distribute``: one model trained data-parallel over several devices or machines.

    ``mirrored``: every visible GPU of this machine, or `devices` (``GPU:0``, ``CPU:1``...); ``multi_worker``:
    one model across machines (``ktk run --role/--cluster/--index`` or ``TF_CONFIG``). ``training.batch_size``
    is the global batch, split evenly across replicas.
    """

    strategy: Literal["mirrored", "multi_worker"]
    devices: Optional[List[str]] = None  # mirrored only: the devices to use (default every GPU, else the CPU)

    @field_validator("devices")
    @classmethod
    def _device_names(cls, value: Optional[List[str]]) -> Optional[List[str]]:
        if value is None:
            return value
        if not value:
            raise InvalidValue(expected="at least one device, such as GPU:0", received=value)
        names = []
        for i, name in enumerate(value):
            match = re.fullmatch(r"(?:/?device:)?/?(cpu|gpu):(\d{1,4})", name.strip(), re.IGNORECASE)
            if match is None:
                raise InvalidValue(where=str(i), expected="a device such as GPU:0 or CPU:1", received=name)
            names.append(f"{match.group(1).upper()}:{int(match.group(2))}")
            if names[-1].startswith("CPU:") and int(match.group(2)) >= MAX_CPU_DEVICES:
                # CPU:N splits the CPU into N + 1 logical devices (toolkit.hardware.strategy.split_cpu)
                raise InvalidValue(where=str(i), expected=f"CPU:0 to CPU:{MAX_CPU_DEVICES - 1} (CPU:N splits the CPU "
                                   "into N + 1 logical devices)", received=name)
        if len(set(names)) != len(names):
            raise InvalidValue(expected="each device once", received=value)
        return names

    @model_validator(mode="after")
    def _devices_for_mirrored(self) -> "DistributeConfig":
        if self.devices is not None and self.strategy != "mirrored":
            raise InvalidValue(where="devices", expected="devices only with strategy: mirrored (each multi_worker "
                               "worker uses the devices it sees)", received=self.devices)
        return self


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
    callbacks: List[CallbackConfig] = Field(default_factory=list)  # (a top-level callbacks: list lands here)
    # Hardware switches (README "Training on GPUs"): the Keras dtype policy (the output layer stays float32);
    # XLA (auto: on with a GPU, off on CPU, where it was measured slower); op determinism.
    precision: Literal["float32", "mixed_float16", "mixed_bfloat16"] = "float32"
    jit_compile: Any = "auto"
    deterministic: bool = True
    distribute: Optional[DistributeConfig] = None

    @field_validator("jit_compile")
    @classmethod
    def _jit_compile(cls, value: Any) -> Any:
        if value == "auto" or isinstance(value, bool):
            return value
        raise InvalidValue(expected="auto, true or false", received=value, choices=["auto", "true", "false"])

    @field_validator("distribute", mode="before")
    @classmethod
    def _distribute(cls, value: Any) -> Any:
        if value is None or value is False or value == "off":
            return None
        return {"strategy": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _xla_without_determinism(self) -> "TrainingConfig":
        # Keras compiles without XLA while op determinism is on (not every op XLA makes has a deterministic
        # kernel), only warning: said here rather than ignored.
        if self.jit_compile is True and self.deterministic:
            raise InvalidValue("Keras does not compile with XLA while op determinism is on; set training."
                               "deterministic: false to use XLA", where="jit_compile",
                               expected="auto or false with deterministic: true", received=True)
        return self

    @field_validator("callbacks", mode="before")
    @classmethod
    def _no_callbacks(cls, value: Any) -> Any:
        return [] if value is None else value

    @model_validator(mode="after")
    def _callbacks_fit(self) -> "TrainingConfig":
        for i, callback in enumerate(self.callbacks):
            if callback.class_name == "ReduceLROnPlateau" and self.schedule is not None:
                raise InvalidValue("ReduceLROnPlateau sets the optimizer's learning rate, which a schedule "
                                   "(training.schedule) computes instead; use one of the two",
                                   where=f"callbacks.{i}.class_name", received=callback.class_name)
        return self

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
        weights: Dict[Union[int, str], float] = {}
        for key, weight in value.items():
            if isinstance(key, bool) or not isinstance(key, (int, str)):
                raise InvalidValue(expected="class names or indexes as keys", received=key, hint=quote_hint(key))
            if isinstance(key, int) and key < 0:
                raise InvalidValue(where=str(key), expected="a class index from 0 (or a class name)", received=key)
            twin = next((k for k in weights if str(k) == str(key)), None)
            if twin is not None:
                raise InvalidValue(f"two weights for one class: keys {show(twin)} and {show(key)} name the same "
                                   "class", expected="one weight per class")
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


class TensorBoardConfig(_Section):
    """``tracking.tensorboard``: ``true``, or options of Keras' TensorBoard callback under ktk's names."""

    enabled: bool = True  # (so that --tensorboard can switch on a section that sets options)
    histograms: Annotated[int, _int_from(0, INT32_MAX)] = 0  # every N epochs; 0: none (histogram_freq)
    write_graph: bool = False
    write_images: bool = False
    write_steps_per_second: bool = False
    update_freq: Any = "epoch"  # "epoch", or every N batches
    profile_batch: Any = 0  # a batch to profile, [first, last] batches, or 0 for none

    @field_validator("update_freq")
    @classmethod
    def _update_freq(cls, value: Any) -> Any:
        return _positive_int_or("epoch", value)

    @field_validator("profile_batch")
    @classmethod
    def _profile_batch(cls, value: Any) -> Any:
        ok = (isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= INT32_MAX) or (
            isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) and not isinstance(v, bool)
                                                                and 1 <= v <= INT32_MAX for v in value)
            and value[0] <= value[1])
        if not ok:
            raise InvalidValue(expected="a batch number (0: no profiling) or [first, last] batch numbers from 1",
                               received=value)
        return value


MLFLOW_EXTRA = 'pip install "ktk[mlflow]"'
DEFAULT_MLFLOW_URI = "sqlite:///mlflow.db"


class MLflowConfig(_Section):
    """``tracking.mlflow``: ``true`` (a SQLite store ``mlflow.db`` in the current folder), or its settings."""

    enabled: bool = True  # (so that --mlflow can switch on a section that sets options)
    tracking_uri: str = DEFAULT_MLFLOW_URI  # any MLflow tracking URI: sqlite:///..., a folder, http://...
    experiment: Optional[str] = None  # default: the config's name
    log_model: bool = True  # upload model.keras as an artifact

    @field_validator("tracking_uri")
    @classmethod
    def _uri(cls, value: str) -> str:
        if not value.strip() or "\0" in value:
            raise InvalidValue(expected="an MLflow tracking URI, e.g. sqlite:///mlflow.db, a folder or "
                                        "http://host:5000", received=value)
        return value

    @field_validator("experiment")
    @classmethod
    def _experiment(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and (not value.strip() or len(value) > 500):
            raise InvalidValue(expected="an experiment name of 1 to 500 characters", received=value)
        return value

    @model_validator(mode="after")
    def _installed(self) -> "MLflowConfig":
        import importlib.util

        if self.enabled and importlib.util.find_spec("mlflow") is None:  # found without importing it
            raise InvalidValue(f"MLflow is not installed; it is an optional extra: {MLFLOW_EXTRA}",
                               expected="mlflow installed", received="tracking.mlflow")
        return self


class TrackingConfig(_Section):
    """Where runs are also recorded: TensorBoard event files in the run directory, an MLflow tracking store."""

    tensorboard: Optional[TensorBoardConfig] = None
    mlflow: Optional[MLflowConfig] = None

    @field_validator("tensorboard", "mlflow", mode="before")
    @classmethod
    def _switch(cls, value: Any) -> Any:
        if value is None or value is False or value == "none":
            return None
        return {} if value is True else value

    @property
    def tensorboard_on(self) -> bool:
        return self.tensorboard is not None and self.tensorboard.enabled

    @property
    def mlflow_on(self) -> bool:
        return self.mlflow is not None and self.mlflow.enabled


class DiagnoseConfig(_Section):
    baseline_error: Optional[Number] = Field(None, ge=0)  # Bayes/human-level error; 0 when unknown


Task = Literal["auto", "binary", "multiclass", "regression"]
# training keys left out of to_dict at these values (configs and results from before them read the same)
HARDWARE_DEFAULTS = {"precision": "float32", "jit_compile": "auto", "deterministic": True, "distribute": None}
# data keys left out of to_dict at these values, for the same reason
DATA_DEFAULTS = {"image_size": None, "color_mode": "rgb", "cache": "auto", "augment": [], "stream": None,
                 "shuffle_buffer": 10_000}


class Config(_Section):
    """A whole experiment: data, model, training (and optionally a search and diagnosis settings)."""

    name: Annotated[str, AfterValidator(_run_name)]
    seed: Annotated[int, _int_from(0, SEED_MAX)] = 42
    task: Task = "auto"
    data: DataConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    diagnose: DiagnoseConfig = Field(default_factory=DiagnoseConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    # Written at the top level or under training: (its one home); a top-level list is moved there.
    callbacks: Optional[List[CallbackConfig]] = None
    # A toolkit.search.SearchConfig, validated here (its schema is loaded only for configs that have one);
    # toolkit.search.parse_search checks it against the rest of the config.
    search: Optional[Any] = None

    _source: Optional[str] = PrivateAttr(default=None)
    _origins: Dict[str, str] = PrivateAttr(default_factory=dict)  # key path -> the file that set it (extends:)

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

    @model_validator(mode="after")
    def _callbacks_under_training(self) -> "Config":
        if self.callbacks is not None:
            if self.training.callbacks:
                raise InvalidValue(where="callbacks", expected="callbacks either at the top level or under "
                                   "training:, not both", received="both")
            self.training.callbacks = self.callbacks
            self.callbacks = None
            TrainingConfig._callbacks_fit(self.training)
        return self

    @model_validator(mode="after")
    def _no_class_weights_for_regression(self) -> "Config":
        if self.task == "regression" and self.training.class_weight is not None:
            raise InvalidValue(where="training.class_weight", expected="no class weights for a regression task",
                               received=self.training.class_weight)
        return self

    @property
    def source(self) -> Optional[str]:
        """The YAML file this config came from (None when built from a dict)."""
        return self._source

    def file_of(self, where: Optional[str]) -> Optional[str]:
        """The file that set the key path `where`: the config's own file, or a base file it ``extends:``."""
        return _file_of(self._origins, where, self._source)

    @property
    def base_dir(self) -> Path:
        """Folder that relative paths in the config (data files, custom module files) are resolved against."""
        return Path(self._source).parent if self._source else Path.cwd()

    def to_dict(self) -> Dict[str, Any]:
        """The fully resolved config as plain data (defaults filled in), ready to dump as YAML."""
        data = _yaml_data(self.model_dump(mode="python"))
        # Left out when unused, so that configs and results from before these keys existed read the same
        # (a sweep resumes, compare shows no new column).
        del data["callbacks"]
        if not data["training"]["callbacks"]:
            del data["training"]["callbacks"]
        if data["tracking"] == {"tensorboard": None, "mlflow": None}:
            del data["tracking"]
        for key, default in HARDWARE_DEFAULTS.items():
            if data["training"][key] == default:
                del data["training"][key]
        for key, default in DATA_DEFAULTS.items():
            if data["data"][key] == default:
                del data["data"][key]
        if data["data"]["split"]["key"] is None:
            del data["data"]["split"]["key"]
        return data

    def with_values(self, values: Mapping[str, Any]) -> "Config":
        """A new validated config with dot-path values applied (``{"model.dropout": 0.3}``)."""
        raw = self.to_dict()
        origins = dict(self._origins)
        for path, value in values.items():
            set_path(raw, path, copy.deepcopy(value), where=path)
            _replace_origins(origins, path, value, self._source)
        return _parse(raw, self._source, origins)


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
        UserError: for a missing, unreadable or malformed file, or any invalid value, naming file and key path
            (the base file's, for a key that a base file named by ``extends:`` holds).
    """
    path = Path(path)
    raw, origins = _read_with_extends(path, chain=())
    for text in overrides:
        key, value = parse_override(text)
        set_path(raw, key, value, where=f"--set {key}")
        _replace_origins(origins, key, value, str(path))
    raw.setdefault("name", path.stem)
    return _parse(raw, str(path), origins)


def parse_config(raw: Any, source: Optional[str] = None) -> Config:
    """Validates a plain dict (as read from YAML) into a :class:`Config`."""
    return _parse(raw, source, {})


def _parse(raw: Any, source: Optional[str], origins: Dict[str, str]) -> Config:
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
        raise _translate(error, source, origins) from None
    config._source = source
    config._origins = origins
    return config


def class_weight_indices(config: Config, task: str, class_names: Optional[Sequence[str]],
                         num_classes: Optional[int]) -> Optional[Dict[int, float]]:
    """``training.class_weight`` given as a mapping, as {class index: weight} for the data's classes.

    A key is a class name, else an index; two keys naming one class are refused. ``balanced`` (weights from
    the training split's counts) and no weights give None.

    Raises:
        UserError: at ``training.class_weight`` (a regression task) or ``training.class_weight.<key>``.
    """
    spec = config.training.class_weight
    if spec is None:
        return None
    if task == "regression":
        raise UserError(where="training.class_weight", expected="no class weights for a regression task",
                        received=spec)
    if spec == "balanced":
        return None
    names = [str(n) for n in class_names] if class_names else [str(i) for i in range(num_classes or 2)]
    weights: Dict[int, float] = {}
    keys: Dict[int, Any] = {}
    for key, value in spec.items():
        text = str(key)
        if text in names:
            index = names.index(text)
        elif text.isdigit() and int(text) < len(names):
            index = int(text)
        else:
            raise UserError(where=f"training.class_weight.{key}", expected=f"a class name or index from 0 to "
                            f"{len(names) - 1}", received=key, choices=names)
        if index in keys:
            raise UserError(f"two weights for one class: keys {show(keys[index])} and {show(key)} both name class "
                            f"{show(names[index])}", where="training.class_weight", expected="one weight per class")
        keys[index] = key
        weights[index] = float(value)
    return weights


def check_with_data(config: Config, data: Any) -> None:
    """The checks of a config that need its data, as ``ktk run`` and ``ktk tune`` make them before training:
    class weights name the data's classes (and there are classes), and the early-stopping monitor is a
    metric the model of the data's task reports. Imports no Keras.

    Args:
        data: a loaded :class:`toolkit.data.Dataset` (its task, class names and number of classes).
    """
    from toolkit.keras_names import check_config_monitor

    class_weight_indices(config, data.task, data.class_names, data.num_classes)
    check_config_monitor(config, data.task)


# The config sections: a file whose top-level keys are none of these (nor close to one) is not a config.
_SECTIONS = ("callbacks", "data", "diagnose", "extends", "model", "name", "search", "seed", "task", "tracking",
             "training")


def _read_with_extends(path: Path, chain: Tuple[Path, ...],
                       named_by: Optional[Path] = None) -> Tuple[dict, Dict[str, str]]:
    """The config of `path` merged over the bases it extends, and which file set each key path."""
    where = "extends" if named_by is not None else None
    file = str(named_by) if named_by is not None else None
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError, ValueError):  # a loop of links, a name too long: said when it is read
        resolved = path.absolute()
    if resolved in chain:
        cycle = " -> ".join(str(p) for p in (*chain, resolved))
        raise UserError("extends: forms a cycle", received=cycle, file=file, where=where)
    text = read_text(path, where=where, file=file)
    raw = parse_yaml(text, source=str(path))
    if raw is None:
        raw = {}
    _check_is_config(raw, text, path, where, file)
    parent = raw.pop("extends", None)
    origins: Dict[str, str] = {}
    if parent is None:
        _replace_origins(origins, None, raw, str(path))
        return raw, origins
    if not isinstance(parent, str) or not parent:
        raise UserError(where="extends", expected="the path of a base config file", received=parent,
                        file=str(path), hint=quote_hint(parent) if parent is not None else None)
    base_path = (path.parent / parent) if not Path(parent).is_absolute() else Path(parent)
    base, origins = _read_with_extends(base_path, (*chain, resolved), named_by=path)
    base.pop("name", None)  # a derived config is named after its own file unless it says otherwise
    origins.pop("name", None)
    _merge_origins(origins, base, raw, str(path))
    return deep_merge(base, raw), origins


def _check_is_config(raw: Any, text: str, path: Path, where: Optional[str], file: Optional[str]) -> None:
    """Refuses, in one message that does not echo it, a file that is not a config (a CSV, /etc/passwd):
    not a mapping, or a mapping none of whose top-level keys is a config section or close to one."""
    expected = f"a YAML config file (a mapping of config sections: {', '.join(_SECTIONS)})"
    received = str(path) if where else UserError._UNSET
    if not isinstance(raw, dict):
        kind = "text" if isinstance(raw, str) else "a list" if isinstance(raw, list) else "a single value"
        raise UserError(f"not a config file: it holds {kind}, not a mapping of config sections", where=where,
                        expected=expected, received=received, file=file or str(path))
    keys = list(raw)
    if not keys or not all(isinstance(k, str) for k in keys):
        return  # a non-text key is said where it is (see _one)
    if any(k in _SECTIONS or did_you_mean(k, _SECTIONS) for k in keys if len(k) <= 100):
        return  # a config; a misspelt section is an unknown key with a "did you mean"
    raise UserError(f"not a config file: none of its top-level keys is a config section (the first is at "
                    f"{_first_key_line(text)})", where=where, expected=expected, received=received,
                    file=file or str(path))


def _first_key_line(text: str) -> str:
    import yaml

    from toolkit.safe_yaml import ConfigLoader

    try:
        node = yaml.compose(text, Loader=ConfigLoader)  # parsed once already: it composes
        return f"line {node.value[0][0].start_mark.line + 1}"
    except (yaml.YAMLError, AttributeError, IndexError, TypeError):
        return "its start"


def _replace_origins(origins: Dict[str, str], path: Optional[str], value: Any, file: Optional[str]) -> None:
    """Records that `file` set `value` at key path `path` (None: the whole config), replacing what was there."""
    if path is not None:
        for key in [k for k in origins if k == path or k.startswith(path + ".")]:
            del origins[key]
        if file is not None:
            origins[path] = file
    items = value.items() if isinstance(value, Mapping) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        _replace_origins(origins, f"{path}.{key}" if path is not None else str(key), item, file)


def _merge_origins(origins: Dict[str, str], base: Mapping, override: Mapping, file: str,
                   prefix: Optional[str] = None) -> None:
    """The origins of ``deep_merge(base, override)``: mappings merge key by key, anything else replaces."""
    for key, value in override.items():
        path = f"{prefix}.{key}" if prefix is not None else str(key)
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            origins[path] = file
            _merge_origins(origins, base[key], value, file, path)
        else:
            _replace_origins(origins, path, value, file)


def _file_of(origins: Mapping[str, str], where: Optional[str], default: Optional[str]) -> Optional[str]:
    """The file that set the longest leading part of key path `where` (keys may hold dots: search.space)."""
    if not where or not origins:
        return default
    parts = str(where).split(".")
    for end in range(len(parts), 0, -1):
        found = origins.get(".".join(parts[:end]))
        if found is not None:
            return found
    return default


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


MAX_PROBLEMS = 6  # problems one message lists; a file that is mostly wrong says how many more there are


def _translate(error: ValidationError, source: Optional[str], origins: Mapping[str, str]) -> UserError:
    # (pydantic reports the errors of a section validated on its own, search:, at their full locations)
    problems = []
    for item in error.errors(include_url=False):
        problem = _one(item, source)
        problem.file = _file_of(origins, problem.where, problem.file or source)
        problem.args = (problem.message,)
        problems.append(problem)
    if len(problems) > 1:
        shown = problems[1:MAX_PROBLEMS]
        extra = "\n".join("  also: " + p.message for p in shown)
        if len(problems) > MAX_PROBLEMS:
            extra += f"\n  ... and {len(problems) - MAX_PROBLEMS} more problems"
        return _Multiple(problems[0], extra)
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
    loc = list(item["loc"])
    if kind == "invalid_key" or (kind == "string_type" and loc[-1:] == ["[key]"]):
        # A key YAML did not read as text (`yes:`, `~:`, `1:`): pydantic puts the key itself, or "[key]", last.
        where = _located(loc[:-2] if loc[-1:] == ["[key]"] else loc[:-1])[0] or None
        return UserError(where=where, expected="a text key", received=received,
                         hint=quote_hint(received) or "quote it for text", file=source)
    if kind == "extra_forbidden":
        where, _ = _located(loc)
        _, keys = _located(loc[:-1])
        return UserError("unknown key", where=where, received=str(loc[-1]), choices=keys, file=source)
    where = _located(loc)[0] or None
    if isinstance(cause, InvalidValue):
        located = copy.copy(cause.error)
        return located.at(file=source, prefix=where)
    if kind == "missing":
        return UserError("required key is missing", where=where, file=source)
    if kind == "literal_error":
        choices = re.findall(r"'([^']*)'", str(item.get("ctx", {}).get("expected", "")))
        return UserError(where=where, expected="one of the valid choices", received=received, choices=choices,
                         file=source, hint=quote_hint(received) if not isinstance(received, str) else None)
    message = re.sub(r"^(Value error, |Input should be )", "", str(item["msg"]))
    hint = quote_hint(received) if kind == "string_type" else None
    return UserError(where=where, expected=_PLAIN_TYPES.get(kind, message), received=received, file=source,
                     hint=hint)


_PLAIN_TYPES = {
    "int_parsing": "an integer", "int_type": "an integer", "int_from_float": "an integer",
    "float_parsing": "a number", "float_type": "a number", "finite_number": "a finite number",
    "bool_parsing": "true or false", "bool_type": "true or false",
    "string_type": "a string", "list_type": "a list", "dict_type": "a mapping", "tuple_type": "a list",
    "model_type": "a mapping of keys", "model_attributes_type": "a mapping of keys",
}
