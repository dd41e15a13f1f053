"""TensorBoard: event files in ``tensorboard/`` of every run directory and of every sweep directory.

A run's ``tensorboard/`` is Keras' own TensorBoard callback's layout: ``train/`` and ``validation/`` hold a
scalar per epoch for every metric (``epoch_loss``, ``epoch_accuracy``, ...; the step is the 0-based epoch) and
``train/`` the learning rate (``epoch_learning_rate``). With ``training.monitor.gradients`` the per-layer norms
of the gradient-flow monitor go to ``train/`` too (``grad_norm/<layer>``, ``weight_norm/<layer>``, at the
step of the epoch they were measured after).

A sweep's ``tensorboard/`` holds the HParams plugin's data as keras-tuner's own Tuner writes it: the
experiment (every searched parameter and the metrics) at its top, and one folder per trial, ``trial_<id>/``,
with the session's searched values, its status and its ``score`` (the objective at the best epoch), beside the
trial's ``train/`` and ``validation/`` scalars. ``tensorboard --logdir sweeps/<name>`` shows it all.

Summaries that ktk writes itself are written with TensorBoard's own event-file writer (no TensorFlow needed).
"""

from __future__ import annotations

import functools
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional

from toolkit.results import TENSORBOARD_DIR

TRIAL_PREFIX = "trial_"  # tensorboard/trial_<id>/ of a sweep
EXECUTION_PREFIX = "execution"  # tensorboard/trial_<id>/execution<N>/: a trial's later executions
SCORE_TAG = "score"


def keras_callback(config: Any, log_dir: Path) -> Any:
    """Keras' TensorBoard callback writing into `log_dir`, with ``tracking.tensorboard``'s options."""
    import keras

    options = config.tracking.tensorboard
    return keras.callbacks.TensorBoard(
        log_dir=str(log_dir), histogram_freq=options.histograms, write_graph=options.write_graph,
        write_images=options.write_images, write_steps_per_second=options.write_steps_per_second,
        update_freq=options.update_freq, profile_batch=options.profile_batch)


def run_callbacks(config: Any, run_dir: Path, gradient_monitor: Any = None,
                  on_error: Optional[Callable[[str], None]] = None) -> List[Any]:
    """The callbacks writing a run's ``tensorboard/``: Keras' TensorBoard, and the gradient norms.

    Both are guarded (:func:`guarded`): the first failure switches TensorBoard off for the rest of the run and
    is reported once to `on_error` (default: one warning on stderr).
    """
    log_dir = Path(run_dir) / TENSORBOARD_DIR
    switch = Switch(log_dir, on_error)
    callbacks = [guarded(keras_callback(config, log_dir), switch)]
    if gradient_monitor is not None:
        callbacks.append(guarded(_gradient_scalars_class()(gradient_monitor, log_dir / "train"), switch))
    return callbacks


class Switch:
    """Whether a run's (or trial's) TensorBoard writing is still on: its first failure turns it off."""

    def __init__(self, log_dir: Path, on_error: Optional[Callable[[str], None]] = None) -> None:
        self.log_dir = Path(log_dir)
        self.on = True
        self.on_error = on_error

    def failed(self, what: str, error: BaseException) -> None:
        if not self.on:
            return
        self.on = False
        from toolkit.tracking.mlflow import describe

        text = f"TensorBoard ({self.log_dir}) failed to write ({what}): {describe(error)}"
        if self.on_error is not None:
            self.on_error(text)
        else:
            from toolkit.tracking import warn

            warn(f"{text}; training goes on without it")


# The hooks a guarded callback passes on (only those its callback implements, so that Keras still sees the
# others as not implemented, e.g. for its asynchronous batch-end dispatch).
_HOOKS = ("on_epoch_begin", "on_epoch_end", "on_train_begin", "on_train_end", "on_test_begin", "on_test_end",
          "on_train_batch_begin", "on_train_batch_end", "on_test_batch_begin", "on_test_batch_end",
          "on_predict_begin", "on_predict_end", "on_predict_batch_begin", "on_predict_batch_end")


def guarded(callback: Any, switch: Switch) -> Any:
    """`callback` (a TensorBoard writer) wrapped so that its failure never fails ``fit``: the failure is
    reported through `switch`, which switches off every callback sharing it, and what the callback had open
    (summary writers, the profiler) is closed as far as possible."""
    return _guarded_class()(callback, switch)


@functools.lru_cache(maxsize=None)
def _guarded_class() -> type:
    import keras

    class Guarded(keras.callbacks.Callback):
        def __init__(self, inner: Any, switch: Switch) -> None:
            super().__init__()
            self.inner, self.switch = inner, switch
            for hook in _HOOKS:
                method = getattr(inner, hook, None)
                if method is not None and not getattr(method, "_is_default", False):
                    setattr(self, hook, functools.partial(self._call, hook))

        def _call(self, hook: str, *args: Any, **kwargs: Any) -> None:
            if not self.switch.on:
                return
            try:
                getattr(self.inner, hook)(*args, **kwargs)
            except Exception as error:  # a tracker never fails the run
                self.switch.failed(hook, error)
                _release(self.inner)

        def set_model(self, model: Any) -> None:
            super().set_model(model)
            self._call("set_model", model)

        def set_params(self, params: Any) -> None:
            super().set_params(params)
            self._call("set_params", params)

    return Guarded


def _release(callback: Any) -> None:
    """Best effort: closes what a failed TensorBoard callback had open, so that nothing it set up (a default
    summary writer, the profiler) outlives it."""
    steps = []
    for context in reversed(list(getattr(callback, "_prev_summary_state", None) or [])):
        steps += [lambda c=context: c[1].__exit__(None, None, None), lambda c=context: c[0].__exit__(None, None, None)]
    if getattr(callback, "_is_tracing", False):
        steps.append(lambda: callback._stop_trace())
    for writer in list((getattr(callback, "_writers", None) or {}).values()):
        steps.append(writer.close)
    if getattr(callback, "writer", None) is not None:
        steps.append(callback.writer.close)
    for step in steps:
        try:
            step()
        except Exception:
            pass
    try:
        callback._prev_summary_state = []
    except Exception:
        pass


def trial_log_dir(sweep_dir: Path, trial_id: str, execution: int = 0) -> Path:
    """Where a sweep trial's (execution's) scalars go."""
    folder = Path(sweep_dir) / TENSORBOARD_DIR / f"{TRIAL_PREFIX}{trial_id}"
    return folder if execution == 0 else folder / f"{EXECUTION_PREFIX}{execution + 1}"


@functools.lru_cache(maxsize=None)
def _gradient_scalars_class() -> type:
    import keras

    class GradientScalars(keras.callbacks.Callback):
        """Copies each epoch's new rows of the gradient monitor (toolkit.lessons.monitor) into event files."""

        def __init__(self, monitor: Any, log_dir: Path) -> None:
            super().__init__()
            self.monitor, self.log_dir = monitor, log_dir
            self.done = 0
            self.writer: Any = None

        def on_epoch_end(self, epoch: int, logs: Optional[Dict[str, Any]] = None) -> None:
            rows = self.monitor.rows[self.done:]
            self.done = len(self.monitor.rows)
            rows = [r for r in rows if r["epoch"] >= 1]  # (epoch 0, before training, has no step of its own)
            if not rows:
                return
            if self.writer is None:
                self.writer = EventWriter(self.log_dir)
            for row in rows:
                step = row["epoch"] - 1  # Keras' TensorBoard callback counts epochs from 0
                self.writer.scalar(f"grad_norm/{row['layer']}", row["grad_norm"], step)
                self.writer.scalar(f"weight_norm/{row['layer']}", row["weight_norm"], step)
            self.writer.flush()

        def on_train_end(self, logs: Optional[Dict[str, Any]] = None) -> None:
            if self.writer is not None:
                self.writer.close()

    return GradientScalars


class EventWriter:
    """One event file in a folder, written with TensorBoard's writer (no TensorFlow)."""

    def __init__(self, log_dir: Path) -> None:
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        Path(log_dir).mkdir(parents=True, exist_ok=True)
        self._writer = EventFileWriter(str(log_dir))

    def summary(self, summary: Any, step: int = 0) -> None:
        from tensorboard.compat.proto import event_pb2

        self._writer.add_event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))

    def scalar(self, tag: str, value: float, step: int) -> None:
        from tensorboard.plugins.scalar.summary_v2 import scalar_pb

        self.summary(scalar_pb(tag, float(value)), step)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


# ----------------------------------------------------------------------------------- sweeps: HParams


def hparam_value(value: Any) -> Any:
    """A searched value as the HParams plugin takes it (bool, number or text; lists and mappings as JSON)."""
    if isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value, sort_keys=True, default=str)


def write_experiment(sweep_dir: Path, spec: Any) -> None:
    """The HParams experiment at the top of a sweep's ``tensorboard/``: its searched parameters and metrics."""
    from tensorboard.plugins.hparams import summary_v2 as hp

    metric_names = [m for m in _objective_metrics(spec.objective.name)]
    metrics = [hp.Metric(SCORE_TAG, display_name=f"score ({spec.objective.name} at the best epoch)")]
    for group in ("train", "validation"):
        for name in metric_names:
            metrics.append(hp.Metric(f"epoch_{name}", group=group, display_name=f"{group} {name} (last epoch)"))
    hparams = [hp.HParam(path) for path in spec.paths]
    writer = EventWriter(Path(sweep_dir) / TENSORBOARD_DIR)
    try:
        writer.summary(hp.hparams_config_pb(hparams=hparams, metrics=metrics))
    finally:
        writer.close()


def _objective_metrics(objective: str) -> List[str]:
    name = objective[4:] if objective.startswith("val_") else objective
    return ["loss"] if name == "loss" else ["loss", name]


def write_trial(sweep_dir: Path, trial_id: str, values: Mapping[str, Any], completed: bool,
                score: Optional[float], started: Optional[float] = None) -> None:
    """One trial's HParams session: its searched values, status (success or failure) and score."""
    from tensorboard.plugins.hparams import api_pb2, summary_v2 as hp

    writer = EventWriter(trial_log_dir(sweep_dir, trial_id))
    try:
        writer.summary(hp.hparams_pb({k: hparam_value(v) for k, v in values.items()}, trial_id=str(trial_id),
                                     start_time_secs=started))
        if score is not None and math.isfinite(score):
            writer.scalar(SCORE_TAG, score, 0)
        writer.summary(_session_end_pb(api_pb2.STATUS_SUCCESS if completed else api_pb2.STATUS_FAILURE))
    finally:
        writer.close()


def _session_end_pb(status: int) -> Any:
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.plugins.hparams import metadata, plugin_data_pb2

    data = plugin_data_pb2.HParamsPluginData(
        session_end_info=plugin_data_pb2.SessionEndInfo(status=status, end_time_secs=time.time()))
    summary = summary_pb2.Summary()
    summary.value.add(tag=metadata.SESSION_END_INFO_TAG, metadata=metadata.create_summary_metadata(data),
                      tensor=metadata.NULL_TENSOR)
    return summary
