"""A worker of a distributed sweep: the handshake with the chief, heartbeats, and the trials it runs.

A worker runs :func:`toolkit.sweeps.tune` with a worker :class:`~toolkit.sweeps.tuning.Role`, so its trials are
trained and recorded exactly as in one process. ``python -m toolkit.distributed`` is a worker started by a
chief's :class:`~toolkit.distributed.supervisor.Supervisor` (:func:`worker_process_main`).
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from toolkit.distributed.chief import CHIEF_FILE
from toolkit.distributed.plan import CHIEF_TIMEOUT_S, HEARTBEAT_S, Address, check_worker_id, parse_address
from toolkit.distributed.protocol import CALLS, SERVICE, config_fingerprint, config_identity, dumps, loads
from toolkit.errors import UserError
from toolkit.results import LOGS_DIR


class ChiefClient:
    """A worker's line to the chief's ktk calls (handshake, heartbeats, goodbye)."""

    def __init__(self, address: Address, worker_id: str, timeout_s: float):
        import grpc

        self.address = address
        self.worker_id = worker_id
        self.timeout_s = timeout_s
        self.token = uuid.uuid4().hex
        self._channel = grpc.insecure_channel(str(address))
        self._calls = {name: self._channel.unary_unary(f"/{SERVICE}/{name}", request_serializer=dumps,
                                                       response_deserializer=loads)
                       for name in CALLS}
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
                except Exception:  # the chief may be restarting; the trial calls will tell
                    pass

        threading.Thread(target=beat, name="ktk-heartbeat", daemon=True).start()

    def close(self) -> None:
        """Says goodbye (so a restart under the same id is welcome at once) and closes the channel."""
        self._stop.set()
        try:
            self._calls["Goodbye"](self._ids(), timeout=2.0)
        except Exception:  # the chief may be gone already; the lease covers that
            pass
        self._channel.close()


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

    from toolkit.sweeps.tuning import Role, tune

    check_worker_id(worker_id)
    client = ChiefClient(chief, worker_id, chief_timeout)
    try:
        answer = client.hello(config_identity(config) if config is not None else None,
                              file=config.source if config is not None else None)
        if config is None:
            from toolkit.config import parse_config

            config = parse_config(answer["identity"], source=answer.get("source"))
        sweep_dir = Path(out_dir) if out_dir is not None else Path(answer["sweep_dir"])
        check_same_sweep(sweep_dir, answer["token"], chief)
        client.start_heartbeats()
        role = Role.worker(worker_id, chief.host, chief.port, client_timeout=chief_timeout)
        try:
            return tune(config, out_dir=sweep_dir, overwrite=False, verbose=verbose, progress=progress, role=role)
        except grpc.RpcError as error:
            raise UserError(f"lost the chief at {chief} ({error.code().name} after waiting up to "
                            f"{chief_timeout:g} s); the trial this worker was running is run again when the "
                            "sweep goes on", where="--chief") from None
    finally:
        client.close()


def check_same_sweep(sweep_dir: Path, token: str, chief: Address) -> None:
    """Refuses a sweep directory that is not the chief's (the chief wrote its token into logs/chief.json)."""
    try:
        found = json.loads((sweep_dir / LOGS_DIR / CHIEF_FILE).read_text(encoding="utf-8")).get("token")
    except (OSError, ValueError, AttributeError, RecursionError):
        found = None
    if found != token:
        raise UserError(f"this is not the sweep directory of the chief at {chief}: the chief and its workers "
                        "must share one directory (a network file system mounted at the same path, or given "
                        "to each worker with --out)", where="--out", received=str(sweep_dir))


def watch_parent(parent_pid: int) -> None:
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


def worker_process_main(argv: Optional[List[str]] = None) -> int:
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
        watch_parent(args.parent)
    if os.environ.get("CUDA_VISIBLE_DEVICES") is not None:  # the GPU this worker runs on (--gpus, --per-gpu)
        print(f"worker {args.worker_id}: CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']} "
              f"TF_FORCE_GPU_ALLOW_GROWTH={os.environ.get('TF_FORCE_GPU_ALLOW_GROWTH')}", flush=True)
    # TensorFlow (through keras-tuner) first: a worker started early imports it while the chief loads.
    importlib.import_module("keras_tuner")

    try:
        run_worker(None, chief=parse_address(args.chief, flag="--chief"), worker_id=args.worker_id,
                   out_dir=args.out, verbose=args.verbose, chief_timeout=args.chief_timeout,
                   progress=lambda line: print(line, flush=True))
    except UserError as error:
        print(f"ktk: error: {error}", file=sys.stderr, flush=True)
        return 2
    print(f"worker {args.worker_id}: done", flush=True)
    return 0


def exit_now(code: int) -> None:
    """Exits without the interpreter's teardown: TensorFlow's takes seconds and nothing is left to save."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

