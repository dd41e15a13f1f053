"""training.precision, training.jit_compile and training.deterministic: refusals, resolution against the devices,
the dtype policy of the built model (and of the process after it), and what environment.json records."""

import json

import numpy as np
import pytest

from helpers import ktk, ktk_here
from toolkit.config import parse_config
from toolkit.data import Dataset
from toolkit.errors import UserError
from toolkit.hardware.devices import resolve_jit, training_devices


def make(**training):
    return parse_config({"name": "hw", "seed": 1, "data": {"source": "sklearn.iris"}, "model": {"hidden": [8]},
                         "training": {"epochs": 2, **training}})


def fake_data(task="multiclass", num_classes=3, n=16):
    x = np.random.default_rng(0).normal(size=(n, 4)).astype(np.float32)
    y = (np.arange(n) % num_classes).astype(np.int32 if task == "multiclass" else np.float32)
    return Dataset(x, y, x, y, x, y, task=task, num_classes=num_classes)


# ------------------------------------------------------------------------------------ config, fast


@pytest.mark.parametrize("training, message", [
    ({"precision": "float16"}, "training.precision: expected one of the valid choices; received 'float16'. Valid "
                               "choices: float32, mixed_float16, mixed_bfloat16. Did you mean 'float32'?"),
    ({"jit_compile": "yes"}, "training.jit_compile: expected auto, true or false; received 'yes'. Valid choices: "
                             "auto, true, false."),
    ({"deterministic": "maybe"}, "training.deterministic: expected true or false; received 'maybe'."),
    ({"jit_compile": True}, "training.jit_compile: Keras does not compile with XLA while op determinism is on; set "
                            "training.deterministic: false to use XLA; expected auto or false with deterministic: "
                            "true; received true."),
])
def test_bad_switches_are_refused_by_the_config(training, message):
    with pytest.raises(UserError) as caught:
        make(**training)
    assert str(caught.value) == message


def test_validate_refuses_xla_with_determinism_without_tensorflow(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("name: c\ndata: {source: sklearn.iris}\ntraining: {jit_compile: true}\n")
    done = ktk_here("validate", config)
    assert done.returncode == 2
    assert "training.jit_compile: Keras does not compile with XLA while op determinism is on" in done.stderr
    assert "Traceback" not in done.stderr


def test_switches_are_left_out_of_config_yaml_at_their_defaults():
    assert not {"precision", "jit_compile", "deterministic"} & set(make().to_dict()["training"])
    shown = make(precision="mixed_bfloat16", jit_compile=True, deterministic=False).to_dict()["training"]
    assert (shown["precision"], shown["jit_compile"], shown["deterministic"]) == ("mixed_bfloat16", True, False)


# --------------------------------------------------------------------------- resolution, fast (no GPU needed)


@pytest.mark.parametrize("training, gpu, expected", [
    ({}, False, False),  # auto on the CPU: off (measured slower)
    ({"deterministic": False}, False, False),
    ({"deterministic": False}, True, True),  # auto with a GPU: on
    ({}, True, False),  # auto with op determinism: off, as Keras would
    ({"deterministic": False, "distribute": "mirrored"}, True, False),  # auto with tf.distribute: off, as Keras's
    ({"jit_compile": True, "deterministic": False}, False, True),  # asked: as asked
    ({"jit_compile": False, "deterministic": False}, True, False),
])
def test_jit_compile_resolves_against_the_devices(training, gpu, expected):
    assert resolve_jit(make(**training), gpu_visible=gpu) is expected


def test_the_training_device_is_the_first_gpu_else_the_cpu():
    assert training_devices(gpu_visible=False) == ["CPU:0"]
    assert training_devices(gpu_visible=True) == ["GPU:0"]


# ------------------------------------------------------------------ the built model, fast (builds, no training)


@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_a_mixed_model_computes_in_its_policy_with_a_float32_output_and_the_policy_does_not_leak(precision):
    import keras

    from toolkit.models import build_model
    from toolkit.training import compile_model

    config = make(precision=precision)
    model = build_model(config, fake_data())
    assert keras.config.dtype_policy().name == "float32"  # put back after the build
    assert model.get_layer("dense_1").dtype_policy.name == precision
    assert model.get_layer("output").dtype_policy.name == "float32"
    assert model.get_layer("dense_1").kernel.dtype == "float32"  # variables stay float32
    compile_model(model, config, fake_data())
    assert model(np.zeros((2, 4), np.float32)).dtype == "float32"
    optimizer = model.optimizer
    if precision == "mixed_float16":  # Keras' compile wraps it, once (ktk never does)
        assert type(optimizer).__name__ == "LossScaleOptimizer"
        assert type(optimizer.inner_optimizer).__name__ == "Adam"
    else:
        assert type(optimizer).__name__ == "Adam"


def test_the_policy_is_put_back_when_the_build_fails():
    import keras

    from toolkit.models import build_model

    config = parse_config({"name": "hw", "data": {"source": "sklearn.iris"}, "training": {"precision": "mixed_bfloat16"},
                           "model": {"layers": [{"class_name": "Conv2D", "config": {"filters": 2, "kernel_size": 3}}]}})
    with pytest.raises(UserError):
        build_model(config, fake_data())
    assert keras.config.dtype_policy().name == "float32"


def test_float32_builds_in_the_policy_already_set():
    """Gradient checking sets float64 and builds through the same builder: float32 does not replace it."""
    import keras

    from toolkit.hardware.devices import precision_policy

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float64")
    try:
        with precision_policy("float32"):
            assert keras.config.dtype_policy().name == "float64"
        with precision_policy("mixed_bfloat16"):
            assert keras.config.dtype_policy().name == "mixed_bfloat16"
        assert keras.config.dtype_policy().name == "float64"
    finally:
        keras.config.set_dtype_policy(previous)


def test_compile_uses_the_resolved_jit_compile():
    from toolkit.models import build_model
    from toolkit.training import compile_model, set_seed

    set_seed(0, deterministic=False)  # Keras compiles without XLA while op determinism is on
    try:
        for training, expected in (({"deterministic": False}, False),  # auto on this CPU machine
                                   ({"jit_compile": True, "deterministic": False}, True)):
            config = make(**training)
            model = compile_model(build_model(config, fake_data()), config, fake_data())
            assert model.jit_compile is expected
    finally:
        set_seed(0, deterministic=True)


def test_deterministic_false_turns_op_determinism_off_and_true_on_again():
    from toolkit.hardware.devices import op_determinism
    from toolkit.training import set_seed

    set_seed(0, deterministic=False)
    assert op_determinism() is False
    set_seed(0, deterministic=True)
    assert op_determinism() is True


# ------------------------------------------------------------------------------------------ one run, slow


@pytest.fixture(scope="module")
def bfloat16_run(tmp_path_factory):
    """A 2-epoch iris run in mixed_bfloat16 without op determinism (about a second of training)."""
    from toolkit.runs import run

    out = tmp_path_factory.mktemp("hw") / "run"
    run(make(precision="mixed_bfloat16", deterministic=False), out_dir=out, verbose=0)
    return out


@pytest.mark.slow
def test_a_mixed_run_records_its_devices_and_switches_and_leaves_float32_behind(bfloat16_run):
    import keras

    from toolkit.hardware.devices import op_determinism

    environment = json.loads((bfloat16_run / "environment.json").read_text())
    assert environment["devices"] == ["CPU:0"] and environment["gpus"] == []
    assert environment["training_switches"] == {
        "precision": {"asked": "mixed_bfloat16", "in_effect": "mixed_bfloat16"},
        "jit_compile": {"asked": "auto", "in_effect": False},
        "deterministic": {"asked": False, "in_effect": False},
    }
    assert environment["deterministic_ops"] is False
    assert keras.config.dtype_policy().name == "float32"
    assert op_determinism() is False  # what the run set; the next training sets its own
    columns = ktk_here("compare", bfloat16_run, "--all-params", "--format", "json")
    row = json.loads(columns.stdout)[0]
    assert row["env.devices"] == "CPU:0" and row["env.training_switches.precision.in_effect"] == "mixed_bfloat16"


@pytest.mark.slow
def test_a_mixed_runs_model_loads_and_predicts_float32(bfloat16_run, tmp_path):
    from toolkit.deploy.predict import load_run

    loaded = load_run(bfloat16_run)
    outputs = loaded.outputs(np.random.default_rng(0).normal(size=(5, 4)))
    assert outputs.dtype == np.float32 and outputs.shape == (5, 3)
    np.testing.assert_allclose(outputs.sum(axis=1), 1.0, rtol=1e-5)
    rows = tmp_path / "rows.csv"
    rows.write_text("sepal length (cm),sepal width (cm),petal length (cm),petal width (cm)\n"
                    "5.1,3.5,1.4,0.2\n6.7,3.0,5.2,2.3\n")
    done = ktk("predict", bfloat16_run, rows, "--output", tmp_path / "out.csv")
    assert done.returncode == 0, done.stderr
    lines = (tmp_path / "out.csv").read_text().splitlines()
    assert lines[0] == "row,prediction,p_setosa,p_versicolor,p_virginica" and len(lines) == 3


def test_the_recorded_devices_are_the_models_strategys():
    import keras
    import tensorflow as tf

    from toolkit.hardware.devices import model_devices

    def tiny():
        inputs = keras.Input((3,))
        return keras.Model(inputs, keras.layers.Dense(1)(inputs))

    assert model_devices(tiny()) == ["CPU:0"]  # no strategy: TensorFlow's placement, here the CPU
    with tf.distribute.MirroredStrategy(["CPU:0"]).scope():
        mirrored = tiny()
    assert model_devices(mirrored) == ["CPU:0"]


@pytest.mark.slow
def test_mixed_float16_trains_on_a_cpu_with_keras_loss_scaling(tmp_path):
    """Not refused without a GPU (a GPU config runs in CI or on a laptop; README "Training on GPUs")."""
    from toolkit.runs import run

    result = run(make(precision="mixed_float16"), out_dir=tmp_path / "run", verbose=0)
    assert np.isfinite(result.metrics["train"]["loss"])
    environment = json.loads((tmp_path / "run" / "environment.json").read_text())
    assert environment["training_switches"]["precision"] == {"asked": "mixed_float16", "in_effect": "mixed_float16"}
    assert environment["training_switches"]["deterministic"] == {"asked": True, "in_effect": True}
