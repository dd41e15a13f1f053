"""The ``search:`` section: a search space over dot paths of the config, checked once into typed objects.

A sweep changes the config and nothing else: each trial is the base config with the sampled values
applied (``config.with_values({"model.dropout": 0.3, ...})``), built and trained by the same code as a
single run. This module turns the YAML section into a :class:`SearchSpec` (every mistake a
:class:`UserError` naming ``search.space.<path>``), declares the space as keras-tuner hyperparameters
(``when:`` becomes keras-tuner's parent conditions), makes the oracle for each ``tuner:`` and holds the
quasi-random oracle keras-tuner lacks (scrambled Halton or Sobol points from ``scipy.stats.qmc``).

keras-tuner is imported only inside the functions that build its objects.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from toolkit.errors import UserError, show
from toolkit.metrics import direction_of

TUNERS = ("random", "grid", "bayesian", "hyperband", "quasi_random")
SEQUENCES = ("halton", "sobol")

# `model.depth` is not a config key: it sets the number of hidden Dense layers by cutting
# `model.hidden` or extending it with copies of its last width (see docs/sweeps.md).
DEPTH_PATH = "model.depth"

# Direction of an objective whose name says it (val_loss -> min, val_accuracy -> max).

_OPTIONS: Dict[str, Any] = {
    "tuner": "random",
    "objective": "val_loss",
    "max_trials": 10,
    "executions_per_trial": 1,
    "seed": None,  # default: the config's seed
    "max_consecutive_failures": 3,
    "retrain_top": 1,
    "trials_per_process": 10,
    "factor": 3,  # hyperband
    "hyperband_iterations": 1,  # hyperband
    "sequence": "halton",  # quasi_random
    "num_initial_points": None,  # bayesian
    "space": None,
}
_ONLY_FOR = {
    "factor": "hyperband",
    "hyperband_iterations": "hyperband",
    "sequence": "quasi_random",
    "num_initial_points": "bayesian",
}
# Settings that may change when a sweep is resumed (they do not change what a trial means).
RESUMABLE_KEYS = ("max_trials", "retrain_top", "trials_per_process", "max_consecutive_failures")

_PARAM_KINDS = ("int", "float", "choice")
_PARAM_OPTIONS = ("step", "log", "when")


# ------------------------------------------------------------------------------------ typed objects


@dataclass(frozen=True)
class Objective:
    """What the search optimizes: a validation metric name and a direction."""

    name: str
    direction: str  # "min" | "max"

    def better(self, a: Optional[float], b: Optional[float]) -> bool:
        """Whether score `a` is better than score `b` (None and NaN are worst)."""
        if a is None or _isnan(a):
            return False
        if b is None or _isnan(b):
            return True
        return a < b if self.direction == "min" else a > b

    def best_index(self, values: Sequence[float]) -> int:
        """0-based index of the best value in an epoch series (first one on ties)."""
        best = 0
        for i, value in enumerate(values):
            if self.better(value, values[best]):
                best = i
        return best

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

    def possible_values(self) -> Optional[List[Any]]:
        """Every value this parameter can take, or None for a continuous float."""
        if self.kind == "choice":
            return list(self.values)
        if self.kind == "int":
            if self.log and self.step:
                out, value = [], int(self.low)
                while value <= self.high:
                    out.append(value)
                    value = int(value * self.step)
                return out
            if self.log:
                return list(range(int(self.low), int(self.high) + 1)) if self.high - self.low <= 10000 else None
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        return None

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
        out: Dict[str, Any] = {
            "tuner": self.tuner,
            "objective": self.objective.to_dict(),
            "max_trials": self.max_trials,
            "executions_per_trial": self.executions_per_trial,
            "seed": self.seed,
            "max_consecutive_failures": self.max_consecutive_failures,
            "retrain_top": self.retrain_top,
            "trials_per_process": "inline" if self.trials_per_process is None else self.trials_per_process,
        }
        if self.tuner == "hyperband":
            out["factor"] = self.factor
            out["hyperband_iterations"] = self.hyperband_iterations
        if self.tuner == "quasi_random":
            out["sequence"] = self.sequence
        if self.tuner == "bayesian" and self.num_initial_points is not None:
            out["num_initial_points"] = self.num_initial_points
        out["space"] = {p.path: p.to_dict() for p in self.space}
        return out

    def identity(self) -> Dict[str, Any]:
        """What must stay the same for a sweep to be resumed: everything but :data:`RESUMABLE_KEYS`."""
        out = self.to_dict()
        for key in RESUMABLE_KEYS:
            out.pop(key, None)
        return out


# ------------------------------------------------------------------------------------------ parsing


def parse_search(config: Any) -> SearchSpec:
    """Validates the config's ``search:`` section into a :class:`SearchSpec`.

    Every searched path must exist (or be settable) in the config, and every end of a range and
    every choice must give a valid config, so a bad space is refused before anything trains.

    Raises:
        UserError: naming ``search.<key>`` or ``search.space.<path>`` and the config file.
    """
    source = getattr(config, "source", None)
    try:
        return _parse(config)
    except UserError as error:
        raise error.at(file=source) from None


def _parse(config: Any) -> SearchSpec:
    raw = config.search
    if raw is None:
        raise UserError("this config has no search: section", where="search",
                        expected="a search: section with a space: of dot paths (see docs/sweeps.md)")
    if not isinstance(raw, Mapping):
        raise UserError(where="search", expected="a mapping (tuner, objective, max_trials, space, ...)", received=raw)
    for key in raw:
        if key not in _OPTIONS:
            raise UserError("unknown key", where=f"search.{key}", received=key, choices=list(_OPTIONS))
    opts = {**_OPTIONS, **raw}

    tuner = opts["tuner"]
    if tuner not in TUNERS:
        raise UserError(where="search.tuner", expected="one of the tuners", received=tuner, choices=TUNERS)
    for key, only in _ONLY_FOR.items():
        if key in raw and tuner != only:
            raise UserError(f"{key} is only used by tuner: {only}", where=f"search.{key}", received=raw[key])

    objective = _objective(opts["objective"])
    max_trials = opts["max_trials"]
    if "max_trials" not in raw and tuner in ("grid", "hyperband"):
        max_trials = None  # the grid or hyperband's schedule decides; max_trials given is a cap
    if max_trials is not None:
        max_trials = _positive_int(max_trials, "search.max_trials")
    seed = opts["seed"] if opts["seed"] is not None else config.seed
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise UserError(where="search.seed", expected="a non-negative integer", received=seed)
    tpp = opts["trials_per_process"]
    if tpp != "inline":
        tpp = _positive_int(tpp, "search.trials_per_process", also="or 'inline' (trials run in this process)")
    sequence = opts["sequence"]
    if sequence not in SEQUENCES:
        raise UserError(where="search.sequence", expected="a quasi-random sequence", received=sequence,
                        choices=SEQUENCES)
    factor = _positive_int(opts["factor"], "search.factor")
    if factor < 2:
        raise UserError(where="search.factor", expected="an integer of at least 2", received=factor)
    nip = opts["num_initial_points"]
    if nip is not None:
        nip = _positive_int(nip, "search.num_initial_points")

    space = _space(opts["space"], config, tuner)
    return SearchSpec(
        tuner=tuner,
        objective=objective,
        max_trials=max_trials,
        executions_per_trial=_positive_int(opts["executions_per_trial"], "search.executions_per_trial"),
        space=space,
        seed=seed,
        max_consecutive_failures=_positive_int(opts["max_consecutive_failures"], "search.max_consecutive_failures"),
        retrain_top=_positive_int(opts["retrain_top"], "search.retrain_top"),
        trials_per_process=None if tpp == "inline" else tpp,
        factor=factor,
        hyperband_iterations=_positive_int(opts["hyperband_iterations"], "search.hyperband_iterations"),
        sequence=sequence,
        num_initial_points=nip,
        base_epochs=config.training.epochs,
    )


def _positive_int(value: Any, where: str, also: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(where=where, expected=" ".join(filter(None, ["a positive integer", also])), received=value)
    return value


def _objective(raw: Any) -> Objective:
    where = "search.objective"
    if isinstance(raw, str):
        name, direction = raw, None
    elif isinstance(raw, Mapping):
        unknown = [k for k in raw if k not in ("name", "direction")]
        if unknown:
            raise UserError("unknown key", where=f"{where}.{unknown[0]}", received=unknown[0],
                            choices=["direction", "name"])
        name, direction = raw.get("name"), raw.get("direction")
    else:
        raise UserError(where=where, expected="a metric name like val_accuracy, or {name: val_loss, direction: min}",
                        received=raw)
    if not isinstance(name, str) or not name.startswith("val_") or name == "val_":
        raise UserError(where=f"{where}.name" if isinstance(raw, Mapping) else where,
                        expected="a validation metric name starting with 'val_' (the test split never chooses)",
                        received=name)
    if direction is None:
        direction = direction_of(name)
        if direction is None:
            raise UserError(f"cannot tell whether {name} should go up or down", where=where,
                            expected=f"{{name: {name}, direction: min}} or direction: max")
    if direction not in ("min", "max"):
        raise UserError(where=f"{where}.direction", expected="min or max", received=direction, choices=["min", "max"])
    return Objective(name, direction)


def _space(raw: Any, config: Any, tuner: str) -> Tuple[Param, ...]:
    if raw is None:
        raise UserError("required key is missing", where="search.space",
                        expected="a mapping of dot paths to {int: ..}, {float: ..} or {choice: ..}")
    if not isinstance(raw, Mapping) or not raw:
        raise UserError(where="search.space", expected="a non-empty mapping of dot paths to ranges or choices",
                        received=raw)
    params: Dict[str, Param] = {}
    for path, spec in raw.items():
        if not isinstance(path, str):
            raise UserError(where="search.space", expected="dot paths as keys", received=path)
        params[path] = _param(path, spec)
    if tuner == "grid":
        for param in params.values():
            if param.kind == "float" and param.step is None:
                raise UserError("grid search needs a step for a float range", where=f"search.space.{param.path}",
                                expected=f"{{float: [{param.low}, {param.high}], step: ...}} or a choice")
    if tuner == "hyperband" and "training.epochs" in params:
        raise UserError("hyperband sets training.epochs itself (its epoch budget per trial, up to the base "
                        "config's training.epochs)", where="search.space.training.epochs")
    _check_when(params)
    ordered = _parents_first(params)
    _check_paths(ordered, config)
    return tuple(ordered)


def _param(path: str, spec: Any) -> Param:
    where = f"search.space.{path}"
    if not re.fullmatch(r"[A-Za-z_][\w]*(\.[\w]+)*", path):
        raise UserError(where=where, expected="a dot path like model.dropout", received=path)
    if not isinstance(spec, Mapping):
        raise UserError(where=where, expected="{int: [low, high]}, {float: [low, high]} or {choice: [...]}",
                        received=spec)
    kinds = [k for k in spec if k in _PARAM_KINDS]
    for key in spec:
        if key not in _PARAM_KINDS and key not in _PARAM_OPTIONS:
            raise UserError("unknown key", where=f"{where}.{key}", received=key,
                            choices=list(_PARAM_KINDS) + list(_PARAM_OPTIONS))
    if len(kinds) != 1:
        raise UserError(where=where, expected="exactly one of int, float or choice", received=spec)
    kind = kinds[0]
    when = _when(spec.get("when"), where)
    if kind == "choice":
        for key in ("step", "log"):
            if key in spec:
                raise UserError(f"{key} applies to int and float ranges, not to a choice", where=f"{where}.{key}")
        values, codes = _choices(spec["choice"], where)
        return Param(path, "choice", values=values, when=when, _codes=codes)
    return _range(path, kind, spec, when, where)


def _range(path: str, kind: str, spec: Mapping, when: Tuple, where: str) -> Param:
    bounds = spec[kind]
    number = "an integer" if kind == "int" else "a number"
    if not isinstance(bounds, list) or len(bounds) != 2:
        raise UserError(where=f"{where}.{kind}", expected=f"[low, high], two of {number}", received=bounds)
    for bound in bounds:
        ok = isinstance(bound, int) if kind == "int" else isinstance(bound, (int, float))
        if isinstance(bound, bool) or not ok or (isinstance(bound, float) and not math.isfinite(bound)):
            raise UserError(where=f"{where}.{kind}", expected=f"[low, high], two of {number}", received=bounds)
    low, high = bounds
    if not low < high:
        raise UserError("empty range", where=where, expected=f"{{{kind}: [low, high]}} with low < high",
                        received=bounds)
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise UserError(where=f"{where}.log", expected="true or false", received=log)
    if log and low <= 0:
        raise UserError("log: true needs a range above 0", where=where, expected="low > 0", received=bounds)
    step = spec.get("step")
    if step is not None:
        ok = isinstance(step, int) if kind == "int" else isinstance(step, (int, float))
        if isinstance(step, bool) or not ok or step <= 0:
            raise UserError(where=f"{where}.step", expected=f"a positive {'integer' if kind == 'int' else 'number'}",
                            received=step)
        if log and step <= 1:
            raise UserError("with log: true the step is a factor between values", where=f"{where}.step",
                            expected="a step above 1", received=step)
        if not log and step > high - low:
            raise UserError("step is larger than the range", where=f"{where}.step",
                            expected=f"a step of at most {high - low}", received=step)
    if kind == "float":
        low, high = float(low), float(high)
        step = None if step is None else float(step)
    return Param(path, kind, low=low, high=high, step=step, log=log, when=when)


def _choices(values: Any, where: str) -> Tuple[Tuple[Any, ...], Tuple[Any, ...]]:
    expected = "numbers, strings, booleans, lists or mappings (not null)"
    if not isinstance(values, list) or not values:
        raise UserError(where=f"{where}.choice", expected="a non-empty list of values", received=values)
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
            raise UserError("unsupported choice value", where=where, expected=expected, received=value)
    for i, value in enumerate(values):
        if any(_same(value, other) for other in values[:i]):
            raise UserError("duplicate choice value", where=where, received=value)
    if kinds == {"number"}:
        # keras-tuner's Choice needs one type: [1, 0.5] is offered as [1.0, 0.5]
        codes = tuple(float(v) for v in values) if any(isinstance(v, float) for v in values) else tuple(values)
    elif len(kinds) == 1 and kinds != {"structure"}:
        codes = tuple(values)
    else:
        # keras-tuner's Choice holds int, float, str or bool of one type only: anything else (lists such
        # as [128, 64], mappings, or a mix like [32, 64, full]) travels as text and is decoded per trial.
        codes = tuple(v if isinstance(v, str) else _text(v) for v in values)
        if len(set(codes)) != len(codes):
            raise UserError("two choice values read the same as text", where=where, received=values)
    return tuple(values), codes


def _text(value: Any) -> str:
    return json.dumps(value, separators=(", ", ": "))


def _has_null(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, list):
        return any(_has_null(v) for v in value)
    if isinstance(value, dict):
        return any(_has_null(v) for v in value.values())
    return False


def _when(raw: Any, where: str) -> Tuple[Tuple[str, Tuple[Any, ...]], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, Mapping) or not raw:
        raise UserError(where=f"{where}.when", expected="a mapping {searched path: value or [values]}",
                        received=raw)
    out = []
    for parent, allowed in raw.items():
        allowed = tuple(allowed) if isinstance(allowed, list) else (allowed,)
        if not allowed:
            raise UserError(where=f"{where}.when.{parent}", expected="a value or a non-empty list", received=[])
        out.append((str(parent), allowed))
    return tuple(out)


def _check_when(params: Mapping[str, Param]) -> None:
    for param in params.values():
        for parent, allowed in param.when:
            where = f"search.space.{param.path}.when"
            if parent == param.path:
                raise UserError("a parameter cannot depend on itself", where=where, received=parent)
            if parent not in params:
                others = [p for p in params if p != param.path]
                raise UserError("when: depends on a parameter that is not searched", where=where,
                                expected="a path that is also in search.space", received=parent,
                                choices=others or None)
            parent_param = params[parent]
            if parent_param.kind == "float":
                raise UserError("when: can depend on a choice or int parameter, not on a float range",
                                where=where, received=parent)
            possible = parent_param.possible_values()
            for value in allowed:
                if possible is not None and not any(_same(value, p) for p in possible):
                    raise UserError(f"{parent} never takes this value", where=f"{where}.{parent}", received=value,
                                    choices=[show(p) if not isinstance(p, str) else p for p in possible][:20])


def _parents_first(params: Mapping[str, Param]) -> List[Param]:
    ordered: List[Param] = []
    visiting: List[str] = []

    def visit(path: str) -> None:
        if any(p.path == path for p in ordered):
            return
        if path in visiting:
            cycle = " -> ".join(visiting[visiting.index(path):] + [path])
            raise UserError("when: conditions form a cycle", where=f"search.space.{path}.when", received=cycle)
        visiting.append(path)
        for parent, _ in params[path].when:
            visit(parent)
        visiting.pop()
        ordered.append(params[path])

    for path in params:
        visit(path)
    return ordered


# ---------------------------------------------------------------------------- paths into the config


def _check_paths(params: Sequence[Param], config: Any) -> None:
    by_path = {p.path: p for p in params}
    searched = set(by_path)
    if DEPTH_PATH in searched:
        _check_depth(by_path, config)
    for param in params:
        if param.path != DEPTH_PATH:
            _check_key(param.path, config, by_path)
    for param in params:
        _check_values(param, config, by_path)


def _check_key(path: str, config: Any, by_path: Mapping[str, Param]) -> None:
    """The path must name a key of the schema (or an argument of an open section such as the optimizer)."""
    from pydantic import BaseModel

    where = f"search.space.{path}"
    parts = path.split(".")
    node: Any = type(config)
    data: Any = config.to_dict()
    for i, part in enumerate(parts):
        done = ".".join(parts[:i])
        if isinstance(node, type) and issubclass(node, BaseModel):
            fields = node.model_fields
            if part not in fields:
                if node.model_config.get("extra") == "allow":
                    return  # the section's own arguments (optimizer, schedule): checked by Keras later
                choices = sorted(list(fields) + (["depth"] if done == "model" else []))
                raise UserError("unknown config key", where=where, received=part, choices=choices)
            node = _inner_type(fields[part].annotation)
            data = data.get(part) if isinstance(data, dict) else None
        elif node is list:
            if not re.fullmatch(r"\d+", part):
                raise UserError(f"{done} is a list: address its items by index", where=where,
                                expected=f"{done}.0, {done}.1, ...", received=path)
            length = len(data) if isinstance(data, list) else 0
            index = int(part)
            if done == "model.hidden" and DEPTH_PATH in by_path:
                pass  # checked against the depths in _check_depth
            elif index >= length:
                hint = " (search model.depth to change the number of hidden layers)" if done == "model.hidden" else ""
                raise UserError(f"{done} has {length} item{'s' if length != 1 else ''}; index {index} does not "
                                f"exist{hint}", where=where, expected=f"an index from 0 to {length - 1}",
                                received=index)
            node = _item_type(done)
            data = data[index] if isinstance(data, list) and index < len(data) else None
        else:
            return  # inside free-form data (a mapping of options, a layer's config): nothing to check


def _inner_type(annotation: Any) -> Any:
    """The section class, ``list`` or ``dict`` behind an annotation such as ``Optional[List[int]]``."""
    import typing

    from pydantic import BaseModel

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (list, List):
        return list
    if origin in (dict, Dict):
        return dict
    for arg in typing.get_args(annotation):
        found = _inner_type(arg)
        if found is not None and found is not type(None):
            return found
    return None


def _item_type(list_path: str) -> Any:
    """The schema of the items of a list in the config (only model.layers holds sections)."""
    if list_path == "model.layers":
        from toolkit.config import LayerConfig

        return LayerConfig
    return None


def _check_depth(by_path: Mapping[str, Param], config: Any) -> None:
    depth = by_path[DEPTH_PATH]
    where = f"search.space.{DEPTH_PATH}"
    if depth.kind == "float":
        raise UserError(where=where, expected="{int: [low, high]} or {choice: [integers]}", received=depth.to_dict())
    depths = depth.possible_values() or []
    if any(isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in depths):
        raise UserError(where=where, expected="numbers of hidden layers (integers >= 0)", received=depth.to_dict())
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
    """Applies both ends of a range (or every choice) to the base config, which must stay valid."""
    for value, values in candidates(param, by_path):
        try:
            apply_values(config, values)
        except UserError as error:
            raise _invalid(param, value, values, error, "makes the config invalid") from None


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
        _check_optimizer_names_for(param, config, by_path)
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


# ---------------------------------------------------------------------------------------- helpers


def _check_optimizer_names_for(param: Param, config: Any, by_path: Mapping[str, Param]) -> None:
    """An optimizer argument that only some of the searched optimizers take needs a ``when``."""
    from toolkit import training

    name_path = "training.optimizer.name"
    if not param.path.startswith("training.optimizer.") or param.path == name_path or name_path not in by_path \
            or name_path in dict(param.when):
        return
    accepting, rejecting = [], []
    for name in by_path[name_path].values:
        try:
            training.get_optimizer(apply_values(config, {name_path: name, param.path: param.candidates()[0]}), 1)
            accepting.append(name)
        except UserError:
            rejecting.append(name)
    if accepting and rejecting:
        argument = param.path.rsplit(".", 1)[1]
        raise UserError(f"{argument} is not an argument of the {', '.join(map(str, rejecting))} optimizer",
                        where=f"search.space.{param.path}", expected=f"when: {{{name_path}: [{', '.join(map(str, accepting))}]}}")


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


def grid_size(space: Sequence[Param]) -> Optional[int]:
    """Number of trials of a grid: combinations of the active values only, as keras-tuner's grid visits them
    (a conditional parameter multiplies only the combinations where its ``when`` holds)."""
    values: Dict[str, List[Any]] = {}
    for param in space:
        if param.kind == "float":
            if param.step is None:
                return None
            if param.log:
                count = int(math.log(param.high / param.low, param.step) + 1e-8) + 1
                values[param.path] = [param.low * param.step ** k for k in range(count)]
            else:
                count = int((param.high - param.low) // param.step + 1)
                values[param.path] = [param.low + k * param.step for k in range(count)]
        else:
            possible = param.possible_values()
            if possible is None:
                return None
            values[param.path] = list(possible)
    parents = {parent for param in space for parent, _ in param.when}

    def count(index: int, chosen: Dict[str, Any]) -> int:
        if index == len(space):
            return 1
        param = space[index]
        active = all(parent in chosen and any(_same(chosen[parent], v) for v in allowed)
                     for parent, allowed in param.when)
        if not active:
            return count(index + 1, chosen)
        if param.path in parents:
            return sum(count(index + 1, {**chosen, param.path: v}) for v in values[param.path])
        return len(values[param.path]) * count(index + 1, chosen)

    return count(0, {})


def _same(a: Any, b: Any) -> bool:
    """Equal values of the same kind (True is not 1; 1 and 1.0 are the same number)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    return type(a) is type(b) and a == b


def _isnan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)
