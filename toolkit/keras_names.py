"""Keras' names and constructor arguments, read from Keras' source files without importing Keras.

Importing Keras imports TensorFlow (seconds). `ktk validate` must answer in well under a second, so it
checks every name a config gives Keras (optimizer, schedule, initializer, activation, layer, loss, metric),
the arguments given with them (``training.optimizer.lr`` is not an argument of Adam: did you mean
``learning_rate``?) and the early-stopping monitor against what Keras itself declares:

- names from Keras' auto-generated API files (``keras/<namespace>/__init__.py``: ``... import Adam as Adam``),
  and for losses and metrics from the tables ``keras.losses.get`` and ``keras.metrics.get`` look names up in;
- arguments from the ``__init__`` signatures in Keras' source, read with :mod:`ast`, following ``**kwargs``
  into the base classes they are passed to (Adam's ``clipnorm`` is BaseOptimizer's).

Anything this reading cannot establish is not checked here (never refused on a guess); building the model
(``ktk run``, ``ktk validate --deep``) remains the authoritative check, through Keras' own ``get()``.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import re
from pathlib import Path
from typing import Any, Dict, FrozenSet, Iterable, List, Optional, Sequence, Tuple

from toolkit.errors import UserError

_NAMESPACES = {
    "optimizer": "optimizers",
    "schedule": "optimizers/schedules",
    "initializer": "initializers",
    "activation": "activations",
    "layer": "layers",
    "loss": "losses",
    "metric": "metrics",
    "callback": "callbacks",
}
_NOT_OBJECTS = {"get", "serialize", "deserialize", "legacy", "schedules", "Optimizer", "OptimizerMap",
                "MultiOptimizer", "LossScaleOptimizer", "LearningRateSchedule", "Initializer", "Layer",
                "Input", "InputSpec", "Loss", "LossFunctionWrapper", "Metric", "MeanMetricWrapper", "Reduction"}
# Metric names Keras' compile() resolves itself (to the accuracy that fits the labels).
_COMPILE_METRICS = ("accuracy", "acc")


def snake_case(name: str) -> str:
    """``ExponentialDecay`` -> ``exponential_decay``, ``AUC`` -> ``auc``: Keras' own ``to_snake_case``."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


# ------------------------------------------------------------------------------ Keras' source files


@functools.lru_cache(maxsize=None)
def _keras_root() -> Optional[Path]:
    spec = importlib.util.find_spec("keras")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


@functools.lru_cache(maxsize=None)
def _module(dotted: str) -> Optional[ast.Module]:
    """The parsed source of a Keras module (``keras.src.optimizers.adam``), or None."""
    root = _keras_root()
    if root is None or not dotted.startswith("keras."):
        return None
    base = root.joinpath(*dotted.split(".")[1:])
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            try:
                return ast.parse(path.read_text(encoding="utf-8"))
            except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
                return None
    return None


def _statements(tree: ast.AST) -> Iterable[ast.stmt]:
    """Module-level statements, including those under ``if``/``try`` (backend-specific imports)."""
    for node in getattr(tree, "body", []):
        yield node
        if isinstance(node, (ast.If, ast.Try)):
            for block in (node.body, node.orelse, getattr(node, "finalbody", []),
                          *[h.body for h in getattr(node, "handlers", [])]):
                yield from _statements(ast.Module(body=block, type_ignores=[]))


@functools.lru_cache(maxsize=None)
def _api(kind: str) -> Optional[Dict[str, Tuple[str, str]]]:
    """Exported name -> (module, name there), from Keras' generated ``keras/<namespace>/__init__.py``."""
    tree = _module("keras." + _NAMESPACES[kind].replace("/", "."))
    if tree is None:
        return None
    out = {}
    for node in _statements(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                out[alias.asname or alias.name] = (node.module, alias.name)
    return out or None


@functools.lru_cache(maxsize=None)
def _lookup_table(kind: str) -> Optional[Dict[str, Tuple[str, str]]]:
    """The names ``keras.<namespace>.get`` accepts -> where each object is defined (module, name).

    Read from ``ALL_OBJECTS`` in ``keras/src/<namespace>/__init__.py``: the objects by their names (for
    metrics also in snake_case, as ``ALL_OBJECTS_DICT`` is built there), plus the string aliases added to it
    (``mse``, ``bce``, ``swish``, ...).
    """
    module = "keras.src." + _NAMESPACES[kind].replace("/", ".")
    tree = _module(module)
    if tree is None:
        return None
    objects: List[str] = []
    aliases: Dict[str, str] = {}
    for node in _statements(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Set) and \
                any(isinstance(t, ast.Name) and t.id == "ALL_OBJECTS" for t in node.targets):
            objects = [e.id for e in node.value.elts if isinstance(e, ast.Name)]
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) and node.value.args and \
                isinstance(node.value.args[0], ast.Dict):  # ALL_OBJECTS_DICT.update({"mse": ..., ...})
            for key, value in zip(node.value.args[0].keys, node.value.args[0].values):
                if isinstance(key, ast.Constant) and isinstance(key.value, str) and isinstance(value, ast.Name):
                    aliases[key.value] = value.id
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Subscript) and \
                isinstance(node.targets[0].slice, ast.Constant) and isinstance(node.value, ast.Name):
            aliases[str(node.targets[0].slice.value)] = node.value.id  # ALL_OBJECTS_DICT["swish"] = silu
    if not objects:
        return None
    snake = "to_snake_case" in ast.dump(tree)
    table: Dict[str, Tuple[str, str]] = {}
    for name in objects:
        found = _binding(tree, module, name)
        if name in _NOT_OBJECTS or not found:
            continue
        table[name] = found
        if snake and name[:1].isupper():
            table.setdefault(snake_case(name), found)
    for alias, name in aliases.items():
        if name in table:
            table[alias] = table[name]
    return table


# Kinds whose get() looks names up in ALL_OBJECTS (optimizers are built from their exported classes by ktk).
_TABLES = ("activation", "loss", "metric")


def exported(kind: str) -> Optional[List[str]]:
    """Names Keras exports for `kind` (optimizer, schedule, initializer, activation, layer); None if unknown."""
    if kind in _TABLES:
        table = _lookup_table(kind)
        return None if table is None else sorted(table)
    api = _api(kind)
    if api is None:
        return None
    names = [n for n in api if n not in _NOT_OBJECTS and not n.startswith("_")]
    if kind == "layer":
        names = [n for n in names if n[0].isupper()]
    return sorted(set(names)) or None


def choices(kind: str) -> Optional[List[str]]:
    """The names a user may write for `kind` in a config, as ktk accepts them."""
    names = exported(kind)
    if names is None:
        return None
    if kind == "optimizer":
        return sorted({n.lower() for n in names})
    if kind == "schedule":
        return sorted({snake_case(n) for n in names})
    if kind == "metric":
        return sorted(set(names) | set(_COMPILE_METRICS))
    return names


def shown_choices(kind: str, valid: Sequence[str]) -> List[str]:
    """The choices a message lists: losses and metrics by their snake_case names (each also has a class name)."""
    if kind in ("loss", "metric"):
        return [v for v in valid if v.islower()]
    if kind == "callback":
        from toolkit.config import REFUSED_CALLBACKS

        return [v for v in valid if v not in REFUSED_CALLBACKS]
    return list(valid)


def class_of(kind: str, name: str) -> Optional[Tuple[str, str]]:
    """(module, class) that a config name of `kind` constructs, or None."""
    if kind in _TABLES:
        return (_lookup_table(kind) or {}).get(name)
    api = _api(kind) or {}
    for exported_name, where in api.items():
        if exported_name == name or (kind == "schedule" and snake_case(exported_name) == snake_case(name)) or \
                (kind == "optimizer" and exported_name.lower() == name.lower()) or \
                (kind == "initializer" and exported_name.lower() == name.lower()):
            if exported_name[:1].isupper():
                return where
    return None


# ------------------------------------------------------------------------ constructor arguments


def _binding(tree: ast.Module, module: str, name: str) -> Optional[Tuple[str, str]]:
    """Where `module` gets `name` from, without reading further modules: (module, name) there."""
    for node in _statements(tree):
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and node.name == name:
            return module, name
        if isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                if (alias.asname or alias.name) == name:
                    return node.module, alias.name
    return None


@functools.lru_cache(maxsize=None)
def _resolve_name(module: str, name: str) -> Tuple[Tuple[str, str], ...]:
    """Where `name`, as used in `module`, is defined: ((module, class), ...) (several for backend-specific imports)."""
    tree = _module(module)
    if tree is None:
        return ()
    found = []
    for node in _statements(tree):
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and node.name == name:
            found.append((module, name))
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                if (alias.asname or alias.name) == name:
                    found.extend((not _backend_module(node.module) and _resolve_name(node.module, alias.name))
                                 or [(node.module, alias.name)])
    return tuple(dict.fromkeys(found))


def _backend_module(module: str) -> bool:
    """Modules of one backend (TensorFlow, JAX, torch): their classes add no arguments a config gives."""
    return module.startswith("keras.src.backend.")


def _resolve_base(module: str, expression: ast.expr) -> Tuple[Tuple[str, str], ...]:
    if isinstance(expression, ast.Name):
        return _resolve_name(module, expression.id)
    if isinstance(expression, ast.Attribute) and isinstance(expression.value, ast.Name):
        tree = _module(module)
        for node in _statements(tree) if tree is not None else ():
            if isinstance(node, ast.ImportFrom) and node.module:
                for alias in node.names:
                    if (alias.asname or alias.name) == expression.value.id:
                        return _resolve_name(f"{node.module}.{alias.name}", expression.attr)
    return ()


def _class_def(module: str, name: str) -> Optional[ast.ClassDef]:
    tree = _module(module)
    for node in _statements(tree) if tree is not None else ():
        if isinstance(node, ast.ClassDef) and node.name == name:
            return node
    return None


@functools.lru_cache(maxsize=None)
def constructor_arguments(module: str, name: str) -> Optional[Tuple[FrozenSet[str], FrozenSet[str]]]:
    """(accepted, required) keyword arguments of a Keras class's constructor; None when it cannot be told.

    ``**kwargs`` passed on to the base class (``super().__init__(**kwargs)``) accept what the base classes
    accept; ``kwargs.pop("x")`` accepts ``x``; ``**kwargs`` neither passed on nor refused (``if kwargs:
    raise``) accept anything (None). A base class outside Keras' source counts as taking nothing.
    """
    classdef = _class_def(module, name)
    if classdef is None:  # imported there from elsewhere
        defined = [where for where in _resolve_name(module, name) if where != (module, name)]
        return constructor_arguments(*defined[0]) if defined else None
    init = next((n for n in classdef.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
    if init is None:
        return _bases_arguments(module, classdef)
    arguments = init.args
    positional = arguments.posonlyargs + arguments.args
    accepted = {a.arg for a in positional + arguments.kwonlyargs} - {"self"}
    defaults = len(arguments.defaults)
    required = {a.arg for a in positional[:len(positional) - defaults]} - {"self"}
    required |= {a.arg for a, d in zip(arguments.kwonlyargs, arguments.kw_defaults) if d is None}
    if arguments.kwarg is not None:
        kwargs = arguments.kwarg.arg
        for node in ast.walk(init):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                    node.func.attr in ("pop", "get") and isinstance(node.func.value, ast.Name) and node.func.value.id == kwargs and node.args \
                    and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                accepted.add(node.args[0].value)
        passed_on = any(isinstance(node, ast.Call) and any(k.arg is None and isinstance(k.value, ast.Name) and
                                                           k.value.id == kwargs for k in node.keywords)
                        for node in ast.walk(init))
        if passed_on:
            inherited = _bases_arguments(module, classdef)
            if inherited is None:
                return None
            accepted |= inherited[0]
        elif not any(isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == kwargs
                     and any(isinstance(n, ast.Raise) for n in ast.walk(node)) for node in ast.walk(init)):
            return None  # neither passed on nor refused (`if kwargs: raise ...`): any keyword is taken
    return frozenset(accepted), frozenset(required)


def _named_arguments(module: str, name: str) -> Optional[Tuple[FrozenSet[str], FrozenSet[str]]]:
    """The keyword arguments a class's ``__init__`` names (``**kwargs`` left out), and the required ones."""
    classdef = _class_def(module, name)
    init = next((n for n in classdef.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None) \
        if classdef is not None else None
    if init is None:
        return None
    arguments = init.args
    positional = arguments.posonlyargs + arguments.args
    accepted = {a.arg for a in positional + arguments.kwonlyargs} - {"self"}
    required = {a.arg for a in positional[:len(positional) - len(arguments.defaults)]} - {"self"}
    return frozenset(accepted), frozenset(required)


def _bases_arguments(module: str, classdef: ast.ClassDef) -> Optional[Tuple[FrozenSet[str], FrozenSet[str]]]:
    accepted: set = set()
    for base in classdef.bases:
        for where in _resolve_base(module, base):
            if where == (module, classdef.name):
                continue
            if not where[0].startswith("keras.") or _backend_module(where[0]):
                continue  # outside Keras (object, a TensorFlow class), or a backend's base class (TFOptimizer,
                # TorchLayer: they pass every argument on to Keras' own base): no config arguments of its own
            found = constructor_arguments(*where)
            if found is None and _class_def(*where) is not None:
                return None
            if found is not None:
                accepted |= found[0]
    return frozenset(accepted), frozenset()


# ------------------------------------------------------------------------------------ the checks


def check_config_names(config: Any, task: Optional[str] = None) -> bool:
    """Checks every Keras name and argument in the config, without importing Keras.

    Args:
        task: the task the data gives (``data.task``), when the config's ``task`` is ``auto``. Without it the
            early-stopping monitor is checked only when the config names its task (see :func:`check_config_monitor`).

    Raises:
        UserError: for a name Keras does not export, an argument its class does not take (or a required
            one missing), or an early-stopping monitor the model will not report.

    Returns:
        False when Keras' files could not be read (nothing was checked), else True.
    """
    checks: List[Tuple[str, str, Any]] = []
    training = config.training
    checks.append(("optimizer", "training.optimizer", training.optimizer))
    if training.schedule is not None:
        checks.append(("schedule", "training.schedule", training.schedule))
    model = config.model
    checks.append(("activation", "model.activation", model.activation))
    checks.append(("initializer", "model.initializer", model.initializer))
    for i, layer in enumerate(model.layers or []):
        if layer.class_name is not None:
            if not model.custom_modules:  # registered custom classes are only known after importing them
                checks.append(("layer", f"model.layers.{i}", {"class_name": layer.class_name, "config": layer.config}))
            continue
        if layer.activation is not None:
            checks.append(("activation", f"model.layers.{i}.activation", layer.activation))
        if layer.initializer is not None:
            checks.append(("initializer", f"model.layers.{i}.initializer", layer.initializer))
    if training.loss is not None:
        checks.append(("loss", "training.loss", training.loss))
    for i, metric in enumerate(training.metrics or []):
        checks.append(("metric", f"training.metrics.{i}", metric))
    for i, callback in enumerate(training.callbacks):
        checks.append(("callback", f"training.callbacks.{i}", {"class_name": callback.class_name,
                                                               "config": callback.config}))
    readable = True
    for kind, where, value in checks:
        readable = _check(kind, where, value) and readable
    readable = check_augment(config) and readable
    check_config_monitor(config, task)
    return readable


def check_augment(config: Any) -> bool:
    """``data.augment``'s layers: each argument one its class takes (``name`` is ktk's), of a plausible type.

    The type is read from the argument's default in Keras' source (a number, a string, a boolean), and any
    ``*factor`` argument is a number or ``[lower, upper]``; an argument whose default says nothing is left to
    Keras. ``ktk run`` makes this check before the data loads, ``ktk validate`` with the other names.

    Returns:
        False when Keras' files could not be read (nothing was checked), else True.
    """
    if choices("layer") is None:
        return False
    for i, spec in enumerate(getattr(config.data, "augment", None) or ()):
        where = f"data.augment.{i}.config"
        cls = class_of("layer", spec.class_name)
        found = constructor_arguments(*cls) if cls else None
        if found is None:
            continue
        accepted = found[0] - {"name", "input_shape", "input_dim"}  # ktk names the layer and gives its input
        for key, value in spec.config.items():
            if key == "name":
                raise UserError(f"ktk names each augmentation layer itself (augment_{i}_...)",
                                where=f"{where}.{key}", expected="no name", received=value)
            if key not in accepted:
                raise UserError(where=f"{where}.{key}", expected=f"an argument of {cls[1]}", received=key,
                                choices=sorted(accepted))
            expected = _expected_type(_default_of(*cls, key), key)
            if expected is not None and not expected[0](value):
                raise UserError(where=f"{where}.{key}", expected=expected[1], received=value)
        missing = sorted(found[1] - set(spec.config))
        if missing:
            raise UserError(f"missing argument{'s' if len(missing) > 1 else ''} of {cls[1]}", where=where,
                            expected=", ".join(f"{where}.{m}" for m in missing))
    return True


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number_or_range(value: Any) -> bool:
    return _number(value) or (isinstance(value, list) and 1 <= len(value) <= 2 and all(_number(v) for v in value))


_NUMBER_OR_RANGE = (_number_or_range, "a number, or [lower, upper]: two numbers")


def _expected_type(default: Any, key: str) -> Optional[Tuple[Any, str]]:
    """(check, what it expects) for an argument with this default (an ast node, or None), or None: not checked."""
    if isinstance(default, ast.Constant) and default.value is not None:
        value = default.value
        if isinstance(value, bool):
            return lambda v: isinstance(v, bool), "true or false"
        if isinstance(value, (int, float)):
            return _NUMBER_OR_RANGE
        if isinstance(value, str):
            return lambda v: isinstance(v, str), f"a string (as Keras' default, {value!r})"
    if isinstance(default, (ast.Tuple, ast.List)) and default.elts and \
            all(isinstance(e, ast.Constant) and _number(e.value) for e in default.elts):
        return _NUMBER_OR_RANGE
    if key.endswith("factor") and (default is None or isinstance(default, ast.Constant)):
        return _NUMBER_OR_RANGE
    return None


def _constant(module: str, classdef: ast.ClassDef, default: ast.expr) -> ast.expr:
    """A default given by name (``mode=HORIZONTAL_AND_VERTICAL``): the constant the module or class assigns it."""
    if not isinstance(default, ast.Name):
        return default
    tree = _module(module)
    for node in [*classdef.body, *(_statements(tree) if tree is not None else ())]:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and \
                any(isinstance(t, ast.Name) and t.id == default.id for t in node.targets):
            return node.value
    return default


@functools.lru_cache(maxsize=None)
def _default_of(module: str, name: str, argument: str) -> Optional[ast.expr]:
    """The default of `argument` in the constructor of a Keras class or of its bases (an ast node), or None."""
    classdef = _class_def(module, name)
    if classdef is None:
        defined = [where for where in _resolve_name(module, name) if where != (module, name)]
        return _default_of(*defined[0], argument) if defined else None
    init = next((n for n in classdef.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
    if init is not None:
        arguments = init.args
        positional = arguments.posonlyargs + arguments.args
        pairs = list(zip(positional[len(positional) - len(arguments.defaults):], arguments.defaults))
        pairs += [(a, d) for a, d in zip(arguments.kwonlyargs, arguments.kw_defaults) if d is not None]
        for arg, default in pairs:
            if arg.arg == argument:
                return _constant(module, classdef, default)
        if any(a.arg == argument for a in positional + arguments.kwonlyargs):
            return None  # required
    for base in classdef.bases:
        for where in _resolve_base(module, base):
            if where != (module, name) and where[0].startswith("keras.") and not _backend_module(where[0]):
                found = _default_of(*where, argument)
                if found is not None:
                    return found
    return None


def check_config_monitor(config: Any, task: Optional[str] = None) -> None:
    """The early-stopping monitor against the metrics the model of this task reports.

    The task is the config's own, else `task` (the data's); when neither is known the check waits for the
    data (``ktk validate`` loads it), so the valid choices it lists are only those of the model's task.
    """
    tasks = (config.task,) if config.task != "auto" else (task,) if task else ()
    unnamed = [m for m in config.training.metrics or [] if isinstance(m, dict) and
               not (m.get("config") or {}).get("name")]
    if tasks and not unnamed:  # (the name Keras gives a metric object is only known once Keras makes it)
        check_monitor(config, config.training.metrics, tasks)


def _check(kind: str, where: str, value: Any) -> bool:
    """One Keras object: a name (``he_normal``), ``{class_name, config}``, or an optimizer/schedule section."""
    valid = choices(kind)
    if valid is None:
        return False
    if kind in ("optimizer", "schedule"):
        name, arguments, name_at = value.name, dict(value.arguments), f"{where}.name"
        if kind == "optimizer":
            arguments.pop("learning_rate")  # given by ktk itself, always an argument of an optimizer
        elif _takes_initial_learning_rate(name):
            arguments.setdefault("initial_learning_rate", None)  # filled with the optimizer's learning rate
    elif isinstance(value, dict):
        name, arguments, name_at = value["class_name"], dict(value.get("config") or {}), f"{where}.class_name"
    else:
        name, arguments, name_at = value, None, where
    lowered = {v.lower() for v in valid}
    wanted = snake_case(name) if kind == "schedule" else name
    if wanted not in valid and not (kind in ("initializer", "optimizer") and name.lower() in lowered):
        raise UserError(where=name_at, expected=f"a Keras {kind}", received=name, choices=shown_choices(kind, valid))
    if arguments is not None:
        _check_arguments(kind, name, arguments, where if kind in ("optimizer", "schedule") else f"{where}.config")
    elif kind in ("loss", "metric"):  # a class by name is made without arguments: it must need none
        cls = class_of(kind, name)
        found = constructor_arguments(*cls) if cls else None
        if found and found[1]:
            needed = ", ".join(f"{m}: ..." for m in sorted(found[1]))
            raise UserError(f"{name} needs arguments", where=where, received=name,
                            expected=f"{{class_name: {cls[1]}, config: {{{needed}}}}}")
    return True


def _takes_initial_learning_rate(schedule: str) -> bool:
    """Whether ktk fills in ``initial_learning_rate`` (PiecewiseConstantDecay takes none: its values are the rates)."""
    cls = class_of("schedule", schedule)
    found = constructor_arguments(*cls) if cls else None
    return found is None or "initial_learning_rate" in found[0]


def _check_arguments(kind: str, name: str, arguments: Dict[str, Any], where: str) -> None:
    cls = class_of(kind, name)
    found = constructor_arguments(*cls) if cls else None
    if found is None and kind == "callback" and cls:
        found = _named_arguments(*cls)  # callbacks take **kwargs only for old names (ReduceLROnPlateau's epsilon)
    if found is None:
        return
    accepted, required = found
    if kind in ("optimizer", "schedule"):
        accepted = accepted - {"name"}  # `name` picks the class in a ktk config
    for key in arguments:
        if key not in accepted:
            raise UserError(where=f"{where}.{key}", expected=f"an argument of {cls[1]}", received=key,
                            choices=sorted(accepted))
    missing = sorted(required - set(arguments) - ({"learning_rate"} if kind == "optimizer" else set()))
    if missing:
        raise UserError(f"missing argument{'s' if len(missing) > 1 else ''} of {cls[1]}", where=where,
                        expected=", ".join(f"{where}.{m}" for m in missing))


def check_monitor(config: Any, metric_names: Optional[Sequence[str]], tasks: Sequence[str]) -> None:
    """The early-stopping monitor must be a quantity the model reports: loss or a metric, plain or ``val_``.

    Args:
        metric_names: the names Keras logs the metrics under (a metric given by name is logged under that
            name); None: the default metrics of each of `tasks` (several when the data decides the task).

    Raises:
        UserError: at ``training.early_stopping.monitor``, with the valid names.
    """
    from toolkit.training import DEFAULT_METRICS  # light: no Keras at import

    stopping = config.training.early_stopping
    monitors = [(f"training.callbacks.{i}.config.monitor", c.config["monitor"])
                for i, c in enumerate(config.training.callbacks) if isinstance(c.config.get("monitor"), str)]
    if stopping is not None:
        monitors.insert(0, ("training.early_stopping.monitor", stopping.monitor))
    if not monitors:
        return
    names = {"loss"}
    for task in tasks:
        names.update(str(m.get("config", {}).get("name")) if isinstance(m, dict) else str(m)
                     for m in (DEFAULT_METRICS[task] if metric_names is None else metric_names))
    valid = sorted(names | {"val_" + n for n in names})
    for where, monitor in monitors:
        if monitor not in valid:
            raise UserError("not a quantity this model reports", where=where, received=monitor, choices=valid)
