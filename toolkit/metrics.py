"""Which way is better for a metric: the one rule for early stopping, best epochs, objectives, compare and report.

Keras decides an ``auto`` direction from the metric object's ``_direction`` ("up" or "down"); ktk decides it
from the name alone, so that commands which never import Keras (compare, report, validate) agree with what
Keras restores. The table below is Keras' own directions for its built-in metrics and losses (a test
checks it against every ``keras.metrics`` class); names outside it fall back to words in the name.
Early stopping is always given the mode this module picks, so Keras and ktk can never disagree.
"""

from __future__ import annotations

import math
import re
from typing import Iterable, Optional, Sequence

MIN = "min"
MAX = "max"

# Keras' own directions ("up" -> max, "down" -> min) by metric name, with Keras' string aliases.
_KNOWN = {
    **dict.fromkeys((
        "accuracy", "acc", "auc", "binary_accuracy", "binary_io_u", "categorical_accuracy", "concordance_correlation",
        "cosine_similarity", "f1_score", "fbeta_score", "io_u", "iou", "mean_io_u", "one_hot_io_u",
        "one_hot_mean_io_u", "pearson_correlation", "precision", "precision_at_recall", "r2_score", "recall",
        "recall_at_precision", "sensitivity_at_specificity", "sparse_categorical_accuracy",
        "sparse_top_k_categorical_accuracy", "specificity_at_sensitivity", "top_k_categorical_accuracy",
        "true_positives", "true_negatives",
    ), MAX),
    **dict.fromkeys((
        "loss", "binary_crossentropy", "binary_focal_crossentropy", "categorical_crossentropy",
        "categorical_focal_crossentropy", "sparse_categorical_crossentropy", "categorical_hinge", "hinge",
        "squared_hinge", "kl_divergence", "kld", "logcosh", "log_cosh", "huber", "poisson", "mean_absolute_error",
        "mae", "mean_absolute_percentage_error", "mape", "mean_squared_error", "mse",
        "mean_squared_logarithmic_error", "msle", "root_mean_squared_error", "rmse", "false_negatives",
        "false_positives", "ctc", "dice", "tversky",
    ), MIN),
}
_MIN_WORDS = ("loss", "error", "crossentropy", "hinge", "divergence", "false_")
_MAX_WORDS = ("acc", "auc", "precision", "recall", "f1", "fbeta", "r2", "iou", "io_u", "correlation",
              "similarity", "true_")
_PREFIXES = ("val_", "validation.", "train.", "test.")


def base_name(metric: str) -> str:
    """`metric` without its split prefix (``val_``, ``validation.``...) or Keras' ``_1`` instance suffix."""
    name = metric.strip().lower()
    for prefix in _PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix):]
            break
    if name not in _KNOWN:
        name = re.sub(r"_\d+$", "", name)
    return name


def direction_of(metric: str) -> Optional[str]:
    """``"min"`` or ``"max"`` for a metric or loss name (``val_loss``: min; ``val_precision``: max), else None."""
    name = base_name(metric)
    if name in _KNOWN:
        return _KNOWN[name]
    if any(word in name for word in _MIN_WORDS):
        return MIN
    if any(word in name for word in _MAX_WORDS):
        return MAX
    return None


def resolve_mode(metric: str, mode: str = "auto") -> str:
    """`mode` (``min``/``max``), or for ``auto`` the direction of `metric` (``min`` when the name says nothing)."""
    if mode in (MIN, MAX):
        return mode
    return direction_of(metric) or MIN


def best_index(values: Sequence[float], direction: str) -> int:
    """The 0-based index of the best finite value (the first of equals), 0 when there is none."""
    worst = -math.inf if direction == MAX else math.inf
    cleaned = [v if isinstance(v, (int, float)) and math.isfinite(v) else worst for v in values]
    if not cleaned:
        return 0
    pick = max if direction == MAX else min
    return cleaned.index(pick(cleaned))


def is_better(a: float, b: float, direction: str) -> bool:
    """Whether `a` beats `b` (NaN never wins)."""
    if not math.isfinite(a):
        return False
    if not math.isfinite(b):
        return True
    return a > b if direction == MAX else a < b


def known_names() -> Iterable[str]:
    """Names with a direction from Keras' own table."""
    return sorted(_KNOWN)
