"""Data sources, the three-way split, and normalization fitted on the training split only.

Sources (``data.source``):

- ``sklearn.<name>``: scikit-learn's bundled data sets (digits, iris, wine, breast_cancer, diabetes,
  linnerud). The first five are read straight from the files scikit-learn ships, so that `ktk validate`
  does not pay for importing scikit-learn (over a second here).
- ``synthetic.<name>``: scikit-learn's generators (moons, circles, blobs, classification, regression,
  gaussian_quantiles, friedman1) with ``options`` passed to them.
- ``csv`` / ``parquet``: a file with ``path`` and ``target``; text columns become one-hot features.
- ``npz``: a NumPy archive with arrays ``x`` and ``y``.
- ``keras.<name>``: the Keras data sets (mnist, fashion_mnist, cifar10, cifar100, boston_housing),
  which download when online.

Nothing is trusted before it is checked, because bad data otherwise trains and reports success: only
regular files are read (a FIFO or a device would block or never end), at most :data:`MAX_DATA_BYTES`
each; features must be real numbers, finite and within float32 (what Keras trains in); labels must be
present and finite; x and y have one row per example each. A mistake is one :class:`UserError` naming
the file, the column or array, and the rows.
"""

from __future__ import annotations

import gzip
import importlib.util
import inspect
import io
import os
import re
import stat
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from toolkit.errors import DataWarning, InvalidValue, UserError, first_line
from toolkit.schema import NUMBER, TEXT, Column, InputSchema
from toolkit.results import SPLITS

MAX_CLASSES_FOR_INFERENCE = 50
# ktk holds a data set in memory: a file (or an npz array, uncompressed) larger than this is refused.
MAX_DATA_BYTES = 4 * 2**30
# A generator's options may ask for at most this many values (samples times features): 0.8 GB as float64.
MAX_GENERATED_VALUES = 10**8
# A text feature with more distinct values than this (or one value per row) is an ID or free text, not a
# category: one-hot encoding it would add that many features.
MAX_CATEGORIES = 1000
FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass
class Dataset:
    """The three splits, as arrays ready for Keras, and what is known about them."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    task: str  # binary | multiclass | regression
    num_classes: Optional[int] = None
    class_names: Optional[List[str]] = None
    feature_names: Optional[List[str]] = None
    normalization: Dict[str, Any] = field(default_factory=dict)  # method and the training statistics (float64)
    inputs: Optional[InputSchema] = None  # the raw inputs, as the saved model takes them (labels.json)
    target_name: str = "y"
    rows: Dict[str, np.ndarray] = field(default_factory=dict)  # split -> row numbers in its source (file)
    split_files: Dict[str, List[str]] = field(default_factory=dict)  # images: split -> files (relative to data.path)

    @property
    def input_shape(self) -> Tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def output_units(self) -> int:
        if self.task == "multiclass":
            return int(self.num_classes)
        if self.task == "binary":
            return 1
        return 1 if self.y_train.ndim == 1 else int(self.y_train.shape[1])

    def split(self, name: str) -> Tuple[np.ndarray, np.ndarray]:
        """The (x, y) arrays of the split called `name` (train, validation or test)."""
        return {
            "train": (self.x_train, self.y_train),
            "validation": (self.x_val, self.y_val),
            "test": (self.x_test, self.y_test),
        }[name]

    def sizes(self) -> Dict[str, int]:
        return {name: int(len(self.split(name)[1])) for name in SPLITS}

    def describe(self) -> str:
        sizes = self.sizes()
        shape = "x".join(str(d) for d in self.input_shape)
        kind = f"{self.task}" + (f", {self.num_classes} classes" if self.num_classes else "")
        return (
            f"{sizes['train']} train / {sizes['validation']} validation / {sizes['test']} test examples, "
            f"{shape} inputs, {kind}, normalize={self.normalization.get('method', 'none')}"
        )


def in_memory(data: Any) -> bool:
    """Whether prepared data holds its splits as arrays in memory (a :class:`Dataset`), rather than being
    pipelines read in batches (streamed tables, image files, a user's own: :mod:`toolkit.sources`)."""
    return hasattr(data, "x_train")


@dataclass
class _Raw:
    """What a source gives before splitting: features, target, and optional predefined splits."""

    x: np.ndarray
    y: np.ndarray
    feature_names: Optional[List[str]] = None
    class_names: Optional[List[str]] = None
    task_hint: Optional[str] = None
    split_of_row: Optional[np.ndarray] = None  # "train"/"validation"/"test" per row, when predefined
    test: Optional[Tuple[np.ndarray, np.ndarray]] = None  # a separate test set
    target_name: str = "y"  # how messages name the target: a column or an array
    columns: Optional[Tuple[Column, ...]] = None  # table sources: the raw columns behind the columns of x
    source_rows: Optional[np.ndarray] = None  # the file's row number of each row of x (rows may be dropped)
    test_rows: Optional[np.ndarray] = None  # the same for the test file's rows
    files: Optional[List[str]] = None  # images: the file of each source row (relative to data.path)
    image_pass: Optional[Tuple[Any, Any, Any]] = None  # images with cache none: (folder, shape, per-image sums)


def load_data(config: Any) -> Dataset:
    """Loads, checks, splits and normalizes the data a config describes.

    Args:
        config: a :class:`toolkit.config.Config`.

    Returns:
        A :class:`Dataset` whose inputs are float32 and normalized with training-split statistics.

    Raises:
        UserError: unknown source or option, missing or unreadable file, missing column, non-numeric,
            missing or non-finite values, x and y of different lengths, an empty split.
    """
    data = config.data
    if data.source in ("csv", "parquet"):
        from toolkit.sources.streaming import load_streamed, wants_stream

        if wants_stream(data, config.base_dir):  # files read in batches: toolkit.sources.streaming
            return load_streamed(config)  # type: ignore[return-value]
    raw = _load_source(data, config.seed, config.base_dir)
    task = _infer_task(raw, config.task)
    y_all = raw.y
    class_names = raw.class_names
    if task in ("binary", "multiclass"):
        y_all, class_names = _encode_labels(_one_label_per_example(raw.y, raw.target_name), class_names)
        if raw.test is not None:
            test_y = _one_label_per_example(raw.test[1], raw.target_name)
            raw.test = (raw.test[0], _encode_like(test_y, class_names, where="data.test_path"))
        if len(class_names) < 2 and config.task == "auto":
            raise UserError(f"the target {raw.target_name!r} has a single value, {class_names[0]!r}", where="data.target"
                            if data.target else "data", expected="at least two classes to learn from")
    elif y_all.dtype.kind not in "biuf":
        raise UserError(f"a regression target must be numbers; {raw.target_name!r} holds text "
                        f"(first value {_first(y_all)!r})", where="task",
                        expected="binary or multiclass for text labels", received=config.task)
    num_classes = len(class_names) if class_names is not None else None
    if task == "binary" and num_classes is not None and num_classes > 2:
        raise UserError(
            where="task", expected="at most 2 classes for a binary task",
            received=f"{num_classes} classes", choices=["multiclass", "regression"],
        )
    if config.task in ("binary", "multiclass"):
        _warn_if_regression_like(raw, config.task, num_classes)
    parts, rows = _split(raw, y_all, data.split, task, config.seed, class_names)
    feature_names = raw.feature_names
    if raw.columns is not None:  # text categories: those of the training split only, as the saved model knows
        columns, keep = _training_vocabulary(raw.columns, parts[0][0])
        parts = [(x[:, keep], part_y) for x, part_y in parts]
        feature_names = [name for name, kept in zip(feature_names or [], keep) if kept] or None
    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = parts
    if raw.files is not None:  # images: pixels as they are; the model normalizes them (per channel)
        if task == "regression":
            raise UserError(where="task", expected="binary or multiclass for an images source (its classes are "
                            "folders)", received=task)
        if raw.image_pass is not None:  # cache: none: file lists, decoded each epoch
            return _image_files(raw, parts, rows, task, class_names, data)
        x_tr, x_va, x_te = (np.asarray(a, dtype=np.float32) for a in (x_tr, x_va, x_te))
        stats = image_statistics(data.normalize, x_tr)
    else:
        x_tr, x_va, x_te, stats = _normalize(data.normalize, x_tr, x_va, x_te)
    y_type = np.int32 if task == "multiclass" else np.float32
    if raw.columns is not None:
        inputs = InputSchema("columns", columns=columns, missing=data.missing)
    else:
        inputs = InputSchema("array", shape=tuple(int(d) for d in x_tr.shape[1:]),
                             features=list(raw.feature_names) if raw.feature_names else None, missing=data.missing)
    return Dataset(
        x_train=x_tr, y_train=y_tr.astype(y_type), x_val=x_va, y_val=y_va.astype(y_type),
        x_test=x_te, y_test=y_te.astype(y_type), task=task, num_classes=num_classes,
        class_names=class_names, feature_names=feature_names, normalization=stats, inputs=inputs,
        target_name=raw.target_name, rows=rows,
        split_files={name: [raw.files[i] for i in rows[name]] for name in SPLITS} if raw.files is not None else {},
    )


def _image_files(raw: _Raw, parts: List[Tuple[np.ndarray, np.ndarray]], rows: Dict[str, np.ndarray], task: str,
                 class_names: Optional[List[str]], data: Any) -> Any:
    """The split of an images folder as :class:`toolkit.sources.images.ImageFiles` (``cache: none``): the x of
    each part holds file indexes; the statistics come from the decoding pass's per-image sums."""
    from toolkit.sources.images import ImageFiles, pass_statistics

    folder, shape, per_image = raw.image_pass  # type: ignore[misc]
    y_type = np.int32 if task == "multiclass" else np.float32
    return ImageFiles(
        str(folder.root), {name: [raw.files[i] for i in rows[name]] for name in SPLITS},  # type: ignore[index]
        {name: part_y.astype(y_type) for name, (_, part_y) in zip(SPLITS, parts)}, shape, data.color_mode, task,
        list(class_names or folder.class_names), pass_statistics(data.normalize, per_image, rows["train"], shape),
        InputSchema("array", shape=tuple(int(d) for d in shape), features=None, missing=data.missing))


def _training_vocabulary(columns: Tuple[Column, ...], x_train: np.ndarray) -> Tuple[Tuple[Column, ...], np.ndarray]:
    """The columns with each text column's categories cut to those the training split holds, and which columns of
    the one-hot encoded `x` stay. A category seen only in validation or test rows encodes as none of the known
    categories (all zeros), as an unseen value does in the saved model: no split's values shape the inputs."""
    keep: List[bool] = []
    kept: List[Column] = []
    start = 0
    for column in columns:
        if column.dtype != TEXT:
            keep.append(True)
            kept.append(column)
            start += 1
            continue
        width = len(column.categories or ())
        present = (x_train[:, start:start + width] != 0).any(axis=0)
        keep.extend(bool(p) for p in present)
        kept.append(Column(column.name, TEXT, tuple(c for c, p in zip(column.categories or (), present) if p)))
        start += width
    return tuple(kept), np.asarray(keep, dtype=bool)


# ------------------------------------------------------------------------------------------ sources


# The keys of the data section that only some sources read: what each is, and the sources that read it.
# Every source reads source, split (fractions, stratify) and normalize.
_SOURCE_KEYS = {
    "path": ("the data file or folder", ("csv", "parquet", "npz", "images")),
    "target": ("the target column", ("csv", "parquet")),
    "features": ("the feature columns", ("csv", "parquet")),
    "test_path": ("a separate test file", ("csv", "parquet", "npz")),
    "options": ("arguments of the data set or generator", ("sklearn", "synthetic", "keras")),
    "missing": ("what to do with missing values in a table", ("csv", "parquet")),
    "split.column": ("a column naming each row's split", ("csv", "parquet")),
    "image_size": ("the size images are resized to", ("images",)),
    "color_mode": ("the images' channels", ("images",)),
    "cache": ("where decoded images are kept", ("images",)),
    "augment": ("random augmentation layers", ("images",)),
    "stream": ("whether a table is streamed", ("csv", "parquet")),
    "shuffle_buffer": ("the shuffle buffer of a streamed table", ("csv", "parquet")),
    "split.key": ("the column whose hash splits a streamed table", ("csv", "parquet")),
}
_FILE_KINDS = ("csv", "parquet", "npz", "images")


def check_source_keys(data: Any) -> None:
    """Refuses data keys that the source does not read (they would do nothing), and a split column that is
    the target. Called by the config schema, so `ktk validate` says it before any file is read.

    Raises:
        InvalidValue: located below ``data``.
    """
    family, _, name = data.source.partition(".")
    kind = data.source if data.source in _FILE_KINDS else family if name else None
    if kind not in (*_FILE_KINDS, "sklearn", "synthetic", "keras"):
        return  # an unknown source: load_data lists the known ones
    given = {"path": data.path, "target": data.target, "features": data.features, "test_path": data.test_path,
             "options": data.options or None, "missing": None if data.missing == "error" else data.missing,
             "split.column": data.split.column, "image_size": data.image_size,
             "color_mode": None if data.color_mode == "rgb" else data.color_mode,
             "cache": None if data.cache == "auto" else data.cache, "augment": data.augment or None,
             "stream": data.stream, "shuffle_buffer": None if data.shuffle_buffer == 10_000 else data.shuffle_buffer,
             "split.key": data.split.key}
    unread = [key for key, value in given.items() if value is not None and kind not in _SOURCE_KEYS[key][1]]
    if unread:
        key = unread[0]
        what, kinds = _SOURCE_KEYS[key]
        readers = ", ".join(k + ("." if k in ("sklearn", "synthetic", "keras") else "") for k in kinds)
        readers = " and ".join(readers.rsplit(", ", 1))
        applying = ["source", *(k for k, (_, ks) in _SOURCE_KEYS.items() if kind in ks and not k.startswith("split.")),
                    "split", *(k for k, (_, ks) in _SOURCE_KEYS.items() if kind in ks and k.startswith("split.")),
                    "normalize"]
        nor = f", nor {', '.join(unread[1:])}" if len(unread) > 1 else ""
        raise InvalidValue(f"source {data.source!r} does not read {key} ({what}, read by the {readers} sources){nor}",
                           where=key, expected=f"only the keys that apply to {data.source}", received=given[key],
                           choices=applying)
    if data.split.column is not None and data.split.column == data.target:
        raise InvalidValue(f"column {data.target!r} is the target (data.target), so it cannot be the split column",
                           where="split.column", expected="a column naming each row's split (train, validation "
                           "or test), other than the target and the features", received=data.split.column)


def _load_source(data: Any, seed: int, base_dir: Path) -> _Raw:
    family, _, name = data.source.partition(".")
    loaders: Dict[str, Callable[..., _Raw]] = {
        "sklearn": _load_sklearn, "synthetic": _load_synthetic, "keras": _load_keras,
    }
    files: Dict[str, Callable[..., _Raw]] = {"csv": _load_table, "parquet": _load_table, "npz": _load_npz,
                                             "images": _load_images}
    if family in loaders and name:
        return loaders[family](name, dict(data.options), seed)
    if data.source in files:
        return files[data.source](data, base_dir)
    if data.source == "python":
        raise UserError("the data of source 'python' is given from Python: toolkit.run(config, data={'train': ..., "
                        "'validation': ...})", where="data.source", expected="a source ktk loads, for ktk run, "
                        "validate and tune", received="python")
    choices = ([f"sklearn.{n}" for n in SKLEARN_DATASETS] + [f"synthetic.{n}" for n in SYNTHETIC]
               + [f"keras.{n}" for n in KERAS_DATASETS] + list(files))
    raise UserError(where="data.source", expected="a known data source", received=data.source, choices=choices)


def _sklearn_file(name: str) -> Path:
    # find_spec on the top-level package does not import scikit-learn (which costs over a second).
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(where="data.source", expected="scikit-learn to be installed", received="sklearn missing")
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / name


def _read_sklearn_csv(filename: str) -> Tuple[np.ndarray, np.ndarray, List[str]]:
    """scikit-learn's bundled CSV layout: a header `n_samples,n_features,class names...`, then rows."""
    with open(_sklearn_file(filename), encoding="utf-8") as handle:
        header = handle.readline().strip().split(",")
        table = np.loadtxt(handle, delimiter=",", dtype=np.float64, ndmin=2)
    n_features = int(header[1])
    return table[:, :n_features], table[:, n_features].astype(np.int64), header[2:]


def _digits(options: Dict[str, Any]) -> _Raw:
    n_class = options.get("n_class", 10)
    if isinstance(n_class, bool) or not isinstance(n_class, int) or not 2 <= n_class <= 10:
        raise UserError(where="data.options.n_class", expected="an integer from 2 to 10 (the digits kept)",
                        received=n_class)
    with gzip.open(_sklearn_file("digits.csv.gz"), "rt") as handle:
        table = np.loadtxt(handle, delimiter=",", dtype=np.float64)
    x, y = table[:, :-1], table[:, -1].astype(np.int64)
    keep = y < n_class
    names = [f"pixel_{r}_{c}" for r in range(8) for c in range(8)]
    return _Raw(x[keep], y[keep], names, [str(i) for i in range(n_class)], "multiclass")


def _bundled_csv(filename: str, feature_names: List[str], task: str) -> Callable[[Dict[str, Any]], _Raw]:
    def load(options: Dict[str, Any]) -> _Raw:
        x, y, classes = _read_sklearn_csv(filename)
        return _Raw(x, y, feature_names, classes, task)

    return load


def _diabetes(options: Dict[str, Any]) -> _Raw:
    x = np.loadtxt(_sklearn_file("diabetes_data_raw.csv.gz"), dtype=np.float64)
    y = np.loadtxt(_sklearn_file("diabetes_target.csv.gz"), dtype=np.float64)
    return _Raw(x, y, ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"], None, "regression")


def _via_sklearn(loader_name: str, task: str) -> Callable[[Dict[str, Any]], _Raw]:
    def load(options: Dict[str, Any]) -> _Raw:
        import sklearn.datasets

        bunch = getattr(sklearn.datasets, loader_name)()
        names = list(getattr(bunch, "target_names", [])) or None
        return _Raw(np.asarray(bunch.data, dtype=np.float64), np.asarray(bunch.target),
                    list(bunch.feature_names), [str(n) for n in names] if names and task != "regression" else None,
                    task)

    return load


_IRIS = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]
_WINE = ["alcohol", "malic_acid", "ash", "alcalinity_of_ash", "magnesium", "total_phenols", "flavanoids",
         "nonflavanoid_phenols", "proanthocyanins", "color_intensity", "hue",
         "od280/od315_of_diluted_wines", "proline"]
_CANCER_BASE = ["radius", "texture", "perimeter", "area", "smoothness", "compactness", "concavity",
                "concave points", "symmetry", "fractal dimension"]
_CANCER = ([f"mean {n}" for n in _CANCER_BASE] + [f"{n} error" for n in _CANCER_BASE]
           + [f"worst {n}" for n in _CANCER_BASE])

SKLEARN_DATASETS: Dict[str, Callable[[Dict[str, Any]], _Raw]] = {
    "digits": _digits,
    "iris": _bundled_csv("iris.csv", _IRIS, "multiclass"),
    "wine": _bundled_csv("wine_data.csv", _WINE, "multiclass"),
    "breast_cancer": _bundled_csv("breast_cancer.csv", _CANCER, "binary"),
    "diabetes": _diabetes,
    "linnerud": _via_sklearn("load_linnerud", "regression"),
}
_SKLEARN_OPTIONS = {"digits": ["n_class"]}  # the bundled sets take no other option


def _load_sklearn(name: str, options: Dict[str, Any], seed: int) -> _Raw:
    if name not in SKLEARN_DATASETS:
        raise UserError(where="data.source", expected="a bundled scikit-learn data set",
                        received=f"sklearn.{name}", choices=[f"sklearn.{n}" for n in SKLEARN_DATASETS])
    allowed = _SKLEARN_OPTIONS.get(name, [])
    for key in options:
        if key not in allowed:
            raise UserError(where=f"data.options.{key}", expected=f"an option of sklearn.{name}", received=key,
                            choices=allowed)
    return SKLEARN_DATASETS[name](options)


SYNTHETIC = {
    "moons": ("make_moons", "binary"),
    "circles": ("make_circles", "binary"),
    "blobs": ("make_blobs", "multiclass"),
    "classification": ("make_classification", None),
    "gaussian_quantiles": ("make_gaussian_quantiles", None),
    "regression": ("make_regression", "regression"),
    "friedman1": ("make_friedman1", "regression"),
}
# Arguments that change what a generator returns (not what it generates): not options.
_NOT_OPTIONS = ("return_X_y", "as_frame", "return_centers", "coef")


def _load_synthetic(name: str, options: Dict[str, Any], seed: int) -> _Raw:
    if name not in SYNTHETIC:
        raise UserError(where="data.source", expected="a synthetic generator", received=f"synthetic.{name}",
                        choices=[f"synthetic.{n}" for n in SYNTHETIC])
    import sklearn.datasets

    function_name, task = SYNTHETIC[name]
    function = getattr(sklearn.datasets, function_name)
    options = _generator_options(function, options)
    options.setdefault("random_state", seed)
    x, y = _call_generator(function, options)[:2]
    x = _check_array(np.asarray(x), f"the data {function_name} generated", "data.options", row_base=0)
    y = _check_labels(np.asarray(y), f"the target {function_name} generated", "data.options")
    return _Raw(x, y, [f"x{i}" for i in range(x.shape[1])], None, task)


def _generator_options(function: Callable[..., Any], options: Dict[str, Any]) -> Dict[str, Any]:
    """The options checked by the generator's signature, with sizes bounded before anything is allocated.

    Type and range checks of each value are scikit-learn's own (see :func:`_call_generator`); this adds
    what it does not check: names (with "did you mean"), true/false given for a number, and sizes that
    would not fit in memory.
    """
    params = inspect.signature(function).parameters
    choices = [p for p in params if p not in _NOT_OPTIONS]
    checked: Dict[str, Any] = {}
    for key, value in options.items():
        if key not in choices:
            raise UserError(where=f"data.options.{key}", expected=f"an option of {function.__name__}",
                            received=key, choices=choices)
        if isinstance(value, bool) and not isinstance(params[key].default, bool):
            raise UserError(where=f"data.options.{key}", expected="a number, not true/false", received=value)
        checked[key] = tuple(value) if isinstance(value, list) else value  # YAML has lists, sklearn wants tuples
    _check_sizes(function.__name__, checked, params)
    return checked


def _check_sizes(function_name: str, options: Dict[str, Any], params: Any) -> None:
    """Refuses options that would make the generator allocate more than MAX_GENERATED_VALUES values."""

    def size(key: str) -> int:
        return _count(options[key] if key in options else params[key].default if key in params else 0)

    for key in options:
        if size(key) > MAX_GENERATED_VALUES:
            raise UserError(where=f"data.options.{key}", expected=f"at most {MAX_GENERATED_VALUES:,}",
                            received=options[key])
    n_features = size("n_features") or size("mean") or 2  # moons and circles: 2; gaussian_quantiles: len(mean)
    totals = {  # what the generator allocates, by the option that drives it
        "n_samples": size("n_samples") * (n_features + max(size("n_targets"), 1)),
        "centers": size("centers") * n_features,
        "n_classes": size("n_classes") * max(size("n_clusters_per_class"), 1) * max(size("n_informative"), 1),
    }
    for key, total in totals.items():
        if total > MAX_GENERATED_VALUES:
            culprit = key if key in options or key != "n_samples" or "n_features" not in options else "n_features"
            raise UserError(f"{function_name} would generate {total:,} values, more than ktk holds in memory "
                            f"({MAX_GENERATED_VALUES:,})", where=f"data.options.{culprit}",
                            expected="fewer samples or features", received=options.get(culprit, size(culprit)))


def _count(value: Any) -> int:
    """A size option as a count: an int, or the sum of a tuple of ints (per-class sample counts); else 0
    (scikit-learn then says what is wrong with it)."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, (int, np.integer)):
        return max(int(value), 0)
    if isinstance(value, tuple) and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value):
        return sum(max(int(v), 0) for v in value)
    return len(value) if isinstance(value, tuple) else 0


def _call_generator(function: Callable[..., Any], options: Dict[str, Any]) -> Any:
    try:
        return function(**options)
    except MemoryError:
        raise UserError(f"{function.__name__} ran out of memory", where="data.options",
                        expected="fewer samples or features", received=options) from None
    except (TypeError, ValueError, OverflowError) as error:
        # scikit-learn's own check: "The 'noise' parameter of make_moons must be a float in the range
        # [0.0, inf) or None. Got 'x' instead."
        match = re.match(r"The '(\w+)' parameter of \w+ must be (.*?)\. Got .* instead\.", str(error), re.S)
        if match and match.group(1) in options:
            raise UserError(where=f"data.options.{match.group(1)}", expected=match.group(2),
                            received=options[match.group(1)]) from None
        shown = {k: v for k, v in options.items() if k != "random_state"} or options
        raise UserError(f"{function.__name__} rejected the options ({first_line(error)})", where="data.options",
                        received=shown) from None


KERAS_DATASETS = ("mnist", "fashion_mnist", "cifar10", "cifar100", "boston_housing")


def _load_keras(name: str, options: Dict[str, Any], seed: int) -> _Raw:
    if name not in KERAS_DATASETS:
        raise UserError(where="data.source", expected="a Keras data set", received=f"keras.{name}",
                        choices=[f"keras.{n}" for n in KERAS_DATASETS])
    import keras

    module = getattr(keras.datasets, name)
    choices = list(inspect.signature(module.load_data).parameters)
    for key in options:
        if key not in choices:
            raise UserError(where=f"data.options.{key}", expected=f"an option of keras.datasets.{name}.load_data",
                            received=key, choices=choices)
    try:
        (x_train, y_train), (x_test, y_test) = module.load_data(**options)
    except (TypeError, ValueError) as error:
        raise UserError(f"keras.datasets.{name}.load_data rejected the options ({first_line(error)})",
                        where="data.options", received=options) from None
    except Exception as error:  # any failure to fetch is reported as one message
        raise UserError(
            f"could not load keras.{name} ({type(error).__name__}: {error}); it is downloaded on first use, "
            "so this needs network access once",
            where="data.source",
        ) from None
    task = "regression" if name == "boston_housing" else "multiclass"
    x_train, x_test = _images(x_train), _images(x_test)
    y_train, y_test = np.asarray(y_train).reshape(len(y_train), -1), np.asarray(y_test).reshape(len(y_test), -1)
    if y_train.shape[1] == 1:
        y_train, y_test = y_train[:, 0], y_test[:, 0]
    classes = None if task == "regression" else [str(c) for c in np.unique(y_train)]
    return _Raw(x_train, y_train, None, classes, task, test=(x_test, y_test))


def _images(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x[..., None] if x.ndim == 3 else x  # grayscale images get a channel axis for Conv2D


# ------------------------------------------------------------------------------------- file sources


def _resolve(path: Optional[str], base_dir: Path, where: str) -> Path:
    if not path:
        raise UserError("required key is missing", where=where, expected="the path of the data file")
    try:
        resolved = Path(path) if Path(path).is_absolute() else base_dir / path
        if resolved.exists():
            return resolved
        if Path(path).exists():  # relative to the current folder, when not to the config's
            return Path(path)
        os.stat(resolved)  # says why: too long a name, a loop of links...
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as error:
        raise UserError(f"cannot use this path ({getattr(error, 'strerror', None) or error})", where=where,
                        received=str(path)) from None
    raise UserError("file not found", where=where, received=str(path))


def _open_data_file(path: Path, where: str) -> BinaryIO:
    """The file opened for reading, if it is a regular file of at most MAX_DATA_BYTES.

    Opened without blocking and checked on the open descriptor: a FIFO would wait for a writer forever,
    and a device such as /dev/zero never ends.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as error:
        raise UserError(f"cannot open the file ({error.strerror})", where=where, received=str(path)) from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        kind = ("a directory" if stat.S_ISDIR(info.st_mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(info.st_mode)
                else "a device" if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode)
                else "a socket" if stat.S_ISSOCK(info.st_mode) else "not a regular file")
        raise UserError(f"this is {kind}, not a data file", where=where, expected="a regular file",
                        received=str(path))
    if info.st_size == 0:
        os.close(fd)
        raise UserError("the file is empty", where=where, received=str(path))
    if info.st_size > MAX_DATA_BYTES:
        os.close(fd)
        raise UserError(f"the file is {_size_text(info.st_size)}, more than ktk loads into memory "
                        f"({_size_text(MAX_DATA_BYTES)})", where=where, received=str(path))
    return os.fdopen(fd, "rb")


def _read_frame(kind: str, path: Path, name: str, where: str) -> Any:
    """The table of a csv or parquet file (`name`: the path as the config gives it, for messages)."""
    import pandas as pd

    with _open_data_file(path, where) as handle:
        try:
            if kind == "parquet":
                _check_parquet(handle, path, name, where)
                frame = pd.read_parquet(handle)
            else:
                with _decompressed(handle, path, where) as text:
                    content = io.BytesIO(text.read())
                # pandas renames a repeated name (x, x.1) and an empty one ("Unnamed: 1"): the header as written
                header = pd.read_csv(content, header=None, nrows=1, dtype=str, keep_default_na=False).iloc[0]
                _check_header(list(header), name, where, "the header")
                content.seek(0)
                frame = pd.read_csv(content, low_memory=False)
        except UserError:
            raise
        except Exception as error:  # an unreadable file is the user's to fix: one message, whatever the parser says
            raise UserError(f"could not read the {kind} file ({first_line(error)})", where=where,
                            received=str(path)) from None
    if not frame.index.equals(pd.RangeIndex(len(frame))):  # pandas made an unnamed first field the index
        raise UserError(f"the header of {name} names {len(frame.columns)} columns, but its data rows have "
                        f"{len(frame.columns) + frame.index.nlevels} fields (a comma at the end of each row?)",
                        where=where, expected="a header naming every field of a row", received=str(path))
    frame = frame.reset_index(drop=True)  # row numbers in messages are positions in the file
    frame.columns = [str(c) for c in frame.columns]
    return frame


def _check_header(names: List[Any], file: str, where: str, header: str) -> None:
    """Refuses a header with an empty or a repeated column name: `target: x` or `features: [x]` would be
    ambiguous, and pandas would rename them (x.1, "Unnamed: 1") without a word."""
    first: Dict[str, int] = {}
    for position, name in enumerate(map(str, names), start=1):
        if not name.strip():
            hint = (" (pandas' to_csv saves the index as an unnamed first column: save with index=False)"
                    if header == "the header" and position == 1 else "")
            raise UserError(f"column {position} of {file} has no name in {header}", where=where,
                            expected=f"a name for every column{hint}", received=[str(n) for n in names])
        if name in first:
            raise UserError(f"columns {first[name]} and {position} of {file} are both named {name!r} in {header}",
                            where=where, expected="a different name for each column", received=name)
        first[name] = position


def _check_parquet(handle: BinaryIO, path: Path, name: str, where: str) -> None:
    """Parquet is compressed: its own metadata says how large the table is, before reading it. Its column
    names are checked as a csv file's header."""
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(handle)
    _check_header(parquet.schema_arrow.names, name, where, "its schema")
    metadata = parquet.metadata
    # Encoded sizes can be tiny (a column of zeros is one dictionary entry): count 8 bytes a cell at least.
    size = max(sum(metadata.row_group(i).total_byte_size for i in range(metadata.num_row_groups)),
               metadata.num_rows * metadata.num_columns * 8)
    handle.seek(0)
    if size > MAX_DATA_BYTES:
        raise UserError(f"the table is {_size_text(size)} uncompressed, more than ktk loads into memory "
                        f"({_size_text(MAX_DATA_BYTES)})", where=where, received=str(path))


def _decompressed(handle: BinaryIO, path: Path, where: str) -> Any:
    """The file's bytes, decompressed when its name says so (.gz, .bz2, .xz, .zip, as pandas infers from a
    name), and never more than MAX_DATA_BYTES of them: a small compressed file can expand without end."""
    import bz2
    import lzma
    import zipfile

    openers = {".gz": gzip.GzipFile, ".bz2": bz2.BZ2File, ".xz": lzma.LZMAFile}
    suffix = path.suffix.lower()
    if suffix in openers:
        return _Capped(openers[suffix](fileobj=handle) if suffix == ".gz" else openers[suffix](handle), path, where)
    if suffix == ".zip":
        archive = zipfile.ZipFile(handle)
        members = [m for m in archive.infolist() if not m.is_dir()]
        if len(members) != 1:
            raise UserError(f"the zip archive holds {len(members)} files", where=where,
                            expected="exactly one csv file in it", received=str(path))
        return _Capped(archive.open(members[0]), path, where)
    return _Capped(handle, path, where)


class _Capped:
    """A binary reader that refuses to give more than MAX_DATA_BYTES."""

    def __init__(self, stream: Any, path: Path, where: str):
        self.stream, self.path, self.where, self.total = stream, path, where, 0

    def read(self, size: int = -1) -> bytes:
        chunk = self.stream.read(MAX_DATA_BYTES + 1 - self.total if size is None or size < 0 else size)
        self.total += len(chunk)
        if self.total > MAX_DATA_BYTES:
            raise UserError(f"the file decompresses to more than ktk loads into memory "
                            f"({_size_text(MAX_DATA_BYTES)})", where=self.where, received=str(self.path))
        return chunk

    def __iter__(self) -> Any:  # pandas takes only iterable readers for files
        return iter(self.read().splitlines(keepends=True))

    def __enter__(self) -> "_Capped":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stream.close()


def _refuse_training_file_as_test(train: Path, test: Path, data: Any) -> None:
    """A test file that is the training file (under another spelling, or through a link) or a copy of it
    would report training data as test results."""
    try:
        if os.path.samefile(train, test):
            what = "the training file"
        elif _same_contents(train, test):
            what = "a copy of the training file"
        else:
            return
    except OSError:
        return  # reading either file says what is wrong with it
    raise UserError(f"the test file is {what} ({data.path}), so the test split would be training data",
                    where="data.test_path", expected="a file of held-out examples, or no test_path (then split.test "
                    "holds out part of the training file)", received=data.test_path)


def _same_contents(a: Path, b: Path) -> bool:
    """Whether two regular files (of at most MAX_DATA_BYTES) hold the same bytes; FIFOs and devices are
    never read here."""
    first, second = os.stat(a), os.stat(b)
    regular = stat.S_ISREG(first.st_mode) and stat.S_ISREG(second.st_mode)
    if not regular or first.st_size != second.st_size or first.st_size > MAX_DATA_BYTES:
        return False
    with open(a, "rb") as one, open(b, "rb") as other:
        while True:
            chunk = one.read(2**20)
            if chunk != other.read(2**20):
                return False
            if not chunk:
                return True


@dataclass
class _Table:
    """One file of a csv/parquet source: its rows and how messages name it."""

    frame: Any
    name: str  # the path as the config gives it
    where: str  # data.path or data.test_path

    def rows(self, positions: Sequence[int], series: Any = None) -> str:
        """ "data row 8" / "data rows 3, 9 and 2 more": 1-based rows of the file, the header not counted.

        Args:
            positions: positions in `series` (rows of the file when None).
            series: a column of the file, perhaps without some rows (dropped for missing values).
        """
        rows = np.asarray(positions, dtype=np.int64)
        if series is not None:
            rows = series.index.to_numpy()[rows]  # the frame's index is the row's position in the file
        return "data " + _rows_text(rows + 1)


def _load_table(data: Any, base_dir: Path) -> _Raw:
    train_file = _resolve(data.path, base_dir, "data.path")
    test_file = _resolve(data.test_path, base_dir, "data.test_path") if data.test_path else None
    if test_file is not None:
        _refuse_training_file_as_test(train_file, test_file, data)
    train = _Table(_read_frame(data.source, train_file, data.path, "data.path"), data.path, "data.path")
    columns = list(train.frame.columns)
    if data.target is None:
        raise UserError("required key is missing", where="data.target", expected="the name of the target column",
                        choices=columns)
    split_column = data.split.column
    for column, key in ((data.target, "data.target"), (split_column, "data.split.column")):
        if column is not None and column not in columns:
            raise UserError(f"column not found in {data.path}", where=key, received=column, choices=columns)
    features = _feature_columns(data, columns)
    tables = [train]
    if test_file is not None:
        test = _Table(_read_frame(data.source, test_file, data.test_path, "data.test_path"), data.test_path,
                      "data.test_path")
        for column in [*features, data.target]:
            if column not in test.frame.columns:
                raise UserError(f"column {column!r} of the training file is not in the test file {data.test_path}",
                                where="data.test_path", expected="the training file's feature and target columns",
                                received=column, choices=list(test.frame.columns))
        tables.append(test)
    used = []
    for table in tables:
        wanted = [*features, data.target] + ([split_column] if split_column and table is train else [])
        used.append(_present_rows(table, table.frame[wanted], data.missing))
    x_parts, columns = _encode_features([(t, u[features]) for t, u in zip(tables, used)])
    y_parts = _target_values([(t, u[data.target]) for t, u in zip(tables, used)], data.target)
    feature_names = list(x_parts[0].columns)
    x_train = x_parts[0].to_numpy(dtype=np.float64)
    split_of_row = None
    if split_column is not None:
        split_of_row = _split_labels(used[0][split_column].astype(str).to_numpy())
    test_part = None
    if len(tables) > 1:
        test_part = (x_parts[1].to_numpy(dtype=np.float64), y_parts[1])
    return _Raw(x_train, y_parts[0], feature_names, None, None, split_of_row=split_of_row, test=test_part,
                target_name=data.target, columns=tuple(columns), source_rows=used[0].index.to_numpy(dtype=np.int64),
                test_rows=used[1].index.to_numpy(dtype=np.int64) if len(used) > 1 else None)


def _feature_columns(data: Any, columns: List[str]) -> List[str]:
    """The feature columns: data.features, or every column but the target and the split column."""
    reserved = {data.target: "the target (data.target)", data.split.column: "the split column (data.split.column)"}
    if data.features is not None and not data.features:
        raise UserError(where="data.features", expected="at least one feature column (or no data.features: every "
                        "column but the target)", received=[], choices=[c for c in columns if c not in reserved])
    if not data.features:
        features = [c for c in columns if c not in reserved]
        if not features:
            raise UserError(f"{data.path} has no column besides the target", where="data.path",
                            expected="at least one feature column", received=columns)
        return features
    seen = set()
    for i, column in enumerate(data.features):
        where = f"data.features.{i}"
        if column in reserved:
            raise UserError(f"column {column!r} is {reserved[column]}, so it cannot be a feature", where=where,
                            expected="a feature column", received=column,
                            choices=[c for c in columns if c not in reserved])
        if column in seen:
            raise UserError(f"column {column!r} is listed twice", where=where, expected="each feature once",
                            received=column)
        if column not in columns:
            raise UserError(f"column not found in {data.path}", where=where, received=column,
                            choices=[c for c in columns if c not in reserved])
        seen.add(column)
    return list(data.features)


def _present_rows(table: _Table, used: Any, missing: str) -> Any:
    """The rows of `used` without missing values; with data.missing: error, missing values are refused."""
    absent = used.isna()
    counts = absent.sum()
    counts = counts[counts > 0]
    if not len(counts):
        _nonempty(table, used)
        return used
    if missing == "drop":
        kept = used[~absent.any(axis=1)]
        if not len(kept):
            raise UserError(f"every row of {table.name} has a missing value, so none is left to use",
                            where=table.where, expected="some complete rows", received=f"{len(used)} rows")
        return kept
    listing = ", ".join(
        f"{column!r} ({table.rows(np.flatnonzero(absent[column].to_numpy()))})" for column in counts.index)
    raise UserError(f"missing values in column(s) {listing} of {table.name}", where=table.where,
                    expected="no missing values, or data.missing: drop to drop those rows")


def _nonempty(table: _Table, used: Any) -> None:
    if not len(used):
        raise UserError(f"{table.name} has no data rows (only a header)", where=table.where,
                        expected="at least one row of data", received=table.name)


def _encode_features(parts: List[Tuple[_Table, Any]]) -> Tuple[List[Any], List[Column]]:
    """Each file's feature columns as numbers: numeric columns checked (finite, within float32), text
    columns one-hot encoded over the categories of every file (load_data then keeps the training split's
    categories only: _training_vocabulary). One frame per file, the same columns; and
    the raw columns they come from (names, kinds, categories in one-hot order)."""
    import pandas as pd

    frames = [frame for _, frame in parts]
    encoded: List[List[Any]] = [[] for _ in parts]
    columns: List[Column] = []
    for column in frames[0].columns:
        kind = _column_kind(parts[0][0], column, frames[0][column])
        if kind == "numeric":
            for i, (table, frame) in enumerate(parts):
                encoded[i].append(_numeric_column(table, column, frame[column], "feature").to_frame())
            columns.append(Column(str(column), NUMBER))
            continue
        categories = pd.concat([frame[column] for frame in frames]).astype(str)
        distinct = categories.nunique()
        if distinct > MAX_CATEGORIES or (distinct > 20 and distinct > len(categories) // 2):
            raise UserError(
                f"text column {column!r} has {distinct:,} distinct values in {len(categories):,} rows: an ID or "
                f"free text, not a category (one-hot encoding it would add {distinct:,} features); list the "
                "columns to use in data.features to leave it out, or encode it as numbers",
                where="data.features", received=column)
        vocabulary = sorted(categories.unique())
        dummies = pd.get_dummies(pd.Categorical(categories, categories=vocabulary), prefix=str(column),
                                 dtype=np.float64)
        columns.append(Column(str(column), TEXT, tuple(vocabulary)))
        start = 0
        for i, frame in enumerate(frames):
            encoded[i].append(dummies.iloc[start:start + len(frame)].set_axis(frame.index))
            start += len(frame)
    return [pd.concat(blocks, axis=1) for blocks in encoded], columns


def _column_kind(table: _Table, column: str, series: Any) -> str:
    """"numeric" or "text", by the training file; a mostly numeric column with a few words is a typo."""
    import pandas as pd

    _scalars_only(table, column, series)
    if pd.api.types.is_datetime64_any_dtype(series) or pd.api.types.is_timedelta64_dtype(series):
        raise UserError(f"column {column!r} of {table.name} holds dates or times, which are not features as they "
                        "are", where=table.where, expected="numbers or text; derive numbers from it (e.g. day of "
                        "year) or leave it out with data.features", received=str(series.dtype))
    if pd.api.types.is_bool_dtype(series) or pd.api.types.is_numeric_dtype(series):
        return "numeric"
    numbers = pd.to_numeric(series, errors="coerce")
    bad = numbers.isna() & series.notna()
    if not bad.any():
        return "numeric"
    if bad.mean() < 0.5:
        return "numeric"  # _numeric_column names the first word in it
    _refuse_complex_text(table, column, series)
    return "text"


def _scalars_only(table: _Table, column: str, series: Any) -> None:
    import pandas as pd

    if not pd.api.types.is_object_dtype(series):
        return
    scalar = series.map(lambda v: v is None or isinstance(v, (str, int, float, np.number, np.bool_))).to_numpy(bool)
    if not scalar.all():
        rows = np.flatnonzero(~scalar)
        raise UserError(f"column {column!r} of {table.name} holds lists or other objects in {table.rows(rows, series)}",
                        where=table.where, expected="one number or text value per cell",
                        received=type(series.iloc[rows[0]]).__name__)


def _refuse_complex_text(table: _Table, column: str, series: Any) -> None:
    """Text such as "(1+2j)" is a complex number, not a category."""
    values = series.dropna().astype(str).unique()[:1000]

    def is_complex(text: str) -> bool:
        try:
            return complex(text.replace(" ", "")).imag != 0
        except ValueError:
            return False

    if len(values) and all(is_complex(v) or _is_number(v) for v in values) and any(is_complex(v) for v in values):
        raise UserError(f"column {column!r} of {table.name} holds complex numbers", where=table.where,
                        expected="real numbers", received=next(v for v in values if is_complex(v)))


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _numeric_column(table: _Table, column: str, series: Any, role: str) -> Any:
    """The column as float64, refusing words, complex numbers, infinities and values beyond float32."""
    import pandas as pd

    if pd.api.types.is_complex_dtype(series):
        raise UserError(f"column {column!r} of {table.name} holds complex numbers", where=table.where,
                        expected="real numbers", received=str(series.dtype))
    if pd.api.types.is_bool_dtype(series):
        return series.astype(np.float64)
    if not pd.api.types.is_numeric_dtype(series):
        numbers = pd.to_numeric(series, errors="coerce")
        bad = (numbers.isna() & series.notna()).to_numpy()
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise UserError(f"non-numeric value in numeric {role} column {column!r} of {table.name} at "
                            f"{table.rows([row], series)}", where=table.where, expected="a number",
                            received=series.iloc[row])
        series = numbers
    values = series.astype(np.float64)
    _check_finite(values.to_numpy(), f"column {column!r} of {table.name}", table.where,
                  lambda rows: table.rows(rows, values))
    return values


def _target_values(parts: List[Tuple[_Table, Any]], column: str) -> List[np.ndarray]:
    """Each file's target column as an array: numbers (checked finite), or text class labels."""
    import pandas as pd

    table, series = parts[0]
    _scalars_only(table, column, series)
    kind = "numeric"
    if not (pd.api.types.is_bool_dtype(series) or pd.api.types.is_numeric_dtype(series)):
        numbers = pd.to_numeric(series, errors="coerce")
        bad = numbers.isna() & series.notna()
        # Words among whole numbers are class names (0, 1, 'a'); a word among fractional values is a typo
        # in a numeric target, reported as such.
        if bad.any() and (bad.mean() >= 0.5 or bool((numbers.dropna() % 1 == 0).all())):
            kind = "text"
            _refuse_complex_text(table, column, series)
    if kind == "numeric":
        return [_numeric_column(t, column, s, "target").to_numpy() if not pd.api.types.is_bool_dtype(s)
                else s.to_numpy() for t, s in parts]
    labels = [s.astype(str).to_numpy(dtype=object) for _, s in parts]
    distinct = len(set(labels[0]))
    if distinct > MAX_CLASSES_FOR_INFERENCE and distinct > len(labels[0]) // 2:
        raise UserError(f"the target column {column!r} has {distinct:,} distinct text values in {len(labels[0]):,} "
                        "rows, so most classes would have a single example: an ID or free text, not a class label",
                        where="data.target", expected="a column of class labels or numbers", received=column)
    return labels


def _split_labels(values: np.ndarray) -> np.ndarray:
    aliases = {"train": "train", "training": "train", "validation": "validation", "val": "validation",
               "valid": "validation", "dev": "validation", "test": "test"}
    labels = np.array([aliases.get(v.strip().lower(), "") for v in values])
    bad = labels == ""
    if bad.any():
        raise UserError("unknown split name in the split column", where="data.split.column",
                        received=values[np.flatnonzero(bad)[0]], choices=["train", "validation", "test"])
    return labels


def _load_images(data: Any, base_dir: Path) -> _Raw:
    """An ``images`` folder decoded into memory, or (``cache: none``, or ``auto`` above its memory limit) checked
    by one decoding pass and read from its files each epoch (see :mod:`toolkit.sources.images`)."""
    from toolkit.sources import images

    root = _resolve(data.path, base_dir, "data.path")
    folder = images.scan(root, data.path)
    shape, readable, too_large = images.image_shape(folder, data.image_size, data.color_mode, data.path)
    size = images.decoded_bytes(int(readable.sum()), shape)
    if data.cache == "memory" and size > MAX_DATA_BYTES:
        raise UserError(f"the decoded images take {_size_text(size)}, more than ktk holds in memory "
                        f"({_size_text(MAX_DATA_BYTES)})", where="data.cache",
                        expected="none or auto (decoded from their files every epoch), or a smaller data.image_size",
                        received=data.cache)
    task = "binary" if len(folder.class_names) == 2 else "multiclass"
    if data.cache == "none" or (data.cache == "auto" and size > images.MEMORY_CACHE_BYTES):
        kept, per_image = images.decode_pass(folder, np.flatnonzero(readable), shape, data.color_mode)
        if not len(kept):
            raise UserError(f"none of the {len(folder.files):,} image files of {data.path} can be decoded",
                            where="data.path", expected="readable images", received=data.path)
        images.warn_skipped(folder, sorted(set(range(len(folder.files))) - set(kept.tolist())), data.path, too_large)
        return _Raw(kept, folder.labels[kept], None, list(folder.class_names), task, target_name="class folder",
                    source_rows=kept, files=folder.files, image_pass=(folder, shape, per_image))
    pixels, kept = images.decode(folder, np.flatnonzero(readable), shape, data.color_mode)
    images.warn_skipped(folder, sorted(set(range(len(folder.files))) - set(kept.tolist())), data.path, too_large)
    return _Raw(pixels, folder.labels[kept], None, list(folder.class_names), task, target_name="class folder",
                source_rows=kept, files=folder.files)


_NPZ_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip archive (np.savez), possibly empty


def _load_npz(data: Any, base_dir: Path) -> _Raw:
    train_file = _resolve(data.path, base_dir, "data.path")
    test_file = _resolve(data.test_path, base_dir, "data.test_path") if data.test_path else None
    if test_file is not None:
        _refuse_training_file_as_test(train_file, test_file, data)
    x, y = _read_npz(train_file, data.path, "data.path")
    test = None
    if test_file is not None:
        test_x, test_y = _read_npz(test_file, data.test_path, "data.test_path")
        if test_x.shape[1:] != x.shape[1:]:
            raise UserError(f"the test file's examples have another shape than the training file's ({data.path})",
                            where="data.test_path", expected=f"x of shape (n, {', '.join(map(str, x.shape[1:]))})",
                            received=f"shape {test_x.shape}")
        test = (test_x, test_y)
    return _Raw(x, y, None, None, None, test=test)


def _read_npz(path: Path, name: str, where: str) -> Tuple[np.ndarray, np.ndarray]:
    """Arrays x (features, as float64) and y (labels) of an npz file, checked."""
    arrays: Dict[str, np.ndarray] = {}
    with _open_data_file(path, where) as handle:
        magic = handle.read(6)
        handle.seek(0)
        if magic.startswith(b"\x93NUMPY"):
            raise UserError(f"{name} is a .npy file, which holds a single array", where=where,
                            expected="an npz archive with arrays x and y, as np.savez(path, x=x, y=y) writes")
        if not magic.startswith(_NPZ_MAGIC):
            raise UserError(f"{name} is not an npz archive (npz files are zip archives)", where=where,
                            expected="an npz archive with arrays x and y, as np.savez(path, x=x, y=y) writes")
        try:
            archive = np.load(handle, allow_pickle=False)  # unpickling would run code from the file
        except Exception as error:  # a damaged archive: one message, whatever the zip reader says
            raise UserError(f"could not read the npz file ({first_line(error)})", where=where,
                            received=str(path)) from None
        with archive:
            for key in ("x", "y"):
                if key not in archive.files:
                    raise UserError(f"array {key!r} not found in the npz file {name}", where=where,
                                    choices=archive.files)
                member = f"{key}.npy" if f"{key}.npy" in archive.zip.namelist() else key
                size = archive.zip.getinfo(member).file_size  # what the zip reader will give at most
                if size > MAX_DATA_BYTES:
                    raise UserError(f"array {key!r} of {name} is {_size_text(size)} uncompressed, more than ktk "
                                    f"loads into memory ({_size_text(MAX_DATA_BYTES)})", where=where)
                try:
                    arrays[key] = np.asarray(archive[key])
                except ValueError as error:
                    if "allow_pickle" in str(error):
                        raise UserError(f"array {key!r} of {name} holds Python objects, which ktk does not unpickle "
                                        "(unpickling runs code)", where=where,
                                        expected="an array of numbers (or of text labels for y)") from None
                    raise UserError(f"could not read array {key!r} of {name} ({first_line(error)})", where=where,
                                    received=str(path)) from None
                except Exception as error:  # a damaged member
                    raise UserError(f"could not read array {key!r} of {name} ({first_line(error)})", where=where,
                                    received=str(path)) from None
    x, y = arrays["x"], arrays["y"]
    x = _check_array(x, f"array 'x' of {name}", where, row_base=0)
    if y.ndim == 0 or y.ndim > 2:
        raise UserError(f"array 'y' of {name} has shape {y.shape}", where=where,
                        expected="one label (or one row of targets) per example: shape (n,) or (n, k)")
    if len(x) != len(y):
        raise UserError(f"array 'x' of {name} has {len(x):,} rows and 'y' has {len(y):,}", where=where,
                        expected="one label per example: x and y with the same number of rows")
    return x, _check_labels(y, f"array 'y' of {name}", where)


def _check_array(x: np.ndarray, label: str, where: str, row_base: int) -> np.ndarray:
    """Features as float64 after checking: real numbers, one row per example, finite, within float32."""
    _refuse_dtype(x, "biuf", label, where, "real numbers", ("is not numeric", "an array of numbers"))
    if x.ndim < 2:
        raise UserError(f"{label} has shape {x.shape}", where=where,
                        expected="one row per example, shape (examples, features...); for one feature per example "
                        "use x.reshape(-1, 1)")
    if not len(x):
        raise UserError(f"{label} has no examples", where=where, expected="at least one row",
                        received=f"shape {x.shape}")
    if x.size == 0:
        raise UserError(f"{label} has no features", where=where, expected="at least one value per example",
                        received=f"shape {x.shape}")
    if x.dtype.kind == "f":
        _check_finite(x.reshape(len(x), -1), label, where,
                      lambda rows: _rows_text(np.asarray(rows) + row_base) + (" (counting from 0)" if row_base == 0
                                                                              else ""))
    return x.astype(np.float64, copy=False)


def _refuse_dtype(array: np.ndarray, kinds: str, label: str, where: str, real: str, other: Tuple[str, str]) -> None:
    """Complex numbers, or any dtype kind not in `kinds`, as one UserError (`other`: the problem and what to give)."""
    if array.dtype.kind == "c":
        raise UserError(f"{label} holds complex numbers", where=where, expected=real, received=f"dtype {array.dtype}")
    if array.dtype.kind not in kinds:
        raise UserError(f"{label} {other[0]}", where=where, expected=other[1], received=f"dtype {array.dtype}")


def _check_labels(y: np.ndarray, label: str, where: str) -> np.ndarray:
    """Labels or regression targets: numbers (finite) or text; never complex or objects."""
    _refuse_dtype(y, "biufUS", label, where, "real numbers or text labels",
                  ("is neither numbers nor text", "numbers or text labels"))
    if y.dtype.kind == "f":
        _check_finite(y.reshape(len(y), -1), label, where,
                      lambda rows: _rows_text(np.asarray(rows)) + " (counting from 0)", missing="labels")
    return y


def _check_finite(values: np.ndarray, label: str, where: str, rows: Callable[[Sequence[int]], str],
                  missing: str = "values") -> None:
    """Refuses NaN, infinite and beyond-float32 values in a (rows, ...) array, naming the rows."""
    flat = values.reshape(len(values), -1)
    problems = [
        (np.isnan(flat), f"missing (NaN) {missing}", "finite numbers"),
        (np.isinf(flat), "infinite values", "finite numbers"),
    ]
    if float(np.finfo(flat.dtype).max) > FLOAT32_MAX:  # float16 and float32 fit (FLOAT32_MAX overflows float16)
        with np.errstate(invalid="ignore"):
            problems.append((np.abs(np.where(np.isfinite(flat), flat, 0)) > FLOAT32_MAX,
                             "values too large for float32 (the type Keras trains in)",
                             f"numbers within ±{FLOAT32_MAX:.3g}"))
    for mask, what, expected in problems:
        bad = np.flatnonzero(mask.any(axis=1))
        if len(bad):
            first = flat[bad[0]][mask[bad[0]]][0]
            raise UserError(f"{label} has {what} in {rows(bad)}", where=where, expected=expected,
                            received=float(first))


def _size_text(size: float) -> str:
    """A byte count for a message: "4 GiB", "1.5 MiB", "20 kB"."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:.3g} {unit}"
    return f"{int(size)} bytes"


def _rows_text(rows: np.ndarray, limit: int = 5) -> str:
    shown = ", ".join(str(int(r)) for r in rows[:limit])
    more = f" and {len(rows) - limit:,} more" if len(rows) > limit else ""
    return f"row{'s' if len(rows) > 1 else ''} {shown}{more}"


def _first(values: np.ndarray) -> Any:
    value = values.flat[0] if values.size else None
    return value.item() if hasattr(value, "item") else value



# ------------------------------------------------------------------------------- task and labels


def _infer_task(raw: _Raw, declared: str) -> str:
    if declared != "auto":
        return declared
    if raw.task_hint is not None:
        return raw.task_hint
    y = raw.y
    if y.ndim > 1 and y.shape[1] > 1:
        return "regression"
    if y.dtype.kind in "OUSb":
        classes = np.unique(y.astype(str))
        return "binary" if len(classes) <= 2 else "multiclass"
    values = np.unique(y)
    integral = np.all(np.isfinite(values)) and np.all(np.mod(values, 1) == 0)
    if integral and len(values) <= MAX_CLASSES_FOR_INFERENCE:
        return "binary" if len(values) <= 2 else "multiclass"
    return "regression"


def _warn_if_regression_like(raw: _Raw, task: str, num_classes: Optional[int]) -> None:
    """A numeric target declared as classes, with many values and few examples of each, looks like a
    regression target (sklearn.diabetes as multiclass: 214 classes in 442 examples)."""
    if raw.y.dtype.kind in "iuf" and num_classes and num_classes > max(MAX_CLASSES_FOR_INFERENCE, len(raw.y) / 10):
        warnings.warn(f"task: {task}, but the target {raw.target_name!r} holds {num_classes:,} distinct numbers in "
                      f"{len(raw.y):,} examples (about {len(raw.y) / num_classes:.1f} of each): is it a regression "
                      "target (task: regression)?", DataWarning, stacklevel=3)


def _one_label_per_example(y: np.ndarray, name: str) -> np.ndarray:
    if y.ndim == 2 and y.shape[1] == 1:
        return y[:, 0]
    if y.ndim != 1:
        raise UserError(f"the target {name!r} has shape {y.shape}", where="task",
                        expected="one class label per example for a classification task (or task: regression)")
    return y


def _encode_labels(y: np.ndarray, class_names: Optional[List[str]]) -> Tuple[np.ndarray, List[str]]:
    """Class labels as 0..k-1 integers, with the name of each class."""
    if class_names is not None and np.issubdtype(y.dtype, np.integer):
        return y.astype(np.int64), list(class_names)
    keys = y.astype(str) if y.dtype.kind in "OUS" else y
    classes, codes = np.unique(keys, return_inverse=True)
    names = [str(c.item() if hasattr(c, "item") else c) for c in classes]
    if y.dtype.kind not in "OUS":
        names = [str(int(c)) if float(c).is_integer() else str(c) for c in classes]
    return codes.astype(np.int64), names


def _encode_like(y: np.ndarray, class_names: List[str], where: str) -> np.ndarray:
    lookup = {name: i for i, name in enumerate(class_names)}
    keys = y.astype(str) if y.dtype.kind in "OUS" else [str(int(v)) if float(v).is_integer() else str(v) for v in y]
    codes = []
    for key in keys:
        if key not in lookup:
            raise UserError("a test label never seen in the training data", where=where, received=key,
                            choices=class_names)
        codes.append(lookup[key])
    return np.asarray(codes, dtype=np.int64)


# ----------------------------------------------------------------------------------------- split


def split_indices(n: int, fractions: Tuple[float, float, float], seed: int,
                  strata: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Disjoint, shuffled train/validation/test indices, stratified by `strata` when given.

    Reproducible from `seed`. With strata, each class is split in the same proportions (rounded per
    class, see :func:`_class_shares`), so every split keeps the class balance of the whole.
    """
    rng = np.random.default_rng(seed)
    groups = [np.arange(n)] if strata is None else [np.flatnonzero(strata == s) for s in np.unique(strata)]
    parts: List[List[np.ndarray]] = [[], [], []]
    for members in groups:
        members = rng.permutation(members)
        n_val, n_test = _class_shares(len(members), fractions)
        if fractions[1] > 0 and n_val == 0 and len(members) - n_test > 1 and strata is None:
            n_val = 1
        parts[2].append(members[:n_test])
        parts[1].append(members[n_test:n_test + n_val])
        parts[0].append(members[n_test + n_val:])
    return tuple(rng.permutation(np.concatenate(p)).astype(np.int64) for p in parts)  # type: ignore[return-value]


def _class_shares(count: int, fractions: Tuple[float, float, float]) -> Tuple[int, int]:
    """How many of `count` examples go to validation and to test (the rest train): each rounded on its own."""
    return int(round(count * fractions[1])), int(round(count * fractions[2]))


def _split(raw: _Raw, y: np.ndarray, split: Any, task: str, seed: int, class_names: Optional[List[str]]):
    x = raw.x
    classification = task in ("binary", "multiclass")
    stratify = classification if split.stratify is None else split.stratify
    if stratify and not classification:
        raise UserError(where="data.split.stratify", expected="false for a regression task", received=True)
    if raw.split_of_row is not None:
        index = {name: np.flatnonzero(raw.split_of_row == name) for name in SPLITS}
        if raw.test is not None:
            if len(index["test"]):  # two test splits: one of them would be dropped
                raise UserError(f"the split column {split.column!r} names {len(index['test']):,} test rows, and "
                                "data.test_path gives the test split too", where="data.split.column",
                                expected="only train and validation rows in the split column when test_path is "
                                "set (or no test_path)", received=split.column)
            index["test"] = np.array([], dtype=np.int64)
        for name in SPLITS[:2] if raw.test is not None else SPLITS:
            if not len(index[name]):
                raise UserError(f"the split column {split.column!r} has no {name} rows", where="data.split.column",
                                expected="rows of each split: train, validation and test (or a test_path)",
                                received=split.column)
        parts = [(x[index[name]], y[index[name]]) for name in SPLITS]
        rows = [index[name] for name in SPLITS]
    else:
        # With a separate test set, train and validation share the whole of this data in their proportions.
        total = split.train + split.validation if raw.test is not None else 1.0
        fractions = (split.train / total, split.validation / total, 0.0 if raw.test is not None else split.test)
        train, val, test = split_indices(len(y), fractions, seed, y if stratify else None)
        parts = [(x[train], y[train]), (x[val], y[val]), (x[test], y[test])]
        rows = [train, val, test]
        if stratify:
            empty = [name for name, f, (_, part_y) in zip(SPLITS, fractions, parts) if f and not len(part_y)]
            if not empty:
                _warn_if_stratification_distorts(y, fractions, [len(p) for p in (train, val, test)], raw.target_name)
            elif all(len(p) for p, f in zip(split_indices(len(y), fractions, seed), fractions) if f):
                _refuse_stratified_empty_split(y, fractions, total, split, class_names, raw.target_name, empty[0])
    if raw.test is not None:
        parts[2] = (np.asarray(raw.test[0], dtype=np.float64), raw.test[1])
        rows[2] = np.arange(len(raw.test[1]), dtype=np.int64) if raw.test_rows is None else raw.test_rows
    if raw.source_rows is not None:
        rows[:2 if raw.test is not None else 3] = [raw.source_rows[r] for r in rows[:2 if raw.test is not None else 3]]
    for name, (_, part_y) in zip(SPLITS, parts):
        if len(part_y) == 0:
            raise UserError(
                f"the {name} split is empty ({len(y)} examples in all)", where="data.split",
                expected="fractions that leave at least one example in each split",
                received={k: getattr(split, k) for k in SPLITS},
            )
    return parts, dict(zip(SPLITS, rows))


def _refuse_stratified_empty_split(y: np.ndarray, fractions: Tuple[float, float, float], total: float, split: Any,
                                   class_names: Optional[List[str]], target: str, empty: str) -> None:
    """A stratified split left a split empty: its fraction of every class rounds to no example. That is tiny
    fractions, small classes (perhaps the wrong target column), or both: the message gives the numbers."""
    counts = np.bincount(y.astype(np.int64))
    largest = int(np.argmax(counts))
    names = class_names or [str(i) for i in range(len(counts))]
    fraction = fractions[SPLITS.index(empty)]
    given = getattr(split, empty)
    raise UserError(
        f"a stratified split leaves the {empty} split empty: {empty}: {given:g} gives each of the {len(counts):,} "
        f"classes of {target!r} less than one example ({fraction:.3g} of the largest class, {names[largest]!r}, "
        f"with {int(counts[largest]):,} examples, is {counts[largest] * fraction:.2g}, which rounds to 0)",
        where=f"data.split.{empty}",
        expected=f"a {empty} fraction above {0.5 * total / counts[largest]:.3g}, classes with more examples (is "
        "data.target the right column?), or data.split.stratify: false", received=given)


def _warn_if_stratification_distorts(y: np.ndarray, fractions: Tuple[float, float, float], sizes: List[int],
                                     target: str) -> None:
    """Warns when rounding each class's share (small classes stay whole in training) moves the validation or
    test size far from its fraction: 384/29/29 examples where 0.7/0.15/0.15 of 442 asks about 309/66/66."""
    wanted = [len(y) * f for f in fractions]
    if all(abs(size - want) <= max(2.0, 0.2 * want) for size, want in zip(sizes[1:], wanted[1:])):
        return
    counts = np.bincount(y.astype(np.int64))
    counts = counts[counts > 0]
    shares = [_class_shares(int(c), fractions) for c in counts]
    small = sum(1 for share in shares if any(n == 0 and f > 0 for n, f in zip(share, fractions[1:])))
    needed = max(1, int(0.5 / min(f for f in fractions[1:] if f > 0)))  # the fewest examples that give each one
    while 0 in [n for n, f in zip(_class_shares(needed, fractions), fractions[1:]) if f > 0]:
        needed += 1
    shown = " / ".join(f"{size:,} {name}" for size, name in zip(sizes, SPLITS))
    about = " / ".join(f"{round(want):,}" for want in wanted)
    cause = (f"{small:,} of {len(counts):,} classes of {target!r} have too few examples to be split (fewer than "
             f"{needed:,}), so they stay whole in the training split" if small else
             f"each class of {target!r} is split with its share rounded")
    warnings.warn(f"data.split.stratify: {cause}: {shown} examples instead of about "
                  f"{about}; data.split.stratify: false gives the fractions asked for", DataWarning, stacklevel=2)


# ---------------------------------------------------------------------------------- normalization


def image_statistics(method: str, x_train: np.ndarray) -> Dict[str, Any]:
    """Per-channel statistics of training images (float64), for the ``Normalization`` layer the model starts
    with (``in_model``: the pipeline feeds raw pixel values, so that augmentation sees them as they are)."""
    if method == "none":
        return {"method": "none"}
    flat = x_train.reshape(-1, x_train.shape[-1])
    if method == "standard":
        count = len(flat)
        center = np.zeros(flat.shape[1])
        squares = np.zeros(flat.shape[1])
        for start in range(0, count, 2**22):  # float64 sums in blocks: bounded memory
            block = flat[start:start + 2**22].astype(np.float64)
            center += block.sum(axis=0)
            squares += np.square(block).sum(axis=0)
        center /= max(count, 1)
        scale = np.sqrt(np.maximum(squares / max(count, 1) - np.square(center), 0.0))
    else:  # minmax
        center = flat.min(axis=0).astype(np.float64)
        scale = flat.max(axis=0).astype(np.float64) - center
    scale = np.where(scale > 0, scale, 1.0)
    return {"method": method, "center": center.astype(np.float64), "scale": scale.astype(np.float64),
            "in_model": True}


def _normalize(method: str, x_train: np.ndarray, *others: np.ndarray):
    """Scales every split with statistics of the training split only (per feature).

    The statistics are computed in the inputs' own precision (float64 for tables), before the cast to
    float32, so that large values do not overflow the sums of squares.
    """
    if method == "none":
        return (*(np.asarray(a, dtype=np.float32) for a in (x_train, *others)), {"method": "none"})
    if method == "standard":
        center = x_train.mean(axis=0)
        scale = x_train.std(axis=0)
    else:  # minmax
        center = x_train.min(axis=0)
        scale = x_train.max(axis=0) - center
    scale = np.where(scale > 0, scale, 1.0)  # constant features stay finite
    scaled = [((np.asarray(a) - center) / scale).astype(np.float32) for a in (x_train, *others)]
    # The statistics stay float64: the range of values near ±FLOAT32_MAX does not fit float32.
    return (*scaled, {"method": method, "center": center.astype(np.float64), "scale": scale.astype(np.float64)})
