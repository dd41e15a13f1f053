"""GPU check: ktk against plain Keras, mixed precision, XLA, a GPU-packed sweep and `mirrored`, in one timed script.

Every measurement runs as a fresh process (imports and GPU start-up included, as a user would see them) with a
timeout of its own, so one that fails or hangs costs only itself; the whole script stays within ``--budget-s``
(measurements that no longer fit are recorded as "no time"). Measurements, most important first:

- ``mlp_plain`` / ``mlp_ktk``: the 50-epoch digits MLP as a plain Keras script (plain_digits_mlp.py) and as
  ``ktk run`` (digits_mlp_50.yaml), as benchmarks/run_speed.py compares them;
- ``cnn_plain`` / ``cnn_ktk``: a small CNN on an npz of generated 32x32 RGB images (plain_cnn.py against ``ktk
  run`` on the same layers);
- ``cnn_mixed``: the CNN with ``training.precision: mixed_float16`` (against ``cnn_ktk``, float32);
- ``cnn_jit_on`` / ``cnn_jit_off``: the CNN with ``training.jit_compile`` true and false;
- ``sweep_1`` / ``sweep_4x4``: a digits sweep with ``ktk tune --workers 1`` and ``--workers 4 --per-gpu 4``;
- ``mirrored_all`` / ``mirrored_one``: the CNN with ``training.distribute: {strategy: mirrored, devices: [...]}``
  on every GPU and on GPU:0 only.

Without a GPU (found as ktk finds them: ``nvidia-smi -L``), the GPU-only measurements (mixed precision, the
packed sweep, mirrored) are recorded as "no GPU"; ``--cpu-smoke`` shrinks every size so the script itself can
be tested on a CPU in under a minute. It prints a Markdown table and writes JSON (``--json``, by default
``$OUT/gpu_check.json`` when ``OUT`` is set). It never makes up a figure: a measurement that did not run has
none.

    python benchmarks/gpu_check.py --budget-s 480                      # on a GPU machine
    python benchmarks/gpu_check.py --cpu-smoke --budget-s 120 --only mlp --json /tmp/gpu_check.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from toolkit.hardware import gpus as gpu_detection  # noqa: E402  (no TensorFlow)

MIN_TIMEOUT_S = 15.0  # a measurement is started only with at least this long left
STATUSES = ("ok", "failed", "timeout", "no GPU", "no time", "skipped")


@dataclass(frozen=True)
class Sizes:
    mlp_epochs: int
    images: int
    image_side: int
    cnn_epochs: int
    cnn_batch: int
    sweep_trials: int
    sweep_epochs: int

    @classmethod
    def for_run(cls, cpu_smoke: bool) -> "Sizes":
        if cpu_smoke:
            return cls(mlp_epochs=3, images=400, image_side=12, cnn_epochs=2, cnn_batch=64, sweep_trials=2,
                       sweep_epochs=2)
        return cls(mlp_epochs=50, images=20000, image_side=32, cnn_epochs=10, cnn_batch=128, sweep_trials=16,
                   sweep_epochs=20)


@dataclass(frozen=True)
class Measurement:
    id: str
    group: str
    mode: str
    gpu_only: bool
    cap_s: float  # its own timeout, at most


MEASUREMENTS = [
    Measurement("mlp_plain", "digits MLP", "plain Keras script", False, 150),
    Measurement("mlp_ktk", "digits MLP", "ktk run", False, 150),
    Measurement("cnn_plain", "small CNN (npz images)", "plain Keras script", False, 180),
    Measurement("cnn_ktk", "small CNN (npz images)", "ktk run (float32, jit_compile auto)", False, 180),
    Measurement("cnn_mixed", "precision", "ktk run, training.precision: mixed_float16", True, 180),
    Measurement("cnn_jit_on", "XLA", "ktk run, training.jit_compile: true", False, 180),
    Measurement("cnn_jit_off", "XLA", "ktk run, training.jit_compile: false", False, 180),
    Measurement("sweep_1", "sweep", "ktk tune --workers 1", True, 240),
    Measurement("sweep_4x4", "sweep", "ktk tune --workers 4 --per-gpu 4", True, 240),
    Measurement("mirrored_all", "mirrored", "ktk run, training.distribute mirrored on every GPU", True, 180),
    Measurement("mirrored_one", "mirrored", "ktk run, training.distribute mirrored on GPU:0", True, 180),
]
IDS = [m.id for m in MEASUREMENTS]


# ------------------------------------------------------------------------------------------ data and configs


def write_images(path: Path, count: int, side: int, classes: int = 10, seed: int = 0) -> None:
    """An npz of `count` uint8 RGB images (x: count x side x side x 3) and labels y: a class is a bright square
    at a place and in a colour of its own, jittered by a pixel, under noise (learnable, not trivial)."""
    rng = np.random.default_rng(seed)
    y = np.arange(count) % classes
    rng.shuffle(y)
    x = rng.normal(96, 64, size=(count, side, side, 3))
    square = max(2, side // 5)
    steps = np.linspace(1, side - square - 1, 4).astype(int)
    places = [(int(r), int(c)) for r in steps for c in steps][:classes]
    for i, label in enumerate(y):
        row, col = (p + int(rng.integers(-1, 2)) for p in places[label])
        x[i, row:row + square, col:col + square, label % 3] += 40
    np.savez(path, x=np.clip(x, 0, 255).astype(np.uint8), y=y.astype(np.int64))


def cnn_config(npz: Path, sizes: Sizes, **training: Any) -> Dict[str, Any]:
    """The ktk config of plain_cnn.py's model (extra `training` keys: precision, jit_compile, distribute)."""
    return {
        "name": "gpu-check-cnn",
        "seed": 42,
        "data": {"source": "npz", "path": str(npz), "split": {"train": 0.7, "validation": 0.15, "test": 0.15}},
        "model": {"activation": "relu", "layers": [
            {"class_name": "Conv2D", "config": {"filters": 32, "kernel_size": 3, "padding": "same",
                                                "activation": "relu"}},
            {"class_name": "MaxPooling2D"},
            {"class_name": "Conv2D", "config": {"filters": 64, "kernel_size": 3, "padding": "same",
                                                "activation": "relu"}},
            {"class_name": "MaxPooling2D"},
            {"class_name": "Flatten"},
            {"units": 128},
        ]},
        "training": {"optimizer": {"name": "adam", "learning_rate": 1.0e-3}, "batch_size": sizes.cnn_batch,
                     "epochs": sizes.cnn_epochs, "restore_best_weights": False, **training},
    }


def sweep_config(sizes: Sizes) -> Dict[str, Any]:
    """A small digits sweep: every trial the same size, so workers compete only for the device."""
    return {
        "name": "gpu-check-sweep",
        "seed": 7,
        "data": {"source": "sklearn.digits"},
        "model": {"hidden": [128, 64]},
        "training": {"optimizer": {"name": "adam", "learning_rate": 1.0e-3}, "batch_size": 32,
                     "epochs": sizes.sweep_epochs},
        "search": {"tuner": "random", "objective": "val_accuracy", "max_trials": sizes.sweep_trials,
                   "space": {"model.dropout": {"float": [0.0, 0.5]},
                             "training.optimizer.learning_rate": {"float": [1.0e-4, 1.0e-2], "log": True}}},
    }


# ------------------------------------------------------------------------------------------ running


def run_process(command: List[str], cwd: Path, timeout: float) -> Dict[str, Any]:
    """Runs `command` in a session of its own; kills the session at the timeout. Never raises."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    started = time.perf_counter()
    try:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True, start_new_session=True)
    except OSError as error:
        return {"rc": None, "wall_s": 0.0, "stdout": "", "stderr": str(error), "timed_out": False}
    try:
        out, err = process.communicate(timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)  # its trial or worker processes too
        except (ProcessLookupError, PermissionError):
            pass
        out, err = process.communicate()
        timed_out = True
    return {"rc": process.returncode, "wall_s": round(time.perf_counter() - started, 2), "stdout": out,
            "stderr": err, "timed_out": timed_out}


def ktk(*args: Any) -> List[str]:
    return [sys.executable, "-m", "toolkit", *map(str, args)]


def parse_plain(done: Dict[str, Any], _: Path) -> Dict[str, Any]:
    values: Dict[str, Any] = {}
    for key in ("test_accuracy", "train_s", "gpus"):
        match = re.search(rf"^{key}=([\d.]+)$", done["stdout"], re.M)
        if match:
            values[key] = float(match.group(1)) if key != "gpus" else int(match.group(1))
    return values


ENVIRONMENT_KEYS = ("gpus", "precision", "jit_compile", "distribute", "strategy", "replicas", "devices")


def parse_run(done: Dict[str, Any], out: Path) -> Dict[str, Any]:
    """Test accuracy and training time from metrics.json; what TensorFlow used, as environment.json records it."""
    metrics = json.loads((out / "metrics.json").read_text())
    environment = json.loads((out / "environment.json").read_text())
    values = {"test_accuracy": metrics.get("test", {}).get("accuracy"), "train_s": metrics.get("wall_time_s")}
    values["environment"] = {key: environment[key] for key in ENVIRONMENT_KEYS if key in environment}
    return values


def parse_sweep(done: Dict[str, Any], out: Path) -> Dict[str, Any]:
    with open(out / "trials.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    completed = [r for r in rows if r.get("status") == "completed"]
    best = json.loads((out / "best" / "metrics.json").read_text())
    return {"trials": len(completed), "test_accuracy": best.get("test", {}).get("accuracy"),
            "trials_per_min": round(60 * len(completed) / done["wall_s"], 2) if done["wall_s"] else None,
            "workers": sorted({r.get("worker") for r in rows if r.get("worker")})}


class Check:
    """The measurements of one invocation, in a work folder of their own."""

    def __init__(self, work: Path, sizes: Sizes, gpus: List[Any]):
        self.work = work
        self.sizes = sizes
        self.gpus = gpus
        self.npz = work / "images.npz"

    def _config(self, name: str, config: Dict[str, Any]) -> Path:
        path = self.work / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def plan(self, measurement_id: str) -> tuple:
        """(command, output folder, parser) of a measurement."""
        out = self.work / measurement_id
        sizes = self.sizes
        if measurement_id == "mlp_plain":
            return [sys.executable, str(HERE / "plain_digits_mlp.py"), str(sizes.mlp_epochs)], out, parse_plain
        if measurement_id == "mlp_ktk":
            return (ktk("run", HERE / "digits_mlp_50.yaml", "--out", out, "-q", "--set",
                        f"training.epochs={sizes.mlp_epochs}"), out, parse_run)
        if not self.npz.exists():
            write_images(self.npz, sizes.images, sizes.image_side)
        if measurement_id == "cnn_plain":
            return ([sys.executable, str(HERE / "plain_cnn.py"), str(self.npz), str(sizes.cnn_epochs),
                     str(sizes.cnn_batch)], out, parse_plain)
        training: Dict[str, Any] = {
            "cnn_ktk": {},
            "cnn_mixed": {"precision": "mixed_float16"},
            "cnn_jit_on": {"jit_compile": True},
            "cnn_jit_off": {"jit_compile": False},
            "mirrored_all": {"distribute": {"strategy": "mirrored",
                                            "devices": [f"GPU:{i}" for i in range(max(1, len(self.gpus)))]}},
            "mirrored_one": {"distribute": {"strategy": "mirrored", "devices": ["GPU:0"]}},
        }.get(measurement_id)
        if training is not None:
            config = self._config(measurement_id, cnn_config(self.npz, sizes, **training))
            return ktk("run", config, "--out", out, "-q"), out, parse_run
        workers = {"sweep_1": ["--workers", "1"], "sweep_4x4": ["--workers", "4", "--per-gpu", "4"]}[measurement_id]
        return ktk("tune", self._config("sweep", sweep_config(sizes)), "--out", out, *workers), out, parse_sweep

    def measure(self, measurement: Measurement, timeout: float) -> Dict[str, Any]:
        command, out, parse = self.plan(measurement.id)
        done = run_process(command, self.work, timeout)
        row: Dict[str, Any] = {"wall_s": done["wall_s"], "command": " ".join(map(str, command))}
        if done["timed_out"]:
            return {**row, "status": "timeout", "note": f"stopped after {timeout:.0f} s"}
        if done["rc"] != 0:
            tail = (done["stderr"].strip() or done["stdout"].strip()).splitlines()[-3:]
            return {**row, "status": "failed", "note": f"exit status {done['rc']}: " + " | ".join(tail)[-400:]}
        try:
            row.update(parse(done, out))
        except (OSError, ValueError, KeyError) as error:
            return {**row, "status": "failed", "note": f"finished, but its results could not be read: {error}"}
        return {**row, "status": "ok"}


def device_description(detected: Any) -> Dict[str, Any]:
    def version(name: str) -> Optional[str]:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    return {"gpus": [{"index": g.index, "name": g.name} for g in detected.gpus], "gpu_detection": detected.how,
            "cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "tensorflow": version("tensorflow") or version("tensorflow-cpu"), "keras": version("keras")}


def run_check(*, budget_s: float, cpu_smoke: bool, only: Optional[List[str]] = None,
              work: Optional[Path] = None, detected: Any = None,
              say: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True)) -> Dict[str, Any]:
    """Runs the measurements within `budget_s` seconds; returns the report (see the module docstring)."""
    started = time.monotonic()
    detected = gpu_detection.detect() if detected is None else detected
    own_work = work is None
    work = Path(tempfile.mkdtemp(prefix="ktk-gpu-check-")) if work is None else work
    check = Check(work, Sizes.for_run(cpu_smoke), list(detected.gpus))
    results = []
    try:
        for measurement in MEASUREMENTS:
            row: Dict[str, Any] = {"id": measurement.id, "group": measurement.group, "mode": measurement.mode}
            left = budget_s - (time.monotonic() - started)
            if measurement.gpu_only and not detected.gpus:
                row.update(status="no GPU", note="needs a GPU; " + detected.how)
            elif only is not None and not any(measurement.id.startswith(prefix) for prefix in only):
                row.update(status="skipped", note="not selected (--only)")
            elif left < MIN_TIMEOUT_S:
                row.update(status="no time", note=f"{max(left, 0):.0f} s of the budget left")
            else:
                say(f"{measurement.id}: {measurement.mode} (timeout {min(measurement.cap_s, left):.0f} s)")
                row.update(check.measure(measurement, min(measurement.cap_s, left)))
                say(f"{measurement.id}: {row['status']} in {row.get('wall_s')} s")
            results.append(row)
    finally:
        if own_work:
            shutil.rmtree(work, ignore_errors=True)
    return {"device": device_description(detected), "cpu_smoke": cpu_smoke, "budget_s": budget_s,
            "elapsed_s": round(time.monotonic() - started, 1), "sizes": check.sizes.__dict__, "results": results}


# ------------------------------------------------------------------------------------------ the report


def _ratio(rows: Dict[str, Dict[str, Any]], top: str, bottom: str, key: str) -> Optional[float]:
    a, b = rows.get(top, {}), rows.get(bottom, {})
    if a.get("status") == "ok" and b.get("status") == "ok" and a.get(key) and b.get(key):
        return round(a[key] / b[key], 2)
    return None


def summary(report: Dict[str, Any]) -> Dict[str, Optional[float]]:
    """The comparisons the issue asks for, as ratios (None where either side did not run)."""
    rows = {row["id"]: row for row in report["results"]}
    return {
        "mlp ktk/plain, process wall time": _ratio(rows, "mlp_ktk", "mlp_plain", "wall_s"),
        "cnn ktk/plain, process wall time": _ratio(rows, "cnn_ktk", "cnn_plain", "wall_s"),
        "cnn mixed_float16/float32, training time": _ratio(rows, "cnn_mixed", "cnn_ktk", "train_s"),
        "cnn jit on/off, training time": _ratio(rows, "cnn_jit_on", "cnn_jit_off", "train_s"),
        "sweep trials/min, 4 workers on 4-per-GPU / 1 worker": _ratio(rows, "sweep_4x4", "sweep_1",
                                                                       "trials_per_min"),
        "mirrored every GPU / one GPU, training time": _ratio(rows, "mirrored_all", "mirrored_one", "train_s"),
    }


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}" if value < 1 else f"{value:.2f}"
    return str(value).replace("|", "\\|")


def markdown(report: Dict[str, Any]) -> str:
    device = report["device"]
    gpus = ", ".join(f"GPU {g['index']}: {g['name']}" for g in device["gpus"]) or "no GPU"
    lines = [f"Device: {gpus}; {device['cpu_count']} CPUs; TensorFlow {device['tensorflow']}, Keras "
             f"{device['keras']}" + (" (--cpu-smoke sizes)" if report["cpu_smoke"] else ""), "",
             "| measurement | mode | status | process wall s | train s | test accuracy | trials | note |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | --- |"]
    for row in report["results"]:
        lines.append("| " + " | ".join(_cell(row.get(key)) for key in (
            "group", "mode", "status", "wall_s", "train_s", "test_accuracy", "trials", "note")) + " |")
    lines += ["", "| comparison | ratio |", "| --- | ---: |"]
    lines += [f"| {name} | {'not measured' if value is None else f'{value:.2f}'} |"
              for name, value in summary(report).items()]
    lines += ["", "process wall s: the whole process, imports and device start-up included. train s: ktk's "
              "metrics.json wall_time_s (data, build, fit, evaluation of three splits); the plain scripts' fit "
              "and evaluation."]
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-s", type=float, default=480.0, help="total time for every measurement")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny sizes, to test the script on a CPU")
    parser.add_argument("--only", help="comma-separated prefixes of measurement ids to run (e.g. mlp,cnn_jit); "
                                       f"ids: {', '.join(IDS)}")
    parser.add_argument("--json", help="where to write the JSON report (default: $OUT/gpu_check.json when OUT "
                                       "is set, else none)")
    args = parser.parse_args(argv)
    only = [p.strip() for p in args.only.split(",") if p.strip()] if args.only else None
    report = run_check(budget_s=args.budget_s, cpu_smoke=args.cpu_smoke, only=only)
    report["summary"] = summary(report)
    target = args.json or (os.path.join(os.environ["OUT"], "gpu_check.json") if os.environ.get("OUT") else None)
    if target:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        Path(target).write_text(json.dumps(report, indent=2) + "\n")
    sys.stdout.write(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
