"""Gradient checking: backpropagation's gradients against centered finite differences, as the course teaches.

The config's model is built in float64 with dropout disabled (it makes the cost random), and the full cost
(the loss plus the model's regularization penalties) is evaluated on a small batch of training examples,
in training mode (so batch normalization uses the batch's statistics, as when training). For every
parameter theta_i::

    g_num_i = (J(theta + eps e_i) - J(theta - eps e_i)) / (2 eps)

and the relative difference ``||g_auto - g_num|| / (||g_auto|| + ||g_num||)`` is reported overall and per
layer: below 1e-7 passes, up to 1e-5 warns, above fails. eps is 1e-7, scaled by the cube root of the cost
when that is above 1 (round-off grows with the cost). The check is made at the initialized weights,
with parameters that are exactly 0 (biases) moved by a small random amount so that no ReLU sits on its kink.

A big model is not checked whole by default: the check of one parameter costs two evaluations of the
whole model, so :func:`gradient_check` compares at most ``max_parameters`` parameters, a sample of every
weight tensor drawn with the config's seed (small tensors whole, the rest spread evenly over the larger
ones), and reports how many of how many it compared. The default, "auto", is 1,000 parameters, fewer for
a model of over 200,000 (down to 100: the work, parameters compared times the model's size, stays about
the same); ``max_parameters=None`` compares every one.

The cost is evaluated *statelessly* (Keras' ``StatelessScope``): the weights are substituted by tensors,
so nothing in the model (batch-norm moving statistics, random-generator state, loss trackers) changes.
:func:`model_cost` is also what the gradient monitor (``toolkit.lessons.monitor``) uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np

from toolkit.errors import UserError

PASS_BELOW = 1e-7
WARN_UP_TO = 1e-5
EPSILON = 1e-7
BLOCK = 256  # perturbed parameters evaluated per call (fewer when a block would hold too much memory)
BLOCK_BYTES = 256 * 2**20  # memory a block of perturbed weight vectors and activations may take
DEFAULT_MAX_PARAMETERS = 1000  # parameters compared by default (two cost evaluations each) ...
DEFAULT_WORK = 200_000_000  # ... fewer in a big model: compared parameters x model parameters stays below this
MIN_DEFAULT_PARAMETERS = 100  # ... but never fewer than this
PROGRESS_EVERY_S = 2.0  # a progress line at most this often during a long check
ZERO_JITTER = 0.05  # standard deviation of the value given to parameters that are exactly 0

# Layers whose training-mode output is random, and the config argument that turns the randomness off.
RANDOM_LAYERS = {
    "Dropout": "rate", "SpatialDropout1D": "rate", "SpatialDropout2D": "rate", "SpatialDropout3D": "rate",
    "AlphaDropout": "rate", "GaussianDropout": "rate", "GaussianNoise": "stddev",
}


def status_for(difference: float) -> str:
    """pass below 1e-7, warn up to 1e-5, fail above (and fail for NaN)."""
    if not np.isfinite(difference):
        return "fail"
    return "pass" if difference < PASS_BELOW else "warn" if difference <= WARN_UP_TO else "fail"


@dataclass
class LayerCheck:
    """The check of one layer's parameters."""

    layer: str
    difference: float
    status: str
    checked: int  # parameters compared
    parameters: int  # trainable parameters in the layer
    grad_norm: float  # ||g_auto|| over the checked parameters

    def to_dict(self) -> Dict[str, Any]:
        """Plain data for ``--format json`` (a figure that is not finite is null: JSON has no NaN)."""
        return {"layer": self.layer, "difference": _json_number(self.difference), "status": self.status,
                "checked": self.checked, "parameters": self.parameters, "grad_norm": _json_number(self.grad_norm)}


@dataclass
class GradcheckResult:
    """The overall relative difference, its status, and the per-layer checks (in model order)."""

    difference: float
    status: str  # pass | warn | fail
    layers: List[LayerCheck]
    samples: int
    epsilon: float
    cost: float
    checked: int
    parameters: int
    model_name: str = ""
    notes: List[str] = field(default_factory=list)

    @property
    def worst(self) -> List[LayerCheck]:
        """Layers from the largest difference down."""
        return sorted(self.layers, key=lambda c: (-c.difference if np.isfinite(c.difference) else -np.inf))

    @property
    def failing(self) -> List[LayerCheck]:
        return [c for c in self.layers if c.status == "fail"]

    @property
    def suspect(self) -> Optional[str]:
        """The failing layer closest to the output: backpropagation passes its error on to the earlier
        layers, so the wrong gradient most likely starts there."""
        failing = self.failing
        return failing[-1].layer if failing else None

    def to_dict(self) -> Dict[str, Any]:
        """Plain data for ``--format json`` (a figure that is not finite is null: JSON has no NaN)."""
        return {"status": self.status, "difference": _json_number(self.difference), "suspect": self.suspect,
                "samples": self.samples, "epsilon": _json_number(self.epsilon), "cost": _json_number(self.cost),
                "checked": self.checked, "parameters": self.parameters,
                "layers": [c.to_dict() for c in self.layers], "notes": list(self.notes)}


def _json_number(value: float) -> Optional[float]:
    return float(value) if np.isfinite(value) else None


def format_gradcheck(result: GradcheckResult, top: int = 5) -> str:
    """The text report printed by ``ktk gradcheck``."""
    lines = [
        f"Gradient check of {result.model_name or 'the model'}: {result.status.upper()}  "
        f"(relative difference {result.difference:.3e}; pass < {PASS_BELOW:g}, warn <= {WARN_UP_TO:g})",
        f"  {result.checked:,} of {result.parameters:,} parameters compared on {result.samples} training "
        f"examples, float64, eps {result.epsilon:g}, cost {result.cost:.6g} (loss + regularization)",
        "",
        "  worst layers:",
    ]
    width = max(len(c.layer) for c in result.layers) if result.layers else 5
    for check in result.worst[:top]:
        lines.append(f"    {check.layer:<{width}}  {check.difference:.3e}  {check.status.upper():<4}  "
                     f"({check.checked:,} of {check.parameters:,} parameters)")
    if result.suspect:
        earlier = [c.layer for c in result.failing[:-1]]
        lines += ["", f"  The wrong gradient most likely starts in layer {result.suspect!r}"
                  + (f" (backpropagation carries its error into {', '.join(earlier)})" if earlier else "")
                  + ": check its backward pass (custom gradients, non-differentiable operations)."]
    lines += [f"  note: {note}" for note in result.notes]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------- the cost


def model_cost(model: Any, trainable_values: Sequence[Any], x: Any, y: Any, training: bool = True) -> Any:
    """The compiled model's full cost (loss + regularization losses) with substituted weight values.

    Nothing in `model` changes: the call runs in a Keras ``StatelessScope`` mapping every trainable
    variable to the given value and every other variable (moving statistics, seeds, metric state) to its
    current value. Differentiate with ``tf.GradientTape`` by watching `trainable_values`.
    """
    import keras

    mapping = list(zip(model.trainable_variables, trainable_values))
    mapping += [(v, v.value) for v in model.non_trainable_variables]
    mapping += [(v, v.value) for v in model.metrics_variables]
    with keras.StatelessScope(state_mapping=mapping, collect_losses=True):
        y_pred = model(x, training=training)
        return model.compute_loss(x=x, y=y, y_pred=y_pred, training=training)


def layer_of_variables(model: Any) -> List[str]:
    """The name of the (top-level) layer owning each trainable variable, in model.trainable_variables order."""
    owner: Dict[int, str] = {}
    for layer in model.layers:
        for variable in layer.trainable_variables:
            owner.setdefault(id(variable), layer.name)
    return [owner.get(id(v), str(getattr(v, "path", v.name)).split("/")[0]) for v in model.trainable_variables]


# ----------------------------------------------------------------------------------- the check


def without_dropout(config: Any) -> Any:
    """The config with every dropout (and noise) rate set to 0 and no ``data.augment``: they make the cost random."""
    values: Dict[str, Any] = {"model.dropout": 0.0}
    if getattr(config.data, "augment", None):  # random augmentation layers (images): off, as dropout
        values["data.augment"] = []
    for i, layer in enumerate(config.model.layers or []):
        if layer.class_name is None:
            if layer.dropout:
                values[f"model.layers.{i}.dropout"] = 0.0
        elif layer.class_name in RANDOM_LAYERS:
            values[f"model.layers.{i}.config.{RANDOM_LAYERS[layer.class_name]}"] = 0.0
    return config.with_values(values)


def gradient_check(config: Any, samples: int = 8, epsilon: Optional[float] = None,
                   max_parameters_per_layer: Optional[int] = None, data: Any = None,
                   max_parameters: Union[int, str, None] = "auto",
                   progress: Optional[Callable[[str], None]] = None) -> GradcheckResult:
    """Checks the model's backpropagation gradients against centered finite differences.

    Args:
        config: a :class:`toolkit.config.Config`; its model is built in float64 with dropout off.
        samples: training examples in the batch the cost is evaluated on.
        epsilon: the finite-difference step; default 1e-7 (the course's), scaled up by the cube root of
            the cost when the cost is above 1: the round-off error of a difference grows with the cost,
            and the cube root balances it against the truncation error of centered differences.
        max_parameters_per_layer: compare at most this many parameters per layer; None: no limit per layer.
        data: an already loaded :class:`toolkit.data.Dataset`; loaded from the config when None.
        max_parameters: compare at most this many parameters in all (at least one of every weight tensor);
            "auto" (the default): :func:`default_max_parameters` of the model's size; None: every parameter,
            as the course does. A model with more is checked on a sample of every weight tensor, drawn
            with the config's seed.
        progress: called with a line saying how many of how many parameters are compared before the
            check starts, and with a progress line (and the time left) every few seconds of a long check.

    Returns:
        A :class:`GradcheckResult`; its ``status`` is "fail" when the overall difference exceeds 1e-5.

    Raises:
        UserError: a bad config or argument, no training examples, or a cost that is random in training mode.
    """
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise UserError(where="--samples", expected="a positive number of examples", received=samples)
    for where, value in (("--max-per-layer", max_parameters_per_layer),
                         ("--max-params", None if max_parameters == "auto" else max_parameters)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise UserError(where=where, expected="a positive number of parameters", received=value)
    if epsilon is not None and (isinstance(epsilon, bool) or not isinstance(epsilon, (int, float))
                                or not 0 < epsilon < 1):
        raise UserError(where="epsilon", expected="a finite-difference step in (0, 1)", received=epsilon)
    import keras
    import tensorflow as tf

    from toolkit.data import load_data
    from toolkit.training import prepare_model

    # float64 whatever training.precision says: a mixed policy would replace it while the model is built
    checked_config = without_dropout(config).with_values({"training.precision": "float32"})
    if data is None:  # an images folder: read from its files (cache: none), not all held for a few examples
        data = load_data(checked_config.with_values({"data.cache": "none"})
                         if checked_config.data.source == "images" else checked_config)
    x_np, y_np = training_sample(data, samples)
    if len(y_np) == 0:
        raise UserError("the training split is empty", where="data.split")
    previous_floatx, previous_policy = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    try:
        model = prepare_model(checked_config, data, seed=config.seed)
        x = tf.constant(np.asarray(x_np, dtype=np.float64))
        y = tf.constant(y_np if data.task == "multiclass" else y_np.astype(np.float64))
        limits = _Limits(max_parameters, max_parameters_per_layer)
        return _check(model, x, y, int(x.shape[0]), epsilon, limits, config.seed, progress)
    finally:
        keras.config.set_floatx(previous_floatx)
        keras.config.set_dtype_policy(previous_policy)


def training_sample(data: Any, samples: int) -> Any:
    """The first `samples` training examples (x, y) as arrays, of any prepared data: a ``Dataset``'s arrays, or the
    first batches of a pipeline's training split in order (streamed tables, image files: nothing else is read)."""
    from toolkit.data import in_memory

    if in_memory(data):
        return data.x_train[:samples], data.y_train[:samples]
    xs, ys, count = [], [], 0
    pipeline = data.split("train", samples)
    for batch in (pipeline if hasattr(pipeline, "as_numpy_iterator") else iter(pipeline)):
        x, y = np.asarray(batch[0]), np.asarray(batch[1])
        xs.append(x)
        ys.append(y)
        count += len(y)
        if count >= samples:
            break
    if not ys:
        return np.zeros((0, *data.input_shape)), np.zeros((0,))
    return np.concatenate(xs)[:samples], np.concatenate(ys)[:samples]


@dataclass
class _Limits:
    """How many parameters are compared: in all, and per layer (None: no limit)."""

    total: Union[int, str, None]  # "auto": default_max_parameters of the model's size
    per_layer: Optional[int]


def default_max_parameters(parameters: int) -> int:
    """How many of a model's `parameters` gradcheck compares by default: 1,000, fewer for a model of over
    200,000 parameters (each comparison evaluates the whole model twice), but at least 100."""
    return int(max(MIN_DEFAULT_PARAMETERS, min(DEFAULT_MAX_PARAMETERS, DEFAULT_WORK // max(parameters, 1))))


def spread(sizes: Sequence[int], cap: Optional[int]) -> List[int]:
    """How many entries to take from containers of these sizes: at most `cap` in all (None: all of them).

    Small containers are taken whole and what they leave is shared evenly among the larger ones; every
    non-empty container gets at least one entry, so the total exceeds `cap` only when there are more
    containers than `cap`.
    """
    sizes = [int(size) for size in sizes]
    if cap is None or sum(sizes) <= cap:
        return sizes
    counts = [0] * len(sizes)
    left = cap
    order = sorted(range(len(sizes)), key=lambda i: sizes[i])
    for rank, i in enumerate(order):
        counts[i] = min(sizes[i], max(1, left // (len(order) - rank)))
        left = max(0, left - counts[i])
    return counts


def _sample(sizes: Sequence[int], owners: Sequence[str], limits: _Limits, rng: Any) -> List[np.ndarray]:
    """The flat indices compared in each weight tensor: all of them, or a seeded sample within the limits."""
    counts = list(sizes)
    if limits.per_layer is not None:
        for layer in dict.fromkeys(owners):
            tensors = [i for i, owner in enumerate(owners) if owner == layer]
            for i, count in zip(tensors, spread([sizes[i] for i in tensors], limits.per_layer)):
                counts[i] = count
    counts = spread(counts, default_max_parameters(sum(sizes)) if limits.total == "auto" else limits.total)
    chosen, offset = [], 0
    for size, count in zip(sizes, counts):
        if count == size:
            chosen.append(np.arange(offset, offset + size, dtype=np.int64))
        else:
            chosen.append(offset + np.sort(rng.choice(size, size=count, replace=False)).astype(np.int64))
        offset += size
    return chosen


def _activation_size(model: Any) -> int:
    """Values one example produces in the model's layers (for the memory of a block of evaluations)."""
    total = 0
    for layer in model.layers:
        try:
            shape = layer.output.shape
        except (AttributeError, ValueError):  # a layer used twice, or not built symbolically
            continue
        total += int(np.prod([d or 1 for d in shape[1:]]))
    return total


def _check(model: Any, x: Any, y: Any, samples: int, epsilon: Optional[float], limits: _Limits, seed: int,
           progress: Optional[Callable[[str], None]] = None) -> GradcheckResult:
    import tensorflow as tf

    variables = model.trainable_variables
    if not variables:
        raise UserError("the model has no trainable parameters to check", where="model")
    shapes = [tuple(v.shape) for v in variables]
    sizes = [int(np.prod(s)) for s in shapes]
    if any(v.dtype != "float64" for v in variables):
        raise UserError("a layer's weights are not float64 (a custom layer fixing its dtype?)",
                        where="model.layers", received=[v.path for v in variables if v.dtype != "float64"])
    theta0 = np.concatenate([np.asarray(v.numpy(), dtype=np.float64).ravel() for v in variables])
    # Parameters that are exactly 0 (biases at initialization) are moved by a small random amount: with a
    # zero bias, a unit whose inputs are all 0 (dead ReLUs before it) sits exactly on the ReLU's kink, where
    # finite differences and the gradient legitimately disagree. Correct gradients agree at any point.
    rng = np.random.default_rng(seed)
    zeros = theta0 == 0.0
    theta0[zeros] = rng.normal(0.0, ZERO_JITTER, size=int(zeros.sum()))

    def unflatten(theta: Any) -> List[Any]:
        return [tf.reshape(part, shape) for part, shape in zip(tf.split(theta, sizes), shapes)]

    @tf.function(input_signature=[tf.TensorSpec([len(theta0)], tf.float64)], reduce_retracing=True)
    def cost(theta: Any) -> Any:
        return tf.cast(model_cost(model, unflatten(theta), x, y, training=True), tf.float64)

    @tf.function(input_signature=[tf.TensorSpec([len(theta0)], tf.float64)], reduce_retracing=True)
    def cost_and_gradient(theta: Any) -> Any:
        with tf.GradientTape() as tape:
            tape.watch(theta)
            value = cost(theta)
        return value, tape.gradient(value, theta)

    value, gradient = cost_and_gradient(tf.constant(theta0))
    j0 = float(value.numpy())
    if epsilon is None:
        epsilon = EPSILON * max(1.0, abs(j0)) ** (1 / 3) if np.isfinite(j0) else EPSILON
    if gradient is None:
        raise UserError("the cost does not depend on the model's weights", where="model")
    g_auto = gradient.numpy()
    if float(cost(tf.constant(theta0)).numpy()) != float(cost(tf.constant(theta0)).numpy()):
        raise UserError("the cost differs between two evaluations with the same weights: a layer is random in "
                        "training mode (dropout or noise that gradcheck could not switch off)",
                        where="model.layers")

    owners = layer_of_variables(model)
    per_tensor = _sample(sizes, owners, limits, rng)
    layer_order: List[str] = list(dict.fromkeys(owners))
    chosen = {layer: np.concatenate([idx for idx, owner in zip(per_tensor, owners) if owner == layer])
              for layer in layer_order}
    totals = {layer: sum(size for size, owner in zip(sizes, owners) if owner == layer) for layer in layer_order}
    every_chosen = np.concatenate([chosen[layer] for layer in layer_order]).astype(np.int32)
    if progress is not None:
        progress(f"gradcheck: comparing {len(every_chosen):,} of {len(theta0):,} parameters"
                 + ("" if len(every_chosen) == len(theta0) else " (a seeded sample of every weight tensor)"))

    # J(theta + eps e_i) and J(theta - eps e_i) for a block of parameters per call (vectorized over the
    # block), instead of two calls into TensorFlow per parameter. Each evaluation in a block holds a
    # perturbed copy of every weight and the model's activations: the block is as large as memory allows.
    per_evaluation = 2 * 8 * (len(theta0) + samples * _activation_size(model))
    block_size = int(max(1, min(BLOCK, BLOCK_BYTES // max(per_evaluation, 1))))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int32)], reduce_retracing=True)
    def centered_differences(indices: Any) -> Any:
        base = tf.constant(theta0)

        def shifted(step: Any) -> Any:
            return tf.vectorized_map(
                lambda i: cost(base + step * tf.one_hot(i, len(theta0), dtype=tf.float64)), indices)

        return (shifted(tf.constant(epsilon, tf.float64)) - shifted(tf.constant(-epsilon, tf.float64))) / (
            2 * epsilon)

    g_num = np.full_like(theta0, np.nan)
    last_line = time.monotonic()
    first_done, first_time = 0, last_line  # the rate is measured after the first block (which is traced)
    for start in range(0, len(every_chosen), block_size):
        block = every_chosen[start:start + block_size]
        g_num[block] = centered_differences(tf.constant(block)).numpy()
        now, done = time.monotonic(), start + len(block)
        if start == 0:
            first_done, first_time = done, now
        elif progress is not None and now - last_line >= PROGRESS_EVERY_S and done < len(every_chosen):
            left = (now - first_time) / (done - first_done) * (len(every_chosen) - done)
            progress(f"gradcheck: {done:,} of {len(every_chosen):,} parameters compared "
                     f"({done / len(every_chosen):.0%}), about {_duration(left)} left")
            last_line = now

    # Finite differences cannot resolve differences below their round-off error (about machine epsilon
    # times the cost, over eps, per parameter): a layer whose gradients differ by no more than that passes.
    floor_per_parameter = 10 * np.finfo(np.float64).eps * max(abs(j0), 1.0) / epsilon
    checks = []
    notes = []
    with np.errstate(over="ignore", invalid="ignore"):  # a diverged cost: inf/NaN figures, reported as such
        for layer in layer_order:
            idx = chosen[layer]
            diff = relative_difference(g_auto[idx], g_num[idx])
            status = status_for(diff)
            absolute = float(np.linalg.norm(g_auto[idx] - g_num[idx]))
            if status != "pass" and np.isfinite(absolute) and absolute < floor_per_parameter * np.sqrt(len(idx)):
                status = "pass"
                notes.append(f"layer {layer!r}: backpropagation and finite differences differ by {absolute:.1e}, "
                             f"within the round-off of finite differences "
                             f"({floor_per_parameter * np.sqrt(len(idx)):.1e}); its relative difference "
                             f"({diff:.1e}) is not meaningful")
            checks.append(LayerCheck(layer, diff, status, int(len(idx)), int(totals[layer]),
                                     float(np.linalg.norm(g_auto[idx]))))
    every = every_chosen
    overall = relative_difference(g_auto[every], g_num[every])
    ranks = ["pass", "warn", "fail"]
    overall_status = max([status_for(overall)] + [c.status for c in checks], key=ranks.index)
    if len(every) < len(theta0):
        notes.append(_sampling_note(len(every), len(theta0), limits))
    if not np.isfinite(j0):
        notes.append(f"the cost is {j0} at the initial weights: the comparison is meaningless")
    return GradcheckResult(difference=overall, status=overall_status, layers=checks, samples=samples,
                           epsilon=epsilon, cost=j0, checked=int(len(every)), parameters=int(len(theta0)),
                           model_name=model.name, notes=notes)


def _sampling_note(checked: int, parameters: int, limits: _Limits) -> str:
    """The report's note on a check of a sample of the parameters: which limits chose how many."""
    said = []
    if limits.total is not None:
        total = default_max_parameters(parameters) if limits.total == "auto" else limits.total
        said.append(f"at most {total:,} in all" + (", the default for this size" if limits.total == "auto" else "")
                    + (", but one of every weight tensor" if checked > total else ""))
    if limits.per_layer is not None:
        said.append(f"{limits.per_layer:,} per layer")
    return (f"{checked:,} of {parameters:,} parameters compared: a sample of every weight tensor, drawn with the "
            f"config's seed ({' and '.join(said)}); --max-params N compares more, --all every one (two cost "
            f"evaluations each)")


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def relative_difference(g_auto: np.ndarray, g_num: np.ndarray) -> float:
    """||g_auto - g_num|| / (||g_auto|| + ||g_num||); 0 when both gradients are zero."""
    with np.errstate(over="ignore", invalid="ignore"):  # a diverged cost gives inf/NaN: reported, not warned
        numerator = float(np.linalg.norm(g_auto - g_num))
        denominator = float(np.linalg.norm(g_auto) + np.linalg.norm(g_num))
    if denominator == 0.0:
        return 0.0 if numerator == 0.0 else float("inf")
    return numerator / denominator
