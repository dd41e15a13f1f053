"""Chief/worker sweeps across processes and machines, on keras-tuner's gRPC engine, supervised.

keras-tuner already ships the engine: one chief serves the oracle over gRPC and workers ask it for trials,
train them and report back, all writing into one shared project directory. This module makes that safe:

- ``ktk tune CONFIG --workers N`` runs the chief inside this process (on loopback, a free port) and N
  worker processes, restarts a worker that dies under the same worker id (keras-tuner then hands it the
  trial it was running), prints one line per finished trial and stops everything cleanly on Ctrl-C.
- ``--role chief --listen HOST:PORT`` and ``--role worker --chief HOST:PORT`` split the same sweep over
  several machines that share the sweep directory.

Hazards of keras-tuner 1.4.8 handled here (measured; see docs/distributed.md):

- the chief polls every 20 s before exiting and never exits while a dead worker holds a trial: the chief is
  served by our own loop, which ends as soon as every trial is finished and every worker has been told
  to stop; a remote worker that stops sending heartbeats loses its trial to the queue after a lease;
- the chief's last ``oracle.json`` lists the last trial as still running (it is saved before the trial is
  popped), so a resume would run it again: the chief saves the oracle once more when it stops;
- a worker started with ``overwrite=True`` deletes the shared project: workers never overwrite;
- workers wait up to an hour for an absent chief: here a worker gives up after ``chief_timeout``
  seconds with a clear :class:`UserError`;
- gRPC servers share ports (SO_REUSEPORT) by default, so two chiefs could silently split one port:
  the chief binds exclusively.

The gRPC channel has no authentication and no encryption: bind to loopback (the default) or a trusted
network only.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from toolkit.errors import UserError

LOOPBACK = "127.0.0.1"
CHIEF_TIMEOUT_S = 120.0  # how long a worker waits for an absent chief before giving up
HEARTBEAT_S = 5.0  # how often a worker tells the chief it is alive
WORKER_LEASE_S = 60.0  # a remote worker silent this long loses its trial to the queue
CRASHES_PER_TRIAL = 3  # a trial whose worker dies this many times is recorded as failed
STARTUP_CRASHES = 3  # a worker that dies this many times in a row before any trial stops the sweep
STOP_GRACE_S = 10.0  # how long stopping workers may take before they are killed
WORKER_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_SERVICE = "ktk.Sweep"


# ----------------------------------------------------------------------------------- addresses, flags


@dataclass(frozen=True)
class Address:
    """A host and port the chief listens on or a worker connects to."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_address(text: str, *, flag: str, default_port: Optional[int] = None) -> Address:
    """Parses ``HOST:PORT`` (``[::1]:PORT`` for IPv6); ``HOST`` alone when a default port is allowed.

    Raises:
        UserError: naming the flag, for anything else.
    """
    text = str(text).strip()
    expected = "HOST:PORT, e.g. 127.0.0.1:8470 or 10.0.0.5:8470"
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\d+))?|([^:\s\[\]]+)(?::(\d+))?", text)
    if not match:
        raise UserError(where=flag, expected=expected, received=text)
    host = match.group(1) or match.group(3)
    port_text = match.group(2) or match.group(4)
    if port_text is None:
        if default_port is None:
            raise UserError("the port is missing", where=flag, expected=expected, received=text)
        port = default_port
    else:
        port = int(port_text)
    if not 0 <= port <= 65535 or (port == 0 and default_port is None):
        raise UserError(where=flag, expected="a port between 1 and 65535", received=port)
    return Address(host, port)


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


def plan(*, workers: Optional[int] = None, role: Optional[str] = None, listen: Optional[str] = None,
         chief: Optional[str] = None, worker_id: Optional[str] = None, overwrite: bool = False) -> Plan:
    """Checks the combination of distributed flags and says what this process does.

    ``--chief`` implies ``--role worker`` and ``--listen`` implies ``--role chief``.

    Raises:
        UserError: for a combination that does not make sense, naming the flag.
    """
    if role is None:
        role = "worker" if chief is not None else "chief"
    if role not in ("chief", "worker"):
        raise UserError(where="--role", received=role, choices=["chief", "worker"])
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise UserError(where="--workers", expected="a whole number of worker processes, 1 or more",
                        received=workers)
    if role == "worker":
        for flag, value in (("--workers", workers), ("--listen", listen)):
            if value is not None:
                raise UserError(f"{flag} is for the chief, not for a worker", where=flag, received=value)
        if overwrite:
            raise UserError("workers never delete the shared sweep directory; use --overwrite on the chief",
                            where="--overwrite")
        if chief is None:
            raise UserError("a worker needs the chief's address", where="--chief",
                            expected="HOST:PORT, e.g. --chief 10.0.0.5:8470")
        return Plan("worker", chief=parse_address(chief, flag="--chief"),
                    worker_id=check_worker_id(worker_id) if worker_id is not None else default_worker_id())
    if chief is not None:
        raise UserError("--chief is for workers; the chief listens with --listen", where="--chief",
                        received=chief)
    if worker_id is not None:
        raise UserError("--worker-id is for workers (--role worker)", where="--worker-id", received=worker_id)
    address = parse_address(listen, flag="--listen", default_port=0) if listen is not None else Address(LOOPBACK, 0)
    return Plan("chief", workers=workers or 0, listen=address)


# ----------------------------------------------------------------------------------- the chief


def config_fingerprint(config_dict: Dict[str, Any]) -> str:
    """A short hash of a resolved config, to check that a worker runs the chief's sweep."""
    text = json.dumps(config_dict, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _differences(a: Any, b: Any, prefix: str = "") -> List[str]:
    """Dot paths where two plain config dicts differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        paths = []
        for key in sorted(set(a) | set(b), key=str):
            paths += _differences(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else str(key))
        return paths
    return [] if a == b else [prefix or "(whole config)"]


@dataclass
class _WorkerBook:
    token: str
    last_seen: float
    supervised: bool = False
    stopped: bool = False  # told to stop (STOPPED trial) or lost


@dataclass
class TrialEnd:
    """One finished trial, as the chief saw it (what the progress line shows)."""

    trial_id: str
    status: str
    score: Optional[float]
    worker: Optional[str]
    done: int  # trials finished in the sweep so far (this one included)
    total: Optional[int]
    best_score: Optional[float]
    best_trial: Optional[str]
    objective: str
    direction: str
    elapsed_s: float
    finished_this_session: int
    message: Optional[str] = None
    retrying: bool = False


class Chief:
    """Serves a keras-tuner oracle over gRPC and keeps the books keras-tuner does not.

    Args:
        oracle: the chief tuner's oracle (a real Oracle, reloaded from the sweep directory).
        config_dict: the resolved sweep config; workers started without one receive it.
        source: the config's file (workers resolve relative data paths against it).
        sweep_dir: the shared sweep directory.
        on_trial_end: called with a :class:`TrialEnd` for every finished trial (from a gRPC thread).
        on_event: called with a line of text for events (a worker lost, a trial re-queued).
        lease_s: a worker that is not supervised here loses its trial after this many silent seconds.
    """

    def __init__(self, oracle: Any, *, config_dict: Dict[str, Any], source: Optional[str], sweep_dir: str,
                 on_trial_end: Optional[Callable[[TrialEnd], None]] = None,
                 on_event: Optional[Callable[[str], None]] = None, lease_s: float = WORKER_LEASE_S):
        self.oracle = oracle
        self.config_dict = config_dict
        self.fingerprint = config_fingerprint(config_dict)
        self.source = source
        self.sweep_dir = str(sweep_dir)
        self.token = uuid.uuid4().hex
        self.lease_s = lease_s
        self._on_trial_end = on_trial_end or (lambda end: None)
        self._on_event = on_event or (lambda text: None)
        self.lock = threading.RLock()  # one oracle call at a time, as keras-tuner's one-thread server did
        self.workers: Dict[str, _WorkerBook] = {}
        self.stop_triggered = False
        self.halt_message: Optional[str] = None
        self.started = time.monotonic()
        self.finished_this_session = 0
        self._server = None
        self.address: Optional[Address] = None

    # -- serving

    def start(self, address: Address) -> Address:
        """Starts serving on `address` (port 0: a free port) and returns the address actually bound.

        Raises:
            UserError: when the address cannot be bound (in use, not an address of this machine).
        """
        from concurrent import futures

        import grpc
        from keras_tuner.src import protos

        # SO_REUSEPORT is on by default in gRPC: two chiefs could then share one port and split the workers.
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=[("grpc.so_reuseport", 0)])
        protos.get_service_grpc().add_OracleServicer_to_server(_make_servicer(self), server)
        server.add_generic_rpc_handlers((_ktk_handlers(self),))
        try:
            port = server.add_insecure_port(str(address))
        except RuntimeError:
            port = 0
        if not port:
            raise UserError("the chief cannot listen there: the port is in use or the host is not an address "
                            "of this machine", where="--listen", received=str(address))
        server.start()
        self._server = server
        self.address = Address(address.host, port)
        _write_json(Path(self.sweep_dir) / "logs" / "chief.json",
                    {"address": str(self.address), "token": self.token, "pid": os.getpid(),
                     "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")})
        return self.address

    def stop(self) -> None:
        """Stops serving and saves the oracle, so that no finished trial is left listed as running."""
        if self._server is not None:
            self._server.stop(grace=1.0).wait(5.0)
            self._server = None
        with self.lock:
            # keras-tuner saves oracle.json *before* popping the trial that just ended; save once more.
            self.oracle.save()

    # -- bookkeeping used by the servicer

    def touch(self, worker_id: str, token: Optional[str] = None) -> None:
        book = self.workers.get(worker_id)
        if book is None:
            self.workers[worker_id] = _WorkerBook(token=token or "", last_seen=time.monotonic())
        else:
            book.last_seen = time.monotonic()
            if token:
                book.token = token

    def ongoing_trial_of(self, worker_id: str) -> Optional[Any]:
        return self.oracle.ongoing_trials.get(worker_id)

    def done_count(self) -> int:
        return len(self.oracle.end_order)

    def halt(self, message: str) -> None:
        """Hands out no more trials; running ones finish; the sweep then ends with `message`."""
        with self.lock:
            if self.halt_message is None:
                self.halt_message = message

    def forget(self, worker_id: str) -> None:
        """The supervisor saw this worker die: a restart under the same id is welcome at once."""
        with self.lock:
            self.workers.pop(worker_id, None)

    def supervise(self, worker_id: str) -> None:
        with self.lock:
            book = self.workers.setdefault(worker_id, _WorkerBook(token="", last_seen=time.monotonic()))
            book.supervised = True

    def fail_trial(self, worker_id: str, message: str) -> Optional[str]:
        """Records the trial `worker_id` was running as failed (it kept killing its worker)."""
        from keras_tuner.src.engine import trial as trial_module

        with self.lock:
            trial = self.oracle.ongoing_trials.get(worker_id)
            if trial is None:
                return None
            trial.status = trial_module.TrialStatus.FAILED
            trial.message = message
            self._end(trial, worker_id)
            return trial.trial_id

    def requeue_silent_workers(self) -> None:
        """Gives the trial of a remote worker that stopped sending heartbeats back to the queue."""
        now = time.monotonic()
        with self.lock:
            for worker_id, book in list(self.workers.items()):
                if book.supervised or book.stopped or now - book.last_seen <= self.lease_s:
                    continue
                book.stopped = True
                self.oracle.tuner_ids.discard(worker_id)
                trial = self.oracle.ongoing_trials.pop(worker_id, None)
                if trial is not None:
                    self.oracle._retry_queue.append(trial.trial_id)
                    self.oracle.save()
                    self._on_event(f"worker {worker_id} silent for {now - book.last_seen:.0f} s: "
                                   f"trial {trial.trial_id} goes back to the queue")
                else:
                    self._on_event(f"worker {worker_id} silent for {now - book.last_seen:.0f} s: forgotten")

    def finished(self) -> bool:
        """Every trial is finished and every worker that came has been told to stop (or was lost)."""
        with self.lock:
            if not (self.stop_triggered or self.halt_message):
                return False
            if self.oracle.ongoing_trials:
                return False
            if self.halt_message is None and self.oracle._retry_queue:
                return False
            return all(book.stopped for book in self.workers.values())

    def _end(self, trial: Any, worker_id: Optional[str]) -> None:
        """Ends a trial in the oracle (under the lock) and reports it."""
        from keras_tuner.src.engine import trial as trial_module

        oracle = self.oracle
        before = len(oracle.end_order)
        try:
            oracle.end_trial(trial)
        except RuntimeError as error:
            # Too many consecutive failures: keras-tuner raised after recording the trial but before saving
            # and freeing its worker; finish that here and stop handing out trials.
            for tuner_id, ongoing in list(oracle.ongoing_trials.items()):
                if ongoing.trial_id == trial.trial_id:
                    oracle.ongoing_trials.pop(tuner_id)
            oracle._save_trial(oracle.trials[trial.trial_id])
            oracle.save()
            self.halt_message = str(error).splitlines()[0]
        ended = oracle.trials[trial.trial_id]
        retrying = len(oracle.end_order) == before and ended.status == trial_module.TrialStatus.INVALID
        if not retrying:
            self.finished_this_session += 1
        best = [t for t in oracle.get_best_trials(1) if t.status == trial_module.TrialStatus.COMPLETED]
        objective = oracle.objective
        self._on_trial_end(TrialEnd(
            trial_id=ended.trial_id, status=ended.status, score=ended.score, worker=worker_id,
            done=len(oracle.end_order), total=oracle.max_trials,
            best_score=best[0].score if best else None, best_trial=best[0].trial_id if best else None,
            objective=getattr(objective, "name", str(objective)),
            direction=getattr(objective, "direction", "min"),
            elapsed_s=time.monotonic() - self.started, finished_this_session=self.finished_this_session,
            message=ended.message, retrying=retrying))


def _make_servicer(chief: Chief) -> Any:
    from keras_tuner.src import protos
    from keras_tuner.src.distribute.oracle_chief import OracleServicer
    from keras_tuner.src.engine import trial as trial_module

    service = protos.get_service()

    class Servicer(OracleServicer):
        """keras-tuner's servicer, with one lock, worker books, a halt, and at most one end per trial."""

        def GetSpace(self, request, context):  # noqa: N802 - gRPC names
            with chief.lock:
                return super().GetSpace(request, context)

        def UpdateSpace(self, request, context):  # noqa: N802
            with chief.lock:
                return super().UpdateSpace(request, context)

        def GetTrial(self, request, context):  # noqa: N802
            with chief.lock:
                return super().GetTrial(request, context)

        def UpdateTrial(self, request, context):  # noqa: N802
            with chief.lock:
                return super().UpdateTrial(request, context)

        def GetBestTrials(self, request, context):  # noqa: N802
            with chief.lock:
                return super().GetBestTrials(request, context)

        def CreateTrial(self, request, context):  # noqa: N802
            tuner_id = request.tuner_id
            with chief.lock:
                chief.touch(tuner_id)
                book = chief.workers[tuner_id]
                if chief.halt_message is not None and tuner_id not in chief.oracle.ongoing_trials:
                    trial = trial_module.Trial(chief.oracle.get_space(), status=trial_module.TrialStatus.STOPPED)
                else:
                    trial = chief.oracle.create_trial(tuner_id)
                if trial.status == trial_module.TrialStatus.STOPPED:
                    chief.stop_triggered = True
                    chief.oracle.tuner_ids.discard(tuner_id)
                    book.stopped = True
                else:
                    book.stopped = False
                return service.CreateTrialResponse(trial=trial.to_proto())

        def EndTrial(self, request, context):  # noqa: N802
            trial = trial_module.Trial.from_proto(request.trial)
            oracle = chief.oracle
            with chief.lock:
                owner = next((tuner_id for tuner_id, t in oracle.ongoing_trials.items()
                              if t.trial_id == trial.trial_id), None)
                if owner is None:
                    if trial.trial_id in oracle._retry_queue:
                        # Its worker was given up for lost (or the chief restarted) but it finished after all:
                        # take the result rather than run the trial again.
                        oracle._retry_queue.remove(trial.trial_id)
                    elif trial.trial_id not in oracle.trials or trial.trial_id in oracle.end_order:
                        return service.EndTrialResponse()  # ended already: a trial is recorded once
                chief._end(trial, owner)
                return service.EndTrialResponse()

    return Servicer(chief.oracle)


def _ktk_handlers(chief: Chief) -> Any:
    """Two small calls keras-tuner lacks: a handshake (the sweep's config) and a heartbeat."""
    import grpc

    def hello(request: Dict[str, Any], context: Any) -> Dict[str, Any]:
        worker_id, token = str(request.get("worker_id")), str(request.get("token"))
        with chief.lock:
            book = chief.workers.get(worker_id)
            now = time.monotonic()
            if (book is not None and book.token and book.token != token and not book.stopped
                    and now - book.last_seen < 2.5 * HEARTBEAT_S):
                return {"ok": False, "error": f"worker id {worker_id!r} is in use by a running worker "
                                              f"(heard from {now - book.last_seen:.0f} s ago); give this "
                                              f"worker another --worker-id"}
            chief.touch(worker_id, token)
            chief.workers[worker_id].stopped = False
        return {"ok": True, "config": chief.config_dict, "fingerprint": chief.fingerprint,
                "source": chief.source, "sweep_dir": chief.sweep_dir, "token": chief.token}

    def heartbeat(request: Dict[str, Any], context: Any) -> Dict[str, Any]:
        worker_id, token = str(request.get("worker_id")), str(request.get("token"))
        with chief.lock:
            book = chief.workers.get(worker_id)
            if book is not None and book.token and book.token != token:
                return {"ok": False}
            chief.touch(worker_id, token)
        return {"ok": True}

    def unary(fn):
        return grpc.unary_unary_rpc_method_handler(fn, request_deserializer=_loads, response_serializer=_dumps)

    return grpc.method_handlers_generic_handler(_SERVICE, {"Hello": unary(hello), "Heartbeat": unary(heartbeat)})


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, default=str).encode("utf-8")


def _loads(data: bytes) -> Any:
    return json.loads(data.decode("utf-8"))


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------- the worker side


class ChiefClient:
    """A worker's line to the chief's ktk calls (handshake, heartbeats)."""

    def __init__(self, address: Address, worker_id: str, timeout_s: float):
        import grpc

        self.address = address
        self.worker_id = worker_id
        self.timeout_s = timeout_s
        self.token = uuid.uuid4().hex
        self._channel = grpc.insecure_channel(str(address))
        self._hello = self._channel.unary_unary(f"/{_SERVICE}/Hello", request_serializer=_dumps,
                                                response_deserializer=_loads)
        self._heartbeat = self._channel.unary_unary(f"/{_SERVICE}/Heartbeat", request_serializer=_dumps,
                                                    response_deserializer=_loads)
        self._stop = threading.Event()

    def hello(self) -> Dict[str, Any]:
        """Waits up to the timeout for the chief and returns its answer.

        Raises:
            UserError: when the chief cannot be reached in time, or refuses this worker.
        """
        import grpc

        try:
            answer = self._hello({"worker_id": self.worker_id, "token": self.token},
                                 wait_for_ready=True, timeout=self.timeout_s)
        except grpc.RpcError as error:
            if error.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE):
                raise UserError(f"cannot reach the chief at {self.address} within {self.timeout_s:g} s; "
                                "is it running (ktk tune CONFIG --role chief --listen HOST:PORT), and is the "
                                "address one this machine can reach", where="--chief") from None
            if error.code() == grpc.StatusCode.UNIMPLEMENTED:
                raise UserError(f"{self.address} answers but is not a ktk chief (a plain keras-tuner chief?)",
                                where="--chief") from None
            raise UserError(f"the chief at {self.address} failed: {error.details()}", where="--chief") from None
        if not answer.get("ok"):
            raise UserError(answer.get("error", "the chief refused this worker"), where="--worker-id")
        return answer

    def start_heartbeats(self, interval_s: float = HEARTBEAT_S) -> None:
        def beat() -> None:
            while not self._stop.wait(interval_s):
                try:
                    self._heartbeat({"worker_id": self.worker_id, "token": self.token}, timeout=interval_s)
                except Exception:  # noqa: BLE001 - the chief may be restarting; the trial calls will tell
                    pass

        threading.Thread(target=beat, name="ktk-heartbeat", daemon=True).start()

    def close(self) -> None:
        self._stop.set()
        self._channel.close()


def _watch_parent(parent_pid: int) -> None:
    """A supervised worker exits when its supervisor is gone (killed -9), instead of training for no one."""

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent_pid:
                os._exit(3)

    threading.Thread(target=watch, name="ktk-parent-watch", daemon=True).start()


@dataclass
class WorkerResult:
    """What a worker did: its id, the chief it served and the sweep directory."""

    worker_id: str
    chief: str
    sweep_dir: str
    trials_run: int = 0


def run_worker(config: Any, *, chief: Address, worker_id: str, out_dir: Optional[str] = None,
               verbose: bool = False, chief_timeout: float = CHIEF_TIMEOUT_S) -> WorkerResult:
    """Runs trials for the chief at `chief` until it has no more; never deletes the shared sweep.

    Args:
        config: this worker's config (it must be the chief's), or None to take the chief's.
        chief: the chief's address.
        worker_id: this worker's id; a worker restarted with the same id resumes the trial it was running.
        out_dir: the shared sweep directory as this machine sees it (default: the chief's path).
        verbose: show Keras' per-epoch progress.
        chief_timeout: seconds to wait for an absent chief (at start and whenever it is gone).

    Raises:
        UserError: chief unreachable, a different config, a sweep directory that is not the chief's.
    """
    import grpc

    check_worker_id(worker_id)
    client = ChiefClient(chief, worker_id, chief_timeout)
    try:
        answer = client.hello()
        if config is None:
            from toolkit.config import parse_config

            config = parse_config(answer["config"], source=answer.get("source"))
        else:
            mine = config.to_dict()
            if config_fingerprint(mine) != answer["fingerprint"]:
                paths = _differences(mine, answer["config"])
                raise UserError("this worker's config is not the chief's sweep",
                                where=", ".join(paths[:8]) + (" ..." if len(paths) > 8 else ""),
                                expected="the same config (and --set values) as the chief", file=config.source)
        sweep_dir = Path(out_dir if out_dir is not None else answer["sweep_dir"])
        _check_same_sweep(sweep_dir, answer["token"], chief)
        client.start_heartbeats()
        os.environ["KERASTUNER_TUNER_ID"] = worker_id
        os.environ["KERASTUNER_ORACLE_IP"] = chief.host
        os.environ["KERASTUNER_ORACLE_PORT"] = str(chief.port)
        from keras_tuner.src.distribute import oracle_client

        oracle_client.TIMEOUT = chief_timeout  # keras-tuner waits an hour per call otherwise
        try:
            trials = _run_worker_search(config, sweep_dir, worker_id, verbose)
        except grpc.RpcError as error:
            raise UserError(f"lost the chief at {chief} ({error.code().name}: waited up to {chief_timeout:g} s); "
                            "the trial this worker was running is re-run when the sweep resumes",
                            where="--chief") from None
        return WorkerResult(worker_id=worker_id, chief=str(chief), sweep_dir=str(sweep_dir), trials_run=trials)
    finally:
        client.close()


def _check_same_sweep(sweep_dir: Path, token: str, chief: Address) -> None:
    marker = sweep_dir / "logs" / "chief.json"
    try:
        found = json.loads(marker.read_text()).get("token")
    except (OSError, ValueError):
        found = None
    if found != token:
        raise UserError(f"{sweep_dir} is not the sweep directory of the chief at {chief} (workers and chief "
                        "must share one directory, mounted at the same path or given with --out)",
                        where="--out", received=str(sweep_dir))


# ----------------------------------------------------------------------------------- supervision


@dataclass
class _Slot:
    worker_id: str
    process: Optional[subprocess.Popen] = None
    log_path: Optional[Path] = None
    crashes_on_trial: Dict[str, int] = field(default_factory=dict)
    startup_crashes: int = 0
    restarts: int = 0
    exited_ok: bool = False


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name}" + (" (out of memory?)" if -code == signal.SIGKILL else "")
    return f"exited with status {code}"


def _log_tail(path: Optional[Path], lines: int = 15) -> str:
    if path is None or not path.exists():
        return ""
    text = path.read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:])


class Supervisor:
    """Starts N local workers, restarts a dead one under the same id, and stops them all."""

    def __init__(self, chief: Chief, worker_ids: List[str], *, sweep_dir: Path, verbose: bool,
                 chief_timeout: float, on_event: Callable[[str], None]):
        self.chief = chief
        self.slots = {worker_id: _Slot(worker_id) for worker_id in worker_ids}
        self.sweep_dir = sweep_dir
        self.verbose = verbose
        self.chief_timeout = chief_timeout
        self.on_event = on_event

    def _command(self, worker_id: str) -> List[str]:
        command = [sys.executable, "-m", "toolkit.distributed", "--chief", str(self.chief.address),
                   "--worker-id", worker_id, "--out", str(self.sweep_dir), "--chief-timeout",
                   str(self.chief_timeout), "--parent", str(os.getpid())]
        return command + (["--verbose"] if self.verbose else [])

    def start(self, slot: _Slot) -> None:
        self.chief.forget(slot.worker_id)
        self.chief.supervise(slot.worker_id)
        log_dir = self.sweep_dir / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        slot.log_path = log_dir / f"{slot.worker_id}.log"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in [str(Path(__file__).resolve().parent.parent),
                                                        env.get("PYTHONPATH", "")] if p)
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        for name in ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT"):
            env.pop(name, None)
        with open(slot.log_path, "ab") as log:
            # A session of its own: Ctrl-C reaches the supervisor only, which then stops workers in order.
            slot.process = subprocess.Popen(self._command(slot.worker_id), stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True)

    def start_all(self) -> None:
        for slot in self.slots.values():
            self.start(slot)

    def all_exited(self) -> bool:
        return all(slot.exited_ok for slot in self.slots.values())

    def poll(self) -> None:
        """Restarts workers that died; raises when one cannot go on.

        Raises:
            UserError: a worker stopped on a user error (its message), or keeps dying before any trial.
        """
        for slot in self.slots.values():
            if slot.exited_ok or slot.process is None:
                continue
            code = slot.process.poll()
            if code is None:
                continue
            if code == 0:
                slot.exited_ok = True
                continue
            if code == 2:
                tail = _log_tail(slot.log_path, 5)
                message = next((line[len("ktk: error: "):] for line in reversed(tail.splitlines())
                                if line.startswith("ktk: error: ")), tail)
                raise UserError(f"worker {slot.worker_id} stopped: {message}")
            self._restart_after_crash(slot, code)

    def _restart_after_crash(self, slot: _Slot, code: int) -> None:
        how = _describe_exit(code)
        with self.chief.lock:
            trial = self.chief.ongoing_trial_of(slot.worker_id)
            trial_id = trial.trial_id if trial is not None else None
        if trial_id is None:
            slot.startup_crashes += 1
            if slot.startup_crashes >= STARTUP_CRASHES:
                raise UserError(f"worker {slot.worker_id} {how} {slot.startup_crashes} times before running a "
                                f"trial; its log ({slot.log_path}) ends with:\n{_log_tail(slot.log_path)}")
        else:
            slot.startup_crashes = 0
            crashes = slot.crashes_on_trial[trial_id] = slot.crashes_on_trial.get(trial_id, 0) + 1
            if crashes >= CRASHES_PER_TRIAL:
                self.chief.fail_trial(slot.worker_id, f"its worker {slot.worker_id} died {crashes} times while "
                                                      f"running it (last: {how}); see {slot.log_path}")
                trial_id = None
        slot.restarts += 1
        what = f"its trial {trial_id} resumes" if trial_id else "restarting it"
        self.on_event(f"worker {slot.worker_id} {how}; {what} (restart {slot.restarts})")
        self.start(slot)

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM to every worker still running, SIGKILL to those still there after `grace_s`."""
        running = [s.process for s in self.slots.values() if s.process is not None and s.process.poll() is None]
        for process in running:
            try:
                process.terminate()
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        for process in running:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5.0)


# ----------------------------------------------------------------------------------- entry points


def tune_distributed(config: Any, *, out_dir: Optional[str] = None, workers: Optional[int] = None,
                     role: Optional[str] = None, listen: Optional[str] = None, chief: Optional[str] = None,
                     worker_id: Optional[str] = None, overwrite: bool = False, verbose: bool = False,
                     chief_timeout: float = CHIEF_TIMEOUT_S,
                     progress: Optional[Callable[[str], None]] = None) -> Any:
    """Runs the config's sweep as a keras-tuner chief with workers, supervised.

    With ``workers=N`` (and no role) this process is the chief on loopback and runs N local workers. With
    ``role="chief"`` it serves on `listen` for workers on other machines (plus `workers` local ones);
    with ``role="worker"`` it runs trials for the chief at `chief`.

    Args:
        config: the sweep's :class:`toolkit.config.Config` (with a ``search:`` section).
        out_dir: the sweep directory (shared by every machine in a multi-machine sweep).
        workers: local worker processes to run.
        role: "chief" or "worker" (inferred from `listen` / `chief` when not given).
        listen: the chief's address, ``HOST:PORT`` (default: loopback, a free port).
        chief: a worker's chief, ``HOST:PORT``.
        worker_id: a worker's id (default ``<host>-<pid>``); reuse it to resume a dead worker's trial.
        overwrite: start the sweep over (chief only; workers never delete the shared sweep).
        verbose: show Keras' per-epoch progress in the workers' logs.
        chief_timeout: seconds a worker waits for an absent chief before giving up with an error.
        progress: called with one line of text per finished trial and per event.

    Returns:
        The chief: the sweep's result (as ``toolkit.sweeps.tune`` returns). A worker: :class:`WorkerResult`.

    Raises:
        UserError: bad flags, unreachable chief, a worker that cannot go on, too many failed trials.
    """
    the_plan = plan(workers=workers, role=role, listen=listen, chief=chief, worker_id=worker_id,
                    overwrite=overwrite)
    say = progress or (lambda text: None)
    if the_plan.role == "worker":
        return run_worker(config, chief=the_plan.chief, worker_id=the_plan.worker_id, out_dir=out_dir,
                          verbose=verbose, chief_timeout=chief_timeout)
    return _run_chief(config, the_plan, out_dir=out_dir, overwrite=overwrite, verbose=verbose,
                      chief_timeout=chief_timeout, say=say)


def _run_chief(config: Any, the_plan: Plan, *, out_dir: Optional[str], overwrite: bool, verbose: bool,
               chief_timeout: float, say: Callable[[str], None]) -> Any:
    sweep = _open_chief_sweep(config, out_dir=out_dir, overwrite=overwrite)
    try:
        chief = Chief(sweep.oracle, config_dict=config.to_dict(), source=config.source,
                      sweep_dir=str(sweep.sweep_dir), on_trial_end=lambda end: say(format_trial_end(end)),
                      on_event=say)
        supervisor = None
        try:
            address = chief.start(the_plan.listen)
            if the_plan.workers:
                supervisor = Supervisor(chief, [f"tuner{i}" for i in range(the_plan.workers)],
                                        sweep_dir=Path(sweep.sweep_dir), verbose=verbose,
                                        chief_timeout=chief_timeout, on_event=say)
                supervisor.start_all()
                say(f"chief on {address}: {the_plan.workers} worker(s), logs in {Path(sweep.sweep_dir) / 'logs'}")
            if the_plan.role == "chief" and (the_plan.listen.port or not the_plan.workers):
                say(f"chief listening on {address}; on each worker machine run: ktk tune CONFIG --role worker "
                    f"--chief {address}" + ("" if address.host not in (LOOPBACK, "localhost") else
                                            "  (loopback: only this machine can join)"))
            while True:
                if supervisor is not None:
                    supervisor.poll()
                else:
                    chief.requeue_silent_workers()
                if chief.finished() and (supervisor is None or supervisor.all_exited()):
                    break
                if supervisor is not None and supervisor.all_exited() and not chief.finished():
                    raise UserError("every worker exited but the sweep is not finished; see the logs in "
                                    f"{Path(sweep.sweep_dir) / 'logs'}")
                time.sleep(0.2)
        finally:
            if supervisor is not None:
                supervisor.stop()
            chief.stop()
        if chief.halt_message:
            raise UserError(f"the sweep stopped: {chief.halt_message}", file=str(sweep.sweep_dir))
        return sweep.finish()
    finally:
        sweep.close()


def format_trial_end(end: TrialEnd) -> str:
    """One progress line: trial k/N, worker, score, best so far, elapsed, an estimate of the time left."""
    total = f"/{end.total}" if end.total else ""
    parts = [f"trial {end.done}{total} ({end.trial_id}) on {end.worker or '?'}"]
    if end.retrying:
        parts.append("failed, will retry")
    elif end.status == "COMPLETED":
        parts.append(f"{end.objective} {_number(end.score)}")
    else:
        reason = (end.message or "").strip().splitlines()
        parts.append(end.status.lower() + (f": {reason[-1][:120]}" if reason else ""))
    if end.best_score is not None:
        parts.append(f"best {_number(end.best_score)} ({end.best_trial})")
    parts.append(f"elapsed {_duration(end.elapsed_s)}")
    if end.total and end.finished_this_session:
        left = max(0, end.total - end.done)
        parts.append(f"~{_duration(end.elapsed_s / end.finished_this_session * left)} left")
    return "  ".join(parts)


def _number(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.4g}"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


# ----------------------------------------------------------------------------------- the sweep itself


@dataclass
class _ChiefSweep:
    sweep_dir: Path
    oracle: Any
    finish: Callable[[], Any]
    close: Callable[[], None]


def _open_chief_sweep(config: Any, *, out_dir: Optional[str], overwrite: bool) -> _ChiefSweep:
    """The sweep as the chief sees it: its directory, the reloaded oracle, and how to finish it."""
    from toolkit import _proto_sweep

    return _proto_sweep.open_chief(config, out_dir=out_dir, overwrite=overwrite)


def _run_worker_search(config: Any, sweep_dir: Path, worker_id: str, verbose: bool) -> int:
    """Runs keras-tuner's search in this worker (the chief's env vars are set); returns trials run."""
    from toolkit import _proto_sweep

    return _proto_sweep.run_worker(config, sweep_dir=sweep_dir, worker_id=worker_id, verbose=verbose)


# ----------------------------------------------------------------------------------- worker processes


def _worker_main(argv: Optional[List[str]] = None) -> int:
    """Entry point of a supervised worker process (``python -m toolkit.distributed``)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m toolkit.distributed")
    parser.add_argument("--chief", required=True)
    parser.add_argument("--worker-id", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--chief-timeout", type=float, default=CHIEF_TIMEOUT_S)
    parser.add_argument("--parent", type=int)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.parent:
        _watch_parent(args.parent)
    try:
        result = run_worker(None, chief=parse_address(args.chief, flag="--chief"), worker_id=args.worker_id,
                            out_dir=args.out, verbose=args.verbose, chief_timeout=args.chief_timeout)
    except UserError as error:
        print(f"ktk: error: {error}", file=sys.stderr, flush=True)
        return 2
    print(f"worker {result.worker_id}: {result.trials_run} trial(s) run", flush=True)
    return 0


def _exit_now(code: int) -> None:
    """Exits without the interpreter's teardown: TensorFlow's takes seconds and there is nothing left to save."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover - a supervised worker process
    _exit_now(_worker_main())
