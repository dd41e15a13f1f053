"""Prepared data as ``tf.data`` pipelines: the second kind of prepared data, beside the in-memory
:class:`toolkit.data.Dataset`.

A :class:`Pipelines` exposes what training needs (task, classes, input shape, schema, normalization, sizes,
``describe()``) and makes each split's ``tf.data.Dataset`` on demand: ``train(batch, seed, epoch)`` shuffled per
epoch as a function of (seed, epoch), ``split(name, batch)`` in order. Kinds:

- :class:`UserPipelines`: the ``tf.data.Dataset`` or ``keras.utils.PyDataset`` objects a user gives to
  ``toolkit.run(config, data={"train": ..., "validation": ..., "test": ...})``, used as they are;
- ``toolkit.sources.streaming.StreamedTable``: csv/parquet files read in batches (``stream: true``);
- ``toolkit.sources.images.ImageFiles``: an images folder decoded from its files each epoch (``cache: none``).

The file-backed kinds hold only paths and statistics, so a sweep sends them to its trial workers as it sends a
``Dataset``; a user's pipelines stay in the process that made them.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Tuple

from toolkit.errors import UserError, first_line
from toolkit.results import SPLITS
from toolkit.schema import InputSchema

MAX_CLASSES_FOR_INFERENCE = 50
MAX_BATCHES = 10_000_000  # a split's batches counted before training: a bound on an endless pipeline's pass


def is_pipelines(data: Any) -> bool:
    return isinstance(data, Pipelines)


class Pipelines:
    """Base of the pipeline kinds: the description of the data; subclasses make the ``tf.data`` datasets."""

    task: str = "regression"
    num_classes: Optional[int] = None
    class_names: Optional[List[str]] = None
    feature_names: Optional[List[str]] = None
    inputs: Optional[InputSchema] = None
    target_name: str = "y"
    input_shape: Tuple[int, ...] = ()
    targets: int = 1  # regression outputs
    normalization: Dict[str, Any] = {"method": "none"}
    split_files: Dict[str, List[str]] = {}
    rows: Dict[str, Any] = {}
    counts: Dict[str, Optional[int]] = {}
    class_counts: Optional[List[int]] = None  # of the training split, when known (class_weight: balanced)
    has_test: bool = True
    batched: bool = False  # the datasets come batched (the user's): training.batch_size does not apply

    @property
    def output_units(self) -> int:
        if self.task == "multiclass":
            return int(self.num_classes or 0)
        return 1 if self.task == "binary" else int(self.targets)

    def sizes(self) -> Dict[str, Optional[int]]:
        return {name: self.counts.get(name) for name in SPLITS}

    def describe(self) -> str:
        sizes = self.sizes()
        shown = " / ".join(f"{'?' if sizes[n] is None else sizes[n]} {n}" for n in SPLITS)
        shape = "x".join(str(d) for d in self.input_shape)
        kind = f"{self.task}" + (f", {self.num_classes} classes" if self.num_classes else "")
        return (f"{shown} examples ({self.kind}), {shape} inputs, {kind}, "
                f"normalize={self.normalization.get('method', 'none')}")

    kind = "pipelines"

    def train(self, batch: int, seed: int, epoch: Any, shuffle: bool = True) -> Any:  # pragma: no cover
        raise NotImplementedError

    def split(self, name: str, batch: int) -> Any:  # pragma: no cover
        raise NotImplementedError

    def without_test(self) -> "Pipelines":
        """This data without its test split (sweep trials never see it)."""
        import copy

        clone = copy.copy(self)
        clone.has_test = False
        return clone


def epoch_shuffled(make: Any, seed: int, epoch: Any) -> Any:
    """A dataset whose every iterator is ``make(epoch_seed)`` for the epoch `epoch` holds when it starts: each
    epoch's order a function of (seed, epoch) alone (the trick of :func:`toolkit.training.make_dataset`)."""
    import tensorflow as tf

    def one_epoch(_: Any) -> Any:
        number = epoch.read_value() if epoch is not None else tf.constant(0, tf.int64)
        return make(tf.constant(seed, tf.int64) * 1_000_003 + number)

    return tf.data.Dataset.from_tensors(0).flat_map(one_epoch)


# ------------------------------------------------------------------------------------------ user pipelines


class UserPipelines(Pipelines):
    """A user's own ``tf.data.Dataset`` or ``keras.utils.PyDataset`` objects, one per split, batched as given.

    Each yields ``(x, y)`` (or ``(x, y, sample_weight)``) batches, x one tensor. The task is the config's, else
    inferred from one pass over the training labels (which also counts the examples and classes): integer labels
    with at most 50 values are classes (0..k-1), anything else regression. The validation and test pipelines are
    counted by one pass over their labels too (metrics.json's ``sizes``). Without a test pipeline, metrics.json
    says so: ``"test": null`` and ``sizes.test: null`` (no test split was given, so none was evaluated).
    ktk neither shuffles, batches nor normalizes them: training.batch_size, training.shuffle and data.normalize do
    not apply.
    """

    kind = "your pipelines"
    batched = True

    def __init__(self, given: Dict[str, Any], task: str):
        self.given = given
        self.has_test = "test" in given
        spec_x, spec_y = _element_spec(given["train"], "train")
        for name in given:
            if name != "train":
                other_x, other_y = _element_spec(given[name], name)
                for what, mine, train in (("inputs", other_x, spec_x), ("labels", other_y, spec_y)):
                    if tuple(mine.shape[1:]) != tuple(train.shape[1:]):
                        raise UserError(f"the {name} batches have {what} of shape {tuple(mine.shape[1:])} and the "
                                        f"train batches {tuple(train.shape[1:])}", where=f"data[{name!r}]",
                                        expected=f"the same {what} shape in every split")
        if any(d is None for d in spec_x.shape[1:]):
            raise UserError("the inputs' shape is not fully known", where="data['train']",
                            expected="batches whose inputs have a known shape after the batch axis",
                            received=str(tuple(spec_x.shape)))
        self.input_shape = tuple(int(d) for d in spec_x.shape[1:])
        self.inputs = InputSchema("array", shape=self.input_shape)
        labels, count = _labels_of(given["train"])
        # every split counted (one pass over its labels): metrics.json's sizes; a split not given is None there
        self.counts = {"train": count, **{name: _labels_of(given[name], name)[1] for name in given if name != "train"}}
        self.task, self.num_classes, self.class_names, self.class_counts, self.targets = _task_of(labels, task)

    def train(self, batch: int, seed: int, epoch: Any, shuffle: bool = True) -> Any:
        return self.given["train"]

    def split(self, name: str, batch: int) -> Any:
        return self.given[name]


def from_user(data: Any, config: Any) -> UserPipelines:
    """`data` of ``toolkit.run(config, data=...)`` as pipelines: a mapping ``{"train", "validation"[, "test"]}``
    or a tuple ``(train, validation[, test])`` of ``tf.data.Dataset`` / ``keras.utils.PyDataset``."""
    if isinstance(data, (tuple, list)):
        if len(data) not in (2, 3):
            raise UserError("data= takes two or three pipelines", where="data", expected="(train, validation) or "
                            "(train, validation, test)", received=f"{len(data)} items")
        data = dict(zip(SPLITS, data))
    if not isinstance(data, dict):
        raise UserError("data= is not a data set ktk knows", where="data", expected="a toolkit.data.Dataset, or "
                        "{'train': ..., 'validation': ..., 'test': ...} of tf.data.Dataset or keras.utils.PyDataset",
                        received=type(data).__name__)
    for key in data:
        if key not in SPLITS:
            raise UserError("unknown split", where="data", received=key, choices=list(SPLITS))
    for key in ("train", "validation"):
        if data.get(key) is None:
            raise UserError(f"no {key} pipeline", where="data", expected="train and validation pipelines (test "
                            "optional)", received=sorted(data))
    given = {k: v for k, v in data.items() if v is not None}
    for name, value in given.items():
        if not _is_pipeline(value):
            raise UserError("not a pipeline", where=f"data[{name!r}]", expected="a tf.data.Dataset or a "
                            "keras.utils.PyDataset of (x, y) batches", received=type(value).__name__)
    if config.training.batch_size == "full":
        raise UserError("your pipelines are batched as you made them", where="training.batch_size",
                        expected="a number (it is not used with data= pipelines)", received="full")
    return UserPipelines(given, config.task)


def _is_pipeline(value: Any) -> bool:
    import keras
    import tensorflow as tf

    return isinstance(value, (tf.data.Dataset, keras.utils.PyDataset))


def _element_spec(pipeline: Any, name: str) -> Tuple[Any, Any]:
    """The (x, y) tensor specs of a pipeline's batches (a PyDataset's first batch gives them)."""
    import tensorflow as tf

    if isinstance(pipeline, tf.data.Dataset):
        spec = pipeline.element_spec
    else:
        try:
            first = pipeline[0]
        except Exception as error:  # noqa: BLE001 - the user's code failed: said once, in its words
            raise UserError(f"could not read the first batch ({type(error).__name__}: {error})",
                            where=f"data[{name!r}]") from None
        spec = tuple(tf.TensorSpec.from_tensor(tf.convert_to_tensor(part)) for part in first) \
            if isinstance(first, tuple) else first
    if not isinstance(spec, tuple) or len(spec) not in (2, 3) or not all(
            isinstance(s, tf.TensorSpec) for s in spec):
        raise UserError("the batches are not (x, y) tensors", where=f"data[{name!r}]",
                        expected="(x, y) or (x, y, sample_weight) batches, x one tensor (not a dict)",
                        received=str(spec)[:200])
    if not (spec[0].dtype.is_floating or spec[0].dtype.is_integer or spec[0].dtype.is_bool):
        raise UserError("the inputs are not numbers", where=f"data[{name!r}]", expected="numeric inputs (ktk's "
                        "model takes one numeric tensor)", received=f"dtype {spec[0].dtype.name}")
    if len(spec[0].shape) < 2:
        raise UserError("the batches have no batch axis", where=f"data[{name!r}]",
                        expected="batched inputs: dataset.batch(n)", received=f"inputs of shape {spec[0].shape}")
    return spec[0], spec[1]


def _labels_of(pipeline: Any, name: str = "train") -> Tuple[Any, int]:
    """Every label of a split (one pass) and the number of examples."""
    import numpy as np
    import tensorflow as tf

    parts = []
    infinite = (int(pipeline.cardinality()) == int(tf.data.INFINITE_CARDINALITY)
                if isinstance(pipeline, tf.data.Dataset) else getattr(pipeline, "num_batches", 0) is None)
    if infinite:  # counted once before training: that pass would never end
        raise UserError(f"the {name} pipeline never ends (repeat() or a PyDataset without a length); ktk counts "
                        "each split once and makes the epochs itself", where=f"data[{name!r}]",
                        expected="a finite pipeline: one epoch's batches (leave out repeat())", received="infinite")
    where = f"data[{name!r}]"
    if not isinstance(pipeline, tf.data.Dataset) and len(pipeline) > MAX_BATCHES:
        raise UserError(f"the {name} pipeline has more batches than ktk counts", where=where,
                        expected=f"at most {MAX_BATCHES:,} batches", received=len(pipeline))
    try:
        batches = (pipeline.map(lambda *t: t[1]).as_numpy_iterator() if isinstance(pipeline, tf.data.Dataset)
                   else (pipeline[i][1] for i in range(len(pipeline))))
        for batch in batches:
            parts.append(np.asarray(batch))
            if len(parts) > MAX_BATCHES:
                raise UserError(f"the {name} pipeline has more batches than ktk counts (is it endless?)", where=where,
                                expected=f"at most {MAX_BATCHES:,} batches")
    except UserError:
        raise
    except Exception as error:  # noqa: BLE001 - the user's code failed inside tf.data: its own last line
        raise UserError(f"reading the {name} pipeline failed ({_python_error(error)})", where=where) from None
    if not parts:
        raise UserError(f"the {name} pipeline is empty", where=where, expected="at least one batch")
    labels = np.concatenate([p.reshape(len(p), -1) for p in parts])
    if labels.dtype.kind not in "biuf":
        raise UserError(f"the {name} labels are not numbers", where=where, expected="numeric labels (class indexes "
                        "0..k-1, or values)", received=f"dtype {labels.dtype}")
    if labels.dtype.kind == "f" and not np.isfinite(labels).all():
        raise UserError(f"the {name} labels hold missing or infinite values", where=where,
                        expected="finite labels", received=float(labels[~np.isfinite(labels)][0]))
    return labels, len(labels)


def _python_error(error: BaseException) -> str:
    """The Python error a TensorFlow error carries from a user's function (its ``Name: text`` line), else the
    first line."""
    import re

    lines = re.findall(r"^\s*(\w+(?:Error|Exception): .*)$", str(error), re.MULTILINE)
    return lines[0].strip() if lines else first_line(error)


def _task_of(labels: Any, declared: str) -> Tuple[str, Optional[int], Optional[List[str]], Optional[List[int]], int]:
    import numpy as np

    width = labels.shape[1]
    values = np.unique(labels) if labels.size else labels
    integral = labels.dtype.kind in "iub" or bool(np.all(np.isfinite(values)) and np.all(np.mod(values, 1) == 0))
    task = declared
    if task == "auto":
        task = ("binary" if len(values) <= 2 else "multiclass") if width == 1 and integral and \
            len(values) <= MAX_CLASSES_FOR_INFERENCE and values.min() >= 0 else "regression"
    if task == "regression":
        return task, None, None, None, width
    if width != 1 or not integral or values.min() < 0:
        raise UserError("classification labels must be class indexes 0..k-1, one per example", where="data['train']",
                        expected="integer labels", received=f"labels of shape (n, {width}), dtype {labels.dtype}")
    count = max(int(values.max()) + 1, 2)
    if task == "binary" and count > 2:
        raise UserError(where="task", expected="at most 2 classes for a binary task", received=f"{count} classes")
    class_counts = np.bincount(labels[:, 0].astype(np.int64), minlength=count).tolist()
    return task, count, [str(i) for i in range(count)], class_counts, 1


def steps(size: Optional[int], batch: int) -> int:
    return max(1, math.ceil(size / batch)) if size else 1
