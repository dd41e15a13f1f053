"""Every use ktk makes of keras-tuner beyond its public API, in one place, checked against the tested version.

keras-tuner's public API (Oracles, ``BaseTuner``, ``HyperModel``, ``HyperParameters``, ``Objective``,
``keras_tuner.engine.trial``) is used where it is needed. Everything else it takes to make sweeps safe is
here, so that a new keras-tuner version is checked in one module:

- **patched**: ``keras_tuner.src.config.DEBUG`` (the traceback of every failed trial),
  ``keras_tuner.src.engine.conditions.print`` (a leftover debug print),
  ``keras_tuner.src.distribute.oracle_chief.start_server`` (the chief's 20 s polling server),
  ``keras_tuner.src.distribute.oracle_client.TIMEOUT`` (workers wait an hour for the chief);
- **private names**: ``Oracle._retry_queue``, ``Oracle._save_trial``, ``Oracle._set_project_dir``,
  ``Oracle._duplicate``, ``Oracle._max_collisions``, ``conditions.Parent``, ``keras_tuner.src.protos``,
  ``oracle_chief.OracleServicer``;
- **environment**: keras-tuner reads its distributed role from ``KERASTUNER_TUNER_ID``,
  ``KERASTUNER_ORACLE_IP`` and ``KERASTUNER_ORACLE_PORT``: :func:`tuner_environment` sets (or clears) them for
  the duration of a sweep; ktk's own code is given its role as an argument and never reads them;
- **files**: keras-tuner reloads a project only if the file of its own tuner id exists (keras-tuner #976);
- and, not keras-tuner but Python's: ``multiprocessing.spawn.get_preparation_data`` while a trial worker
  process starts (:func:`main_module_not_rerun`).

ktk refuses to run a sweep with a keras-tuner version it was not tested with (:func:`check_version`), unless
``KTK_ALLOW_UNTESTED_KERAS_TUNER=1`` is set. keras-tuner itself is imported lazily, inside the functions.
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

from toolkit.errors import UserError

# pyproject.toml admits exactly these; 1.4.7 differs from 1.4.8 only in HyperImageAugment, which ktk does not use
TESTED_VERSIONS = ("1.4.7", "1.4.8")
ALLOW_UNTESTED = "KTK_ALLOW_UNTESTED_KERAS_TUNER"  # set to 1 to run sweeps on an untested keras-tuner
ENVIRONMENT = ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT")
CHIEF_ID = "chief"  # keras-tuner takes any tuner id containing "chief" for the chief
SINGLE_ID = "tuner0"  # the tuner id of a one-process search (keras-tuner's default)
ORACLE_FILE = "oracle.json"  # in the keras-tuner project: the oracle's state


# ------------------------------------------------------------------------------------------ the version


def installed_version() -> Optional[str]:
    """The installed keras-tuner's version (from its package metadata, without importing it), or None."""
    from importlib import metadata

    try:
        return metadata.version("keras-tuner")
    except metadata.PackageNotFoundError:
        return None


def check_version(version: Optional[str] = None) -> None:
    """Refuses a keras-tuner version this module was not tested with.

    Args:
        version: the version to check; default the installed one.

    Raises:
        UserError: keras-tuner is missing, or its version is not in :data:`TESTED_VERSIONS` and
            ``KTK_ALLOW_UNTESTED_KERAS_TUNER=1`` is not set.
    """
    version = installed_version() if version is None else version
    tested = ", ".join(TESTED_VERSIONS)
    if version is None:
        raise UserError("sweeps need keras-tuner, which is not installed (pip install -e . installs it)",
                        where="keras-tuner", expected=tested)
    if version in TESTED_VERSIONS or os.environ.get(ALLOW_UNTESTED) == "1":
        return
    raise UserError(f"ktk's sweeps rely on keras-tuner internals tested with keras-tuner {tested} only; install "
                    f"one of those, or set {ALLOW_UNTESTED}=1 to try this one anyway", where="keras-tuner",
                    expected=tested, received=version)


# ---------------------------------------------------------------------------------------- environment


@contextlib.contextmanager
def tuner_environment(tuner_id: Optional[str] = None, host: Optional[str] = None,
                      port: Optional[int] = None) -> Iterator[None]:
    """keras-tuner's distributed settings for the duration of a search, then the previous ones again.

    With no arguments (a one-process search) the variables are removed, so that settings left in the
    user's environment cannot turn a plain sweep into a distributed one behind ktk's back.
    """
    values = {"KERASTUNER_TUNER_ID": tuner_id, "KERASTUNER_ORACLE_IP": host,
              "KERASTUNER_ORACLE_PORT": None if port is None else str(port)}
    saved = {name: os.environ.get(name) for name in ENVIRONMENT}
    _set_environment(values)
    try:
        yield
    finally:
        _set_environment(saved)


def without_tuner_environment(env: Dict[str, str]) -> Dict[str, str]:
    """A copy of `env` without keras-tuner's distributed settings (for a process that gets its role by flags)."""
    return {name: value for name, value in env.items() if name not in ENVIRONMENT}


def _set_environment(values: Dict[str, Optional[str]]) -> None:
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def make_reloadable(project_dir: Path, tuner_id: str) -> None:
    """Lets a tuner of id `tuner_id` reload an existing project (keras-tuner #976).

    keras-tuner reloads a project only if ``<tuner id>.json`` exists in it, so a chief taking over a sweep begun
    in one process, or one process resuming a distributed sweep, would start the search over.
    """
    from toolkit.results import write_json

    if (project_dir / ORACLE_FILE).is_file() and not (project_dir / f"{tuner_id}.json").is_file():
        write_json(project_dir / f"{tuner_id}.json", {})


def saved_running_trials(project_dir: Path) -> Dict[str, str]:
    """``ongoing_trials`` of a project's saved oracle (worker id -> trial id); empty when unreadable."""
    import json

    try:
        state = json.loads((project_dir / ORACLE_FILE).read_text(encoding="utf-8"))
        running = state["ongoing_trials"]
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return {}
    if not isinstance(running, dict):
        return {}
    return {str(k): str(v) for k, v in running.items() if isinstance(v, (str, int))}


# -------------------------------------------------------------------------------------------- quiet


@contextlib.contextmanager
def quiet_trial_tracebacks() -> Iterator[None]:
    """keras-tuner prints the traceback of every failed trial (its DEBUG flag); ktk records the reason."""
    from keras_tuner.src import config as keras_tuner_config

    saved = keras_tuner_config.DEBUG
    keras_tuner_config.DEBUG = False
    try:
        yield
    finally:
        keras_tuner_config.DEBUG = saved


def parent_condition(name: str, values: Sequence[Any]) -> Any:
    """keras-tuner's condition "parameter `name` has one of `values`" (several make an AND).

    keras-tuner 1.4.8's ``Parent.to_proto`` prints its first value (a leftover debug line), so a distributed
    sweep would print e.g. "sgd" for every conditional trial it sends. Shadowing ``print`` in that one module
    silences it without touching sys.stdout (which the chief's gRPC threads share).
    """
    from keras_tuner.src.engine import conditions

    conditions.print = lambda *args, **kwargs: None
    return conditions.Parent(name, list(values))


# ------------------------------------------------------------------------------------------ oracles


def retry_queue(oracle: Any) -> List[str]:
    """The oracle's queue of trial ids to run again (the live list: changes are the oracle's)."""
    return oracle._retry_queue


def save_trial(oracle: Any, trial: Any) -> None:
    """Writes one trial's ``trial.json`` (what ``end_trial`` does, for a trial ended outside it)."""
    oracle._save_trial(trial)


def set_project_dir(oracle: Any, directory: Path, project_name: str) -> None:
    """Points a bare oracle at a project directory (a tuner does this; tests of the chief use an oracle alone)."""
    oracle._set_project_dir(str(directory), project_name)


def unsaved(oracle: Any, directory: Path) -> None:
    """An oracle driven by hand (tests of an oracle's choices): a project folder for its bookkeeping, and
    nothing ever written there."""
    set_project_dir(oracle, directory, "p")
    oracle._save_trial = lambda trial: None
    oracle.save = lambda: None


def max_collisions(oracle: Any) -> int:
    """How many duplicate draws an oracle tolerates before it calls the space exhausted."""
    return oracle._max_collisions


def is_duplicate(oracle: Any, values: Dict[str, Any]) -> bool:
    """Whether these values were tried already (and records them if not), as keras-tuner's oracles check."""
    return oracle._duplicate(values)


def end_recorded_trial(oracle: Any, trial_id: str, objective: str, score: Optional[float],
                       message: Optional[str]) -> bool:
    """Ends a trial the oracle still lists to run again, from ktk's record of it; True if it did.

    A process stopped between ktk's record of a finished trial and keras-tuner's end of it would otherwise
    run that trial again on resume, although its result is kept.
    """
    from keras_tuner.engine.trial import TrialStatus

    queue = retry_queue(oracle)
    if trial_id not in queue or trial_id not in oracle.trials:
        return False
    queue.remove(trial_id)
    trial = oracle.trials[trial_id]
    if score is not None and math.isfinite(score):
        oracle.update_trial(trial_id, {objective: float(score)})
        trial.status = TrialStatus.COMPLETED
    else:
        trial.status = TrialStatus.FAILED
        trial.message = message or "failed"
    verbose = oracle.verbose
    oracle.verbose = 0  # its display would print a table for this trial
    try:
        oracle.end_trial(trial)
    finally:
        oracle.verbose = verbose
    return True


# ------------------------------------------------------------------------------------- packed trials

PACK_ID_SEPARATOR = "+pack"  # the tuner id of a tuner's k-th extra trial: "<tuner id>+pack<k>"


def take_trials(oracle: Any, tuner_id: str, count: int) -> List[Any]:
    """Up to `count` more trials for a tuner that trains several at once (``search.pack``).

    keras-tuner's ``Oracle.create_trial(tuner_id)`` gives each tuner id one ongoing trial (and gives it again
    while it runs), as it does for distributed workers; so each extra trial is created under an id of its
    own, ``<tuner id>+pack<k>``. Stops at the first answer that is not a trial to run: the search is over
    (STOPPED), or the oracle waits for running trials (IDLE: a Hyperband round, or a tuner that needs results).
    """
    from keras_tuner.engine.trial import TrialStatus

    trials = []
    for number in range(1, count + 1):
        trial = oracle.create_trial(f"{tuner_id}{PACK_ID_SEPARATOR}{number}")
        if trial.status != TrialStatus.RUNNING:
            break
        trials.append(trial)
    return trials


def pack_owner(tuner_id: str) -> str:
    """The tuner (worker) id that took a trial under `tuner_id` (itself, or the owner of a pack id)."""
    return tuner_id.split(PACK_ID_SEPARATOR, 1)[0]


def report_score(oracle: Any, trial: Any, objective: str, score: float) -> None:
    """Reports a packed trial's score as ``BaseTuner`` reports the trial it ran (``update_trial``, step 0)."""
    from keras_tuner.engine.trial import TrialStatus

    oracle.update_trial(trial.trial_id, {objective: float(score)}, step=0)
    trial.status = TrialStatus.COMPLETED


def mark_failed(trial: Any, message: str) -> None:
    """Marks a packed trial failed (not retried), as ``BaseTuner`` does for ``FailedTrialError``."""
    from keras_tuner.engine.trial import TrialStatus

    trial.status = TrialStatus.FAILED
    trial.message = message


# -------------------------------------------------------------------------------- distributed engine


@contextlib.contextmanager
def oracle_served_by(serve: Callable[[Any], None]) -> Iterator[None]:
    """The chief's ``BaseTuner.search`` calls `serve(oracle)` instead of keras-tuner's own ``start_server``.

    keras-tuner's server polls every 20 s before it exits, never exits while a dead worker holds a trial,
    and can exit before the last worker heard that the search is over.
    """
    from keras_tuner.src.distribute import oracle_chief

    original = oracle_chief.start_server
    oracle_chief.start_server = serve
    try:
        yield
    finally:
        oracle_chief.start_server = original


@contextlib.contextmanager
def oracle_client_timeout(seconds: float) -> Iterator[None]:
    """A worker's calls to the chief wait at most `seconds` (keras-tuner's own: an hour each)."""
    from keras_tuner.src.distribute import oracle_client

    original = oracle_client.TIMEOUT
    oracle_client.TIMEOUT = seconds
    try:
        yield
    finally:
        oracle_client.TIMEOUT = original


def protos() -> Any:
    """keras-tuner's gRPC messages and service (``get_service()``, ``get_service_grpc()``)."""
    from keras_tuner.src import protos as keras_tuner_protos

    return keras_tuner_protos


def oracle_servicer_class() -> type:
    """keras-tuner's gRPC servicer of an oracle (the chief's side)."""
    from keras_tuner.src.distribute.oracle_chief import OracleServicer

    return OracleServicer


# ------------------------------------------------------------------------------------ Python's own


@contextlib.contextmanager
def main_module_not_rerun() -> Iterator[None]:
    """Starts processes without re-importing the caller's ``__main__`` in them.

    multiprocessing's fork server and spawn re-run the main script in each new process (as ``__mp_main__``),
    so a user's script calling ``tune`` without an ``if __name__ == "__main__":`` guard would start its
    sweep again inside every trial worker. A trial worker's code lives in ktk and needs nothing from
    ``__main__``, so the main module is left out of what the new process prepares.
    """
    from multiprocessing import spawn

    original = spawn.get_preparation_data

    def preparation_data(name: str) -> Dict[str, Any]:
        data = original(name)
        data.pop("init_main_from_path", None)
        data.pop("init_main_from_name", None)
        return data

    spawn.get_preparation_data = preparation_data
    try:
        yield
    finally:
        spawn.get_preparation_data = original
