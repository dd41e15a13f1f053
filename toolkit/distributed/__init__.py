"""Chief/worker sweeps across processes and machines, on keras-tuner's gRPC engine, supervised.

keras-tuner already ships the engine: one chief serves the oracle over gRPC and workers ask it for trials,
train them and report back, all writing into one shared project directory. This module makes that safe:

- ``ktk tune CONFIG --workers N`` runs the chief inside this process (on loopback, a free port) and N
  worker processes, restarts a worker that dies under the same worker id (keras-tuner then hands it the
  trial it was running), prints one line per finished trial and stops everything cleanly on Ctrl-C.
- ``--role chief --listen HOST:PORT`` and ``--role worker --chief HOST:PORT`` split the same sweep over
  several machines that share the sweep directory.

Every process runs :func:`toolkit.sweeps.tune` with keras-tuner's environment variables set, so trials are
built, trained and recorded exactly as in one process. In the chief, keras-tuner's ``start_server`` (called
from ``BaseTuner.search``) is swapped for :func:`_serve` for the duration of the call: our server around the
same oracle, our supervision loop. After it returns, ``tune`` goes on to write trials.csv and retrain
``best/`` once, in the chief.

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
  the chief binds exclusively;
- keras-tuner reloads a project only if the file of its own tuner id exists (keras-tuner #976), so a chief
  taking over a one-process sweep would start it over: the chief creates ``chief.json`` and ``tuner0.json``;
- a restarted chief puts the trials that were running back in the queue while their workers may still be
  training them: they are held for those workers instead (:meth:`Chief.restore_running`).

The gRPC channel has no authentication and no encryption: bind to loopback (the default) or a trusted
network only.
"""

from __future__ import annotations

import contextlib
import dataclasses
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
from typing import Any, Callable, Dict, Iterator, List, Optional

from toolkit.errors import UserError

LOOPBACK = "127.0.0.1"
CHIEF_TIMEOUT_S = 120.0  # how long a worker waits for an absent chief before giving up
HEARTBEAT_S = 5.0  # how often a worker tells the chief it is alive
WORKER_LEASE_S = 60.0  # a remote worker silent this long loses its trial to the queue
CRASHES_PER_TRIAL = 3  # a trial whose worker dies this many times is recorded as failed
STARTUP_CRASHES = 3  # a worker that dies this many times in a row before any trial stops the sweep
STOP_GRACE_S = 10.0  # how long stopping workers may take before they are killed
IDLE_DELAY_S = 0.5  # how long the chief holds an "ask again later" answer
WORKER_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_SERVICE = "ktk.Sweep"
MAX_WORKERS_PER_CORE = 4  # --workers above this many per core is refused (they would only compete)
LOGS_DIR = "logs"  # <sweep>/logs: chief.json (address, token) and one log per local worker


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
         chief: Optional[str] = None, worker_id: Optional[str] = None, overwrite: bool = False,
         chief_timeout: Optional[float] = None) -> Plan:
    """Checks the combination of distributed flags and says what this process does.

    ``--chief`` implies ``--role worker`` and ``--listen`` implies ``--role chief``.

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
    most = MAX_WORKERS_PER_CORE * (os.cpu_count() or 1)
    if workers is not None and workers > most:  # each one imports TensorFlow and trains on these cores
        raise UserError(f"more worker processes than this machine can run ({os.cpu_count()} cores)",
                        where="--workers", expected=f"at most {most}", received=workers)
    if chief_timeout is not None and not (isinstance(chief_timeout, (int, float)) and chief_timeout > 0):
        raise UserError(where="--chief-timeout", expected="a number of seconds above 0", received=chief_timeout)
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
    _free_port(address.host, address.port)  # a host that is not this machine's, or a port in use: said now
    return Plan("chief", workers=workers or 0, listen=address)


# ----------------------------------------------------------------------------------- the chief


def config_identity(config: Any) -> Dict[str, Any]:
    """The resolved config with its search section normalized: what a worker's config must equal."""
    from toolkit.search import parse_search

    resolved = config.to_dict()
    resolved["search"] = parse_search(config).to_dict()
    return resolved


def config_fingerprint(identity: Dict[str, Any]) -> str:
    """A short hash of :func:`config_identity`."""
    text = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _differences(a: Any, b: Any, prefix: str = "") -> List[str]:
    """Dot paths where two plain config dicts differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        paths: List[str] = []
        for key in sorted(set(a) | set(b), key=str):
            paths += _differences(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else str(key))
        return paths
    return [] if a == b else [prefix or "(whole config)"]


@dataclass
class _WorkerBook:
    """What the chief knows of one worker id."""

    token: str
    last_seen: float
    supervised: bool = False  # a process of this chief's supervisor (its liveness is known directly)
    told_to_stop: bool = False  # it received a STOPPED trial
    gone: bool = False  # said goodbye, or silent past the lease


@dataclass
class TrialEnd:
    """One finished trial, as the chief saw it (what the progress line shows)."""

    trial_id: str
    status: str  # keras-tuner's: COMPLETED, FAILED, INVALID
    score: Optional[float]
    worker: Optional[str]
    done: int  # trials finished in the sweep so far, this one included
    planned: Optional[int]
    best_score: Optional[float]
    best_trial: Optional[str]
    objective: str
    elapsed_s: float
    finished_here: int  # trials finished since this chief started
    message: Optional[str] = None


class Chief:
    """Serves a keras-tuner oracle over gRPC and keeps the books keras-tuner does not.

    Args:
        oracle: the chief tuner's oracle (a real Oracle, reloaded from the sweep directory).
        identity: :func:`config_identity` of the sweep; a worker's config must equal it.
        source: the config file, for supervised workers (relative data paths are resolved against it).
        sweep_dir: the shared sweep directory.
        on_trial_end: called with a :class:`TrialEnd` for every finished trial (from a gRPC thread).
        on_event: called with a line of text for events (a worker lost, a trial back in the queue).
        lease_s: a worker this chief does not supervise loses its trial after this many silent seconds.
        planned: the number of trials the search plans (for progress lines).
        max_failures_in_a_row: after this many failed trials in a row (over all workers) the chief hands
            out no more trials and the sweep stops with a message, as a one-process sweep does.
    """

    def __init__(self, oracle: Any, *, identity: Dict[str, Any], source: Optional[str], sweep_dir: Path,
                 on_trial_end: Optional[Callable[[TrialEnd], None]] = None,
                 on_event: Optional[Callable[[str], None]] = None, lease_s: float = WORKER_LEASE_S,
                 planned: Optional[int] = None, max_failures_in_a_row: Optional[int] = None):
        self.oracle = oracle
        oracle.verbose = 0  # keras-tuner's display prints tables per trial; the chief prints one line instead
        self.identity = identity
        self.fingerprint = config_fingerprint(identity)
        self.source = str(Path(source).resolve()) if source else None
        self.sweep_dir = Path(sweep_dir)
        self.token = uuid.uuid4().hex
        self.lease_s = lease_s
        self.planned = planned
        self.max_failures_in_a_row = max_failures_in_a_row
        self._on_trial_end = on_trial_end or (lambda end: None)
        self._on_event = on_event or (lambda text: None)
        self.lock = threading.RLock()  # one oracle call at a time, as keras-tuner's one-thread server did
        self.workers: Dict[str, _WorkerBook] = {}
        self.stop_triggered = False
        self.halt_message: Optional[str] = None
        self.started = time.monotonic()
        self.finished_here = 0
        self._server: Any = None
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
            raise UserError("the chief cannot listen there: the port is in use, or the host is not an address "
                            "of this machine", where="--listen", received=str(address))
        server.start()
        self._server = server
        self.address = Address(address.host, port)
        _write_json(self.sweep_dir / LOGS_DIR / "chief.json",
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

    def restore_running(self, running: Dict[str, str], *, local_ids: List[str], remote_possible: bool) -> None:
        """Gives the trials that were running when the last chief stopped back to their workers.

        keras-tuner puts them in the queue on reload, so a worker still training one (the chief died, its
        workers did not) would see it handed to another worker too. Held for their worker instead, they are
        re-queued by the lease if that worker does not come back (or at once where no such worker can).

        Args:
            running: ``ongoing_trials`` of the saved oracle state (worker id -> trial id).
            local_ids: the ids of this chief's own worker processes.
            remote_possible: whether workers of other processes can connect at all.
        """
        from keras_tuner.src.engine import trial as trial_module

        oracle = self.oracle
        with self.lock:
            for worker_id, trial_id in running.items():
                if trial_id not in oracle._retry_queue or (worker_id not in local_ids and not remote_possible):
                    continue
                oracle._retry_queue.remove(trial_id)
                trial = oracle.trials[trial_id]
                trial.status = trial_module.TrialStatus.RUNNING
                oracle.ongoing_trials[worker_id] = trial
                oracle.tuner_ids.add(worker_id)
                self.book(worker_id)
            oracle.save()

    def nothing_left(self) -> bool:
        """The reloaded sweep has every planned trial finished: no worker is needed."""
        oracle = self.oracle
        with self.lock:
            return bool(oracle.max_trials) and len(oracle.trials) >= oracle.max_trials \
                and not oracle.ongoing_trials and not oracle._retry_queue

    # -- the books

    def book(self, worker_id: str) -> _WorkerBook:
        book = self.workers.get(worker_id)
        if book is None:
            book = self.workers[worker_id] = _WorkerBook(token="", last_seen=time.monotonic())
        return book

    def touch(self, worker_id: str) -> _WorkerBook:
        book = self.book(worker_id)
        book.last_seen = time.monotonic()
        book.gone = False
        return book

    def supervise(self, worker_id: str) -> None:
        """A worker of this chief's supervisor is (re)starting under `worker_id`."""
        with self.lock:
            self.workers[worker_id] = _WorkerBook(token="", last_seen=time.monotonic(), supervised=True)

    def ongoing_trial_id(self, worker_id: str) -> Optional[str]:
        with self.lock:
            trial = self.oracle.ongoing_trials.get(worker_id)
            return trial.trial_id if trial is not None else None

    def fail_trial(self, worker_id: str, message: str) -> Optional[str]:
        """Records the trial `worker_id` was running as failed (it kept killing its worker)."""
        from keras_tuner.src.engine import trial as trial_module

        with self.lock:
            trial = self.oracle.ongoing_trials.get(worker_id)
            if trial is None:
                return None
            _write_failure_record(self.sweep_dir, trial, worker_id, message)
            trial.status = trial_module.TrialStatus.FAILED
            trial.message = message
            self._end(trial, worker_id)
            return trial.trial_id

    def requeue_silent_workers(self) -> None:
        """Gives the trial of an unsupervised worker silent for longer than the lease back to the queue."""
        now = time.monotonic()
        with self.lock:
            for worker_id, book in self.workers.items():
                silent = now - book.last_seen
                if book.supervised or book.told_to_stop or silent <= self.lease_s:
                    continue
                trial = self.oracle.ongoing_trials.pop(worker_id, None)
                self.oracle.tuner_ids.discard(worker_id)
                if trial is not None:
                    self.oracle._retry_queue.append(trial.trial_id)
                    self.oracle.save()
                    self._on_event(f"worker {worker_id} silent for {silent:.0f} s: trial {trial.trial_id} goes "
                                   "back to the queue")
                elif not book.gone:
                    self._on_event(f"worker {worker_id} silent for {silent:.0f} s: no longer waited for")
                book.gone = True

    def finished(self) -> bool:
        """Every trial is finished and every worker that came has been told to stop (or is gone)."""
        with self.lock:
            if not (self.stop_triggered or self.halt_message):
                return False
            if self.oracle.ongoing_trials:
                return False
            if self.halt_message is None and self.oracle._retry_queue:
                return False
            # A supervised worker without a trial is stopped by its supervisor; others must hear STOPPED,
            # or a worker would wait for a chief that is gone (keras-tuner PR #645).
            return all(book.told_to_stop or book.gone or book.supervised for book in self.workers.values())

    def _end(self, trial: Any, worker_id: Optional[str]) -> None:
        """Ends a trial in the oracle (under the lock) and reports it."""
        from keras_tuner.src.engine import trial as trial_module

        oracle = self.oracle
        before = len(oracle.end_order)
        try:
            oracle.end_trial(trial)
        except RuntimeError as error:
            # keras-tuner's own limit of failures in a row: it raised after recording the trial but before
            # saving and freeing its worker. Finish that here and hand out no more trials.
            for tuner_id, ongoing in list(oracle.ongoing_trials.items()):
                if ongoing.trial_id == trial.trial_id:
                    oracle.ongoing_trials.pop(tuner_id)
            oracle._save_trial(oracle.trials[trial.trial_id])
            oracle.save()
            self.halt_message = str(error).splitlines()[0]
        ended = oracle.trials[trial.trial_id]
        if len(oracle.end_order) == before:
            self._on_event(f"trial {ended.trial_id} on {worker_id} ended {ended.status}; it will be retried")
            return
        self.finished_here += 1
        reason = _failure_reason(self.sweep_dir, ended)
        in_a_row = 0
        for trial_id in reversed(oracle.end_order):
            if oracle.trials[trial_id].status == trial_module.TrialStatus.COMPLETED:
                break
            in_a_row += 1
        if self.max_failures_in_a_row and in_a_row >= self.max_failures_in_a_row and self.halt_message is None:
            # The words of a one-process sweep (toolkit.sweeps), counted over every worker.
            self.halt_message = (
                f"the search stopped after {in_a_row} failed trials in a row (limit {self.max_failures_in_a_row});"
                f" the last failed with: {reason or 'no reason recorded'}. Finished trials are kept: fix the cause "
                "and run the same command to resume, or raise the limit")
        best = [t for t in oracle.get_best_trials(1) if t.status == trial_module.TrialStatus.COMPLETED]
        self._on_trial_end(TrialEnd(
            trial_id=ended.trial_id, status=ended.status, score=ended.score, worker=worker_id,
            done=len(oracle.end_order), planned=self.planned or oracle.max_trials,
            best_score=best[0].score if best else None, best_trial=best[0].trial_id if best else None,
            objective=getattr(oracle.objective, "name", str(oracle.objective)),
            elapsed_s=time.monotonic() - self.started, finished_here=self.finished_here,
            message=reason))


def _failure_reason(sweep_dir: Path, trial: Any) -> Optional[str]:
    """The sweep's own failure message for a trial (its record), else keras-tuner's last line."""
    if trial.status == "COMPLETED":
        return None
    try:
        message = json.loads((sweep_dir / "records" / f"{trial.trial_id}.json").read_text()).get("message")
    except (OSError, ValueError):
        message = None
    if message:
        return str(message)
    lines = [line.strip() for line in (trial.message or "").splitlines() if line.strip()]
    return lines[-1] if lines else None


def _write_failure_record(sweep_dir: Path, trial: Any, worker_id: str, message: str) -> None:
    """A trial record (as toolkit.sweeps writes them) for a trial whose worker process kept dying."""
    from toolkit.config import parse_config, read_yaml_file
    from toolkit.search import parse_search

    values: Dict[str, Any] = {}
    try:
        spec = parse_search(parse_config(read_yaml_file(sweep_dir / "config.yaml")))
        values = spec.config_values(trial.hyperparameters.values)
    except (UserError, OSError):
        pass
    _write_json(sweep_dir / "records" / f"{trial.trial_id}.json", {
        "trial_id": trial.trial_id, "values": values, "status": "failed", "message": message,
        "started": None, "duration_s": None, "worker": worker_id})


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
            oracle = chief.oracle
            with chief.lock:
                book = chief.touch(tuner_id)
                if chief.halt_message is not None and tuner_id not in oracle.ongoing_trials:
                    trial = trial_module.Trial(oracle.get_space(), status=trial_module.TrialStatus.STOPPED)
                else:
                    trial = oracle.create_trial(tuner_id)
                book.told_to_stop = trial.status == trial_module.TrialStatus.STOPPED
                if book.told_to_stop:
                    chief.stop_triggered = True
                    oracle.tuner_ids.discard(tuner_id)
            if trial.status == trial_module.TrialStatus.IDLE:
                # Hyperband waits for a round to finish; keras-tuner's worker asks again at once, in a tight
                # loop. Answering a little later keeps that loop from taking a core from the training.
                time.sleep(IDLE_DELAY_S)
            return service.CreateTrialResponse(trial=trial.to_proto())

        def EndTrial(self, request, context):  # noqa: N802
            trial = trial_module.Trial.from_proto(request.trial)
            oracle = chief.oracle
            with chief.lock:
                owner = next((tuner_id for tuner_id, t in oracle.ongoing_trials.items()
                              if t.trial_id == trial.trial_id), None)
                if owner is None:
                    if trial.trial_id in oracle._retry_queue:
                        # Its worker was given up for lost (or the chief restarted), yet it finished: take the
                        # result rather than run the trial again.
                        oracle._retry_queue.remove(trial.trial_id)
                    elif trial.trial_id not in oracle.trials or trial.trial_id in oracle.end_order:
                        return service.EndTrialResponse()  # ended already: a trial is recorded once
                chief._end(trial, owner)
                return service.EndTrialResponse()

    return Servicer(chief.oracle)


def _ktk_handlers(chief: Chief) -> Any:
    """Three small calls keras-tuner lacks: a handshake (checks the config), heartbeats and a goodbye."""
    import grpc

    def hello(request: Dict[str, Any], context: Any) -> Dict[str, Any]:
        worker_id, token = str(request.get("worker_id")), str(request.get("token"))
        with chief.lock:
            book = chief.workers.get(worker_id)
            now = time.monotonic()
            if (book is not None and book.token and book.token != token and not book.gone
                    and not book.told_to_stop and now - book.last_seen < 2.5 * HEARTBEAT_S):
                wait = 2.5 * HEARTBEAT_S - (now - book.last_seen)
                return {"ok": False, "error": f"worker id {worker_id!r} is in use by a running worker (heard "
                                              f"from {now - book.last_seen:.0f} s ago); if that worker is gone, "
                                              f"start this one again in {wait:.0f} s, or give it another "
                                              "--worker-id"}
            if request.get("fingerprint") not in (None, chief.fingerprint):
                mine = request.get("identity") or {}
                paths = _differences(mine, chief.identity)
                return {"ok": False, "where": ", ".join(paths[:6]) + (", ..." if len(paths) > 6 else ""),
                        "error": "this worker's config is not the chief's: it differs at these keys; start "
                                 "workers with the chief's config file and --set values"}
            book = chief.touch(worker_id)
            book.token = token
            book.told_to_stop = False
        return {"ok": True, "identity": chief.identity, "source": chief.source, "sweep_dir": str(chief.sweep_dir),
                "token": chief.token}

    def heartbeat(request: Dict[str, Any], context: Any) -> Dict[str, Any]:
        worker_id, token = str(request.get("worker_id")), str(request.get("token"))
        with chief.lock:
            book = chief.workers.get(worker_id)
            if book is not None and book.token and book.token != token:
                return {"ok": False}  # an older process under a reused id
            # Known, or a worker of a chief that was restarted: it carries on under this chief.
            chief.touch(worker_id).token = token
        return {"ok": True}

    def goodbye(request: Dict[str, Any], context: Any) -> Dict[str, Any]:
        worker_id, token = str(request.get("worker_id")), str(request.get("token"))
        with chief.lock:
            book = chief.workers.get(worker_id)
            if book is not None and book.token == token:
                # Its trial stays its own: a restart under the same id resumes it; otherwise the lease
                # gives it back to the queue.
                book.gone, book.token = True, ""
        return {"ok": True}

    def unary(fn: Callable) -> Any:
        return grpc.unary_unary_rpc_method_handler(fn, request_deserializer=_loads, response_serializer=_dumps)

    return grpc.method_handlers_generic_handler(
        _SERVICE, {"Hello": unary(hello), "Heartbeat": unary(heartbeat), "Goodbye": unary(goodbye)})


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, default=str).encode("utf-8")


def _loads(data: bytes) -> Any:
    return json.loads(data.decode("utf-8"))


def _write_json(path: Path, data: Any) -> None:
    from toolkit.results import write_json

    write_json(path, data)


# ----------------------------------------------------------------------------------- the worker side


class ChiefClient:
    """A worker's line to the chief's ktk calls (handshake, heartbeats, goodbye)."""

    def __init__(self, address: Address, worker_id: str, timeout_s: float):
        import grpc

        self.address = address
        self.worker_id = worker_id
        self.timeout_s = timeout_s
        self.token = uuid.uuid4().hex
        self._channel = grpc.insecure_channel(str(address))
        self._calls = {name: self._channel.unary_unary(f"/{_SERVICE}/{name}", request_serializer=_dumps,
                                                       response_deserializer=_loads)
                       for name in ("Hello", "Heartbeat", "Goodbye")}
        self._stop = threading.Event()

    def _ids(self) -> Dict[str, str]:
        return {"worker_id": self.worker_id, "token": self.token}

    def hello(self, identity: Optional[Dict[str, Any]], file: Optional[str] = None) -> Dict[str, Any]:
        """Waits up to the timeout for the chief and returns its answer.

        Args:
            identity: this worker's :func:`config_identity` (checked by the chief), or None to take the chief's.
            file: this worker's config file, named when the chief refuses its config.

        Raises:
            UserError: when the chief cannot be reached in time, or refuses this worker.
        """
        import grpc

        request = dict(self._ids())
        if identity is not None:
            request.update(identity=identity, fingerprint=config_fingerprint(identity))
        try:
            answer = self._calls["Hello"](request, wait_for_ready=True, timeout=self.timeout_s)
        except grpc.RpcError as error:
            if error.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE):
                raise UserError(f"cannot reach the chief at {self.address} within {self.timeout_s:g} s: is it "
                                "running (ktk tune CONFIG --role chief --listen HOST:PORT) and listening on an "
                                "address this machine can reach?", where="--chief") from None
            if error.code() == grpc.StatusCode.UNIMPLEMENTED:
                raise UserError(f"{self.address} answers but is not a ktk chief", where="--chief") from None
            raise UserError(f"the chief at {self.address} failed: {error.details()}", where="--chief") from None
        if not answer.get("ok"):
            if answer.get("where"):  # keys where the configs differ
                raise UserError(answer["error"], where=answer["where"], file=file)
            raise UserError(answer.get("error", "the chief refused this worker"), where="--worker-id")
        return answer

    def start_heartbeats(self, interval_s: float = HEARTBEAT_S) -> None:
        def beat() -> None:
            while not self._stop.wait(interval_s):
                try:
                    self._calls["Heartbeat"](self._ids(), timeout=interval_s)
                except Exception:  # noqa: BLE001 - the chief may be restarting; the trial calls will tell
                    pass

        threading.Thread(target=beat, name="ktk-heartbeat", daemon=True).start()

    def close(self) -> None:
        """Says goodbye (so a restart under the same id is welcome at once) and closes the channel."""
        self._stop.set()
        try:
            self._calls["Goodbye"](self._ids(), timeout=2.0)
        except Exception:  # noqa: BLE001 - the chief may be gone already; the lease covers that
            pass
        self._channel.close()


@contextlib.contextmanager
def _environment(values: Dict[str, str]) -> Iterator[None]:
    """Sets environment variables (keras-tuner reads its distributed settings there) and restores them."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def run_worker(config: Any, *, chief: Address, worker_id: str, out_dir: Optional[str] = None,
               verbose: bool = False, chief_timeout: float = CHIEF_TIMEOUT_S,
               progress: Optional[Callable[[str], None]] = None) -> Any:
    """Runs trials for the chief at `chief` until it has no more; never deletes the shared sweep.

    Args:
        config: this worker's config (it must equal the chief's), or None to take the chief's.
        chief: the chief's address.
        worker_id: this worker's id; a worker restarted with the same id resumes the trial it was running.
        out_dir: the shared sweep directory as this machine sees it (default: the chief's path).
        verbose: show Keras' per-epoch progress.
        chief_timeout: seconds to wait for an absent chief (at start and whenever it is gone).
        progress: called with one line per trial this worker finishes.

    Returns:
        The :class:`toolkit.sweeps.SweepResult` of the worker (``role="worker"``, no ``best``).

    Raises:
        UserError: chief unreachable, a different config, a sweep directory that is not the chief's.
    """
    import grpc

    from toolkit import sweeps

    check_worker_id(worker_id)
    client = ChiefClient(chief, worker_id, chief_timeout)
    try:
        answer = client.hello(config_identity(config) if config is not None else None,
                              file=config.source if config is not None else None)
        if config is None:
            from toolkit.config import parse_config

            config = parse_config(answer["identity"], source=answer.get("source"))
        sweep_dir = Path(out_dir) if out_dir is not None else Path(answer["sweep_dir"])
        _check_same_sweep(sweep_dir, answer["token"], chief)
        client.start_heartbeats()
        from keras_tuner.src.distribute import oracle_client

        oracle_client.TIMEOUT = chief_timeout  # keras-tuner waits an hour per call otherwise
        settings = {"KERASTUNER_TUNER_ID": worker_id, "KERASTUNER_ORACLE_IP": chief.host,
                    "KERASTUNER_ORACLE_PORT": str(chief.port)}
        try:
            with _environment(settings):
                return sweeps.tune(config, out_dir=sweep_dir, overwrite=False, verbose=verbose, progress=progress)
        except grpc.RpcError as error:
            raise UserError(f"lost the chief at {chief} ({error.code().name} after waiting up to "
                            f"{chief_timeout:g} s); the trial this worker was running is run again when the "
                            "sweep goes on", where="--chief") from None
    finally:
        client.close()


def _check_same_sweep(sweep_dir: Path, token: str, chief: Address) -> None:
    marker = sweep_dir / LOGS_DIR / "chief.json"
    try:
        found = json.loads(marker.read_text(encoding="utf-8")).get("token")
    except (OSError, ValueError):
        found = None
    if found != token:
        raise UserError(f"this is not the sweep directory of the chief at {chief}: the chief and its workers "
                        "must share one directory (a network file system mounted at the same path, or given "
                        "to each worker with --out)", where="--out", received=str(sweep_dir))


def _watch_parent(parent_pid: int) -> None:
    """A supervised worker ends (with its trial process) when its supervisor is gone, e.g. killed -9."""

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent_pid:
                try:
                    os.killpg(os.getpgrp(), signal.SIGKILL)  # its own group: this worker and its trial process
                finally:
                    os._exit(3)

    threading.Thread(target=watch, name="ktk-parent-watch", daemon=True).start()


# ----------------------------------------------------------------------------------- supervision


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
    """

    def __init__(self, worker_ids: List[str], *, address: Address, sweep_dir: Path, verbose: bool,
                 chief_timeout: float, on_event: Callable[[str], None]):
        self.chief: Optional[Chief] = None
        self.slots = {worker_id: _Slot(worker_id) for worker_id in worker_ids}
        wildcard = {"0.0.0.0": LOOPBACK, "::": "::1"}
        # a chief listening on every interface is reached here on loopback
        self.address = Address(wildcard.get(address.host, address.host), address.port)
        self.sweep_dir = Path(sweep_dir)
        self.verbose = verbose
        self.chief_timeout = chief_timeout
        self.on_event = on_event

    def attach(self, chief: Chief) -> None:
        """The chief is serving: it learns which workers are supervised (their liveness is known here)."""
        self.chief = chief
        for worker_id in self.slots:
            chief.supervise(worker_id)
        _write_json(self.sweep_dir / LOGS_DIR / "workers.json", self.pids())

    def _command(self, worker_id: str) -> List[str]:
        command = [sys.executable, "-m", "toolkit.distributed", "--chief", str(self.address),
                   "--worker-id", worker_id, "--out", str(self.sweep_dir),
                   "--chief-timeout", str(self.chief_timeout), "--parent", str(os.getpid())]
        return command + (["--verbose"] if self.verbose else [])

    def start(self, slot: _Slot) -> None:
        if self.chief is not None:
            self.chief.supervise(slot.worker_id)
        slot.log_path = self.sweep_dir / LOGS_DIR / f"{slot.worker_id}.log"
        env = dict(os.environ)
        package_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        for name in ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT"):
            env.pop(name, None)
        slot.process = subprocess.Popen(self._command(slot.worker_id), stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True)
        slot.pump = threading.Thread(target=_pump, args=(slot.process.stdout, slot.log_path, self._sweep_ready),
                                     name=f"ktk-log-{slot.worker_id}", daemon=True)
        slot.pump.start()
        slot.exited = False
        if self.chief is not None:
            _write_json(self.sweep_dir / LOGS_DIR / "workers.json", self.pids())

    def _sweep_ready(self) -> bool:
        # Nothing may appear in a new sweep directory before its config.yaml: the sweep refuses a folder
        # that is not empty and holds no sweep.
        return (self.sweep_dir / "config.yaml").is_file()

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
                                f"running a trial; the end of its log ({slot.log_path}):\n{_log_tail(slot.log_path)}")
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


def tune_distributed(config: Any, *, out_dir: Optional[str] = None, workers: Optional[int] = None,
                     role: Optional[str] = None, listen: Optional[str] = None, chief: Optional[str] = None,
                     worker_id: Optional[str] = None, overwrite: bool = False, verbose: bool = False,
                     chief_timeout: Optional[float] = None,
                     progress: Optional[Callable[[str], None]] = None) -> Any:
    """Runs the config's sweep as a keras-tuner chief with workers, supervised.

    With ``workers=N`` (and no role) this process is the chief on loopback and runs N local workers. With
    ``role="chief"`` it serves on `listen` for workers on other machines (plus `workers` local ones);
    with ``role="worker"`` it runs trials for the chief at `chief`.

    Args:
        config: the sweep's :class:`toolkit.config.Config` (with a ``search:`` section).
        out_dir: the sweep directory (one directory shared by every machine of a multi-machine sweep).
        workers: local worker processes to run.
        role: ``"chief"`` or ``"worker"`` (inferred from `listen` / `chief` when not given).
        listen: the chief's address, ``HOST:PORT`` (default: loopback, a free port).
        chief: a worker's chief, ``HOST:PORT``.
        worker_id: a worker's id (default ``<host>-<pid>``); reuse it to resume a dead worker's trial.
        overwrite: start the sweep over (chief only: workers never delete the shared sweep).
        verbose: show Keras' per-epoch progress (in the workers' logs).
        chief_timeout: seconds a worker waits for an absent chief before giving up with an error
            (default :data:`CHIEF_TIMEOUT_S`; local workers of a chief always use the default).
        progress: called with one line per finished trial and per event (a worker restarted, ...).

    Returns:
        The :class:`toolkit.sweeps.SweepResult`: on the chief with ``best/`` retrained, on a worker without.

    Raises:
        UserError: bad flags, an unreachable chief, a worker that cannot go on, a run of failed trials.
    """
    the_plan = plan(workers=workers, role=role, listen=listen, chief=chief, worker_id=worker_id,
                    overwrite=overwrite, chief_timeout=chief_timeout)
    if the_plan.role == "worker":
        return run_worker(config, chief=the_plan.chief, worker_id=the_plan.worker_id, out_dir=out_dir,
                          verbose=verbose, chief_timeout=chief_timeout or CHIEF_TIMEOUT_S, progress=progress)
    return _run_chief(config, the_plan, out_dir=out_dir, overwrite=overwrite, verbose=verbose,
                      chief_timeout=CHIEF_TIMEOUT_S, say=progress or (lambda text: None))


def _run_chief(config: Any, the_plan: Plan, *, out_dir: Optional[str], overwrite: bool, verbose: bool,
               chief_timeout: float, say: Callable[[str], None]) -> Any:
    """The chief: ``sweeps.tune`` as keras-tuner's chief, with keras-tuner's server replaced by ours."""
    from keras_tuner.src.distribute import oracle_chief

    from toolkit import sweeps
    from toolkit.search import parse_search

    spec = parse_search(config)
    sweep_dir = Path(out_dir) if out_dir is not None else sweeps.DEFAULT_SWEEPS_DIR / config.name
    project = sweep_dir / sweeps.TUNER_DIR
    try:  # the trials running when the last chief stopped, and on which worker (keras-tuner forgets who)
        running = {} if overwrite else json.loads((project / "oracle.json").read_text())["ongoing_trials"]
    except (OSError, ValueError, KeyError):
        running = {}
    if not overwrite and (project / "oracle.json").is_file() and not (project / "chief.json").is_file():
        # keras-tuner reloads the oracle only if the file of its own tuner id exists (keras-tuner #976):
        # without this, a chief taking over a sweep begun in one process would start it over.
        _write_json(project / "chief.json", {})
    # Other processes can join only a chief on a port given in advance (or one with no local workers).
    remote_possible = bool(the_plan.listen.port or not the_plan.workers)
    supervisor = None
    if the_plan.workers:
        if not the_plan.listen.port:
            the_plan = dataclasses.replace(the_plan, listen=Address(the_plan.listen.host,
                                                                    _free_port(the_plan.listen.host)))
        supervisor = Supervisor([f"tuner{i}" for i in range(the_plan.workers)], address=the_plan.listen,
                                sweep_dir=sweep_dir, verbose=verbose, chief_timeout=chief_timeout, on_event=say)
        if not overwrite:  # (--overwrite empties the directory they would log into)
            # The workers import TensorFlow while this process loads the sweep; their handshake waits for us.
            supervisor.start_all()

    def serve(oracle: Any) -> None:
        _serve(oracle, the_plan, supervisor, running=running, remote_possible=remote_possible,
               identity=config_identity(config), source=config.source, sweep_dir=sweep_dir,
               planned=spec.planned_trials(), max_failures_in_a_row=spec.max_consecutive_failures, say=say)

    settings = {"KERASTUNER_TUNER_ID": "chief", "KERASTUNER_ORACLE_IP": the_plan.listen.host,
                "KERASTUNER_ORACLE_PORT": str(the_plan.listen.port)}
    original = oracle_chief.start_server
    oracle_chief.start_server = serve  # keras-tuner's own: 20 s polling, no supervision, no prompt exit
    try:
        with _environment(settings):
            return sweeps.tune(config, out_dir=sweep_dir, overwrite=overwrite, verbose=verbose, progress=say,
                               chief_reports=False)  # _serve's chief reports each trial, from the oracle
    finally:
        oracle_chief.start_server = original
        if supervisor is not None:
            supervisor.stop()


def _free_port(host: str, port: int = 0) -> int:
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
    except OSError as error:  # gaierror (unknown host) is an OSError too
        raise UserError(f"the chief cannot listen there ({error.strerror or error}): the port is in use, or the "
                        f"host is not an address of this machine", where="--listen",
                        received=str(Address(host, port)) if port else host) from None


def _serve(oracle: Any, the_plan: Plan, supervisor: Optional[Supervisor], *, running: Dict[str, str],
           remote_possible: bool, identity: Dict[str, Any], source: Optional[str], sweep_dir: Path,
           planned: Optional[int], max_failures_in_a_row: Optional[int], say: Callable[[str], None]) -> None:
    """Serves the oracle until every trial is finished, supervising the local workers; then returns."""
    chief = Chief(oracle, identity=identity, source=source, sweep_dir=sweep_dir, planned=planned, on_event=say,
                  on_trial_end=lambda end: say(format_trial_end(end)), max_failures_in_a_row=max_failures_in_a_row)
    local_ids = list(supervisor.slots) if supervisor is not None else []
    chief.restore_running(running, local_ids=local_ids, remote_possible=remote_possible)
    if chief.nothing_left():
        chief.stop()
        return
    project = sweep_dir / "tuner"
    if not (project / "tuner0.json").is_file():
        _write_json(project / "tuner0.json", {})  # so that a later one-process `ktk tune` reloads the oracle
    try:
        address = chief.start(the_plan.listen)
        if supervisor is not None:
            supervisor.attach(chief)
            if not supervisor.started():
                supervisor.start_all()
            say(f"chief on {address} with {len(local_ids)} worker process(es); their logs: {sweep_dir / LOGS_DIR}")
        if remote_possible:
            hint = "  (loopback: only this machine can join)" if address.host in (LOOPBACK, "localhost", "::1") else ""
            say(f"chief listening on {address}; start workers with: ktk tune CONFIG --role worker --chief "
                f"{address} --worker-id NAME{hint}")
        while True:
            if supervisor is not None:
                try:
                    supervisor.poll()
                except UserError:
                    if chief.halt_message is None:
                        raise
                    # A worker stopped on its own count of failed trials; the chief's count says it better.
            chief.requeue_silent_workers()
            if chief.finished():
                break
            if supervisor is not None and supervisor.all_exited() and not remote_possible:
                raise UserError(f"every worker exited but the sweep is not finished; see {sweep_dir / LOGS_DIR}")
            time.sleep(0.1)
    finally:
        if supervisor is not None:
            supervisor.stop()
        chief.stop()
    if chief.halt_message:
        raise UserError(chief.halt_message, where="search.max_consecutive_failures", file=source)


def format_trial_end(end: TrialEnd) -> str:
    """One progress line, like a one-process sweep's, with the worker that ran the trial."""
    from toolkit.sweeps import format_progress

    return format_progress(
        done=end.done, planned=end.planned, trial_id=end.trial_id, worker=end.worker or "?",
        objective=end.objective, completed=end.status == "COMPLETED", score=end.score, message=end.message,
        best=(end.best_score, end.best_trial) if end.best_trial is not None else None,
        elapsed=end.elapsed_s, finished_since_start=end.finished_here)


# ----------------------------------------------------------------------------------- worker processes


def _worker_main(argv: Optional[List[str]] = None) -> int:
    """A supervised worker process (``python -m toolkit.distributed``): the config comes from the chief."""
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
    # TensorFlow (through keras-tuner) first: a worker started early imports it while the chief loads.
    import keras_tuner  # noqa: F401

    try:
        run_worker(None, chief=parse_address(args.chief, flag="--chief"), worker_id=args.worker_id,
                   out_dir=args.out, verbose=args.verbose, chief_timeout=args.chief_timeout,
                   progress=lambda line: print(line, flush=True))
    except UserError as error:
        print(f"ktk: error: {error}", file=sys.stderr, flush=True)
        return 2
    print(f"worker {args.worker_id}: done", flush=True)
    return 0


def _exit_now(code: int) -> None:
    """Exits without the interpreter's teardown: TensorFlow's takes seconds and nothing is left to save."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover - a supervised worker process
    _exit_now(_worker_main())
