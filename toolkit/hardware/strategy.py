"""``training.distribute``: the ``tf.distribute`` strategy a run trains under, made once per process.

- ``mirrored``: ``tf.distribute.MirroredStrategy`` over every GPU of this machine (the CPU without one), or the
  named ``devices``. CPU devices beyond the one TensorFlow sees are made by splitting the CPU into logical devices,
  which is only possible before TensorFlow starts its devices: :func:`prepare` runs before the data loads.
- ``multi_worker``: ``tf.distribute.MultiWorkerMirroredStrategy`` over the processes of a
  :class:`~toolkit.hardware.cluster.Cluster`. It must exist before any other TensorFlow op, and its constructor
  waits in C++ (deaf to Ctrl-C and SIGTERM) until every process has started: a watchdog process kills this one
  after the cluster's timeout instead, with one message. Once training, a process that dies closes its
  connections (the others' next collective fails at once) or, frozen or cut off, stops sending heartbeats to
  TensorFlow's coordination service (hosted by the chief: the others fail about 10 s later, its default heartbeat
  timeout); :func:`peer_failures` turns either into one :class:`ClusterError`.

Keras' ``model.fit`` runs under ``mirrored`` as on one device; under ``multi_worker`` it fails in Keras 3
(keras-team/keras#20585), so :mod:`toolkit.hardware.loop` trains there instead.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from typing import Any, Dict, Iterator, Optional, Tuple

from toolkit.errors import UserError
from toolkit.hardware.cluster import FLAGS, Cluster, ClusterError

_STRATEGIES: Dict[Tuple[Any, ...], Any] = {}  # one per process: a MultiWorkerMirroredStrategy cannot be made twice


def prepare(config: Any, cluster: Optional[Cluster] = None) -> Any:
    """Makes the config's strategy now, before anything else starts TensorFlow; None without ``training.distribute``."""
    return strategy_for(config, cluster)


def strategy_for(config: Any, cluster: Optional[Cluster] = None) -> Any:
    """The ``tf.distribute`` strategy of ``training.distribute`` (made on first use, then the same one), or None.

    Raises:
        UserError: a named device TensorFlow does not see, or ``multi_worker`` without a cluster.
    """
    distribute = config.training.distribute
    if distribute is None:
        return None
    key: Tuple[Any, ...] = (distribute.strategy, tuple(distribute.devices or ()))
    if key not in _STRATEGIES:
        if distribute.strategy == "mirrored":
            _STRATEGIES[key] = _mirrored(distribute.devices)
        else:
            if cluster is None:
                raise UserError("a multi_worker run needs its cluster", where="training.distribute",
                                expected=f"ktk run CONFIG {FLAGS}, or the TF_CONFIG environment variable")
            _STRATEGIES[key] = _join(cluster)
    return _STRATEGIES[key]


def scope(config: Any) -> Any:
    """The context the model is built and compiled in: the strategy's scope, or nothing without one."""
    strategy = strategy_for(config)
    return contextlib.nullcontext() if strategy is None else strategy.scope()


def describe(config: Any, cluster: Optional[Cluster] = None) -> Optional[Dict[str, Any]]:
    """What environment.json records of ``training.distribute``: the strategy, its replicas and where they ran."""
    strategy = strategy_for(config, cluster)
    if strategy is None:
        return None
    described: Dict[str, Any] = {"strategy": config.training.distribute.strategy,
                                 "replicas": int(strategy.num_replicas_in_sync),
                                 "devices": [str(d) for d in strategy.extended.worker_devices]}
    if cluster is not None:
        described.update(cluster=cluster.addresses, index=cluster.index)
    return described


def is_multi_worker(strategy: Any) -> bool:
    """Whether `strategy` spans processes (Keras' ``fit`` cannot train there: see :mod:`toolkit.hardware.loop`)."""
    if strategy is None:
        return False
    import tensorflow as tf

    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def _mirrored(devices: Optional[Any]) -> Any:
    import tensorflow as tf

    if not devices:
        return tf.distribute.MirroredStrategy()
    cpus = [int(name.split(":")[1]) for name in devices if name.startswith("CPU:")]
    if cpus:
        split_cpu(max(cpus) + 1, devices)
    seen = [f"{d.device_type}:{d.name.rsplit(':', 1)[1]}" for d in tf.config.list_logical_devices()
            if d.device_type in ("CPU", "GPU")]
    for i, name in enumerate(devices):
        if name not in seen:
            raise UserError("TensorFlow does not see this device", where=f"training.distribute.devices.{i}",
                            expected="a device of this machine", received=name, choices=seen)
    return tf.distribute.MirroredStrategy(devices=[f"/device:{name}" for name in devices])


def split_cpu(count: int, devices: Any = None) -> None:
    """Splits the CPU into `count` logical devices (CPU:0 ... CPU:count-1), so a mirrored run can name them.

    Raises:
        UserError: TensorFlow had already started its devices in this process with fewer CPU devices.
    """
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if current is not None and len(current) >= count:
        return
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)
    except RuntimeError:  # "Virtual devices cannot be modified after being initialized"
        have = len(tf.config.list_logical_devices("CPU"))
        if have < count:
            raise UserError(f"TensorFlow had already started in this process with {have} CPU device(s), and the "
                            f"CPU can only be split into {count} before it starts", where="training.distribute.devices",
                            expected="a new process (ktk run starts it early enough), or devices up to "
                            f"CPU:{have - 1}", received=list(devices or ())) from None


def _join(cluster: Cluster) -> Any:
    """This process's MultiWorkerMirroredStrategy: returns once every process of `cluster` has started."""
    import tensorflow as tf

    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec(cluster.spec), task_type=cluster.task_type, task_id=cluster.task_index, rpc_layer="grpc")
    message = (f"ktk: error: the cluster did not form within {cluster.timeout:g} s: this {cluster.describe()} waited "
               f"for the others; start every process (each with its own --index), or wait longer with "
               f"--cluster-timeout\n")
    with _deadline(cluster.timeout, message):
        try:
            return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
        except (tf.errors.OpError, ValueError, RuntimeError) as error:  # an address this host cannot serve, ...
            raise ClusterError(f"cannot join the cluster as {cluster.describe()}: {_tf_reason(error)}") from None


# The watchdog: a small process that waits on a pipe from this one. The pipe closing (the strategy made, or this
# process gone) ends it quietly; the deadline passing makes it print the message and kill this process.
_WATCHDOG = """import os, select, signal, sys
if not select.select([sys.stdin], [], [], float(sys.argv[1]))[0]:
    sys.stderr.write(sys.argv[2])
    sys.stderr.flush()
    os.kill(int(sys.argv[3]), signal.SIGKILL)
"""


@contextlib.contextmanager
def _deadline(seconds: float, message: str) -> Iterator[None]:
    """Kills this process (SIGKILL, after printing `message`) unless the block finishes within `seconds`.

    The one way out of TensorFlow's wait for the cluster: it holds the main thread in C++ with the GIL held, so no
    Python thread or signal handler runs (Ctrl-C does nothing), and TensorFlow catches SIGTERM. Another process
    watches instead. Nothing has been written when it fires.
    """
    import subprocess

    watchdog = subprocess.Popen([sys.executable, "-I", "-S", "-c", _WATCHDOG, str(seconds), message, str(os.getpid())],
                                stdin=subprocess.PIPE)
    try:
        yield
    finally:
        watchdog.stdin.close()
        watchdog.wait()


def barrier(strategy: Any) -> None:
    """Returns when every process of a multi-worker `strategy` has reached it (a collective of one number).

    The end of a multi-worker run: workers finish only once the chief has written the run directory, and a
    chief that failed before shows on them as a :class:`ClusterError`.
    """
    import tensorflow as tf

    @tf.function  # (run eagerly, TensorFlow warns of the overhead)
    def one() -> Any:
        return strategy.reduce("SUM", strategy.run(lambda: tf.constant(1.0)), axis=None)

    one()


@contextlib.contextmanager
def cluster_run(config: Any, cluster: Cluster) -> Iterator[None]:
    """Around a multi-worker run's training: a failed process as one :class:`ClusterError`, then
    :func:`barrier` once the block is done."""
    with peer_failures(cluster):
        yield
        barrier(strategy_for(config, cluster))


@contextlib.contextmanager
def peer_failures(cluster: Cluster) -> Iterator[None]:
    """Turns TensorFlow's errors of a failed collective (a process of the cluster died, or its connection did) into
    one :class:`ClusterError`."""
    import tensorflow as tf

    try:
        yield
    except (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.DeadlineExceededError,
            tf.errors.CancelledError) as error:
        raise ClusterError(f"a process of the cluster failed or stopped, so this {cluster.describe()} stops too: "
                           f"{_tf_reason(error)}") from None


def _tf_reason(error: BaseException) -> str:
    """The lines of a TensorFlow error that say what happened, without its graph-function prefix."""
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", str(getattr(error, "message", None) or error))
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    kept = [line for line in lines[:3] if not line.startswith(("Additional GRPC", ":UNKNOWN", "The error could be"))]
    return " ".join(kept or lines[:1]) or type(error).__name__
