"""Predictions from a run's saved model: :func:`load_run` for Python, :func:`predict_file` for ``ktk predict``.

Output (one row per input row): ``row`` (the input's row number, 0 for the first data row), then
``prediction`` (the class name, or the value for regression) and, for classification, ``p_<class>`` for
every class (binary: the positive class only, the second of ``class_names``).
"""

from __future__ import annotations

import errno
import json
import math
import os
import stat
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, TextIO, Union

import numpy as np

from toolkit.deploy import inputs as raw_inputs
from toolkit.schema import TEXT, Labels, output_columns, read_labels
from toolkit.errors import UserError, carried, raise_carried, reason, show
from toolkit.results import (BEST_DIR, CONFIG_FILE, LABELS_FILE, METRICS_FILE, MODEL_FILE, SWEEP_FILE, SWEEP_MARKER,
                             check_outside, check_path_given, new_file_mode, read_json)

OUTPUT_FORMATS = ("csv", "json", "parquet")
PathLike = Union[str, Path]


def resolve_run_dir(path: PathLike, where: str = "RUN_DIR") -> Path:
    """A run directory, or a sweep directory's ``best/`` run."""
    path = Path(path)
    check_path_given(path, where, "a run or sweep directory", problem="an empty path")
    if not path.is_dir():
        raise UserError("not a directory" if path.exists() else "no such directory", where=where,
                        expected="a run directory (or a sweep directory: its best/ run)", received=str(path))
    if (path / SWEEP_MARKER).exists() or (path / SWEEP_FILE).exists():
        best = path / BEST_DIR
        if not (best / METRICS_FILE).is_file():
            raise UserError(f"the sweep {path} has no finished best/ run yet (it is still running, or was "
                            "stopped before retraining its best trial)", where=where,
                            expected="a finished sweep or a run directory", received=str(path))
        path = best
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
        """Predictions for raw rows: a pandas DataFrame (columns as the model's), a dict of columns or a list of
        row dicts, or an array for a model that takes one array. Returns a DataFrame as ``ktk predict`` writes
        it (no rows in, no rows out)."""
        import pandas as pd

        _check_batch_size(batch_size, "batch_size")
        frame, array = raw_inputs.frame_from(data, self.labels)
        if frame is not None:
            notes = raw_inputs.Notes()
            raw_inputs.check_columns([str(c) for c in frame.columns], self.labels, "data", notes, "the data frame")
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
            try:
                outputs.append(np.asarray(self.model.predict_on_batch(batch)))
            except Exception as error:  # noqa: BLE001 - a model that refuses checked inputs: its words, once
                raise UserError(f"{self.run_dir / MODEL_FILE} refused the inputs ({reason(error)})",
                                where=str(self.run_dir), expected=f"a model that takes what {LABELS_FILE} "
                                "describes") from None
        width = max(self._units, 1)
        return np.concatenate(outputs) if outputs else np.empty((0, width), dtype=np.float32)

    @property
    def _units(self) -> int:
        return int(self.model.outputs[0].shape[-1] or 1)

    def _table(self, chunk: raw_inputs.Chunk, batch_size: int) -> Dict[str, Any]:
        return prediction_table(self.labels, chunk.rows, self.outputs(chunk.features, batch_size))


def load_run(run_dir: PathLike) -> LoadedRun:
    """Loads a finished run (or a sweep's best run) for predictions.

    Raises:
        UserError: not a run directory, or one made before ktk saved ``labels.json``.
    """
    path = resolve_run_dir(run_dir)
    return _load(path, read_labels(path))


def _load(path: Path, labels: Labels) -> LoadedRun:
    """:func:`load_run` of a resolved run directory whose labels.json is read already."""
    from toolkit.config import load_config
    from toolkit.quiet import quiet_tensorflow

    metrics = _read_metrics(path / METRICS_FILE)
    config = load_config(path / CONFIG_FILE)
    check_archive(path / MODEL_FILE)
    quiet_tensorflow()
    import keras

    if config.model.custom_modules:  # the classes the model was built from (this key runs code: README)
        from toolkit.models import import_custom_modules

        import_custom_modules(config.model.custom_modules, config.base_dir)

    try:
        with warnings.catch_warnings():  # a column named with "/" is not its Input's name: Keras warns
            warnings.simplefilter("ignore", UserWarning)
            model = keras.saving.load_model(path / MODEL_FILE, safe_mode=True)  # no Lambda code runs
    except Exception as error:  # noqa: BLE001 - a damaged or foreign archive: the user's file to fix, not a crash
        raise UserError(f"cannot load {path / MODEL_FILE} ({reason(error)})", where=str(path),
                        expected="the model.keras that ktk saved for this run") from None
    check_model_matches(model, labels, path)
    return LoadedRun(path, model, labels, config, metrics)


def _read_metrics(path: Path) -> Dict[str, Any]:
    try:
        metrics = read_json(path)
    except (OSError, ValueError) as error:
        raise UserError(f"{METRICS_FILE} cannot be read ({getattr(error, 'strerror', None) or error})",
                        file=str(path), expected=f"the {METRICS_FILE} that ktk wrote for this run") from None
    if not isinstance(metrics, dict):
        raise UserError(f"{METRICS_FILE} is damaged", file=str(path), expected="a JSON object",
                        received=type(metrics).__name__)
    return metrics


MAX_ARCHIVE_JSON_BYTES = 64 * 2**20  # config.json of a .keras archive: a vocabulary or image statistics fit


def check_archive(path: Path) -> None:
    """Refuses a ``model.keras`` that is no zip archive, or whose JSON entries would unpack to more than
    :data:`MAX_ARCHIVE_JSON_BYTES` (a zip bomb), before Keras reads it into memory.

    The sizes are the archive's own, and Python's zip reader never unpacks more than an entry declares.
    """
    import zipfile

    def refuse(problem: str) -> UserError:
        return UserError(f"cannot load {path} ({problem})", where=str(path.parent),
                         expected=f"the {MODEL_FILE} that ktk saved for this run (a zip archive)")

    try:
        with open(path, "rb") as handle, zipfile.ZipFile(handle) as archive:
            for info in archive.infolist():
                if info.filename.endswith(".json") and info.file_size > MAX_ARCHIVE_JSON_BYTES:
                    raise refuse(f"its {info.filename} would unpack to {info.file_size:,} bytes, more than a "
                                 f"Keras model's {MAX_ARCHIVE_JSON_BYTES // 2**20} MiB")
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError):
        raise refuse("not a zip archive: damaged, or not a Keras model") from None
    except OSError as error:
        raise refuse(error.strerror or str(error)) from None


def check_model_matches(model: Any, labels: Labels, run_dir: Path) -> None:
    """Refuses a ``labels.json`` that does not describe ``model.keras``: other input columns, dtypes, shape or
    text categories, or another number of outputs than the classes it names.

    Raises:
        UserError: naming ``labels.json``, the key and what the model has.
    """
    from toolkit.deploy.serving import input_name

    def mismatch(where: str, expected: str, received: Any) -> UserError:
        return UserError(f"{LABELS_FILE} does not describe {MODEL_FILE} (one of them was replaced or edited)",
                         file=str(run_dir / LABELS_FILE), where=where, expected=expected, received=received)

    schema = labels.inputs
    inputs = model.input
    if schema.kind == "columns":
        if not isinstance(inputs, dict):
            raise mismatch("inputs.kind", "columns, as the model takes", "the model takes one array")
        if set(inputs) != set(schema.names):
            raise mismatch("inputs.columns", f"the model's input columns {sorted(map(str, inputs))}",
                           sorted(schema.names))
        for i, column in enumerate(schema.columns):
            dtype = str(inputs[column.name].dtype)
            if (dtype == "string") != (column.dtype == TEXT):
                raise mismatch(f"inputs.columns[{i}].dtype", f"{'string' if dtype == 'string' else 'float64'}, "
                               f"the model's input {column.name!r} is {dtype}", column.dtype)
            if column.dtype == TEXT:
                vocabulary = _vocabulary(model, f"{input_name(column.name, i)}_lookup")
                if vocabulary is not None and vocabulary != list(column.categories or ()):
                    raise mismatch(f"inputs.columns[{i}].categories", f"the model's {len(vocabulary)} categories",
                                   list(column.categories or ()))
    else:
        if isinstance(inputs, (dict, list, tuple)):
            raise mismatch("inputs.kind", "columns, as the model takes", "array")
        shape = tuple(inputs.shape[1:])
        if shape != tuple(schema.shape):
            raise mismatch("inputs.shape", f"{list(shape)}, the model's input shape", list(schema.shape))
    if len(model.outputs) != 1 or len(model.outputs[0].shape) != 2:
        raise mismatch("task", "a model with one output of shape (n, units)",
                       f"outputs of shape {[tuple(o.shape) for o in model.outputs]}")
    units = int(model.outputs[0].shape[-1] or 0)
    wanted = {"binary": 1, "multiclass": len(labels.class_names or ())}.get(labels.task)
    if wanted is not None and units != wanted:
        names = labels.class_names or []
        raise mismatch("class_names", f"{'1 output' if labels.task == 'binary' else f'{wanted} outputs'} for "
                       f"{len(names)} {labels.task} classes; the model has {units}", names)


def _vocabulary(model: Any, layer: str) -> Optional[List[str]]:
    """The categories of a text column's ``StringLookup`` (its out-of-vocabulary slot left out), or None."""
    try:
        found = model.get_layer(layer)
    except ValueError:
        return None
    if not hasattr(found, "get_vocabulary"):
        return None
    values = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in found.get_vocabulary()]
    return values[getattr(found, "num_oov_indices", 1):]


def prediction_table(labels: Labels, rows: np.ndarray, outputs: np.ndarray) -> Dict[str, Any]:
    """Columns of the predictions: row, prediction and the probabilities (or values)."""
    outputs = outputs.reshape(len(rows), -1) if len(rows) else outputs.reshape(0, max(outputs.shape[-1], 1))
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


def predict_file(run_dir: PathLike, input_path: Union[PathLike, Sequence[PathLike]], output: Optional[PathLike] = None,
                 fmt: Optional[str] = None, batch_size: int = 1024, evaluate: bool = False,
                 chunk_rows: int = raw_inputs.DEFAULT_CHUNK_ROWS, stdout: Optional[TextIO] = None,
                 stderr: Optional[TextIO] = None) -> Dict[str, Any]:
    """``ktk predict``: predictions for every row of a file, streamed in chunks, written as CSV, JSON or
    parquet to `output` (stdout when None). Returns {"rows": written, "dropped": ..., "evaluation": ...}.

    For a run trained on images, `input_path` may also be image files and folders of them (a folder of class
    folders can be evaluated): the output then has a ``file`` column after ``row``.

    An output file is written under a temporary name and linked to its name at the end (never replacing a
    file that appeared meanwhile), so an error leaves nothing. Nothing is written inside the run directory.
    """
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    paths = [Path(p) for p in ([input_path] if isinstance(input_path, (str, os.PathLike)) else input_path)]
    if not paths:
        raise UserError("nothing to predict", where="INPUT", expected="a file (or image files and folders)")
    _check_batch_size(batch_size, "--batch-size")
    fmt = _output_format(fmt, output)
    if output is None and fmt == "parquet":
        raise UserError("parquet is binary: name a file to write it to", where="--format", received="parquet",
                        expected="--output FILE with --format parquet (or csv/json to the terminal)")
    run_path = resolve_run_dir(run_dir)
    target = _check_output(output, [run_dir, run_path]) if output is not None else None
    images = raw_inputs.is_image_input(paths)
    if not images:
        if len(paths) > 1:
            raise UserError("several inputs are for image files", where="INPUT", expected="one CSV, parquet or "
                            "npz file", received=[str(p) for p in paths])
        raw_inputs.check_input_file(paths[0], "INPUT")
    labels = read_labels(run_path)
    notes = raw_inputs.Notes()

    def read(rows: int, notes: Any = None) -> Iterator[raw_inputs.Chunk]:
        if images:
            return raw_inputs.image_chunks(paths, labels, rows, "INPUT")
        return raw_inputs.read_file(paths[0], labels, rows, "INPUT", notes)

    next(read(1), None)  # a bad file is said before the model loads
    loaded = _load(run_path, labels)
    evaluation = None
    if evaluate:
        evaluation = _evaluate(loaded, read, batch_size, chunk_rows, ", ".join(map(str, paths)))
    with _Output(target, fmt, stdout) as out:
        written = 0
        for chunk in read(chunk_rows, notes):
            table = loaded._table(chunk, batch_size)
            if chunk.names is not None:
                table = {"row": table.pop("row"), "file": np.asarray(chunk.names, dtype=object), **table}
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
        print(f"wrote {written} predictions to {output}", file=stderr)
    return {"rows": written, "dropped": notes.dropped, "evaluation": evaluation}


def _check_batch_size(batch_size: Any, where: str) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise UserError(where=where, expected="a positive whole number of rows", received=batch_size)


def _output_format(fmt: Optional[str], output: Optional[PathLike]) -> str:
    suffix = Path(output).suffix.lower().lstrip(".") if output is not None else ""
    by_name = "parquet" if suffix == "pq" else suffix if suffix in OUTPUT_FORMATS else None
    if fmt is not None:
        if fmt not in OUTPUT_FORMATS:
            raise UserError(where="--format", expected="an output format", received=fmt, choices=OUTPUT_FORMATS)
        if by_name is not None and by_name != fmt:  # a .parquet file holding JSON would mislead every reader
            raise UserError(f"--output's name ends in .{suffix}, which says {by_name}", where="--format",
                            expected=f"{by_name} for {output} (or an --output name that fits {fmt})", received=fmt,
                            choices=OUTPUT_FORMATS)
        return fmt
    return by_name or "csv"


def _check_output(output: PathLike, run_dirs: List[PathLike]) -> Path:
    """Where --output writes: a new file (a link is followed to its target), a FIFO or a character device;
    never an existing file, and never inside the run (or sweep) directory being read."""
    path = Path(output)
    check_path_given(output, "--output", "a file to write", problem="an empty path")
    try:
        if path.is_symlink():  # written where the link points, and the link stays
            path = Path(os.path.realpath(path))
        info = os.stat(path)
    except FileNotFoundError:
        info = None
    except (OSError, ValueError) as error:
        raise UserError(f"cannot use this path ({getattr(error, 'strerror', None) or error})", where="--output",
                        received=str(output)) from None
    if info is not None:
        if stat.S_ISDIR(info.st_mode):
            raise UserError("this is a folder, not a file", where="--output", expected="a file to write",
                            received=str(output))
        if stat.S_ISREG(info.st_mode):
            raise UserError("the file already exists; ktk predict never replaces a file", where="--output",
                            expected="a new file name (or remove the old file first)", received=str(output))
        if not (stat.S_ISFIFO(info.st_mode) or stat.S_ISCHR(info.st_mode)):
            raise UserError("not a file ktk can write to", where="--output", expected="a new file, a FIFO or a "
                            "character device", received=str(output))
        return path
    if not path.parent.is_dir():
        raise UserError(f"the folder {path.parent} does not exist", where="--output", expected="a file in an "
                        "existing folder", received=str(output))
    check_outside(path, run_dirs, "--output", what="the run directory this command reads")
    return path


class _Output:
    """Writes prediction tables chunk by chunk: into a temporary file linked to its name at the end (a new
    file), or straight through (stdout, a FIFO, a device). A failed write is one UserError naming --output."""

    def __init__(self, target: Optional[Path], fmt: str, stdout: TextIO):
        self.target, self.fmt, self.stdout = target, fmt, stdout
        self.where = "--output" if target is not None else "standard output"
        self.first = True
        self.temp: Optional[str] = None
        self.handle: Any = None
        self.parquet: Any = None

    def _failed(self, error: OSError) -> UserError:
        return UserError(f"cannot write the predictions ({error.strerror or error})", where=self.where,
                         received=str(self.target) if self.target is not None else UserError._UNSET)

    def __enter__(self) -> "_Output":
        binary = self.fmt == "parquet"
        options: Dict[str, Any] = {} if binary else {"encoding": "utf-8", "newline": ""}
        try:
            if self.target is None:
                if self.stdout is None:  # started with standard output closed (`>&-`)
                    raise UserError("standard output is closed", where="--output",
                                    expected="--output FILE, or an open standard output")
                self.handle = self.stdout
            elif self.target.exists():  # a FIFO or a device: written through
                try:  # O_NONBLOCK: a FIFO that no process reads fails at once (ENXIO) instead of waiting forever
                    fd = os.open(self.target, os.O_WRONLY | os.O_NONBLOCK | os.O_NOCTTY)
                except OSError as error:
                    if error.errno == errno.ENXIO:
                        raise UserError("a FIFO that no process is reading", where="--output",
                                        expected="a FIFO with a reader, or a new file",
                                        received=str(self.target)) from None
                    raise
                os.set_blocking(fd, True)
                self.handle = os.fdopen(fd, "wb" if binary else "w", **options)
            else:
                fd, self.temp = tempfile.mkstemp(prefix=f".{self.target.name}.", suffix=".tmp",
                                                 dir=self.target.parent)
                os.fchmod(fd, new_file_mode())
                self.handle = os.fdopen(fd, "wb" if binary else "w", **options)
            if self.fmt == "json":
                self.handle.write("[")
        except OSError as error:
            self._discard()
            raise self._failed(error) from None
        return self

    def write(self, table: Dict[str, Any]) -> None:
        import pandas as pd

        frame = pd.DataFrame(table)
        try:
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
        except BrokenPipeError:
            if self.target is None:
                raise  # stdout piped into `head` and closed early: the CLI's to handle
            raise self._failed(OSError(errno.EPIPE, "the FIFO's reader closed it")) from None
        except OSError as error:
            raise self._failed(error) from None
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
            if error is None and self.temp is not None:
                os.link(self.temp, self.target)  # never replaces: a file made there meanwhile stays
        except FileExistsError:
            self._discard()
            raise UserError("a file of this name appeared while ktk was writing; it was left as it is",
                            where="--output", expected="a new file name", received=str(self.target)) from None
        except BrokenPipeError:
            self._discard()
            if self.target is None:
                raise
            raise self._failed(OSError(errno.EPIPE, "the FIFO's reader closed it")) from None
        except OSError as os_error:
            self._discard()
            if error is None:
                raise self._failed(os_error) from None
        self._discard()

    def _discard(self) -> None:
        if self.handle is not None and self.handle is not self.stdout:
            try:
                self.handle.close()
            except OSError:
                pass
        if self.temp is not None:
            try:
                os.unlink(self.temp)
            except FileNotFoundError:
                pass
            self.temp = None


def _plain(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else None
    return value


# ------------------------------------------------------------------------------------------- --evaluate


def _evaluate(loaded: LoadedRun, read: Any, batch_size: int, chunk_rows: int, input_path: str) -> Dict[str, Any]:
    """Loss and metrics on the input's target column, computed by Keras over the whole file in one pass
    (streamed), with the run's loss and metrics: the numbers ``metrics.json`` holds for its splits."""
    import tensorflow as tf

    from toolkit.training import DEFAULT_LOSS, DEFAULT_METRICS

    labels = loaded.labels
    first = next(read(min(chunk_rows, 1)), None)
    if first is None or first.target is None:
        raise UserError(f"the input has no target column {labels.target!r} to evaluate against", where="--evaluate",
                        expected=f"a column {labels.target!r} (an array y in an npz file; images: a folder of "
                        "class folders)", received=str(input_path))
    units = loaded._units
    target_shape = _target_shape(labels, units)
    counted = {"rows": 0}

    @carried  # raised inside tf.data's generator, an error would come out as TensorFlow's: raise_carried below
    def batches() -> Iterator[Any]:
        for chunk in read(chunk_rows):
            if chunk.target is None:
                continue
            y = _encode_target(chunk.target, labels, chunk.rows, target_shape, by_index=chunk.names is None)
            counted["rows"] += len(chunk)
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
    dataset = tf.data.Dataset.from_generator(batches, output_signature=(spec_x, tf.TensorSpec((None, *target_shape),
                                                                                                 y_dtype)))
    training = loaded.config.training
    loss = training.loss or DEFAULT_LOSS[labels.task]
    metrics = list(training.metrics) if training.metrics is not None else DEFAULT_METRICS[labels.task]
    model.compile(loss=loss, metrics=metrics, jit_compile=False)
    carrying = raise_carried()
    try:
        with carrying, warnings.catch_warnings():  # a generator's end is "running out of data" to Keras: expected
            warnings.filterwarnings("ignore", message=".*ran out of data.*")
            results = model.evaluate(dataset, verbose=0, return_dict=True)
    except Exception as error:  # noqa: BLE001 - the generator's own error as it is, else Keras' in its words
        if error is carrying.raised:
            raise
        raise UserError(f"the model could not be evaluated on this input ({reason(error)})", where="--evaluate",
                        received=str(input_path)) from None
    if not counted["rows"]:
        raise UserError("no rows were left to evaluate (every row had a missing value)", where="--evaluate",
                        received=str(input_path))
    return {"rows": counted["rows"], **{name: float(value) for name, value in results.items()}}


def _target_shape(labels: Labels, units: int) -> tuple:
    """The shape of one row's target: () for a class or a single value, (k,) for k regression outputs."""
    return (units,) if labels.task == "regression" and units > 1 else ()


def _encode_target(values: np.ndarray, labels: Labels, rows: np.ndarray, shape: tuple = (),
                   by_index: bool = True) -> np.ndarray:
    """The target column as the model's loss takes it: class codes, or checked finite numbers. With `by_index`, a
    class may also be given by its index (as sklearn's loaders give labels); class folders are names only."""
    values = np.asarray(values)
    where = "--evaluate"
    name = labels.target
    if values.shape[1:] != shape and not (labels.task == "regression" and shape == () and values.shape[1:] == (1,)):
        raise UserError(f"the target {name!r} has shape {values.shape[1:]} per row", where=where,
                        expected=f"{'one value' if not shape else f'{shape[0]} values'} per row, as the model has "
                        f"{shape[0] if shape else 1} output(s)", received=f"shape {values.shape}")
    if labels.task == "regression":
        import pandas as pd

        flat = values.reshape(len(values), -1)
        numbers = np.empty(flat.shape, dtype=np.float64)
        for j in range(flat.shape[1]):
            column = pd.Series(flat[:, j])
            missing = column.isna().to_numpy()
            converted = pd.to_numeric(column, errors="coerce") if column.dtype.kind not in "biuf" else column
            if values.dtype.kind == "c":
                converted = pd.Series(np.full(len(column), np.nan))
            wrong = converted.isna().to_numpy() | ~np.isfinite(converted.to_numpy(dtype=np.float64, na_value=np.nan))
            if wrong.any():
                i = int(np.argmax(wrong))
                value = flat[i, j].item() if hasattr(flat[i, j], "item") else flat[i, j]
                problem = "a missing target value" if missing[i] else f"{show(value)} is not a finite number"
                raise UserError(f"row {rows[i]}, column {name!r}: {problem}", where=where,
                                expected="a number in every row's target (this is a regression model)")
            numbers[:, j] = converted.to_numpy(dtype=np.float64)
        return numbers.reshape(values.shape[:1] + shape)
    lookup = {name: i for i, name in enumerate(labels.class_names or [])}
    codes = np.empty(len(values), dtype=np.int64)
    for i, value in enumerate(values):
        if value is None or (isinstance(value, (float, np.floating)) and math.isnan(value)):
            raise UserError(f"row {rows[i]}, column {name!r}: a missing target value", where=where,
                            expected="a class in every row's target", choices=labels.class_names)
        key = _label_key(value)
        if by_index and key not in lookup and key.isdigit() and int(key) < len(lookup):
            key = (labels.class_names or [])[int(key)]  # a class index, as sklearn's loaders give labels
        if key not in lookup:
            raise UserError(f"row {rows[i]}, column {name!r}: {key!r} is not a class of this model",
                            where=where, expected="a class the model was trained on", received=key,
                            choices=labels.class_names)
        codes[i] = lookup[key]
    return codes if labels.task == "multiclass" else codes.astype(np.float64)


def _label_key(value: Any) -> str:
    """A label as ktk names classes: integral numbers without a decimal point, text as it is."""
    if isinstance(value, (bool, np.bool_)):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer():
        return str(int(value))
    return str(value)
