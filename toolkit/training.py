"""Compiling and training: optimizer, learning-rate schedule, loss and metrics, ``tf.data`` pipelines.

Small models spend most of their time in framework overhead, not arithmetic, so the data is fed from a
``tf.data`` pipeline (cached, shuffled per epoch, prefetched) and several steps run per call into the
compiled graph (``steps_per_execution``).
"""

from __future__ import annotations

import copy
import inspect
import math
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from toolkit.data import in_memory
from toolkit.errors import UserError, raise_carried, reason
from toolkit.metrics import best_index, resolve_mode
from toolkit.keras_names import snake_case
from toolkit.models import exported_classes

DEFAULT_LOSS = {"binary": "binary_crossentropy", "multiclass": "sparse_categorical_crossentropy",
                "regression": "mean_squared_error"}
DEFAULT_METRICS = {"binary": ["accuracy"], "multiclass": ["accuracy"], "regression": ["mae"]}
# Steps fused into one call of the compiled training function when steps_per_execution is "auto".
AUTO_STEPS_PER_EXECUTION = 32


def set_seed(seed: int, deterministic: bool = True) -> None:
    """Seeds Python, NumPy and TensorFlow (initializers, shuffling, dropout) and turns op determinism on, or
    off with `deterministic` false (the switch is process-global: each training sets it)."""
    import keras

    from toolkit.hardware.devices import set_op_determinism

    keras.utils.set_random_seed(seed)
    set_op_determinism(deterministic)


def prepare_model(config: Any, data: Any, seed: Optional[int] = None) -> Any:
    """Seeds, builds and compiles the config's model: the one start of every training (runs and sweep trials).

    Args:
        seed: the seed to use instead of ``config.seed`` (a trial's later executions differ in initialization).
    """
    from toolkit.hardware.strategy import scope
    from toolkit.models import build_model

    set_seed(config.seed if seed is None else seed, config.training.deterministic)
    with scope(config):  # training.distribute: the variables are made by its strategy
        model = build_model(config, data)
        compile_model(model, config, data)
    return model


def build_training_state(model: Any, data: Any, optimizer: bool = True) -> None:
    """Creates a compiled model's optimizer and metric variables now, outside any traced function.

    Otherwise they are created while ``fit`` traces its train function, and a ``tf.function`` that creates
    variables is traced twice: a sweep trial's (or a pack's) train step is traced once instead (tracing,
    about a millisecond per graph op, is most of a small trial's overhead). Runs the model on one row with
    ``training=False``: no dropout seed is drawn and no statistics are updated, so training goes on exactly as
    without it.

    Args:
        optimizer: also build the optimizer's slots (a stacked pack's members need only their loss and metrics).
    """
    if not in_memory(data):  # pipelines (streamed tables, image files): fit makes them, as before
        return
    x, y = data.x_train[:1], data.y_train[:1]
    y_pred = model(x, training=False)
    model.compute_loss(x=x, y=y, y_pred=y_pred, training=False)
    model.compute_metrics(x, y, y_pred, sample_weight=None)
    if optimizer:
        model.optimizer.build(model.trainable_variables)
    model.reset_metrics()


def get_optimizer(config: Any, steps_per_epoch: int) -> Any:
    """The Keras optimizer of ``training.optimizer``, with ``training.schedule`` as its learning rate."""
    import keras

    opt = config.training.optimizer
    arguments = copy.deepcopy(opt.arguments)
    if config.training.schedule is not None:
        arguments["learning_rate"] = get_schedule(config.training.schedule, opt.learning_rate)
    # By exported class, not keras.optimizers.get: Keras exports some (Lamb) that get() cannot find.
    classes = {n.lower(): getattr(keras.optimizers, n)
               for n in exported_classes(keras.optimizers, keras.optimizers.Optimizer)
               if n.lower() not in ("lossscaleoptimizer", "multioptimizer")}  # wrappers, not optimizers
    cls = classes.get(opt.name.lower()) or classes.get(opt.name.lower().replace("_", ""))
    if cls is None:
        raise UserError(where="training.optimizer.name", expected="a Keras optimizer", received=opt.name,
                        choices=sorted(classes))
    return _construct(cls, arguments, "training.optimizer", "optimizer", opt.arguments)


def get_schedule(schedule: Any, initial_learning_rate: float) -> Any:
    """A Keras learning-rate schedule from ``{name: exponential_decay, ...}`` (snake_case class names)."""
    import keras

    module = keras.optimizers.schedules
    classes = {snake_case(n): getattr(module, n)
               for n in exported_classes(module, module.LearningRateSchedule)}
    name = schedule.name
    cls = classes.get(name) or classes.get(snake_case(name))
    if cls is None:
        raise UserError(where="training.schedule.name", expected="a Keras learning-rate schedule",
                        received=name, choices=sorted(classes))
    arguments = dict(schedule.arguments)
    if "initial_learning_rate" in inspect.signature(cls.__init__).parameters:
        arguments.setdefault("initial_learning_rate", initial_learning_rate)
    return _construct(cls, arguments, "training.schedule", "schedule", schedule.arguments)


def _construct(cls: type, arguments: Dict[str, Any], where: str, what: str, given: Any) -> Any:
    """``cls(**arguments)``, its arguments checked against its signature; Keras' refusal as a UserError."""
    _check_arguments(cls, arguments, where)
    try:
        return cls(**arguments)
    except (TypeError, ValueError) as error:
        raise UserError(f"Keras rejected the {what} arguments: {reason(error)}", where=where,
                        received=given) from None


def _check_arguments(cls: type, arguments: Dict[str, Any], where: str) -> None:
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind == p.VAR_KEYWORD for p in params.values()) and cls.__name__ != "object":
        # Optimizers take **kwargs for the base class's arguments: check against those too.
        base = [inspect.signature(b.__init__).parameters for b in cls.__mro__[1:] if "__init__" in vars(b)]
        valid = set(params) | {p for b in base for p in b}
    else:
        valid = set(params)
    valid -= {"self", "args", "kwargs", "name"}
    for key in arguments:
        if key not in valid:
            raise UserError(where=f"{where}.{key}", expected=f"an argument of {cls.__name__}", received=key,
                            choices=sorted(valid))


def compile_model(model: Any, config: Any, data: Any, steps_per_epoch: Optional[int] = None) -> Any:
    """Compiles `model` with the config's optimizer, schedule, loss and metrics (defaults by task), with XLA as
    ``training.jit_compile`` resolves (:func:`toolkit.hardware.devices.resolve_jit`). Under a ``mixed_float16``
    model Keras wraps the optimizer in its ``LossScaleOptimizer`` itself."""
    from toolkit.hardware.devices import resolve_jit

    steps = steps_per_epoch or _steps_per_epoch(config, data)
    loss = config.training.loss or DEFAULT_LOSS[data.task]
    metrics = list(config.training.metrics) if config.training.metrics is not None else DEFAULT_METRICS[data.task]
    spe = config.training.steps_per_execution
    if config.training.distribute is not None:
        from toolkit.hardware.cluster import distributed_steps_per_execution

        spe = distributed_steps_per_execution(config)
    if spe == "auto":
        spe = max(1, min(AUTO_STEPS_PER_EXECUTION, steps))
    try:
        model.compile(optimizer=get_optimizer(config, steps), loss=copy.deepcopy(loss),
                      metrics=copy.deepcopy(metrics), steps_per_execution=spe,
                      jit_compile=resolve_jit(config))
    except (ValueError, TypeError) as error:
        raise UserError(f"Keras rejected the loss or metrics: {reason(error)}", where="training",
                        received={"loss": loss, "metrics": metrics}) from None
    return model


def batch_size(config: Any, data: Any) -> int:
    """The mini-batch size; "full" means the whole training split (batch gradient descent)."""
    size = config.training.batch_size
    return _train_size(data) if size == "full" else int(size)


def _train_size(data: Any) -> int:
    """Examples in the training split (of a Dataset, or of pipelines: known for ktk's, counted for a user's)."""
    return len(data.y_train) if in_memory(data) else int(data.sizes()["train"] or 1)


def _steps_per_epoch(config: Any, data: Any) -> int:
    if getattr(data, "batched", False):  # a user's pipelines: their own batches
        return max(1, _cardinality(data.train(0, config.seed, None)))
    return max(1, math.ceil(_train_size(data) / batch_size(config, data)))


def _cardinality(pipeline: Any) -> int:
    import tensorflow as tf

    if isinstance(pipeline, tf.data.Dataset):
        return max(int(pipeline.cardinality()), 1)  # unknown (-2) or infinite (-1): 1
    return len(pipeline)


def make_dataset(x: np.ndarray, y: np.ndarray, batch: int, *, shuffle: bool = False, seed: int = 0,
                 sample_weight: Optional[np.ndarray] = None, epoch: Any = None) -> Any:
    """A cached, prefetched ``tf.data`` pipeline; reshuffled every epoch when `shuffle`.

    Each epoch's order is a function of (`seed`, epoch) alone, so a resumed run sees the orders an uninterrupted
    one would: `epoch` is an int64 ``tf.Variable`` holding the epoch (0-based), set by :func:`epoch_setter` before
    each epoch's iterator is made. Without it, every epoch is shuffled as epoch 0.
    """
    import tensorflow as tf

    tensors = (x, y) if sample_weight is None else (x, y, sample_weight)
    dataset = tf.data.Dataset.from_tensor_slices(tensors).cache()
    if shuffle:
        cached, size = dataset, len(y)

        def one_epoch(_: Any) -> Any:
            number = epoch.read_value() if epoch is not None else tf.constant(0, tf.int64)
            return cached.shuffle(size, seed=tf.constant(seed, tf.int64) * 1_000_003 + number,
                                  reshuffle_each_iteration=False)

        dataset = tf.data.Dataset.from_tensors(0).flat_map(one_epoch)
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(size))
    return dataset.batch(batch).prefetch(tf.data.AUTOTUNE)


def epoch_setter(epoch: Any) -> Any:
    """A Keras callback writing the epoch about to start into `epoch` (see :func:`make_dataset`)."""
    import keras

    class EpochSetter(keras.callbacks.Callback):
        def on_epoch_begin(self, number: int, logs: Optional[Dict[str, Any]] = None) -> None:
            epoch.assign(number)

    return EpochSetter()


def class_weights(config: Any, data: Any) -> Optional[Dict[int, float]]:
    """``training.class_weight`` as {class index: weight}; "balanced" weighs classes by inverse frequency."""
    from toolkit.config import class_weight_indices

    spec = config.training.class_weight
    weights = class_weight_indices(config, data.task, data.class_names, data.num_classes)
    if spec != "balanced":
        return weights
    names = data.class_names or [str(i) for i in range(data.num_classes or 2)]
    if not in_memory(data):  # pipelines: the class counts of their one pass over the training split
        if data.class_counts is None:
            raise UserError("class weights 'balanced' need the training split's class counts, which these "
                            "pipelines do not give", where="training.class_weight",
                            expected="a mapping {class: weight}", received="balanced")
        counts = np.asarray(data.class_counts)
        return {i: float(counts.sum() / (len(names) * c)) if c else 0.0 for i, c in enumerate(counts)}
    counts = np.bincount(data.y_train.astype(int).ravel(), minlength=len(names))
    return {i: float(len(data.y_train) / (len(names) * c)) if c else 0.0 for i, c in enumerate(counts)}


def fit(model: Any, config: Any, data: Any, callbacks: Sequence[Any] = (), verbose: int = 1,
        keep_best: bool = True, checkpoint: Any = None) -> Any:
    """Trains a compiled model on the training split, validating on the validation split each epoch.

    The model ends with the weights of its best epoch by :func:`monitor_name` (``restore_best_weights`` of
    ``training.early_stopping`` when it is set, else of ``training``; both default true). `keep_best=False` skips that
    (a sweep trial, whose model is thrown away, only needs the history).

    A model built under a multi-worker strategy (``training.distribute: multi_worker``) trains in
    :func:`toolkit.hardware.loop.fit`, the same epochs and callbacks, since Keras' ``fit`` fails there.

    Args:
        checkpoint: a :class:`toolkit.resume.Checkpoint`: the training state is backed up after every epoch, and
            training goes on from the last backed-up epoch (a resumed run). Not with a multi-worker strategy.

    Returns:
        The Keras ``History`` (of the epochs this call ran).
    """
    import tensorflow as tf

    from toolkit.hardware.strategy import is_multi_worker

    epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
    train, validation, fit_class_weight = pipelines(config, data, epoch)
    all_callbacks: List[Any] = [epoch_setter(epoch), *callbacks, *config_callbacks(config)]
    early_stopping = early_stopping_callback(config, keep_best)
    if early_stopping is not None:
        all_callbacks.append(early_stopping)
    initial_epoch, epochs = 0, config.training.epochs
    multi_worker = is_multi_worker(model.distribute_strategy)
    if checkpoint is not None and not multi_worker:  # (a multi_worker run cannot resume: it keeps no backup)
        # after early stopping: its state is backed up once it has seen the epoch
        all_callbacks.extend(checkpoint.callbacks(model, early_stopping))
        initial_epoch, epochs = checkpoint.initial_epoch, checkpoint.epochs(epochs)
    if multi_worker:  # Keras' fit fails across processes (keras-team/keras#20585): the same epochs, another loop
        from toolkit.hardware import loop

        with raise_carried():
            return loop.fit(model, train, validation, epochs=epochs, initial_epoch=initial_epoch,
                            callbacks=all_callbacks, verbose=verbose)
    with raise_carried():  # a data file that changed during training: one message, not TensorFlow's
        return model.fit(train, validation_data=validation, epochs=epochs, initial_epoch=initial_epoch,
                         callbacks=all_callbacks, verbose=verbose, shuffle=False,  # tf.data shuffles
                         class_weight=fit_class_weight)


def pipelines(config: Any, data: Any, epoch: Any) -> Tuple[Any, Any, Optional[Dict[int, float]]]:
    """The training and validation pipelines of :func:`fit` (also a packed sweep's, which must see the same
    batches), and the class weights for Keras' ``fit``: arrays carry theirs as sample weights, pipelines do not.

    Args:
        epoch: the int64 variable :func:`epoch_setter` sets, of which each epoch's shuffle is a function.
    """
    batch = batch_size(config, data)
    weights = class_weights(config, data)
    if not in_memory(data):  # pipelines (toolkit.sources.pipelines): files read in batches, or a user's
        return (data.train(batch, config.seed, epoch, shuffle=config.training.shuffle),
                data.split("validation", max(batch, 256)), weights)
    sample_weight = None
    if weights is not None:
        sample_weight = np.asarray([weights.get(int(c), 1.0) for c in data.y_train.ravel()], dtype=np.float32)
    train = make_dataset(data.x_train, data.y_train, batch, shuffle=config.training.shuffle, seed=config.seed,
                         sample_weight=sample_weight, epoch=epoch)
    return train, make_dataset(data.x_val, data.y_val, max(batch, 256)), None


def early_stopping_callback(config: Any, keep_best: bool = True) -> Any:
    """Keras' ``EarlyStopping`` for the config, or None: ``training.early_stopping``, or, without it and with
    `keep_best`, one that never stops and only keeps the best epoch's weights (see :func:`fit`)."""
    import keras

    stopping = config.training.early_stopping
    restore = stopping.restore_best_weights if stopping is not None else config.training.restore_best_weights
    if stopping is None and not (restore and keep_best):
        return None
    # Without early stopping, patience is every epoch: it never stops, only keeps the best weights.
    return keras.callbacks.EarlyStopping(
        monitor=monitor_name(config), patience=stopping.patience if stopping else config.training.epochs,
        min_delta=stopping.min_delta if stopping else 0.0, mode=monitor_mode(config),
        restore_best_weights=restore and keep_best, verbose=0,
    )


def config_callbacks(config: Any) -> List[Any]:
    """The Keras callbacks ``training.callbacks`` names, each made from its class and arguments."""
    import keras

    from toolkit.config import REFUSED_CALLBACKS

    made = []
    for i, spec in enumerate(config.training.callbacks):
        where = f"training.callbacks.{i}"
        cls = getattr(keras.callbacks, spec.class_name, None)
        if spec.class_name in REFUSED_CALLBACKS or not isinstance(cls, type) or \
                not issubclass(cls, keras.callbacks.Callback):
            choices = sorted(n for n in exported_classes(keras.callbacks, keras.callbacks.Callback)
                             if n not in REFUSED_CALLBACKS)
            raise UserError(where=f"{where}.class_name", expected="a Keras callback ktk does not manage",
                            received=spec.class_name, choices=choices)
        made.append(_construct(cls, copy.deepcopy(spec.config), where, "callback", spec.config))
    return made


def progress_verbosity(show: bool, stream: Any = None) -> int:
    """Keras' ``verbose`` for fit: 0 without progress; a progress bar (1) on a terminal; one line per
    epoch (2) when output goes to a file or pipe, where a bar's redraws would be ``\\r`` and ANSI codes.

    Args:
        show: whether to show progress at all.
        stream: where Keras writes (default ``sys.stdout``).
    """
    if not show:
        return 0
    stream = sys.stdout if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return 1 if isatty is not None and isatty() else 2


def evaluate(model: Any, config: Any, data: Any, split: str) -> Dict[str, float]:
    """Loss and metrics of `model` on one split (dropout off), as {metric name: value}."""
    from toolkit.hardware.strategy import is_multi_worker

    if not in_memory(data):  # pipelines
        dataset = data.split(split, max(batch_size(config, data), 256))
    else:
        x, y = data.split(split)
        dataset = make_dataset(x, y, max(batch_size(config, data), 256))
    if is_multi_worker(model.distribute_strategy) or config.training.distribute is not None:
        # Keras' evaluate fails across processes, as fit does; and under mirrored, on a batch that does not split
        # evenly across the devices (an AddN of [2, ...] and [1, ...] per-replica outputs; Keras 3.15)
        from toolkit.hardware import loop

        with raise_carried():
            return loop.evaluate(model, dataset)
    with raise_carried():
        results = model.evaluate(dataset, verbose=0, return_dict=True)
    return {name: float(value) for name, value in results.items()}


def monitor_name(config: Any) -> str:
    """The validation quantity that picks the best epoch (early stopping's monitor, else val_loss)."""
    stopping = config.training.early_stopping
    return stopping.monitor if stopping is not None else "val_loss"


def monitor_mode(config: Any) -> str:
    """``min`` or ``max`` for the monitored quantity: early stopping's mode, or the one rule in toolkit.metrics."""
    stopping = config.training.early_stopping
    return resolve_mode(monitor_name(config), stopping.mode if stopping is not None else "auto")


def best_epoch(history: Dict[str, List[float]], monitor: str, mode: str = "auto") -> int:
    """The 1-based epoch where `monitor` was best (the first of equals, as Keras' early stopping keeps it)."""
    values = history.get(monitor)
    if not values:
        return len(next(iter(history.values()), [])) or 0
    return best_index(values, resolve_mode(monitor, mode)) + 1



