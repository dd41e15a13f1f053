"""Bad configs, through the real command line in this process: one clear message, exit 2, nothing written.

Each group is a class of defect (YAML that costs too much, numbers Keras cannot use, names and arguments
Keras would reject late, run names that are paths, code named in a config), tried with several cases.
Nothing here imports TensorFlow, except the runs marked slow.
"""

import errno
import os
import sys
import textwrap

import pytest
import yaml

from toolkit.cli import main
from toolkit.errors import UserError
from toolkit.models import import_custom_modules, scope_name
from toolkit.results import read_yaml

BASE = "data: {source: sklearn.iris}\nmodel: {hidden: [4]}\ntraining: {epochs: 1}\n"


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(BASE)
    return path


def refused(capsys, *args):
    """Runs ktk in this process; asserts exit 2 with one ktk: error message and no traceback; returns it."""
    status = main([str(a) for a in args])
    err = capsys.readouterr().err
    assert status == 2, err
    assert err.startswith("ktk: error: ") and err.count("ktk: error: ") == 1, err
    assert "Traceback" not in err
    return err


def alias_bomb(levels=9, width=9):
    lines = ["a0: &a0 [" + ", ".join(["lol"] * width) + "]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join(lines)


# ----------------------------------------------------------------------- YAML that costs too much


@pytest.mark.parametrize("text, message", [
    (BASE + "search: {space: {model.hidden: {choice: [*a8]}}}\n", "the YAML holds more than 100000 values once its "
                                                                     "aliases are expanded"),
    ("data: &d {source: sklearn.iris, options: {x: [*d]}}\n", "an alias refers to a collection that contains it"),
    (BASE + "diagnose: " + "[" * 60 + "]" * 60 + "\n", "the YAML is nested more than 50 levels deep"),
    (BASE + "diagnose:\n" + "".join(" " * i + f"k{i}:\n" for i in range(1, 60)) + " " * 60 + "x: 1\n",
     "the YAML is nested more than 50 levels deep"),
    (BASE + "? [1, 2]\n: 3\n", "a mapping key is a list; expected plain keys (text or numbers)"),
    (BASE + "model: {{a: 1}: 2}\n", "a mapping key is a mapping"),
])
def test_yaml_beyond_the_bounds_is_refused(tmp_path, capsys, text, message):
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb() + "\n" + text if "*a8" in text else text)
    assert path.stat().st_size < 4000  # small files: the cost would be in the expansion, not the reading
    assert message in refused(capsys, "validate", path)
    assert message in refused(capsys, "run", path, "--out", tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_billion_laughs_in_set_values_and_a_base_config(tmp_path, capsys, config):
    err = refused(capsys, "validate", config, "--set", "model.hidden=[&a [1, 1], *a]")
    assert err == ("ktk: error: --set model.hidden: line 1, column 2: anchors and aliases (&name, *name) are "
                   "not allowed here; expected plain YAML values.\n")
    base = tmp_path / "base.yaml"
    base.write_text(alias_bomb() + "\nsearch: {space: {model.hidden: {choice: [*a8]}}}\n" + BASE)
    child = tmp_path / "child.yaml"
    child.write_text("extends: base.yaml\n")
    assert "more than 100000 values" in refused(capsys, "validate", child)


def test_files_that_are_not_readable_config_files(tmp_path, capsys, config):
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)  # nobody writes to it: reading must not wait for a writer
    long_name = tmp_path / ("x" * 300 + ".yaml")
    huge = tmp_path / "huge.yaml"
    huge.write_text(BASE + "# " + "x" * (1 << 20) + "\n")
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(BASE.encode() + b"name: caf\xe9\n")
    cases = {
        fifo: "not a regular file (a FIFO, device or socket); expected a YAML config file",
        "/dev/zero": "not a regular file (a FIFO, device or socket)",
        tmp_path: "not a file (a directory)",
        long_name: "cannot read the file (file name too long)",
        huge: "the file is larger than 1 MiB",
        latin: "not UTF-8 text (byte 0xe9 at line 4, column 10); expected a YAML config file in UTF-8",
        tmp_path / "missing.yaml": "file not found",
        "bad\0name.yaml": "cannot read the file (embedded null byte)",
    }
    for path, message in cases.items():
        assert message in refused(capsys, "validate", path), path
    child = tmp_path / "child.yaml"
    child.write_text("extends: pipe.yaml\n")
    assert refused(capsys, "validate", child) == (
        f"ktk: error: {child}: extends: not a regular file (a FIFO, device or socket); expected a YAML config "
        f"file; received '{fifo}'.\n")


def test_an_unreadable_config_file(capsys, config, monkeypatch):
    real_open = os.open

    def no_permission(path, *args, **kwargs):  # as for a file of another user (root could read a chmod 0 file)
        if str(path) == str(config):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", no_permission)
    assert refused(capsys, "validate", config) == (
        f"ktk: error: {config}: cannot read the file (permission denied); expected a YAML config file; "
        f"received '{config}'.\n")


def test_result_files_are_read_through_the_same_safe_loader(tmp_path):
    cases = {
        "bomb.yaml": (alias_bomb(), yaml.YAMLError),
        "recursive.yaml": ("a: &x [*x]\n", yaml.YAMLError),
        "deep.yaml": ("a: " + "[" * 60 + "]" * 60 + "\n", yaml.YAMLError),
        "key.yaml": ("? [1]\n: 2\n", yaml.YAMLError),
        "latin.yaml": (b"name: caf\xe9\n", yaml.YAMLError),
    }
    for name, (content, error) in cases.items():
        path = tmp_path / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        with pytest.raises(error):
            read_yaml(path)
    os.mkfifo(tmp_path / "pipe.yaml")
    with pytest.raises(OSError) as info:
        read_yaml(tmp_path / "pipe.yaml")
    assert info.value.errno == errno.EINVAL
    (tmp_path / "ok.yaml").write_text("name: x\nmodel: {hidden: &h [64, 32]}\nsearch: {x: *h}\n")
    assert read_yaml(tmp_path / "ok.yaml") == {"name": "x", "model": {"hidden": [64, 32]}, "search": {"x": [64, 32]}}


# ------------------------------------------------------------------------- numbers Keras will use


def assert_validate_and_run_refuse(tmp_path, capsys, config, override, message):
    """`--set OVERRIDE` is refused with `message` by validate and by run, and run leaves no folder behind."""
    assert message in refused(capsys, "validate", config, "--set", override)
    assert message in refused(capsys, "run", config, "--set", override, "--out", tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override, message", [
    ("seed=1e30", "seed: expected an integer; received 1e+30."),
    ("seed=100000000000000000000", "seed: expected an integer from 0 to 4294967295; received 100000000000000000000."),
    ("seed=-1", "seed: expected an integer from 0 to 4294967295; received -1."),
    ("training.batch_size=100000000000000000000",
     "training.batch_size: expected a positive integer of at most 2147483647 or 'full'; received "
     "100000000000000000000."),
    ("training.batch_size=true", "training.batch_size: expected a positive integer or 'full'; received true."),
    ("training.steps_per_execution=1e30", "training.steps_per_execution: expected a positive integer or 'auto'; "
                                          "received 1e+30."),
    ("training.epochs=yes", "training.epochs: expected an integer; received true."),
    ("training.epochs=3.0", "training.epochs: expected an integer; received 3.0."),
    ("training.epochs=10000000", "training.epochs: expected an integer from 1 to 1000000; received 10000000."),
    ("training.optimizer.learning_rate=.inf", "learning_rate: expected a finite number; received inf."),
    ("training.optimizer.learning_rate=.nan", "learning_rate: expected a finite number; received nan."),
    ("model.regularizer.l2=.inf", "model.regularizer.l2: expected a finite number; received inf."),
    ("model.regularizer.l2=1e300", "model.regularizer.l2: expected a number Keras can hold (float32: at most 3.4e+38 "
                                   "in size); received 1e+300."),
    ("training.early_stopping={min_delta: 1e300}", "early_stopping.min_delta: expected a number Keras can hold"),
    ("training.early_stopping={patience: -1}", "training.early_stopping.patience: expected an integer from 0 to "),
    ("training.optimizer={name: sgd, momentum: .nan}", "training.optimizer.momentum: expected a finite number "
                                                       "(float32: at most 3.4e+38 in size); received nan."),
    ("training.class_weight={0: .inf}", "training.class_weight.0: expected a finite weight >= 0; received inf."),
    ("model.dropout=.nan", "model.dropout: expected a rate in [0, 1); received nan."),
    ("model.hidden=[100000000000]", "model.hidden: expected a positive integer of at most 2147483647 at index 0"),
    ("model.initializer={class_name: RandomNormal, config: {stddev: .inf}}",
     "model.initializer.config.stddev: expected a finite number"),
])
def test_numbers_keras_cannot_use_are_refused_by_validate_and_run(tmp_path, capsys, config, override, message):
    assert_validate_and_run_refuse(tmp_path, capsys, config, override, message)


# ------------------------------------------------------------- names and arguments Keras would refuse


@pytest.mark.parametrize("overrides, message", [
    (["training.loss=categorical_crossentropyy"],
     "training.loss: expected a Keras loss; received 'categorical_crossentropyy'. Valid choices: bce, "),
    (["training.metrics=[acuracy]"], "training.metrics.0: expected a Keras metric; received 'acuracy'."),
    (["training.early_stopping={monitor: val_acuracy}"],
     "training.early_stopping.monitor: not a quantity this model reports; received 'val_acuracy'. Valid choices: "
     "accuracy, loss, val_accuracy, val_loss. Did you mean 'val_accuracy'?"),  # iris: a classifier, no mae
    (["task=regression", "training.early_stopping={monitor: val_accuracy}"],
     "training.early_stopping.monitor: not a quantity this model reports; received 'val_accuracy'. Valid choices: "
     "loss, mae, val_loss, val_mae."),
    (["training.metrics=[AUC]", "training.early_stopping={monitor: val_auc}"], "Valid choices: AUC, loss, val_AUC, "
                                                                               "val_loss. Did you mean 'val_AUC'?"),
    (["training.optimizer.lr=0.01"], "training.optimizer.lr: expected an argument of Adam; received 'lr'. Valid "
                                     "choices: amsgrad, beta_1, "),
    (["training.optimizer={name: sgd, momentom: 0.9}"], "Did you mean 'momentum'?"),
    (["training.optimizer.name=adamm"], "training.optimizer.name: expected a Keras optimizer; received 'adamm'."),
    (["training.schedule={name: exponential_decay, decay_step: 10, decay_rate: 0.5}"],
     "training.schedule.decay_step: expected an argument of ExponentialDecay; received 'decay_step'. Valid choices: "
     "decay_rate, decay_steps, initial_learning_rate, staircase. Did you mean 'decay_steps'?"),
    (["training.schedule={name: exponential_decay, decay_rate: 0.5}"],
     "training.schedule: missing argument of ExponentialDecay; expected training.schedule.decay_steps."),
    (["model.initializer={class_name: RandomNormal, config: {stdev: 1}}"],
     "model.initializer.config.stdev: expected an argument of RandomNormal; received 'stdev'. Valid choices: mean, "
     "seed, stddev. Did you mean 'stddev'?"),
    (["model.hidden=null", "model.layers=[{class_name: Dense, config: {unitz: 3}}]"],
     "model.layers.0.config.unitz: expected an argument of Dense; received 'unitz'."),
    (["model.hidden=null", "model.layers=[{class_name: Conv2D, config: {filters: 2}}]"],
     "model.layers.0.config: missing argument of Conv2D; expected model.layers.0.config.kernel_size."),
    (["model.hidden=null", "model.layers=[{class_name: Dense2, config: {units: 3}}]"],
     "model.layers.0.class_name: expected a Keras layer; received 'Dense2'."),
    (["training.loss={class_name: BinaryCrossentropy, config: {from_logit: true}}"], "Did you mean 'from_logits'?"),
    (["training.metrics=[{class_name: AUC, config: {num_threshold: 3}}]"], "Did you mean 'num_thresholds'?"),
    (["model.activation=rleu"], "model.activation: expected a Keras activation; received 'rleu'."),
])
def test_keras_names_and_arguments_are_checked_without_keras(capsys, config, overrides, message):
    args = [a for override in overrides for a in ("--set", override)]
    assert message in refused(capsys, "validate", config, *args)


def test_validate_imports_no_tensorflow():
    import subprocess

    from helpers import REPO, subprocess_env

    code = ("import sys; from toolkit.cli import main; "
            "main(['validate', 'configs/quickstart.yaml', '--set', 'training.optimizer.lr=0.1']); "
            "sys.exit(10 if 'tensorflow' in sys.modules or 'keras' in sys.modules else 0)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=subprocess_env(), capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "training.optimizer.lr: expected an argument of Adam" in result.stderr


# ------------------------------------------------------------------------------------- run names


@pytest.mark.parametrize("name", ["../../x", "/tmp/abs", "a/b", "a\\b", "", ".", "..", "tab\there", "x" * 101,
                                  "日" * 70, "zero\u200bwidth"])
def test_run_names_that_are_paths_or_unprintable_are_refused(tmp_path, capsys, config, name):
    config.write_text(BASE + yaml.safe_dump({"name": name}, allow_unicode=True))
    err = refused(capsys, "validate", config)
    assert "name: expected a run name: 1 to 100 characters without '/', '\\' or control characters, not '.' or " \
           "'..' (it names the run's folder under runs/)" in err
    refused(capsys, "run", config, "--out", tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_names_from_file_stems_are_checked_too(tmp_path, capsys):
    path = tmp_path / "bad\x01stem.yaml"
    path.write_text(BASE)
    assert "received 'bad\\x01stem'" in refused(capsys, "validate", path)
    for ok in ("_exp.yaml", "café.yaml", "日本.yaml"):
        (tmp_path / ok).write_text(BASE)
        assert main(["validate", str(tmp_path / ok)]) == 0
    capsys.readouterr()


@pytest.mark.parametrize("name, scope", [("_exp", "m_exp"), ("café", "cafe"), ("日本", "model"), ("a b/c", "a_b_c"),
                                         ("-x", "m-x"), ("digits-mlp", "digits-mlp"), ("...", "...")])
def test_model_names_are_valid_tensorflow_scopes(name, scope):
    import re

    assert scope_name(name) == scope
    assert re.fullmatch(r"[A-Za-z0-9.][A-Za-z0-9_.\\/>-]*", scope_name(name))


# ------------------------------------------------------------------------- code named in a config


@pytest.mark.parametrize("module, message", [
    ("this", "model.custom_modules.0: a standard-library module, not a module of custom Keras classes"),
    ("antigravity", "a standard-library module"),
    ("os.path", "a standard-library module"),
    ("venv.__main__", "model.custom_modules.0: a __main__ module runs a program when it is imported"),
    ("toolkit.__main__", "a __main__ module"),
    ("../evil", "expected a module name (my_layers, my_package.layers) or the path of a .py file relative to the "
                "config"),
])
def test_modules_that_run_programs_are_refused_without_importing_them(capsys, config, module, message):
    already = set(sys.modules)
    value = f"model.custom_modules=[{module!r}]".replace("'", '"')
    assert message in refused(capsys, "validate", config, "--set", value)
    assert "Beautiful is better than ugly" not in capsys.readouterr().out
    assert set(sys.modules) - already <= {m for m in sys.modules if m.startswith(("toolkit", "sklearn"))}


def marker_module(folder, name):
    """A module that leaves a file behind when it is imported."""
    (folder / f"{name}.py").write_text(f"open({str(folder / (name + '.imported'))!r}, 'w').close()\n")
    return folder / f"{name}.imported"


def test_validate_without_deep_never_imports_custom_modules(tmp_path, capsys, config, monkeypatch):
    imported = marker_module(tmp_path, "ktk_marker_a")
    monkeypatch.syspath_prepend(str(tmp_path))
    config.write_text(BASE.replace("model: {hidden: [4]}", "model: {hidden: [4], custom_modules: [ktk_marker_a]}"))
    assert main(["validate", str(config)]) == 0
    capsys.readouterr()
    assert not imported.exists() and "ktk_marker_a" not in sys.modules


def test_modules_in_the_current_folder_are_not_picked_up(tmp_path, monkeypatch):
    imported = marker_module(tmp_path, "ktk_marker_here")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # as `python -m toolkit` puts the current folder first
    monkeypatch.syspath_prepend("")
    with pytest.raises(UserError) as info:
        import_custom_modules(["ktk_marker_here"], base_dir=tmp_path / "configs")
    assert str(info.value) == ("model.custom_modules.0: could not import the module: No module named "
                               "'ktk_marker_here'; received 'ktk_marker_here'.")
    assert not imported.exists()


def test_a_module_file_named_by_path_relative_to_the_config(tmp_path, monkeypatch):
    (tmp_path / "configs").mkdir()
    imported = marker_module(tmp_path / "configs", "ktk_marker_file")
    monkeypatch.chdir(tmp_path)
    import_custom_modules(["ktk_marker_file.py"], base_dir=tmp_path / "configs")
    assert imported.exists() and "ktk_marker_file" in sys.modules
    import_custom_modules(["ktk_marker_file.py"], base_dir=tmp_path / "configs")  # a second build: imported once
    monkeypatch.delitem(sys.modules, "ktk_marker_file")
    with pytest.raises(UserError) as info:
        import_custom_modules(["missing_layers.py"], base_dir=tmp_path / "configs")
    assert str(info.value).startswith("model.custom_modules.0: file not found; expected the path of a .py file, "
                                      "relative to the config; received ")
    with pytest.raises(UserError, match="a standard-library module"):
        import_custom_modules(["json"])


# --------------------------------------------------------------------------------- search spaces


@pytest.mark.parametrize("space, message", [
    ("{model.dropout: {float: [0.0, 0.5], step: 1.0e-12}}",
     "search.space.model.dropout: a grid over 500,000,000,001 values of this parameter is too large to run"),
    ("{model.hidden.0: {int: [1, 1000000000000000]}}", "a grid over 1,000,000,000,000,000 values"),
    ("{model.hidden.0: {int: [1, 5000]}, training.batch_size: {int: [1, 5000]}}",
     "search.space: a grid of 25,000,000 combinations is too large to run; expected at most 1,000,000 combinations"),
    ("{model.depth: {int: [1, 5000]}}", "search.space.model.depth: expected numbers of hidden layers (integers "
                                        "from 0 to 1000)"),
])
def test_absurd_grids_are_counted_and_refused(capsys, config, space, message):
    config.write_text(BASE + f"search: {{tuner: grid, space: {space}}}\n")
    assert message in refused(capsys, "validate", config)


def test_a_search_section_that_is_not_a_mapping(capsys, config):
    config.write_text(BASE + "search: [1, 2]\n")
    assert refused(capsys, "validate", config) == (
        f"ktk: error: {config}: search: expected a mapping (tuner, objective, max_trials, space, ...); "
        "received [1, 2].\n")


# ----------------------------------------------------------------------------- runs (they train)


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [["training.loss=categorical_crossentropyy"], ["training.metrics=[acuracy]"],
                                       ["task=regression", "training.early_stopping={monitor: val_accuracy}"]])
def test_run_refuses_names_keras_resolves_late_before_writing(tmp_path, capsys, config, overrides):
    args = [a for override in overrides for a in ("--set", override)]
    refused(capsys, "run", config, *args, "--out", tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_names_that_are_not_scope_names_run(tmp_path, capsys):
    for stem, name in (("_stem", None), ("plain", "café"), ("x", "_exp")):
        path = tmp_path / f"{stem}.yaml"
        path.write_text(BASE + (f"name: {name}\n" if name else ""))
        assert main(["run", str(path), "-q", "--out", str(tmp_path / stem)]) == 0, capsys.readouterr().err
        assert (tmp_path / stem / "metrics.json").is_file()
    capsys.readouterr()


def test_config_text_survives_a_refusal(tmp_path, capsys, config):
    before = config.read_text()
    refused(capsys, "run", config, "--set", "seed=-1", "--out", tmp_path / "run")
    assert config.read_text() == before and sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]


def test_a_refused_config_reads_as_one_message(tmp_path, capsys):
    path = tmp_path / "two.yaml"
    path.write_text(textwrap.dedent("""\
        data: {source: sklearn.iris}
        seed: yes
        training: {epochs: .inf}
        """))
    err = refused(capsys, "validate", path)
    assert err.splitlines() == [f"ktk: error: {path}: seed: expected an integer; received true.",
                                f"  also: {path}: training.epochs: expected an integer; received inf."]


# ------------------------------------------------------------- values of any size, in any message


HUGE = "9" * 5000  # past Python's 4300-digit limit for turning an integer into text
IRIS = "data: {source: sklearn.iris}\n"


@pytest.mark.parametrize("text", [f"seed: {HUGE}", f"model: {{dropout: 0x{'f' * 5000}}}", f"seed: {HUGE}.5",
                                  f"training:\n  class_weight:\n    ? {HUGE}\n    : 1", f"model: {{hidden: [-{HUGE}]}}"],
                         ids=["int", "hex", "float", "key", "negative in a list"])
def test_numbers_too_long_to_be_meant_are_refused_where_they_are(tmp_path, capsys, config, text):
    path = tmp_path / "long.yaml"
    path.write_text(IRIS + text + "\n")
    err = refused(capsys, "validate", path)
    assert "a number written with 5,00" in err and "characters is too long; expected a number of at most 100 " \
                                                "characters." in err and len(err) < 300
    err = refused(capsys, "validate", config, "--set", f"seed={HUGE}")
    assert err.endswith("--set seed: line 1, column 1: a number written with 5,000 characters is too long; expected a "
                        "number of at most 100 characters.\n")


@pytest.mark.parametrize("value, shown", [(10 ** 5000, "an integer of 5001 digits"),
                                          (-10 ** 400, "a negative integer of 401 digits"),
                                          ([1, 10 ** 5000], "[1, an integer of 5001 digits]"),
                                          ("é" * 300, "'" + "é" * 195 + "'...")],
                         ids=["huge", "negative", "in a list", "long text"])
def test_messages_show_values_of_any_size(value, shown):
    from toolkit.config import parse_config

    for raw in ({"data": {"source": "sklearn.iris"}, "seed": value},
                {"data": {"source": "sklearn.iris"}, "model": {"dropout": value}}):
        with pytest.raises(UserError) as info:
            parse_config(raw, source="api.yaml")
        assert f"received {shown}" in str(info.value)


def test_long_values_are_cut_between_characters(capsys, config):
    from toolkit.errors import shorten

    err = refused(capsys, "validate", config, "--set", "name=" + "é" * 300)
    assert "received '" + "é" * 195 + "'...\n" in err and "\ufffd" not in err
    decomposed = "e\u0301" * 150  # é as e + a combining accent: a cut never strips the accent off
    err = refused(capsys, "validate", config, "--set", "name=" + decomposed)
    assert "received '" + "e\u0301" * 97 + "'..." in err
    for text in ("ab" + "e\u0301" * 5, "ab👍🏽cdefgh", "a👨\u200d👩xyzabc"):
        assert shorten(text, 6) in ("ab...", "a👨...")
    assert shorten("short", 6) == "short"


def test_many_problems_read_as_one_bounded_message(tmp_path, capsys):
    path = tmp_path / "many.yaml"
    path.write_text(BASE + "".join(f"key{i}: 1\n" for i in range(20)))
    lines = refused(capsys, "validate", path).splitlines()
    assert len(lines) == 7 and lines[-1] == "  ... and 14 more problems"


# ------------------------------------------------------------------------------ YAML 1.1 surprises


@pytest.mark.parametrize("value, message", [
    ("1:30", "YAML 1.1 reads 1:30 as the base-60 (sexagesimal) number 90; expected a decimal number (90), or quotes "
             "('1:30') for text."),
    ("0x1F", "YAML 1.1 reads 0x1F as the hexadecimal number 31; expected a decimal number (31)"),
    ("017", "YAML 1.1 reads 017 as the octal number 15; expected a decimal number (15)"),
    ("-0b101", "YAML 1.1 reads -0b101 as the binary number -5"),
    ("1:30.5", "YAML 1.1 reads 1:30.5 as the base-60 (sexagesimal) number 90.5"),
])
def test_number_notations_of_yaml_1_1_are_refused_saying_how_they_read(tmp_path, capsys, config, value, message):
    assert f"--set seed: line 1, column 1: {message}" in refused(capsys, "validate", config, "--set", f"seed={value}")
    config.write_text(IRIS + f"training: {{epochs: 1, batch_size: {value}}}\n")
    column = len("training: {epochs: 1, batch_size: ") + 1
    assert f"c.yaml: line 2, column {column}: {message}" in refused(capsys, "validate", config)


def test_decimal_numbers_and_quoted_notations_are_fine(capsys, config):
    config.write_text(IRIS + "seed: 1_000\nname: '0x1F'\ntraining: {epochs: 1, batch_size: 016.5e0}\n")
    assert main(["validate", str(config)]) == 2  # (016.5e0 is a float: not a batch size)
    capsys.readouterr()
    config.write_text(BASE + "seed: 1_000\nname: '0x1F'\n")
    assert main(["validate", str(config)]) == 0
    out = capsys.readouterr().out
    assert "seed: 1000\n" in out and "name: 0x1F\n" in out.replace("'", "")


# ------------------------------------------------------------------------------------- merge keys


def test_yaml_merge_keys_merge(capsys, config):
    config.write_text("data: {source: sklearn.iris}\ntraining: {epochs: 1}\nmodel:\n  layers:\n"
                      "    - &block {units: 4, activation: tanh}\n    - {<<: *block, units: 3}\n"
                      "    - <<: [*block]\n      dropout: 0.2\n")
    assert main(["validate", str(config)]) == 0
    layers = yaml.safe_load(capsys.readouterr().out.split("\n", 3)[3])["model"]["layers"]
    assert [(l["units"], l["activation"], l["dropout"]) for l in layers] == [(4, "tanh", None), (3, "tanh", None),
                                                                           (4, "tanh", 0.2)]


@pytest.mark.parametrize("text, message", [
    ("model: {<<: {hidden: [3]}, hidden: [5], hidden: [6]}\n", "malformed YAML: duplicate key 'hidden'"),
    ("model: {<<: 3}\n", "expected a mapping or list of mappings for merging"),
    ("diagnose: {<<: {k: [*a8]}}\n", "the YAML holds more than 100000 values once its aliases are expanded"),
    ("diagnose: &d {<<: *d}\n", "an alias refers to a collection that contains it"),
])
def test_merge_keys_keep_the_bounds(tmp_path, capsys, text, message):
    path = tmp_path / "merge.yaml"
    path.write_text((alias_bomb() + "\n" if "*a8" in text else "") + IRIS + text)
    assert message in refused(capsys, "validate", path)


# ------------------------------------------------------------------- keys and words YAML did not read as text


@pytest.mark.parametrize("text, message", [
    ("true: 2", "c.yaml: expected a text key; received true (YAML reads unquoted true/false/yes/no/on/off as a "
                "boolean; quote it for text)."),
    ("~: 2", "c.yaml: expected a text key; received null (YAML reads unquoted ~, null or nothing as null; quote it "
             "for text)."),
    ("2020-01-01: 2", "c.yaml: expected a text key; received 2020-01-01 (YAML reads it as a date; quote it for text)."),
    ("model: {on: 2}", "c.yaml: model: expected a text key; received true (YAML reads unquoted"),
    ("training: {optimizer: {name: sgd, 3: 4}}", "c.yaml: training.optimizer: expected a text key; received 3 (YAML "
                                                 "reads it as a number; quote it for text)."),
    ("data: {source: sklearn.iris, options: {1.5: 2}}", "c.yaml: data.options: expected a text key; received 1.5"),
    ("search: {space: {no: {choice: [1]}}}", "c.yaml: search.space: expected dot paths as keys; received false (YAML "
                                             "reads unquoted"),
    ("name: yes", "c.yaml: name: expected a string; received true (YAML reads unquoted true/false/yes/no/on/off as a "
                  "boolean; quote it for text)."),
    ("model: {hidden: [4], activation: off}", "c.yaml: model.activation: expected a string; received false (YAML reads"),
    ("task: no", "c.yaml: task: expected one of the valid choices; received false (YAML reads unquoted"),
    ("training: {class_weight: {yes: 2, no: 1}}", "c.yaml: training.class_weight: expected class names or indexes as "
                                                  "keys; received true (YAML reads unquoted true/false/yes/no/on/off "
                                                  "as a boolean; quote it for text)."),
])
def test_keys_and_words_yaml_did_not_read_as_text_say_to_quote_them(capsys, config, text, message):
    config.write_text(text + "\n" + ("" if text.startswith("data:") else IRIS))
    assert message in refused(capsys, "validate", config)


# ---------------------------------------------------------------------------------- class weights


@pytest.mark.parametrize("overrides, message", [
    (["training.class_weight={'0': 1, 0: 2}"], "training.class_weight: two weights for one class: keys '0' and 0 "
                                               "name the same class; expected one weight per class."),
    (["training.class_weight={setosa: 1, 0: 2}"], "training.class_weight: two weights for one class: keys 'setosa' "
                                                  "and 0 both name class 'setosa'; expected one weight per class."),
    (["training.class_weight={7: 2}"], "training.class_weight.7: expected a class name or index from 0 to 2; "
                                       "received 7. Valid choices: setosa, versicolor, virginica."),
    (["training.class_weight={-1: 2}"], "training.class_weight.-1: expected a class index from 0 (or a class name); "
                                        "received -1."),
    (["training.class_weight={setosaa: 2}"], "received 'setosaa'. Valid choices: setosa, versicolor, virginica. Did "
                                             "you mean 'setosa'?"),
    (["data.source=sklearn.diabetes", "training.class_weight=balanced"],
     "training.class_weight: expected no class weights for a regression task; received 'balanced'."),
    (["data.source=synthetic.regression", "training.class_weight={0: 2}"],
     "training.class_weight: expected no class weights for a regression task"),
    (["task=regression", "data.source=sklearn.diabetes", "training.class_weight={0: 2}"],
     "training.class_weight: expected no class weights for a regression task"),
])
def test_class_weights_are_checked_by_validate_as_run_checks_them(tmp_path, capsys, config, overrides, message):
    args = [a for override in overrides for a in ("--set", override)]
    assert message in refused(capsys, "validate", config, *args)
    assert message in refused(capsys, "run", config, *args, "--out", tmp_path / "run")
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------- what validate promises: run's checks


@pytest.mark.parametrize("overrides, message", [
    (["training.early_stopping={monitor: val_mae}"],
     "training.early_stopping.monitor: not a quantity this model reports; received 'val_mae'. Valid choices: "
     "accuracy, loss, val_accuracy, val_loss."),
    (["data.source=sklearn.diabetes", "training.early_stopping={monitor: val_accuracy}"],
     "received 'val_accuracy'. Valid choices: loss, mae, val_loss, val_mae."),
    (["training.schedule={name: exponential_decay, decay_steps: 0, decay_rate: 0.9}"],
     "training.schedule.decay_steps: expected a number > 0; received 0."),
])
def test_validate_refuses_what_run_refuses(tmp_path, capsys, config, overrides, message):
    args = [a for override in overrides for a in ("--set", override)]
    assert message in refused(capsys, "validate", config, *args)
    assert message in refused(capsys, "run", config, *args, "--out", tmp_path / "run")


@pytest.mark.parametrize("space, message", [
    ("{training.optimizer.momentum: {float: [0.1, 0.5]}}",
     "search.space.training.optimizer.momentum: the value 0.1 makes the config invalid: training.optimizer.momentum: "
     "expected an argument of Adam; received 'momentum'."),
    ("{training.optimizer.name: {choice: [sgd, adam]}, training.optimizer.momentum: {float: [0.1, 0.5]}}",
     "search.space.training.optimizer.momentum: momentum is not an argument of the adam optimizer; expected when: "
     "{training.optimizer.name: [sgd]}."),
    ("{training.class_weight: {choice: [balanced, {9: 1}]}}",
     "search.space.training.class_weight: the value {9: 1} makes the config invalid: training.class_weight.9: "
     "expected a class name or index from 0 to 2"),
    ("{training.early_stopping.monitor: {choice: [val_loss, val_mae]}}",
     "the value 'val_mae' makes the config invalid: training.early_stopping.monitor: not a quantity this model "
     "reports"),
    ("{training.schedule.decay_rate: {float: [0.5, 2.0]}}", "the value 2.0 makes the config invalid: "
                                                             "training.schedule.decay_rate: expected a number in (0, 1]"),
])
def test_validate_refuses_search_spaces_tune_refuses(capsys, config, space, message):
    config.write_text(BASE.replace("training: {epochs: 1}", "training: {epochs: 1, early_stopping: true, schedule: "
                                   "{name: exponential_decay, decay_steps: 10, decay_rate: 0.9}}")
                      + f"search: {{space: {space}}}\n")
    assert message in refused(capsys, "validate", config)


def test_validate_refuses_an_objective_the_model_does_not_report(capsys, config):
    config.write_text(BASE + "search: {objective: val_mae, space: {model.dropout: {float: [0.0, 0.5]}}}\n")
    assert refused(capsys, "validate", config).endswith(
        "search.objective: not a metric of this model; received 'val_mae'. Valid choices: val_accuracy, val_loss.\n")


def test_plain_validate_says_it_did_not_build_the_model(capsys, config):
    assert main(["validate", str(config)]) == 0
    assert "# model: not built (--deep builds it, and every searched value, with Keras)" in capsys.readouterr().out


# ------------------------------------------------------------------ optimizer and schedule arguments


@pytest.mark.parametrize("override, message", [
    ("training.schedule={name: exponential_decay, initial_learning_rate: -1, decay_steps: 10, decay_rate: 0.5}",
     "training.schedule.initial_learning_rate: expected a number > 0; received -1."),
    ("training.optimizer={name: adam, beta_1: 2}", "training.optimizer.beta_1: expected a number in [0, 1); received 2."),
    ("training.optimizer={name: adamw, beta_2: 1}", "training.optimizer.beta_2: expected a number in [0, 1)"),
    ("training.optimizer={name: sgd, clipnorm: -1}", "training.optimizer.clipnorm: expected a number > 0 or null"),
    ("training.optimizer={name: rmsprop, epsilon: 0}", "training.optimizer.epsilon: expected a number > 0; received 0."),
    ("training.optimizer={name: adam, weight_decay: -5}", "training.optimizer.weight_decay: expected a number >= 0"),
    ("training.optimizer={name: adamw, weight_decay: null}", "training.optimizer.weight_decay: expected a number >= 0; "
                                                              "received null."),
    ("training.optimizer={name: sgd, momentum: 1.5}", "training.optimizer.momentum: expected a number in [0, 1]"),
    ("training.optimizer={name: rmsprop, rho: -0.1}", "training.optimizer.rho: expected a number in [0, 1)"),
    ("training.optimizer={name: lion, beta_1: 0}", "training.optimizer.beta_1: expected a number in (0, 1]"),
    ("training.optimizer={name: ftrl, learning_rate_power: 0.5}", "learning_rate_power: expected a number <= 0"),
    ("training.optimizer={name: sgd, nesterov: 3}", "training.optimizer.nesterov: expected true or false; received 3."),
    ("training.optimizer={name: sgd, gradient_accumulation_steps: 1}",
     "gradient_accumulation_steps: expected an integer >= 2 or null"),
    ("training.optimizer={name: sgd, momentum: '0.9'}", "training.optimizer.momentum: expected a number in [0, 1]; "
                                                        "received '0.9'."),
    ("training.optimizer={name: sgd, clipnorm: 1, global_clipnorm: 1}",
     "training.optimizer: Keras clips gradients one way only; received clipnorm and global_clipnorm"),
    ("training.schedule={name: cosine_decay, decay_steps: 10, alpha: 5}", "training.schedule.alpha: expected a number "
                                                                          "in [0, 1]"),
    ("training.schedule={name: cosine_decay_restarts, first_decay_steps: 10, t_mul: -1}",
     "training.schedule.t_mul: expected a number >= 1"),
    ("training.schedule={name: cosine_decay_restarts, first_decay_steps: 0}",
     "training.schedule.first_decay_steps: expected a number > 0"),
    ("training.schedule={name: exponential_decay, decay_steps: 10, decay_rate: 1e30}",
     "training.schedule.decay_rate: expected a number in (0, 1] (above 1 the rate grows without bound)"),
    ("training.schedule={name: inverse_time_decay, decay_steps: 10, decay_rate: -1}",
     "training.schedule.decay_rate: expected a number >= 0"),
    ("training.schedule={name: polynomial_decay, decay_steps: 10, power: -2}", "training.schedule.power: expected a "
                                                                               "number >= 0"),
    ("training.schedule={name: exponential_decay, decay_steps: 10, decay_rate: 0.5, staircase: 1}",
     "training.schedule.staircase: expected true or false"),
    ("training.schedule={name: piecewise_constant_decay, boundaries: [10, 5], values: [0.1, 0.01, 0.1]}",
     "training.schedule.boundaries: expected a list of steps >= 0 in ascending order"),
    ("training.schedule={name: piecewise_constant_decay, boundaries: [10], values: [0.1]}",
     "training.schedule.values: expected a list of 2 learning rates > 0"),
])
def test_optimizer_and_schedule_numbers_are_range_checked(tmp_path, capsys, config, override, message):
    assert_validate_and_run_refuse(tmp_path, capsys, config, override, message)


@pytest.mark.parametrize("override", [
    "training.schedule={name: piecewise_constant_decay, boundaries: [10], values: [0.1, 0.01]}",
    "training.schedule={name: cosine_decay, decay_steps: 10, initial_learning_rate: 0, warmup_target: 0.1, "
    "warmup_steps: 5}",
    "training.optimizer={name: sgd, momentum: 1, nesterov: true, clipnorm: null}",
    "training.optimizer={name: adam, beta_1: 0, epsilon: 1.0e-8, gradient_accumulation_steps: null}",
])
def test_arguments_in_range_validate(capsys, config, override):
    assert main(["validate", str(config), "--set", override]) == 0, capsys.readouterr().err
    capsys.readouterr()


@pytest.mark.slow
def test_a_piecewise_schedule_trains_with_the_arguments_ktk_fills_in(tmp_path, capsys, config):
    args = ["--set", "training.schedule={name: piecewise_constant_decay, boundaries: [2], values: [0.1, 1]}",
            "--set", "training.optimizer={name: sgd, momentum: 1}", "--set", "training.class_weight={setosa: 2}"]
    assert main(["run", str(config), "-q", "--out", str(tmp_path / "run"), *args]) == 0, capsys.readouterr().err
    capsys.readouterr()
    history = (tmp_path / "run" / "history.csv").read_text().splitlines()
    assert history[1].endswith(",1.0")  # the learning rate after 4 steps: the second value
    assert read_yaml(tmp_path / "run" / "config.yaml")["training"]["schedule"] == {
        "name": "piecewise_constant_decay", "boundaries": [2], "values": [0.1, 1.0]}


# --------------------------------------------------------------------------------------- extends


@pytest.mark.parametrize("base, message", [
    ("modell: {hidden: [3]}\n", "base.yaml: modell: unknown key; received 'modell'."),
    ("model: {dropout: 3}\n", "base.yaml: model.dropout: expected a rate in [0, 1); received 3."),
    ("training: {optimizer: {name: adam, lrr: 3}}\n", "base.yaml: training.optimizer.lrr: expected an argument of Adam"),
    ("training: {class_weight: {9: 1}}\n", "base.yaml: training.class_weight.9: expected a class name or index"),
    ("search: {space: {model.dropout: {float: [0.5, 0.1]}}}\n", "base.yaml: search.space.model.dropout: empty range"),
])
def test_a_mistake_in_a_base_file_names_that_file(tmp_path, capsys, base, message):
    (tmp_path / "base.yaml").write_text("data: {source: sklearn.iris}\n" + base)
    child = tmp_path / "child.yaml"
    child.write_text("extends: base.yaml\nmodel: {hidden: [4]}\ntraining: {epochs: 1}\n")
    assert refused(capsys, "validate", child).startswith(f"ktk: error: {tmp_path / message}")


def test_a_key_the_child_or_set_overrides_is_theirs(tmp_path, capsys):
    (tmp_path / "base.yaml").write_text("data: {source: sklearn.iris}\nmodel: {hidden: [4], dropout: 0.1}\n")
    child = tmp_path / "child.yaml"
    child.write_text("extends: base.yaml\nmodel: {dropout: 2}\n")
    assert refused(capsys, "validate", child).startswith(f"ktk: error: {child}: model.dropout: expected a rate")
    child.write_text("extends: base.yaml\n")
    assert refused(capsys, "validate", child, "--set", "model.dropout=3").startswith(
        f"ktk: error: {child}: model.dropout: expected a rate")


@pytest.mark.parametrize("content", [
    "root:*:20228:0:99999:7:::\ndaemon:*:20228:0:99999:7:::\nsecret_user:$6$abc:20228:0:99999:7:::\n",
    "x1,x2,y\n1,2,0\n3,4,1\n",
    "- 1\n- 2\n",
    "7\n",
])
def test_extends_of_a_file_that_is_not_a_config_is_one_message_without_its_content(tmp_path, capsys, content):
    (tmp_path / "other").write_text(content)
    child = tmp_path / "child.yaml"
    child.write_text("extends: other\n")
    err = refused(capsys, "validate", child)
    assert err.startswith(f"ktk: error: {child}: extends: not a config file: ") and err.count("\n") == 1
    assert f"expected a YAML config file (a mapping of config sections: callbacks, data, diagnose, extends, model, " \
           f"name, search, seed, task, tracking, training); received '{tmp_path / 'other'}'." in err
    assert not any(word in err for word in ("daemon", "secret", "x1", "20228"))
    err = refused(capsys, "validate", tmp_path / "other")
    assert err.startswith(f"ktk: error: {tmp_path / 'other'}: not a config file: ") and err.count("\n") == 1
    assert not any(word in err for word in ("daemon", "secret", "x1", "20228"))
