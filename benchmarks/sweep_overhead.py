"""Per-trial overhead beyond `fit`, and memory growth, of `ktk tune` against a plain keras-tuner script.

Three sweeps of the same random search (the search space of configs/tune_digits.yaml, on sklearn digits,
fixed epochs, no early stopping), each in a fresh Python process:

- ``plain``: a hand-written keras-tuner script (RandomSearch, a HyperModel building the same MLP, and
  ``model.fit`` on NumPy arrays), the way the keras-tuner guide writes one;
- ``inline``: ``ktk tune`` with ``trials_per_process: inline`` (trials in the ktk process);
- ``process``: ``ktk tune`` as by default (trials in a worker process replaced every 10 trials, ``pack: off``);
- ``packed``: the same with ``search.pack: auto`` (trials trained together in packs, toolkit/sweeps/packed.py).

With ``--fixed-batch`` the batch size is not searched (it is the one thing in this space that keeps trials
from sharing a pack). Each row also gives trials per minute of the search and the best validation accuracy.

Reported per sweep: wall time of the search (``wall_s``: from the call that starts it; the plain script has
imported TensorFlow and loaded the data by then, while ``ktk tune`` imports them inside that call), the whole
process's time until the search ended (``process_s``: from the benchmark process's start, imports and data
included, the same for every mode: what a user waits for), time inside ``fit``, their difference per trial (the overhead:
building, compiling, keras-tuner's bookkeeping, ktk's records, process start-up and data transfer), and the
resident memory after each trial: its growth per trial (least-squares slope over trials 11..N) and its peak.
Memory is that of the whole process tree (for ``process``: ktk, its fork server and the trial worker,
shared pages counted twice). ``best/`` retraining is
not part of the search and is not timed.

    PYTHONPATH=$PWD python benchmarks/sweep_overhead.py                 # 50 trials, 3 epochs
    PYTHONPATH=$PWD python benchmarks/sweep_overhead.py --trials 10 --modes plain,process
    PYTHONPATH=$PWD python benchmarks/sweep_overhead.py --trials 32 --epochs 5 --modes plain,process,packed --fixed-batch
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

PROCESS_START = time.perf_counter()  # before any heavy import: process_s is what a user waits for
from pathlib import Path
from typing import Any, Dict, List

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

SEED = 7
SPACE = {
    "model.hidden.0": {"int": [32, 256], "step": 32},
    "model.dropout": {"float": [0.0, 0.5]},
    "model.regularizer.l2": {"float": [1.0e-6, 1.0e-2], "log": True},
    "training.optimizer.name": {"choice": ["sgd", "rmsprop", "adam"]},
    "training.optimizer.momentum": {"float": [0.0, 0.99], "when": {"training.optimizer.name": "sgd"}},
    "training.optimizer.learning_rate": {"float": [1.0e-4, 1.0e-1], "log": True},
    "training.batch_size": {"choice": [32, 64, 128]},
}


def space(fixed_batch: bool) -> Dict[str, Any]:
    return {k: v for k, v in SPACE.items() if not (fixed_batch and k == "training.batch_size")}


def base_config(trials: int, epochs: int, trials_per_process: Any, pack: Any = "off",
                fixed_batch: bool = False) -> Dict[str, Any]:
    return {
        "name": "sweep-overhead",
        "seed": SEED,
        "data": {"source": "sklearn.digits", "split": {"train": 0.7, "validation": 0.15, "test": 0.15}},
        "model": {"hidden": [128, 64], "activation": "relu"},
        "training": {"optimizer": {"name": "adam", "learning_rate": 1.0e-3}, "batch_size": 64, "epochs": epochs},
        "search": {"tuner": "random", "objective": "val_accuracy", "max_trials": trials,
                   "trials_per_process": trials_per_process, "pack": pack, "space": space(fixed_batch)},
    }


def rss_mb(pid: Any = None) -> float:
    """Resident memory (MB) of a process, this one by default; 0 when it ended meanwhile."""
    from toolkit.sweeps.runner import rss_mb as process_rss_mb

    return process_rss_mb(pid) or 0.0


def tree_rss_mb() -> float:
    """Resident memory of this process and all its descendants (ktk's fork server and trial worker).

    Pages a forked worker shares with the fork server are counted in both: an overestimate of the total.
    """
    children: Dict[int, List[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    total, stack = 0.0, [os.getpid()]
    while stack:
        pid = stack.pop()
        total += rss_mb(pid)
        stack.extend(children.get(pid, []))
    return total


# ------------------------------------------------------------------------------------ the sweeps


def run_plain(trials: int, epochs: int, workdir: Path, fixed_batch: bool = False) -> Dict[str, Any]:
    """The hand-written keras-tuner script (with the data ktk would use, for the same work per trial)."""
    import keras
    import keras_tuner

    from toolkit.config import parse_config
    from toolkit.data import load_data

    data = load_data(parse_config(base_config(trials, epochs, "inline")))
    fit_times: List[float] = []
    memory: List[float] = []

    class MLP(keras_tuner.HyperModel):
        def build(self, hp):
            units = hp.Int("model.hidden.0", 32, 256, step=32)
            dropout = hp.Float("model.dropout", 0.0, 0.5)
            l2 = hp.Float("model.regularizer.l2", 1e-6, 1e-2, sampling="log")
            name = hp.Choice("training.optimizer.name", ["sgd", "rmsprop", "adam"])
            with hp.conditional_scope("training.optimizer.name", ["sgd"]):
                momentum = hp.Float("training.optimizer.momentum", 0.0, 0.99)
            learning_rate = hp.Float("training.optimizer.learning_rate", 1e-4, 1e-1, sampling="log")
            regularizer = keras.regularizers.L2(l2)
            model = keras.Sequential([keras.Input((64,))])
            for width in (units, 64):
                model.add(keras.layers.Dense(width, activation="relu", kernel_regularizer=regularizer))
                model.add(keras.layers.Dropout(dropout))
            model.add(keras.layers.Dense(10, activation="softmax"))
            if name == "sgd":
                optimizer = keras.optimizers.SGD(learning_rate, momentum=momentum)
            else:
                optimizer = keras.optimizers.get({"class_name": name, "config": {"learning_rate": learning_rate}})
            model.compile(optimizer, "sparse_categorical_crossentropy", metrics=["accuracy"])
            return model

        def fit(self, hp, model, *args, **kwargs):
            batch_size = 64 if fixed_batch else hp.Choice("training.batch_size", [32, 64, 128])
            started = time.perf_counter()
            history = model.fit(data.x_train, data.y_train, batch_size=batch_size, epochs=epochs,
                                validation_data=(data.x_val, data.y_val), **kwargs)
            fit_times.append(time.perf_counter() - started)
            return history

    class Tuner(keras_tuner.RandomSearch):
        def on_trial_end(self, trial):
            super().on_trial_end(trial)
            memory.append(rss_mb())

    started = time.perf_counter()
    tuner = Tuner(MLP(), objective="val_accuracy", max_trials=trials, seed=SEED, directory=str(workdir),
                  project_name="plain", overwrite=True)
    tuner.search(verbose=0)
    ended = time.perf_counter()
    wall = ended - started
    best = tuner.oracle.get_best_trials(1)
    return {"wall_s": wall, "process_s": ended - PROCESS_START, "fit_s": sum(fit_times), "trials": len(fit_times),
            "rss_mb": memory,
            "best": best[0].score if best else None}


def run_ktk(trials: int, epochs: int, workdir: Path, trials_per_process: Any, pack: Any = "off",
            fixed_batch: bool = False) -> Dict[str, Any]:
    from toolkit.config import parse_config
    from toolkit.sweeps import read_trials, tune

    config = parse_config(base_config(trials, epochs, trials_per_process, pack, fixed_batch))
    main_memory: List[float] = []
    search_end: List[float] = []

    tree_memory: List[float] = []

    def progress(line: str) -> None:
        if line.startswith("trial "):
            main_memory.append(rss_mb())
            tree_memory.append(tree_rss_mb())
        elif line.startswith("retraining"):
            search_end.append(time.perf_counter())

    started = time.perf_counter()
    tune(config, out_dir=workdir / "sweep", progress=progress)
    wall = search_end[0] - started
    records = read_trials(workdir / "sweep")
    scores = [r["score"] for r in records if r.get("status") == "completed"]
    return {"wall_s": wall, "process_s": search_end[0] - PROCESS_START,
            "fit_s": sum(r.get("fit_s", 0.0) for r in records), "trials": len(records),
            "rss_mb": tree_memory, "main_rss_mb": main_memory, "best": max(scores) if scores else None}


# ------------------------------------------------------------------------------------- reporting


def slope(values: List[float]) -> float:
    n = len(values)
    if n < 2:
        return float("nan")
    xs = list(range(n))
    mean_x, mean_y = sum(xs) / n, sum(values) / n
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, values)) / sum((x - mean_x) ** 2 for x in xs)


def summarize(name: str, result: Dict[str, Any]) -> Dict[str, Any]:
    memory = result["rss_mb"]
    skip = min(10, max(0, len(memory) - 2))  # start-up and first compilations settle in the first trials
    row = {
        "mode": name,
        "trials": result["trials"],
        "wall_s": round(result["wall_s"], 2),
        "fit_s": round(result["fit_s"], 2),
        "trials_per_min": round(60 * result["trials"] / result["wall_s"], 1),
        "process_s": round(result["process_s"], 2),
        "trials_per_min_process": round(60 * result["trials"] / result["process_s"], 1),
        "best_val_accuracy": None if result.get("best") is None else round(result["best"], 4),
        "overhead_per_trial_s": round((result["wall_s"] - result["fit_s"]) / max(1, result["trials"]), 3),
        "rss_growth_mb_per_trial": round(slope(memory[skip:]), 3),
        "rss_first_mb": round(memory[0], 1) if memory else None,
        "rss_last_mb": round(memory[-1], 1) if memory else None,
        "rss_peak_mb": round(max(memory), 1) if memory else None,
    }
    if "main_rss_mb" in result and result["main_rss_mb"]:
        row["main_rss_growth_mb_per_trial"] = round(slope(result["main_rss_mb"][skip:]), 3)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--modes", default="plain,inline,process")
    parser.add_argument("--fixed-batch", action="store_true", help="do not search the batch size")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one mode in this process
    args = parser.parse_args()

    if args.one:
        with tempfile.TemporaryDirectory() as tmp:
            if args.one == "plain":
                result = run_plain(args.trials, args.epochs, Path(tmp), args.fixed_batch)
            else:
                result = run_ktk(args.trials, args.epochs, Path(tmp), "inline" if args.one == "inline" else 10,
                                 "auto" if args.one == "packed" else "off", args.fixed_batch)
        print("RESULT " + json.dumps(result))
        return

    rows = []
    for mode in args.modes.split(","):
        print(f"running {mode}: {args.trials} trials of {args.epochs} epochs ...", flush=True)
        done = subprocess.run([sys.executable, __file__, "--one", mode, "--trials", str(args.trials),
                               "--epochs", str(args.epochs), *(["--fixed-batch"] if args.fixed_batch else [])],
                              capture_output=True, text=True, env=os.environ)
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode != 0 or not lines:
            sys.exit(f"{mode} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        rows.append(summarize(mode, json.loads(lines[-1][len("RESULT "):])))
    columns = list(rows[0])
    for row in rows:
        for column in row:
            if column not in columns:
                columns.append(column)
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(str(row.get(c, "")).ljust(widths[c]) for c in columns))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
