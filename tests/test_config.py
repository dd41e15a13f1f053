"""The config language: parsing, defaults, extends, --set, and the exact user-facing error messages."""

import textwrap

import pytest

from toolkit.config import get_path, load_config, parse_config, set_path
from toolkit.errors import UserError, did_you_mean

from helpers import REPO
ISSUE_EXAMPLE = """\
name: digits-mlp                 # run name (default: the file's stem)
seed: 42                         # one seed for splitting, initialization, shuffling and dropout
data:
  source: sklearn.digits         # see "Data sources"
  split: {train: 0.7, validation: 0.15, test: 0.15, stratify: true}
  normalize: standard            # standard | minmax | none — statistics from the training split only
model:
  hidden: [128, 64]              # units of each hidden Dense layer
  activation: relu
  initializer: he_normal         # any Keras initializer: a name, or {class_name: ..., config: {...}}
  regularizer: {l2: 1.0e-4}      # {l1: ...}, {l2: ...} or both; on every hidden kernel
  dropout: 0.2                   # rate after each hidden layer; active in training only
  batchnorm: true                # BatchNormalization in each hidden block
training:
  optimizer: {name: adam, learning_rate: 1.0e-3}
  schedule: {name: exponential_decay, decay_steps: 100, decay_rate: 0.96}
  batch_size: 64                 # an int, or "full" for batch gradient descent
  epochs: 30
  early_stopping: {monitor: val_loss, patience: 5}   # restores the best weights
"""


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def error_of(raw, source="c.yaml"):
    with pytest.raises(UserError) as info:
        parse_config(raw, source=source)
    return str(info.value)


def test_issue_example_is_accepted_verbatim(tmp_path):
    config = load_config(write(tmp_path, "digits.yaml", ISSUE_EXAMPLE))
    assert config.name == "digits-mlp" and config.seed == 42
    assert config.data.split.train == 0.7 and config.data.split.stratify is True
    assert config.model.hidden == [128, 64] and config.model.regularizer.l2 == 1e-4
    assert config.model.dropout == 0.2 and config.model.batchnorm is True
    assert config.training.optimizer.name == "adam" and config.training.optimizer.learning_rate == 1e-3
    assert config.training.schedule.arguments == {"decay_steps": 100, "decay_rate": 0.96}
    assert config.training.batch_size == 64 and config.training.epochs == 30
    assert config.training.early_stopping.patience == 5 and config.training.early_stopping.restore_best_weights


def test_bundled_quickstart_is_the_issue_example():
    config = load_config(REPO / "configs" / "quickstart.yaml")
    assert config.to_dict() == parse_config(__import__("yaml").safe_load(ISSUE_EXAMPLE)).to_dict()


def test_name_defaults_to_file_stem_and_defaults_are_filled(tmp_path):
    config = load_config(write(tmp_path, "tiny.yaml", "data: {source: sklearn.iris}\n"))
    resolved = config.to_dict()
    assert resolved["name"] == "tiny"
    assert resolved["data"]["split"] == {"train": 0.7, "validation": 0.15, "test": 0.15,
                                         "stratify": None, "column": None}
    assert resolved["model"]["hidden"] == [64]
    assert resolved["training"]["optimizer"] == {"name": "adam", "learning_rate": 0.001}


def test_resolved_config_round_trips(tmp_path):
    config = load_config(write(tmp_path, "digits.yaml", ISSUE_EXAMPLE))
    again = parse_config(config.to_dict())
    assert again.to_dict() == config.to_dict()


def test_scientific_numbers_without_dot_are_numbers(tmp_path):
    config = load_config(write(tmp_path, "c.yaml", """\
        data: {source: sklearn.iris}
        model: {regularizer: {l2: 1e-4}}
        training: {optimizer: {name: sgd, learning_rate: 5e-2, momentum: 9e-1}}
        """))
    assert config.model.regularizer.l2 == pytest.approx(1e-4)
    assert config.training.optimizer.arguments == {"learning_rate": 0.05, "momentum": 0.9}


def test_extends_merges_and_derived_name(tmp_path):
    write(tmp_path, "base.yaml", ISSUE_EXAMPLE)
    child = write(tmp_path, "child.yaml", """\
        extends: base.yaml
        model: {dropout: 0.0}
        training: {epochs: 3}
        """)
    config = load_config(child)
    assert config.name == "child"
    assert config.model.dropout == 0.0 and config.model.hidden == [128, 64]
    assert config.training.epochs == 3 and config.training.batch_size == 64


def test_extends_cycle_is_an_error(tmp_path):
    write(tmp_path, "a.yaml", "extends: b.yaml\ndata: {source: sklearn.iris}\n")
    write(tmp_path, "b.yaml", "extends: a.yaml\n")
    with pytest.raises(UserError, match="extends: forms a cycle"):
        load_config(tmp_path / "a.yaml")


def test_set_overrides_are_typed(tmp_path):
    path = write(tmp_path, "c.yaml", ISSUE_EXAMPLE)
    config = load_config(path, ["training.optimizer.learning_rate=0.01", "model.hidden=[64,32]",
                                "model.batchnorm=false", "model.hidden.0=16"])
    assert config.training.optimizer.learning_rate == 0.01
    assert config.model.hidden == [16, 32]
    assert config.model.batchnorm is False


def test_set_without_equals_sign(tmp_path):
    with pytest.raises(UserError) as info:
        load_config(write(tmp_path, "c.yaml", ISSUE_EXAMPLE), ["training.epochs"])
    assert str(info.value) == ("--set: expected KEY=VALUE, e.g. training.epochs=10; "
                               "received 'training.epochs'.")


def test_with_values_applies_dot_paths():
    config = parse_config({"data": {"source": "sklearn.iris"}, "name": "x"})
    changed = config.with_values({"model.dropout": 0.3, "training.optimizer.name": "sgd"})
    assert changed.model.dropout == 0.3 and changed.training.optimizer.name == "sgd"
    assert config.model.dropout == 0.0  # the original is untouched


def test_dot_path_helpers():
    data = {"model": {"hidden": [1, 2]}}
    set_path(data, "model.hidden.1", 5)
    set_path(data, "training.epochs", 3)
    assert get_path(data, "model.hidden.1") == 5 and data["training"] == {"epochs": 3}
    with pytest.raises(KeyError):
        get_path(data, "model.nothing")


BASE = {"name": "x", "data": {"source": "sklearn.iris"}}


@pytest.mark.parametrize("change, message", [
    ({"model": {"dropuot": 0.1}},
     "c.yaml: model.dropuot: unknown key; received 'dropuot'. Valid choices: activation, batchnorm, "
     "custom_modules, dropout, hidden, initializer, layers, regularizer. Did you mean 'dropout'?"),
    ({"model": {"dropout": 1.5}}, "c.yaml: model.dropout: expected a rate in [0, 1); received 1.5."),
    ({"model": {"regularizer": {"l2": -1.0}}},
     "c.yaml: model.regularizer.l2: expected greater than or equal to 0; received -1.0."),
    ({"data": {"source": "sklearn.iris", "split": {"train": 0.7, "validation": 0.2, "test": 0.2}}},
     "c.yaml: data.split: expected split fractions train + validation + test to sum to 1; "
     "received 0.7 + 0.2 + 0.2 = 1.1."),
    ({"data": {"source": "sklearn.iris", "normalize": "zscore"}},
     "c.yaml: data.normalize: expected one of the valid choices; received 'zscore'. "
     "Valid choices: standard, minmax, none."),
    ({"training": {"batch_size": "big"}},
     "c.yaml: training.batch_size: expected a positive integer or 'full'; received 'big'."),
    ({"training": {"epochs": "ten"}}, "c.yaml: training.epochs: expected an integer; received 'ten'."),
    ({"trainig": {}},
     "c.yaml: trainig: unknown key; received 'trainig'. Valid choices: callbacks, data, diagnose, model, name, "
     "search, seed, task, tracking, training. Did you mean 'training'?"),
    ({"model": {"hidden": [64, 0]}}, "c.yaml: model.hidden: expected a positive integer at index 1; received 0."),
])
def test_exact_error_messages(change, message):
    raw = {**BASE, **change}
    assert error_of(raw) == message


def test_missing_data_section():
    assert error_of({"name": "x"}) == "c.yaml: data: required key is missing."


def test_several_problems_are_all_listed():
    text = error_of({**BASE, "model": {"dropout": 2.0, "activationn": "relu"}})
    assert text.splitlines()[0].startswith("c.yaml: model.dropout")
    assert "also: c.yaml: model.activationn: unknown key" in text


def test_malformed_yaml_names_the_line(tmp_path):
    path = write(tmp_path, "bad.yaml", "data: {source: sklearn.iris\n  x: 1\n")
    with pytest.raises(UserError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: line 2, column 4: malformed YAML: expected ',' or '}}', but got ':'."


def test_duplicate_keys_are_rejected(tmp_path):
    path = write(tmp_path, "dup.yaml", "data: {source: sklearn.iris}\nseed: 1\nseed: 2\n")
    with pytest.raises(UserError, match="duplicate key 'seed'"):
        load_config(path)


def test_yaml_cannot_execute_code(tmp_path):
    path = write(tmp_path, "evil.yaml", "data: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(UserError, match="malformed YAML"):
        load_config(path)


def test_missing_file():
    with pytest.raises(UserError) as info:
        load_config("/nonexistent/x.yaml")
    assert str(info.value) == "file not found; expected a YAML config file; received '/nonexistent/x.yaml'."


def test_did_you_mean():
    assert did_you_mean("adamm", ["adam", "sgd"]) == "adam"
    assert did_you_mean("zzz", ["adam", "sgd"]) is None


def test_restore_best_weights_keys_are_plain_values_that_survive_a_round_trip():
    base = {"name": "x", "data": {"source": "sklearn.iris"}, "training": {"early_stopping": True}}
    config = parse_config(base)
    assert config.training.restore_best_weights is True and config.training.early_stopping.restore_best_weights is True
    last = parse_config(config.to_dict()).with_values({"training.restore_best_weights": False,
                                                       "training.early_stopping.restore_best_weights": False})
    again = parse_config(last.to_dict())
    assert again.training.restore_best_weights is False and again.training.early_stopping.restore_best_weights is False


@pytest.mark.parametrize("change, message", [
    ({"training": {"epochs": True}}, "c.yaml: training.epochs: expected an integer; received true."),
    ({"training": {"epochs": 3.0}}, "c.yaml: training.epochs: expected an integer; received 3.0."),
    ({"model": {"batchnorm": 1}}, "c.yaml: model.batchnorm: expected true or false; received 1."),
    ({"model": {"dropout": True}}, "c.yaml: model.dropout: expected a rate in [0, 1); received true."),
    ({"training": {"optimizer": {"learning_rate": float("nan")}}},
     "c.yaml: training.optimizer.learning_rate: expected a finite number; received nan."),
    ({"name": "a/b"}, "c.yaml: name: expected a run name: 1 to 100 characters without '/', '\\' or control "
                      "characters, not '.' or '..' (it names the run's folder under runs/); received 'a/b'."),
    ({"seed": 2**32}, "c.yaml: seed: expected an integer from 0 to 4294967295; received 4294967296."),
])
def test_types_are_strict_and_numbers_bounded(change, message):
    assert error_of({**BASE, **change}) == message


def test_a_float_for_a_float_key_may_be_written_as_an_integer():
    config = parse_config({**BASE, "training": {"optimizer": {"learning_rate": 1}}, "model": {"dropout": 0}})
    assert config.training.optimizer.learning_rate == 1.0 and isinstance(config.model.dropout, float)


def test_schema_step_reads_the_schema_shape():
    from toolkit.config import Config, schema_step

    model = schema_step(Config, "model")
    assert model.kind == "field"
    assert schema_step(model.schema, "dropuot").kind == "unknown"
    assert "dropout" in schema_step(model.schema, "dropuot").choices
    assert schema_step(schema_step(model.schema, "layers").schema, "0").kind == "index"
    assert schema_step(schema_step(Config, "training").schema, "optimizer").kind == "field"
    optimizer = schema_step(schema_step(Config, "training").schema, "optimizer").schema
    assert schema_step(optimizer, "momentum").kind == "open"  # an optimizer's own arguments


def test_yaml_aliases_within_bounds_are_fine_in_configs(tmp_path):
    path = write(tmp_path, "alias.yaml", """\
        data: {source: sklearn.iris}
        model: {hidden: &widths [32, 16]}
        search: {space: {model.hidden: {choice: [*widths, [8]]}}}
        """)
    assert load_config(path).search.params[0].values == ([32, 16], [8])
