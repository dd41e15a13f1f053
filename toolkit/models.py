"""The pure model builder: ``build_model(config, data) -> keras.Model``.

A function of the config and the data's shapes alone; used by single runs, every sweep trial, gradient
checking and the experiment suites. Names (activations, initializers, layer classes) are resolved by
Keras' own ``get()`` / ``deserialize``; a bad name becomes a UserError listing Keras' valid choices.
"""

from __future__ import annotations

import importlib
from typing import Any, Iterable, List, Optional

from toolkit.errors import UserError


def build_model(config: Any, data: Any) -> Any:
    """Builds the (uncompiled) Keras model a config describes.

    Args:
        config: a :class:`toolkit.config.Config`.
        data: a :class:`toolkit.data.Dataset` (only its shapes, task and class count are used).

    Returns:
        A functional ``keras.Model`` named after the config: hidden blocks, then an output layer chosen
        by the task (sigmoid unit for binary, softmax for multiclass, linear for regression).
    """
    import keras

    import_custom_modules(config.model.custom_modules)
    model_cfg = config.model
    inputs = keras.Input(shape=data.input_shape, name="inputs")
    x = inputs
    if model_cfg.layers is None:
        specs = [(f"model.hidden.{i}", {"units": units}) for i, units in enumerate(model_cfg.hidden)]
    else:
        specs = [(f"model.layers.{i}", layer.model_dump(exclude_none=True)) for i, layer in enumerate(model_cfg.layers)]
    for index, (where, spec) in enumerate(specs):
        if "class_name" in spec:
            x = _keras_layer(spec, where)(x)
        else:
            x = _dense_block(x, spec, model_cfg, where, index + 1)
    if len(x.shape) > 2:
        x = keras.layers.Flatten(name="flatten_output")(x)
    activation = {"binary": "sigmoid", "multiclass": "softmax"}.get(data.task, "linear")
    outputs = keras.layers.Dense(data.output_units, activation=activation, name="output")(x)
    return keras.Model(inputs, outputs, name=_model_name(config.name))


def _model_name(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "_-" else "_" for c in name)
    return cleaned or "model"


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
    choices = keras_names(keras.layers, keras.layers.Layer)
    try:
        identifier = {"class_name": class_name, "config": dict(spec.get("config", {}))}
        if class_name in choices:
            identifier["module"] = "keras.layers"  # Keras 3 resolves built-in layers through their module
        return keras.layers.deserialize(identifier)
    except (ValueError, TypeError, KeyError) as error:
        if class_name not in choices and not _is_registered(class_name):
            raise UserError(where=f"{where}.class_name", expected="a Keras layer class", received=class_name,
                            choices=choices) from None
        raise UserError(f"Keras rejected the layer config: {_first_line(error)}",
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
    import copy

    import keras

    try:
        return keras.initializers.get(copy.deepcopy(identifier))
    except (ValueError, TypeError) as error:
        name = identifier.get("class_name") if isinstance(identifier, dict) else identifier
        choices = initializer_names()
        if isinstance(identifier, dict) and _known(name, choices):
            raise UserError(f"Keras rejected the initializer config: {_first_line(error)}", where=where,
                            received=identifier) from None
        raise UserError(where=where, expected="a Keras initializer", received=name, choices=choices) from None


def initializer_names() -> List[str]:
    import keras

    names = keras_names(keras.initializers, keras.initializers.Initializer)
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


def keras_names(module: Any, base: type) -> List[str]:
    """Public class names in a Keras namespace that subclass `base` (Keras' own list of choices)."""
    names = []
    for name in dir(module):
        obj = getattr(module, name)
        if not name.startswith("_") and isinstance(obj, type) and issubclass(obj, base) and obj is not base:
            names.append(name)
    return sorted(names)


def import_custom_modules(modules: Iterable[str]) -> None:
    """Imports the modules named in ``model.custom_modules`` so their registered Keras classes resolve.

    Custom layers are supplied the Keras way: classes decorated with
    ``keras.saving.register_keras_serializable`` in an importable module. Nothing in a config is evaluated.
    """
    for i, name in enumerate(modules):
        try:
            importlib.import_module(name)
        except ImportError as error:
            raise UserError(f"could not import the module: {error}", where=f"model.custom_modules.{i}",
                            received=name) from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
