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
"""

from __future__ import annotations

import gzip
import importlib.util
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from toolkit.errors import UserError

SPLITS = ("train", "validation", "test")
MAX_CLASSES_FOR_INFERENCE = 50


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
    normalization: Dict[str, Any] = field(default_factory=dict)  # method and the training statistics

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


def load_data(config: Any) -> Dataset:
    """Loads, splits and normalizes the data a config describes.

    Args:
        config: a :class:`toolkit.config.Config`.

    Returns:
        A :class:`Dataset` whose inputs are float32 and normalized with training-split statistics.

    Raises:
        UserError: unknown source, missing file or column, non-numeric data, missing values, empty split.
    """
    data = config.data
    raw = _load_source(data, config.seed, config.base_dir)
    task = _infer_task(raw, config.task)
    y_all = raw.y
    class_names = raw.class_names
    if task in ("binary", "multiclass"):
        y_all, class_names = _encode_labels(raw.y, class_names)
        if raw.test is not None:
            raw.test = (raw.test[0], _encode_like(raw.test[1], class_names, where="data.test_path"))
    num_classes = len(class_names) if class_names is not None else None
    if task == "binary" and num_classes is not None and num_classes > 2:
        raise UserError(
            where="task", expected="at most 2 classes for a binary task",
            received=f"{num_classes} classes", choices=["multiclass", "regression"],
        )
    parts = _split(raw, y_all, data.split, task, config.seed)
    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = parts
    x_tr, x_va, x_te, stats = _normalize(data.normalize, x_tr, x_va, x_te)
    y_type = np.int32 if task == "multiclass" else np.float32
    return Dataset(
        x_train=x_tr, y_train=y_tr.astype(y_type), x_val=x_va, y_val=y_va.astype(y_type),
        x_test=x_te, y_test=y_te.astype(y_type), task=task, num_classes=num_classes,
        class_names=class_names, feature_names=raw.feature_names, normalization=stats,
    )


# ------------------------------------------------------------------------------------------ sources


def _load_source(data: Any, seed: int, base_dir: Path) -> _Raw:
    family, _, name = data.source.partition(".")
    loaders: Dict[str, Callable[..., _Raw]] = {
        "sklearn": _load_sklearn, "synthetic": _load_synthetic, "keras": _load_keras,
    }
    files: Dict[str, Callable[..., _Raw]] = {"csv": _load_table, "parquet": _load_table, "npz": _load_npz}
    if family in loaders and name:
        raw = loaders[family](name, dict(data.options), seed)
        if data.test_path:
            raise UserError(where="data.test_path", expected=f"no test_path with source {data.source!r} "
                            "(it is only for csv, parquet and npz files)", received=data.test_path)
        return raw
    if data.source in files:
        return files[data.source](data, base_dir)
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
    with gzip.open(_sklearn_file("digits.csv.gz"), "rt") as handle:
        table = np.loadtxt(handle, delimiter=",", dtype=np.float64)
    x, y = table[:, :-1], table[:, -1].astype(np.int64)
    n_class = int(options.pop("n_class", 10))
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

        bunch = _call_with_options(getattr(sklearn.datasets, loader_name), options, "data.options")
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




def _load_sklearn(name: str, options: Dict[str, Any], seed: int) -> _Raw:
    if name not in SKLEARN_DATASETS:
        raise UserError(where="data.source", expected="a bundled scikit-learn data set",
                        received=f"sklearn.{name}", choices=[f"sklearn.{n}" for n in SKLEARN_DATASETS])
    allowed = {"digits": {"n_class"}}.get(name, set())
    unknown = sorted(set(options) - allowed) if name != "linnerud" else []
    if unknown:
        raise UserError(where=f"data.options.{unknown[0]}", expected=f"an option of sklearn.{name}",
                        received=unknown[0], choices=sorted(allowed))
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


def _load_synthetic(name: str, options: Dict[str, Any], seed: int) -> _Raw:
    if name not in SYNTHETIC:
        raise UserError(where="data.source", expected="a synthetic generator", received=f"synthetic.{name}",
                        choices=[f"synthetic.{n}" for n in SYNTHETIC])
    import sklearn.datasets

    function_name, task = SYNTHETIC[name]
    options.setdefault("random_state", seed)
    x, y = _call_with_options(getattr(sklearn.datasets, function_name), options, "data.options")[:2]
    x = np.asarray(x, dtype=np.float64)
    return _Raw(x, np.asarray(y), [f"x{i}" for i in range(x.shape[1])], None, task)


def _call_with_options(function: Callable[..., Any], options: Dict[str, Any], where: str) -> Any:
    params = inspect.signature(function).parameters
    for key in options:
        if key not in params:
            raise UserError(where=f"{where}.{key}", expected=f"an option of {function.__name__}",
                            received=key, choices=[p for p in params if p not in ("return_X_y", "as_frame")])
    try:
        return function(**options)
    except (TypeError, ValueError) as error:
        raise UserError(f"{function.__name__} rejected the options: {error}", where=where,
                        received=options) from None


KERAS_DATASETS = ("mnist", "fashion_mnist", "cifar10", "cifar100", "boston_housing")


def _load_keras(name: str, options: Dict[str, Any], seed: int) -> _Raw:
    if name not in KERAS_DATASETS:
        raise UserError(where="data.source", expected="a Keras data set", received=f"keras.{name}",
                        choices=[f"keras.{n}" for n in KERAS_DATASETS])
    import keras

    module = getattr(keras.datasets, name)
    try:
        (x_train, y_train), (x_test, y_test) = module.load_data(**options)
    except Exception as error:  # noqa: BLE001 - any failure to fetch is reported as one message
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
    resolved = Path(path) if Path(path).is_absolute() else base_dir / path
    if not resolved.exists():
        resolved_cwd = Path(path)
        if resolved_cwd.exists():
            return resolved_cwd
        raise UserError("file not found", where=where, received=str(path))
    return resolved


def _read_frame(kind: str, path: Path, where: str) -> Any:
    import pandas as pd

    try:
        if kind == "parquet":
            return pd.read_parquet(path)
        return pd.read_csv(path)
    except Exception as error:  # noqa: BLE001 - unreadable files are a user mistake, reported once
        raise UserError(f"could not read the {kind} file: {error}", where=where, received=str(path)) from None


def _load_table(data: Any, base_dir: Path) -> _Raw:
    path = _resolve(data.path, base_dir, "data.path")
    frame = _read_frame(data.source, path, "data.path")
    frames = [frame]
    if data.test_path:
        frames.append(_read_frame(data.source, _resolve(data.test_path, base_dir, "data.test_path"),
                                  "data.test_path"))
    if data.target is None:
        raise UserError("required key is missing", where="data.target",
                        expected="the name of the target column", choices=list(frame.columns))
    split_column = data.split.column
    for i, table in enumerate(frames):
        problem = "column not found" if i == 0 else f"column not found in the test file {data.test_path}"
        for column, key in ((data.target, "data.target"), (split_column, "data.split.column")):
            if column is not None and column not in table.columns and not (i == 1 and key == "data.split.column"):
                raise UserError(problem, where=key, received=column, choices=list(table.columns))
    import pandas as pd

    combined = pd.concat(frames, keys=range(len(frames)), names=["_part", "_row"]) if len(frames) > 1 else frame
    feature_columns = list(data.features) if data.features else [
        c for c in frame.columns if c not in (data.target, split_column)]
    for column in feature_columns:
        if column not in combined.columns:
            raise UserError("column not found", where="data.features", received=column,
                            choices=[c for c in frame.columns if c != data.target])
    used = combined[feature_columns + [data.target]]
    missing = used.isna().sum()
    missing = missing[missing > 0]
    if len(missing):
        if data.missing == "drop":
            keep = ~used.isna().any(axis=1)
            combined, used = combined[keep], used[keep]
        else:
            listing = ", ".join(f"{col!r} ({int(n)} rows)" for col, n in missing.items())
            raise UserError(
                f"missing values in column(s) {listing}", where="data.path",
                expected="no missing values, or data.missing: drop to drop those rows", received=str(path),
            )
    features = _encode_features(used[feature_columns], str(path))
    x_all = features.to_numpy(dtype=np.float64)
    y_all = used[data.target].to_numpy()
    split_of_row = None
    if split_column is not None:
        split_of_row = _split_labels(combined[split_column].astype(str).to_numpy(), path)
    if len(frames) > 1:
        part = combined.index.get_level_values("_part").to_numpy()
        main, test = part == 0, part == 1
        return _Raw(x_all[main], y_all[main], list(features.columns), None, None,
                    split_of_row=None if split_of_row is None else split_of_row[main],
                    test=(x_all[test], y_all[test]))
    return _Raw(x_all, y_all, list(features.columns), None, None, split_of_row=split_of_row)


def _encode_features(frame: Any, source: str) -> Any:
    """Numeric columns stay; text columns become one-hot columns; mostly-numeric text is an error."""
    import pandas as pd

    out = []
    for column in frame.columns:
        series = frame[column]
        if pd.api.types.is_bool_dtype(series):
            out.append(series.astype(np.float64).to_frame())
        elif pd.api.types.is_numeric_dtype(series):
            out.append(series.to_frame())
        else:
            numbers = pd.to_numeric(series, errors="coerce")
            bad = numbers.isna() & series.notna()
            if bad.any() and bad.mean() < 0.5:  # mostly numbers: a typo in a numeric column
                row = int(np.flatnonzero(bad.to_numpy())[0])
                raise UserError(
                    f"non-numeric value in numeric column {column!r} at data row {row + 1}",
                    where="data.path", expected="a number", received=series.iloc[row],
                )
            if not bad.any():
                out.append(numbers.to_frame())
            else:
                out.append(pd.get_dummies(series.astype(str), prefix=str(column), dtype=np.float64))
    return pd.concat(out, axis=1)


def _split_labels(values: np.ndarray, path: Path) -> np.ndarray:
    aliases = {"train": "train", "training": "train", "validation": "validation", "val": "validation",
               "valid": "validation", "dev": "validation", "test": "test"}
    labels = np.array([aliases.get(v.strip().lower(), "") for v in values])
    bad = labels == ""
    if bad.any():
        raise UserError("unknown split name in the split column", where="data.split.column",
                        received=values[np.flatnonzero(bad)[0]], choices=["train", "validation", "test"])
    return labels


def _load_npz(data: Any, base_dir: Path) -> _Raw:
    def read(path_text: str, where: str) -> Tuple[np.ndarray, np.ndarray]:
        path = _resolve(path_text, base_dir, where)
        try:
            with np.load(path, allow_pickle=False) as archive:
                keys = list(archive.keys())
                for key in ("x", "y"):
                    if key not in keys:
                        raise UserError(f"array {key!r} not found in the npz file", where=where,
                                        received=str(path), choices=keys)
                return np.asarray(archive["x"]), np.asarray(archive["y"])
        except UserError:
            raise
        except Exception as error:  # noqa: BLE001
            raise UserError(f"could not read the npz file: {error}", where=where, received=str(path)) from None

    x, y = read(data.path, "data.path")
    if not np.issubdtype(x.dtype, np.number):
        raise UserError("non-numeric features in the npz file", where="data.path", expected="a numeric array x",
                        received=str(x.dtype))
    test = read(data.test_path, "data.test_path") if data.test_path else None
    return _Raw(x.astype(np.float64), y, None, None, None, test=test)


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
    class), so every split keeps the class balance of the whole.
    """
    rng = np.random.default_rng(seed)
    groups = [np.arange(n)] if strata is None else [np.flatnonzero(strata == s) for s in np.unique(strata)]
    parts: List[List[np.ndarray]] = [[], [], []]
    for members in groups:
        members = rng.permutation(members)
        n_test = int(round(len(members) * fractions[2]))
        n_val = int(round(len(members) * fractions[1]))
        if fractions[1] > 0 and n_val == 0 and len(members) - n_test > 1 and strata is None:
            n_val = 1
        parts[2].append(members[:n_test])
        parts[1].append(members[n_test:n_test + n_val])
        parts[0].append(members[n_test + n_val:])
    return tuple(rng.permutation(np.concatenate(p)).astype(np.int64) for p in parts)  # type: ignore[return-value]


def _split(raw: _Raw, y: np.ndarray, split: Any, task: str, seed: int):
    x = raw.x
    classification = task in ("binary", "multiclass")
    stratify = classification if split.stratify is None else split.stratify
    if stratify and not classification:
        raise UserError(where="data.split.stratify", expected="false for a regression task", received=True)
    if raw.split_of_row is not None:
        index = {name: np.flatnonzero(raw.split_of_row == name) for name in SPLITS}
        if raw.test is not None:
            index["test"] = np.array([], dtype=np.int64)
        parts = [(x[index[name]], y[index[name]]) for name in SPLITS]
    else:
        if raw.test is not None:
            total = split.train + split.validation
            fractions = (split.train / total, split.validation / total, 0.0)
        else:
            fractions = (split.train, split.validation, split.test)
        train, val, test = split_indices(len(y), fractions, seed, y if stratify else None)
        parts = [(x[train], y[train]), (x[val], y[val]), (x[test], y[test])]
    if raw.test is not None:
        parts[2] = (np.asarray(raw.test[0], dtype=np.float64), raw.test[1])
        if parts[2][0].shape[1:] != x.shape[1:]:
            raise UserError("the test file's features do not match the training file's", where="data.test_path",
                            expected=f"inputs of shape {x.shape[1:]}", received=f"shape {parts[2][0].shape[1:]}")
    for name, (_, part_y) in zip(SPLITS, parts):
        if len(part_y) == 0:
            raise UserError(
                f"the {name} split is empty ({len(y)} examples in all)", where="data.split",
                expected="fractions that leave at least one example in each split",
                received={k: getattr(split, k) for k in SPLITS},
            )
    return parts


# ---------------------------------------------------------------------------------- normalization


def _normalize(method: str, x_train: np.ndarray, *others: np.ndarray):
    """Scales every split with statistics of the training split only (per feature)."""
    x_train = np.asarray(x_train, dtype=np.float32)
    others = tuple(np.asarray(o, dtype=np.float32) for o in others)
    if method == "none":
        return (x_train, *others, {"method": "none"})
    if method == "standard":
        center = x_train.mean(axis=0)
        scale = x_train.std(axis=0)
    else:  # minmax
        center = x_train.min(axis=0)
        scale = x_train.max(axis=0) - center
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)  # constant features stay finite
    scaled = [((a - center) / scale).astype(np.float32) for a in (x_train, *others)]
    return (*scaled, {"method": method, "center": center, "scale": scale})
