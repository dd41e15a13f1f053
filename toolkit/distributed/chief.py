"""The chief of a distributed sweep: keras-tuner's oracle served over gRPC, with the books keras-tuner lacks.

keras-tuner's own servicer answers the trial calls, under one lock, with these additions: at most one end per
trial (a trial re-queued from a silent worker that reports after all is taken, not run twice), a halt after
too many failed trials in a row over all workers, an "ask again later" answer held back half a second, and
the worker books (tokens, heartbeats, a lease) behind ktk's own calls (:mod:`toolkit.distributed.protocol`).
"""

from __future__ import annotations

import functools
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from toolkit.distributed.plan import HEARTBEAT_S, IDLE_DELAY_S, WORKER_LEASE_S, Address
from toolkit.distributed.protocol import CALLS, SERVICE, config_fingerprint, dumps, loads
from toolkit.errors import UserError
from toolkit.results import LOGS_DIR, RECORDS_DIR, write_json
from toolkit.sweeps import keras_tuner_compat as compat
from toolkit.sweeps.directory import differences
from toolkit.sweeps.formatting import format_progress, last_line
from toolkit.results import utc_now
from toolkit.sweeps.records import Records, failure_record

CHIEF_FILE = "chief.json"  # <sweep>/logs/chief.json: the serving chief's address and token


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
        self.records = Records(self.sweep_dir / RECORDS_DIR)
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
        # SO_REUSEPORT is on by default in gRPC: two chiefs could then share one port and split the workers.
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=[("grpc.so_reuseport", 0)])
        compat.protos().get_service_grpc().add_OracleServicer_to_server(servicer_class()(self), server)
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
        write_json(self.sweep_dir / LOGS_DIR / CHIEF_FILE,
                   {"address": str(self.address), "token": self.token, "pid": os.getpid(),
                    "host": socket.gethostname(), "started": utc_now()})
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
        from keras_tuner.engine.trial import TrialStatus

        oracle = self.oracle
        queue = compat.retry_queue(oracle)
        with self.lock:
            for worker_id, trial_id in running.items():
                if trial_id not in queue or (worker_id not in local_ids and not remote_possible):
                    continue
                queue.remove(trial_id)
                trial = oracle.trials[trial_id]
                trial.status = TrialStatus.RUNNING
                oracle.ongoing_trials[worker_id] = trial
                oracle.tuner_ids.add(worker_id)
                self.book(worker_id)
            oracle.save()

    def nothing_left(self) -> bool:
        """The reloaded sweep has every planned trial finished: no worker is needed."""
        oracle = self.oracle
        with self.lock:
            return bool(oracle.max_trials) and len(oracle.trials) >= oracle.max_trials \
                and not oracle.ongoing_trials and not compat.retry_queue(oracle)

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
        from keras_tuner.engine.trial import TrialStatus

        with self.lock:
            trial = self.oracle.ongoing_trials.get(worker_id)
            if trial is None:
                return None
            self.records.write(failure_record(trial.trial_id, self._config_values(trial), message, worker_id))
            trial.status = TrialStatus.FAILED
            trial.message = message
            self.end_trial(trial, worker_id)
            return trial.trial_id

    def requeue_silent_workers(self, now: Optional[float] = None) -> None:
        """Gives the trial of an unsupervised worker silent for longer than the lease back to the queue.

        Args:
            now: the time to judge silence at (``time.monotonic()`` by default; a test passes a later one).
        """
        now = time.monotonic() if now is None else now
        with self.lock:
            for worker_id, book in self.workers.items():
                silent = now - book.last_seen
                if book.supervised or book.told_to_stop or silent <= self.lease_s:
                    continue
                trial = self.oracle.ongoing_trials.pop(worker_id, None)
                self.oracle.tuner_ids.discard(worker_id)
                for pack_id in [i for i in self.oracle.ongoing_trials if compat.pack_owner(i) == worker_id]:
                    # the trials it took to train in packs go back too
                    compat.retry_queue(self.oracle).append(self.oracle.ongoing_trials.pop(pack_id).trial_id)
                    self.oracle.tuner_ids.discard(pack_id)
                if trial is not None:
                    compat.retry_queue(self.oracle).append(trial.trial_id)
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
            if self.halt_message is None and compat.retry_queue(self.oracle):
                return False
            # A supervised worker without a trial is stopped by its supervisor; others must hear STOPPED,
            # or a worker would wait for a chief that is gone (keras-tuner PR #645).
            return all(book.told_to_stop or book.gone or book.supervised for book in self.workers.values())

    def end_trial(self, trial: Any, worker_id: Optional[str]) -> None:
        """Ends a trial in the oracle (under the lock) and reports it."""
        from keras_tuner.engine.trial import TrialStatus

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
            compat.save_trial(oracle, oracle.trials[trial.trial_id])
            oracle.save()
            self.halt_message = str(error).splitlines()[0]
        ended = oracle.trials[trial.trial_id]
        if len(oracle.end_order) == before:
            self._on_event(f"trial {ended.trial_id} on {worker_id} ended {ended.status}; it will be retried")
            return
        self.finished_here += 1
        reason = self._failure_reason(ended)
        in_a_row = 0
        for trial_id in reversed(oracle.end_order):
            if oracle.trials[trial_id].status == TrialStatus.COMPLETED:
                break
            in_a_row += 1
        if self.max_failures_in_a_row and in_a_row >= self.max_failures_in_a_row and self.halt_message is None:
            # The words of a one-process sweep (toolkit.sweeps), counted over every worker.
            self.halt_message = (
                f"the search stopped after {in_a_row} failed trials in a row (limit {self.max_failures_in_a_row});"
                f" the last failed with: {reason or 'no reason recorded'}. Finished trials are kept: fix the cause "
                "and run the same command to resume, or raise the limit")
        best = [t for t in oracle.get_best_trials(1) if t.status == TrialStatus.COMPLETED]
        self._on_trial_end(TrialEnd(
            trial_id=ended.trial_id, status=ended.status, score=ended.score, worker=worker_id,
            done=len(oracle.end_order), planned=self.planned or oracle.max_trials,
            best_score=best[0].score if best else None, best_trial=best[0].trial_id if best else None,
            objective=getattr(oracle.objective, "name", str(oracle.objective)),
            elapsed_s=time.monotonic() - self.started, finished_here=self.finished_here,
            message=reason))

    def _failure_reason(self, trial: Any) -> Optional[str]:
        """The sweep's own failure message for a trial (its record), else keras-tuner's last line.

        keras-tuner's trial messages do not travel over gRPC; the worker's record has the reason.
        """
        if trial.status == "COMPLETED":
            return None
        record = self.records.load().get(str(trial.trial_id))
        if record is not None and record.get("message"):
            return str(record["message"])
        return last_line(trial.message) or None

    def _config_values(self, trial: Any) -> Dict[str, Any]:
        """The config values (dot paths) of a trial's hyperparameters."""
        from toolkit.config import parse_config
        from toolkit.search import parse_search

        try:
            return parse_search(parse_config(self.identity)).config_values(trial.hyperparameters.values)
        except UserError:
            return {}



# ------------------------------------------------------------------------------------- the gRPC side


@functools.lru_cache(maxsize=None)
def servicer_class() -> type:
    """keras-tuner's servicer, with one lock, worker books, a halt, and at most one end per trial (``Servicer(chief)``)."""
    from keras_tuner.engine.trial import Trial, TrialStatus

    service = compat.protos().get_service()

    base = compat.oracle_servicer_class()

    def locked(name: str) -> Callable:
        call = getattr(base, name)

        def method(self, request, context):
            with self.chief.lock:
                return call(self, request, context)

        method.__name__ = name
        return method

    class Servicer(base):
        def __init__(self, chief: Chief):
            super().__init__(chief.oracle)
            self.chief = chief

        # keras-tuner's own answers, one call at a time (as its one-thread server did)
        GetSpace = locked("GetSpace")
        UpdateSpace = locked("UpdateSpace")
        GetTrial = locked("GetTrial")
        UpdateTrial = locked("UpdateTrial")
        GetBestTrials = locked("GetBestTrials")

        def CreateTrial(self, request, context):
            chief, tuner_id = self.chief, request.tuner_id
            oracle = chief.oracle
            with chief.lock:
                # A worker training packs (search.pack) takes its extra trials under ids of its own, booked
                # as the worker's: they live and die with it, and only its own id is told to stop.
                owner = compat.pack_owner(tuner_id)
                book = chief.touch(owner)
                if chief.halt_message is not None and tuner_id not in oracle.ongoing_trials:
                    trial = Trial(oracle.get_space(), status=TrialStatus.STOPPED)
                else:
                    trial = oracle.create_trial(tuner_id)
                if owner != tuner_id:
                    if trial.status == TrialStatus.STOPPED:
                        oracle.tuner_ids.discard(tuner_id)
                    return service.CreateTrialResponse(trial=trial.to_proto())
                book.told_to_stop = trial.status == TrialStatus.STOPPED
                if book.told_to_stop:
                    chief.stop_triggered = True
                    oracle.tuner_ids.discard(tuner_id)
            if trial.status == TrialStatus.IDLE:
                # Hyperband waits for a round to finish; keras-tuner's worker asks again at once, in a tight
                # loop. Answering a little later keeps that loop from taking a core from the training.
                time.sleep(IDLE_DELAY_S)
            return service.CreateTrialResponse(trial=trial.to_proto())

        def EndTrial(self, request, context):
            chief = self.chief
            trial = Trial.from_proto(request.trial)
            oracle = chief.oracle
            queue = compat.retry_queue(oracle)
            with chief.lock:
                owner = next((tuner_id for tuner_id, t in oracle.ongoing_trials.items()
                              if t.trial_id == trial.trial_id), None)
                if owner is None:
                    if trial.trial_id in queue:
                        # Its worker was given up for lost (or the chief restarted), yet it finished: take the
                        # result rather than run the trial again.
                        queue.remove(trial.trial_id)
                    elif trial.trial_id not in oracle.trials or trial.trial_id in oracle.end_order:
                        return service.EndTrialResponse()  # ended already: a trial is recorded once
                chief.end_trial(trial, owner)
                return service.EndTrialResponse()

    return Servicer


def _ktk_handlers(chief: Chief) -> Any:
    """ktk's three calls (:mod:`toolkit.distributed.protocol`): a handshake, heartbeats and a goodbye."""
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
                paths = [path for path, _ in differences(mine, chief.identity)]
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

    handlers = dict(zip(CALLS, (hello, heartbeat, goodbye)))
    return grpc.method_handlers_generic_handler(SERVICE, {
        name: grpc.unary_unary_rpc_method_handler(fn, request_deserializer=loads, response_serializer=dumps)
        for name, fn in handlers.items()})


def format_trial_end(end: TrialEnd) -> str:
    """One progress line, like a one-process sweep's, with the worker that ran the trial."""
    return format_progress(
        done=end.done, planned=end.planned, trial_id=end.trial_id, worker=end.worker or "?",
        objective=end.objective, completed=end.status == "COMPLETED", score=end.score, message=end.message,
        best=(end.best_score, end.best_trial) if end.best_trial is not None else None,
        elapsed=end.elapsed_s, finished_since_start=end.finished_here)
