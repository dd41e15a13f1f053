"""Streamed tables: ``csv`` and ``parquet`` sources read in batches through ``tf.data``, never whole.

``data.path`` is a file, a glob (``shards/part-*.parquet``) or a folder (its ``.csv``/``.csv.gz``... or
``.parquet`` files), read in name order. A table is streamed with ``stream: true``, or automatically
(``stream`` left out) when the path names several files or its files total more than
:data:`STREAM_THRESHOLD_BYTES`; ``stream: false`` loads one file into memory as before.

- **Memory** is bounded by the read chunk (:data:`CHUNK_ROWS` rows), ``data.shuffle_buffer`` examples (default
  10,000) and the batch, not by the files.
- **The split** is a stable hash, not a shuffle: row ``i`` (counted from 0 over the files in name order, header
  lines not counted) goes to train when ``u < train``, validation when ``u < train + validation``, else test,
  where ``u = splitmix64(i + seed * 2^32) / 2^64``. With ``split.key: <column>``, ``i`` is replaced by pandas'
  stable hash of that column's value (``pandas.util.hash_pandas_object``), so a row keeps its split when rows are
  added, removed or reordered. Split sizes follow the fractions on average, not exactly.
- **One pass** over the rows before training computes, on the training rows only, each numeric feature's
  statistics (float64 sums: mean and standard deviation, or min and max) and each text column's categories, and
  counts every split and each file's rows; the target's classes are those of every row (see **Classes**).
- **Training order**: each epoch reads the shards in an order drawn from (seed, epoch), four at a time, a chunk
  of each in turn (``tf.data`` interleave), and passes the rows through the shuffle buffer: rows of different
  shards mix even when the buffer is smaller than a shard. Validation and test rows are read in file order.
- **Classes** are those of every row (train, validation and test), as for an in-memory table (whose labels are
  encoded before the split): the model has an output for a class seen only in validation or test rows (never
  trained toward, so it is scored as a mistake there, honestly), and such rows need no refusal in the middle of
  training. ``class_weight: balanced`` weighs a class without training rows 0.
- Every chunk is checked as an in-memory table is: columns of every shard the same as the first's (refused
  otherwise, naming the shard), numbers in numeric columns, missing values refused (``missing: error``) or
  dropped (``missing: drop``).

The saved model takes raw columns, as an in-memory table's does (``toolkit.deploy.serving``).
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np

from toolkit.errors import UserError, carried
from toolkit.results import SPLITS
from toolkit.schema import NUMBER, TEXT, Column, InputSchema
from toolkit.sources.pipelines import Pipelines, epoch_shuffled

STREAM_THRESHOLD_BYTES = 1 * 2**30  # stream (automatically) the files of a table larger than this
CHUNK_ROWS = 8192
INTERLEAVE_SHARDS = 4  # shards read at once by a shuffled training epoch (a chunk of each in turn)
MAX_CATEGORIES = 1000
MAX_CLASSES = 50
_SUFFIXES = {"csv": (".csv", ".csv.gz", ".csv.bz2", ".csv.xz", ".csv.zip", ".tsv", ".txt"),
             "parquet": (".parquet", ".pq")}
_MASK64 = np.uint64(2**64 - 1)


MAX_SHARDS = 100_000  # files a glob or folder may name (each is opened in the pass before training)


def is_glob(path: str) -> bool:
    return any(c in path for c in "*?[")


def _is_pattern(given: str, base_dir: Path) -> bool:
    """A glob, unless a file or folder has this very name (``data[1].csv``): then it is that path."""
    if not is_glob(given):
        return False
    try:
        return not _located(given, base_dir).exists()
    except (OSError, ValueError, UserError):
        return True


def _too_many(given: str) -> UserError:
    return UserError(f"the path names more than {MAX_SHARDS:,} files", where="data.path",
                     expected=f"at most {MAX_SHARDS:,} shards (larger files, or a narrower glob)", received=given)


def wants_stream(data: Any, base_dir: Path) -> bool:
    """Whether a csv/parquet source is streamed: ``stream`` when given, else several files or a large one."""
    if data.stream is not None:
        return bool(data.stream)
    if not data.path:
        return False
    if _is_pattern(data.path, base_dir):
        return True
    try:
        path = _located(data.path, base_dir)
        return path.is_dir() or path.stat().st_size > STREAM_THRESHOLD_BYTES
    except (OSError, ValueError):
        return False  # the in-memory loader says what is wrong with it


def _located(given: str, base_dir: Path) -> Path:
    from toolkit.provenance import resolve_data_path

    return resolve_data_path(given, base_dir)


def shard_files(kind: str, given: str, base_dir: Path) -> List[Path]:
    """The files a path names: a glob's matches, a folder's files of this kind, or the file; in name order.

    Raises:
        UserError: an empty glob or folder, a missing path.
    """
    if _is_pattern(given, base_dir):
        def matches(pattern: str) -> List[Path]:
            found = []
            for match in glob.iglob(pattern, recursive=True):
                if os.path.isfile(match):
                    found.append(Path(match))
                    if len(found) > MAX_SHARDS:
                        raise _too_many(given)
            return sorted(found)

        files = matches(given if Path(given).is_absolute() else str(base_dir / given))
        if not files and not Path(given).is_absolute():
            files = matches(given)
        if not files:
            raise UserError("no file matches the glob", where="data.path", expected=f"a pattern matching {kind} "
                            "files (relative to the config's folder)", received=given)
        return files
    path = _located(given, base_dir)
    try:
        is_dir, exists = path.is_dir(), path.exists()
    except (OSError, ValueError) as error:
        raise UserError(f"cannot use this path ({getattr(error, 'strerror', None) or error})", where="data.path",
                        received=given) from None
    if is_dir:
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")
                       and p.name.lower().endswith(_SUFFIXES[kind]))
        if len(files) > MAX_SHARDS:
            raise _too_many(given)
        if not files:
            raise UserError(f"the folder holds no {kind} files", where="data.path",
                            expected=f"a folder of {kind} shards ({', '.join(_SUFFIXES[kind])})", received=given)
        return files
    if not exists:
        raise UserError("file not found", where="data.path", received=given)
    return [path]


def _columns_of(kind: str, path: Path) -> List[str]:
    try:
        if kind == "parquet":
            import pyarrow.parquet as pq

            return [str(c) for c in pq.ParquetFile(path).schema_arrow.names]
        import pandas as pd

        return [str(c) for c in pd.read_csv(path, nrows=0).columns]
    except Exception as error:  # noqa: BLE001 - an unreadable shard: one message naming it
        raise UserError(f"could not read the {kind} file ({type(error).__name__}: {error})", where="data.path",
                        received=str(path)) from None


def _chunks(kind: str, path: Path, columns: List[str]) -> Iterator[Any]:
    """The file's rows in frames of at most CHUNK_ROWS (only `columns`)."""
    import pandas as pd

    try:
        if kind == "parquet":
            import pyarrow.parquet as pq

            for batch in pq.ParquetFile(path).iter_batches(batch_size=CHUNK_ROWS, columns=columns):
                yield batch.to_pandas()
        else:
            with pd.read_csv(path, usecols=columns, chunksize=CHUNK_ROWS, low_memory=False) as reader:
                for frame in reader:
                    yield frame[columns]
    except UserError:
        raise
    except Exception as error:  # noqa: BLE001
        raise UserError(f"could not read the {kind} file ({type(error).__name__}: {error})", where="data.path",
                        received=str(path)) from None


def split_of(index: np.ndarray, seed: int, fractions: Tuple[float, float, float]) -> np.ndarray:
    """0 (train), 1 (validation) or 2 (test) for each uint64 row index or key hash (see the module doc)."""
    with np.errstate(over="ignore"):
        z = index.astype(np.uint64) + np.uint64(seed) * np.uint64(2**32) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    u = (z >> np.uint64(11)).astype(np.float64) / float(2**53)
    return np.where(u < fractions[0], 0, np.where(u < fractions[0] + fractions[1], 1, 2)).astype(np.int8)


@dataclass
class StreamedTable(Pipelines):
    """A csv/parquet table read in batches: its files, columns and the statistics of one pass."""

    source: str = "csv"
    files: List[str] = field(default_factory=list)
    feature_columns: List[str] = field(default_factory=list)
    columns: Tuple[Column, ...] = ()
    target: str = "y"
    key: Optional[str] = None
    seed: int = 0
    fractions: Tuple[float, float, float] = (0.7, 0.15, 0.15)
    missing: str = "error"
    buffer: int = 10_000
    center: Any = None
    scale: Any = None
    class_lookup: Optional[Dict[str, int]] = None
    method: str = "standard"
    stats: Dict[str, Any] = field(default_factory=dict)
    offsets: List[int] = field(default_factory=list)  # each file's first row number (counted over the files)
    stamps: List[Tuple[int, int]] = field(default_factory=list)  # each file's (size, mtime_ns) at the one pass

    kind = "streamed"

    def __post_init__(self) -> None:
        self.target_name = self.target
        self.inputs = InputSchema("columns", columns=self.columns, missing=self.missing)
        width = sum(len(c.categories or ()) if c.dtype == TEXT else 1 for c in self.columns)
        self.input_shape = (width,)
        self.feature_names = [c.name for c in self.columns]
        self.normalization = ({"method": "none"} if self.method == "none" else
                              {"method": self.method, "center": self.center, "scale": self.scale})

    # ---- reading

    def _batches(self, split: int) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
        """(features, target) of the rows of `split` (0, 1, 2; -1: every row), chunk by chunk, file by file."""
        for index in range(len(self.files)):
            yield from self._file_batches(index, split)

    @carried
    def _file_batches(self, index: int, split: int) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
        """The same, of the file at `index` only (its rows numbered from its offset: the split is the same).

        Raises:
            UserError: the file changed (or went) since the one pass, whose counts and statistics it would
                contradict; raised out of tf.data by :func:`toolkit.errors.raise_carried`.
        """
        file = self.files[index]
        if self.stamps and _stamp(file) != self.stamps[index]:
            raise UserError(f"{file} changed after the pass before training (its counts and statistics would no "
                            "longer hold)", where="data.path", expected="the files left as they were until the run "
                            "ends", received="a missing file" if _stamp(file) is None else "another size or time")
        used = [*self.feature_columns, self.target] + ([self.key] if self.key and self.key not in
                                                         (*self.feature_columns, self.target) else [])
        start = self.offsets[index] if self.offsets else 0
        for frame in _chunks(self.source, Path(file), used):
            count = len(frame)
            keep = self._split_mask(frame, start, split, file)
            start += count
            frame = _present(frame[keep], [*self.feature_columns, self.target], self.missing, file)
            if not len(frame):
                continue
            yield self._encode(frame, file), self._labels(frame[self.target], file)

    def _split_mask(self, frame: Any, start: int, split: int, file: str = "") -> np.ndarray:
        if split < 0:
            return np.ones(len(frame), dtype=bool)
        return self._splits(frame, start, file) == split

    def _splits(self, frame: Any, start: int, file: str = "") -> np.ndarray:
        if self.key is not None:
            import pandas as pd

            missing = frame[self.key].isna().to_numpy()
            if missing.any():  # every such row would hash alike ("nan"), all into one split
                raise UserError(f"a row of {file} (row {start + int(np.argmax(missing))}, counted from 0 over the "
                                f"files) has no value in the split key column {self.key!r}", where="data.split.key", received=None,
                                expected="a value in every row (the key decides each row's split)")
            index = pd.util.hash_pandas_object(frame[self.key].astype(str), index=False).to_numpy(np.uint64)
        else:
            index = np.arange(start, start + len(frame), dtype=np.uint64)
        return split_of(index, self.seed, self.fractions)

    def _encode(self, frame: Any, file: str) -> np.ndarray:
        blocks = []
        for column in self.columns:
            values = frame[column.name]
            if column.dtype == TEXT:
                lookup = {c: i for i, c in enumerate(column.categories or ())}
                codes = values.astype(str).map(lookup).to_numpy(dtype=np.float64, na_value=-1)
                block = np.zeros((len(values), len(lookup)))
                rows = np.flatnonzero(codes >= 0)
                block[rows, codes[rows].astype(np.int64)] = 1.0
                blocks.append(block)
            else:
                blocks.append(_numbers(values, column.name, file)[:, None])
        x = np.concatenate(blocks, axis=1)
        if self.method != "none":
            x = (x - self.center) / self.scale
        return x.astype(np.float32)

    def _labels(self, values: Any, file: str) -> np.ndarray:
        if self.class_lookup is None:
            return _numbers(values, self.target, file).astype(np.float32)
        keys = values.map(_label_key)
        codes = keys.map(self.class_lookup)
        if codes.isna().any():
            raise UserError(f"a label of {file} is not one of the classes of the first pass", where="data.target",
                            received=keys[codes.isna()].iloc[0])
        codes = codes.to_numpy(np.int64)
        return codes.astype(np.int32) if self.task == "multiclass" else codes.astype(np.float32)

    def _signature(self) -> Any:
        import tensorflow as tf

        y_spec = tf.TensorSpec((None,), tf.int32 if self.task == "multiclass" else tf.float32)
        return (tf.TensorSpec((None, self.input_shape[0]), tf.float32), y_spec)

    def _dataset(self, split: int) -> Any:
        import tensorflow as tf

        return tf.data.Dataset.from_generator(lambda: self._batches(split), output_signature=self._signature())

    def train(self, batch: int, seed: int, epoch: Any, shuffle: bool = True) -> Any:
        import tensorflow as tf

        if not shuffle:
            return self._rows(0).batch(batch).prefetch(tf.data.AUTOTUNE)
        count = len(self.files)

        def one_epoch(epoch_seed: Any) -> Any:
            # The shards in an order of (seed, epoch), read INTERLEAVE_SHARDS at a time, a chunk of each in turn,
            # then the rows through the shuffle buffer: the order is not only the buffer's
            order = tf.data.Dataset.range(count).shuffle(count, seed=epoch_seed)
            chunks = order.interleave(
                lambda i: tf.data.Dataset.from_generator(lambda index: self._file_batches(int(index), 0), args=(i,),
                                                         output_signature=self._signature()),
                cycle_length=min(count, INTERLEAVE_SHARDS), block_length=1)
            return chunks.unbatch().shuffle(self.buffer, seed=epoch_seed)

        rows = epoch_shuffled(one_epoch, seed, epoch).apply(self._counted(0))
        return rows.batch(batch).prefetch(tf.data.AUTOTUNE)

    def _counted(self, split: int) -> Any:
        """The split's row count of the one pass, told to tf.data: Keras then knows an epoch's steps (its
        progress bar has an end, and it does not warn that the input "ran out of data" at every epoch's end)."""
        import tensorflow as tf

        return tf.data.experimental.assert_cardinality(int(self.counts[SPLITS[split]] or 0))

    def _rows(self, split: int) -> Any:
        return self._dataset(split).unbatch().apply(self._counted(split))

    def split(self, name: str, batch: int) -> Any:
        import tensorflow as tf

        return self._rows(SPLITS.index(name)).batch(batch).prefetch(tf.data.AUTOTUNE)


def _stamp(file: Any) -> Optional[Tuple[int, int]]:
    """A file's (size, modification time in ns), or None when it is gone."""
    try:
        status = os.stat(file)
    except OSError:
        return None
    return (status.st_size, status.st_mtime_ns)


def _label_key(value: Any) -> str:
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    return str(value)


def _numbers(values: Any, name: str, file: str) -> np.ndarray:
    import pandas as pd

    numbers = pd.to_numeric(values, errors="coerce")
    bad = numbers.isna() & values.notna()
    if bad.any():
        raise UserError(f"non-numeric value in numeric column {name!r} of {file}", where="data.path",
                        expected="a number", received=values[bad].iloc[0])
    array = numbers.to_numpy(dtype=np.float64)
    if not np.isfinite(array).all():
        raise UserError(f"column {name!r} of {file} has infinite values", where="data.path",
                        expected="finite numbers")
    return array


def _present(frame: Any, used: List[str], missing: str, file: str) -> Any:
    absent = frame[used].isna().any(axis=1)
    if not absent.any():
        return frame
    if missing == "drop":
        return frame[~absent]
    column = next(c for c in used if frame[c].isna().any())
    raise UserError(f"missing values in column {column!r} of {file}", where="data.path",
                    expected="no missing values, or data.missing: drop to drop those rows")


def load_streamed(config: Any) -> StreamedTable:
    """The one pass over a streamed table: files and columns checked, splits counted, statistics of the training
    rows (numeric features), categories of text features (training rows) and the target's classes.

    Raises:
        UserError: an empty glob, shards with different columns, a missing target or feature column, keys
            a streamed table does not read, values that are not numbers, missing values (missing: error).
    """
    import pandas as pd

    data = config.data
    kind = data.source
    for key, value in (("data.test_path", data.test_path), ("data.split.column", data.split.column)):
        if value is not None:
            raise UserError("a streamed table splits its rows by hash", where=key, expected="no test_path or "
                            "split.column with stream (split.key names a column whose hash splits the rows)",
                            received=value)
    files = shard_files(kind, data.path, config.base_dir)
    header = _columns_of(kind, files[0])
    for file in files[1:]:
        columns = _columns_of(kind, file)
        if columns != header:
            extra = [c for c in columns if c not in header]
            lacking = [c for c in header if c not in columns]
            detail = (f"it lacks {lacking}" if lacking else "") + ("; " if lacking and extra else "") + \
                (f"it has {extra} besides" if extra else "") or "the same columns in another order"
            raise UserError(f"the shard {file} has other columns than {files[0]} ({detail})", where="data.path",
                            expected="the same columns, in the same order, in every shard", received=columns)
    if data.target is None:
        raise UserError("required key is missing", where="data.target", expected="the name of the target column",
                        choices=header)
    for name, where in ((data.target, "data.target"), (data.split.key, "data.split.key")):
        if name is not None and name not in header:
            raise UserError(f"column not found in {files[0]}", where=where, received=name, choices=header)
    features = list(data.features) if data.features else [c for c in header if c not in (data.target,)]
    for i, name in enumerate(features):
        if name not in header or name == data.target:
            raise UserError("not a feature column", where=f"data.features.{i}", received=name,
                            choices=[c for c in header if c != data.target])
    table = StreamedTable(source=kind, files=[str(f) for f in files], feature_columns=features, target=data.target,
                          key=data.split.key, seed=config.seed, missing=data.missing, buffer=data.shuffle_buffer,
                          fractions=(data.split.train, data.split.validation, data.split.test),
                          method=data.normalize, columns=tuple(Column(c) for c in features))
    # the pass
    text: Dict[str, Dict[str, int]] = {}
    kinds: Dict[str, str] = {}
    n = 0
    total = np.zeros(len(features))
    squares = np.zeros(len(features))
    low = np.full(len(features), np.inf)
    high = np.full(len(features), -np.inf)
    counts = [0, 0, 0]
    targets: Dict[str, int] = {}
    train_targets: Dict[str, int] = {}
    target_text = False
    integral = True
    start = 0
    used = [*features, data.target] + ([data.split.key] if data.split.key and data.split.key not in
                                         (*features, data.target) else [])
    offsets: List[int] = []
    stamps = []
    for file in files:
        offsets.append(start)
        stamps.append(_stamp(file))
        for frame in _chunks(kind, file, used):
            splits = table._splits(frame, start, str(file))
            start += len(frame)
            present = ~frame[[*features, data.target]].isna().any(axis=1).to_numpy()
            if not present.all():
                _present(frame, [*features, data.target], data.missing, str(file))  # refuses with missing: error
                frame, splits = frame[present], splits[present]
            for name in features:
                if name not in kinds:
                    kinds[name] = "numeric" if pd.api.types.is_numeric_dtype(frame[name]) or pd.api.types.\
                        is_bool_dtype(frame[name]) else "text"
            train = frame[splits == 0]
            counts = [c + int((splits == s).sum()) for s, c in enumerate(counts)]
            if len(train):
                numeric = [i for i, c in enumerate(features) if kinds[c] == "numeric"]
                block = np.stack([_numbers(train[features[i]], features[i], str(file)) for i in numeric], axis=1) \
                    if numeric else np.zeros((len(train), 0))
                total[numeric] += block.sum(axis=0)
                squares[numeric] += np.square(block).sum(axis=0)
                low[numeric] = np.minimum(low[numeric], block.min(axis=0)) if len(block) else low[numeric]
                high[numeric] = np.maximum(high[numeric], block.max(axis=0)) if len(block) else high[numeric]
                n += len(train)
                for name in features:
                    if kinds[name] == "text":
                        seen = text.setdefault(name, {})
                        for value, count in train[name].astype(str).value_counts().items():
                            seen[value] = seen.get(value, 0) + int(count)
                        if len(seen) > MAX_CATEGORIES:
                            raise UserError(f"text column {name!r} has more than {MAX_CATEGORIES:,} distinct values: "
                                            "an ID or free text, not a category", where="data.features",
                                            received=name)
            y = frame[data.target]
            if not (pd.api.types.is_numeric_dtype(y) or pd.api.types.is_bool_dtype(y)):
                target_text = True
            elif integral and len(y) and not np.all(np.mod(y.to_numpy(np.float64), 1) == 0):
                integral = False
            if len(targets) <= MAX_CLASSES:
                keys = y.map(_label_key)
                for value, count in keys.value_counts().items():
                    targets[value] = targets.get(value, 0) + int(count)
                for value, count in keys[splits == 0].value_counts().items():
                    train_targets[value] = train_targets.get(value, 0) + int(count)
    if n == 0:
        raise UserError(f"no training rows in {data.path} ({sum(counts):,} rows in all)", where="data.split",
                        expected="a train fraction that leaves rows to train on")
    for name, count in zip(SPLITS, counts):
        if count == 0:
            raise UserError(f"the {name} split is empty ({sum(counts):,} rows in all)", where="data.split",
                            expected="fractions that leave rows in each split")
    task = config.task
    if task == "auto":
        task = ("binary" if len(targets) <= 2 else "multiclass") if (target_text or integral) and \
            len(targets) <= MAX_CLASSES else "regression"
    if task != "regression":
        if len(targets) > MAX_CLASSES and not target_text and not integral:
            raise UserError(where="task", expected="a target of class labels", received=task)
        def order(name: str) -> Any:
            try:
                return (0, float(name), name)
            except ValueError:
                return (1, 0.0, name)

        names = sorted(targets, key=order)
        if task == "binary" and len(names) > 2:
            raise UserError(where="task", expected="at most 2 classes for a binary task",
                            received=f"{len(names)} classes")
        table.task, table.class_names, table.num_classes = task, names, len(names)
        table.class_lookup = {name: i for i, name in enumerate(names)}
    else:
        if target_text:
            raise UserError(f"a regression target must be numbers; {data.target!r} holds text", where="task",
                            received=task)
        table.task = "regression"
    # the statistics of the prepared features: numeric columns, then one-hot blocks (from category counts)
    columns: List[Column] = []
    centers: List[float] = []
    scales: List[float] = []
    for i, name in enumerate(features):
        if kinds.get(name, "numeric") == "numeric":
            columns.append(Column(name, NUMBER))
            mean = total[i] / n
            centers.append(mean if data.normalize == "standard" else low[i])
            scales.append(np.sqrt(max(squares[i] / n - mean ** 2, 0.0)) if data.normalize == "standard"
                          else high[i] - low[i])
        else:
            categories = tuple(sorted(text.get(name, {})))
            columns.append(Column(name, TEXT, categories))
            for category in categories:
                p = text[name][category] / n
                centers.append(p if data.normalize == "standard" else (0.0 if p < 1 else 1.0))
                scales.append(np.sqrt(p * (1 - p)) if data.normalize == "standard" else (1.0 if p < 1 else 0.0))
    table.columns = tuple(columns)
    center = np.asarray(centers, dtype=np.float64)
    scale = np.asarray(scales, dtype=np.float64)
    table.center, table.scale = center, np.where(scale > 0, scale, 1.0)
    table.counts = dict(zip(SPLITS, counts))
    table.offsets = offsets
    table.stamps = stamps
    if table.class_names is not None:
        table.class_counts = [train_targets.get(name, 0) for name in table.class_names]
    table.__post_init__()
    return table
