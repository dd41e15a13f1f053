"""Packed trials: several sweep trials trained at once, in one process and one compiled graph.

A small model's trial spends most of its time in framework overhead (Python, the executor, callbacks), not in
arithmetic. A pack runs K trials as K **member** models inside one Keras model, :class:`PackedModel`, whose
``train_step`` runs every member's own ``train_step`` on the same mini-batch: one call into the graph per
``steps_per_execution`` steps for all of them.

Equivalence is the contract: each member is exactly the model its trial would train alone.

- It is made by :func:`toolkit.training.prepare_model` (seeded, built and compiled as a lone trial is), so it
  has the same initial weights and the same dropout seed generators, and its own optimizer (its class,
  arguments, learning rate or schedule), loss, metrics and regularization losses.
- Its step is Keras' own ``train_step`` of that member: its loss, a gradient tape of its own, its own
  optimizer applied to its own variables. Nothing is summed across members, so a NaN in one never reaches
  another's variables.
- Members of one data set see the same ``tf.data`` pipeline a lone trial builds (same shuffle seed, per-epoch
  order from (seed, epoch), same global seed when it is built); members with other seeds get their own
  pipeline, zipped with the others (same number of batches).
- Each member has its own callbacks (its history file, the stop on a non-finite loss, its early stopping),
  called with its own logs. A member that stops (early stopping, a non-finite loss, its last epoch) is
  frozen: it leaves the train step (the train function is traced again, at most once per member) and gets
  no optimizer update after that; its history ends where it would have ended alone.

Members that share one layer structure (:mod:`toolkit.sweeps.stacked`) train as a stack instead: one batched
graph for all of them, equal to each trial alone within float32 round-off; the others use ``PackedModel``.

The lone-trial path (:func:`toolkit.sweeps.runner.run_trial_task`) is unchanged; the equivalence is checked
against it by tests/test_packing.py. What is grouped into packs is decided by :mod:`toolkit.sweeps.packing`.
"""

from __future__ import annotations

import functools
import math
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from toolkit.sweeps import stacked
from toolkit.sweeps.packing import PACK_MEMORY_BUDGET_MB, member_memory_bytes, split_by_memory


def run_pack_tasks(tasks: Sequence[Dict[str, Any]], datasets: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Trains the trial tasks of one pack together; returns one outcome per task, in order; never raises.

    Args:
        tasks: trial tasks as :func:`toolkit.sweeps.runner.run_trial_task` takes them (one execution each).
        datasets: data sets by the tasks' ``data_key``.

    Returns:
        The outcomes :func:`toolkit.sweeps.runner.run_trial_task` would return for each task alone. A task
        whose config fails to build fails alone; if the pack itself fails (out of memory, an unexpected
        error), each of its trials is run alone instead.
    """
    from toolkit.sweeps.runner import run_trial_task

    if len(tasks) == 1:
        return [run_trial_task(tasks[0], datasets[tasks[0]["data_key"]])]
    try:
        return _run_pack(list(tasks), datasets)
    except Exception:  # the pack failed as a whole (e.g. out of memory): its trials are run one by one instead
        return [run_trial_task(task, datasets[task["data_key"]]) for task in tasks]


def _run_pack(tasks: List[Dict[str, Any]], datasets: Dict[str, Any]) -> List[Dict[str, Any]]:
    import keras

    from toolkit import training
    from toolkit.config import parse_config
    from toolkit.data import in_memory
    from toolkit.sweeps.records import COMPLETED
    from toolkit.sweeps.runner import failure_outcome, rss_mb, run_trial_task, trial_outcome

    keras.backend.clear_session(free_memory=tasks[0].get("free_memory", True))
    outcomes: List[Optional[Dict[str, Any]]] = [None] * len(tasks)
    members: List[_Member] = []
    for index, task in enumerate(tasks):
        try:
            config = parse_config(task["config"], source=task["source"])
            data = datasets[task["data_key"]]
            model = training.prepare_model(config, data, seed=config.seed)  # exactly as the lone trial
        except Exception as error:  # this trial fails alone (as it would alone)
            outcomes[index] = failure_outcome(error)
            continue
        members.append(_Member(index, task, config, data, model))
    if members:
        # A pack shares one pipeline of arrays: streamed tables and image files (pipelines) train alone, and so do
        # members whose split sizes differ (another number of batches per epoch).
        together = all(in_memory(m.data) for m in members)
        sizes = {(len(m.data.y_train), len(m.data.y_val)) for m in members} if together else set()
        if not together or len(sizes) > 1:
            for member in members:
                outcomes[member.index] = run_trial_task(member.task, member.data)
        else:
            budget = PACK_MEMORY_BUDGET_MB * 2**20
            stacks, rest = _stack_groups(members)
            for i in list(rest):  # with their own train steps: their loss, metrics and optimizer made now
                try:
                    training.build_training_state(members[i].model, members[i].data)
                except Exception as error:  # noqa: BLE001 - as the trial alone would fail
                    outcomes[members[i].index] = failure_outcome(error)
                    rest.remove(i)
            number = 0  # each stack's number in this pack (outcomes' "stack")
            for group, stacked_plan in stacks + [([members[i] for i in rest], None)]:
                sizes = [_memory_bytes(m, stacked_plan) for m in group]
                for chunk in split_by_memory(sizes, budget) if group else []:
                    pack = [group[i] for i in chunk]
                    plan_ = stacked.plan([m.model for m in pack]) if stacked_plan is not None and len(pack) > 1 \
                        else None
                    number += plan_ is not None
                    if stacked_plan is not None and plan_ is None:  # a stack's member left alone by the budget
                        try:
                            training.build_training_state(pack[0].model, pack[0].data)
                        except Exception as error:  # noqa: BLE001 - as the trial alone would fail
                            outcomes[pack[0].index] = failure_outcome(error)
                            continue
                    started = time.perf_counter()
                    _fit_members(pack, verbose=tasks[0].get("verbose", 0), plan=plan_)
                    fit_seconds = (time.perf_counter() - started) / len(pack)
                    for member in pack:
                        outcome = trial_outcome([member.result], member.task)
                        if outcome["status"] == COMPLETED:
                            # as a lone trial's (benchmarks): its share of the time in fit, the process's memory
                            outcome.update(fit_s=round(fit_seconds, 4), rss_mb=rss_mb(), pack=len(pack))
                            if plan_ is not None:
                                outcome["stack"] = number
                        outcomes[member.index] = outcome
    return outcomes


def _stack_groups(members: List["_Member"]) -> Tuple[List[Tuple[List["_Member"], Any]], List[int]]:
    """The members that train as stacks (:mod:`toolkit.sweeps.stacked`: same layer structure and data set),
    each group with its plan, and the indices of the others (trained with their own train steps)."""
    from toolkit import training

    signatures = []
    for member in members:
        text = stacked.signature(member.model)
        signatures.append(None if text is None else f"{member.task['data_key']}|{text}")
    groups, rest = stacked.group(signatures)
    stacks = []
    for indices in groups:
        # The first member's loss and metrics are built (as its trial's fit would) and checked; the others
        # compiled the same names on the same data.
        first = members[indices[0]]
        try:
            training.build_training_state(first.model, first.data, optimizer=False)
            supported = stacked.compiled_supported(first.model)
        except Exception:  # noqa: BLE001 - each trial then builds, and fails, as it would alone
            supported = False
        if supported:
            stacks.append(([members[i] for i in indices], stacked.plan([members[i].model for i in indices])))
        else:
            rest.extend(indices)
    return stacks, sorted(rest)


def _memory_bytes(member: "_Member", plan: Any = None) -> int:
    """A member's estimated memory (:func:`toolkit.sweeps.packing.member_memory_bytes`); in a stack (`plan`),
    with the stack's padded widths."""
    from toolkit import training

    if plan is not None:
        params, activations = stacked.stacked_size(plan)
        return member_memory_bytes(params, training.batch_size(member.config, member.data), activations)
    activations = 0
    for layer in member.model.layers:  # a functional model: a layer's output is a symbolic tensor (or several)
        for output in layer.output if isinstance(layer.output, (list, tuple)) else [layer.output]:
            size = 1
            for dim in output.shape[1:]:
                size *= int(dim or 1)
            activations += size
    return member_memory_bytes(int(member.model.count_params()), training.batch_size(member.config, member.data),
                               activations)


class _Member:
    """One trial of a pack: its task, config, data, compiled model, callbacks and what came of it."""

    def __init__(self, index: int, task: Dict[str, Any], config: Any, data: Any, model: Any):
        self.index = index
        self.task = task
        self.config = config
        self.data = data
        self.model = model
        self.logger: Any = None  # its history file's callback
        self.callbacks: Any = None  # its keras.callbacks.CallbackList, set to its model
        self.result: Any = None  # (history, params) once trained


def _fit_members(members: List[_Member], verbose: int = 0, plan: Any = None) -> None:
    """Trains the members of one pack together (the same epochs, batches and callbacks as each alone); as one
    stack of kernels with a `plan` (:mod:`toolkit.sweeps.stacked`), else each with its own train step."""
    import keras
    import tensorflow as tf

    from toolkit import training
    from toolkit.results import history_logger
    from toolkit.sweeps.runner import stop_on_nan_class

    epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
    # One pipeline per data set: members with another seed have another split and shuffle.
    keys: List[str] = []
    for member in members:
        if member.task["data_key"] not in keys:
            keys.append(member.task["data_key"])
    first = {key: next(m for m in members if m.task["data_key"] == key) for key in keys}
    train_sets, validation_sets = [], []
    for key in keys:
        train, validation = _datasets(first[key].config, first[key].data, epoch)
        train_sets.append(train)
        validation_sets.append(validation)
    train = tf.data.Dataset.zip(tuple(train_sets))
    validation = tf.data.Dataset.zip(tuple(validation_sets))

    for member in members:
        member.logger = history_logger(Path(member.task["history_dir"]) / f"{member.task['trial_id']}.csv")
        member.callbacks = keras.callbacks.CallbackList(
            [member.logger, stop_on_nan_class()(), *_early_stopping(member.config)], model=member.model)
    steps = math.ceil(len(members[0].data.y_train) / training.batch_size(members[0].config, members[0].data))
    epochs = [m.config.training.epochs for m in members]
    if plan is not None:
        packed = stacked.stacked_model_class()(plan, [m.model for m in members], epochs,
                                               [m.callbacks for m in members], steps, verbose=verbose)
    else:
        packed = packed_model_class()([m.model for m in members], [keys.index(m.task["data_key"]) for m in members],
                                      epochs, [m.callbacks for m in members], steps)
    # One step per call: Keras' multi-step loop (a while loop with optional inputs) traces the step twice, and
    # tracing, not running, is what a pack of small models spends its time on. Each member's callbacks still
    # see the batches a lone trial's callbacks see (every steps_per_execution steps, and the epoch's last).
    packed.compile(optimizer=None, steps_per_execution=1, jit_compile=False)
    packed.fit(train, validation_data=validation, epochs=max(m.config.training.epochs for m in members),
               callbacks=[training.epoch_setter(epoch), packed.dispatcher()], verbose=verbose, shuffle=False)
    for member in members:
        member.result = (member.logger.history, int(member.model.count_params()))


def _datasets(config: Any, data: Any, epoch: Any) -> Tuple[Any, Any]:
    """The training and validation pipelines a lone trial's ``training.fit`` builds."""
    from toolkit import training

    # The global seed when the pipeline is built is part of tf.data's shuffle seed: a lone trial builds it
    # right after prepare_model seeded everything with the config's seed.
    training.set_seed(config.seed)
    train, validation, _ = training.pipelines(config, data, epoch)  # arrays: class weights are sample weights
    return train, validation


def _early_stopping(config: Any) -> List[Any]:
    """A sweep trial's early stopping (``training.fit`` with keep_best=False: only when the config sets it)."""
    from toolkit import training

    callback = training.early_stopping_callback(config, keep_best=False)
    return [] if callback is None else [callback]


def _split_logs(logs: Dict[str, Any], count: int) -> List[Dict[str, float]]:
    """``{"<i>:loss": .., "val_<i>:loss": ..}`` -> one ``{"loss": .., "val_loss": ..}`` per member."""
    out: List[Dict[str, float]] = [{} for _ in range(count)]
    for key, value in logs.items():
        prefix = "val_" if key.startswith("val_") else ""
        number, _, name = key[len(prefix):].partition(":")
        if name and number.isdigit():
            out[int(number)][prefix + name] = float(value)
    return out


@functools.lru_cache(maxsize=None)
def packed_model_class() -> type:
    """The Keras model class of a pack (built on first use: Keras is imported lazily)."""
    import keras

    class PackedModel(keras.Model):
        """K compiled member models trained as one: each step runs every active member's own train_step.

        Args:
            members: compiled Keras models (each with its own optimizer, loss and metrics).
            steps_per_epoch: batches in one epoch (the same for every member).
            data_index: for each member, its place in the tuple of data sets each batch holds.
            epochs: for each member, its number of epochs.
            callbacks: for each member, its ``keras.callbacks.CallbackList`` (set to the member).
        """

        def __init__(self, members: Sequence[Any], data_index: Sequence[int], epochs: Sequence[int],
                     callbacks: Sequence[Any], steps_per_epoch: int):
            super().__init__(name="pack")
            self._steps_per_epoch = steps_per_epoch
            self.members = list(members)
            self._data_index = list(data_index)
            self._epochs = list(epochs)
            self._member_callbacks = list(callbacks)
            self.training_members = list(range(len(self.members)))  # in the train step now
            self.evaluated_members = list(self.training_members)  # validated at the end of this epoch
            self._last_logs: List[Dict[str, float]] = [{} for _ in self.members]

        def call(self, inputs, training=False):
            return [member(inputs, training=training) for member in self.members]

        def train_step(self, data):
            return self._each_member("train_step", self.training_members, data)

        def test_step(self, data):
            return self._each_member("test_step", self.evaluated_members, data)

        def _each_member(self, step: str, members: Sequence[int], data: Any) -> Dict[str, Any]:
            """Each listed member's own Keras `step` on its data set's batch; logs as ``"<i>:<name>"``."""
            logs = {}
            for i in members:
                for name, value in getattr(self.members[i], step)(data[self._data_index[i]]).items():
                    logs[f"{i}:{name}"] = value
            return logs

        def reset_metrics(self):
            for i in self.evaluated_members:
                self.members[i].reset_metrics()

        def dispatcher(self) -> Any:
            return _Dispatcher(self)

        # -- called by the dispatcher

        def on_train_begin(self) -> None:
            for i, callbacks in enumerate(self._member_callbacks):
                self.members[i].stop_training = False
                callbacks.on_train_begin()

        def on_epoch_begin(self, epoch: int) -> None:
            for i in self.evaluated_members:
                self._member_callbacks[i].on_epoch_begin(epoch)

        def on_train_batch_end(self, batch: int, logs: Dict[str, Any]) -> None:
            split = self._member_logs(logs)
            stopped = []
            for i in self.training_members:
                self._last_logs[i] = split[i]
                every = int(self.members[i].steps_per_execution)
                if (batch + 1) % every and batch + 1 != self._steps_per_epoch:
                    continue  # alone, its callbacks hear of this step with the others of its execution
                self._member_callbacks[i].on_train_batch_end(batch, split[i])
                if self.members[i].stop_training:  # a non-finite loss: no more steps, still validated
                    stopped.append(i)
            if stopped:
                self.training_members = [i for i in self.training_members if i not in stopped]
                self._members_changed(evaluation=False)

        def on_epoch_end(self, epoch: int, logs: Dict[str, Any]) -> None:
            split = self._member_logs(logs)
            self._sync_members()
            done = []
            for i in self.evaluated_members:
                member_logs = {**self._last_logs[i], **{k: v for k, v in split[i].items() if k.startswith("val_")}}
                self._member_callbacks[i].on_epoch_end(epoch, member_logs)
                if self.members[i].stop_training or i not in self.training_members or \
                        epoch + 1 >= self._epochs[i]:
                    self._member_callbacks[i].on_train_end(member_logs)
                    done.append(i)
            if done:
                self.evaluated_members = [i for i in self.evaluated_members if i not in done]
                self.training_members = [i for i in self.training_members if i not in done]
                self._members_changed(evaluation=True)

        def _member_logs(self, logs: Dict[str, Any]) -> List[Dict[str, float]]:
            """The pack's logs as each member's own."""
            return _split_logs(logs or {}, len(self.members))

        def _sync_members(self) -> None:
            """Called before the members' callbacks see an epoch's end (their models are up to date here)."""

        def _members_changed(self, evaluation: bool) -> None:
            """Members left the train step (and, with `evaluation`, the evaluation): the pack's functions are
            traced again without them."""
            self.train_function = None
            if evaluation:
                self.test_function = None
            if self.training_members:
                self.make_train_function()
            else:
                self.stop_training = True

    class _Dispatcher(keras.callbacks.Callback):
        """The pack's one callback: hands each member its own logs and lets its callbacks stop it."""

        def __init__(self, packed: Any):
            super().__init__()
            self.packed = packed

        def on_train_begin(self, logs=None):
            self.packed.on_train_begin()

        def on_epoch_begin(self, epoch, logs=None):
            self.packed.on_epoch_begin(epoch)

        def on_train_batch_end(self, batch, logs=None):
            self.packed.on_train_batch_end(batch, logs)

        def on_epoch_end(self, epoch, logs=None):
            self.packed.on_epoch_end(epoch, logs)

    PackedModel.__module__ = __name__
    return PackedModel
