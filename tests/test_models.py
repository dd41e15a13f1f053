"""The builder: what a config says really appears in the built model; Keras names resolve or fail clearly."""

import numpy as np
import pytest

from toolkit.config import parse_config
from toolkit.data import Dataset
from toolkit.errors import UserError
from toolkit.models import build_model
from toolkit.training import compile_model, get_optimizer, get_schedule


def fake_data(input_shape=(10,), task="multiclass", num_classes=3, n=20):
    x = np.zeros((n, *input_shape), dtype=np.float32)
    y = np.zeros(n, dtype=np.int32 if task == "multiclass" else np.float32)
    return Dataset(x, y, x, y, x, y, task=task, num_classes=num_classes if task != "regression" else None)


def make(model=None, training=None, **top):
    raw = {"name": "m", "data": {"source": "sklearn.iris"}, "model": model or {}, "training": training or {}}
    raw.update(top)
    return parse_config(raw)


def layers_of(model, kind):
    return [layer for layer in model.layers if type(layer).__name__ == kind]


def test_hidden_shorthand_parameter_count_and_layer_configs():
    config = make({"hidden": [8, 4], "activation": "tanh", "initializer": "he_normal",
                   "regularizer": {"l2": 1e-3}, "dropout": 0.25})
    model = build_model(config, fake_data())
    assert model.count_params() == (10 * 8 + 8) + (8 * 4 + 4) + (4 * 3 + 3)
    dense = layers_of(model, "Dense")
    assert [d.units for d in dense] == [8, 4, 3]
    assert type(dense[0].kernel_initializer).__name__ == "HeNormal"
    assert dense[0].kernel_regularizer.get_config() == {"l1": 0.0, "l2": pytest.approx(1e-3)}
    assert dense[-1].kernel_regularizer is None  # the output layer is not regularized
    assert [d.rate for d in layers_of(model, "Dropout")] == [0.25, 0.25]
    assert [a.activation.__name__ for a in layers_of(model, "Activation")] == ["tanh", "tanh"]
    assert dense[-1].activation.__name__ == "softmax"


def test_batchnorm_blocks_drop_the_redundant_bias():
    model = build_model(make({"hidden": [8], "batchnorm": True}), fake_data())
    assert len(layers_of(model, "BatchNormalization")) == 1
    assert layers_of(model, "Dense")[0].use_bias is False
    # Dense 10*8 (no bias) + BN 4*8 (gamma, beta, moving mean, moving variance) + output 8*3+3
    assert model.count_params() == 80 + 32 + 27


def test_output_follows_task():
    binary = build_model(make(), fake_data(task="binary", num_classes=2))
    regression = build_model(make(), fake_data(task="regression"))
    assert binary.layers[-1].units == 1 and binary.layers[-1].activation.__name__ == "sigmoid"
    assert regression.layers[-1].units == 1 and regression.layers[-1].activation.__name__ == "linear"


def test_initializer_dict_and_l1():
    config = make({"hidden": [5], "initializer": {"class_name": "RandomNormal", "config": {"stddev": 3.0}},
                   "regularizer": {"l1": 0.01, "l2": 0.02}})
    dense = layers_of(build_model(config, fake_data()), "Dense")[0]
    assert dense.kernel_initializer.stddev == 3.0
    assert dense.kernel_regularizer.get_config() == {"l1": pytest.approx(0.01), "l2": pytest.approx(0.02)}


def test_per_layer_overrides_and_any_keras_layer():
    config = make({"layers": [
        {"class_name": "Reshape", "config": {"target_shape": [4, 4, 1]}},
        {"class_name": "Conv2D", "config": {"filters": 2, "kernel_size": 3}},
        {"class_name": "Flatten"},
        {"units": 6, "activation": "sigmoid", "dropout": 0.5, "batchnorm": True},
        {"units": 3},
    ], "activation": "relu"})
    model = build_model(config, fake_data(input_shape=(16,)))
    conv = layers_of(model, "Conv2D")[0]
    assert conv.filters == 2 and conv.kernel_size == (3, 3)
    acts = [a.activation.__name__ for a in layers_of(model, "Activation")]
    assert acts == ["sigmoid", "relu"]
    assert [d.rate for d in layers_of(model, "Dropout")] == [0.5]
    assert len(layers_of(model, "BatchNormalization")) == 1


def test_image_inputs_are_flattened_for_dense_blocks():
    model = build_model(make({"hidden": [4]}), fake_data(input_shape=(8, 8, 1)))
    assert model.count_params() == 64 * 4 + 4 + 4 * 3 + 3


@pytest.mark.parametrize("model_section, message_start", [
    ({"activation": "relux"}, "model.activation: expected a Keras activation; received 'relux'."),
    ({"initializer": "he_normall"}, "model.initializer: expected a Keras initializer; received 'he_normall'."),
    ({"layers": [{"class_name": "Conv2d", "config": {}}]},
     "model.layers.0.class_name: expected a Keras layer class; received 'Conv2d'."),
    ({"layers": [{"class_name": "Dense", "config": {"unitz": 3}}]},
     "model.layers.0.config: Keras rejected the layer config:"),
])
def test_bad_keras_names(model_section, message_start):
    with pytest.raises(UserError) as info:
        build_model(make(model_section), fake_data())
    assert str(info.value).startswith(message_start)


def test_bad_names_suggest_the_right_one():
    with pytest.raises(UserError) as info:
        build_model(make({"layers": [{"class_name": "Conv2d", "config": {}}]}), fake_data())
    assert "Did you mean 'Conv2D'?" in str(info.value)


@pytest.mark.parametrize("optimizer, kind, check", [
    ({"name": "sgd", "learning_rate": 0.1, "momentum": 0.9, "nesterov": True}, "SGD",
     lambda o: o.momentum == 0.9 and o.nesterov),
    ({"name": "rmsprop", "rho": 0.8}, "RMSprop", lambda o: o.rho == 0.8),
    ({"name": "adam", "beta_1": 0.8, "clipnorm": 1.0}, "Adam", lambda o: o.beta_1 == 0.8 and o.clipnorm == 1.0),
    ({"name": "adamw", "weight_decay": 0.01}, "AdamW", lambda o: o.weight_decay == 0.01),
    ("nadam", "Nadam", lambda o: True),
    ({"name": "adagrad", "clipvalue": 0.5}, "Adagrad", lambda o: o.clipvalue == 0.5),
])
def test_optimizers_by_name_with_arguments(optimizer, kind, check):
    opt = get_optimizer(make(training={"optimizer": optimizer}), steps_per_epoch=10)
    assert type(opt).__name__ == kind and check(opt)


def test_optimizer_typo_and_bad_argument():
    with pytest.raises(UserError) as info:
        get_optimizer(make(training={"optimizer": {"name": "adamm"}}), 10)
    assert str(info.value).startswith("training.optimizer.name: expected a Keras optimizer; received 'adamm'.")
    assert "Did you mean 'adam'?" in str(info.value)
    with pytest.raises(UserError) as info:
        get_optimizer(make(training={"optimizer": {"name": "sgd", "momentom": 0.9}}), 10)
    assert "training.optimizer.momentom: expected an argument of SGD" in str(info.value)
    assert "Did you mean 'momentum'?" in str(info.value)


@pytest.mark.parametrize("schedule, kind", [
    ({"name": "exponential_decay", "decay_steps": 10, "decay_rate": 0.5}, "ExponentialDecay"),
    ({"name": "inverse_time_decay", "decay_steps": 10, "decay_rate": 0.5}, "InverseTimeDecay"),
    ({"name": "piecewise_constant_decay", "boundaries": [10], "values": [0.1, 0.01]}, "PiecewiseConstantDecay"),
    ({"name": "cosine_decay", "decay_steps": 100}, "CosineDecay"),
    ({"name": "PolynomialDecay", "decay_steps": 100}, "PolynomialDecay"),
])
def test_schedules_by_name(schedule, kind):
    config = make(training={"optimizer": {"name": "sgd", "learning_rate": 0.2}, "schedule": schedule})
    sched = get_schedule(config.training.schedule, 0.2)
    assert type(sched).__name__ == kind
    if hasattr(sched, "initial_learning_rate"):
        assert sched.initial_learning_rate == 0.2  # filled from the optimizer's learning rate
    if kind == "ExponentialDecay":
        assert float(sched(10)) == pytest.approx(0.1)


def test_schedule_typo():
    config = make(training={"schedule": {"name": "exponential_decai", "decay_steps": 1}})
    with pytest.raises(UserError) as info:
        get_schedule(config.training.schedule, 0.1)
    assert "Did you mean 'exponential_decay'?" in str(info.value)


def test_compile_defaults_by_task_and_explicit_loss():
    model = build_model(make(), fake_data(task="regression"))
    compile_model(model, make(), fake_data(task="regression"))
    assert model.loss == "mean_squared_error"
    model = build_model(make(), fake_data())
    compile_model(model, make(training={"loss": "categorical_hinge", "metrics": ["accuracy"]}), fake_data())
    assert model.loss == "categorical_hinge"


def test_custom_module_import_error():
    with pytest.raises(UserError) as info:
        build_model(make({"custom_modules": ["no_such_module_xyz"]}), fake_data())
    assert str(info.value) == ("model.custom_modules.0: could not import the module: No module named "
                               "'no_such_module_xyz'; received 'no_such_module_xyz'.")


def test_loss_metrics_and_monitor_are_resolved_before_building():
    with pytest.raises(UserError) as info:
        build_model(make(training={"loss": "categorical_crossentropyy"}), fake_data())
    assert str(info.value).startswith("training.loss: expected a Keras loss; received 'categorical_crossentropyy'.")
    assert "Did you mean 'categorical_crossentropy'?" in str(info.value)
    with pytest.raises(UserError) as info:
        build_model(make(training={"early_stopping": {"monitor": "val_accuracy"}}), fake_data(task="regression"))
    assert str(info.value) == ("training.early_stopping.monitor: not a quantity this model reports; received "
                               "'val_accuracy'. Valid choices: loss, mae, val_loss, val_mae.")
    config = make(training={"metrics": [{"class_name": "AUC", "config": {"name": "area"}}],
                            "early_stopping": {"monitor": "val_area"}})
    assert build_model(config, fake_data(task="binary", num_classes=2)).name == "m"


def test_model_names_are_scope_names():
    assert build_model(make(name="_exp"), fake_data()).name == "m_exp"
    assert build_model(make(name="café"), fake_data()).name == "cafe"


def test_kernels_tensorflow_cannot_index_are_refused_before_allocation():
    with pytest.raises(UserError) as info:
        build_model(make({"hidden": [2**31 - 1]}), fake_data())
    assert str(info.value) == ("model.hidden: a Dense kernel of 10 x 2147483647 = 21,474,836,470 weights is too "
                               "large; expected at most 2,147,483,647 weights per layer; received 2147483647.")


def test_names_read_from_keras_source_resolve_in_keras():
    """keras_names reads Keras' files without importing Keras; Keras itself must agree with every name."""
    import inspect

    import keras

    from toolkit import keras_names

    optimizer_classes = {n.lower() for n in dir(keras.optimizers) if isinstance(getattr(keras.optimizers, n), type)}
    assert set(keras_names.choices("optimizer")) <= optimizer_classes
    for name in keras_names.choices("loss"):
        assert keras.losses.get(name) is not None, name
    for name in keras_names.choices("metric"):
        if name in ("accuracy", "acc"):  # compile() resolves these two by the labels
            continue
        try:
            assert keras.metrics.get(name) is not None, name
        except TypeError:  # a known class that needs arguments (IoU): keras_names says so too
            with pytest.raises(UserError, match=f"{name} needs arguments"):
                keras_names.check_config_names(make(training={"metrics": [name]}))
    for name in keras_names.choices("activation"):
        assert keras.activations.get(name) is not None, name
    # Arguments: every parameter of a class's own __init__ is accepted by the reading of its source.
    namespaces = {"optimizer": keras.optimizers, "schedule": keras.optimizers.schedules,
                  "initializer": keras.initializers, "layer": keras.layers, "loss": keras.losses,
                  "metric": keras.metrics}
    checked = 0
    for kind, namespace in namespaces.items():
        for name in keras_names.exported(kind):
            cls = getattr(namespace, name, None)
            where = keras_names.class_of(kind, name)
            found = keras_names.constructor_arguments(*where) if where and isinstance(cls, type) else None
            if found is None:
                continue
            own = set(inspect.signature(cls.__init__).parameters) - {"self", "args", "kwargs"}
            assert own <= found[0], (kind, name, own - found[0])
            checked += 1
    assert checked > 250


@pytest.mark.parametrize("layer, where, says", [
    ({"class_name": "Conv2D", "config": {"filters": 2, "kernel_size": 3}}, "model.layers.0",
     "is incompatible with the layer: expected min_ndim=4, found ndim=2"),
    ({"class_name": "LSTM", "config": {"units": 4}}, "model.layers.0", "expected ndim=3, found ndim=2"),
    ({"class_name": "Reshape", "config": {"target_shape": [3, 3]}}, "model.layers.0",
     "The total size of the tensor must be unchanged"),
    ({"class_name": "BatchNormalization", "config": {"axis": 5}}, "model.layers.0", "tuple index out of range"),
    ({"class_name": "Dense", "config": {"units": -3}}, "model.layers.0.config",
     "Received an invalid value for `units`, expected a positive integer"),
])
def test_layers_keras_refuses_are_user_errors_naming_the_layer_and_keras_reason(layer, where, says):
    config = make({"layers": [layer]})
    with pytest.raises(UserError) as caught:
        build_model(config, fake_data(input_shape=(4,)))
    assert caught.value.where == where
    assert says in str(caught.value)
    assert "Exception encountered" not in str(caught.value)


def test_lamb_builds_from_its_exported_class():
    optimizer = get_optimizer(make(training={"optimizer": {"name": "lamb", "learning_rate": 0.01}}), 10)
    assert type(optimizer).__name__ == "Lamb"
