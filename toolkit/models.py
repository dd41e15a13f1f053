"""The pure model builder: ``build_model(config, data) -> keras.Model``.

A function of the config and the data's shapes alone; used by single runs, every sweep trial, gradient
checking and the experiment suites. Names (activations, initializers, layer classes) are resolved by
Keras' own ``get()`` / ``deserialize``; a bad name becomes a UserError listing Keras' valid choices.
Keras resolves the loss and metric names only at the first training step, so the builder resolves them
first (and checks the early-stopping monitor against them): a run that would fail fails before it writes.

``model.custom_modules`` is the one part of a config that runs code: the modules are imported here, and
only here, when a model is built (see :func:`import_custom_modules` for what may be imported).
"""

from __future__ import annotations

import copy
import importlib
import importlib.machinery
import importlib.util
import os
import re
import sys
import sysconfig
import unicodedata
from pathlib import Path
from typing import Any, Iterable, List, Optional, Sequence, Union

from toolkit.errors import UserError, reason
from toolkit.keras_names import check_monitor, shown_choices
from toolkit.keras_names import choices as keras_choices

# A kernel with more elements than this cannot be indexed by TensorFlow's 32-bit sizes (and would not fit).
MAX_KERNEL = 2**31 - 1


def build_model(config: Any, data: Any) -> Any:
    """Builds the (uncompiled) Keras model a config describes.

    Args:
        config: a :class:`toolkit.config.Config`.
        data: a :class:`toolkit.data.Dataset` (only its shapes, task and class count are used).

    Returns:
        A functional ``keras.Model`` named after the config: hidden blocks, then an output layer chosen
        by the task (sigmoid unit for binary, softmax for multiclass, linear for regression). Built under the
        dtype policy of ``training.precision`` (Keras' global policy is put back afterwards); under a mixed
        policy the output layer is float32, so the loss is computed in float32.
    """
    from toolkit.hardware.devices import precision_policy

    import_custom_modules(config.model.custom_modules, config.base_dir)
    check_training_names(config, data.task)
    with precision_policy(config.training.precision):
        return _build(config, data)


def _build(config: Any, data: Any) -> Any:
    """:func:`build_model`'s layers, under the dtype policy already set."""
    import keras

    from toolkit.hardware.devices import output_dtype

    model_cfg = config.model
    if model_cfg.layers is None:
        specs = [(f"model.hidden.{i}", {"units": units}) for i, units in enumerate(model_cfg.hidden)]
    else:
        specs = [(f"model.layers.{i}", layer.model_dump(exclude_none=True)) for i, layer in enumerate(model_cfg.layers)]
    _check_kernel_sizes(specs, data)
    inputs = keras.Input(shape=data.input_shape, name="inputs")
    x = input_block(config, data, inputs)
    for index, (where, spec) in enumerate(specs):
        try:
            if "class_name" in spec:
                x = _keras_layer(spec, where)(x)
            else:
                x = _dense_block(x, spec, model_cfg, where, index + 1)
        except UserError:
            raise
        except Exception as error:  # e.g. Conv2D on a table, a BatchNormalization axis it lacks: Keras says why
            shape = "(" + ", ".join("None" if d is None else str(d) for d in x.shape) + ")"
            raise UserError(f"the layer cannot take its input: {reason(error)}", where=where,
                            expected=f"a layer that accepts inputs of shape {shape}",
                            received=spec.get("class_name", "Dense")) from None
    if len(x.shape) > 2:
        x = keras.layers.Flatten(name="flatten_output")(x)
    activation = {"binary": "sigmoid", "multiclass": "softmax"}.get(data.task, "linear")
    outputs = keras.layers.Dense(data.output_units, activation=activation, name="output",
                                 dtype=output_dtype(config.training.precision))(x)
    return keras.Model(inputs, outputs, name=scope_name(config.name))


def input_block(config: Any, data: Any, x: Any) -> Any:
    """What the model does to its inputs first: ``data.augment``'s random layers (active in training only: Keras'
    random preprocessing layers pass inputs through at inference), then, for data normalized inside the model
    (images: ``normalization["in_model"]``), a ``Normalization`` layer with the training split's statistics."""
    import keras

    for i, spec in enumerate(getattr(config.data, "augment", ())):
        where = f"data.augment.{i}"
        cls = getattr(keras.layers, spec.class_name, None)
        if not isinstance(cls, type):
            raise UserError(where=f"{where}.class_name", expected=f"a random augmentation layer of this Keras "
                            f"({keras.__version__})", received=spec.class_name)
        try:  # unseeded: their generators draw from keras.utils.set_random_seed(config.seed)
            layer = cls(**copy.deepcopy(spec.config), name=f"augment_{i}_{snake(spec.class_name)}")
            x = layer(x)
        except Exception as error:  # noqa: BLE001 - Keras says what is wrong with the arguments or the input
            raise UserError(f"Keras rejected the augmentation layer: {reason(error)}", where=where,
                            received={"class_name": spec.class_name, "config": spec.config}) from None
    stats = getattr(data, "normalization", None) or {}
    if stats.get("in_model") and stats.get("method", "none") != "none":
        import numpy as np

        x = keras.layers.Normalization(axis=-1, mean=np.asarray(stats["center"], dtype=np.float32),
                                       variance=np.square(np.asarray(stats["scale"], dtype=np.float32)),
                                       name="normalization")(x)
    return x


def snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def scope_name(name: str) -> str:
    """A run name as a valid Keras/TensorFlow scope name (``^[A-Za-z0-9.][A-Za-z0-9_.-]*$``).

    Run names may be any text without path separators (``café``, ``_exp``); the model built for them is
    named by their ASCII letters (accents dropped), other characters as ``_``, and an ``m`` in front when
    the name does not start with a letter, digit or dot.
    """
    text = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^A-Za-z0-9_.-]", "_", text) if text.strip() else "model"
    return text if re.match(r"[A-Za-z0-9.]", text) else "m" + text


def _check_kernel_sizes(specs: Sequence[Any], data: Any) -> None:
    """Dense kernels TensorFlow cannot hold are refused before Keras tries to allocate them."""
    width = 1
    for size in data.input_shape:
        width *= int(size)
    for where, spec in specs:
        if "class_name" in spec:
            return  # the shapes after any other layer are known to Keras only
        units = spec["units"]
        if width * units > MAX_KERNEL:
            raise UserError(f"a Dense kernel of {width} x {units} = {width * units:,} weights is too large",
                            where=where if where.startswith("model.layers") else "model.hidden",
                            expected=f"at most {MAX_KERNEL:,} weights per layer", received=units)
        width = units


def _dense_block(x: Any, spec: dict, defaults: Any, where: str, number: int) -> Any:
    """Dense -> [BatchNormalization] -> activation -> [Dropout]: one hidden block."""
    import keras

    if len(x.shape) > 2:
        x = keras.layers.Flatten(name=f"flatten_{number}")(x)
    batchnorm = spec.get("batchnorm", defaults.batchnorm)
    activation = get_activation(spec.get("activation", defaults.activation), f"{where}.activation"
                                if "activation" in spec else "model.activation")
    initializer = get_initializer(spec.get("initializer", defaults.initializer),
                                  f"{where}.initializer" if "initializer" in spec else "model.initializer")
    regularizer = get_regularizer(spec["regularizer"] if "regularizer" in spec else
                                  (defaults.regularizer.model_dump() if defaults.regularizer else None))
    dropout = spec.get("dropout", defaults.dropout)
    # With batch normalization the Dense bias is redundant: BN's beta plays its role.
    x = keras.layers.Dense(spec["units"], kernel_initializer=initializer, kernel_regularizer=regularizer,
                           use_bias=not batchnorm, name=f"dense_{number}")(x)
    if batchnorm:
        x = keras.layers.BatchNormalization(name=f"batchnorm_{number}")(x)
    x = keras.layers.Activation(activation, name=f"activation_{number}")(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name=f"dropout_{number}")(x)
    return x


def _keras_layer(spec: dict, where: str) -> Any:
    import keras

    class_name = spec["class_name"]
    choices = exported_classes(keras.layers, keras.layers.Layer)
    try:
        identifier = {"class_name": class_name, "config": dict(spec.get("config", {}))}
        if class_name in choices:
            identifier["module"] = "keras.layers"  # Keras 3 resolves built-in layers through their module
        return keras.layers.deserialize(identifier)
    except (ValueError, TypeError, KeyError) as error:
        if class_name not in choices and not _is_registered(class_name):
            raise UserError(where=f"{where}.class_name", expected="a Keras layer class", received=class_name,
                            choices=choices) from None
        raise UserError(f"Keras rejected the layer config: {reason(error)}",
                        where=f"{where}.config", received=spec.get("config", {})) from None


def _is_registered(name: str) -> bool:
    import keras

    return keras.saving.get_registered_object(name) is not None


def get_activation(name: Any, where: str) -> Any:
    """Keras' activation for `name`, or a UserError listing the valid names."""
    import keras

    try:
        return keras.activations.get(name)
    except (ValueError, TypeError):
        choices = sorted(n for n in dir(keras.activations) if not n.startswith("_")
                         and callable(getattr(keras.activations, n)) and n not in ("get", "serialize", "deserialize"))
        raise UserError(where=where, expected="a Keras activation", received=name, choices=choices) from None


def get_initializer(identifier: Any, where: str) -> Any:
    """Keras' initializer for a name or ``{class_name, config}`` dict, or a UserError."""
    import keras

    try:
        return keras.initializers.get(copy.deepcopy(identifier))
    except (ValueError, TypeError) as error:
        name = identifier.get("class_name") if isinstance(identifier, dict) else identifier
        choices = initializer_names()
        if isinstance(identifier, dict) and _known(name, choices):
            raise UserError(f"Keras rejected the initializer config: {reason(error)}", where=where,
                            received=identifier) from None
        raise UserError(where=where, expected="a Keras initializer", received=name, choices=choices) from None


def initializer_names() -> List[str]:
    import keras

    names = exported_classes(keras.initializers, keras.initializers.Initializer)
    snake = [n for n in dir(keras.initializers) if n.islower() and not n.startswith("_")
             and n not in ("get", "serialize", "deserialize")]
    return sorted(set(snake) | set(names))


def _known(name: Any, choices: Iterable[str]) -> bool:
    lowered = {c.lower() for c in choices}
    return isinstance(name, str) and name.lower() in lowered


def get_regularizer(spec: Optional[dict]) -> Any:
    """An L1L2 kernel regularizer from ``{l1: ..., l2: ...}``; None when both are zero."""
    import keras

    if not spec or not (spec.get("l1") or spec.get("l2")):
        return None
    return keras.regularizers.L1L2(l1=float(spec.get("l1", 0.0)), l2=float(spec.get("l2", 0.0)))


def exported_classes(module: Any, base: type) -> List[str]:
    """Public class names in a Keras namespace that subclass `base` (Keras' own list of choices)."""
    names = []
    for name in dir(module):
        obj = getattr(module, name)
        if not name.startswith("_") and isinstance(obj, type) and issubclass(obj, base) and obj is not base:
            names.append(name)
    return sorted(names)


# ------------------------------------------------------------------------- loss, metrics, monitor


def check_training_names(config: Any, task: str) -> None:
    """Resolves the loss and metrics with Keras and checks the early-stopping monitor against them.

    Keras' ``compile()`` accepts any name and fails at the first training step, after a run has started
    writing; this fails first.

    Raises:
        UserError: at ``training.loss``, ``training.metrics.<i>`` or ``training.early_stopping.monitor``.
    """
    import keras

    training = config.training
    if training.loss is not None:
        _resolve(keras.losses, training.loss, "training.loss", "loss")
    if training.metrics is None:
        check_monitor(config, None, (task,))
        return
    names = []
    for i, metric in enumerate(training.metrics):
        if isinstance(metric, str) and metric.lower() in ("accuracy", "acc"):
            names.append(metric)  # compile() picks the accuracy that fits the labels
            continue
        resolved = _resolve(keras.metrics, metric, f"training.metrics.{i}", "metric")
        names.append(metric if isinstance(metric, str) else getattr(resolved, "name", str(metric)))
    check_monitor(config, names, (task,))


def _resolve(namespace: Any, identifier: Any, where: str, kind: str) -> Any:
    try:
        return namespace.get(copy.deepcopy(identifier))
    except (ValueError, TypeError) as error:
        name = identifier.get("class_name") if isinstance(identifier, dict) else identifier
        valid = keras_choices(kind) or []
        if name in valid:
            raise UserError(f"Keras rejected the {kind}: {reason(error)}", where=where,
                            received=identifier) from None
        raise UserError(where=f"{where}.class_name" if isinstance(identifier, dict) else where,
                        expected=f"a Keras {kind}", received=name, choices=shown_choices(kind, valid) or None) from None


# ---------------------------------------------------------------------------------- custom modules


def import_custom_modules(modules: Iterable[str], base_dir: Union[str, Path, None] = None) -> None:
    """Imports ``model.custom_modules`` so the Keras classes they register can be named in ``layers:``.

    This is code, by design: ktk imports these modules as Python imports any module, so a config that
    names one runs it. What may be imported is limited to what the config names on purpose:

    - a module installed or on ``PYTHONPATH``, found without the current folder (a file that happens to be
      in the folder ktk runs in is never picked up);
    - a ``.py`` file given by its path, relative to the config file (``base_dir``);
    - never a standard-library module (``this`` prints, ``antigravity`` opens a browser) and never a
      ``__main__`` module (``venv.__main__`` creates a virtual environment).

    Commands that do not build a model (``ktk validate`` without ``--deep``, compare, report) never import them.
    """
    for i, entry in enumerate(modules):
        where = f"model.custom_modules.{i}"
        if entry.endswith(".py"):
            _import_file(Path(base_dir or ".") / entry, entry, where)
            continue
        _check_module_name(entry, where)
        spec = _find_spec(entry, where)
        if spec is None:
            raise UserError(f"could not import the module: No module named '{entry}'", where=where, received=entry)
        if _in_stdlib(spec):
            raise UserError("a standard-library module, not a module of custom Keras classes", where=where,
                            received=entry, expected="your own module (installed, on PYTHONPATH, or a .py path)")
        with _without_current_folder():
            try:
                importlib.import_module(entry)
            except ImportError as error:
                raise UserError(f"could not import the module: {error}", where=where, received=entry) from None


def _check_module_name(name: str, where: str) -> None:
    parts = name.split(".")
    if "__main__" in parts or not all(p.isidentifier() for p in parts):
        raise UserError("a __main__ module runs a program when it is imported" if "__main__" in parts else None,
                        where=where, received=name, expected="a module that defines Keras classes")


def _find_spec(name: str, where: str) -> Any:
    """The module's spec, found without the current folder; a package's parents are imported to find it."""
    with _without_current_folder():
        try:
            top = name.split(".")[0]
            top_spec = importlib.util.find_spec(top)
            if top_spec is None:
                return None
            if _in_stdlib(top_spec):
                return top_spec
            return importlib.util.find_spec(name)
        except (ImportError, ValueError) as error:
            raise UserError(f"could not import the module: {error}", where=where, received=name) from None


def _in_stdlib(spec: Any) -> bool:
    if spec.name.split(".")[0] in getattr(sys, "stdlib_module_names", ()):
        return True
    origin = spec.origin or ""
    if origin in ("built-in", "frozen"):
        return True
    stdlib = [Path(sysconfig.get_paths()[key]).resolve() for key in ("stdlib", "platstdlib")]
    try:
        path = Path(origin).resolve()
    except (OSError, RuntimeError, ValueError):
        return False
    installed = {"site-packages", "dist-packages"} & set(path.parts)
    return any(root in path.parents for root in stdlib) and not installed


class _without_current_folder:
    """While importing a custom module, the current folder (``''`` or its path on sys.path) is not searched."""

    def __enter__(self) -> None:
        self.saved = list(sys.path)
        here = os.getcwd()
        sys.path[:] = [p for p in sys.path if p not in ("", ".") and os.path.abspath(p) != here]
        importlib.invalidate_caches()

    def __exit__(self, *exc: Any) -> None:
        sys.path[:] = self.saved


def _import_file(path: Path, entry: str, where: str) -> None:
    """Imports a .py file named by path, under its file name as module name (as Keras' registry expects)."""
    name = path.stem
    if not name.isidentifier() or name in getattr(sys, "stdlib_module_names", ()):
        raise UserError(expected="a .py file named like a Python module (my_layers.py), not after a standard "
                                 "library one", where=where, received=entry)
    if not path.is_file():
        raise UserError("file not found", where=where, expected="the path of a .py file, relative to the config",
                        received=str(path))
    loaded = sys.modules.get(name)
    if loaded is not None:
        if Path(getattr(loaded, "__file__", "") or "").resolve() != path.resolve():
            raise UserError(f"another module named {name} is already imported", where=where, received=entry,
                            expected="a file whose name is not the name of another module")
        return
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise UserError("cannot import this file", where=where, received=entry)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except ImportError as error:
        del sys.modules[name]
        raise UserError(f"could not import the module: {error}", where=where, received=entry) from None
