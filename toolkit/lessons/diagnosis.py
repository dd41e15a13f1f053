"""Bias/variance, learning-curve and gradient-flow diagnosis of a run directory, as the course teaches it.

The figures:

- avoidable bias = training error - baseline error (Bayes or human-level error: ``--baseline-error``, else
  ``diagnose.baseline_error`` in the run's config, else 0);
- variance = validation error - training error;
- mismatch = test error - validation error (the validation and test sets should come from the same
  distribution; a large gap says they do not, or that the validation set was overfit by tuning).

Classification errors are ``1 - accuracy``. Regression uses its error metric (``mae``, ``mse``, ... as
compiled; else the loss) and judges the gaps relative to the errors themselves, since they have units.

Only the files of the run directory are read (``metrics.json``, ``history.csv``, ``config.yaml`` and,
when the run recorded it, ``gradients.csv``; never ``model.keras``), strictly and within size limits, by
:mod:`toolkit.lessons.run_files`: no TensorFlow. The arithmetic itself is :func:`judge`, a pure function of
the metrics, which ``ktk compare``'s verdict column calls through :func:`verdict_of`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from toolkit.errors import UserError
from toolkit.lessons.run_files import (check_run_dir, read_config, read_gradient_rows, read_history_rows,
                                       read_metrics)
from toolkit.results import CONFIG_FILE, METRICS_FILE

VERDICTS = ("high_bias", "high_variance", "high_bias_and_variance", "ok")

# A gap in classification error counts as high above 3 percentage points (the course's examples: train 1%
# / dev 11% is high variance; train 0.5% / dev 1% is fine).
CLASSIFICATION_TOLERANCE = 0.03
# Regression errors have units: a gap counts as high above 20% of the error it is measured from.
REGRESSION_RELATIVE_TOLERANCE = 0.2

ACCURACY_KEYS = ("accuracy", "acc", "binary_accuracy", "sparse_categorical_accuracy", "categorical_accuracy")
REGRESSION_ERROR_KEYS = ("mae", "mean_absolute_error", "mse", "mean_squared_error", "rmse",
                         "root_mean_squared_error", "mape", "mean_absolute_percentage_error", "msle",
                         "mean_squared_logarithmic_error", "huber", "logcosh")

# Gradient flow: a layer whose gradient norm is below this fraction of that of a layer closer to the
# output (at the same epoch) receives little signal: its gradient faded on the way back.
VANISHING_RATIO = 0.1
# A gradient norm growing this many times over its first recorded value is blowing up.
EXPLODING_GROWTH = 100.0
# A training loss whose best value is within 5% of its first epoch's has not learnt.
FLAT_LOSS_CHANGE = 0.05
# ... nor one that never gets 2% below the cross-entropy of guessing (ln 2, ln K).
CHANCE_MARGIN = 0.02
EXPLODING_MINIMUM = 1.0  # ... and reaching at least this norm

REMEDIES = {
    "high_bias": [
        "a bigger network: more hidden units or more layers (model.hidden)",
        "train longer (training.epochs) or with a better optimizer (training.optimizer: adam)",
        "less regularization if there is a lot of it (model.regularizer, model.dropout)",
        "a different architecture suited to the data",
    ],
    "high_variance": [
        "more training data (or data augmentation)",
        "regularization: L2 (model.regularizer: {l2: 1.0e-3}) or dropout (model.dropout: 0.2)",
        "a smaller network (model.hidden)",
        "early stopping on the validation loss (training.early_stopping)",
    ],
    "ok": [],
}
REMEDIES["high_bias_and_variance"] = (
    ["fix the bias first: " + REMEDIES["high_bias"][0], REMEDIES["high_bias"][1]]
    + ["then the variance: " + REMEDIES["high_variance"][1], REMEDIES["high_variance"][0]]
)

MEANING = {
    "high_bias": "the network does not fit even the training set well (underfitting)",
    "high_variance": "the network fits the training set much better than data it has not seen (overfitting)",
    "high_bias_and_variance": "the network underfits the training set and also generalizes poorly",
    "ok": "low avoidable bias and low variance",
}

MISMATCH_REMEDIES = [
    "draw the validation and test sets from the same distribution (the data the model will meet)",
    "a bigger validation set, if it was tuned against many times",
]
VANISHING_REMEDIES = [
    "He initialization for relu (model.initializer: he_normal) or Glorot for tanh/sigmoid",
    "batch normalization (model.batchnorm: true)",
    "relu instead of saturating activations (model.activation: relu)",
    "a shallower network",
]
EXPLODING_REMEDIES = [
    "a lower learning rate (training.optimizer.learning_rate)",
    "gradient clipping (training.optimizer.clipnorm: 1.0)",
    "He/Glorot initialization instead of large random weights (model.initializer)",
    "batch normalization (model.batchnorm: true) and normalized inputs (data.normalize: standard)",
]


@dataclass
class Note:
    """One finding beyond the verdict: what was seen, and what to try."""

    kind: str  # overfitting | train_longer | nan_loss | exploding_loss | huge_initial_loss | flat_loss |
    #            chance_level | mismatch | vanishing_gradients | exploding_gradients | bias_not_judged
    message: str
    remedies: List[str] = field(default_factory=list)
    layers: List[str] = field(default_factory=list)
    epoch: Optional[int] = None

    def to_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"kind": self.kind, "message": self.message, "remedies": list(self.remedies)}
        if self.layers:
            out["layers"] = list(self.layers)
        if self.epoch is not None:
            out["epoch"] = self.epoch
        return out


@dataclass
class Diagnosis:
    """The bias/variance verdict of a run, its figures, and the notes from its curves and gradients."""

    run_dir: str
    task: str
    error_name: str  # "1 - accuracy" for classification, else the regression metric used
    train_error: float
    validation_error: Optional[float]
    test_error: Optional[float]
    baseline_error: float
    baseline_source: str  # flag | config | default
    avoidable_bias: float
    variance: Optional[float]
    mismatch: Optional[float]
    bias_tolerance: Optional[float]  # the gap above which bias counts as high (None: not judged)
    variance_tolerance: float
    verdict: str
    remedies: List[str]
    notes: List[Note] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        """Plain data for ``--format json``."""
        return {
            "run_dir": self.run_dir,
            "verdict": self.verdict,
            "avoidable_bias": _round(self.avoidable_bias),
            "variance": _round(self.variance),
            "mismatch": _round(self.mismatch),
            "task": self.task,
            "error": self.error_name,
            "train_error": _round(self.train_error),
            "validation_error": _round(self.validation_error),
            "test_error": _round(self.test_error),
            "baseline_error": self.baseline_error,
            "baseline_source": self.baseline_source,
            "bias_tolerance": _round(self.bias_tolerance),
            "variance_tolerance": _round(self.variance_tolerance),
            "meaning": MEANING[self.verdict],
            "remedies": list(self.remedies),
            "notes": [note.to_dict() for note in self.notes],
        }

    def note(self, kind: str) -> Optional[Note]:
        """The first note of a kind, or None."""
        return next((n for n in self.notes if n.kind == kind), None)


def _round(value: Optional[float], digits: int = 6) -> Optional[float]:
    """A figure for JSON: rounded, and null when it is not finite (JSON has no NaN or Infinity)."""
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), digits)


def _number(text: Any) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


# ------------------------------------------------------------------------------------------ reading


@dataclass
class _RunFacts:
    """What diagnosis needs from the run's config.yaml and metrics.json besides the figures (all optional)."""

    baseline_error: Optional[float] = None
    epochs: Optional[int] = None  # training.epochs: a run that ended before it was stopped early
    regularized: bool = False  # an L1/L2 penalty is part of the loss
    num_classes: Optional[int] = None


def _run_facts(path: Path, metrics: Dict[str, Any]) -> _RunFacts:
    # num_classes has been in metrics.json since runs recorded it: model.keras (a zip archive that can be
    # made to unpack to gigabytes) is never opened. An older multiclass run simply gets no chance-level notes.
    facts = _RunFacts(num_classes=metrics.get("num_classes"))
    raw = read_config(path)
    if raw is None:
        return facts
    config_file = str(path / CONFIG_FILE)
    section = raw.get("diagnose")
    value = section.get("baseline_error") if isinstance(section, dict) else None
    if value is not None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(where="diagnose.baseline_error", expected="a number",
                            received=value if isinstance(value, str) else type(value).__name__, file=config_file)
        facts.baseline_error = float(value)
    training = raw.get("training") if isinstance(raw.get("training"), dict) else {}
    epochs = training.get("epochs")
    if isinstance(epochs, int) and not isinstance(epochs, bool):
        facts.epochs = epochs
    model = raw.get("model") if isinstance(raw.get("model"), dict) else {}
    layers = model.get("layers") if isinstance(model.get("layers"), list) else []
    specs = [model.get("regularizer")] + [layer.get("regularizer") for layer in layers if isinstance(layer, dict)]
    facts.regularized = any(isinstance(spec, dict) and bool(spec.get("l1") or spec.get("l2")) for spec in specs)
    return facts


def _flag_number(value: Any, where: str, expected: str) -> float:
    """A number given to :func:`diagnose` from Python (the command line parses its flags as floats)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(where=where, expected=expected, received=value if isinstance(value, str)
                        else type(value).__name__)
    try:
        return float(value)
    except OverflowError:
        return math.inf


def _out_of_range(value: float, fraction: bool, what: str) -> str:
    """What was expected of an error or gap that is out of range; "" when it is in range."""
    if not (math.isfinite(value) and value >= 0):
        return f"a non-negative {what}"
    if fraction and value > 1:
        return f"a non-negative {what} of at most 1 (a classification error is 1 - accuracy)"
    return ""


# ------------------------------------------------------------------------------------------ figures


def _error_metric(metrics: Dict[str, Any], task: str) -> Tuple[str, str, bool]:
    """(metric key in metrics.json, how the error is named, whether error = 1 - metric)."""
    train = metrics.get("train") or {}
    if task != "regression":
        for key in ACCURACY_KEYS:
            if key in train:
                return key, "1 - accuracy", True
        for key in train:
            if "accuracy" in key:
                return key, "1 - " + key, True
    for key in train:
        if key in REGRESSION_ERROR_KEYS:
            return key, key, False
    return "loss", "loss", False


def _split_error(metrics: Dict[str, Any], split: str, key: str, complement: bool) -> Optional[float]:
    """The error on a split, None when the split lacks the metric. Raises TypeError for a value that is not a number."""
    values = metrics.get(split) or {}
    if not isinstance(values, dict) or key not in values:
        return None
    value = values[key]
    if value is None:
        value = math.nan  # JSON has no NaN: a diverged run has null
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{split}.{key} is not a number")
    value = float(value)
    return 1.0 - value if complement else value


@dataclass
class Figures:
    """The bias/variance arithmetic of one set of metrics (see the module docstring)."""

    train_error: float
    validation_error: Optional[float]
    test_error: Optional[float]
    avoidable_bias: float
    variance: Optional[float]
    mismatch: Optional[float]
    bias_tolerance: Optional[float]  # None: a regression error with no baseline cannot be judged
    variance_tolerance: float
    mismatch_tolerance: float
    verdict: str


def judge(metrics: Dict[str, Any], task: str = "unknown", baseline_error: float = 0.0,
          tolerance: Optional[float] = None) -> Figures:
    """Bias, variance and mismatch of metrics shaped like metrics.json's ({split: {name: value}}).

    Pure arithmetic, no files: :func:`diagnose` and ``ktk compare``'s verdict column share it.

    Raises:
        KeyError: the train section has no metric to take an error from.
    """
    key, _, complement = _error_metric(metrics, task)
    train = _split_error(metrics, "train", key, complement)
    if train is None:
        raise KeyError(key)
    val = _split_error(metrics, "validation", key, complement)
    test = _split_error(metrics, "test", key, complement)
    baseline = float(baseline_error)
    avoidable_bias = train - baseline
    variance = None if val is None else val - train
    mismatch = None if (val is None or test is None) else test - val
    if complement:  # classification: absolute gaps in error
        bias_tol: Optional[float] = tolerance if tolerance is not None else CLASSIFICATION_TOLERANCE
        var_tol = mismatch_tol = bias_tol
    else:  # regression: gaps relative to the errors, which have units
        rel = tolerance if tolerance is not None else REGRESSION_RELATIVE_TOLERANCE
        bias_tol = rel * baseline if baseline > 0 else None
        var_tol = rel * max(train, baseline, 1e-12)
        mismatch_tol = rel * max(val if val is not None else train, 1e-12)
    high_bias = bias_tol is not None and math.isfinite(train) and avoidable_bias > bias_tol
    high_variance = variance is not None and math.isfinite(variance) and variance > var_tol
    if not math.isfinite(train):
        high_bias = True  # a NaN/inf training error: nothing was learnt
    verdict = ("high_bias_and_variance" if high_bias and high_variance else "high_bias" if high_bias
               else "high_variance" if high_variance else "ok")
    return Figures(train, val, test, avoidable_bias, variance, mismatch, bias_tol, var_tol, mismatch_tol, verdict)


def verdict_of(metrics: Dict[str, Any], task: str = "unknown", baseline_error: Any = None) -> str:
    """The verdict of metrics shaped like metrics.json's, or "" when they hold no training error."""
    baseline = float(baseline_error) if isinstance(baseline_error, (int, float)) and not isinstance(
        baseline_error, bool) and math.isfinite(baseline_error) and baseline_error >= 0 else 0.0
    try:
        return judge(metrics, task, baseline).verdict
    except (KeyError, TypeError, ValueError):
        return ""


def diagnose(run_dir: Union[str, Path], baseline_error: Optional[float] = None,
             tolerance: Optional[float] = None) -> Diagnosis:
    """Diagnoses a finished run: bias/variance verdict, mismatch, learning curves and gradient flow.

    Args:
        run_dir: a run directory written by ``ktk run`` (or a sweep's ``best/``).
        baseline_error: Bayes/human-level error; default the config's ``diagnose.baseline_error``, else 0.
        tolerance: the gap in error above which bias or variance counts as high. Default: 0.03 for
            classification (absolute), for regression 0.2 times the error the gap is measured from.

    Returns:
        A :class:`Diagnosis`.

    Raises:
        UserError: the folder is not a finished run directory, or its files are unreadable.
    """
    path = check_run_dir(run_dir)
    metrics = read_metrics(path)
    task = str(metrics.get("task") or "unknown")
    _, error_name, complement = _error_metric(metrics, task)
    # A classification error (1 - accuracy) and a gap between two such errors lie in [0, 1]; a regression
    # error has units, and its tolerance is a multiple of the error: those are only non-negative.

    facts = _run_facts(path, metrics)
    if baseline_error is not None:
        baseline, source = _flag_number(baseline_error, "--baseline-error", "a non-negative error"), "flag"
    elif facts.baseline_error is not None:
        baseline, source = facts.baseline_error, "config"
    else:
        baseline, source = 0.0, "default"
    problem = _out_of_range(baseline, complement, "error")
    if problem:
        raise UserError(where="--baseline-error" if source == "flag" else "diagnose.baseline_error",
                        expected=problem, received=baseline, file=None if source == "flag" else str(path / CONFIG_FILE))
    if tolerance is not None:
        tolerance = _flag_number(tolerance, "--tolerance", "a non-negative gap")
        problem = _out_of_range(tolerance, complement, "gap")
        if problem:
            raise UserError(where="--tolerance", expected=problem, received=tolerance)

    try:
        figures = judge(metrics, task, baseline, tolerance)  # read_metrics checked every value it uses
    except KeyError:
        raise UserError("no metric in the training results to take an error from", where="train",
                        expected="accuracy, a regression error (mae, mse, ...) or the loss",
                        received=", ".join(str(name) for name in list(metrics["train"])[:20]),
                        file=str(path / METRICS_FILE)) from None
    train, val, test = figures.train_error, figures.validation_error, figures.test_error
    mismatch, var_tol_mismatch, verdict = figures.mismatch, figures.mismatch_tolerance, figures.verdict
    notes: List[Note] = []
    if figures.bias_tolerance is None:
        notes.append(Note(
            "bias_not_judged",
            f"avoidable bias is not judged: a regression error ({error_name}) has units, and no baseline "
            f"error is known; pass --baseline-error (or set diagnose.baseline_error) to the error of the "
            f"best you expect (human level, the noise in the data, a strong simple model)",
        ))

    if mismatch is not None and math.isfinite(mismatch) and mismatch > var_tol_mismatch:
        notes.append(Note(
            "mismatch",
            f"test error {test:.4g} is {mismatch:.4g} above validation error {val:.4g}: the validation and "
            f"test sets look different (another distribution), or the validation set was overfit by tuning",
            MISMATCH_REMEDIES,
        ))

    history = read_history_rows(path)
    if history is not None:
        notes.extend(curve_notes(history, task=task, epochs_run=metrics.get("epochs_run"),
                                 configured_epochs=facts.epochs, num_classes=facts.num_classes,
                                 regularized=facts.regularized))
    gradients = read_gradient_rows(path)
    if gradients is not None:
        notes.extend(gradient_notes(gradients))

    return Diagnosis(
        run_dir=str(path), task=task, error_name=error_name, train_error=train, validation_error=val,
        test_error=test, baseline_error=baseline, baseline_source=source, avoidable_bias=figures.avoidable_bias,
        variance=figures.variance, mismatch=mismatch, bias_tolerance=figures.bias_tolerance,
        variance_tolerance=figures.variance_tolerance,
        verdict=verdict, remedies=list(REMEDIES[verdict]), notes=notes,
    )


def verdict_for_run(run_dir: Union[str, Path]) -> str:
    """The bias/variance verdict of a run directory (a whole :func:`diagnose`; tables use :func:`verdict_of`).

    Returns "" when the folder holds no finished run (no ``metrics.json``), so a table can still list it.
    """
    try:
        return diagnose(run_dir).verdict
    except UserError:
        return ""


# ---------------------------------------------------------------------------------- learning curves


def _column(rows: Sequence[Dict[str, str]], name: str) -> Optional[List[float]]:
    if not rows or name not in rows[0]:
        return None
    return [_number(row.get(name)) for row in rows]


def _epochs(rows: Sequence[Dict[str, str]]) -> List[int]:
    epochs = _column(rows, "epoch")
    if epochs is None or any(not math.isfinite(e) for e in epochs):
        return list(range(1, len(rows) + 1))
    return [int(e) for e in epochs]


def curve_notes(rows: Sequence[Dict[str, str]], task: str = "unknown", epochs_run: Any = None,
                configured_epochs: Optional[int] = None, num_classes: Optional[int] = None,
                regularized: bool = False) -> List[Note]:
    """Findings from the per-epoch history (rows of history.csv as dicts of strings).

    Flags a NaN or exploding loss, a first loss far above a chance-level guess (weights initialized too
    large), a loss that does not move or never gets below guessing, overfitting (validation loss rising
    while training loss falls, and from which epoch), and a run still improving at its last epoch (train
    longer) unless early stopping ended it.
    """
    loss = _column(rows, "loss")
    if not loss:
        return []
    epochs = _epochs(rows)
    val_loss = _column(rows, "val_loss")
    notes: List[Note] = []

    for name, series in (("training", loss), ("validation", val_loss)):
        if series is None:
            continue
        bad = next((i for i, v in enumerate(series) if not math.isfinite(v)), None)
        if bad is not None:
            notes.append(Note(
                "nan_loss", f"the {name} loss became {series[bad]} at epoch {epochs[bad]}: training diverged",
                EXPLODING_REMEDIES + ["check the data for missing or infinite values"], epoch=epochs[bad],
            ))
            return notes  # the rest of the curve is meaningless
    exploded = _exploding(loss)
    if exploded is not None:
        i, low = exploded
        notes.append(Note(
            "exploding_loss",
            f"the training loss blew up to {loss[i]:.4g} at epoch {epochs[i]} (from {low:.4g} before): the "
            f"steps are too large",
            EXPLODING_REMEDIES, epoch=epochs[i],
        ))

    # With an L1/L2 penalty the loss includes it, so a large first loss says nothing about the outputs.
    chance = None if regularized else _chance_loss(task, num_classes)
    if chance is not None and loss[0] > 10 * chance:
        notes.append(Note(
            "huge_initial_loss",
            f"the first epoch's training loss {loss[0]:.4g} is {loss[0] / chance:.0f} times that of a "
            f"chance-level guess ({chance:.3g}): the first outputs are confidently wrong, because the initial "
            f"weights are far too large or the inputs are not normalized, and learning starts slowly",
            ["He initialization for relu (model.initializer: he_normal) or Glorot (glorot_uniform)",
             "normalized inputs (data.normalize: standard)"], epoch=epochs[0],
        ))

    if len(loss) >= 3 and _relative_change(loss[0], min(loss)) < FLAT_LOSS_CHANGE:
        notes.append(Note(
            "flat_loss",
            f"the training loss hardly moved ({loss[0]:.4g} at epoch {epochs[0]}, best {min(loss):.4g}): the "
            f"network is not learning: all-equal (e.g. zeros) initial weights never break symmetry, gradients "
            f"vanish before they reach the early layers, or the learning rate is far too small",
            ["random initialization that breaks symmetry (model.initializer: he_normal)",
             "batch normalization (model.batchnorm: true) or relu units against vanishing gradients",
             "a larger learning rate (training.optimizer.learning_rate)"],
        ))

    flat = any(n.kind == "flat_loss" for n in notes)
    if chance is not None and not flat and len(loss) >= 3 and min(loss) > (1 - CHANCE_MARGIN) * chance:
        notes.append(Note(
            "chance_level",
            f"the training loss never got clearly below that of a chance-level guess ({chance:.3g}; best "
            f"{min(loss):.4g}): the network predicts no better than guessing the classes",
            ["normalized inputs (data.normalize: standard)", "He/Glorot initialization (model.initializer)",
             "batch normalization (model.batchnorm: true)", "another learning rate (training.optimizer)"],
        ))

    if val_loss is not None and len(val_loss) >= 3:
        overfit = _overfitting(loss, val_loss)
        if overfit is not None:
            k, rise, fall = overfit
            notes.append(Note(
                "overfitting",
                f"validation loss was lowest at epoch {epochs[k]} ({val_loss[k]:.4g}) and then rose {rise:.0%} "
                f"while the training loss fell another {fall:.0%}: overfitting from epoch {epochs[k]} on",
                [f"stop at epoch {epochs[k]}: early stopping on val_loss (training.early_stopping)",
                 "regularization: L2 (model.regularizer) or dropout (model.dropout)", "more training data"],
                epoch=epochs[k],
            ))

    improving = _still_improving(val_loss if val_loss is not None else loss)
    stopped_early = configured_epochs is not None and _number(epochs_run) < configured_epochs  # NaN: not known
    if improving is not None and not stopped_early:  # early stopping already decided when to end
        window, gain = improving
        name = "validation" if val_loss is not None else "training"
        notes.append(Note(
            "train_longer",
            f"the {name} loss was still falling at the last epoch ({gain:.1%} lower over the last {window} "
            f"epochs): train longer",
            ["more epochs (training.epochs), with early stopping to keep the best"],
            epoch=epochs[-1],
        ))
    return notes


def _relative_change(before: float, after: float) -> float:
    return abs(before - after) / max(abs(before), 1e-12)


def _chance_loss(task: str, num_classes: Optional[int]) -> Optional[float]:
    """Cross-entropy of guessing uniformly: ln 2 for binary, ln K for K classes."""
    if task == "binary":
        return math.log(2)
    if task == "multiclass" and num_classes and num_classes >= 2:
        return math.log(int(num_classes))
    return None


def _exploding(loss: Sequence[float]) -> Optional[Tuple[int, float]]:
    """The first epoch whose loss is over 10x the lowest loss before it and above the first loss."""
    lowest = loss[0]
    for i in range(1, len(loss)):
        if loss[i] > 10 * max(lowest, 1e-12) and loss[i] > loss[0]:
            return i, lowest
        lowest = min(lowest, loss[i])
    return None


def _smooth_tail(values: Sequence[float], start: int) -> float:
    """Mean of the last (up to) 3 values after `start`: one noisy epoch should not decide."""
    tail = list(values[start + 1:])[-3:]
    return sum(tail) / len(tail)


def _overfitting(loss: Sequence[float], val_loss: Sequence[float]) -> Optional[Tuple[int, float, float]]:
    """(index of the lowest validation loss, its relative rise after, training loss's relative fall after)."""
    k = min(range(len(val_loss)), key=lambda i: val_loss[i])
    if len(val_loss) - 1 - k < 2:
        return None  # lowest at (or just before) the end: no rise to speak of
    rise = (_smooth_tail(val_loss, k) - val_loss[k]) / max(abs(val_loss[k]), 1e-12)
    fall = (loss[k] - _smooth_tail(loss, k)) / max(abs(loss[k]), 1e-12)
    if rise > 0.05 and fall > 0.02:
        return k, rise, fall
    return None


def _still_improving(values: Optional[Sequence[float]]) -> Optional[Tuple[int, float]]:
    """(window, relative gain over it) when the best value is in the last 2 epochs and still falling."""
    if values is None or len(values) < 4:
        return None
    n = len(values)
    best = min(range(n), key=lambda i: values[i])
    if best < n - 2:
        return None
    window = max(3, n // 5)
    window = min(window, n - 1)
    before = values[n - 1 - window]
    gain = (before - min(values[-window:])) / max(abs(before), 1e-12)
    return (window, gain) if gain > 0.01 else None


# ------------------------------------------------------------------------------------ gradient flow


def gradient_notes(rows: Sequence[Dict[str, str]]) -> List[Note]:
    """Findings from gradients.csv (epoch, layer, grad_norm, weight_norm): vanishing and exploding gradients.

    Vanishing: a layer whose gradient norm stays below 1/10 of that of a layer closer to the output (at the
    same epoch) in most recorded epochs; normalization layers are not judged. Exploding: a NaN/inf norm,
    or a gradient norm growing over 100 times its first recorded value to above 1.

    The work grows with the number of rows only (one pass, then sorting), whatever mix of epochs and layer
    names the file holds.
    """
    by_epoch: Dict[int, Dict[str, Tuple[float, float]]] = {}
    order: Dict[str, int] = {}  # layer -> position, input side first (the order the monitor writes them)
    for row in rows:
        epoch = _number(row.get("epoch"))
        layer = str(row.get("layer", ""))
        if not math.isfinite(epoch) or not layer:
            continue
        order.setdefault(layer, len(order))
        by_epoch.setdefault(int(epoch), {})[layer] = (_number(row.get("grad_norm")),
                                                      _number(row.get("weight_norm")))
    if not by_epoch:
        return []
    epochs = sorted(by_epoch)
    notes: List[Note] = []

    # Exploding: non-finite norms, or growth far beyond the first value.
    bad_layers: Dict[str, None] = {}
    first_bad: Optional[int] = None
    for epoch in epochs:
        for layer, (grad, weight) in by_epoch[epoch].items():
            if not (math.isfinite(grad) and math.isfinite(weight)) and layer not in bad_layers:
                bad_layers[layer] = None
                first_bad = epoch if first_bad is None else first_bad
    if bad_layers:
        notes.append(Note(
            "exploding_gradients",
            f"gradient or weight norms became NaN/inf from epoch {first_bad} in {_names(bad_layers, order)}: "
            f"exploding gradients",
            EXPLODING_REMEDIES, layers=_ordered(bad_layers, order), epoch=first_bad,
        ))
    else:
        series: Dict[str, List[Tuple[int, float]]] = {}
        for epoch in epochs:
            for layer, (grad, _) in by_epoch[epoch].items():
                series.setdefault(layer, []).append((epoch, grad))
        grown: List[Tuple[str, float, int]] = []
        for layer in _ordered(series, order):
            values = series[layer]
            if len(values) < 2 or not values[0][1] > 0:
                continue
            peak_epoch, peak = max(values[1:], key=lambda item: item[1])
            # Growth from a near-zero start (a balanced output bias at init) is not an explosion: the
            # peak must also be large in absolute terms.
            if peak > EXPLODING_GROWTH * values[0][1] and peak > EXPLODING_MINIMUM:
                grown.append((layer, peak / values[0][1], peak_epoch))
        if grown:
            worst = max(grown, key=lambda item: item[1])
            notes.append(Note(
                "exploding_gradients",
                f"gradient norms grew up to {worst[1]:.0f} times their first value (by epoch {worst[2]}) in "
                f"{_names([g[0] for g in grown], order)}: exploding gradients",
                EXPLODING_REMEDIES, layers=_ordered([g[0] for g in grown], order), epoch=worst[2],
            ))

    # Vanishing: a layer whose gradient is an order of magnitude below that of a layer closer to the
    # output, in most epochs. Normalization layers (their scale and shift get small gradients by nature)
    # are not judged.
    judged = [layer for layer in order if "norm" not in layer.lower()]
    small_count = {layer: 0 for layer in judged}
    zero_everywhere = {layer: True for layer in judged}
    zero_weights = {layer: True for layer in judged}
    counted = 0
    for epoch in epochs:
        norms = {layer: values for layer, values in by_epoch[epoch].items() if layer in small_count}
        if not any(math.isfinite(g) and g > 0 for g, _ in norms.values()):
            continue
        counted += 1
        later_max = 0.0
        for layer in reversed(_ordered(norms, order)):  # from the output back
            grad, weight = norms[layer]
            if math.isfinite(grad) and grad < VANISHING_RATIO * later_max:
                small_count[layer] += 1
            if math.isfinite(grad):
                later_max = max(later_max, grad)
            zero_everywhere[layer] = zero_everywhere[layer] and grad == 0
            zero_weights[layer] = zero_weights[layer] and weight == 0
    if counted:
        vanished = [layer for layer in judged if small_count[layer] > counted / 2]
        if vanished:
            zero = [layer for layer in vanished if zero_everywhere[layer]]
            if zero and all(zero_weights[layer] for layer in zero):
                message = (f"{_names(zero, order)} had exactly zero gradient and zero weights in every recorded "
                           f"epoch: with all-equal (zeros) initial weights every unit computes the same thing "
                           f"and symmetry is never broken, so these layers never learn")
                remedies = ["random initialization: He (model.initializer: he_normal) or Glorot"]
            else:
                message = (f"gradients vanish on the way back to {_names(vanished, order)}: their gradient norms "
                           f"stay below 1/{round(1 / VANISHING_RATIO)} of a layer's closer to the output in most "
                           f"epochs, so the early layers barely learn")
                remedies = VANISHING_REMEDIES
            notes.append(Note("vanishing_gradients", message, remedies, layers=_ordered(vanished, order)))
    return notes


NAMES_SHOWN = 10  # layers named in a note's message; its layers list holds every one


def _ordered(layers: Iterable[str], order: Dict[str, int]) -> List[str]:
    return sorted(layers, key=order.__getitem__)


def _names(layers: Iterable[str], order: Dict[str, int]) -> str:
    names = _ordered(layers, order)
    shown = ", ".join(names[:NAMES_SHOWN]) + (f" and {len(names) - NAMES_SHOWN:,} more" if len(names) > NAMES_SHOWN
                                              else "")
    return ("layer " if len(names) == 1 else "layers ") + shown


# ------------------------------------------------------------------------------------------ output


def format_diagnosis(diagnosis: Diagnosis) -> str:
    """The text report printed by ``ktk diagnose``."""
    d = diagnosis
    lines = [f"Diagnosis of {d.run_dir}: {d.verdict}", f"  {MEANING[d.verdict]}", ""]

    def fmt(value: Optional[float]) -> str:
        return "-" if value is None else f"{value:.4f}"

    lines.append(f"  error ({d.error_name}):  train {fmt(d.train_error)}   validation {fmt(d.validation_error)}"
                 f"   test {fmt(d.test_error)}")
    source = {"flag": "from --baseline-error", "config": "from diagnose.baseline_error",
              "default": "unknown, taken as 0; set --baseline-error or diagnose.baseline_error"}[d.baseline_source]
    lines.append(f"  baseline error   {d.baseline_error:.4f}  ({source})")
    bias_state = ("not judged" if d.bias_tolerance is None else
                  "HIGH" if d.verdict in ("high_bias", "high_bias_and_variance") else "low")
    bias_limit = "" if d.bias_tolerance is None else f", high above {d.bias_tolerance:.4g}"
    lines.append(f"  avoidable bias   {fmt(d.avoidable_bias)}  (train - baseline{bias_limit}): {bias_state}")
    if d.variance is not None:
        var_state = "HIGH" if d.verdict in ("high_variance", "high_bias_and_variance") else "low"
        lines.append(f"  variance         {fmt(d.variance)}  (validation - train, high above "
                     f"{d.variance_tolerance:.4g}): {var_state}")
    if d.mismatch is not None:
        lines.append(f"  mismatch         {fmt(d.mismatch)}  (test - validation)")
    if d.remedies:
        lines += ["", "Remedies (from the course):"] + [f"  - {r}" for r in d.remedies]
    if d.notes:
        lines += ["", "Notes:"]
        for note in d.notes:
            lines.append(f"  * {note.message}")
            lines += [f"      - {r}" for r in note.remedies]
    return "\n".join(lines)
