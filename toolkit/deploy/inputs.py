"""Raw rows for a saved model, read in chunks from a CSV, parquet or npz file (or a data frame / array) and
checked against the run's input schema.

Every problem is a :class:`UserError` naming the row and column: a missing feature column (with a "did you
mean"), text in a numeric column, a missing value where the run refused them, a text value never seen in
training, an empty file, an array of the wrong shape. Memory is bounded by the chunk size for CSV and
parquet files: a file of any length streams through.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from toolkit.schema import TEXT, Labels
from toolkit.errors import UserError, did_you_mean, show

FORMATS = {".csv": "csv", ".tsv": "csv", ".txt": "csv", ".parquet": "parquet", ".pq": "parquet", ".npz": "npz"}
DEFAULT_CHUNK_ROWS = 10_000


@dataclass
class Chunk:
    """Rows ready for the model: their row numbers in the input, the features (an array or a dict of
    columns, as the model takes them) and the target's raw values when the input has the target."""

    rows: np.ndarray
    features: Any
    target: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return len(self.rows)


@dataclass
class Notes:
    """What reading found that is worth one line each: ignored columns, dropped rows."""

    ignored: Sequence[str] = ()
    dropped: int = 0
    rows: int = 0


def input_format(path: Path, where: str) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in (".gz", ".bz2", ".xz", ".zst", ".zip") and len(suffixes) > 1:
        suffixes = suffixes[:-1]  # data.csv.gz: pandas decompresses
    kind = FORMATS.get(suffixes[-1] if suffixes else "")
    if kind is None:
        raise UserError("cannot tell the file's format from its name", where=where,
                        expected="a .csv, .parquet or .npz file", received=str(path), choices=sorted(FORMATS))
    return kind


def read_file(path: Path, labels: Labels, chunk_rows: int = DEFAULT_CHUNK_ROWS, where: str = "INPUT",
              notes: Optional[Notes] = None) -> Iterator[Chunk]:
    """The file's rows in chunks of at most `chunk_rows`, checked and ready for the model."""
    notes = notes if notes is not None else Notes()
    if not path.is_file():
        what = "does not exist" if not path.exists() else "is not a regular file"
        raise UserError(f"the input file {what}", where=where, expected="a CSV, parquet or npz file",
                        received=str(path))
    kind = input_format(path, where)
    if kind == "npz":
        yield from _npz_chunks(path, labels, chunk_rows, where, notes)
        return
    frames = _csv_frames(path, labels, chunk_rows, where) if kind == "csv" else _parquet_frames(path, chunk_rows, where)
    seen_any = False
    for start, frame in frames:
        if not seen_any:
            check_columns(list(frame.columns), labels, where, notes, str(path))
        seen_any = seen_any or len(frame) > 0
        chunk = frame_chunk(frame, labels, where, notes, start)
        if len(chunk):
            yield chunk
    if not seen_any:
        raise UserError(f"{path} has no data rows", where=where, expected="at least one row to predict")


def frame_chunk(frame: Any, labels: Labels, where: str, notes: Notes, start: int = 0) -> Chunk:
    """One data frame's rows, checked against the schema (columns already known to be present)."""
    schema = labels.inputs
    rows = np.arange(start, start + len(frame), dtype=np.int64)
    notes.rows += len(frame)
    names = _feature_names(list(frame.columns), labels)
    values: Dict[str, np.ndarray] = {}
    present = np.ones(len(frame), dtype=bool)
    text = {c.name: c for c in schema.columns if c.dtype == TEXT}
    for name in names:
        series = frame[name]
        missing = series.isna().to_numpy()
        if missing.any() and schema.missing != "drop":
            raise UserError(f"row {rows[np.argmax(missing)]}, column {name!r}: a missing value", where=where,
                            expected="a value in every feature column (the run was trained with data.missing: "
                            "error, so the model has no rule for missing values)")
        present &= ~missing
        if name in text:
            values[name] = _text_column(series, text[name], rows, missing, where)
        else:
            values[name] = _number_column(series, name, rows, missing, where)
    target = None
    if labels.target in frame.columns and labels.target not in names:
        target = frame[labels.target].to_numpy()
    if not present.all():
        notes.dropped += int((~present).sum())
        rows = rows[present]
        values = {k: v[present] for k, v in values.items()}
        target = target[present] if target is not None else None
    if schema.kind == "columns":
        features: Any = {c.name: values[c.name] for c in schema.columns}
    else:
        matrix = np.column_stack([values[n] for n in names]) if names else np.empty((len(rows), 0))
        features = matrix.reshape((len(rows), *schema.shape))
    return Chunk(rows, features, target)


def array_chunk(x: Any, labels: Labels, where: str, start: int = 0, y: Any = None) -> Chunk:
    """An array of raw examples (for models that take one array), checked."""
    schema = labels.inputs
    x = np.asarray(x)
    if schema.kind != "array":
        raise UserError("this model takes named columns", where=where,
                        expected=f"a data frame or dict with the columns {schema.names}",
                        received=f"an array of shape {x.shape}")
    if x.ndim == len(schema.shape):
        x = x[None, ...] if x.shape == schema.shape else x
    if tuple(x.shape[1:]) != schema.shape or x.ndim != len(schema.shape) + 1:
        raise UserError("the array has the wrong shape", where=where,
                        expected=f"shape (n, {', '.join(map(str, schema.shape))})", received=f"shape {x.shape}")
    if x.dtype.kind not in "biuf":
        raise UserError("the array does not hold numbers", where=where, expected="a numeric array",
                        received=f"dtype {x.dtype}")
    x = x.astype(np.float64, copy=False)
    bad = ~np.isfinite(x.reshape(len(x), -1))
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise UserError(f"row {start + row}, feature {col}: {x.reshape(len(x), -1)[row, col]} is not a finite "
                        "number", where=where, expected="finite numbers")
    rows = np.arange(start, start + len(x), dtype=np.int64)
    return Chunk(rows, x, None if y is None else np.asarray(y))


# ------------------------------------------------------------------------------------------- checks


def _feature_names(columns: Sequence[str], labels: Labels) -> List[str]:
    """The columns holding the model's features, in model order."""
    schema = labels.inputs
    if schema.kind == "columns" or schema.features:
        return schema.names
    return [c for c in columns if c != labels.target]  # an unnamed array: every column but the target


def check_columns(columns: List[str], labels: Labels, where: str, notes: Notes, name: str) -> None:
    import collections

    duplicated = [c for c, n in collections.Counter(columns).items() if n > 1]
    if duplicated:
        raise UserError(f"column {duplicated[0]!r} appears more than once in {name}", where=where,
                        expected="each column once")
    schema = labels.inputs
    wanted = _feature_names(columns, labels)
    if schema.kind == "array" and not schema.features:
        size = int(np.prod(schema.shape))
        if len(wanted) != size:
            raise UserError(f"{name} has {len(wanted)} feature columns besides the target {labels.target!r}",
                            where=where, expected=f"{size} feature columns (the model's inputs have shape "
                            f"{tuple(schema.shape)})", received=len(wanted))
        return
    absent = [c for c in wanted if c not in columns]
    if absent:
        others = [c for c in columns if c not in wanted]
        guessed = [c for c in absent if did_you_mean(c, others)]  # a renamed column: say which it may be
        raise UserError(f"{len(absent)} feature column(s) missing from {name}: {show(absent)}", where=where,
                        expected=f"the model's feature columns {show(wanted)}", received=(guessed or absent)[0],
                        choices=others or None)
    ignored = [c for c in columns if c not in wanted and c != labels.target]
    notes.ignored = ignored


def _number_column(series: Any, name: str, rows: np.ndarray, missing: np.ndarray, where: str) -> np.ndarray:
    import pandas as pd

    if series.dtype.kind in "biuf":
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        numbers = pd.to_numeric(series, errors="coerce")
        wrong = numbers.isna().to_numpy() & ~missing
        if wrong.any():
            i = int(np.argmax(wrong))
            raise UserError(f"row {rows[i]}, column {name!r}: {show(series.iloc[i])} is not a number", where=where,
                            expected=f"numbers in column {name!r} (the model was trained on numbers there)")
        values = numbers.to_numpy(dtype=np.float64, na_value=np.nan)
    infinite = np.isinf(values)
    if infinite.any():
        i = int(np.argmax(infinite))
        raise UserError(f"row {rows[i]}, column {name!r}: {values[i]} is not a finite number", where=where,
                        expected="finite numbers")
    return values


def _text_column(series: Any, column: Any, rows: np.ndarray, missing: np.ndarray, where: str) -> np.ndarray:
    values = series.astype(str).to_numpy(dtype=object)
    known = set(column.categories or ())
    unseen = ~series.astype(str).isin(known).to_numpy() & ~missing
    if unseen.any():
        i = int(np.argmax(unseen))
        raise UserError(f"row {rows[i]}, column {column.name!r}: {values[i]!r} never appeared in the training "
                        "data, so the model has not learnt it", where=where,
                        expected=f"one of the {len(known)} values seen in training", received=values[i],
                        choices=list(column.categories or ()))
    return values


# ------------------------------------------------------------------------------------------ readers


def _csv_frames(path: Path, labels: Labels, chunk_rows: int, where: str) -> Iterator[Tuple[int, Any]]:
    import pandas as pd

    text = [c.name for c in labels.inputs.columns if c.dtype == TEXT]
    sep = "\t" if path.suffixes and path.suffixes[0].lower() == ".tsv" else ","
    try:
        reader = pd.read_csv(path, chunksize=chunk_rows, dtype={c: str for c in text}, sep=sep,
                             keep_default_na=True)
        start = 0
        with reader:
            for frame in reader:
                yield start, frame
                start += len(frame)
    except pd.errors.EmptyDataError:
        raise UserError(f"{path} is empty", where=where, expected="a CSV header and at least one row") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as error:
        raise UserError(f"{path} cannot be read as CSV ({str(error).strip().splitlines()[0]})", where=where,
                        expected="a CSV file with a header row") from None


def _parquet_frames(path: Path, chunk_rows: int, where: str) -> Iterator[Tuple[int, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        handle = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as error:
        raise UserError(f"{path} cannot be read as parquet ({error})", where=where,
                        expected="a parquet file") from None
    start = 0
    if handle.metadata.num_rows == 0:
        yield 0, handle.schema_arrow.empty_table().to_pandas()
        return
    for batch in handle.iter_batches(batch_size=chunk_rows):
        frame = batch.to_pandas()
        yield start, frame
        start += len(frame)


def _npz_chunks(path: Path, labels: Labels, chunk_rows: int, where: str, notes: Notes) -> Iterator[Chunk]:
    if labels.inputs.kind != "array":
        raise UserError("this model takes named columns, which an npz file does not have", where=where,
                        expected="a CSV or parquet file with the columns " + show(labels.inputs.names),
                        received=str(path))
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "x" not in archive.files:
                raise UserError(f"{path} has no array named 'x'", where=where, expected="arrays x (and optionally y)",
                                received=archive.files)
            x = archive["x"]
            y = archive["y"] if "y" in archive.files else None
    except (OSError, ValueError, EOFError) as error:
        raise UserError(f"{path} cannot be read as npz ({error})", where=where,
                        expected="an npz file made with numpy.savez") from None
    if x.ndim == 0 or len(x) == 0:
        raise UserError(f"{path} has no examples", where=where, expected="at least one row to predict",
                        received=f"x of shape {x.shape}")
    if y is not None and len(y) != len(x):
        raise UserError(f"{path}: y has {len(y)} rows and x {len(x)}", where=where, expected="as many y as x rows")
    notes.rows = len(x)
    for start in range(0, len(x), chunk_rows):
        yield array_chunk(x[start:start + chunk_rows], labels, where, start,
                          None if y is None else y[start:start + chunk_rows])


def frame_from(data: Any, labels: Labels, where: str = "data") -> Tuple[Optional[Any], Optional[np.ndarray]]:
    """A user's in-memory data as (data frame, None) or (None, array)."""
    import pandas as pd

    if isinstance(data, pd.DataFrame):
        return data, None
    if isinstance(data, dict):
        columns = {}
        for key, value in data.items():
            value = np.asarray(value)
            if value.ndim > 2 or (value.ndim == 2 and value.shape[1] != 1):
                raise UserError(f"column {key!r} has shape {value.shape}", where=where,
                                expected="one value per row: shape (n,) or (n, 1)")
            columns[key] = value.reshape(-1)
        return pd.DataFrame(columns), None
    return None, np.asarray(data)

