"""benchmarks/gpu_check.py, the script run when a GPU machine is lent: its configs, its budget and its report.

CI has no GPU: the script's GPU-only measurements are recorded as "no GPU" there, and the rest run at
``--cpu-smoke`` sizes. No figure in these tests is a GPU figure.
"""

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest
import yaml

from helpers import REPO, ktk_here, subprocess_env
from toolkit.hardware.gpus import Detected, Gpu

SCRIPT = REPO / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # (its dataclasses look their module up)
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("gpu_check", None)


def test_the_generated_images_and_every_cnn_config_pass_ktk_validate(gpu_check, tmp_path):
    sizes = gpu_check.Sizes.for_run(cpu_smoke=True)
    npz = tmp_path / "images.npz"
    gpu_check.write_images(npz, 60, 12)
    with np.load(npz) as archive:
        assert archive["x"].shape == (60, 12, 12, 3) and archive["x"].dtype == np.uint8
        assert sorted(set(archive["y"].tolist())) == list(range(10))
    variants = {"float32": {}, "mixed": {"precision": "mixed_float16"}, "jit": {"jit_compile": False},
                "mirrored": {"distribute": {"strategy": "mirrored", "devices": ["GPU:0", "GPU:1"]}}}
    for name, training in variants.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(gpu_check.cnn_config(npz, sizes, **training)))
        done = ktk_here("validate", path)
        assert done.returncode == 0, done.stderr
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump(gpu_check.sweep_config(sizes)))
    assert ktk_here("validate", sweep).returncode == 0


def test_a_spent_budget_runs_nothing_and_still_reports_every_measurement(gpu_check, tmp_path):
    two = Detected((Gpu(0, "H100", "GPU-a"), Gpu(1, "H100", "GPU-b")), "stand-in")
    report = gpu_check.run_check(budget_s=0, cpu_smoke=True, work=tmp_path, detected=two, say=lambda line: None)
    assert [row["id"] for row in report["results"]] == gpu_check.IDS
    assert {row["status"] for row in report["results"]} == {"no time"}  # one of gpu_check.STATUSES
    assert "no time" in gpu_check.STATUSES
    assert report["device"]["gpus"] == [{"index": 0, "name": "H100"}, {"index": 1, "name": "H100"}]
    assert set(gpu_check.summary(report).values()) == {None}
    text = gpu_check.markdown(report)
    assert "Device: GPU 0: H100, GPU 1: H100;" in text
    assert "| mlp ktk/plain, process wall time | not measured |" in text
    assert not any(tmp_path.iterdir())  # nothing was run


@pytest.mark.slow  # two TensorFlow processes at --cpu-smoke sizes
def test_cpu_smoke_run_writes_the_json_report(tmp_path):
    target = tmp_path / "out" / "gpu_check.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--cpu-smoke", "--budget-s", "240", "--only", "mlp",
                           "--json", str(target)], capture_output=True, text=True, env=subprocess_env(),
                          cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(target.read_text())
    assert set(report) == {"device", "cpu_smoke", "budget_s", "elapsed_s", "sizes", "results", "summary"}
    assert report["cpu_smoke"] is True and report["budget_s"] == 240
    rows = {row["id"]: row for row in report["results"]}
    assert list(rows) == ["mlp_plain", "mlp_ktk", "cnn_plain", "cnn_ktk", "cnn_mixed", "cnn_jit_on", "cnn_jit_off",
                          "sweep_1", "sweep_4x4", "mirrored_all", "mirrored_one"]
    for measured in ("mlp_plain", "mlp_ktk"):
        row = rows[measured]
        assert row["status"] == "ok", row
        assert row["wall_s"] > 0 and row["train_s"] > 0 and 0 <= row["test_accuracy"] <= 1
    assert rows["mlp_ktk"]["environment"]["gpus"] == [] or report["device"]["gpus"]
    no_gpu = not report["device"]["gpus"]
    for gpu_only in ("cnn_mixed", "sweep_1", "sweep_4x4", "mirrored_all", "mirrored_one"):
        assert rows[gpu_only]["status"] == ("no GPU" if no_gpu else "skipped")
        assert "wall_s" not in rows[gpu_only]  # never a made-up figure
    assert {rows[i]["status"] for i in ("cnn_plain", "cnn_ktk", "cnn_jit_on", "cnn_jit_off")} == {"skipped"}
    assert report["summary"]["mlp ktk/plain, process wall time"] > 0
    assert "| digits MLP | ktk run | ok |" in done.stdout
