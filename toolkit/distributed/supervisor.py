"""Local worker processes of a chief: started, restarted under the same id when they die, stopped together.

Each worker is ``python -m toolkit.distributed`` (:mod:`toolkit.distributed.worker`) in a session of its own
(Ctrl-C reaches the supervisor only, which stops the workers in order); its output goes to
``<sweep>/logs/<worker id>.log``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional

from toolkit.distributed.plan import CRASHES_PER_TRIAL, STARTUP_CRASHES, STOP_GRACE_S, LOOPBACK, Address
from toolkit.errors import UserError
from toolkit.hardware.gpus import Assignment
from toolkit.results import CONFIG_FILE, LOGS_DIR, write_json
from toolkit.sweeps.keras_tuner_compat import without_tuner_environment

if TYPE_CHECKING:
    from toolkit.distributed.chief import Chief

WORKERS_FILE = "workers.json"  # <sweep>/logs/workers.json: the process id of each local worker
LOG_SUFFIX = ".log"


@dataclass
class _Slot:
    worker_id: str
    process: Optional[subprocess.Popen] = None
    log_path: Optional[Path] = None
    pump: Optional[threading.Thread] = None
    crashes_on_trial: Dict[str, int] = field(default_factory=dict)
    startup_crashes: int = 0
    restarts: int = 0
    exited: bool = False


class WorkerError(UserError):
    """A user error a worker process stopped on, shown in the worker's own words."""

    def __init__(self, worker_id: str, text: str):
        self.worker_id = worker_id
        self.text = text
        super().__init__(text)

    @property
    def message(self) -> str:  # type: ignore[override]
        return f"{self.text} (worker {self.worker_id}; its log is in the sweep's logs/ folder)"


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}" + (" (out of memory, or kill -9)" if -code == signal.SIGKILL else "")
    return f"exited with status {code}"


def _log_tail(path: Optional[Path], lines: int = 15) -> str:
    if path is None or not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


class Supervisor:
    """Runs N local worker processes; restarts a dead one under the same id; stops them all.

    Each worker is a session of its own (Ctrl-C reaches the supervisor only, which stops the workers in
    order); its output goes to ``<sweep>/logs/<worker id>.log``. Workers may be started before the chief
    serves (they import TensorFlow meanwhile and their handshake waits for it); :meth:`attach` then hands
    them to the chief.

    Args:
        worker_ids: the ids of the workers (``tuner0``, ``tuner1``, ...).
        address: where the workers reach the chief.
        sweep_dir: the sweep directory (their logs go to its logs/ folder once the sweep has its config.yaml).
        verbose: workers show Keras' per-epoch progress (in their logs).
        chief_timeout: how long a worker waits for the chief.
        on_event: called with a line of text when a worker dies or is restarted.
        gpus: the GPU of each worker, in the order of `worker_ids` (None: they see what this process sees).
    """

    def __init__(self, worker_ids: List[str], *, address: Address, sweep_dir: Path, verbose: bool,
                 chief_timeout: float, on_event: Callable[[str], None], gpus: Optional[Assignment] = None):
        self.chief: Optional[Chief] = None
        self.slots = {worker_id: _Slot(worker_id) for worker_id in worker_ids}
        wildcard = {"0.0.0.0": LOOPBACK, "::": "::1"}
        # a chief listening on every interface is reached here on loopback
        self.address = Address(wildcard.get(address.host, address.host), address.port)
        self.sweep_dir = Path(sweep_dir)
        self.verbose = verbose
        self.chief_timeout = chief_timeout
        self.on_event = on_event
        self.gpus = gpus

    def attach(self, chief: Chief) -> None:
        """The chief is serving: it learns which workers are supervised (their liveness is known here)."""
        self.chief = chief
        for worker_id in self.slots:
            chief.supervise(worker_id)
        write_json(self.sweep_dir / LOGS_DIR / WORKERS_FILE, self.pids())

    def _command(self, worker_id: str) -> List[str]:
        command = [sys.executable, "-m", "toolkit.distributed", "--chief", str(self.address),
                   "--worker-id", worker_id, "--out", str(self.sweep_dir),
                   "--chief-timeout", str(self.chief_timeout), "--parent", str(os.getpid())]
        return command + (["--verbose"] if self.verbose else [])

    def environment(self, worker_id: str) -> Dict[str, str]:
        """The environment worker `worker_id` starts with (its trial processes inherit it): this process's,
        without keras-tuner's role variables, with this package first on PYTHONPATH and, with GPUs, its own
        ``CUDA_VISIBLE_DEVICES`` and ``TF_FORCE_GPU_ALLOW_GROWTH``."""
        env = without_tuner_environment(dict(os.environ))  # a worker gets its role by flags
        package_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        if self.gpus is not None:
            env.update(self.gpus.environment(list(self.slots).index(worker_id), env))
        return env

    def start(self, slot: _Slot) -> None:
        if self.chief is not None:
            self.chief.supervise(slot.worker_id)
        slot.log_path = self.sweep_dir / LOGS_DIR / f"{slot.worker_id}{LOG_SUFFIX}"
        slot.process = subprocess.Popen(self._command(slot.worker_id), stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        env=self.environment(slot.worker_id), start_new_session=True)
        slot.pump = threading.Thread(target=_pump, args=(slot.process.stdout, slot.log_path, self._sweep_ready),
                                     name=f"ktk-log-{slot.worker_id}", daemon=True)
        slot.pump.start()
        slot.exited = False
        if self.chief is not None:
            write_json(self.sweep_dir / LOGS_DIR / WORKERS_FILE, self.pids())

    def _sweep_ready(self) -> bool:
        # Nothing may appear in a new sweep directory before its config.yaml: the sweep refuses a folder
        # that is not empty and holds no sweep.
        return (self.sweep_dir / CONFIG_FILE).is_file()

    def start_all(self) -> None:
        for slot in self.slots.values():
            self.start(slot)

    def started(self) -> bool:
        return any(slot.process is not None for slot in self.slots.values())

    def all_exited(self) -> bool:
        return all(slot.exited for slot in self.slots.values())

    def pids(self) -> Dict[str, int]:
        """The process id of each running worker (tests use it to kill one)."""
        return {s.worker_id: s.process.pid for s in self.slots.values() if s.process and not s.exited}

    def poll(self) -> None:
        """Restarts workers that died.

        Raises:
            UserError: a worker stopped on a user error (with its message), or keeps dying before any trial.
        """
        for slot in self.slots.values():
            if slot.exited or slot.process is None:
                continue
            code = slot.process.poll()
            if code is None:
                continue
            _kill_group(slot.process, signal.SIGKILL)  # a trial process it left behind
            if slot.pump is not None:
                slot.pump.join(2.0)  # its last words are in the log
            if code == 0:
                slot.exited = True
            elif code == 2:
                slot.exited = True
                tail = _log_tail(slot.log_path, 8).splitlines()
                message = next((line[len("ktk: error: "):] for line in reversed(tail)
                                if line.startswith("ktk: error: ")), "\n".join(tail))
                raise WorkerError(slot.worker_id, message)
            else:
                self._restart_after_crash(slot, code)

    def _restart_after_crash(self, slot: _Slot, code: int) -> None:
        how = _describe_exit(code)
        trial_id = self.chief.ongoing_trial_id(slot.worker_id) if self.chief is not None else None
        if trial_id is None:
            slot.startup_crashes += 1
            if slot.startup_crashes >= STARTUP_CRASHES:
                slot.exited = True
                raise UserError(f"worker {slot.worker_id} {how} {slot.startup_crashes} times in a row before "
                                f"running a trial; the end of its log ({slot.log_path}):\n{_log_tail(slot.log_path)}",
                                where="--workers")
            what = "restarting it"
        else:
            slot.startup_crashes = 0
            crashes = slot.crashes_on_trial[trial_id] = slot.crashes_on_trial.get(trial_id, 0) + 1
            if crashes >= CRASHES_PER_TRIAL and self.chief is not None:
                self.chief.fail_trial(slot.worker_id, f"its worker process died {crashes} times while running it "
                                                      f"(last: {how})")
                what = f"trial {trial_id} is recorded as failed"
            else:
                what = f"its trial {trial_id} resumes"
        slot.restarts += 1
        self.on_event(f"worker {slot.worker_id} {how}; {what} (restart {slot.restarts}, log {slot.log_path})")
        self.start(slot)

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM to every worker's process group, SIGKILL to what is left after `grace_s`."""
        running = [s.process for s in self.slots.values() if s.process is not None]
        for process in running:
            _kill_group(process, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for process in running:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _kill_group(process, signal.SIGKILL)
            try:
                process.wait(5.0)
            except subprocess.TimeoutExpired:  # stuck in the kernel; nothing more to do from here
                pass
        for slot in self.slots.values():
            if slot.pump is not None:
                slot.pump.join(2.0)


def _pump(stream: Any, log_path: Path, ready: Callable[[], bool]) -> None:
    """Copies a worker's output into its log file, holding it back until the sweep directory is ready."""
    held: List[bytes] = []
    log = None
    try:
        for line in iter(stream.readline, b""):
            if log is None:
                held.append(line)
                if not ready():
                    continue
                log_path.parent.mkdir(parents=True, exist_ok=True)
                log = open(log_path, "ab")
                log.writelines(held)
                held = []
            else:
                log.write(line)
            log.flush()
        if log is None and held and ready():
            log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(log_path, "ab") as late:
                late.writelines(held)
    finally:
        if log is not None:
            log.close()
        stream.close()


def _kill_group(process: subprocess.Popen, sig: int) -> None:
    """Signals a worker's process group (the worker and the trial process it runs)."""
    try:
        os.killpg(process.pid, sig)  # started with start_new_session: its group id is its pid
    except (ProcessLookupError, PermissionError):
        pass


# ----------------------------------------------------------------------------------- entry points
