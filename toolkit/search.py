"""The ``search:`` section: its schema, and the search space checked against the config it searches.

The section is part of the config schema (:class:`SearchConfig`, a field of :class:`toolkit.config.Config`):
pydantic checks its shape, with each parameter one of three kinds (``{int: ...}``, ``{float: ...}``,
``{choice: ...}``) told apart by a discriminated union, as Ludwig does for its hyperopt section. What
needs the rest of the config (does each dot path exist? does each end of a range, each choice, give a
valid config?) is checked by :func:`parse_search`, which returns the typed :class:`SearchSpec` that
sweeps run. Every mistake is a :class:`UserError` naming ``search.<key>`` or ``search.space.<path>``.

A sweep changes the config and nothing else: each trial is the base config with the sampled values
applied (``config.with_values({"model.dropout": 0.3, ...})``), built and trained by the same code as a
single run. :mod:`toolkit.sweeps.space` turns a SearchSpec into keras-tuner objects. Nothing here
imports keras-tuner, and only :func:`check_with_keras` imports Keras.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from dataclasses import dataclass, field
from typing import (Annotated, Any, Callable, ClassVar, Dict, Iterator, List, Literal, Mapping, Optional, Sequence,
                    Tuple, Union)

from pydantic import (BaseModel, ConfigDict, Discriminator, Field, PrivateAttr, Tag, field_validator,
                      model_serializer, model_validator)

from toolkit.errors import InvalidValue, UserError, quote_hint, show
from toolkit.metrics import best_index, direction_of, is_better

TUNERS = ("random", "grid", "bayesian", "hyperband", "quasi_random")
PACK_WORDS = ("auto", "off")  # search.pack: one of these, or a number of trials (toolkit.sweeps.packing)
DEFAULT_PACK = "off"
SEQUENCES = ("halton", "sobol")

# `model.depth` is not a config key: it sets the number of hidden Dense layers by cutting
# `model.hidden` or extending it with copies of its last width (see docs/sweeps.md).
DEPTH_PATH = "model.depth"
MAX_DEPTH = 1000  # hidden layers model.depth may ask for

# Settings that may change when a sweep is resumed (they do not change what a trial means).
RESUMABLE_KEYS = ("max_trials", "retrain_top", "trials_per_process", "max_consecutive_failures", "pack")

DEFAULT_MAX_TRIALS = 10  # for the tuners that do not plan their own number of trials
MAX_GRID = 1_000_000  # combinations a grid may have when search.max_trials does not cap it
MAX_GRID_VALUES = 10_000  # values of one parameter of a grid (keras-tuner lists them all for every trial)
SEED_MAX = 2**32 - 2  # numpy seeds stop at 2**32 - 1, and the oracle is given seed + 1
_LISTED = 10_000  # possible_values() lists at most this many values

_KINDS = ("int", "float", "choice")
_PARAM_KEYS = _KINDS + ("step", "log", "when")
_ONLY_FOR = {"factor": "hyperband", "hyperband_iterations": "hyperband", "sequence": "quasi_random",
             "num_initial_points": "bayesian"}


# ------------------------------------------------------------------------------------ typed objects


@dataclass(frozen=True)
class Objective:
    """What the search optimizes: a validation metric name and a direction (``min`` or ``max``).

    Which value is best follows :mod:`toolkit.metrics`, the one rule: NaN and None are never best.
    """

    name: str
    direction: str  # "min" | "max"

    def better(self, a: Optional[float], b: Optional[float]) -> bool:
        """Whether score `a` is better than score `b` (None and NaN are worst)."""
        if a is None:
            return False
        if b is None:
            return True
        return is_better(a, b, self.direction)

    def best_index(self, values: Sequence[float]) -> int:
        """0-based index of the best value in an epoch series (first one on ties)."""
        return best_index(values, self.direction)

    def to_dict(self) -> Dict[str, str]:
        return {"name": self.name, "direction": self.direction}


@dataclass(frozen=True)
class Param:
    """One searched config value.

    Attributes:
        path: dot path into the config (``model.dropout``) or ``model.depth``.
        kind: ``int``, ``float`` or ``choice``.
        low, high, step, log: the range of an int or float.
        values: the choices as written (scalars, lists or mappings).
        when: conditions ``((parent_path, (allowed values...)), ...)``; all must hold.
    """

    path: str
    kind: str
    low: Optional[float] = None
    high: Optional[float] = None
    step: Optional[float] = None
    log: bool = False
    values: Tuple[Any, ...] = ()
    when: Tuple[Tuple[str, Tuple[Any, ...]], ...] = ()
    _codes: Tuple[Any, ...] = field(default=(), compare=False, repr=False)

    # -- choice values <-> keras-tuner values (keras-tuner's Choice takes int/float/str/bool only)

    @property
    def codes(self) -> Tuple[Any, ...]:
        """The keras-tuner values of a choice: the values themselves, or JSON text for lists/mappings."""
        return self._codes

    def encode(self, value: Any) -> Any:
        """Config value -> keras-tuner value."""
        if self.kind != "choice":
            return value
        for original, code in zip(self.values, self._codes):
            if _same(original, value):
                return code
        raise KeyError(value)

    def decode(self, code: Any) -> Any:
        """keras-tuner value -> config value (a copy of the choice as written)."""
        if self.kind == "int":
            return int(code)
        if self.kind == "float":
            return float(code)
        for original, known in zip(self.values, self._codes):
            if _same(known, code):
                return json.loads(json.dumps(original))
        for original, known in zip(self.values, self._codes):
            if known == code:  # keras-tuner's gRPC sends booleans as integers
                return json.loads(json.dumps(original))
        raise KeyError(code)

    def candidates(self) -> List[Any]:
        """Values checked against the config before anything trains: both ends, or every choice."""
        if self.kind == "choice":
            return list(self.values)
        return [self.decode(self.low), self.decode(self.high)]

    # -- the values it can take, counted without listing them (a range of 10**12 integers is fine)

    def count(self) -> Optional[int]:
        """How many values this parameter can take; None for a float range without a step."""
        if self.kind == "choice":
            return len(self.values)
        if self.kind == "int" and not self.step:
            return int(self.high) - int(self.low) + 1
        if self.step is None:
            return None
        return _steps(self)

    def takes(self, value: Any) -> bool:
        """Whether the parameter can take `value` (for a float range: whether it lies in the range)."""
        if self.kind == "choice":
            return any(_same(value, v) for v in self.values)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not self.low <= value <= self.high:
            return False
        if self.kind == "float":
            return True
        if value != int(value):
            return False
        if self.log and self.step:
            return any(v == value for v in self._iter_values())
        return (int(value) - int(self.low)) % int(self.step or 1) == 0

    def possible_values(self) -> Optional[List[Any]]:
        """Every value this parameter can take, or None for a float range or more than 10,000 values."""
        if self.kind == "float":
            return None
        listed = list(itertools.islice(self._iter_values(), _LISTED + 1))
        return listed if len(listed) <= _LISTED else None

    def grid_count(self) -> Optional[int]:
        """How many values a grid search visits (keras-tuner's grid); None for a float range without a step."""
        if self.kind == "int" and self.log and not self.step:
            return len(self._grid_samples())
        return self.count()

    def grid_takes(self, value: Any) -> bool:
        """Whether a grid search visits `value`."""
        if self.kind == "int" and self.log and not self.step:
            return any(_same(value, v) for v in self._grid_samples())
        return self.takes(value)

    def _iter_values(self) -> Iterator[Any]:
        if self.kind == "choice":
            yield from self.values
        elif self.log and self.step:
            for k in range(_steps(self)):
                yield int(self.low * self.step ** k) if self.kind == "int" else self.low * self.step ** k
        elif self.kind == "int":
            yield from range(int(self.low), int(self.high) + 1, int(self.step or 1))

    def _grid_samples(self) -> List[int]:
        # keras-tuner's Int(sampling="log") without a step offers a grid ten evenly spread values.
        span = (self.high + 1) / self.low
        return sorted({int(self.low * math.pow(span, i * 0.1 + 0.05)) for i in range(10)})

    def to_dict(self) -> Dict[str, Any]:
        """The normalized YAML spec (what config.yaml of a sweep records)."""
        if self.kind == "choice":
            spec: Dict[str, Any] = {"choice": list(self.values)}
        else:
            spec = {self.kind: [self.low, self.high]}
            if self.step is not None:
                spec["step"] = self.step
            if self.log:
                spec["log"] = True
        if self.when:
            spec["when"] = {parent: list(vals) if len(vals) > 1 else vals[0] for parent, vals in self.when}
        return spec


def _steps(param: Param) -> int:
    """Values of a stepped range, as keras-tuner counts them (+1: both ends are included)."""
    if param.log:
        return int(math.log(param.high / param.low, param.step) + 1e-8) + 1
    return int((param.high - param.low) // param.step + 1)


@dataclass(frozen=True)
class SearchSpec:
    """The validated ``search:`` section. Built by :func:`parse_search`; never edited afterwards."""

    tuner: str
    objective: Objective
    max_trials: Optional[int]
    executions_per_trial: int
    space: Tuple[Param, ...]  # parents before the parameters that depend on them
    seed: int
    max_consecutive_failures: int
    retrain_top: int
    trials_per_process: Optional[int]  # None: trials run inline in the sweep's own process
    factor: int = 3
    hyperband_iterations: int = 1
    sequence: str = "halton"
    num_initial_points: Optional[int] = None
    base_epochs: int = 1  # training.epochs of the base config (hyperband's max_epochs)
    pack: Union[str, int] = DEFAULT_PACK  # "auto", "off" or K: trials trained together (toolkit.sweeps.packing)

    @property
    def paths(self) -> List[str]:
        return [p.path for p in self.space]

    def param(self, path: str) -> Param:
        return next(p for p in self.space if p.path == path)

    def config_values(self, hp_values: Mapping[str, Any]) -> Dict[str, Any]:
        """keras-tuner values of one trial -> the config values to apply, by dot path, in space order.

        Inactive parameters (a ``when`` that does not hold) are absent. Hyperband's epoch budget
        (``tuner/epochs``) becomes ``training.epochs``.
        """
        values = {p.path: p.decode(hp_values[p.path]) for p in self.space if p.path in hp_values}
        if "tuner/epochs" in hp_values:
            values["training.epochs"] = int(hp_values["tuner/epochs"])
        return values

    def apply(self, config: Any, values: Mapping[str, Any]) -> Any:
        """The trial's config: `config` with `values` applied (``model.depth`` resizes ``model.hidden``)."""
        return apply_values(config, values)

    def planned_trials(self) -> Optional[int]:
        """How many trials the search will run (None when it cannot be known in advance)."""
        if self.tuner == "hyperband":
            total = hyperband_trial_count(self.base_epochs, self.factor) * self.hyperband_iterations
            return min(total, self.max_trials) if self.max_trials else total
        if self.tuner == "grid":
            size = grid_size(self.space)
            if size is None:
                return self.max_trials
            return min(size, self.max_trials) if self.max_trials else size
        return self.max_trials

    def to_dict(self) -> Dict[str, Any]:
        """The normalized section with every default filled in (written to the sweep's config.yaml)."""
        return _section_dict(self.tuner, self.objective, self.max_trials, self.executions_per_trial, self.seed,
                             self.max_consecutive_failures, self.retrain_top, self.trials_per_process,
                             {"factor": self.factor, "hyperband_iterations": self.hyperband_iterations,
                              "sequence": self.sequence, "num_initial_points": self.num_initial_points},
                             self.space, self.pack)

    def identity(self) -> Dict[str, Any]:
        """What must stay the same for a sweep to be resumed: everything but :data:`RESUMABLE_KEYS`."""
        out = self.to_dict()
        for key in RESUMABLE_KEYS:
            out.pop(key, None)
        return out


def _section_dict(tuner: str, objective: Objective, max_trials: Optional[int], executions: int,
                  seed: Optional[int], failures: int, retrain_top: int, trials_per_process: Optional[int],
                  tuner_options: Mapping[str, Any], space: Sequence[Param],
                  pack: Union[str, int] = DEFAULT_PACK) -> Dict[str, Any]:
    """The search section as plain data, defaults filled in (a seed of None: the config's own; pack only when
    it is not the default, so that configs written before it existed read the same)."""
    out: Dict[str, Any] = {"tuner": tuner, "objective": objective.to_dict(), "max_trials": max_trials,
                           "executions_per_trial": executions}
    if seed is not None:
        out["seed"] = seed
    out.update({"max_consecutive_failures": failures, "retrain_top": retrain_top,
                "trials_per_process": "inline" if trials_per_process is None else trials_per_process})
    if pack != DEFAULT_PACK:
        out["pack"] = pack
    for key, value in tuner_options.items():
        if tuner == _ONLY_FOR[key] and value is not None:
            out[key] = value
    out["space"] = {p.path: p.to_dict() for p in space}
    return out


# --------------------------------------------------------------------------------------- the schema


class _Schema(BaseModel):
    # As every config section: unknown keys are errors, a bool is not a number, numbers are finite. Built on
    # first use: commands that never meet a search section (or only import DEPTH_PATH) do not pay for it.
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, validate_default=True,
                              defer_build=True)


def _positive_int(value: Any, also: str = "", least: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidValue(expected=" ".join(filter(None, ["a positive integer", also])), received=value)
    if value < least:
        raise InvalidValue(expected=f"an integer of at least {least}", received=value)
    if value > 2**31 - 1:
        raise InvalidValue(expected=f"an integer of at most {2**31 - 1}", received=value)
    return value


def _conditions(raw: Any) -> Tuple[Tuple[str, Tuple[Any, ...]], ...]:
    """``when: {parent: value or [values]}`` as ``((parent, (values...)), ...)``."""
    if raw is None or raw == ():  # () is the default, already in this form
        return ()
    if not isinstance(raw, Mapping) or not raw:
        raise InvalidValue(expected="a mapping {searched path: value or [values]}", received=raw)
    out = []
    for parent, allowed in raw.items():
        allowed = tuple(allowed) if isinstance(allowed, list) else (allowed,)
        if not allowed:
            raise InvalidValue(where=str(parent), expected="a value or a non-empty list", received=[])
        out.append((str(parent), allowed))
    return tuple(out)


Conditions = Tuple[Tuple[str, Tuple[Any, ...]], ...]


class _ParamSpec(_Schema):
    when: Conditions = ()

    @field_validator("when", mode="before")
    @classmethod
    def _when(cls, value: Any) -> Any:
        return _conditions(value)


class _RangeSpec(_ParamSpec):
    """``{int: [low, high]}`` or ``{float: [low, high]}``, with ``step``, ``log`` and ``when``."""

    log: bool = False
    KIND: ClassVar[str] = "int"

    @classmethod
    def _bounds(cls, value: Any) -> Any:
        number = "an integer" if cls.KIND == "int" else "a number"
        ok = (lambda b: isinstance(b, int) and abs(b) < 2**63) if cls.KIND == "int" else \
            (lambda b: isinstance(b, (int, float)) and math.isfinite(b))
        if not isinstance(value, list) or len(value) != 2 or any(isinstance(b, bool) or not ok(b) for b in value):
            raise InvalidValue(expected=f"[low, high], two of {number}", received=value)
        return tuple(value)

    @classmethod
    def _step(cls, value: Any) -> Any:
        ok = isinstance(value, int) if cls.KIND == "int" else isinstance(value, (int, float))
        if value is not None and (isinstance(value, bool) or not ok or not value > 0 or
                                  (isinstance(value, float) and not math.isfinite(value))):
            raise InvalidValue(expected=f"a positive {'integer' if cls.KIND == 'int' else 'number'}",
                               received=value)
        return value

    @model_validator(mode="after")
    def _range(self) -> "_RangeSpec":
        low, high = self.bounds  # type: ignore[attr-defined]
        kind, step = self.KIND, self.step  # type: ignore[attr-defined]
        if not low < high:
            raise InvalidValue("empty range", expected=f"{{{kind}: [low, high]}} with low < high",
                               received=list(self.bounds))  # type: ignore[attr-defined]
        if self.log and low <= 0:
            raise InvalidValue("log: true needs a range above 0", expected="low > 0",
                               received=list(self.bounds))  # type: ignore[attr-defined]
        if step is not None:
            if self.log and step <= 1:
                raise InvalidValue("with log: true the step is a factor between values", where="step",
                                   expected="a step above 1", received=step)
            if not self.log and step > high - low:
                raise InvalidValue("step is larger than the range", where="step",
                                   expected=f"a step of at most {high - low}", received=step)
        return self

    def param(self, path: str) -> Param:
        low, high = self.bounds  # type: ignore[attr-defined]
        step = self.step  # type: ignore[attr-defined]
        if self.KIND == "float":
            low, high, step = float(low), float(high), None if step is None else float(step)
        return Param(path, self.KIND, low=low, high=high, step=step, log=self.log, when=self.when)


class IntRange(_RangeSpec):
    bounds: Tuple[int, int] = Field(alias="int")
    step: Optional[int] = None

    @field_validator("bounds", mode="before")
    @classmethod
    def _check_bounds(cls, value: Any) -> Any:
        return cls._bounds(value)

    @field_validator("step", mode="before")
    @classmethod
    def _check_step(cls, value: Any) -> Any:
        return cls._step(value)


class FloatRange(_RangeSpec):
    KIND: ClassVar[str] = "float"
    bounds: Tuple[float, float] = Field(alias="float")
    step: Optional[float] = None

    @field_validator("bounds", mode="before")
    @classmethod
    def _check_bounds(cls, value: Any) -> Any:
        return tuple(float(b) for b in cls._bounds(value))

    @field_validator("step", mode="before")
    @classmethod
    def _check_step(cls, value: Any) -> Any:
        value = cls._step(value)
        return value if value is None else float(value)


class ChoiceSpec(_ParamSpec):
    """``{choice: [values...]}`` with ``when``."""

    choice: List[Any]
    _codes: Tuple[Any, ...] = PrivateAttr(default=())

    @field_validator("choice", mode="before")
    @classmethod
    def _non_empty(cls, value: Any) -> Any:
        if not isinstance(value, list) or not value:
            raise InvalidValue(expected="a non-empty list of values", received=value)
        return value

    @model_validator(mode="after")
    def _values(self) -> "ChoiceSpec":
        self._codes = _choice_codes(self.choice)
        return self

    def param(self, path: str) -> Param:
        return Param(path, "choice", values=tuple(self.choice), when=self.when, _codes=self._codes)


def _choice_codes(values: List[Any]) -> Tuple[Any, ...]:
    """The keras-tuner values of a choice (see :attr:`Param.codes`); refuses values a trial cannot take."""
    kinds = set()
    for value in values:
        if isinstance(value, bool):
            kinds.add("boolean")
        elif isinstance(value, (int, float)) and math.isfinite(value):
            kinds.add("number")
        elif isinstance(value, str):
            kinds.add("string")
        elif isinstance(value, (list, dict)) and not _has_null(value):
            kinds.add("structure")
        else:  # null (unset or set? say 'none' where a field means it), NaN, infinity, dates
            raise InvalidValue("unsupported choice value",
                               expected="numbers, strings, booleans, lists or mappings (not null)", received=value)
    for i, value in enumerate(values):
        if any(_same(value, other) for other in values[:i]):
            raise InvalidValue("duplicate choice value", received=value)
    if kinds == {"number"}:
        # keras-tuner's Choice needs one type: [1, 0.5] is offered as [1.0, 0.5]
        return tuple(float(v) for v in values) if any(isinstance(v, float) for v in values) else tuple(values)
    if len(kinds) == 1 and kinds != {"structure"}:
        return tuple(values)
    # keras-tuner's Choice holds int, float, str or bool of one type only: anything else (lists such
    # as [128, 64], mappings, or a mix like [32, 64, full]) travels as text and is decoded per trial.
    codes = tuple(v if isinstance(v, str) else json.dumps(v, separators=(", ", ": ")) for v in values)
    if len(set(codes)) != len(codes):
        raise InvalidValue("two choice values read the same as text", received=values)
    return codes


def _has_null(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, list):
        return any(_has_null(v) for v in value)
    if isinstance(value, dict):
        return any(_has_null(v) for v in value.values())
    return False


def _param_kind(value: Any) -> Optional[str]:
    kinds = [k for k in _KINDS if k in value] if isinstance(value, Mapping) else []
    return kinds[0] if len(kinds) == 1 else None


# One searched value: the kind of range or choice is told by the key that is present.
ParamSpec = Annotated[
    Union[Annotated[IntRange, Tag("int")], Annotated[FloatRange, Tag("float")], Annotated[ChoiceSpec, Tag("choice")]],
    Discriminator(_param_kind),
]


class ObjectiveSpec(_Schema):
    """``objective: val_accuracy`` or ``{name: val_loss, direction: min}``."""

    name: str
    direction: Optional[Literal["min", "max"]] = None

    @field_validator("name", mode="before")
    @classmethod
    def _validation_metric(cls, value: Any) -> Any:
        return _objective_name(value)

    @field_validator("direction", mode="before")
    @classmethod
    def _min_or_max(cls, value: Any) -> Any:
        if value is not None and value not in ("min", "max"):
            raise InvalidValue(expected="min or max", received=value, choices=["min", "max"])
        return value

    @model_validator(mode="after")
    def _direction(self) -> "ObjectiveSpec":
        if self.direction is None:
            self.direction = direction_of(self.name)  # the one rule, shared with early stopping and compare
            if self.direction is None:
                raise InvalidValue(f"cannot tell whether {self.name} should go up or down",
                                   expected=f"{{name: {self.name}, direction: min}} or direction: max")
        return self

    def objective(self) -> Objective:
        return Objective(self.name, self.direction or "min")


def _objective_name(value: Any) -> Any:
    if not isinstance(value, str) or not value.startswith("val_") or value == "val_":
        raise InvalidValue(expected="a validation metric name starting with 'val_' (the test split never chooses)",
                           received=value)
    return value


class SearchConfig(_Schema):
    """The ``search:`` section of a config (docs/sweeps.md). :func:`parse_search` checks it against the config."""

    tuner: str = "random"
    objective: ObjectiveSpec = Field(default="val_loss")
    max_trials: Optional[int] = None  # default: 10, or the plan of the grid and hyperband tuners
    executions_per_trial: int = 1
    seed: Optional[int] = None  # default: the config's seed
    max_consecutive_failures: int = 3
    retrain_top: int = 1
    trials_per_process: Union[int, Literal["inline"]] = 10
    factor: int = 3  # hyperband
    hyperband_iterations: int = 1  # hyperband
    sequence: str = "halton"  # quasi_random
    num_initial_points: Optional[int] = None  # bayesian
    pack: Union[int, str] = DEFAULT_PACK  # auto | off | K (toolkit.sweeps.packing)
    space: Optional[Dict[str, ParamSpec]] = None

    _params: Tuple[Param, ...] = PrivateAttr(default=())

    @field_validator("tuner", "sequence", mode="before")
    @classmethod
    def _one_of(cls, value: Any, info: Any) -> Any:
        expected, choices = {"tuner": ("one of the tuners", TUNERS),
                             "sequence": ("a quasi-random sequence", SEQUENCES)}[info.field_name]
        if value not in choices:
            raise InvalidValue(expected=expected, received=value, choices=choices)
        return value

    @field_validator("objective", mode="before")
    @classmethod
    def _objective(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"name": _objective_name(value)}
        if not isinstance(value, (Mapping, ObjectiveSpec)):
            raise InvalidValue(expected="a metric name like val_accuracy, or {name: val_loss, direction: min}",
                               received=value)
        return value

    @field_validator("executions_per_trial", "max_consecutive_failures", "retrain_top", "hyperband_iterations",
                     mode="before")
    @classmethod
    def _counts(cls, value: Any) -> Any:
        return _positive_int(value)

    @field_validator("max_trials", "num_initial_points", mode="before")
    @classmethod
    def _optional_counts(cls, value: Any) -> Any:
        return value if value is None else _positive_int(value)

    @field_validator("factor", mode="before")
    @classmethod
    def _factor(cls, value: Any) -> Any:
        return _positive_int(value, least=2)

    @field_validator("trials_per_process", mode="before")
    @classmethod
    def _trials_per_process(cls, value: Any) -> Any:
        return value if value == "inline" else _positive_int(value, also="or 'inline' (trials run in this process)")

    @field_validator("pack", mode="before")
    @classmethod
    def _pack(cls, value: Any) -> Any:
        if value is False:  # YAML reads an unquoted off as false
            return "off"
        if isinstance(value, str):
            if value not in PACK_WORDS:
                raise InvalidValue(expected="auto, off, or a number of trials to train together",
                                   received=value, choices=PACK_WORDS)
            return value
        return _positive_int(value, also="(trials trained together), auto or off")

    @field_validator("seed", mode="before")
    @classmethod
    def _seed(cls, value: Any) -> Any:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= SEED_MAX):
            raise InvalidValue(expected=f"a non-negative integer (at most {SEED_MAX})", received=value)
        return value

    @field_validator("space", mode="before")
    @classmethod
    def _space_shape(cls, value: Any) -> Any:
        """What the discriminated union cannot say well: dot-path keys, exactly one kind, unknown keys."""
        if value is None:
            return value
        if not isinstance(value, Mapping) or not value:
            raise InvalidValue(expected="a non-empty mapping of dot paths to ranges or choices", received=value)
        for path, spec in value.items():
            if not isinstance(path, str):
                raise InvalidValue(expected="dot paths as keys", received=path, hint=quote_hint(path))
            if not re.fullmatch(r"[A-Za-z_]\w*(\.\w+)*", path):
                raise InvalidValue(where=path, expected="a dot path like model.dropout", received=path)
            if not isinstance(spec, Mapping):
                raise InvalidValue(where=path, expected="{int: [low, high]}, {float: [low, high]} or {choice: [...]}",
                                   received=spec)
            for key in spec:
                if key not in _PARAM_KEYS:
                    raise InvalidValue("unknown key", where=f"{path}.{key}", received=key, choices=_PARAM_KEYS)
            if _param_kind(spec) is None:
                raise InvalidValue(where=path, expected="exactly one of int, float or choice", received=spec)
            for key in ("step", "log"):
                if "choice" in spec and key in spec:
                    raise InvalidValue(f"{key} applies to int and float ranges, not to a choice", where=f"{path}.{key}")
        return value

    @model_validator(mode="after")
    def _whole_section(self) -> "SearchConfig":
        for key, only in _ONLY_FOR.items():
            if key in self.model_fields_set and self.tuner != only:
                raise InvalidValue(f"{key} is only used by tuner: {only}", where=key, received=getattr(self, key))
        if self.max_trials is None and "max_trials" not in self.model_fields_set and \
                self.tuner not in ("grid", "hyperband"):
            self.max_trials = DEFAULT_MAX_TRIALS  # the grid or hyperband's schedule decides; a given max_trials caps
        if self.space is None:
            raise InvalidValue("required key is missing", where="space",
                               expected="a mapping of dot paths to {int: ..}, {float: ..} or {choice: ..}")
        params = {path: spec.param(path) for path, spec in self.space.items()}
        try:
            self._params = _check_space(params, self.tuner, self.max_trials)
        except InvalidValue as error:  # located below search.space
            error.error.at(prefix="space")
            raise
        return self

    @property
    def params(self) -> Tuple[Param, ...]:
        """The searched values, parents before the parameters whose ``when`` names them."""
        return self._params

    @model_serializer(mode="plain")
    def _serialize(self) -> Dict[str, Any]:
        return self.to_dict()

    def to_dict(self) -> Dict[str, Any]:
        """The section as plain data with its defaults filled in (the seed only when given)."""
        return _section_dict(self.tuner, self.objective.objective(), self.max_trials, self.executions_per_trial,
                             self.seed, self.max_consecutive_failures, self.retrain_top,
                             None if self.trials_per_process == "inline" else self.trials_per_process,
                             {"factor": self.factor, "hyperband_iterations": self.hyperband_iterations,
                              "sequence": self.sequence, "num_initial_points": self.num_initial_points},
                             self.params, self.pack)


def _check_space(params: Dict[str, Param], tuner: str, max_trials: Optional[int]) -> Tuple[Param, ...]:
    """Checks the space as a whole (tuner needs, ``when`` conditions); returns it parents first."""
    if tuner == "grid":
        for param in params.values():
            if param.kind == "float" and param.step is None:
                raise InvalidValue("grid search needs a step for a float range", where=param.path,
                                   expected=f"{{float: [{param.low}, {param.high}], step: ...}} or a choice")
            count = param.grid_count() or 0
            if count > MAX_GRID_VALUES:
                raise InvalidValue(f"a grid over {count:,} values of this parameter is too large to run",
                                   where=param.path, expected=f"at most {MAX_GRID_VALUES:,} values: a larger step "
                                                              "or a narrower range, or tuner: random")
    if tuner == "hyperband" and "training.epochs" in params:
        raise InvalidValue("hyperband sets training.epochs itself (its epoch budget per trial, up to the base "
                           "config's training.epochs)", where="training.epochs")
    _check_when(params)
    ordered = tuple(_parents_first(params))
    if tuner == "grid" and max_trials is None:
        size = grid_size(ordered)
        if size is not None and size > MAX_GRID:
            raise InvalidValue(f"a grid of {size:,} combinations is too large to run", expected=f"at most "
                               f"{MAX_GRID:,} combinations: a larger step, fewer choices, search.max_trials to "
                               "stop early, or tuner: random")
    return ordered


def _check_when(params: Mapping[str, Param]) -> None:
    for param in params.values():
        for parent, allowed in param.when:
            where = f"{param.path}.when"
            if parent == param.path:
                raise InvalidValue("a parameter cannot depend on itself", where=where, received=parent)
            if parent not in params:
                others = [p for p in params if p != param.path]
                raise InvalidValue("when: depends on a parameter that is not searched", where=where,
                                   expected="a path that is also in search.space", received=parent,
                                   choices=others or None)
            parent_param = params[parent]
            if parent_param.kind == "float":
                raise InvalidValue("when: can depend on a choice or int parameter, not on a float range",
                                   where=where, received=parent)
            for value in allowed:
                if not parent_param.takes(value):
                    shown = itertools.islice(parent_param._iter_values(), 20)
                    raise InvalidValue(f"{parent} never takes this value", where=f"{where}.{parent}", received=value,
                                       choices=[show(p) if not isinstance(p, str) else p for p in shown])


def _parents_first(params: Mapping[str, Param]) -> List[Param]:
    ordered: List[Param] = []
    visiting: List[str] = []

    def visit(path: str) -> None:
        if any(p.path == path for p in ordered):
            return
        if path in visiting:
            cycle = " -> ".join(visiting[visiting.index(path):] + [path])
            raise InvalidValue("when: conditions form a cycle", where=f"{path}.when", received=cycle)
        visiting.append(path)
        for parent, _ in params[path].when:
            visit(parent)
        visiting.pop()
        ordered.append(params[path])

    for path in params:
        visit(path)
    return ordered


# ------------------------------------------------------------------- the space against the config


def parse_search(config: Any) -> SearchSpec:
    """The config's ``search:`` section as a :class:`SearchSpec`, checked against the config it searches.

    The section's own shape was checked with the config. Here every searched path must exist (or be
    settable) in the config, and every end of a range and every choice must give a valid config, so a bad
    space is refused before anything trains.

    Raises:
        UserError: naming ``search.<key>`` or ``search.space.<path>`` and the config file.
    """
    source = getattr(config, "source", None)
    section = config.search
    if section is None:
        raise UserError("this config has no search: section", where="search", file=source,
                        expected="a search: section with a space: of dot paths (see docs/sweeps.md)")
    seed = section.seed if section.seed is not None else config.seed
    if seed > SEED_MAX:
        raise UserError(where="seed", file=source, received=seed,
                        expected=f"a seed of at most {SEED_MAX} for a search (its oracle is seeded with seed + 1)")
    if config.seed + section.executions_per_trial - 1 > SEED_MAX + 1:
        raise UserError(where="search.executions_per_trial", file=source, received=section.executions_per_trial,
                        expected=f"at most {SEED_MAX + 2 - config.seed} executions with seed {config.seed} "
                                 "(execution k is seeded with seed + k, and seeds stop at 2**32 - 1)")
    from toolkit.keras_names import check_config_names

    base = config.with_values({"search": None})
    try:
        check_config_names(base)  # the base config's own names first: then a refusal below is the value's
        _check_paths(section.params, base)
    except UserError as error:
        raise error.at(file=source) from None
    return SearchSpec(
        tuner=section.tuner,
        objective=section.objective.objective(),
        max_trials=section.max_trials,
        executions_per_trial=section.executions_per_trial,
        space=section.params,
        seed=seed,
        max_consecutive_failures=section.max_consecutive_failures,
        retrain_top=section.retrain_top,
        trials_per_process=None if section.trials_per_process == "inline" else section.trials_per_process,
        factor=section.factor,
        hyperband_iterations=section.hyperband_iterations,
        sequence=section.sequence,
        num_initial_points=section.num_initial_points,
        base_epochs=config.training.epochs,
        pack=section.pack,
    )


def _check_paths(params: Sequence[Param], config: Any) -> None:
    by_path = {p.path: p for p in params}
    if DEPTH_PATH in by_path:
        _check_depth(by_path, config)
    for param in params:
        if param.path != DEPTH_PATH:
            _check_key(param.path, config, by_path)
    for param in params:
        _check_values(param, config, by_path)


def _check_key(path: str, config: Any, by_path: Mapping[str, Param]) -> None:
    """The path must name a key of the schema (or an argument of an open section such as the optimizer)."""
    from toolkit.config import schema_step

    where = f"search.space.{path}"
    parts = path.split(".")
    node: Any = type(config)
    data: Any = config.to_dict()
    for i, part in enumerate(parts):
        done = ".".join(parts[:i])
        step = schema_step(node, part)
        if step.kind == "unknown":
            choices = sorted(step.choices + (["depth"] if done == "model" else []))
            raise UserError("unknown config key", where=where, received=part, choices=choices)
        if step.kind == "index":
            if not re.fullmatch(r"\d+", part):
                raise UserError(f"{done} is a list: address its items by index", where=where,
                                expected=f"{done}.0, {done}.1, ...", received=path)
            length = len(data) if isinstance(data, list) else 0
            index = int(part)
            if not (done == "model.hidden" and DEPTH_PATH in by_path) and index >= length:
                # (with model.depth searched, layers are checked against the depths in _check_depth)
                hint = " (search model.depth to change the number of hidden layers)" if done == "model.hidden" else ""
                raise UserError(f"{done} has {length} item{'s' if length != 1 else ''}; index {index} does not "
                                f"exist{hint}", where=where, expected=f"an index from 0 to {length - 1}",
                                received=index)
            data = data[index] if isinstance(data, list) and index < len(data) else None
        elif step.kind == "open":
            return  # free-form data (a section's own arguments, a mapping of options): checked when used
        else:
            data = data.get(part) if isinstance(data, dict) else None
        node = step.schema


def _check_depth(by_path: Mapping[str, Param], config: Any) -> None:
    depth = by_path[DEPTH_PATH]
    where = f"search.space.{DEPTH_PATH}"
    if depth.kind == "float":
        raise UserError(where=where, expected="{int: [low, high]} or {choice: [integers]}", received=depth.to_dict())
    depths = depth.possible_values() or []
    if depth.count() is None or depth.count() > MAX_DEPTH + 1 or \
            any(isinstance(d, bool) or not isinstance(d, int) or not 0 <= d <= MAX_DEPTH for d in depths):
        raise UserError(where=where, expected=f"numbers of hidden layers (integers from 0 to {MAX_DEPTH})",
                        received=depth.to_dict())
    if config.model.layers is not None:
        raise UserError("model.depth sets the number of hidden layers of model.hidden; this config uses "
                        "model.layers", where=where, expected="model.hidden in the base config")
    if "model.hidden" in by_path:
        raise UserError("search either model.hidden (whole lists) or model.depth, not both", where=where)
    if not config.model.hidden and any(d > 0 for d in depths):
        raise UserError("model.depth repeats the last width of model.hidden, which is empty", where=where,
                        expected="at least one width in model.hidden")
    for param in by_path.values():
        match = re.fullmatch(r"model\.hidden\.(\d+)", param.path)
        if not match:
            continue
        index = int(match.group(1))
        allowed = dict(param.when).get(DEPTH_PATH)
        active = [d for d in depths if allowed is None or d in allowed]
        missing = [d for d in active if d <= index]
        if missing:
            good = [d for d in depths if d > index]
            raise UserError(f"layer {index} does not exist when model.depth is "
                            f"{', '.join(str(d) for d in missing)}", where=f"search.space.{param.path}",
                            expected=f"when: {{model.depth: {good}}}")


def _check_values(param: Param, config: Any, by_path: Mapping[str, Param]) -> None:
    """Applies both ends of a range (or every choice) to the base config, which must stay valid, Keras'
    names and arguments included (read from Keras' files, as ``ktk validate`` checks a config)."""
    from toolkit.keras_names import check_config_names

    _check_optimizer_names_for(param, config, by_path, check_config_names)
    for value, values in candidates(param, by_path):
        try:
            check_config_names(apply_values(config, values))
        except UserError as error:
            raise _invalid(param, value, values, error, "makes the config invalid") from None


def check_space_with_data(spec: SearchSpec, config: Any, data: Any) -> None:
    """The checks that need the data (:func:`toolkit.config.check_with_data`), for every candidate trial
    config: class weights of the data's classes, an early-stopping monitor of its task. Imports no Keras.

    Raises:
        UserError: naming ``search.space.<path>``.
    """
    from toolkit.config import check_with_data
    from toolkit.training import DEFAULT_METRICS  # light: no Keras at import

    by_path = {p.path: p for p in spec.space}
    metrics = config.training.metrics if config.training.metrics is not None else DEFAULT_METRICS[data.task]
    if all(isinstance(m, str) for m in metrics):  # (a metric object's name is only known once Keras makes it)
        names = ["val_loss"] + [f"val_{m}" for m in metrics]
        if spec.objective.name not in names:
            raise UserError("not a metric of this model", where="search.objective", received=spec.objective.name,
                            choices=sorted(names), file=getattr(config, "source", None))
    try:
        for param in spec.space:
            for value, values in candidates(param, by_path):
                try:
                    check_with_data(apply_values(config, values), data)
                except UserError as error:
                    raise _invalid(param, value, values, error, "makes the config invalid") from None
    except UserError as error:
        raise error.at(file=getattr(config, "source", None)) from None


def candidates(param: Param, by_path: Mapping[str, Param]) -> Iterator[Tuple[Any, Dict[str, Any]]]:
    """(value, dot-path values of a trial that uses it) for each value of `param` worth checking.

    The parents in ``when`` take their first allowed value. An optimizer argument is tried with every
    optimizer the trial can use with it (``training.optimizer.name`` searched, ``when`` respected).
    """
    context: Dict[str, Any] = {parent: allowed[0] for parent, allowed in param.when}
    contexts = [context]
    name_path = "training.optimizer.name"
    if (param.path.startswith("training.optimizer.") and param.path != name_path and name_path in by_path
            and name_path not in context):
        contexts = [{**context, name_path: name} for name in by_path[name_path].values]
    for value in param.candidates():
        for context in contexts:
            yield value, {**context, param.path: value}


def _invalid(param: Param, value: Any, values: Mapping[str, Any], error: UserError, what: str) -> UserError:
    error.file = None
    others = ", ".join(f"{k} = {show(v)}" for k, v in values.items() if k != param.path)
    with_others = f" (with {others})" if others else ""
    return UserError(f"the value {show(value)}{with_others} {what}: {error.message}",
                     where=f"search.space.{param.path}")


# ------------------------------------------------------------------- checks that need Keras itself


def check_with_keras(spec: SearchSpec, config: Any, data: Any) -> None:
    """Builds the model and optimizer of every candidate trial config, and checks the objective's name.

    The config language accepts any optimizer argument and layer name (Keras checks them when it
    builds); a sweep checks them before the first trial, so that a typo does not fail every trial.
    Imports Keras; takes about a second.

    Raises:
        UserError: naming ``search.space.<path>`` (a value Keras rejects) or ``search.objective``.
    """
    check_space_with_data(spec, config, data)
    try:
        _check_with_keras(spec, config, data)
    except UserError as error:
        raise error.at(file=getattr(config, "source", None)) from None


def _check_with_keras(spec: SearchSpec, config: Any, data: Any) -> None:
    import keras

    from toolkit import training
    from toolkit.models import build_model

    by_path = {p.path: p for p in spec.space}
    for param in spec.space:
        # Only what the value can change is built: the model for model.*, the optimizer for training.*.
        builds_model = param.path.startswith("model.")
        builds_optimizer = param.path.startswith(("training.optimizer.", "training.schedule"))
        if not (builds_model or builds_optimizer):
            continue
        _check_optimizer_names_for(param, config, by_path, lambda trial: training.get_optimizer(trial, 1))
        for value, values in candidates(param, by_path):
            trial_config = apply_values(config, values)
            try:
                if builds_model:
                    keras.backend.clear_session()
                    build_model(trial_config, data)
                if builds_optimizer:
                    training.get_optimizer(trial_config, steps_per_epoch=1)
            except UserError as error:
                raise _invalid(param, value, values, error, "is rejected by Keras") from None
    # The objective must be one of the metrics Keras reports on the validation split.
    metrics = config.training.metrics if config.training.metrics is not None else \
        training.DEFAULT_METRICS[data.task]
    names = ["val_loss"] + [f"val_{m}" for m in metrics if isinstance(m, str)]
    if spec.objective.name in names:
        return
    keras.backend.clear_session()
    model = build_model(config, data)
    training.compile_model(model, config, data)
    logs = model.evaluate(data.x_val[:4], data.y_val[:4], verbose=0, return_dict=True)
    names = ["val_" + name for name in logs]
    keras.backend.clear_session()
    if spec.objective.name not in names:
        raise UserError("not a metric of this model", where="search.objective", received=spec.objective.name,
                        choices=names)


def _check_optimizer_names_for(param: Param, config: Any, by_path: Mapping[str, Param],
                               check: Callable[[Any], Any]) -> None:
    """An optimizer argument that only some of the searched optimizers take needs a ``when``.

    Args:
        check: raises a UserError for a trial config whose optimizer does not take its arguments (the
            fast check of Keras' names, or building the optimizer with Keras).
    """
    name_path = "training.optimizer.name"
    if not param.path.startswith("training.optimizer.") or param.path == name_path or name_path not in by_path \
            or name_path in dict(param.when):
        return
    accepting, rejecting = [], []
    for name in by_path[name_path].values:
        try:
            check(apply_values(config, {name_path: name, param.path: param.candidates()[0]}))
            accepting.append(name)
        except UserError:
            rejecting.append(name)
    if accepting and rejecting:
        argument = param.path.rsplit(".", 1)[1]
        raise UserError(f"{argument} is not an argument of the {', '.join(map(str, rejecting))} optimizer",
                        where=f"search.space.{param.path}",
                        expected=f"when: {{{name_path}: [{', '.join(map(str, accepting))}]}}")


# ---------------------------------------------------------------------------------------- helpers


def apply_values(config: Any, values: Mapping[str, Any]) -> Any:
    """`config` with dot-path `values` applied; ``model.depth`` first resizes ``model.hidden``."""
    values = dict(values)
    ordered: Dict[str, Any] = {}
    if DEPTH_PATH in values:
        ordered["model.hidden"] = resize_hidden(config.model.hidden or [], values.pop(DEPTH_PATH))
    ordered.update(values)
    return config.with_values(ordered)


def resize_hidden(hidden: Sequence[int], depth: int) -> List[int]:
    """`hidden` cut to `depth` layers, or extended with copies of its last width."""
    hidden = list(hidden)
    if depth <= len(hidden):
        return hidden[:depth]
    return hidden + [hidden[-1]] * (depth - len(hidden))


def hyperband_trial_count(max_epochs: int, factor: int) -> int:
    """Trials in one Hyperband iteration, as keras-tuner's HyperbandOracle schedules them."""
    brackets, epochs = 0, float(max_epochs)
    while epochs >= 1:
        epochs /= factor
        brackets += 1
    end_size = math.ceil(1 + math.log(max_epochs, factor))
    total = 0
    for bracket in range(brackets):
        for round_num in range(bracket + 1):
            total += math.ceil(end_size / (bracket + 1) * factor ** (bracket - round_num))
    return total


_OTHER = object()  # any value of a parent that no `when` names: every such value counts alike


def grid_size(space: Sequence[Param]) -> Optional[int]:
    """Number of trials of a grid: combinations of the active values only, as keras-tuner's grid visits them
    (a conditional parameter multiplies only the combinations where its ``when`` holds).

    Counted, never listed: a parent's values that no ``when`` names behave alike and count as one
    branch, so a grid of 10**30 points is counted as fast as one of ten.
    """
    counts: Dict[str, int] = {}
    for param in space:
        count = param.grid_count()
        if count is None:
            return None
        counts[param.path] = count
    by_path = {p.path: p for p in space}
    named: Dict[str, List[Any]] = {}
    for param in space:
        for parent, allowed in param.when:
            values = named.setdefault(parent, [])
            for value in allowed:
                if parent in by_path and by_path[parent].grid_takes(value) and \
                        not any(_same(value, v) for v in values):
                    values.append(value)

    def count_from(index: int, chosen: Dict[str, Any]) -> int:
        if index == len(space):
            return 1
        param = space[index]
        active = all(parent in chosen and any(_same(chosen[parent], v) for v in allowed)
                     for parent, allowed in param.when)
        if not active:
            return count_from(index + 1, chosen)
        if param.path not in named:
            return counts[param.path] * count_from(index + 1, chosen)
        values = named[param.path]
        total = sum(count_from(index + 1, {**chosen, param.path: v}) for v in values)
        others = counts[param.path] - len(values)
        if others:
            total += others * count_from(index + 1, {**chosen, param.path: _OTHER})
        return total

    return count_from(0, {})


def _same(a: Any, b: Any) -> bool:
    """Equal values of the same kind (True is not 1; 1 and 1.0 are the same number)."""
    if a is _OTHER or b is _OTHER:
        return False
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    return type(a) is type(b) and a == b
