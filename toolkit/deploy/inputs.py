"""Raw rows for a saved model, read in chunks from a CSV, parquet or npz file (or a data frame / array) and
checked against the run's input schema.

Every problem is a :class:`UserError` naming the row and column: a missing feature column (with a "did you
mean"), text in a numeric column, a missing value where the run refused them, a text value never seen in
training, an empty file, an array of the wrong shape. Memory is bounded by the chunk size for CSV and
parquet files: a file of any length streams through.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from toolkit.schema import TEXT, Labels
from toolkit.errors import UserError, did_you_mean, first_line, show
from toolkit.results import check_path_given

FORMATS = {".csv": "csv", ".tsv": "csv", ".txt": "csv", ".parquet": "parquet", ".pq": "parquet", ".npz": "npz"}
DEFAULT_CHUNK_ROWS = 10_000
FLOAT32_MAX = float(np.finfo(np.float32).max)  # the model computes in float32: a larger number overflows


@dataclass
class Chunk:
    """Rows ready for the model: their row numbers in the input, the features (an array or a dict of
    columns, as the model takes them) and the target's raw values when the input has the target."""

    rows: np.ndarray
    features: Any
    target: Optional[np.ndarray] = None
    names: Optional[List[str]] = None  # images: the file of each row

    def __len__(self) -> int:
        return len(self.rows)


@dataclass
class Notes:
    """What reading found that is worth one line each: ignored columns, dropped rows."""

    ignored: Sequence[str] = ()
    dropped: int = 0
    rows: int = 0


COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".zip")  # pandas decompresses a CSV by its suffix


def _suffix(path: Path) -> Tuple[str, bool]:
    """The format suffix of a file name (``data.v2.csv.gz``: ``.csv``) and whether it is compressed."""
    suffixes = [s.lower() for s in path.suffixes]
    compressed = bool(suffixes) and suffixes[-1] in COMPRESSED and len(suffixes) > 1
    if compressed:
        suffixes = suffixes[:-1]
    return (suffixes[-1] if suffixes else ""), compressed


def input_format(path: Path, where: str) -> str:
    suffix, compressed = _suffix(path)
    kind = FORMATS.get(suffix)
    if kind is None:
        raise UserError("cannot tell the file's format from its name", where=where,
                        expected="a .csv, .parquet or .npz file", received=str(path), choices=sorted(FORMATS))
    if compressed and kind != "csv":
        raise UserError(f"a compressed {kind} file", where=where, expected=f"the {kind} file itself (only CSV "
                        f"files may be compressed: {', '.join(COMPRESSED)})", received=str(path))
    return kind


def check_input_file(path: Path, where: str) -> str:
    """The format of an input file that exists and is a regular file (not a folder, FIFO or device).

    Raises:
        UserError: naming `where`, the path and what it is.
    """
    check_path_given(path, where, "a CSV, parquet or npz file", problem="an empty path")
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise UserError("the input file does not exist", where=where, expected="a CSV, parquet or npz file",
                        received=str(path)) from None
    except (OSError, ValueError) as error:
        raise UserError(f"cannot read the input file ({getattr(error, 'strerror', None) or error})", where=where,
                        expected="a CSV, parquet or npz file", received=str(path)) from None
    if not stat.S_ISREG(info.st_mode):
        what = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file (a FIFO, device or socket)"
        raise UserError(f"the input is {what}", where=where, expected="a CSV, parquet or npz file",
                        received=str(path))
    return input_format(path, where)


def read_file(path: Path, labels: Labels, chunk_rows: int = DEFAULT_CHUNK_ROWS, where: str = "INPUT",
              notes: Optional[Notes] = None) -> Iterator[Chunk]:
    """The file's rows in chunks of at most `chunk_rows`, checked and ready for the model."""
    notes = notes if notes is not None else Notes()
    kind = check_input_file(path, where)
    if kind == "npz":
        yield from _npz_chunks(path, labels, chunk_rows, where, notes)
        return
    frames = _csv_frames(path, labels, chunk_rows, where) if kind == "csv" else _parquet_frames(path, chunk_rows, where)
    seen_any = False
    for start, frame, header in frames:
        if start == 0:
            check_columns(header, labels, where, notes, str(path))
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
    names = _feature_names([str(c) for c in frame.columns], labels)
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
    flat = x.reshape(len(x), int(np.prod(schema.shape)))
    bad = ~np.isfinite(flat) | (np.abs(flat) > FLOAT32_MAX)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise UserError(f"row {start + row}, feature {col}: {flat[row, col]} is not a finite number within float32, "
                        "the type the model computes in", where=where, expected=f"finite numbers of magnitude at "
                        f"most {FLOAT32_MAX:.4g}")
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
    """Refuses repeated column names and missing feature columns; notes the columns the model does not use."""
    import collections

    columns = [str(c) for c in columns]
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

    kind = getattr(series.dtype, "kind", "O")
    if kind in "cmM" or isinstance(series.dtype, pd.DatetimeTZDtype):
        what = "complex numbers" if kind == "c" else "dates or times"
        raise UserError(f"column {name!r} holds {what}", where=where, expected=f"real numbers in column {name!r} "
                        "(the model was trained on numbers there)", received=str(series.dtype))
    if kind in "biuf":
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        numbers = pd.to_numeric(series, errors="coerce")
        wrong = numbers.isna().to_numpy() & ~missing
        if wrong.any():
            i = int(np.argmax(wrong))
            raise UserError(f"row {rows[i]}, column {name!r}: {show(series.iloc[i])} is not a number", where=where,
                            expected=f"numbers in column {name!r} (the model was trained on numbers there)")
        values = numbers.to_numpy(dtype=np.float64, na_value=np.nan)
    infinite = np.isinf(values) | (np.abs(np.nan_to_num(values)) > FLOAT32_MAX)
    if infinite.any():
        i = int(np.argmax(infinite))
        shown = series.iloc[i] if isinstance(series.iloc[i], str) else float(values[i])
        raise UserError(f"row {rows[i]}, column {name!r}: {show(shown)} is not a finite number within float32, "
                        "the type the model computes in", where=where,
                        expected=f"finite numbers of magnitude at most {FLOAT32_MAX:.4g}")
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


def _csv_frames(path: Path, labels: Labels, chunk_rows: int, where: str) -> Iterator[Tuple[int, Any, List[str]]]:
    """(first row number, frame, the header as written) per chunk of a CSV file."""
    import pandas as pd

    text = [c.name for c in labels.inputs.columns if c.dtype == TEXT]
    sep = "\t" if _suffix(path)[0] == ".tsv" else ","

    def unreadable(error: BaseException) -> UserError:
        return UserError(f"{path} cannot be read as CSV ({first_line(error)})", where=where,
                         expected="a UTF-8 CSV file with a header row" + (", compressed as its name says"
                                                                          if _suffix(path)[1] else ""))

    try:
        # pandas renames a repeated name (x, x.1): the header as written is read first, untouched
        header = pd.read_csv(path, header=None, nrows=1, dtype=str, keep_default_na=False, sep=sep)
        names = [str(v) for v in header.iloc[0]] if len(header) else []
        if any(not n.strip() for n in names):
            position = next(i for i, n in enumerate(names, start=1) if not n.strip())
            raise UserError(f"column {position} of {path} has no name in its header", where=where,
                            expected="a name for every column" + (" (pandas' to_csv saves the index as an unnamed "
                                                                   "first column: save with index=False)"
                                                                   if position == 1 else ""), received=names)
        reader = pd.read_csv(path, chunksize=chunk_rows, dtype={c: str for c in text}, sep=sep,
                             keep_default_na=True)
    except pd.errors.EmptyDataError:
        raise UserError(f"{path} is empty", where=where, expected="a CSV header and at least one row") from None
    except UserError:
        raise
    except Exception as error:  # noqa: BLE001 - any parser or decompressor failure is the file's: one message
        raise unreadable(error) from None
    start = 0
    with reader:
        while True:
            try:
                frame = next(reader)
            except StopIteration:
                break
            except Exception as error:  # noqa: BLE001 - as above, at any row of the file
                raise unreadable(error) from None
            # pandas takes each row's first field as the index when rows have one field more than the header
            if not frame.index.equals(pd.RangeIndex(start, start + len(frame))):
                raise UserError(f"the header of {path} names {len(frame.columns)} columns, but its data rows have "
                                f"more fields (a comma at the end of each row?)", where=where,
                                expected="a header naming every field of a row", received=str(path))
            yield start, frame, names or [str(c) for c in frame.columns]
            start += len(frame)


def _parquet_frames(path: Path, chunk_rows: int, where: str) -> Iterator[Tuple[int, Any, List[str]]]:
    import pyarrow.parquet as pq

    def unreadable(error: BaseException) -> UserError:
        return UserError(f"{path} cannot be read as parquet ({first_line(error)})", where=where,
                         expected="a parquet file")

    try:
        handle = pq.ParquetFile(path)
        names = list(handle.schema_arrow.names)
        empty = handle.metadata.num_rows == 0
        batches = iter(() if empty else handle.iter_batches(batch_size=chunk_rows))
        if empty:
            yield 0, handle.schema_arrow.empty_table().to_pandas(), names
            return
    except Exception as error:  # noqa: BLE001 - any reader failure is the file's: one message
        raise unreadable(error) from None
    start = 0
    while True:
        try:
            frame = next(batches).to_pandas()
        except StopIteration:
            break
        except Exception as error:  # noqa: BLE001 - a damaged row group, at any point of the file
            raise unreadable(error) from None
        yield start, frame, names
        start += len(frame)


def _npz_chunks(path: Path, labels: Labels, chunk_rows: int, where: str, notes: Notes) -> Iterator[Chunk]:
    if labels.inputs.kind != "array":
        raise UserError("this model takes named columns, which an npz file does not have", where=where,
                        expected="a CSV or parquet file with the columns " + show(labels.inputs.names),
                        received=str(path))
    from toolkit.data import MAX_DATA_BYTES

    try:
        loaded = np.load(path, allow_pickle=False)  # unpickling would run code from the file
        if not hasattr(loaded, "files"):
            raise UserError(f"{path} is a .npy file, which holds a single array", where=where,
                            expected="an npz archive with arrays x (and optionally y), as np.savez writes")
        with loaded as archive:
            if "x" not in archive.files:
                raise UserError(f"{path} has no array named 'x'", where=where, expected="arrays x (and optionally y)",
                                received=archive.files)
            arrays = {}
            for key in ("x", "y"):
                if key not in archive.files:
                    continue
                member = f"{key}.npy" if f"{key}.npy" in archive.zip.namelist() else key
                size = archive.zip.getinfo(member).file_size  # what the zip reader will give at most
                if size > MAX_DATA_BYTES:
                    raise UserError(f"array {key!r} of {path} is {size:,} bytes uncompressed, more than ktk loads "
                                    f"into memory ({MAX_DATA_BYTES // 2**30} GiB)", where=where)
                arrays[key] = archive[key]
            x, y = arrays["x"], arrays.get("y")
    except UserError:
        raise
    except Exception as error:  # noqa: BLE001 - a damaged archive or member: one message, whatever numpy says
        problem = ("it holds Python objects, which ktk does not unpickle (unpickling runs code)"
                   if "allow_pickle" in str(error) or "pickled" in str(error) else first_line(error))
        raise UserError(f"{path} cannot be read as npz ({problem})", where=where,
                        expected="an npz file of numeric arrays made with numpy.savez") from None
    if x.ndim == 0 or len(x) == 0:
        raise UserError(f"{path} has no examples", where=where, expected="at least one row to predict",
                        received=f"x of shape {x.shape}")
    if x.ndim != len(labels.inputs.shape) + 1:  # (n, *shape): one row's features alone are the API's shortcut only
        raise UserError(f"array 'x' of {path} has shape {x.shape}", where=where,
                        expected=f"shape (n, {', '.join(map(str, labels.inputs.shape))}): one row per example")
    if y is not None and (y.ndim == 0 or y.ndim > 2):
        raise UserError(f"array 'y' of {path} has shape {y.shape}", where=where,
                        expected="one label (or one row of targets) per example: shape (n,) or (n, k)")
    if y is not None and len(y) != len(x):
        raise UserError(f"{path}: y has {len(y)} rows and x {len(x)}", where=where, expected="as many y as x rows")
    notes.rows = len(x)
    for start in range(0, len(x), chunk_rows):
        yield array_chunk(x[start:start + chunk_rows], labels, where, start,
                          None if y is None else y[start:start + chunk_rows])


def frame_from(data: Any, labels: Labels, where: str = "data") -> Tuple[Optional[Any], Optional[np.ndarray]]:
    """A user's in-memory data as (data frame, None) or (None, array).

    Raises:
        UserError: data of another kind (a Series, text, None), columns of different lengths, or rows of
            different lengths.
    """
    import pandas as pd

    expected = (f"a data frame, a dict of columns or a list of row dicts with the columns {show(labels.inputs.names)}"
                if labels.inputs.kind == "columns" else
                f"an array (or nested lists) of shape (n, {', '.join(map(str, labels.inputs.shape))})")
    if isinstance(data, pd.DataFrame):
        return data, None
    if isinstance(data, list) and data and all(isinstance(row, dict) for row in data):
        return pd.DataFrame.from_records(data), None
    if isinstance(data, dict):
        columns = {}
        for key, value in data.items():
            try:
                value = np.asarray(value)
            except ValueError:
                raise UserError(f"column {key!r} is not a flat list of values", where=where,
                                expected="one value per row: shape (n,) or (n, 1)") from None
            if value.ndim > 2 or (value.ndim == 2 and value.shape[1] != 1):
                raise UserError(f"column {key!r} has shape {value.shape}", where=where,
                                expected="one value per row: shape (n,) or (n, 1)")
            columns[key] = value.reshape(-1)
        lengths = {key: len(v) for key, v in columns.items()}
        if len(set(lengths.values())) > 1:
            raise UserError("the columns have different lengths", where=where,
                            expected="the same number of values in every column", received=lengths)
        return pd.DataFrame(columns), None
    if isinstance(data, (pd.Series, str, bytes)) or data is None:
        what = "a pandas Series (one column, or one row)" if isinstance(data, pd.Series) else type(data).__name__
        raise UserError(f"cannot predict from {what}", where=where, expected=expected,
                        hint=None)
    try:
        return None, np.asarray(data)
    except ValueError:
        raise UserError("the rows have different lengths", where=where, expected=expected) from None


# ------------------------------------------------------------------------------------------- images


def is_image_input(paths: Sequence[Path]) -> bool:
    """Whether INPUT names images: a folder, several files, or a file with an image suffix."""
    from toolkit.sources.images import IMAGE_EXTENSIONS

    return len(paths) > 1 or paths[0].is_dir() or paths[0].suffix.lower() in IMAGE_EXTENSIONS


def image_files(paths: Sequence[Path], where: str) -> Tuple[List[Path], Optional[List[str]]]:
    """The image files `paths` name (a folder gives its images, sorted; a folder of class folders gives theirs,
    with the class of each), and the class names when every file comes from a class folder (for --evaluate)."""
    from toolkit.sources.images import IMAGE_EXTENSIONS, scan

    files: List[Path] = []
    classes: List[str] = []
    labelled = True
    for path in paths:
        check_path_given(path, where, "an image file or a folder of images", problem="an empty path")
        if path.is_dir():
            entries = sorted(path.iterdir())
            if any(e.is_dir() and not e.name.startswith(".") for e in entries):
                loose = [e.name for e in entries if e.is_file() and not e.name.startswith(".")
                         and e.suffix.lower() in IMAGE_EXTENSIONS]
                if loose:  # a folder of class folders reads only theirs: these would be left out unsaid
                    shown = ", ".join(loose[:3]) + (", ..." if len(loose) > 3 else "")
                    raise UserError(f"{path} holds class folders and {len(loose):,} image file(s) beside them "
                                    f"({shown})", where=where, received=str(path),
                                    expected="either class folders of images (for --evaluate) or image files, "
                                    "not both (give the loose images as another INPUT, or move them)")
                folder = scan(path, str(path), where, min_classes=1)
                files += [path / f for f in folder.files]
                classes += [folder.class_names[i] for i in folder.labels]
                continue
            found = [e for e in entries if e.is_file() and not e.name.startswith(".")
                     and e.suffix.lower() in IMAGE_EXTENSIONS]
            if not found:
                raise UserError(f"the folder {path} holds no images", where=where,
                                expected=f"image files ({', '.join(IMAGE_EXTENSIONS)}) or class folders of them",
                                received=str(path))
            files += found
            labelled = False
        elif path.is_file():
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                raise UserError("not an image file", where=where, expected=f"image files "
                                f"({', '.join(IMAGE_EXTENSIONS)}) or folders of them", received=str(path))
            files.append(path)
            labelled = False
        else:
            raise UserError("no such file or folder", where=where, expected="image files or folders of them",
                            received=str(path))
    return files, (classes if labelled else None)


def image_chunks(paths: Sequence[Path], labels: Labels, chunk_rows: int = DEFAULT_CHUNK_ROWS,
                 where: str = "INPUT") -> Iterator[Chunk]:
    """Images decoded as the run's images were (its size and channels, by labels.json's input shape), in chunks.

    Raises:
        UserError: a run whose model does not take images, or an image that cannot be read (named).
    """
    from toolkit.sources.images import CHANNELS, image_problem, load_image

    shape = tuple(labels.inputs.shape)
    modes = {channels: mode for mode, channels in CHANNELS.items()}
    if labels.inputs.kind != "array" or len(shape) != 3 or shape[-1] not in modes:
        raise UserError("this run's model does not take images", where=where,
                        expected=f"{'a CSV, parquet or npz file' if labels.inputs.kind == 'columns' else 'an npz file'}"
                        " of the model's inputs", received=", ".join(map(str, paths)))
    files, classes = image_files(paths, where)
    for start in range(0, len(files), chunk_rows):
        part = files[start:start + chunk_rows]
        pixels = np.empty((len(part), *shape), dtype=np.float64)
        for i, file in enumerate(part):
            try:
                pixels[i] = load_image(str(file), shape, modes[shape[-1]])
            except Exception as error:  # noqa: BLE001 - the user asked for this file: said, not skipped
                raise UserError(f"cannot read the image ({image_problem(error)})", where=where,
                                expected="a readable image", received=str(file)) from None
        target = None if classes is None else np.asarray(classes[start:start + len(part)], dtype=object)
        yield Chunk(np.arange(start, start + len(part), dtype=np.int64), pixels, target, [str(f) for f in part])
