"""Which GPU each local sweep worker process sees: ``ktk tune --workers N [--gpus 0,1] [--per-gpu K]``.

The GPUs are found without TensorFlow (the parent of a sweep never imports it for this): ``nvidia-smi -L``, or
where that command is not installed, ``/proc/driver/nvidia/gpus``; then ``CUDA_VISIBLE_DEVICES``, if set, picks
and orders them as CUDA does. ``--gpus`` indices count the GPUs this process sees, from 0, in ``nvidia-smi -L``'s
order (or ``CUDA_VISIBLE_DEVICES``'s, when set). Each worker sees exactly one GPU (``CUDA_VISIBLE_DEVICES`` set to
that GPU's UUID, or to the entry of this process's ``CUDA_VISIBLE_DEVICES``) and allocates GPU memory as it
needs it (``TF_FORCE_GPU_ALLOW_GROWTH=true``, unless set already), so several workers can share one GPU and no
trial takes a whole one up front. The worker's trial processes inherit both.

- ``--workers N``: workers go round-robin over the GPUs (all of them, or those of ``--gpus``);
- ``--gpus 0,2``: only those GPUs; without ``--workers``, one worker on each;
- ``--per-gpu K``: K workers on each GPU; without ``--workers``, K times the number of GPUs; with it, at
  most that many.

On a machine without GPUs ``--gpus`` and ``--per-gpu`` are refused; ``--workers`` alone changes nothing there.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from toolkit.errors import UserError

VISIBLE_DEVICES = "CUDA_VISIBLE_DEVICES"
ALLOW_GROWTH = "TF_FORCE_GPU_ALLOW_GROWTH"
PROC_GPUS = Path("/proc/driver/nvidia/gpus")
NVIDIA_SMI_TIMEOUT_S = 20.0
MAX_PER_GPU = 64  # more processes than this on one GPU only compete (each holds a CUDA context, ~0.5 GB)

# nvidia-smi -L: "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-5fd1...)"; MIG devices are indented lines under it.
_SMI_LINE = re.compile(r"^GPU (\d+): (.*?) \(UUID: ([^)\s]+)\)\s*$")


@dataclass(frozen=True)
class Gpu:
    """A GPU this process sees.

    Attributes:
        index: its position among the GPUs this process sees (what ``--gpus`` names).
        name: the model, as the driver names it ("NVIDIA H100 80GB HBM3"), or "" where unknown.
        cuda_id: what a worker's ``CUDA_VISIBLE_DEVICES`` is set to: the GPU's UUID, or the index this process's
            own ``CUDA_VISIBLE_DEVICES`` gives.
    """

    index: int
    name: str
    cuda_id: str

    def __str__(self) -> str:
        return f"GPU {self.index}" + (f" ({self.name})" if self.name else "")


@dataclass(frozen=True)
class Detected:
    """The GPUs this process sees, and how they were found (said when there are none)."""

    gpus: Tuple[Gpu, ...]
    how: str  # "nvidia-smi -L: 2 GPUs", "nvidia-smi: not found; /proc/driver/nvidia/gpus: absent", ...


@dataclass(frozen=True)
class Assignment:
    """The GPU of each local worker, in worker order (worker i is ``tuner<i>``)."""

    gpus: Tuple[Gpu, ...]

    @property
    def workers(self) -> int:
        return len(self.gpus)

    def environment(self, worker: int, base: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
        """The variables worker number `worker` starts with, on top of `base` (its parent's environment)."""
        base = {} if base is None else base
        return {VISIBLE_DEVICES: self.gpus[worker].cuda_id, ALLOW_GROWTH: base.get(ALLOW_GROWTH) or "true"}

    def describe(self, worker_ids: Sequence[str]) -> str:
        """One line for the sweep's log: which worker runs on which GPU."""
        return "GPUs of the workers: " + ", ".join(f"{worker_id} on {gpu}"
                                                   for worker_id, gpu in zip(worker_ids, self.gpus))


# ------------------------------------------------------------------------------------------ detection


def parse_nvidia_smi(text: str) -> List[Tuple[str, str]]:
    """``(name, uuid)`` of each GPU in ``nvidia-smi -L`` output, in its order (MIG devices are not listed)."""
    found = []
    for line in text.splitlines():
        match = _SMI_LINE.match(line)
        if match:
            found.append((match.group(2).strip(), match.group(3)))
    return found


def read_proc_gpus(root: Path = PROC_GPUS) -> List[Tuple[str, str]]:
    """``(name, uuid)`` of each GPU the NVIDIA driver lists under /proc, in PCI bus order (nvidia-smi's)."""
    found = []
    for folder in sorted(root.iterdir(), key=lambda p: p.name.lower()) if root.is_dir() else []:
        fields = {}
        try:
            text = (folder / "information").read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
        found.append((fields.get("Model", ""), fields.get("GPU UUID", "")))
    return found


def _run_nvidia_smi(command: str) -> Optional[str]:
    """The output of ``nvidia-smi -L``, or None when it fails (no driver, no device)."""
    try:
        done = subprocess.run([command, "-L"], capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def physical_gpus(which: Callable[[str], Optional[str]] = shutil.which,
                  run: Callable[[str], Optional[str]] = _run_nvidia_smi,
                  proc_root: Path = PROC_GPUS) -> Tuple[List[Tuple[str, str]], str]:
    """Every NVIDIA GPU of this machine as ``(name, uuid)``, in nvidia-smi's order, and how they were found."""
    command = which("nvidia-smi")
    if command is not None:
        output = run(command)
        if output is None:
            return [], "nvidia-smi -L failed (no NVIDIA driver or no GPU)"
        found = parse_nvidia_smi(output)
        return found, f"nvidia-smi -L lists {len(found)} GPU(s)"
    found = read_proc_gpus(proc_root)
    if found:
        return found, f"{proc_root} lists {len(found)} GPU(s)"
    return [], f"nvidia-smi not found, and no {proc_root}"


def visible_gpus(physical: Sequence[Tuple[str, str]], visible_devices: Optional[str]) -> List[Gpu]:
    """The GPUs this process sees: `physical` as CUDA_VISIBLE_DEVICES picks and orders them (unset: all).

    As CUDA does, the list ends at the first entry that names no GPU, and "" or "-1" hides every GPU. Entries
    may be indices (into nvidia-smi's order) or UUIDs (``GPU-...``, a unique prefix is enough).
    """
    if visible_devices is None:
        return [Gpu(i, name, uuid or str(i)) for i, (name, uuid) in enumerate(physical)]
    chosen: List[Gpu] = []
    seen = set()
    for entry in (e.strip() for e in visible_devices.split(",")):
        if re.fullmatch(r"[0-9]{1,4}", entry):
            position = int(entry)
            if position >= len(physical):
                break
        else:
            matches = [i for i, (_, uuid) in enumerate(physical) if uuid and uuid.startswith(entry)] if entry else []
            if len(matches) != 1:
                break
            position = matches[0]
        if position in seen:
            break
        seen.add(position)
        name, uuid = physical[position]
        # an index is passed on as given: the worker's CUDA reads it as this process's CUDA did
        chosen.append(Gpu(len(chosen), name, entry if entry.isdecimal() and entry.isascii() else uuid))
    return chosen


def detect(environ: Optional[Mapping[str, str]] = None, *,
           which: Callable[[str], Optional[str]] = shutil.which,
           run: Callable[[str], Optional[str]] = _run_nvidia_smi, proc_root: Path = PROC_GPUS) -> Detected:
    """The GPUs this process sees, found without TensorFlow (`which`, `run`, `proc_root`: see
    :func:`physical_gpus`; tests pass their own)."""
    environ = os.environ if environ is None else environ
    physical, how = physical_gpus(which=which, run=run, proc_root=proc_root)
    visible_devices = environ.get(VISIBLE_DEVICES)
    gpus = visible_gpus(physical, visible_devices)
    if visible_devices is not None and len(gpus) != len(physical):
        how += f"; {VISIBLE_DEVICES}={visible_devices!r} shows {len(gpus)}"
    return Detected(tuple(gpus), how)


# ------------------------------------------------------------------------------------------ assignment


def parse_gpu_list(text: str, count: int) -> List[int]:
    """``--gpus 0,2``: distinct indices of GPUs this process sees (there are `count`).

    Raises:
        UserError: not a list of whole numbers, a GPU named twice, or one that is not there.
    """
    expected = "GPU indices separated by commas, e.g. --gpus 0,1"
    entries = [entry.strip() for entry in str(text).split(",")]
    if not all(re.fullmatch(r"[0-9]{1,4}", entry) for entry in entries):  # (str.isdigit takes '²', '٣'...)
        raise UserError(where="--gpus", expected=expected, received=text)
    indices = [int(entry) for entry in entries]
    if len(set(indices)) != len(indices):
        raise UserError("a GPU is named twice", where="--gpus", expected="each GPU once", received=text)
    missing = [i for i in indices if i >= count]
    if missing:
        raise UserError(f"there is no GPU {missing[0]}: this process sees {count} GPU(s), numbered from 0",
                        where="--gpus", expected=f"indices from 0 to {count - 1}", received=text)
    return indices


def assign(detected: Detected, *, workers: Optional[int] = None, gpus: Optional[str] = None,
           per_gpu: Optional[int] = None) -> Optional[Assignment]:
    """The GPU of each local worker, from the GPUs seen and the ``--workers``, ``--gpus``, ``--per-gpu`` flags.

    Returns:
        None where there is nothing to assign: no GPU and no GPU flag (workers then run on the CPU, as always),
        or no worker asked for.

    Raises:
        UserError: a GPU flag without GPUs, a bad ``--gpus`` list, ``--per-gpu`` below 1 or too high, or more
            ``--workers`` than ``--per-gpu`` allows.
    """
    if per_gpu is not None and (isinstance(per_gpu, bool) or not isinstance(per_gpu, int)
                                or not 1 <= per_gpu <= MAX_PER_GPU):
        raise UserError(where="--per-gpu", expected=f"a whole number of workers per GPU, 1 to {MAX_PER_GPU}",
                        received=per_gpu)
    if not detected.gpus:
        flag = "--gpus" if gpus is not None else "--per-gpu" if per_gpu is not None else None
        if flag is None:
            return None
        raise UserError(f"there is no GPU to give the workers ({detected.how}); leave out {flag} to run the "
                        "workers on the CPU", where=flag, expected="a machine with NVIDIA GPUs",
                        received="no GPU")
    chosen = list(detected.gpus)
    if gpus is not None:
        chosen = [detected.gpus[i] for i in parse_gpu_list(gpus, len(detected.gpus))]
    if workers is None:
        if gpus is None and per_gpu is None:
            return None
        workers = len(chosen) * (per_gpu or 1)
    elif per_gpu is not None and workers > len(chosen) * per_gpu:
        raise UserError(f"--per-gpu {per_gpu} on {len(chosen)} GPU(s) runs at most {len(chosen) * per_gpu} "
                        "workers", where="--workers", expected=f"at most {len(chosen) * per_gpu} (or a higher "
                        "--per-gpu)", received=workers)
    return Assignment(tuple(chosen[i % len(chosen)] for i in range(workers)))
