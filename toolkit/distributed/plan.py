"""What this process does in a distributed sweep: its role, addresses and worker ids, from the ``tune`` flags.

Every flag combination is checked here, before anything starts or is written.
"""

from __future__ import annotations

import math
import os
import re
import socket
from dataclasses import dataclass
from typing import Optional

from toolkit.addresses import Address, parse_address  # noqa: F401 - part of this module's API
from toolkit.errors import UserError
from toolkit.hardware import gpus as gpu_assignment
from toolkit.hardware.gpus import Assignment, Detected

LOOPBACK = "127.0.0.1"
CHIEF_TIMEOUT_S = 120.0  # how long a worker waits for an absent chief before giving up
HEARTBEAT_S = 5.0  # how often a worker tells the chief it is alive
WORKER_LEASE_S = 60.0  # a remote worker silent this long loses its trial to the queue
CRASHES_PER_TRIAL = 3  # a trial whose worker dies this many times is recorded as failed
STARTUP_CRASHES = 3  # a worker that dies this many times in a row before any trial stops the sweep
STOP_GRACE_S = 10.0  # how long stopping workers may take before they are killed
IDLE_DELAY_S = 0.5  # how long the chief holds an "ask again later" answer
MAX_CHIEF_TIMEOUT_S = 86400.0  # --chief-timeout above a day is refused (gRPC deadlines must be finite)
MAX_WORKERS_PER_CORE = 4  # --workers above this many per core is refused (they would only compete)
WORKER_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_worker_id(worker_id: str, *, flag: str = "--worker-id") -> str:
    """A worker id is a short name; keras-tuner treats any id containing 'chief' as the chief."""
    if not isinstance(worker_id, str) or not WORKER_ID_PATTERN.match(worker_id):
        raise UserError(where=flag, expected="a name of letters, digits, '.', '_' or '-' (at most 64)",
                        received=worker_id)
    if "chief" in worker_id.lower():
        raise UserError("keras-tuner reserves ids containing 'chief' for the chief", where=flag,
                        received=worker_id)
    return worker_id


def default_worker_id() -> str:
    """``<host>-<pid>``: unique on a machine; pass --worker-id for one that survives a restart."""
    host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:40] or "worker"
    return re.sub("(?i)chief", "chf", f"{host}-{os.getpid()}")


@dataclass(frozen=True)
class Plan:
    """What this process does in a distributed sweep, from the tune flags."""

    role: str  # "chief" (with `workers` local workers, maybe 0) or "worker"
    workers: int = 0
    listen: Optional[Address] = None
    chief: Optional[Address] = None
    worker_id: Optional[str] = None
    gpus: Optional[Assignment] = None  # the GPU of each local worker (None: no GPU, or none to assign)


def plan(*, workers: Optional[int] = None, role: Optional[str] = None, listen: Optional[str] = None,
         chief: Optional[str] = None, worker_id: Optional[str] = None, overwrite: bool = False,
         chief_timeout: Optional[float] = None, gpus: Optional[str] = None, per_gpu: Optional[int] = None,
         detected: Optional[Detected] = None) -> Plan:
    """Checks the combination of distributed flags and says what this process does.

    ``--chief`` implies ``--role worker`` and ``--listen`` implies ``--role chief``. Local workers get GPUs as
    :func:`toolkit.hardware.gpus.assign` says (`gpus` and `per_gpu` are ``--gpus`` and ``--per-gpu``; with
    ``--per-gpu`` or ``--gpus`` and no ``--workers``, they set the number of workers).

    Args:
        detected: the GPUs this process sees (default: :func:`toolkit.hardware.gpus.detect`, when needed).

    Raises:
        UserError: for a combination that does not make sense, naming the flag.
    """
    if role is None:
        role = "worker" if chief is not None else "chief"
    if role not in ("chief", "worker"):
        raise UserError("unknown role", where="--role", received=role, choices=["chief", "worker"])
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise UserError(where="--workers", expected="a whole number of worker processes, 1 or more",
                        received=workers)
    if role == "worker":
        for flag, value in (("--gpus", gpus), ("--per-gpu", per_gpu)):
            if value is not None:
                raise UserError("a worker uses the GPUs its environment shows it (e.g. CUDA_VISIBLE_DEVICES=1 "
                                "ktk tune ... --role worker); --gpus and --per-gpu place the local workers of a "
                                "chief", where=flag, received=value)
    workers_flag = "--workers" if workers is not None else "--per-gpu" if per_gpu is not None else "--gpus"
    assignment = None
    if role == "chief" and (workers is not None or gpus is not None or per_gpu is not None):
        assignment = gpu_assignment.assign(gpu_assignment.detect() if detected is None else detected,
                                           workers=workers, gpus=gpus, per_gpu=per_gpu)
        if assignment is not None:
            workers = assignment.workers
    most = MAX_WORKERS_PER_CORE * (os.cpu_count() or 1)
    if workers is not None and workers > most:  # each one imports TensorFlow and trains on these cores
        raise UserError(f"more worker processes than this machine can run ({os.cpu_count()} cores)",
                        where=workers_flag, expected=f"at most {most}", received=workers)
    if chief_timeout is not None:
        _check_chief_timeout(chief_timeout)
    if role == "worker":
        if workers is not None:
            raise UserError("a worker does not start workers; start them with --workers on the chief",
                            where="--workers", received=workers)
        if listen is not None:
            raise UserError("a worker does not listen; it connects to the chief with --chief", where="--listen",
                            received=listen)
        if overwrite:
            raise UserError("workers never delete the shared sweep directory; use --overwrite on the chief",
                            where="--overwrite")
        if chief is None:
            raise UserError("a worker needs the chief's address", where="--chief",
                            expected="HOST:PORT, e.g. --chief 10.0.0.5:8470")
        return Plan("worker", chief=parse_address(chief, flag="--chief"),
                    worker_id=check_worker_id(worker_id) if worker_id is not None else default_worker_id())
    if chief is not None:
        raise UserError("the chief does not connect to a chief; it listens with --listen", where="--chief",
                        received=chief)
    if worker_id is not None:
        raise UserError("only a worker (--role worker) has a worker id", where="--worker-id", received=worker_id)
    if chief_timeout is not None:
        raise UserError("only a worker (--role worker) waits for a chief", where="--chief-timeout",
                        received=chief_timeout)
    address = parse_address(listen, flag="--listen", default_port=0) if listen is not None else Address(LOOPBACK, 0)
    free_port(address.host, address.port)  # a host that is not this machine's, or a port in use: said now
    return Plan("chief", workers=workers or 0, listen=address, gpus=assignment)


def _check_chief_timeout(seconds: float) -> None:
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:  # NaN too
        raise UserError(where="--chief-timeout", expected="a number of seconds above 0", received=seconds)
    if not (math.isfinite(seconds) and seconds <= MAX_CHIEF_TIMEOUT_S):
        raise UserError(where="--chief-timeout", expected=f"at most {MAX_CHIEF_TIMEOUT_S:g} seconds (a day)",
                        received=seconds)


def free_port(host: str, port: int = 0) -> int:
    """`port` (0: any port) if it is free on `host` now; the chief binds it a few seconds later, exclusively.

    Raises:
        UserError: `host` is not an address of this machine, or the port is in use.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            # as gRPC binds: a port still in TIME_WAIT from a chief that just died is free to use again
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
            return probe.getsockname()[1]
    except (OSError, ValueError) as error:  # gaierror (unknown host) is an OSError; a bad host name a ValueError
        reason = getattr(error, "strerror", None) or error
        raise UserError(f"the chief cannot listen there ({reason}): the port is in use, or the host is not an "
                        f"address of this machine", where="--listen",
                        received=str(Address(host, port)) if port else host) from None

