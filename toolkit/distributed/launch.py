"""``tune_distributed``: a sweep as a chief (with local workers, supervised) or as a worker of a remote chief.

The chief runs :func:`toolkit.sweeps.tune` with a chief :class:`~toolkit.sweeps.tuning.Role` whose ``serve``
is :func:`serve` below: keras-tuner's ``BaseTuner.search`` hands it the reloaded oracle, and it serves that
oracle (:class:`~toolkit.distributed.chief.Chief`) and supervises the local workers until every trial is
finished; then ``tune`` writes trials.csv and retrains ``best/`` once, in the chief.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from toolkit.distributed.chief import Chief, format_trial_end
from toolkit.distributed.plan import CHIEF_TIMEOUT_S, LOOPBACK, Address, Plan, free_port, plan
from toolkit.distributed.protocol import config_identity
from toolkit.distributed.supervisor import Supervisor
from toolkit.distributed.worker import run_worker
from toolkit.errors import UserError
from toolkit.results import LOGS_DIR, TUNER_DIR

POLL_S = 0.1  # how often the chief's loop checks its workers and whether the search is over


def tune_distributed(config: Any, *, out_dir: Optional[str] = None, workers: Optional[int] = None,
                     role: Optional[str] = None, listen: Optional[str] = None, chief: Optional[str] = None,
                     worker_id: Optional[str] = None, overwrite: bool = False, verbose: bool = False,
                     chief_timeout: Optional[float] = None, gpus: Optional[str] = None,
                     per_gpu: Optional[int] = None, progress: Optional[Callable[[str], None]] = None) -> Any:
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
            (default :data:`~toolkit.distributed.plan.CHIEF_TIMEOUT_S`; local workers of a chief always use
            the default).
        gpus: ``--gpus``: the GPUs local workers run on, e.g. ``"0,1"`` (default: every GPU this process sees).
        per_gpu: ``--per-gpu``: local workers per GPU. Each local worker sees one GPU and grows its memory as
            needed (:mod:`toolkit.hardware.gpus`); on a machine without GPUs `gpus` and `per_gpu` are refused.
        progress: called with one line per finished trial and per event (a worker restarted, ...).

    Returns:
        The :class:`toolkit.sweeps.SweepResult`: on the chief with ``best/`` retrained, on a worker without.

    Raises:
        UserError: bad flags, an unreachable chief, a worker that cannot go on, a run of failed trials.
    """
    from toolkit.sweeps.keras_tuner_compat import check_version

    the_plan = plan(workers=workers, role=role, listen=listen, chief=chief, worker_id=worker_id,
                    overwrite=overwrite, chief_timeout=chief_timeout, gpus=gpus, per_gpu=per_gpu)
    check_version()
    if the_plan.role == "worker":
        return run_worker(config, chief=the_plan.chief, worker_id=the_plan.worker_id, out_dir=out_dir,
                          verbose=verbose, chief_timeout=chief_timeout or CHIEF_TIMEOUT_S, progress=progress)
    return _run_chief(config, the_plan, out_dir=out_dir, overwrite=overwrite, verbose=verbose,
                      say=progress or (lambda text: None))


def _run_chief(config: Any, the_plan: Plan, *, out_dir: Optional[str], overwrite: bool, verbose: bool,
               say: Callable[[str], None]) -> Any:
    """The chief: ``tune`` in the chief's role, its oracle served by :func:`serve`."""
    from toolkit.search import parse_search
    from toolkit.sweeps import keras_tuner_compat as compat
    from toolkit.sweeps import directory
    from toolkit.sweeps.tuning import Role, tune

    spec = parse_search(config)
    sweep_dir = directory.sweep_dir_for(config, out_dir)
    directory.check(sweep_dir, config, spec, overwrite=overwrite)  # before any worker starts (tune checks again)
    # the trials running when the last chief stopped, and on which worker (keras-tuner forgets who)
    running = {} if overwrite else compat.saved_running_trials(sweep_dir / TUNER_DIR)
    # Other processes can join only a chief on a port given in advance (or one with no local workers).
    remote_possible = bool(the_plan.listen.port or not the_plan.workers)
    supervisor = None
    if the_plan.workers:
        if not the_plan.listen.port:
            the_plan = dataclasses.replace(the_plan, listen=Address(the_plan.listen.host,
                                                                    free_port(the_plan.listen.host)))
        worker_ids = [f"tuner{i}" for i in range(the_plan.workers)]
        supervisor = Supervisor(worker_ids, address=the_plan.listen, sweep_dir=sweep_dir, verbose=verbose,
                                chief_timeout=CHIEF_TIMEOUT_S, on_event=say, gpus=the_plan.gpus)
        if the_plan.gpus is not None:
            say(the_plan.gpus.describe(worker_ids))
        if not overwrite:  # (--overwrite empties the directory they would log into)
            # The workers import TensorFlow while this process loads the sweep; their handshake waits for us.
            supervisor.start_all()

    def serve_oracle(oracle: Any) -> None:
        serve(oracle, the_plan, supervisor, running=running, remote_possible=remote_possible,
              identity=config_identity(config), source=config.source, sweep_dir=sweep_dir,
              planned=spec.planned_trials(), max_failures_in_a_row=spec.max_consecutive_failures, say=say)

    role = Role.chief(the_plan.listen.host, the_plan.listen.port, serve=serve_oracle)
    try:
        return tune(config, out_dir=sweep_dir, overwrite=overwrite, verbose=verbose, progress=say, role=role)
    finally:
        if supervisor is not None:
            supervisor.stop()


def serve(oracle: Any, the_plan: Plan, supervisor: Optional[Supervisor], *, running: Dict[str, str],
          remote_possible: bool, identity: Dict[str, Any], source: Optional[str], sweep_dir: Path,
          planned: Optional[int], max_failures_in_a_row: Optional[int], say: Callable[[str], None]) -> None:
    """Serves the oracle until every trial is finished, supervising the local workers; then returns.

    Raises:
        UserError: a worker stopped on a user error or keeps dying, every worker exited too early, or the
            chief stopped the search after too many failed trials in a row.
    """
    chief = Chief(oracle, identity=identity, source=source, sweep_dir=sweep_dir, planned=planned, on_event=say,
                  on_trial_end=lambda end: say(format_trial_end(end)), max_failures_in_a_row=max_failures_in_a_row)
    local_ids = list(supervisor.slots) if supervisor is not None else []
    chief.restore_running(running, local_ids=local_ids, remote_possible=remote_possible)
    if chief.nothing_left():
        chief.stop()
        return
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
                raise UserError(f"every worker exited but the sweep is not finished; see {sweep_dir / LOGS_DIR}",
                                where="--workers")
            time.sleep(POLL_S)
    finally:
        if supervisor is not None:
            supervisor.stop()
        chief.stop()
    if chief.halt_message:
        raise UserError(chief.halt_message, where="search.max_consecutive_failures", file=source)
