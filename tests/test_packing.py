"""Packed trials (search.pack): the schema, the grouping, and that a packed trial is the same trial run alone."""

import csv

import pytest

from toolkit.config import parse_config
from toolkit.errors import UserError
from toolkit.search import parse_search
from toolkit.sweeps import packing

# keras-tuner 1.4.8 calls threading.currentThread(), deprecated since Python 3.10.
pytestmark = pytest.mark.filterwarnings("ignore:.*currentThread|getName.*:DeprecationWarning")

BASE = {"name": "pack", "seed": 3, "data": {"source": "sklearn.digits"},
        "model": {"hidden": [16, 8], "activation": "relu"},
        "training": {"optimizer": {"name": "adam", "learning_rate": 1.0e-3}, "batch_size": 128, "epochs": 6,
                     "early_stopping": {"patience": 1, "monitor": "val_loss"}}}
SPACE = {"model.dropout": {"float": [0.0, 0.5]}}


def searched(pack, **extra):
    return parse_config(dict(BASE, search={"pack": pack, "space": SPACE, **extra}))


# ------------------------------------------------------------------------------------------ schema


@pytest.mark.parametrize("value, expected", [("auto", "auto"), ("off", "off"), (False, "off"), (4, 4), (1, 1)])
def test_pack_setting_is_read(value, expected):
    assert parse_search(searched(value)).pack == expected


def test_pack_is_left_out_of_the_resolved_section_when_off_and_resumable():
    assert "pack" not in searched("off").to_dict()["search"]
    assert searched(8).to_dict()["search"]["pack"] == 8
    assert "pack" not in parse_search(searched(8)).identity()  # changing it resumes the same sweep


@pytest.mark.parametrize("value, message", [
    ("aut", "search.pack: expected auto, off, or a number of trials to train together; received 'aut'. "
            "Valid choices: auto, off. Did you mean 'auto'?"),
    (0, "search.pack: expected a positive integer (trials trained together), auto or off; received 0."),
    (True, "search.pack: expected a positive integer (trials trained together), auto or off; received true."),
    (2.5, "search.pack: expected a positive integer (trials trained together), auto or off; received 2.5."),
])
def test_bad_pack_settings_are_refused(value, message):
    with pytest.raises(UserError) as error:
        searched(value)
    assert str(error.value) == message


# ---------------------------------------------------------------------------------------- grouping


def test_pack_size_by_setting_and_tuner():
    assert packing.pack_size("off", "random") == 1
    assert packing.pack_size(5, "bayesian") == 5
    assert packing.pack_size("auto", "random") == packing.AUTO_PACK_SIZE
    assert packing.pack_size("auto", "bayesian") == 1  # each proposal uses every earlier result


def key(**changes):
    config = parse_config(BASE).with_values(changes).to_dict()
    return packing.pack_key(config)


def test_what_may_differ_in_a_pack():
    same = key()
    assert same is not None
    for changes in ({"training.optimizer.learning_rate": 0.1}, {"training.optimizer.name": "sgd"},
                    {"model.dropout": 0.3}, {"model.regularizer": {"l2": 0.01}}, {"model.initializer": "he_normal"},
                    {"seed": 9}, {"training.schedule": {"name": "cosine_decay", "decay_steps": 10}},
                    {"model.hidden": [32, 8]}, {"training.epochs": 3}, {"training.early_stopping": None}):
        assert key(**changes) == same, changes


def test_what_a_pack_shares_and_what_runs_alone():
    same = key()
    for changes in ({"training.batch_size": 64}, {"training.shuffle": False}, {"data.normalize": "minmax"},
                    {"training.class_weight": "balanced"}, {"training.steps_per_execution": 4}):
        assert key(**changes) not in (None, same), changes
    assert key(**{"training.monitor.gradients": True}) is None
    assert packing.pack_key(parse_config(BASE).to_dict(), executions=2) is None
    assert packing.pack_key(parse_config(BASE).to_dict(), task={"tensorboard_dir": "x"}) is None


def test_group_keeps_order_splits_by_key_and_size():
    assert packing.group(["a", "b", "a", None, "a", "a"], 3) == [[0, 2, 4], [1], [3], [5]]
    assert packing.group(["a", "a"], 1) == [[0], [1]]


def test_split_by_memory():
    assert packing.split_by_memory([4, 4, 4, 9, 1], 8) == [[0, 1], [2], [3], [4]]
    assert packing.member_memory_bytes(params=10, batch=2, activations=5) == 4 * (40 + 30)


# ------------------------------------------------------------------------------ equivalence (slow)

# Four trials differing in each field a pack allows; early stopping ends one early (its own min_delta), and
# the last diverges (a huge learning rate) and must fail alone, with its reason.
VARIANTS = [
    {},
    {"training.optimizer.name": "sgd", "training.optimizer.learning_rate": 0.05, "training.optimizer.momentum": 0.9,
     "model.dropout": 0.3, "training.early_stopping": {"patience": 1, "min_delta": 0.3, "monitor": "val_loss"}},
    {"model.regularizer": {"l1": 1.0e-4, "l2": 1.0e-3}, "model.initializer": "he_normal", "seed": 5,
     "training.schedule": {"name": "exponential_decay", "decay_steps": 10, "decay_rate": 0.5}},
    {"training.optimizer.name": "sgd", "training.optimizer.learning_rate": 1.0e12},
]


def trial_tasks(history_dir, base=BASE, variants=VARIANTS, objective=("val_accuracy", "max")):
    from toolkit.sweeps.sweep_data import DataCache

    cache, tasks, datasets = DataCache(), [], {}
    for number, values in enumerate(variants):
        config = parse_config(base).with_values(values)
        data_key, data = cache.get_for_trials(config)
        datasets[data_key] = data
        tasks.append({"trial_id": str(number), "config": config.to_dict(), "source": None, "executions": 1,
                      "objective": list(objective), "history_dir": str(history_dir), "verbose": 0,
                      "data_key": data_key, "free_memory": False})
    return tasks, datasets


def comparable(outcome):
    return {k: v for k, v in outcome.items() if k not in ("fit_s", "rss_mb", "pack", "stack", "traceback")}


@pytest.mark.slow
def test_a_packed_trial_is_the_same_trial_run_alone(tmp_path, monkeypatch):
    """The general path: each member with its own Keras train_step (bit-identical to the trial alone)."""
    from toolkit.sweeps import stacked
    from toolkit.sweeps.packed import run_pack_tasks
    from toolkit.sweeps.runner import run_trial_task

    monkeypatch.setattr(stacked, "signature", lambda model: None)  # no member may stack

    (tmp_path / "alone").mkdir()
    (tmp_path / "packed").mkdir()
    tasks, datasets = trial_tasks(tmp_path / "alone")
    alone = [run_trial_task(task, datasets[task["data_key"]]) for task in tasks]
    tasks, datasets = trial_tasks(tmp_path / "packed")
    packed = run_pack_tasks(tasks, datasets)

    assert [o["status"] for o in alone] == ["completed", "completed", "completed", "failed"]
    assert len({o["epochs"] for o in alone[:3]}) > 1  # early stopping ended them at different epochs
    assert all(o.get("pack") == 4 for o in packed[:3])  # they did train as one pack (of all four)
    assert [comparable(o) for o in packed] == [comparable(o) for o in alone]  # identical: op determinism is on
    assert packed[3]["message"].startswith("diverged: the training loss became NaN or infinite in epoch 1")
    for number in range(4):
        assert (tmp_path / "packed" / f"{number}.csv").read_text() == \
            (tmp_path / "alone" / f"{number}.csv").read_text()


@pytest.mark.slow
def test_tune_with_pack_writes_what_pack_off_writes(tmp_path):
    from toolkit.sweeps import tune

    space = {"model.dropout": {"float": [0.0, 0.5]},
             "training.optimizer.learning_rate": {"float": [1.0e-3, 1.0e-1], "log": True}}
    tables, histories = {}, {}
    for pack in ("off", 3):
        config = parse_config(dict(BASE, training=dict(BASE["training"], epochs=3), search={
            "tuner": "random", "max_trials": 4, "objective": "val_accuracy", "pack": pack,
            "trials_per_process": "inline", "retrain_top": 1, "space": space}))
        out = tmp_path / str(pack)
        result = tune(config, out_dir=out)
        assert result.completed == 4
        with open(out / "trials.csv", newline="") as handle:
            tables[pack] = [{k: v for k, v in row.items() if k not in ("started", "duration_s")}
                            for row in csv.DictReader(handle)]
        histories[pack] = {p.name: p.read_text() for p in (out / "histories").iterdir()}
    # equal within float32 round-off: these members stack (one batched matmul sums in another order)
    assert close([numbers(row) for row in tables[3]], [numbers(row) for row in tables["off"]])
    assert histories[3].keys() == histories["off"].keys()
    for name, text in histories["off"].items():
        assert close(read_csv_text(histories[3][name]), read_csv_text(text)), name


def numbers(row):
    """A CSV row with its numbers as floats."""
    out = {}
    for key, value in row.items():
        try:
            out[key] = float(value)
        except (TypeError, ValueError):
            out[key] = value
    return out


def read_csv_text(text):
    rows = list(csv.reader(text.splitlines()))
    return rows[0], [[float(v) for v in row] for row in rows[1:]]


@pytest.mark.slow
@pytest.mark.parametrize("tuner, extra", [
    ("grid", {}),
    ("hyperband", {"factor": 2}),
    ("quasi_random", {"max_trials": 5}),
    ("bayesian", {"max_trials": 4, "num_initial_points": 2}),
])
def test_every_tuner_packs_and_ends_every_trial_once(tmp_path, tuner, extra):
    import json

    from helpers import IRIS_SWEEP
    from toolkit.sweeps import tune

    space = {"training.optimizer.learning_rate": {"choice": [0.01, 0.02, 0.05, 0.1]},
             "model.dropout": {"choice": [0.0, 0.2]}}
    config = parse_config(dict(IRIS_SWEEP, training=dict(IRIS_SWEEP["training"], epochs=3), search={
        "tuner": tuner, "objective": "val_accuracy", "pack": 4, "trials_per_process": "inline", "space": space,
        **extra}))
    result = tune(config, out_dir=tmp_path / "sweep")
    assert result.completed == result.planned == len(result.trials)
    oracle = json.loads((tmp_path / "sweep" / "tuner" / "oracle.json").read_text())
    assert oracle["ongoing_trials"] == {} and len(oracle["end_order"]) == result.planned
    records = [json.loads(p.read_text()) for p in (tmp_path / "sweep" / "records").glob("*.json")]
    assert max(r.get("pack", 1) for r in records) > 1
    if tuner == "hyperband":  # a pack never mixes rounds: its members share tuner/epochs
        assert all(r["epochs"] == r["values"]["training.epochs"] for r in records)


# Stacked packs (toolkit/sweeps/stacked.py): members of one layer structure trained as one stack of kernels.
# Six digits trials: other widths (padded), optimizer classes and arguments (SGD with momentum and Nesterov,
# Adam, RMSprop centered with momentum), dropout rates (and none), L1/L2, initializers, a schedule, early
# stopping ending one early, and one diverging.
STACK_VARIANTS = VARIANTS[:2] + [
    {"model.regularizer": {"l1": 1.0e-4, "l2": 1.0e-3}, "model.initializer": "he_normal",
     "training.optimizer.name": "rmsprop", "model.hidden": [32, 12],
     "training.schedule": {"name": "exponential_decay", "decay_steps": 10, "decay_rate": 0.5}},
    VARIANTS[3],
    {"training.optimizer.name": "sgd", "training.optimizer.learning_rate": 0.1, "training.optimizer.nesterov": True,
     "training.optimizer.momentum": 0.5, "model.dropout": 0.1, "model.hidden": [24, 8]},
    {"training.optimizer.name": "rmsprop", "training.optimizer.momentum": 0.5, "training.optimizer.centered": True,
     "model.initializer": "glorot_normal", "model.regularizer": {"l2": 1.0e-2}},
]
BINARY = {"name": "pack-binary", "seed": 4, "data": {"source": "sklearn.breast_cancer"},
          "model": {"hidden": [12, 6], "activation": "tanh"},
          "training": {"optimizer": {"name": "adam", "learning_rate": 1.0e-2}, "batch_size": 64, "epochs": 4,
                       "class_weight": "balanced"}}
REGRESSION = {"name": "pack-regression", "seed": 6, "data": {"source": "sklearn.diabetes"},
              "model": {"hidden": [16, 16], "activation": "elu"},
              "training": {"optimizer": {"name": "sgd", "learning_rate": 1.0e-5}, "batch_size": 32, "epochs": 4}}
OTHER_VARIANTS = [{}, {"training.optimizer.name": "rmsprop", "model.dropout": 0.2, "model.hidden": [20, 4]},
                  {"training.optimizer.name": "sgd", "training.optimizer.momentum": 0.9,
                   "model.regularizer": {"l1": 1.0e-3}, "model.hidden": [8, 16]}]


def close(packed, alone, rel=1.0e-5, absolute=1.0e-6):
    """Equal, except numbers, which may differ by float32 round-off (a batched matmul sums in another order)."""
    import math

    if isinstance(alone, dict):
        return isinstance(packed, dict) and packed.keys() == alone.keys() and \
            all(close(packed[k], alone[k], rel, absolute) for k in alone)
    if isinstance(alone, (list, tuple)):
        return len(packed) == len(alone) and all(close(p, a, rel, absolute) for p, a in zip(packed, alone))
    if isinstance(alone, float) and isinstance(packed, float):
        return (math.isnan(alone) and math.isnan(packed)) or math.isclose(packed, alone, rel_tol=rel,
                                                                          abs_tol=absolute)
    return packed == alone


def read_csv(path):
    with open(path, newline="") as handle:
        return read_csv_text(handle.read())


@pytest.mark.slow
@pytest.mark.parametrize("base, variants, objective", [
    (BASE, STACK_VARIANTS, ("val_accuracy", "max")),
    (BINARY, OTHER_VARIANTS, ("val_accuracy", "max")),
    (REGRESSION, OTHER_VARIANTS, ("val_mae", "min")),
], ids=["multiclass", "binary-class-weights", "regression"])
def test_a_stacked_trial_is_the_same_trial_run_alone(tmp_path, monkeypatch, base, variants, objective):
    from toolkit.sweeps import packed as packed_module
    from toolkit.sweeps.runner import run_trial_task

    stacks = []
    fit_members = packed_module._fit_members

    def spy(members, verbose=0, plan=None):
        stacks.append(len(members) if plan is not None else 0)
        fit_members(members, verbose, plan)

    monkeypatch.setattr(packed_module, "_fit_members", spy)
    (tmp_path / "alone").mkdir()
    (tmp_path / "packed").mkdir()
    tasks, datasets = trial_tasks(tmp_path / "alone", base, variants, objective)
    alone = [run_trial_task(task, datasets[task["data_key"]]) for task in tasks]
    tasks, datasets = trial_tasks(tmp_path / "packed", base, variants, objective)
    packed = packed_module.run_pack_tasks(tasks, datasets)

    assert stacks == [len(variants)]  # one stack held them all
    assert close([comparable(o) for o in packed], [comparable(o) for o in alone])
    for number in range(len(variants)):
        header, rows = read_csv(tmp_path / "packed" / f"{number}.csv")
        assert (header, len(rows)) == read_csv(tmp_path / "alone" / f"{number}.csv")[0:1] + (len(rows),)
        assert close(rows, read_csv(tmp_path / "alone" / f"{number}.csv")[1])
    if variants is not STACK_VARIANTS:
        assert all(o["status"] == "completed" for o in packed)
    else:
        assert [o["status"] for o in packed] == ["completed", "completed", "completed", "failed", "completed",
                                                 "completed"]
        assert len({o["epochs"] for o in packed if o["status"] == "completed"}) > 1  # one stopped early
        assert packed[3]["message"].startswith("diverged: the training loss became NaN or infinite in epoch 1")


def built(config_changes, base=BASE):
    from toolkit import training
    from toolkit.data import load_data

    config = parse_config(base).with_values(config_changes)
    data = load_data(config)
    model = training.prepare_model(config, data)
    training.build_training_state(model, data)
    return model


@pytest.mark.slow
def test_what_may_differ_in_a_stack_and_what_may_not():
    from toolkit.sweeps import stacked

    same = stacked.signature(built({}))
    assert same is not None
    for changes in ({"model.hidden": [40, 3]}, {"model.dropout": 0.4}, {"model.regularizer": {"l1": 0.1}},
                    {"model.initializer": "he_uniform"}, {"training.optimizer.name": "sgd"},
                    {"training.optimizer.name": "rmsprop", "training.optimizer.centered": True},
                    {"training.optimizer.learning_rate": 0.5, "training.optimizer.beta_1": 0.5},
                    {"training.schedule": {"name": "cosine_decay", "decay_steps": 10}}, {"training.epochs": 2}):
        assert stacked.signature(built(changes)) == same, changes
    for changes in ({"model.hidden": [16]}, {"model.activation": "tanh"},  # depth, activation
                    {"training.metrics": ["mse"]}, {"training.steps_per_execution": 3}):
        assert stacked.signature(built(changes)) not in (None, same), changes
    layers = {"model.hidden": None}
    for changes in ({"training.optimizer.name": "adagrad"}, {"training.optimizer.clipnorm": 1.0},
                    {"training.optimizer.name": "adam", "training.optimizer.amsgrad": True},
                    {"model.batchnorm": True}, {"model.activation": "softmax"},
                    {**layers, "model.layers": [{"units": 8}, {"class_name": "LayerNormalization"}]},
                    {**layers, "model.layers": [{"class_name": "Dense", "config": {"units": 8, "trainable": False}}]},
                    {**layers, "model.layers": [{"class_name": "Dense", "config": {"units": 8, "dtype": "bfloat16"}}]},
                    {**layers, "model.layers": [{"class_name": "Dropout", "config": {"rate": 0.2}}, {"units": 8}]}):
        assert stacked.signature(built(changes)) is None, changes
    assert stacked.compiled_supported(built({}, BINARY))
    assert not stacked.compiled_supported(built({"training.metrics": ["accuracy", "auc"]}, BINARY))  # not a mean
    assert not stacked.compiled_supported(built({"training.metrics": ["poisson"]}, BINARY))  # unaligned labels
    assert not stacked.compiled_supported(built({"training.loss": "dice"}, BINARY))  # one value for the batch
    assert stacked.compiled_supported(built({"training.loss": "huber", "training.metrics": ["mae"]}, REGRESSION))


def test_stack_grouping():
    from toolkit.sweeps import stacked

    assert stacked.group(["a", None, "b", "a", "b", "c"]) == ([[0, 3], [2, 4]], [1, 5])
    assert stacked.group([None, "a"]) == ([], [0, 1])


@pytest.mark.slow
def test_members_a_stack_cannot_compute_train_with_their_own_steps(tmp_path, monkeypatch):
    from toolkit.sweeps import packed as packed_module

    stacks = []
    fit_members = packed_module._fit_members

    def spy(members, verbose=0, plan=None):
        stacks.append((len(members), plan is not None))
        fit_members(members, verbose, plan)

    monkeypatch.setattr(packed_module, "_fit_members", spy)
    base = dict(BINARY, training=dict(BINARY["training"], epochs=1, metrics=["accuracy", "auc"]))
    tasks, datasets = trial_tasks(tmp_path, base, [{}, {"model.dropout": 0.2}])
    outcomes = packed_module.run_pack_tasks(tasks, datasets)
    assert stacks == [(2, False)]  # AUC is not a mean of a per-example function: one pack, no stack
    assert [o["status"] for o in outcomes] == ["completed", "completed"]
    assert all("auc" in o["validation"] for o in outcomes)


# --------------------------------------------------------------------------- worker recycling


class FakeWorker:
    """A trial worker process as ProcessRunner sees it (no process): it answers with the given outcomes."""

    def __init__(self, outcomes):
        self.outcomes, self.data_keys, self.trials, self.stopped = outcomes, set(), 0, False

        class Connection:
            def send(self, message):
                pass

        self.connection = Connection()

    def wait(self):
        return self.outcomes

    def stop(self, now=False):
        self.stopped = True


@pytest.mark.parametrize("stacks, counted", [([1] * 16, 1), ([1] * 8 + [2] * 8, 2), ([1] * 4 + [None] * 12, 13),
                                              ([None] * 16, 16)])
def test_a_stack_counts_as_one_trial_towards_a_workers_limit(stacks, counted):
    """A stack leaves one traced graph, not one per member (measured ~2 MB per stack of 16, against ~2.5 MB
    per trial): the worker goes on; members with their own train steps count one each."""
    from toolkit.sweeps.runner import ProcessRunner

    runner = ProcessRunner(limit=10)
    outcomes = [{"status": "completed", **({"stack": number} if number else {})} for number in stacks]
    worker = runner.current = FakeWorker(outcomes)
    runner.spare = FakeWorker([])  # (no process is started)
    assert runner.run_pack([{"data_key": "d"}] * 16, {}) == outcomes
    assert worker.trials == counted
    kept = counted < 10
    assert (runner.current is worker) == kept and worker.stopped != kept


@pytest.mark.slow
def test_a_verbose_stack_shows_each_member_and_trains_the_same(tmp_path, capsys):
    from helpers import IRIS_SWEEP
    from toolkit.sweeps.packed import run_pack_tasks

    base = dict(IRIS_SWEEP, training=dict(IRIS_SWEEP["training"], epochs=2))
    outcomes = {}
    for verbose in (0, 2):
        tasks, datasets = trial_tasks(tmp_path / str(verbose), base, [{}, {"model.hidden": [4], "model.dropout": 0.1}])
        for task in tasks:
            task["verbose"] = verbose
        outcomes[verbose] = run_pack_tasks(tasks, datasets)
    assert [o.get("stack") for o in outcomes[2]] == [1, 1]
    assert [comparable(o) for o in outcomes[2]] == [comparable(o) for o in outcomes[0]]
    shown = capsys.readouterr().out
    assert "0:loss" in shown and "val_1:accuracy" in shown and "stacked" not in shown


@pytest.mark.slow
def test_two_layer_structures_make_two_stacks_of_one_pack(tmp_path):
    from helpers import IRIS_SWEEP
    from toolkit.sweeps.packed import run_pack_tasks

    base = dict(IRIS_SWEEP, training=dict(IRIS_SWEEP["training"], epochs=1))
    variants = [{}, {"model.hidden": [8, 4]}, {"model.hidden": [6]}, {"model.hidden": [5, 3]}, {"model.hidden": [4] * 3}]
    tasks, datasets = trial_tasks(tmp_path, base, variants)
    outcomes = run_pack_tasks(tasks, datasets)
    assert [o["status"] for o in outcomes] == ["completed"] * 5
    assert [o.get("stack") for o in outcomes] == [1, 2, 1, 2, None]  # the three-layer member packs on its own
