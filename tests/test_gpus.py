"""GPUs of sweep workers (``ktk tune --workers N --gpus LIST --per-gpu K``): detection, assignment, refusals.

CI has no GPU: the assignment is tested on injected GPU lists, the command line with a stand-in ``nvidia-smi``
on PATH (and on this machine's real absence of GPUs), and the worker's environment through the supervisor.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import IRIS_SWEEP, ktk_here, subprocess_env
from toolkit.distributed import Address, Supervisor, plan
from toolkit.errors import UserError
from toolkit.hardware import gpus
from toolkit.hardware.gpus import Detected, Gpu

SMI = """\
GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-aaaa1111)
GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-bbbb2222)
  MIG 1g.10gb     Device  0: (UUID: MIG-cccc3333)
GPU 2: NVIDIA A10 (UUID: GPU-dddd4444)
"""
PHYSICAL = [("NVIDIA H100 80GB HBM3", "GPU-aaaa1111"), ("NVIDIA H100 80GB HBM3", "GPU-bbbb2222"),
            ("NVIDIA A10", "GPU-dddd4444")]


def two_gpus():
    return Detected((Gpu(0, "H100", "GPU-a"), Gpu(1, "H100", "GPU-b")), "nvidia-smi -L lists 2 GPU(s)")


NO_GPU = Detected((), "nvidia-smi not found, and no /proc/driver/nvidia/gpus")


def placed(assignment):
    return [gpu.index for gpu in assignment.gpus]


# ------------------------------------------------------------------------------------------ detection


def test_nvidia_smi_lines_are_read_and_mig_devices_left_out():
    assert gpus.parse_nvidia_smi(SMI) == PHYSICAL
    assert gpus.parse_nvidia_smi("No devices were found\n") == []


def test_the_driver_s_proc_files_are_read_in_bus_order(tmp_path):
    for bus, model, uuid in (("0000:41:00.0", "NVIDIA A10", "GPU-2"), ("0000:01:00.0", "NVIDIA L4", "GPU-1")):
        (tmp_path / bus).mkdir()
        (tmp_path / bus / "information").write_text(f"Model: \t\t {model}\nIRQ:   42\nGPU UUID: \t {uuid}\n")
    assert gpus.read_proc_gpus(tmp_path) == [("NVIDIA L4", "GPU-1"), ("NVIDIA A10", "GPU-2")]
    assert gpus.read_proc_gpus(tmp_path / "absent") == []


def test_physical_gpus_come_from_nvidia_smi_else_proc(tmp_path):
    found, how = gpus.physical_gpus(which=lambda name: "/bin/nvidia-smi", run=lambda command: SMI)
    assert (found, how) == (PHYSICAL, "nvidia-smi -L lists 3 GPU(s)")
    # nvidia-smi that fails: the driver cannot reach a GPU; /proc is not asked
    assert gpus.physical_gpus(which=lambda name: "/bin/nvidia-smi", run=lambda command: None) == (
        [], "nvidia-smi -L failed (no NVIDIA driver or no GPU)")
    (tmp_path / "0000:01:00.0").mkdir()
    (tmp_path / "0000:01:00.0" / "information").write_text("Model: NVIDIA L4\nGPU UUID: GPU-1\n")
    assert gpus.physical_gpus(which=lambda name: None, proc_root=tmp_path) == (
        [("NVIDIA L4", "GPU-1")], f"{tmp_path} lists 1 GPU(s)")
    assert gpus.physical_gpus(which=lambda name: None, proc_root=tmp_path / "no") == (
        [], f"nvidia-smi not found, and no {tmp_path / 'no'}")


@pytest.mark.parametrize("visible, expected", [
    (None, [(0, "GPU-aaaa1111"), (1, "GPU-bbbb2222"), (2, "GPU-dddd4444")]),  # all, by UUID
    ("2,0", [(0, "2"), (1, "0")]),  # CUDA's order; an index is passed on as given
    ("GPU-bbbb", [(0, "GPU-bbbb2222")]),  # a unique UUID prefix
    ("1,7,0", [(0, "1")]),  # as CUDA: the list ends at the first entry that names no GPU
    ("0,0", [(0, "0")]),
    ("GPU-", []),  # a prefix of every UUID names none
    ("", []),
    ("-1", []),
])
def test_cuda_visible_devices_picks_and_orders_the_gpus(visible, expected):
    seen = gpus.visible_gpus(PHYSICAL, visible)
    assert [(gpu.index, gpu.cuda_id) for gpu in seen] == expected


def test_detect_says_how_it_found_the_gpus():
    detected = gpus.detect({"CUDA_VISIBLE_DEVICES": "2"}, which=lambda name: "/bin/nvidia-smi", run=lambda c: SMI)
    assert detected.gpus == (Gpu(0, "NVIDIA A10", "2"),)
    assert detected.how == "nvidia-smi -L lists 3 GPU(s); CUDA_VISIBLE_DEVICES='2' shows 1"
    assert str(detected.gpus[0]) == "GPU 0 (NVIDIA A10)"


# ------------------------------------------------------------------------------------------ assignment


def test_workers_go_round_robin_over_every_gpu_and_grow_their_memory():
    assignment = gpus.assign(two_gpus(), workers=5)
    assert placed(assignment) == [0, 1, 0, 1, 0]
    assert assignment.environment(3) == {"CUDA_VISIBLE_DEVICES": "GPU-b", "TF_FORCE_GPU_ALLOW_GROWTH": "true"}
    # a setting of the user's own is kept
    assert assignment.environment(0, {"TF_FORCE_GPU_ALLOW_GROWTH": "false"})["TF_FORCE_GPU_ALLOW_GROWTH"] == "false"
    assert assignment.describe(["tuner0", "tuner1"]) == ("GPUs of the workers: tuner0 on GPU 0 (H100), tuner1 on "
                                                         "GPU 1 (H100)")


def test_gpus_and_per_gpu_set_the_worker_count_when_workers_is_not_given():
    assert placed(gpus.assign(two_gpus(), gpus="1")) == [1]
    assert placed(gpus.assign(two_gpus(), gpus="1,0")) == [1, 0]
    assert placed(gpus.assign(two_gpus(), per_gpu=3)) == [0, 1, 0, 1, 0, 1]
    assert placed(gpus.assign(two_gpus(), gpus="1", per_gpu=2)) == [1, 1]
    assert placed(gpus.assign(two_gpus(), workers=3, gpus="0")) == [0, 0, 0]
    assert placed(gpus.assign(two_gpus(), workers=3, per_gpu=2)) == [0, 1, 0]  # at most 2 on each
    assert placed(gpus.assign(two_gpus(), workers=4, per_gpu=2)) == [0, 1, 0, 1]


def test_nothing_is_assigned_without_gpus_or_without_a_gpu_flag():
    assert gpus.assign(NO_GPU, workers=4) is None  # --workers alone on the CPU: as before
    assert gpus.assign(two_gpus()) is None  # no worker asked for


@pytest.mark.parametrize("kwargs, message", [
    ({"gpus": "0,0"}, "--gpus: a GPU is named twice; expected each GPU once; received '0,0'."),
    ({"gpus": "0,one"}, "--gpus: expected GPU indices separated by commas, e.g. --gpus 0,1; received '0,one'."),
    ({"gpus": "-1"}, "--gpus: expected GPU indices separated by commas, e.g. --gpus 0,1; received '-1'."),
    ({"gpus": ""}, "--gpus: expected GPU indices separated by commas, e.g. --gpus 0,1; received ''."),
    ({"gpus": "0,2"}, "--gpus: there is no GPU 2: this process sees 2 GPU(s), numbered from 0; expected indices "
                      "from 0 to 1; received '0,2'."),
    ({"per_gpu": 0}, "--per-gpu: expected a whole number of workers per GPU, 1 to 64; received 0."),
    ({"per_gpu": 65}, "--per-gpu: expected a whole number of workers per GPU, 1 to 64; received 65."),
    ({"workers": 5, "per_gpu": 2}, "--workers: --per-gpu 2 on 2 GPU(s) runs at most 4 workers; expected at most "
                                   "4 (or a higher --per-gpu); received 5."),
    ({"workers": 3, "gpus": "1", "per_gpu": 2}, "--workers: --per-gpu 2 on 1 GPU(s) runs at most 2 workers; "
                                                "expected at most 2 (or a higher --per-gpu); received 3."),
])
def test_bad_gpu_flags_are_refused(kwargs, message):
    with pytest.raises(UserError) as caught:
        gpus.assign(two_gpus(), **kwargs)
    assert str(caught.value) == message


@pytest.mark.parametrize("kwargs, flag", [({"gpus": "0"}, "--gpus"), ({"per_gpu": 2}, "--per-gpu"),
                                          ({"workers": 2, "per_gpu": 1}, "--per-gpu"),
                                          ({"gpus": "0", "per_gpu": 1}, "--gpus")])
def test_gpu_flags_are_refused_on_a_machine_without_gpus(kwargs, flag):
    with pytest.raises(UserError) as caught:
        gpus.assign(NO_GPU, **kwargs)
    assert str(caught.value) == (
        f"{flag}: there is no GPU to give the workers (nvidia-smi not found, and no /proc/driver/nvidia/gpus); "
        f"leave out {flag} to run the workers on the CPU; expected a machine with NVIDIA GPUs; received 'no GPU'.")


def test_the_plan_takes_its_worker_count_from_the_gpus():
    planned = plan(per_gpu=2, detected=two_gpus())
    assert (planned.role, planned.workers, placed(planned.gpus)) == ("chief", 4, [0, 1, 0, 1])
    assert plan(workers=3, detected=NO_GPU).gpus is None
    assert plan(role="chief", gpus="1", detected=two_gpus()).workers == 1
    with pytest.raises(UserError) as caught:
        plan(per_gpu=64, detected=Detected(tuple(Gpu(i, "", str(i)) for i in range(64)), "test"))
    assert str(caught.value).startswith("--per-gpu: more worker processes than this machine can run")
    with pytest.raises(UserError) as caught:
        plan(chief="h:1", gpus="0", detected=two_gpus())
    assert str(caught.value) == (
        "--gpus: a worker uses the GPUs its environment shows it (e.g. CUDA_VISIBLE_DEVICES=1 ktk tune ... --role "
        "worker); --gpus and --per-gpu place the local workers of a chief; received '0'.")


def test_each_supervised_worker_starts_with_its_own_gpu(tmp_path, monkeypatch):
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "chief")  # the chief's own role never reaches a worker
    monkeypatch.delenv("TF_FORCE_GPU_ALLOW_GROWTH", raising=False)
    assignment = gpus.assign(two_gpus(), workers=3)
    supervisor = Supervisor(["tuner0", "tuner1", "tuner2"], address=Address("127.0.0.1", 1), sweep_dir=tmp_path,
                            verbose=False, chief_timeout=5.0, on_event=print, gpus=assignment)
    environments = [supervisor.environment(worker_id) for worker_id in ("tuner0", "tuner1", "tuner2")]
    assert [env["CUDA_VISIBLE_DEVICES"] for env in environments] == ["GPU-a", "GPU-b", "GPU-a"]
    assert {env["TF_FORCE_GPU_ALLOW_GROWTH"] for env in environments} == {"true"}
    assert not any("KERASTUNER_TUNER_ID" in env for env in environments)
    # without GPUs the workers see what this process sees
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7")
    plain = Supervisor(["tuner0"], address=Address("127.0.0.1", 1), sweep_dir=tmp_path, verbose=False,
                       chief_timeout=5.0, on_event=print)
    assert plain.environment("tuner0")["CUDA_VISIBLE_DEVICES"] == "7"
    assert "TF_FORCE_GPU_ALLOW_GROWTH" not in plain.environment("tuner0")


# ------------------------------------------------------------------------------------------ the command line

SWEEP = {**IRIS_SWEEP, "name": "iris-gpus", "training": {**IRIS_SWEEP["training"], "epochs": 1},
         "search": {"max_trials": 1, "trials_per_process": "inline",
                    "space": {"model.dropout": {"float": [0.0, 0.5]}}}}


@pytest.fixture()
def config_file(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(SWEEP, sort_keys=False))
    return path


def fake_nvidia_smi(folder: Path, output: str = SMI, status: int = 0) -> Path:
    """An `nvidia-smi` on PATH that prints `output` (a machine with those GPUs, as ktk sees it)."""
    folder.mkdir(exist_ok=True)
    script = folder / "nvidia-smi"
    script.write_text(f"#!/bin/sh\ncat <<'EOF'\n{output}EOF\nexit {status}\n")
    script.chmod(0o755)
    return folder


def refused(*args):
    done = ktk_here(*args)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("ktk: error: ") and "Traceback" not in done.stderr
    return done.stderr[len("ktk: error: "):].strip()


def test_the_cli_refuses_gpu_flags_without_gpus(tmp_path, config_file, monkeypatch):
    # nvidia-smi that cannot reach a driver (as on a machine without GPUs, whatever /proc holds)
    bin_dir = fake_nvidia_smi(tmp_path / "bin", "NVIDIA-SMI has failed because it couldn't communicate with the "
                                                "NVIDIA driver.\n", status=9)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    out = tmp_path / "sweep"
    assert refused("tune", config_file, "--out", out, "--workers", "2", "--gpus", "0") == (
        "--gpus: there is no GPU to give the workers (nvidia-smi -L failed (no NVIDIA driver or no GPU)); leave out "
        "--gpus to run the workers on the CPU; expected a machine with NVIDIA GPUs; received 'no GPU'.")
    assert refused("tune", config_file, "--out", out, "--per-gpu", "2").startswith(
        "--per-gpu: there is no GPU to give the workers (")
    assert not out.exists()


def test_the_cli_refuses_gpu_flags_on_this_machine_when_it_has_no_gpu(tmp_path, config_file):
    if gpus.detect().gpus:  # pragma: no cover - a developer's GPU machine; CI has none
        pytest.xfail("this machine has GPUs")
    assert "expected a machine with NVIDIA GPUs; received 'no GPU'." in refused(
        "tune", config_file, "--out", tmp_path / "sweep", "--gpus", "0")


def test_the_cli_checks_gpu_flags_against_the_gpus_it_sees(tmp_path, config_file, monkeypatch):
    monkeypatch.setenv("PATH", f"{fake_nvidia_smi(tmp_path / 'bin')}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    out = tmp_path / "sweep"
    assert refused("tune", config_file, "--out", out, "--gpus", "3") == (
        "--gpus: there is no GPU 3: this process sees 3 GPU(s), numbered from 0; expected indices from 0 to 2; "
        "received '3'.")
    assert refused("tune", config_file, "--out", out, "--workers", "7", "--per-gpu", "2") == (
        "--workers: --per-gpu 2 on 3 GPU(s) runs at most 6 workers; expected at most 6 (or a higher --per-gpu); "
        "received 7.")
    assert refused("tune", config_file, "--out", out, "--per-gpu", "0").startswith("--per-gpu: expected a whole")
    assert refused("tune", config_file, "--chief", "h:1", "--per-gpu", "1").startswith(
        "--per-gpu: a worker uses the GPUs its environment shows it")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # hides every GPU
    assert refused("tune", config_file, "--out", out, "--gpus", "0") == (
        "--gpus: there is no GPU to give the workers (nvidia-smi -L lists 3 GPU(s); CUDA_VISIBLE_DEVICES='' shows "
        "0); leave out --gpus to run the workers on the CPU; expected a machine with NVIDIA GPUs; received 'no GPU'.")
    assert not out.exists()
    not_a_number = ktk_here("tune", config_file, "--per-gpu", "x")
    assert not_a_number.returncode == 2
    assert "ktk: error: argument --per-gpu: invalid int value: 'x'" in not_a_number.stderr


def test_gpu_flags_are_checked_without_importing_tensorflow(tmp_path, config_file):
    code = ("import sys; from toolkit.cli import main; "
            f"code = main(['tune', {str(config_file)!r}, '--out', {str(tmp_path / 'sweep')!r}, '--gpus', '0']); "
            "print(code, 'tensorflow' in sys.modules, 'keras_tuner' in sys.modules)")
    env = subprocess_env(PATH=f"{fake_nvidia_smi(tmp_path / 'bin', '', status=9)}{os.pathsep}{os.environ['PATH']}")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.stdout.strip() == "2 False False", done.stderr


@pytest.mark.slow  # a chief and a worker process, each importing TensorFlow
def test_a_worker_runs_its_trials_with_its_gpu_in_its_environment(tmp_path, config_file):
    # A stand-in nvidia-smi names one GPU; TensorFlow in the worker finds no CUDA device and trains on the CPU.
    bin_dir = fake_nvidia_smi(tmp_path / "bin", "GPU 0: Stand-in GPU (UUID: GPU-0000fake)\n")
    env = subprocess_env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    env.pop("TF_FORCE_GPU_ALLOW_GROWTH", None)
    out = tmp_path / "sweep"
    done = subprocess.run([sys.executable, "-m", "toolkit", "tune", str(config_file), "--out", str(out), "--gpus",
                           "0"], capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "GPUs of the workers: tuner0 on GPU 0 (Stand-in GPU)" in done.stdout.splitlines()
    log = (out / "logs" / "tuner0.log").read_text()
    assert "worker tuner0: CUDA_VISIBLE_DEVICES=GPU-0000fake TF_FORCE_GPU_ALLOW_GROWTH=true" in log.splitlines()
    assert "tuner0" in (out / "trials.csv").read_text()
