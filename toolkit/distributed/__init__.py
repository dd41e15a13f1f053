"""Chief/worker sweeps across processes and machines, on keras-tuner's gRPC engine, supervised.

keras-tuner already ships the engine: one chief serves the oracle over gRPC and workers ask it for trials,
train them and report back, all writing into one shared project directory. This package makes that safe:

- ``ktk tune CONFIG --workers N`` runs the chief inside this process (on loopback, a free port) and N
  worker processes, restarts a worker that dies under the same worker id (keras-tuner then hands it the
  trial it was running), prints one line per finished trial and stops everything cleanly on Ctrl-C.
- ``--role chief --listen HOST:PORT`` and ``--role worker --chief HOST:PORT`` split the same sweep over
  several machines that share the sweep directory.

Every process runs :func:`toolkit.sweeps.tune` with its :class:`~toolkit.sweeps.tuning.Role`, so trials are
built, trained and recorded exactly as in one process. The modules, in the order a sweep uses them:

- :mod:`~toolkit.distributed.plan`: the flags: role, addresses, worker ids, limits;
- :mod:`~toolkit.distributed.launch`: :func:`tune_distributed`, the chief's serving loop;
- :mod:`~toolkit.distributed.chief`: :class:`Chief`, the oracle served over gRPC with ktk's books;
- :mod:`~toolkit.distributed.protocol`: ktk's own calls (handshake, heartbeat, goodbye) and config identity;
- :mod:`~toolkit.distributed.supervisor`: the chief's local worker processes;
- :mod:`~toolkit.distributed.worker`: a worker (``python -m toolkit.distributed`` when supervised).

Hazards of keras-tuner 1.4.8 handled here (measured; see docs/distributed.md):

- the chief polls every 20 s before exiting and never exits while a dead worker holds a trial: the chief is
  served by ktk's own loop, which ends as soon as every trial is finished and every worker has been told
  to stop; a remote worker that stops sending heartbeats loses its trial to the queue after a lease;
- the chief's last ``oracle.json`` lists the last trial as still running (it is saved before the trial is
  popped), so a resume would run it again: the chief saves the oracle once more when it stops;
- a worker started with ``overwrite=True`` deletes the shared project: workers never overwrite;
- workers wait up to an hour for an absent chief: here a worker gives up after ``chief_timeout``
  seconds with a clear :class:`~toolkit.errors.UserError`;
- gRPC servers share ports (SO_REUSEPORT) by default, so two chiefs could silently split one port:
  the chief binds exclusively;
- keras-tuner reloads a project only if the file of its own tuner id exists (keras-tuner #976), so a chief
  taking over a one-process sweep would start it over: :mod:`toolkit.sweeps.keras_tuner_compat` creates it;
- a restarted chief puts the trials that were running back in the queue while their workers may still be
  training them: they are held for those workers instead (:meth:`Chief.restore_running`).

The gRPC channel has no authentication and no encryption: bind to loopback (the default) or a trusted
network only.
"""

from toolkit.distributed.chief import Chief, TrialEnd, format_trial_end
from toolkit.distributed.launch import tune_distributed
from toolkit.distributed.plan import (CHIEF_TIMEOUT_S, CRASHES_PER_TRIAL, HEARTBEAT_S, LOOPBACK, STARTUP_CRASHES,
                                      STOP_GRACE_S, WORKER_LEASE_S, Address, Plan, check_worker_id,
                                      default_worker_id, parse_address, plan)
from toolkit.distributed.protocol import config_fingerprint, config_identity
from toolkit.distributed.supervisor import Supervisor, WorkerError
from toolkit.distributed.worker import ChiefClient, run_worker

__all__ = [
    "Address", "CHIEF_TIMEOUT_S", "CRASHES_PER_TRIAL", "Chief", "ChiefClient", "HEARTBEAT_S", "LOOPBACK", "Plan",
    "STARTUP_CRASHES", "STOP_GRACE_S", "Supervisor", "TrialEnd", "WORKER_LEASE_S", "WorkerError",
    "check_worker_id", "config_fingerprint", "config_identity", "default_worker_id", "format_trial_end",
    "parse_address", "plan", "run_worker", "tune_distributed",
]
