"""How long `ktk compare` takes on 1,000 run directories (and on a sweep of 1,000 trials).

One real run is trained (iris, 2 epochs; or pass --template RUN_DIR), then cloned N times with different
config values (dropout, learning rate, batch size, hidden widths) and metrics, in the exact layout
`ktk run` writes (config.yaml as its resolved dump, metrics.json, history.csv, environment.json;
model.keras is left out since compare never opens it). Then it times:

- ``compare()`` in a process that has already imported pandas (the library call alone);
- ``python -m toolkit compare DIR --format csv`` end to end (interpreter start, imports, output);
- the same on one sweep directory whose trials.csv holds N trials;
- reading and flattening the N config.yaml files alone (most of the library call).

    PYTHONPATH=$PWD python benchmarks/compare_speed.py [--runs 1000] [--repeat 5] [--template RUN_DIR]
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from toolkit.config import dump_yaml  # after the sys.path line above: this checkout, not an installed ktk


def train_template(folder: Path) -> Path:
    from toolkit.config import parse_config
    from toolkit.runs import run

    config = parse_config({"name": "bench", "data": {"source": "sklearn.iris"},
                           "model": {"hidden": [16]}, "training": {"epochs": 2}})
    return run(config, out_dir=folder / "template", verbose=0).run_dir


def clone_runs(template: Path, folder: Path, n: int) -> Path:
    config = yaml.safe_load((template / "config.yaml").read_text())
    metrics = json.loads((template / "metrics.json").read_text())
    root = folder / "runs"
    for i in range(n):
        run_dir = root / f"run-{i:04d}"
        run_dir.mkdir(parents=True)
        values = copy.deepcopy(config)
        values["model"]["dropout"] = round(0.05 * (i % 10), 2)
        values["model"]["hidden"] = [[16], [32], [64, 32], [128, 64]][i % 4]
        values["training"]["optimizer"]["learning_rate"] = 10 ** (-4 + 3 * ((i * 0.618034) % 1))
        values["training"]["batch_size"] = [16, 32, 64][i % 3]
        (run_dir / "config.yaml").write_text(dump_yaml(values))
        scores = copy.deepcopy(metrics)
        for split in ("train", "validation", "test"):
            scores[split] = {k: v * (1 + 0.001 * (i % 97)) for k, v in scores[split].items()}
        (run_dir / "metrics.json").write_text(json.dumps(scores, indent=2))
        for name in ("history.csv", "environment.json"):
            shutil.copyfile(template / name, run_dir / name)
    return root


def clone_sweep(template: Path, folder: Path, n: int) -> Path:
    config = yaml.safe_load((template / "config.yaml").read_text())
    config["search"] = {"tuner": "random", "objective": "val_accuracy", "max_trials": n,
                        "space": {"model.dropout": {"float": [0.0, 0.5]},
                                  "training.optimizer.learning_rate": {"float": [1e-4, 1e-1], "log": True}}}
    metrics = json.loads((template / "metrics.json").read_text())
    sweep = folder / "sweep"
    (sweep / "histories").mkdir(parents=True)
    (sweep / "config.yaml").write_text(dump_yaml(config))
    names = list(metrics["train"])
    header = ["trial_id", "status", "score", "model.dropout", "training.optimizer.learning_rate",
              *[f"train.{m}" for m in names], *[f"validation.{m}" for m in names],
              "epochs", "best_epoch", "params", "started", "duration_s", "message"]
    with open(sweep / "trials.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for i in range(n):
            scale = 1 + 0.001 * (i % 97)
            writer.writerow([f"{i:04d}", "completed", metrics["validation"].get("accuracy", 0) * scale,
                             0.5 * ((i * 0.618034) % 1), 10 ** (-4 + 3 * ((i * 0.414214) % 1)),
                             *[metrics["train"][m] * scale for m in names],
                             *[metrics["validation"][m] * scale for m in names],
                             metrics["epochs_run"], metrics["best_epoch"], metrics["params"],
                             "2026-01-01T00:00:00+00:00", 1.0, ""])
    return sweep


def time_library(path: Path, repeat: int) -> list:
    import pandas  # imported once, outside the timing, as in a notebook

    from toolkit.analysis.compare import compare

    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        table = compare(path)
        times.append(time.perf_counter() - started)
    return times, len(table)


def time_yaml(path: Path, repeat: int) -> list:
    """Reading and flattening every config.yaml alone: the part of compare() that a cache of parsed YAML
    sections (removed: see docs/compare.md, "Speed") would save."""
    from toolkit.analysis.compare import flatten, read_config

    files = sorted(path.glob("*/config.yaml"))
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        for file in files:
            flatten(read_config(file))
        times.append(time.perf_counter() - started)
    return times


def time_cli(path: Path, repeat: int) -> list:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "toolkit", "compare", str(path), "--format", "csv"],
                       check=True, env=env, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--template", type=Path, help="a run directory to clone (default: train one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ktk-compare-bench-") as tmp:
        folder = Path(tmp)
        template = args.template or train_template(folder)
        runs = clone_runs(template, folder, args.runs)
        sweep = clone_sweep(template, folder, args.runs)
        library, rows = time_library(runs, args.repeat)
        cli = time_cli(runs, args.repeat)
        yaml_only = time_yaml(runs, args.repeat)
        sweep_library, sweep_rows = time_library(sweep, args.repeat)
        sweep_cli = time_cli(sweep, args.repeat)
    print(f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}; median of {args.repeat} (min-max)")
    print("| what | rows | compare() | `ktk compare ... --format csv` (whole process) |")
    print("| --- | ---: | ---: | ---: |")
    for name, count, lib, end in ((f"{args.runs} run directories", rows, library, cli),
                                  (f"a sweep of {args.runs} trials", sweep_rows, sweep_library, sweep_cli)):
        print(f"| {name} | {count} | {statistics.median(lib):.2f} s ({min(lib):.2f}-{max(lib):.2f}) "
              f"| {statistics.median(end):.2f} s ({min(end):.2f}-{max(end):.2f}) |")
    print(f"| of which reading the {args.runs} config.yaml files | | {statistics.median(yaml_only):.2f} s "
          f"({min(yaml_only):.2f}-{max(yaml_only):.2f}) | |")


if __name__ == "__main__":
    main()
