"""The search: section: validation into typed objects, keras-tuner hyperparameters, the oracles.

No training here: the oracles are driven by hand with made-up scores.
"""

import math
from pathlib import Path

import pytest

from toolkit.cli import main
from toolkit.config import parse_config
from toolkit.errors import UserError
from toolkit.search import DEPTH_PATH, apply_values, check_with_keras, grid_size, hyperband_trial_count, parse_search
from toolkit.sweeps.space import declare, make_oracle, quasi_random_oracle_class

# keras-tuner 1.4.8 calls threading.currentThread(), deprecated since Python 3.10.
pytestmark = pytest.mark.filterwarnings("ignore:.*currentThread|getName.*:DeprecationWarning")

BASE = {
    "name": "s",
    "seed": 5,
    "data": {"source": "sklearn.iris"},
    "model": {"hidden": [64, 32]},
    "training": {"optimizer": {"name": "adam", "learning_rate": 1.0e-3}, "epochs": 9},
}

# The issue's example, verbatim.
ISSUE_SPACE = {
    "model.hidden.0": {"int": [32, 256], "step": 32},
    "model.dropout": {"float": [0.0, 0.5]},
    "model.regularizer.l2": {"float": [1.0e-6, 1.0e-2], "log": True},
    "training.optimizer.name": {"choice": ["sgd", "rmsprop", "adam"]},
    "training.optimizer.momentum": {"float": [0.0, 0.99], "when": {"training.optimizer.name": "sgd"}},
    "training.optimizer.learning_rate": {"float": [1.0e-4, 1.0e-1], "log": True},
    "training.batch_size": {"choice": [32, 64, 128]},
}


def config_with(space, base=BASE, **search):
    return parse_config(dict(base, search={"space": space, **search}), source="sweep.yaml")


def spec_of(space, base=BASE, **search):
    return parse_search(config_with(space, base, **search))


def error_of(space, base=BASE, **search):
    with pytest.raises(UserError) as caught:
        spec_of(space, base, **search)
    return str(caught.value)


def hyperparameters(spec):
    import keras_tuner

    hp = keras_tuner.HyperParameters()
    declare(spec, hp)
    return hp


# ------------------------------------------------------------------------------- the typed spec


def test_issue_example_is_parsed_with_defaults_filled_in():
    spec = spec_of(ISSUE_SPACE, tuner="random", objective="val_accuracy", max_trials=20, executions_per_trial=1)
    assert spec.tuner == "random" and spec.max_trials == 20 and spec.seed == 5
    assert spec.objective.to_dict() == {"name": "val_accuracy", "direction": "max"}
    assert spec.paths == list(ISSUE_SPACE)
    assert spec.to_dict()["space"]["training.optimizer.momentum"] == {
        "float": [0.0, 0.99], "when": {"training.optimizer.name": "sgd"}}
    assert spec.to_dict()["trials_per_process"] == 10
    assert spec.planned_trials() == 20


def test_objective_forms_and_directions():
    assert spec_of(ISSUE_SPACE).objective.to_dict() == {"name": "val_loss", "direction": "min"}
    objective = spec_of(ISSUE_SPACE, objective={"name": "val_loss", "direction": "min"}).objective
    assert objective.to_dict() == {"name": "val_loss", "direction": "min"}
    assert spec_of(ISSUE_SPACE, objective="val_mae").objective.direction == "min"
    assert objective.best_index([0.9, 0.5, float("nan"), 0.7]) == 1
    assert spec_of(ISSUE_SPACE, objective="val_accuracy").objective.best_index([0.5, 0.9, 0.9]) == 1


def test_declared_space_maps_to_keras_tuner_with_conditions():
    spec = spec_of(ISSUE_SPACE)
    hp = hyperparameters(spec)
    names = [p.name for p in hp.space]
    assert names == list(ISSUE_SPACE)
    momentum = next(p for p in hp.space if p.name == "training.optimizer.momentum")
    assert [(c.name, c.values) for c in momentum.conditions] == [("training.optimizer.name", ["sgd"])]
    l2 = next(p for p in hp.space if p.name == "model.regularizer.l2")
    assert l2.sampling == "log"
    # The default values: momentum is active because 'sgd' is the first choice.
    assert hp.values["training.optimizer.name"] == "sgd" and "training.optimizer.momentum" in hp.values
    hp.values["training.optimizer.name"] = "adam"
    assert not hp.is_active(momentum)


def test_trial_values_are_applied_to_the_base_config():
    spec = spec_of(ISSUE_SPACE)
    values = spec.config_values({
        "model.hidden.0": 96, "model.dropout": 0.25, "model.regularizer.l2": 1e-4,
        "training.optimizer.name": "sgd", "training.optimizer.momentum": 0.9,
        "training.optimizer.learning_rate": 0.01, "training.batch_size": 64,
    })
    trial = spec.apply(config_with(ISSUE_SPACE), values)
    assert trial.model.hidden == [96, 32] and trial.model.dropout == 0.25
    assert trial.model.regularizer.l2 == 1e-4
    assert trial.training.optimizer.arguments == {"learning_rate": 0.01, "momentum": 0.9}
    assert trial.training.optimizer.name == "sgd" and trial.training.batch_size == 64
    # An inactive parameter is absent: the base config's value stays.
    values = spec.config_values({"training.optimizer.name": "adam", "training.batch_size": 32})
    assert values == {"training.optimizer.name": "adam", "training.batch_size": 32}


def test_choices_of_lists_and_mixed_values_travel_as_text():
    spec = spec_of({
        "model.hidden": {"choice": [[64], [128, 64], [256, 128, 64]]},
        "training.batch_size": {"choice": [32, "full"]},
        "training.schedule": {"choice": ["none", {"name": "exponential_decay", "decay_steps": 10,
                                                   "decay_rate": 0.5}]},
    })
    hp = hyperparameters(spec)
    hidden = next(p for p in hp.space if p.name == "model.hidden")
    assert hidden.values == ["[64]", "[128, 64]", "[256, 128, 64]"]
    assert next(p for p in hp.space if p.name == "training.batch_size").values == ["32", "full"]
    values = spec.config_values({"model.hidden": "[128, 64]", "training.batch_size": "32",
                                 "training.schedule": '{"name": "exponential_decay", "decay_steps": 10, '
                                                      '"decay_rate": 0.5}'})
    assert values == {"model.hidden": [128, 64], "training.batch_size": 32,
                      "training.schedule": {"name": "exponential_decay", "decay_steps": 10, "decay_rate": 0.5}}
    trial = apply_values(parse_config(BASE), values)
    assert trial.model.hidden == [128, 64] and trial.training.schedule.name == "exponential_decay"
    assert apply_values(parse_config(BASE), {"training.schedule": "none"}).training.schedule is None


def test_depth_helper_sets_the_number_of_hidden_layers():
    spec = spec_of({
        DEPTH_PATH: {"int": [1, 3]},
        "model.hidden.0": {"int": [16, 64], "step": 16},
        "model.hidden.2": {"int": [8, 32], "step": 8, "when": {"model.depth": 3}},
    })
    base = parse_config(BASE)
    assert spec.apply(base, {"model.depth": 1, "model.hidden.0": 48}).model.hidden == [48]
    assert spec.apply(base, {"model.depth": 3, "model.hidden.0": 16, "model.hidden.2": 8}).model.hidden == [16, 32, 8]
    hp = hyperparameters(spec)
    layer2 = next(p for p in hp.space if p.name == "model.hidden.2")
    assert [(c.name, c.values) for c in layer2.conditions] == [("model.depth", [3])]


def test_parents_are_declared_before_the_parameters_that_depend_on_them():
    spec = spec_of({
        "training.optimizer.momentum": {"float": [0.0, 0.9], "when": {"training.optimizer.name": "sgd"}},
        "training.optimizer.name": {"choice": ["sgd", "adam"]},
    })
    assert spec.paths == ["training.optimizer.name", "training.optimizer.momentum"]


def test_resumable_settings_are_not_part_of_the_identity():
    one = spec_of(ISSUE_SPACE, max_trials=5)
    two = spec_of(ISSUE_SPACE, max_trials=50, retrain_top=3)
    assert one.identity() == two.identity()
    assert spec_of(ISSUE_SPACE, tuner="quasi_random").identity() != one.identity()


# --------------------------------------------------------------------------------- bad spaces


def test_unknown_path_suggests_the_key():
    assert error_of({"model.dropuot": {"float": [0.0, 0.5]}}) == (
        "sweep.yaml: search.space.model.dropuot: unknown config key; received 'dropuot'. Valid choices: "
        "activation, batchnorm, custom_modules, depth, dropout, hidden, initializer, layers, regularizer. "
        "Did you mean 'dropout'?")
    assert error_of({"trainig.epochs": {"int": [1, 3]}}).startswith(
        "sweep.yaml: search.space.trainig.epochs: unknown config key; received 'trainig'. Valid choices: ")
    assert "Did you mean 'training'?" in error_of({"trainig.epochs": {"int": [1, 3]}})


def test_empty_range():
    assert error_of({"model.dropout": {"float": [0.5, 0.1]}}) == (
        "sweep.yaml: search.space.model.dropout: empty range; expected {float: [low, high]} with low < high; "
        "received [0.5, 0.1].")
    assert "empty range" in error_of({"training.epochs": {"int": [3, 3]}})


def test_log_range_touching_zero():
    assert error_of({"model.regularizer.l2": {"float": [0.0, 1.0e-2], "log": True}}) == (
        "sweep.yaml: search.space.model.regularizer.l2: log: true needs a range above 0; expected low > 0; "
        "received [0.0, 0.01].")


def test_unsupported_choice_values():
    assert error_of({"model.hidden": {"choice": [None, [64]]}}) == (
        "sweep.yaml: search.space.model.hidden: unsupported choice value; expected numbers, strings, "
        "booleans, lists or mappings (not null); received null.")
    assert error_of({"model.dropout": {"choice": [0.1, float("nan")]}}).endswith("received nan.")
    assert error_of({"model.dropout": {"choice": [0.1, 0.1]}}) == (
        "sweep.yaml: search.space.model.dropout: duplicate choice value; received 0.1.")
    assert error_of({"model.dropout": {"choice": []}}) == (
        "sweep.yaml: search.space.model.dropout.choice: expected a non-empty list of values; received [].")


def test_when_on_a_parameter_that_is_not_searched():
    assert error_of({
        "model.dropout": {"float": [0.0, 0.5]},
        "training.optimizer.momentum": {"float": [0.0, 0.9], "when": {"training.optimizer.name": "sgd"}},
    }) == (
        "sweep.yaml: search.space.training.optimizer.momentum.when: when: depends on a parameter that is not "
        "searched; expected a path that is also in search.space; received 'training.optimizer.name'. "
        "Valid choices: model.dropout.")
    assert error_of({
        "training.optimizer.name": {"choice": ["sgd", "adam"]},
        "training.optimizer.momentum": {"float": [0.0, 0.9], "when": {"training.optimizer.name": "sdg"}},
    }).endswith("training.optimizer.name never takes this value; received 'sdg'. Valid choices: sgd, adam. "
                "Did you mean 'sgd'?")


def test_values_that_make_the_config_invalid():
    assert error_of({"model.dropout": {"float": [0.0, 1.5]}}) == (
        "sweep.yaml: search.space.model.dropout: the value 1.5 makes the config invalid: model.dropout: "
        "expected a rate in [0, 1); received 1.5.")
    assert error_of({"model.hidden.2": {"int": [8, 16]}}) == (
        "sweep.yaml: search.space.model.hidden.2: model.hidden has 2 items; index 2 does not exist (search "
        "model.depth to change the number of hidden layers); expected an index from 0 to 1; received 2.")
    assert error_of({DEPTH_PATH: {"int": [1, 3]}, "model.hidden.2": {"int": [8, 16]}}) == (
        "sweep.yaml: search.space.model.hidden.2: layer 2 does not exist when model.depth is 1, 2; "
        "expected when: {model.depth: [3]}.")


def test_bad_search_options():
    assert error_of(ISSUE_SPACE, tuner="randon") == (
        "sweep.yaml: search.tuner: expected one of the tuners; received 'randon'. Valid choices: random, grid, "
        "bayesian, hyperband, quasi_random. Did you mean 'random'?")
    assert error_of(ISSUE_SPACE, max_trails=3).startswith(
        "sweep.yaml: search.max_trails: unknown key; received 'max_trails'.")
    assert error_of(ISSUE_SPACE, objective="accuracy") == (
        "sweep.yaml: search.objective: expected a validation metric name starting with 'val_' (the test split "
        "never chooses); received 'accuracy'.")
    assert error_of(ISSUE_SPACE, factor=2) == (
        "sweep.yaml: search.factor: factor is only used by tuner: hyperband; received 2.")
    assert error_of({"model.dropout": {"float": [0.0, 0.5]}}, tuner="grid") == (
        "sweep.yaml: search.space.model.dropout: grid search needs a step for a float range; "
        "expected {float: [0.0, 0.5], step: ...} or a choice.")
    assert error_of({"training.epochs": {"int": [1, 5]}}, tuner="hyperband").startswith(
        "sweep.yaml: search.space.training.epochs: hyperband sets training.epochs itself")
    with pytest.raises(UserError, match="this config has no search: section"):
        parse_search(parse_config(BASE))


def test_bad_space_exits_with_status_2(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("data: {source: sklearn.iris}\nsearch:\n  space:\n    model.dropout: {float: [0.5, 0.1]}\n")
    assert main(["tune", str(path), "--out", str(tmp_path / "sweep")]) == 2
    assert capsys.readouterr().err == (
        f"ktk: error: {path}: search.space.model.dropout: empty range; expected {{float: [low, high]}} "
        f"with low < high; received [0.5, 0.1].\n")
    assert not (tmp_path / "sweep").exists()  # refused before anything was written
    # ktk validate checks the search section too, and describes a good one
    assert main(["validate", str(path)]) == 2
    assert "search.space.model.dropout: empty range" in capsys.readouterr().err
    path.write_text("data: {source: sklearn.iris}\nsearch:\n  space:\n    model.dropout: {float: [0.1, 0.5]}\n")
    assert main(["validate", str(path)]) == 0
    assert "# search: random, 10 trials, min val_loss over model.dropout" in capsys.readouterr().out


def keras_check_error(space, base=BASE, **search):
    from toolkit.data import load_data

    config = config_with(space, base, **search)
    with pytest.raises(UserError) as caught:
        check_with_keras(parse_search(config), config.with_values({"search": None}), load_data(config))
    return str(caught.value)


def test_keras_checks_names_and_arguments_before_training():
    assert keras_check_error({
        "training.optimizer.name": {"choice": ["sgd", "adam"]},
        "training.optimizer.momentum": {"float": [0.0, 0.9]},
    }) == ("sweep.yaml: search.space.training.optimizer.momentum: momentum is not an argument of the adam optimizer; "
           "expected when: {training.optimizer.name: [sgd]}.")
    # (parse_search, as `ktk validate` runs it, refuses this from Keras' files, before Keras builds anything)
    assert keras_check_error({"model.activation": {"choice": ["relu", "rleu"]}}).startswith(
        "sweep.yaml: search.space.model.activation: the value 'rleu' makes the config invalid: model.activation: "
        "expected a Keras activation; received 'rleu'. Valid choices: ")
    assert keras_check_error({"training.optimizer.momentun": {"float": [0.0, 0.9]}}, base=dict(
        BASE, training={"optimizer": {"name": "sgd"}})).endswith("Did you mean 'momentum'?")
    assert keras_check_error({"model.dropout": {"float": [0.0, 0.5]}}, objective="val_auc") == (
        "sweep.yaml: search.objective: not a metric of this model; received 'val_auc'. Valid choices: val_accuracy, "
        "val_loss. Did you mean 'val_accuracy'?")


# ------------------------------------------------------------------------------------- oracles


def drive(oracle, space_spec, scores, limit=100):
    """Runs an oracle by hand: each trial gets the next made-up score. Returns the trials' values."""
    import keras_tuner

    from toolkit.sweeps import keras_tuner_compat

    keras_tuner_compat.unsaved(oracle, Path("/tmp/unused-ktk-oracle-test"))
    hp = keras_tuner.HyperParameters()
    declare(space_spec, hp)
    oracle.update_space(hp)
    seen = []
    for _ in range(limit):
        trial = oracle.create_trial("tuner0")
        if trial.status == "STOPPED":
            break
        seen.append(dict(trial.hyperparameters.values))
        oracle.update_trial(trial.trial_id, {oracle.objective.name: scores(trial.hyperparameters.values)})
        trial.status = "COMPLETED"
        oracle.end_trial(trial)
    return seen


def test_quasi_random_oracle_spreads_points_and_resumes_its_sequence():
    spec = spec_of({
        "model.dropout": {"float": [0.0, 0.5]},
        "training.optimizer.learning_rate": {"float": [1e-4, 1e-1], "log": True},
        "training.optimizer.name": {"choice": ["sgd", "adam"]},
        "training.optimizer.momentum": {"float": [0.0, 0.9], "when": {"training.optimizer.name": "sgd"}},
    }, tuner="quasi_random", max_trials=16)
    values = drive(make_oracle(spec), spec, lambda v: 0.5)
    assert len(values) == 16
    dropouts = sorted(v["model.dropout"] for v in values)
    # Low discrepancy: each of 8 equal bins of [0, 0.5) gets exactly 2 of 16 points.
    assert [sum(1 for d in dropouts if i / 16 <= d < (i + 1) / 16) for i in range(8)] == [2] * 8
    assert {v["training.optimizer.name"] for v in values} == {"sgd", "adam"}
    assert all(("training.optimizer.momentum" in v) == (v["training.optimizer.name"] == "sgd") for v in values)
    # Same seed, same points; a restored state continues the sequence.
    again = make_oracle(spec)
    assert drive(again, spec, lambda v: 0.5)[:16] == values
    first = make_oracle(spec_of(spec.to_dict()["space"], tuner="quasi_random", max_trials=8))
    first_values = drive(first, spec, lambda v: 0.5)
    state = first.get_state()
    resumed = make_oracle(spec_of(spec.to_dict()["space"], tuner="quasi_random", max_trials=16))
    resumed.trials = first.trials
    resumed.set_state(state)
    rest = drive(resumed, spec, lambda v: 0.5)
    assert first_values + rest == values
    cls = quasi_random_oracle_class()
    assert cls.__name__ == "QuasiRandomOracle"
    from toolkit.sweeps.space import QuasiRandomOracle

    assert QuasiRandomOracle is cls


def test_sobol_sequence():
    spec = spec_of({"model.dropout": {"float": [0.0, 0.5]}}, tuner="quasi_random", max_trials=8, sequence="sobol")
    dropouts = sorted(v["model.dropout"] for v in drive(make_oracle(spec), spec, lambda v: 0.5))
    assert [sum(1 for d in dropouts if i / 16 <= d < (i + 1) / 16) for i in range(8)] == [1] * 8


def test_planned_trials_of_grid_and_hyperband_match_what_the_oracles_run():
    grid = spec_of({"model.dropout": {"float": [0.0, 0.4], "step": 0.2},
                    "training.batch_size": {"choice": [16, 32]}}, tuner="grid")
    assert grid_size(grid.space) == 6 and grid.planned_trials() == 6
    assert len(drive(make_oracle(grid), grid, lambda v: v["model.dropout"])) == 6
    # a conditional parameter multiplies only the combinations where it is active: sgd 3 x 2, adam 2
    conditional = spec_of({"training.optimizer.name": {"choice": ["sgd", "adam"]},
                           "training.optimizer.momentum": {"choice": [0.0, 0.5, 0.9],
                                                           "when": {"training.optimizer.name": "sgd"}},
                           "training.optimizer.learning_rate": {"choice": [0.01, 0.1]}}, tuner="grid")
    assert conditional.planned_trials() == 8
    assert len(drive(make_oracle(conditional), conditional, lambda v: 1.0)) == 8
    assert spec_of(grid.to_dict()["space"], tuner="grid", max_trials=4).planned_trials() == 4
    band = spec_of({"model.dropout": {"float": [0.0, 0.5]}}, tuner="hyperband", factor=3)
    assert band.base_epochs == 9
    values = drive(make_oracle(band), band, lambda v: v["model.dropout"])
    assert len(values) == band.planned_trials() == hyperband_trial_count(9, 3)
    assert max(v["tuner/epochs"] for v in values) == 9
    assert band.config_values(values[-1])["training.epochs"] == values[-1]["tuner/epochs"]
    capped = spec_of({"model.dropout": {"float": [0.0, 0.5]}}, tuner="hyperband", max_trials=4)
    assert len(drive(make_oracle(capped), capped, lambda v: 0.1)) == capped.planned_trials() == 4


def test_seed_zero_still_gives_a_reproducible_search():
    base = dict(BASE, seed=0)
    spec = spec_of({"model.dropout": {"float": [0.0, 0.5]}}, base=base, max_trials=4)
    assert make_oracle(spec).seed == 1
    one = drive(make_oracle(spec), spec, lambda v: 0.1)
    two = drive(make_oracle(spec), spec, lambda v: 0.1)
    assert one == two and not math.isnan(one[0]["model.dropout"])


def test_conditional_hyperparameters_serialize_silently(capsys):
    # keras-tuner 1.4.8's Parent.to_proto prints its value; distributed sweeps send every trial as a proto
    import keras_tuner

    spec = parse_search(config_with({
        "training.optimizer.name": {"choice": ["sgd", "adam"]},
        "training.optimizer.momentum": {"float": [0.0, 0.9], "when": {"training.optimizer.name": "sgd"}},
    }))
    hp = keras_tuner.HyperParameters()
    declare(spec, hp)
    capsys.readouterr()
    proto = hp.to_proto()
    assert "sgd" in str(proto) and capsys.readouterr().out == ""


# ------------------------------------------------------------------ counting without listing


def brute_force_grid(space):
    """The grid keras-tuner visits, by enumeration: distinct combinations of the active values."""
    import itertools

    values = [p.possible_values() if p.kind != "float" else
              [p.low + k * p.step for k in range(p.grid_count())] for p in space]
    seen = set()
    for combination in itertools.product(*values):
        chosen = {}
        for param, value in zip(space, combination):
            if all(parent in chosen and chosen[parent] in allowed for parent, allowed in param.when):
                chosen[param.path] = value
        seen.add(tuple(sorted(chosen.items())))
    return len(seen)


@pytest.mark.parametrize("space", [
    {"training.optimizer.name": {"choice": ["sgd", "adam", "rmsprop"]},
     "training.optimizer.momentum": {"choice": [0.0, 0.5, 0.9], "when": {"training.optimizer.name": ["sgd", "rmsprop"]}},
     "training.batch_size": {"int": [16, 64], "step": 16}},
    {DEPTH_PATH: {"int": [1, 4]},
     "model.hidden.1": {"int": [8, 32], "step": 8, "when": {DEPTH_PATH: [2, 3, 4]}},
     "model.hidden.3": {"choice": [4, 8], "when": {DEPTH_PATH: 4}},
     "model.dropout": {"float": [0.0, 0.4], "step": 0.2}},
])
def test_grid_size_counts_what_enumeration_finds(space):
    spec = spec_of(space, tuner="grid")
    assert grid_size(spec.space) == brute_force_grid(spec.space) == spec.planned_trials()


def test_huge_ranges_are_counted_not_listed():
    spec = spec_of({"data.options.n": {"int": [1, 10**12]},
                    "model.dropout": {"choice": [0.1, 0.2], "when": {"data.options.n": [5, 7]}}}, tuner="random")
    hidden = spec.param("data.options.n")
    assert hidden.count() == 10**12 and hidden.possible_values() is None
    assert hidden.takes(10**11) and not hidden.takes(0) and not hidden.takes(2.5) and not hidden.takes(True)
    # 10**12 - 2 values leave dropout inactive; 5 and 7 each make 2 combinations
    assert grid_size(spec.space) == 10**12 - 2 + 2 * 2
    grid = spec_of({"model.hidden.0": {"int": [1, 5000]}, "training.batch_size": {"int": [1, 5000]}}, tuner="grid",
                   max_trials=7)
    assert grid.planned_trials() == 7 and grid_size(grid.space) == 25_000_000
    assert error_of({"model.dropout": {"float": [0.0, 0.5], "step": 1e-12}}, tuner="grid") == (
        "sweep.yaml: search.space.model.dropout: a grid over 500,000,000,001 values of this parameter is too large "
        "to run; expected at most 10,000 values: a larger step or a narrower range, or tuner: random.")
    assert error_of({"model.hidden.0": {"int": [1, 5000]}, "training.batch_size": {"int": [1, 5000]}},
                    tuner="grid") == (
        "sweep.yaml: search.space: a grid of 25,000,000 combinations is too large to run; expected at most 1,000,000 "
        "combinations: a larger step, fewer choices, search.max_trials to stop early, or tuner: random.")


def test_objective_picks_the_best_by_the_one_rule():
    objective = spec_of(ISSUE_SPACE, objective="val_accuracy").objective
    assert objective.best_index([float("nan"), 0.5, 0.9, 0.9]) == 2
    assert objective.better(0.9, 0.5) and not objective.better(None, 0.5) and objective.better(0.1, None)
    assert not objective.better(float("nan"), 0.5)
    assert spec_of(ISSUE_SPACE).objective.best_index([float("nan"), float("nan")]) == 0


def test_the_section_is_part_of_the_config_schema():
    config = config_with(ISSUE_SPACE, objective={"name": "val_accuracy"})
    assert config.search.tuner == "random" and config.search.max_trials == 10  # the default when no plan decides
    assert config_with({"model.hidden.0": {"int": [8, 16]}}, tuner="grid").search.max_trials is None
    assert [p.path for p in config.search.params] == list(ISSUE_SPACE)
    section = config.to_dict()["search"]
    assert section["objective"] == {"name": "val_accuracy", "direction": "max"} and "seed" not in section
    assert section["space"]["model.hidden.0"] == {"int": [32, 256], "step": 32}
    again = parse_config(config.to_dict(), source="sweep.yaml")
    assert parse_search(again).identity() == parse_search(config).identity()
    assert error_of({"model.dropout": {"flaot": [0.0, 0.5]}}) == (
        "sweep.yaml: search.space.model.dropout.flaot: unknown key; received 'flaot'. Valid choices: int, float, "
        "choice, step, log, when. Did you mean 'float'?")
    assert error_of({"model.dropout": {"float": [0.0, 0.5], "log": "yes"}}) == (
        "sweep.yaml: search.space.model.dropout.log: expected true or false; received 'yes'.")
    assert error_of({"model.hidden.0": {"int": [8.0, 16]}}) == (
        "sweep.yaml: search.space.model.hidden.0.int: expected [low, high], two of an integer; received [8.0, 16].")
    assert error_of(ISSUE_SPACE, max_trials=True) == (
        "sweep.yaml: search.max_trials: expected a positive integer; received true.")
    assert error_of(ISSUE_SPACE, objective={"name": "val_loss", "direction": "up"}) == (
        "sweep.yaml: search.objective.direction: expected min or max; received 'up'. Valid choices: min, max.")
