"""The gradient-flow monitor: per-layer gradient and weight norms each epoch, into ``gradients.csv``.

Opt in with ``training: {monitor: {gradients: true}}``. Before training (epoch 0) and after every epoch the
callback evaluates the gradient of the full training cost (loss + regularization, training mode) on a
fixed probe batch of training examples and writes, per layer with trainable weights, the L2 norm of its
gradient and of its weights. The evaluation is stateless (see :func:`toolkit.lessons.gradcheck.model_cost`):
it changes neither the weights nor batch-norm statistics nor random-generator state, so a monitored run
trains exactly as an unmonitored one. The file is rewritten (atomically) when its rows have doubled since
the last write, at least every 10 seconds, and when training ends: a long run is not slowed by rewriting an
ever longer file every epoch, and an interrupted one keeps all but its last seconds. ``ktk diagnose``
reads the file for vanishing and exploding gradients.
"""

from __future__ import annotations

import csv
import functools
import io
import math
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import numpy as np

from toolkit.lessons.run_files import GRADIENT_COLUMNS
from toolkit.results import atomic_write_text

PROBE_EXAMPLES = 256  # training examples the gradient is measured on
WRITE_EVERY_S = 10.0  # gradients.csv is rewritten at least this often (and when its rows have doubled)


def gradient_monitor(config: Any, data: Any, path: Union[str, Path]) -> Any:
    """A Keras callback writing per-layer gradient and weight norms to `path` each epoch.

    Args:
        config: the run's :class:`toolkit.config.Config` (unused today beyond the seed; kept so the
            monitor can grow options under ``training.monitor`` without changing callers).
        data: the :class:`toolkit.data.Dataset`; the first examples of its training split are the probe.
        path: the CSV file (``<run_dir>/gradients.csv``), rewritten after every epoch.

    Returns:
        A ``keras.callbacks.Callback``.
    """
    x = np.asarray(data.x_train[:PROBE_EXAMPLES])
    y = np.asarray(data.y_train[:PROBE_EXAMPLES])
    return _monitor_class()(x, y, Path(path))


@functools.lru_cache(maxsize=None)
def _monitor_class() -> type:
    """The callback class, defined on first use so that importing this module does not import Keras."""
    import keras
    import tensorflow as tf

    from toolkit.lessons.gradcheck import layer_of_variables, model_cost

    class GradientMonitor(keras.callbacks.Callback):
        """Records per-layer gradient and weight norms before training and after every epoch."""

        def __init__(self, x: np.ndarray, y: np.ndarray, path: Path) -> None:
            super().__init__()
            self.x, self.y, self.path = x, y, path
            self.rows: List[Dict[str, Any]] = []
            self._lines: List[str] = []  # the rows as CSV lines, each rendered once
            self._written = 0  # rows in the file
            self._written_at = 0.0
            self._gradients: Any = None

        def on_train_begin(self, logs: Optional[Dict[str, Any]] = None) -> None:
            self.rows, self._lines, self._written = [], [], 0
            self._record(0)

        def on_epoch_end(self, epoch: int, logs: Optional[Dict[str, Any]] = None) -> None:
            self._record(epoch + 1)  # 1-based, as in history.csv

        def on_train_end(self, logs: Optional[Dict[str, Any]] = None) -> None:
            if self._written < len(self.rows):
                self._write()

        def _write(self) -> None:
            atomic_write_text(self.path, "".join([_HEADER, *self._lines]))
            self._written, self._written_at = len(self.rows), time.monotonic()

        def _record(self, epoch: int) -> None:
            model = self.model
            variables = model.trainable_variables
            if not variables:
                return
            if self._gradients is None:
                x = tf.constant(self.x, dtype=variables[0].dtype)
                y = tf.constant(self.y)

                @tf.function
                def gradients() -> Any:
                    values = [tf.identity(v.value) for v in model.trainable_variables]
                    with tf.GradientTape() as tape:
                        tape.watch(values)
                        cost = model_cost(model, values, x, y, training=True)
                    return tape.gradient(cost, values)

                self._gradients = gradients
            grads = self._gradients()
            squares: Dict[str, List[float]] = {}
            for layer, grad, variable in zip(layer_of_variables(model), grads, variables):
                weight = np.asarray(variable.numpy(), dtype=np.float64)
                g = 0.0 if grad is None else float(np.sum(np.square(np.asarray(grad, dtype=np.float64))))
                entry = squares.setdefault(layer, [0.0, 0.0])
                entry[0] += g
                entry[1] += float(np.sum(np.square(weight)))
            for layer, (g2, w2) in squares.items():
                row = {"epoch": epoch, "layer": layer, "grad_norm": math.sqrt(g2), "weight_norm": math.sqrt(w2)}
                self.rows.append(row)
                self._lines.append(_line(row))
            if len(self.rows) >= 2 * self._written or time.monotonic() - self._written_at >= WRITE_EVERY_S:
                self._write()

    return GradientMonitor


def _line(row: Dict[str, Any]) -> str:
    """One row of gradients.csv (floats as repr: nan and inf too)."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(
        [repr(row[k]) if isinstance(row[k], float) else row[k] for k in GRADIENT_COLUMNS])
    return buffer.getvalue()


_HEADER = _line({k: k for k in GRADIENT_COLUMNS})
