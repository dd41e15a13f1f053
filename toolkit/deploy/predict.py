"""Predictions from a run's saved model: :func:`load_run` for Python, :func:`predict_file` for ``ktk predict``.

Output (one row per input row): ``row`` (the input's row number, 0 for the first data row), then
``prediction`` (the class name, or the value for regression) and, for classification, ``p_<class>`` for
every class (binary: the positive class only, the second of ``class_names``).
"""

from __future__ import annotations

import json
import math
import os
import stat
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, TextIO, Union

import numpy as np

from toolkit.deploy import inputs as raw_inputs
from toolkit.schema import Labels, output_columns, read_labels
from toolkit.errors import UserError
from toolkit.results import (BEST_DIR, CONFIG_FILE, METRICS_FILE, MODEL_FILE, SWEEP_FILE, SWEEP_MARKER, new_file_mode,
                             read_json)

OUTPUT_FORMATS = ("csv", "json", "parquet")
PathLike = Union[str, Path]


def resolve_run_dir(path: PathLike, where: str = "RUN_DIR") -> Path:
    """A run directory, or a sweep directory's ``best/`` run."""
    path = Path(path)
    if str(path) == "":
        raise UserError("an empty path", where=where, expected="a run or sweep directory", received="")
    if not path.is_dir():
        raise UserError("not a directory" if path.exists() else "no such directory", where=where,
                        expected="a run directory (or a sweep directory: its best/ run)", received=str(path))
    if (path / SWEEP_MARKER).exists() or (path / SWEEP_FILE).exists():
        best = path / BEST_DIR
        if not (best / METRICS_FILE).is_file():
            raise UserError(f"the sweep {path} has no finished best/ run yet (it is still running, or was "
                            "stopped before retraining its best trial)", where=where,
                            expected="a finished sweep or a run directory", received=str(path))
        return best
    if not (path / MODEL_FILE).is_file() or not (path / METRICS_FILE).is_file():
        raise UserError(f"{path} holds no finished run ({MODEL_FILE} and {METRICS_FILE})", where=where,
                        expected="a run directory written by `ktk run` (or a sweep directory)", received=str(path))
    return path


class LoadedRun:
    """A finished run, ready to predict: ``.model`` takes raw inputs (see ``labels.json``).

    Attributes:
        run_dir: the run directory.
        model: the saved Keras model (raw inputs in, probabilities or values out).
        labels: what the model takes and gives (:class:`toolkit.schema.Labels`).
        config: the run's :class:`toolkit.config.Config`.
        metrics: the run's ``metrics.json``.
    """

    def __init__(self, run_dir: Path, model: Any, labels: Labels, config: Any, metrics: Dict[str, Any]):
        self.run_dir = run_dir
        self.model = model
        self.labels = labels
        self.config = config
        self.metrics = metrics

    @property
    def class_names(self) -> Optional[List[str]]:
        """The classes in the model's output order (None for regression)."""
        return self.labels.class_names

    @property
    def task(self) -> str:
        return self.labels.task

    def predict(self, data: Any, batch_size: int = 1024) -> Any:
        """Predictions for raw rows: a pandas DataFrame (columns as the model's) or a dict of columns, or an
        array for a model that takes one array. Returns a DataFrame as ``ktk predict`` writes it."""
        import pandas as pd

        frame, array = raw_inputs.frame_from(data, self.labels)
        if frame is not None:
            notes = raw_inputs.Notes()
            raw_inputs.check_columns(list(frame.columns), self.labels, "data", notes, "the data frame")
            chunk = raw_inputs.frame_chunk(frame, self.labels, "data", notes)
        else:
            chunk = raw_inputs.array_chunk(array, self.labels, "data")
        table = self._table(chunk, batch_size)
        if frame is not None:  # the frame's own index, where rows were dropped too
            table["row"] = frame.index.to_numpy()[chunk.rows]
        return pd.DataFrame(table)

    def outputs(self, features: Any, batch_size: int = 1024) -> np.ndarray:
        """The model's raw outputs for prepared features (an array or a dict of columns)."""
        import tensorflow as tf

        n = len(next(iter(features.values()))) if isinstance(features, dict) else len(features)
        outputs = []
        for start in range(0, n, batch_size):  # one traced function for every batch: no tf.data per chunk
            part = slice(start, start + batch_size)
            batch = ({k: tf.constant(v[part]) for k, v in features.items()} if isinstance(features, dict)
                     else tf.constant(features[part]))
            outputs.append(np.asarray(self.model.predict_on_batch(batch)))
        return np.concatenate(outputs) if outputs else np.empty((0, 1), dtype=np.float32)

    def _table(self, chunk: raw_inputs.Chunk, batch_size: int) -> Dict[str, Any]:
        return prediction_table(self.labels, chunk.rows, self.outputs(chunk.features, batch_size))


def load_run(run_dir: PathLike) -> LoadedRun:
    """Loads a finished run (or a sweep's best run) for predictions.

    Raises:
        UserError: not a run directory, or one made before ktk saved ``labels.json``.
    """
    from toolkit.config import load_config
    from toolkit.quiet import quiet_tensorflow

    path = resolve_run_dir(run_dir)
    labels = read_labels(path)
    metrics = read_json(path / METRICS_FILE)
    config = load_config(path / CONFIG_FILE)
    quiet_tensorflow()
    import keras

    if config.model.custom_modules:  # the classes the model was built from (this key runs code: README)
        from toolkit.models import import_custom_modules

        import_custom_modules(config.model.custom_modules, config.base_dir)

    try:
        with warnings.catch_warnings():  # a column named with "/" is not its Input's name: Keras warns
            warnings.simplefilter("ignore", UserWarning)
            model = keras.saving.load_model(path / MODEL_FILE)
    except Exception as error:  # a damaged or foreign archive: the user's file to fix, not a crash
        from toolkit.errors import reason

        raise UserError(f"cannot load {path / MODEL_FILE} ({reason(error)})", where=str(path),
                        expected="the model.keras that ktk saved for this run") from None
    return LoadedRun(path, model, labels, config, metrics)


def prediction_table(labels: Labels, rows: np.ndarray, outputs: np.ndarray) -> Dict[str, Any]:
    """Columns of the predictions: row, prediction and the probabilities (or values)."""
    outputs = outputs.reshape(len(rows), -1)
    names = output_columns(labels, outputs.shape[1])
    table: Dict[str, Any] = {"row": rows}
    if labels.task == "regression":
        for i, name in enumerate(names):
            table[name] = outputs[:, i].astype(np.float64)
        return table
    classes = np.asarray(labels.class_names, dtype=object)
    if labels.task == "binary":
        positive = outputs[:, 0].astype(np.float64)
        table["prediction"] = classes[(positive >= 0.5).astype(int)]
        table[names[1]] = positive
        return table
    table["prediction"] = classes[np.argmax(outputs, axis=1)]
    for i, name in enumerate(names[1:]):
        table[name] = outputs[:, i].astype(np.float64)
    return table


# ------------------------------------------------------------------------------------------- ktk predict


def predict_file(run_dir: PathLike, input_path: PathLike, output: Optional[PathLike] = None,
                 fmt: Optional[str] = None, batch_size: int = 1024, evaluate: bool = False,
                 chunk_rows: int = raw_inputs.DEFAULT_CHUNK_ROWS, stdout: Optional[TextIO] = None,
                 stderr: Optional[TextIO] = None) -> Dict[str, Any]:
    """``ktk predict``: predictions for every row of a file, streamed in chunks, written as CSV, JSON or
    parquet to `output` (stdout when None). Returns {"rows": written, "dropped": ..., "evaluation": ...}.

    An output file is written under a temporary name and renamed at the end, so an error leaves nothing.
    """
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    input_path = Path(input_path)
    fmt = _output_format(fmt, output)
    if output is None and fmt == "parquet":
        raise UserError("parquet is binary: name a file to write it to", where="--format", received="parquet",
                        expected="--output FILE with --format parquet (or csv/json to the terminal)")
    target = _check_output(output) if output is not None else None
    if batch_size < 1:
        raise UserError(where="--batch-size", expected="a positive number of rows", received=batch_size)
    if str(input_path) == "":
        raise UserError("an empty path", where="INPUT", expected="a CSV, parquet or npz file", received="")
    raw_inputs.input_format(input_path, "INPUT")
    labels = read_labels(resolve_run_dir(run_dir))
    next(raw_inputs.read_file(input_path, labels, 1, "INPUT"), None)  # a bad file is said before the model loads
    loaded = load_run(run_dir)
    notes = raw_inputs.Notes()
    evaluation = None
    if evaluate:
        evaluation = _evaluate(loaded, input_path, batch_size, chunk_rows)
    chunks = raw_inputs.read_file(input_path, loaded.labels, chunk_rows, "INPUT", notes)
    with _Output(target, fmt, stdout) as out:
        written = 0
        for chunk in chunks:
            table = loaded._table(chunk, batch_size)
            out.write(table)
            written += len(chunk)
    if notes.ignored:
        print(f"note: ignored {len(notes.ignored)} column(s) the model does not use: "
              f"{', '.join(map(str, notes.ignored[:10]))}{' ...' if len(notes.ignored) > 10 else ''}", file=stderr)
    if notes.dropped:
        print(f"note: skipped {notes.dropped} row(s) with missing values (the run was trained with data.missing: "
              "drop); their row numbers are absent from the output", file=stderr)
    if evaluation is not None:
        shown = ", ".join(f"{k} {v:.6g}" for k, v in evaluation.items() if k != "rows")
        print(f"evaluated on {evaluation['rows']} rows: {shown}", file=stderr)
    if target is not None:
        print(f"wrote {written} predictions to {target}", file=stderr)
    return {"rows": written, "dropped": notes.dropped, "evaluation": evaluation}


def _output_format(fmt: Optional[str], output: Optional[PathLike]) -> str:
    if fmt is not None:
        if fmt not in OUTPUT_FORMATS:
            raise UserError(where="--format", expected="an output format", received=fmt, choices=OUTPUT_FORMATS)
        return fmt
    if output is not None:
        suffix = Path(output).suffix.lower().lstrip(".")
        if suffix in OUTPUT_FORMATS:
            return suffix
        if suffix == "pq":
            return "parquet"
    return "csv"


def _check_output(output: PathLike) -> Path:
    path = Path(output)
    if str(output) == "":
        raise UserError("an empty path", where="--output", expected="a file to write", received="")
    try:
        info = os.stat(path)
    except FileNotFoundError:
        info = None
    except (OSError, ValueError) as error:
        raise UserError(f"cannot use this path ({getattr(error, 'strerror', None) or error})", where="--output",
                        received=str(path)) from None
    if info is not None:
        if stat.S_ISDIR(info.st_mode):
            raise UserError("this is a folder, not a file", where="--output", expected="a file to write",
                            received=str(path))
        if stat.S_ISREG(info.st_mode):
            raise UserError("the file already exists; ktk predict never replaces a file", where="--output",
                            expected="a new file name (or remove the old file first)", received=str(path))
        if not (stat.S_ISFIFO(info.st_mode) or stat.S_ISCHR(info.st_mode)):
            raise UserError("not a file ktk can write to", where="--output", expected="a new file, a FIFO or a "
                            "character device", received=str(path))
    elif not path.parent.is_dir():
        raise UserError(f"the folder {path.parent} does not exist", where="--output", expected="a file in an "
                        "existing folder", received=str(path))
    return path


class _Output:
    """Writes prediction tables chunk by chunk: into a temporary file renamed at the end (a new file), or
    straight through (stdout, a FIFO, a device)."""

    def __init__(self, target: Optional[Path], fmt: str, stdout: TextIO):
        self.target, self.fmt, self.stdout = target, fmt, stdout
        self.first = True
        self.temp: Optional[str] = None
        self.handle: Any = None
        self.parquet: Any = None

    def __enter__(self) -> "_Output":
        if self.target is None:
            self.handle = self.stdout
        elif self.target.exists():  # a FIFO or a device: written through
            self.handle = open(self.target, "wb" if self.fmt == "parquet" else "w", encoding=None
                               if self.fmt == "parquet" else "utf-8", newline=None if self.fmt == "parquet" else "")
        else:
            fd, self.temp = tempfile.mkstemp(prefix=f".{self.target.name}.", suffix=".tmp", dir=self.target.parent)
            os.fchmod(fd, new_file_mode())
            self.handle = os.fdopen(fd, "wb" if self.fmt == "parquet" else "w",
                                    **({} if self.fmt == "parquet" else {"encoding": "utf-8", "newline": ""}))
        if self.fmt == "json":
            self.handle.write("[")
        return self

    def write(self, table: Dict[str, Any]) -> None:
        import pandas as pd

        frame = pd.DataFrame(table)
        if self.fmt == "csv":
            frame.to_csv(self.handle, header=self.first, index=False, lineterminator="\n")
        elif self.fmt == "json":
            records = frame.to_dict(orient="records")
            for record in records:
                prefix = "\n" if self.first else ",\n"
                self.handle.write(prefix + json.dumps({k: _plain(v) for k, v in record.items()}))
                self.first = False
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            arrow = pa.Table.from_pandas(frame, preserve_index=False)
            if self.parquet is None:
                self.parquet = pq.ParquetWriter(self.handle, arrow.schema)
            self.parquet.write_table(arrow)
        self.first = False

    def __exit__(self, kind: Any, error: Any, trace: Any) -> None:
        try:
            if error is None:
                if self.fmt == "json":
                    self.handle.write("\n]\n" if not self.first else "]\n")
                if self.parquet is not None:
                    self.parquet.close()
            if self.handle is not self.stdout:
                self.handle.close()
            else:
                self.handle.flush()
        finally:
            if self.temp is not None:
                if error is None:
                    os.replace(self.temp, self.target)
                else:
                    os.unlink(self.temp)


def _plain(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else None
    return value


# ------------------------------------------------------------------------------------------- --evaluate


def _evaluate(loaded: LoadedRun, input_path: Path, batch_size: int, chunk_rows: int) -> Dict[str, Any]:
    """Loss and metrics on the input's target column, computed by Keras over the whole file in one pass
    (streamed), with the run's loss and metrics: the numbers ``metrics.json`` holds for its splits."""
    import tensorflow as tf

    from toolkit.training import DEFAULT_LOSS, DEFAULT_METRICS

    labels = loaded.labels
    first = next(raw_inputs.read_file(input_path, labels, min(chunk_rows, 1), "INPUT"), None)
    if first is None or first.target is None:
        raise UserError(f"--evaluate needs the target column {labels.target!r} in the input", where="--evaluate",
                        expected=f"a column {labels.target!r} (an array y in an npz file)", received=str(input_path))
    counted = {"rows": 0}

    def batches() -> Iterator[Any]:
        for chunk in raw_inputs.read_file(input_path, labels, chunk_rows, "INPUT"):
            if chunk.target is None:
                continue
            counted["rows"] += len(chunk)
            y = _encode_target(chunk.target, labels, chunk.rows)
            for start in range(0, len(chunk), batch_size):
                part = slice(start, start + batch_size)
                features = ({k: v[part] for k, v in chunk.features.items()} if isinstance(chunk.features, dict)
                            else chunk.features[part])
                yield features, y[part]

    model = loaded.model
    if labels.inputs.kind == "columns":
        spec_x: Any = {c.name: tf.TensorSpec((None,), tf.string if c.dtype == "string" else tf.float64)
                       for c in labels.inputs.columns}
    else:
        spec_x = tf.TensorSpec((None, *labels.inputs.shape), tf.float64)
    y_dtype = tf.int64 if labels.task == "multiclass" else tf.float64
    y_shape = (None, *np.asarray(first.target).shape[1:])  # several regression outputs: (n, k)
    dataset = tf.data.Dataset.from_generator(batches, output_signature=(spec_x, tf.TensorSpec(y_shape, y_dtype)))
    training = loaded.config.training
    loss = training.loss or DEFAULT_LOSS[labels.task]
    metrics = list(training.metrics) if training.metrics is not None else DEFAULT_METRICS[labels.task]
    model.compile(loss=loss, metrics=metrics, jit_compile=False)
    with warnings.catch_warnings():  # a generator's end is "running out of data" to Keras: expected here
        warnings.filterwarnings("ignore", message=".*ran out of data.*")
        results = model.evaluate(dataset, verbose=0, return_dict=True)
    return {"rows": counted["rows"], **{name: float(value) for name, value in results.items()}}


def _encode_target(values: np.ndarray, labels: Labels, rows: np.ndarray) -> np.ndarray:
    if labels.task == "regression":
        return np.asarray(values, dtype=np.float64)
    lookup = {name: i for i, name in enumerate(labels.class_names or [])}
    codes = np.empty(len(values), dtype=np.int64)
    for i, value in enumerate(values):
        key = _label_key(value)
        if key not in lookup and key.isdigit() and int(key) < len(lookup):
            key = (labels.class_names or [])[int(key)]  # a class index, as sklearn's loaders give labels
        if key not in lookup:
            raise UserError(f"row {rows[i]}, column {labels.target!r}: {key!r} is not a class of this model",
                            where="--evaluate", expected="a class the model was trained on", received=key,
                            choices=labels.class_names)
        codes[i] = lookup[key]
    return codes if labels.task == "multiclass" else codes.astype(np.float64)


def _label_key(value: Any) -> str:
    """A label as ktk names classes: integral numbers without a decimal point, text as it is."""
    if isinstance(value, (bool, np.bool_)):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)
