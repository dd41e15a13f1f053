"""Training and evaluation across processes (``training.distribute: multi_worker``), where Keras' own loop fails.

Keras 3's ``model.fit`` and ``model.evaluate`` fail under ``tf.distribute.MultiWorkerMirroredStrategy`` ("Attempt to
convert a value (PerReplica ...) with an unsupported type", keras-team/keras#20585, open since 2024; measured with
TF 2.21 / Keras 3.15). This loop is TensorFlow's multi-worker custom training loop, run with Keras' own pieces: each
step is the model's public ``train_step`` (its compiled loss, metrics and optimizer, the loss scaled for the
replicas as under ``MirroredStrategy``) under ``strategy.run`` on a distributed dataset; metrics are Keras' (their
variables are summed across processes when read); callbacks are Keras' ``CallbackList`` (history.csv, early
stopping and best weights, TensorBoard, the config's callbacks), called as ``fit`` calls them.

The data: every process holds the whole training split and builds the same per-epoch shuffle; the dataset is
auto-sharded by data (``AutoShardPolicy.DATA``): each global batch of ``training.batch_size`` examples is split
into one part per replica, and each process keeps its replicas' parts. So the global batches are those of a
single-device run.
"""

from __future__ import annotations

import weakref
from typing import Any, Dict, Optional, Sequence

_STEPS: "weakref.WeakKeyDictionary[Any, Dict[str, Any]]" = weakref.WeakKeyDictionary()


def fit(model: Any, train: Any, validation: Any, *, epochs: int, initial_epoch: int = 0,
        callbacks: Sequence[Any] = (), verbose: int = 1) -> Any:
    """``model.fit(train, validation_data=validation, ...)`` for a model built under a multi-worker strategy.

    Args:
        train, validation: batched ``tf.data`` datasets of (x, y) or (x, y, sample_weight), global batches.
        callbacks: Keras callbacks, called at the beginning and end of training, of each epoch and of each step.

    Returns:
        The Keras ``History`` of the epochs run.
    """
    import keras

    strategy = model.distribute_strategy
    train_data = strategy.experimental_distribute_dataset(_sharded_by_data(train))
    steps = _batches(train)
    callback_list = keras.callbacks.CallbackList(list(callbacks), add_history=True, add_progbar=verbose != 0,
                                                 verbose=verbose, epochs=epochs, steps=steps, model=model)
    train_step = _step(model, "train")
    model.stop_training = False
    callback_list.on_train_begin()
    logs: Optional[Dict[str, Any]] = None
    for epoch in range(initial_epoch, epochs):
        model.reset_metrics()
        callback_list.on_epoch_begin(epoch)  # sets the epoch the shuffle reads, before the iterator is made
        iterator = iter(train_data)
        for step in range(steps):
            callback_list.on_train_batch_begin(step)
            train_step(iterator)
            callback_list.on_train_batch_end(step)
        logs = _results(model)
        if validation is not None:
            logs.update({f"val_{name}": value for name, value in evaluate(model, validation).items()})
        callback_list.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    if isinstance(model.optimizer, keras.optimizers.Optimizer) and epochs > initial_epoch:
        model.optimizer.finalize_variable_values(model.trainable_weights)
    callback_list.on_train_end(logs=logs)
    return model.history


def evaluate(model: Any, dataset: Any) -> Dict[str, float]:
    """``model.evaluate(dataset, return_dict=True)`` for a model built under a multi-worker strategy (every process
    calls it with the same dataset; each evaluates its share, and the metrics are summed across processes)."""
    strategy = model.distribute_strategy
    iterator = iter(strategy.experimental_distribute_dataset(_sharded_by_data(dataset)))
    test_step = _step(model, "test")
    model.reset_metrics()
    for _ in range(_batches(dataset)):
        test_step(iterator)
    return _results(model)


def _step(model: Any, kind: str) -> Any:
    """The model's ``train_step`` or ``test_step`` on the next distributed batch, under ``strategy.run``, compiled
    once per model."""
    import tensorflow as tf

    steps = _STEPS.setdefault(model, {})
    if kind not in steps:
        strategy = model.distribute_strategy
        method = model.train_step if kind == "train" else model.test_step

        @tf.function
        def one_step(iterator: Any) -> None:
            strategy.run(method, args=(next(iterator),))

        steps[kind] = one_step
    return steps[kind]


def _results(model: Any) -> Dict[str, float]:
    """The model's metrics now, as Python floats (every process reads them: each read is a collective)."""
    return {name: float(value) for name, value in model.get_metrics_result().items()}


def _sharded_by_data(dataset: Any) -> Any:
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def _batches(dataset: Any) -> int:
    """The number of global batches: the same on every process (its last batch may leave a replica empty)."""
    count = int(dataset.cardinality())
    if count < 0:  # pragma: no cover - ktk's datasets always know their length
        raise ValueError("a multi-worker run needs datasets of known length")
    return count
