"""The cluster a ``multi_worker`` run joins: ``ktk run --role/--cluster/--index``, or a standard ``TF_CONFIG``.

Every process of the cluster is given the same list of addresses; the first is the chief, which alone writes
the run directory. ``--index I`` is this process's position in that list (0 for the chief), so one command
line, with only ``--index`` changed, starts every process. ``TF_CONFIG`` may say the same in TensorFlow's
words: ``{"cluster": {"chief": [...], "worker": [...]}, "task": {"type": "worker", "index": 0}}`` (or
workers only, where worker 0 is the chief).

Everything here is checked before TensorFlow is imported; nothing here imports it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from toolkit.addresses import parse_address
from toolkit.errors import UserError

ROLES = ("chief", "worker")
CLUSTER_TIMEOUT_S = 300.0  # how long a process waits for every other one to start (--cluster-timeout)
MAX_CLUSTER_TIMEOUT_S = 86400.0
FLAGS = "--role chief|worker --cluster HOST:PORT,HOST:PORT,... --index I"


class ClusterError(RuntimeError):
    """A process of the cluster failed or never came (not a mistake in this process's config or flags).

    The CLI shows it as one ``ktk: error:`` line and exits with status 1.
    """


@dataclass(frozen=True)
class Cluster:
    """Every process of a multi-worker run, chief first, and which one this process is.

    Attributes:
        jobs: TensorFlow's cluster spec, ``{"chief": [address], "worker": [addresses]}`` or ``{"worker": [...]}``.
        task_type: ``chief`` or ``worker`` in `jobs`' words.
        task_index: the index within its job.
        source: where it was read from (``--cluster`` or ``TF_CONFIG``), for messages.
        timeout: seconds to wait for every process to start.
    """

    jobs: Tuple[Tuple[str, Tuple[str, ...]], ...]
    task_type: str
    task_index: int
    source: str
    timeout: float = CLUSTER_TIMEOUT_S

    @property
    def addresses(self) -> List[str]:
        """Every process's address, chief first."""
        return [address for _, addresses in self.jobs for address in addresses]

    @property
    def index(self) -> int:
        """This process's position in :attr:`addresses` (0 is the chief)."""
        before = 0
        for job, addresses in self.jobs:
            if job == self.task_type:
                return before + self.task_index
            before += len(addresses)
        raise AssertionError(self.task_type)  # pragma: no cover - checked when made

    @property
    def is_chief(self) -> bool:
        return self.index == 0

    @property
    def spec(self) -> Dict[str, List[str]]:
        return {job: list(addresses) for job, addresses in self.jobs}

    def describe(self) -> str:
        role = "chief" if self.is_chief else f"worker {self.index}"
        return f"{role} of {len(self.addresses)} processes ({', '.join(self.addresses)})"


def cluster_from_flags(role: Optional[str] = None, addresses: Optional[str] = None, index: Optional[int] = None,
                       timeout: Optional[float] = None,
                       environ: Optional[Mapping[str, str]] = None) -> Optional[Cluster]:
    """The cluster of ``--role/--cluster/--index``; None without them (a multi_worker run then reads ``TF_CONFIG``:
    :func:`check_distribute`), or ``TF_CONFIG``'s with ``--cluster-timeout`` alone.

    Raises:
        UserError: a flag or ``TF_CONFIG`` that is malformed, incomplete or contradicts the other.
    """
    environ = {} if environ is None else environ
    tf_config = environ.get("TF_CONFIG")
    if timeout is not None and not (0 < timeout <= MAX_CLUSTER_TIMEOUT_S):
        raise UserError(where="--cluster-timeout", expected=f"seconds in (0, {MAX_CLUSTER_TIMEOUT_S:g}]",
                        received=timeout)
    given = [flag for flag, value in (("--role", role), ("--cluster", addresses), ("--index", index))
             if value is not None]
    if given:
        if tf_config:
            raise UserError("the cluster is given twice: by flags and by the TF_CONFIG environment variable",
                            where=given[0], expected=f"either {FLAGS}, or TF_CONFIG alone")
        cluster = _from_flags(role, addresses, index)
    elif timeout is None:
        return None
    elif tf_config:
        cluster = parse_tf_config(tf_config)
    else:
        raise UserError("--cluster-timeout is for a multi_worker run's cluster", where="--cluster-timeout",
                        expected=f"{FLAGS}, or TF_CONFIG")
    if timeout is not None:
        cluster = Cluster(cluster.jobs, cluster.task_type, cluster.task_index, cluster.source, float(timeout))
    return cluster


def _from_flags(role: Optional[str], addresses: Optional[str], index: Optional[int]) -> Cluster:
    if role is None:
        raise UserError("--role is missing", where="--cluster" if addresses is not None else "--index",
                        expected=FLAGS)
    if role not in ROLES:
        raise UserError(where="--role", received=role, choices=ROLES)
    if addresses is None:
        raise UserError("--cluster is missing (and TF_CONFIG is not set)", where="--role", expected=FLAGS)
    parsed = _addresses(addresses.split(","), "--cluster", addresses)
    if index is None:
        if role == "worker":
            raise UserError("a worker needs its --index: its position in --cluster (0 is the chief)",
                            where="--index", expected=f"an integer from 1 to {len(parsed) - 1}" if len(parsed) > 2
                            else "1" if len(parsed) == 2 else "a --cluster with a worker's address after the chief's")
        index = 0
    if not 0 <= index < len(parsed):
        raise UserError("--index is this process's position in --cluster", where="--index",
                        expected=f"an integer from 0 to {len(parsed) - 1}", received=index)
    if (index == 0) != (role == "chief"):
        raise UserError("the first address of --cluster is the chief's (--index 0); the others are workers'",
                        where="--role", expected="--role chief" if index == 0 else "--role worker",
                        received=f"--role {role} --index {index}")
    return Cluster((("worker", tuple(parsed)),), "worker", index, "--cluster")


def parse_tf_config(text: str) -> Cluster:
    """The cluster of a ``TF_CONFIG`` value (JSON: ``cluster`` and ``task``).

    Raises:
        UserError: where="TF_CONFIG", for malformed JSON, missing keys, other jobs (ps, evaluator), an index out
            of range or a malformed address.
    """
    where = "TF_CONFIG"
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as error:  # (nested past Python's recursion limit: RecursionError)
        raise UserError(f"not JSON ({error})", where=where, received=text) from None
    if not isinstance(value, dict) or not isinstance(value.get("cluster"), dict) or \
            not isinstance(value.get("task"), dict):
        raise UserError(where=where, expected='{"cluster": {"worker": ["host:port", ...]}, '
                        '"task": {"type": "worker", "index": 0}}', received=value)
    cluster, task = value["cluster"], value["task"]
    unknown = [job for job in cluster if job not in ROLES]
    if unknown:
        raise UserError("MultiWorkerMirroredStrategy has chief and worker jobs only", where=f"{where}.cluster",
                        received=unknown[0], choices=ROLES)
    jobs = []
    for job in ROLES:
        addresses = cluster.get(job)
        if addresses is None:
            continue
        if not isinstance(addresses, list) or not addresses:
            raise UserError(where=f"{where}.cluster.{job}", expected="a list of HOST:PORT", received=addresses)
        jobs.append((job, tuple(_addresses(addresses, f"{where}.cluster.{job}", addresses))))
    if not jobs:
        raise UserError(where=f"{where}.cluster", expected="a worker (or chief) job", received=cluster)
    if len(dict(jobs).get("chief", ())) > 1:
        raise UserError(where=f"{where}.cluster.chief", expected="one address", received=cluster["chief"])
    everyone = [a for _, addresses in jobs for a in addresses]
    if len(set(everyone)) != len(everyone):
        raise UserError(where=f"{where}.cluster", expected="each address once", received=cluster)
    task_type, task_index = task.get("type"), task.get("index", 0)
    if not isinstance(task_type, str) or task_type not in dict(jobs):
        raise UserError(where=f"{where}.task.type", received=task_type, choices=[job for job, _ in jobs])
    size = len(dict(jobs)[task_type])
    if isinstance(task_index, bool) or not isinstance(task_index, int) or not 0 <= task_index < size:
        raise UserError(where=f"{where}.task.index", expected=f"an integer from 0 to {size - 1}",
                        received=task_index)
    return Cluster(tuple(jobs), task_type, task_index, where)


def _addresses(items: Sequence[Any], where: str, received: Any) -> List[str]:
    parsed = []
    for item in items:
        if not isinstance(item, str) or not item.strip():
            raise UserError(where=where, expected="HOST:PORT addresses separated by commas", received=received)
        parsed.append(_address(item.strip(), where))
    if len(set(parsed)) != len(parsed):
        raise UserError("an address is listed twice: each process needs its own", where=where, received=received)
    return parsed


def _address(text: str, where: str) -> str:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6), as TensorFlow's cluster spec takes it."""
    return str(parse_address(text, flag=where, example="10.0.0.5:2222"))


def check_distribute(config: Any, cluster: Optional[Cluster], resume: bool = False,
                     environ: Optional[Mapping[str, str]] = None) -> Optional[Cluster]:
    """What a run with ``training.distribute`` refuses, said before TensorFlow starts; returns its cluster.

    A cluster only with ``distribute: multi_worker``, which needs one (`cluster`, else ``TF_CONFIG`` in `environ`);
    no ``--resume`` and no gradient monitor there; one step per execution under any strategy.

    Returns:
        The cluster, or None when the run is not multi_worker (a ``TF_CONFIG`` set for other programs is ignored).

    Raises:
        UserError: the first of these.
    """
    distribute = config.training.distribute
    multi_worker = distribute is not None and distribute.strategy == "multi_worker"
    if cluster is not None and cluster.source == "TF_CONFIG" and not multi_worker:
        cluster = None
    if cluster is None and multi_worker and (environ or {}).get("TF_CONFIG"):
        cluster = parse_tf_config(environ["TF_CONFIG"])
    if cluster is not None and not multi_worker:
        raise UserError("a cluster is for training.distribute: multi_worker", where="--role",
                        expected="training.distribute: multi_worker (--set training.distribute=multi_worker), or "
                        "no --role/--cluster/--index", received=distribute.strategy if distribute is not None else None)
    if distribute is not None:
        distributed_steps_per_execution(config)
    if not multi_worker:
        return None
    if cluster is None:
        raise UserError("a multi_worker run needs its cluster", where="training.distribute",
                        expected=f"ktk run CONFIG {FLAGS}, or the TF_CONFIG environment variable")
    if resume:
        raise UserError("a multi_worker run cannot resume (its custom training loop keeps no backup)",
                        where="--resume", expected="a new run")
    if config.training.monitor.gradients:
        raise UserError("the gradient monitor reads gradients outside the training step, which a multi_worker "
                        "run cannot share between processes", where="training.monitor.gradients",
                        expected="false with training.distribute: multi_worker", received=True)
    return cluster


def distributed_steps_per_execution(config: Any) -> int:
    """``training.steps_per_execution`` under ``training.distribute``: 1. Keras' loop of several steps per call
    fails under tf.distribute ("You must feed a value for placeholder tensor", keras-team/keras#19246; measured
    with Keras 3.15), so ``auto`` is 1 there and more is refused.

    Raises:
        UserError: a number above 1.
    """
    value = config.training.steps_per_execution
    if value not in ("auto", 1):
        raise UserError("Keras runs one step per call under training.distribute (several fail there: "
                        "keras-team/keras#19246)", where="training.steps_per_execution",
                        expected="auto or 1 with training.distribute", received=value)
    return 1
