"""Stacked packs: the members of a pack that share one layer structure, trained as one stack of kernels.

:class:`toolkit.sweeps.packed.PackedModel` runs each member's own Keras ``train_step``: exact and general, but
its graph grows with the pack (a member's step is several hundred graph ops; tracing them, about a millisecond
each, and running them one by one is most of a small pack's time). Members whose models are chains of
``Dense``, ``Activation`` and ``Dropout`` layers of the same depth and activations (after a shared input block:
``Normalization``, ``Flatten``), compiled with the same loss and metrics, with an SGD, Adam or RMSprop optimizer,
train here instead as **one** stack: every member's weights are one row of a single ``(members, parameters)``
variable, each ``Dense`` a batched matmul over the ``(members, inputs, units)`` view of it, and one optimizer
update steps all the rows. The graph is about the size of one member's, whatever the pack's size.

What may differ between the members of a stack, and how each stays the trial it is alone:

- **widths**: kernels are zero-padded to the widest member; the padded units are masked to zero before each
  next layer, so they never reach the real ones, get zero gradients and stay zero.
- **initial weights, initializers, seeds**: the stack starts from each member's own built model (built and
  seeded by :func:`toolkit.training.prepare_model`, as alone).
- **dropout**: each member's own ``Dropout`` layers (their rates, and the seeds their generators give) draw
  Keras' masks on the member's own shape, exactly as alone; a member without one has none.
- **L1/L2**: each member's own ``L1L2`` coefficients on its own kernel, added to its loss as Keras adds them.
- **optimizer, learning rate, schedule**: the class may differ (SGD, Adam, RMSprop: the rows of each class are
  updated together), so may every argument. Each member's learning rate is its own optimizer's (a constant, or
  any Keras schedule evaluated at the member's own step count).
- **epochs, early stopping, divergence**: a member that stops is masked out of the update (its weights and
  optimizer state stay as they were) without tracing again; a NaN in one row never reaches another.

The update rules are Keras 3's ``update_step`` of SGD, Adam and RMSprop written over rows, with one value per
member for each argument: the one thing Keras does not give. Losses and metrics are the members' own compiled
Keras functions, evaluated on the stacked predictions and reduced per member as Keras reduces them. Results
equal the trial alone within float32 round-off (a batched matmul sums in another order than a single one);
tests/test_packing.py checks it. Callbacks, logs and freezing are :class:`toolkit.sweeps.packed.PackedModel`'s.
"""

from __future__ import annotations

import functools
from typing import Any, Dict, List, Optional, Sequence, Tuple

# The optimizer classes a stack implements, by Keras class name.
OPTIMIZERS = ("SGD", "Adam", "RMSprop")
# Hidden activations a stack applies to padded rows: elementwise ones (a padded unit cannot change a real one,
# and the width stays). Others (softmax, glu, sparsemax...) are not stacked.
_ELEMENTWISE = ("linear", "relu", "relu6", "leaky_relu", "elu", "selu", "celu", "gelu", "silu", "swish", "mish",
                "sigmoid", "hard_sigmoid", "log_sigmoid", "tanh", "hard_tanh", "softplus", "softsign", "hard_silu",
                "hard_swish", "exponential", "squareplus", "sparse_plus", "tanh_shrink", "soft_shrink",
                "hard_shrink")
# Compiled loss functions that give one value per example (reduced over the last axis at most): run on a stack,
# each member's values are its own. (Dice, Tversky or Circle reduce over the whole batch: not stacked.)
_PER_EXAMPLE_LOSSES = ("sparse_categorical_crossentropy", "categorical_crossentropy", "binary_crossentropy",
                       "binary_focal_crossentropy", "categorical_focal_crossentropy", "mean_squared_error",
                       "mean_absolute_error", "mean_absolute_percentage_error", "mean_squared_logarithmic_error",
                       "huber", "log_cosh", "poisson", "kl_divergence", "hinge", "squared_hinge",
                       "categorical_hinge")
# Compiled metric functions that align their labels with the predictions themselves, as the stack aligns them
# for all members at once (others, e.g. poisson as a metric, broadcast unaligned labels: not stacked).
_SELF_ALIGNING_METRICS = ("sparse_categorical_accuracy", "binary_accuracy", "categorical_accuracy",
                          "mean_squared_error", "mean_absolute_error", "mean_absolute_percentage_error",
                          "mean_squared_logarithmic_error")
# Arguments of every Keras optimizer that a stack does not implement, with the value they must have.
_UNSUPPORTED_OPTIMIZER = {"clipnorm": None, "clipvalue": None, "global_clipnorm": None, "weight_decay": None,
                          "use_ema": False, "loss_scale_factor": None, "gradient_accumulation_steps": None}


class _Op:
    """One step of a stack's forward pass: a ``Dense`` position or an ``Activation`` (same in every member)."""

    def __init__(self, kind: str, count: int):
        self.kind = kind  # "dense" or "activation"
        self.layers: List[Any] = []  # each member's layer at this position
        self.dropouts: List[List[Any]] = [[] for _ in range(count)]  # each member's Dropout layers after it


class Plan:
    """How the members of one stack line up: the shared input block, then the stacked steps."""

    def __init__(self, shared: List[Any], ops: List[_Op], count: int):
        self.shared = shared  # the first member's input layers (Normalization, Flatten), applied to the batch
        self.ops = ops
        self.count = count


def _chain(model: Any) -> Optional[Tuple[List[Any], List[Tuple[str, Any]]]]:
    """A member model as (shared input layers, [(kind, layer)]) or None when a stack cannot hold it."""
    import keras

    shared: List[Any] = []
    steps: List[Tuple[str, Any]] = []
    if not model.trainable:
        return None
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if getattr(layer.dtype_policy, "name", None) != "float32" or not layer.trainable:
            return None  # a stack computes in float32 and trains every Dense
        if isinstance(layer, (keras.layers.Normalization, keras.layers.Flatten)) and not steps:
            shared.append(layer)
        elif isinstance(layer, keras.layers.Dense) and _plain_dense(layer):
            steps.append(("dense", layer))
        elif isinstance(layer, keras.layers.Activation):
            steps.append(("activation", layer))
        elif isinstance(layer, keras.layers.Dropout) and layer.noise_shape is None and \
                any(kind == "dense" for kind, _ in steps) and 0.0 <= float(layer.rate) < 1.0:
            steps.append(("dropout", layer))
        else:
            return None
    return (shared, steps) if steps and steps[-1][0] == "dense" else None


def _plain_dense(layer: Any) -> bool:
    import keras

    regularizer = layer.kernel_regularizer
    return (regularizer is None or type(regularizer) is keras.regularizers.L1L2) and \
        layer.bias_regularizer is None and layer.activity_regularizer is None and \
        layer.kernel_constraint is None and layer.bias_constraint is None and \
        not getattr(layer, "lora_enabled", False) and getattr(layer, "quantization_mode", None) is None and \
        len(layer.kernel.shape) == 2


def _activation_name(function: Any) -> str:
    import keras

    try:
        return str(keras.activations.serialize(function))
    except Exception:  # noqa: BLE001 - an activation Keras cannot name: compared by identity
        return repr(function)


def signature(model: Any) -> Optional[str]:
    """What members of one stack must share, as text: None when the model cannot be stacked. Needs the model
    built and compiled only (not run).

    Layer widths, dropout, regularization, initial weights and the optimizer's class and arguments may differ;
    the depth, the activations, the input block, the loss, the metrics and the output may not.
    """
    import keras

    chain = _chain(model)
    if chain is None or model.optimizer is None:
        return None
    shared, steps = chain
    optimizer = model.optimizer
    if type(optimizer).__name__ not in OPTIMIZERS or type(optimizer) is not getattr(keras.optimizers,
                                                                                      type(optimizer).__name__):
        return None
    if any(getattr(optimizer, key, default) != default for key, default in _UNSUPPORTED_OPTIMIZER.items()):
        return None
    if getattr(optimizer, "amsgrad", False) or getattr(optimizer, "epsilon", 1.0) <= 0:
        return None  # (epsilon 0: padded weights would divide 0 by 0)
    compiled = getattr(getattr(model, "_compile_config", None), "config", None) or {}
    if compiled.get("loss_weights") is not None or compiled.get("weighted_metrics") or len(model.outputs) != 1:
        return None
    # The loss and metrics as compiled (names): the same names on the same data resolve to the same Keras
    # functions; :func:`compiled_supported` checks what they resolved to once the first member has built them.
    parts: List[str] = [repr(tuple(model.inputs[0].shape[1:])), repr(compiled.get("loss")),
                        repr(compiled.get("metrics"))]
    for layer in shared:
        config = layer.get_config()
        config.pop("name", None)
        parts.append(f"{type(layer).__name__}{sorted(config.items())!r}")
    denses = [layer for kind, layer in steps if kind == "dense"]
    for kind, layer in steps:
        if kind == "dropout":
            continue
        if kind == "dense":
            last = layer is denses[-1]
            parts.append(f"dense({layer.use_bias},{_activation_name(layer.activation)},"
                         f"{layer.units if last else ''})")
            if not last and _activation_name(layer.activation) not in _ELEMENTWISE:
                return None
        else:
            name = _activation_name(layer.activation)
            if name not in _ELEMENTWISE:
                return None
            parts.append(f"activation({name})")
    parts.append(str(model.steps_per_execution))
    return "|".join(parts)


def compiled_supported(model: Any) -> bool:
    """Whether a member's built loss and metrics are ones a stack computes: one Keras loss function of each
    example, averaged over the batch (cross-entropies, mse, mae, huber...), and metrics that are means of such a
    function (accuracies, mse, mae...; not AUC)."""
    return _compiled_loss(model) is not None and _compiled_metrics(model) is not None


def _compiled_loss(model: Any) -> Any:
    """The member's one compiled loss (a Keras loss function wrapper, averaged over the batch), or None."""
    from keras.src.losses.losses import LossFunctionWrapper  # not exported by Keras 3.15

    compiled = getattr(model, "_compile_loss", None)
    flat = getattr(compiled, "_flat_losses", None)
    if not flat or len(flat) != 1 or flat[0].loss_weights is not None or len(model.outputs) != 1:
        return None
    loss = flat[0].loss
    if not isinstance(loss, LossFunctionWrapper) or type(loss).call is not LossFunctionWrapper.call or \
            loss.reduction != "sum_over_batch_size" or getattr(loss.fn, "__name__", None) not in _PER_EXAMPLE_LOSSES:
        return None
    return loss


def _compiled_metrics(model: Any) -> Optional[List[Any]]:
    """The member's compiled metrics (each a Keras mean of a per-example function), or None."""
    import keras

    compiled = getattr(model, "_compile_metrics", None)
    if compiled is None:
        return []
    if any(getattr(compiled, "_flat_weighted_metrics", None) or []):
        return None
    lists = [m for m in (getattr(compiled, "_flat_metrics", None) or []) if m]  # one MetricsList per output
    metrics = [m for metrics_list in lists for m in getattr(metrics_list, "metrics", [None])]
    wrapper = keras.metrics.MeanMetricWrapper
    if not all(isinstance(m, wrapper) and type(m).update_state is wrapper.update_state and
               getattr(m._fn, "__name__", None) in _SELF_ALIGNING_METRICS for m in metrics):
        return None
    if len({m.name for m in metrics} | {"loss"}) != len(metrics) + 1:  # Keras renames repeated names
        return None
    return metrics


def plan(models: Sequence[Any]) -> Plan:
    """The stack of `models` (members of one signature, see :func:`signature`)."""
    chains = [_chain(model) for model in models]
    shared = chains[0][0]
    ops: List[_Op] = []
    for kind, _ in chains[0][1]:
        if kind != "dropout":
            ops.append(_Op(kind, len(models)))
    for member, (_, steps) in enumerate(chains):
        position = -1
        for kind, layer in steps:
            if kind == "dropout":
                ops[position].dropouts[member].append(layer)
            else:
                position += 1
                ops[position].layers.append(layer)
    return Plan(shared, ops, len(models))


def group(signatures: Sequence[Optional[str]]) -> Tuple[List[List[int]], List[int]]:
    """Members (by their signatures, in order) that stack together (two or more of one signature), and the rest."""
    by_signature: Dict[str, List[int]] = {}
    for index, text in enumerate(signatures):
        if text is not None:
            by_signature.setdefault(text, []).append(index)
    stacks = [indices for indices in by_signature.values() if len(indices) > 1]
    stacked = {i for indices in stacks for i in indices}
    return stacks, [i for i in range(len(signatures)) if i not in stacked]


def stacked_size(plan_: Plan) -> Tuple[int, int]:
    """(weights, activations per example) of one member of the stack: the padded sizes every member takes."""
    weights = activations = 0
    for op in plan_.ops:
        if op.kind == "dense":
            rows = max(int(layer.kernel.shape[0]) for layer in op.layers)
            units = max(int(layer.kernel.shape[1]) for layer in op.layers)
            weights += rows * units + (units if op.layers[0].use_bias else 0)
            activations += units
    return weights, activations


@functools.lru_cache(maxsize=None)
def stacked_model_class() -> type:
    """The Keras model class of a stack (built on first use: Keras is imported lazily)."""
    import keras
    import numpy as np
    import tensorflow as tf
    from keras.src.losses.loss import squeeze_or_expand_to_same_rank

    from toolkit.sweeps.packed import packed_model_class

    class StackedPack(packed_model_class()):
        """A pack whose members train as one stack of kernels (see the module's docstring).

        Every member's weights are one row of a single ``(members, parameters)`` variable (each Dense's kernel and
        bias, zero-padded to the widest member, are views of it), so that the optimizer is a handful of ops for
        the whole stack, with one value per member for each hyperparameter.

        Args:
            plan: the members' layers, lined up (:func:`plan`).
            members, epochs, callbacks, steps_per_epoch: as :class:`toolkit.sweeps.packed.PackedModel`'s (every
                member reads the same data set).
            verbose: Keras' progress is shown (logs then hold each member's values, as PackedModel's do).
        """

        def __init__(self, plan: Plan, members: Sequence[Any], epochs: Sequence[int], callbacks: Sequence[Any],
                     steps_per_epoch: int, verbose: int = 0):
            super().__init__(members, [0] * len(members), epochs, callbacks, steps_per_epoch)
            count = len(members)
            optimizers = [member.optimizer for member in members]
            denses, sizes, initial = [], [], []
            for op in plan.ops:
                if op.kind != "dense":
                    continue
                rows = max(int(layer.kernel.shape[0]) for layer in op.layers)
                units = max(int(layer.kernel.shape[1]) for layer in op.layers)
                kernel = np.zeros((count, rows, units), np.float32)
                bias = np.zeros((count, units), np.float32)
                for k, layer in enumerate(op.layers):
                    r, u = layer.kernel.shape
                    kernel[k, :r, :u] = layer.kernel.numpy()
                    if layer.use_bias:
                        bias[k, :u] = layer.bias.numpy()
                widths = [int(layer.kernel.shape[0]) for layer in op.layers]
                mask = None  # which input rows are real for each member (None: all are)
                if len(set(widths)) > 1:
                    mask = np.zeros((count, 1, rows), np.float32)
                    for k, r in enumerate(widths):
                        mask[k, :, :r] = 1.0
                regularizers = [(0.0, 0.0) if layer.kernel_regularizer is None else
                                (float(layer.kernel_regularizer.l1), float(layer.kernel_regularizer.l2))
                                for layer in op.layers]
                denses.append({"op": op, "shape": (rows, units), "bias": op.layers[0].use_bias,
                               "mask": None if mask is None else tf.constant(mask),
                               "l1": [r[0] for r in regularizers], "l2": [r[1] for r in regularizers]})
                sizes.append(rows * units)
                initial.append(kernel.reshape(count, -1))
                if op.layers[0].use_bias:
                    sizes.append(units)
                    initial.append(bias)
            # Each member's Dropout layers (rate in (0, 1): the ones that draw a seed), their seeds in one variable.
            dropouts = [(p, k, layer) for p, op in enumerate(plan.ops) for k in range(count)
                        for layer in op.dropouts[k] if 0.0 < float(layer.rate) < 1.0]
            seeds = np.stack([layer.seed_generator.state.numpy() for _, _, layer in dropouts]) if dropouts else None
            kinds = [type(optimizer).__name__ for optimizer in optimizers]
            names = ["loss"] + [metric.name for metric in _compiled_metrics(members[0])]
            state = {
                "plan": plan, "loss": _compiled_loss(members[0]), "metrics": _compiled_metrics(members[0]),
                "verbose": verbose,
                "names": names, "optimizers": optimizers, "kinds": kinds, "denses": denses, "sizes": sizes,
                "dropouts": dropouts,
                "seeds": None if seeds is None else tf.Variable(seeds, trainable=False, name="dropout_seeds"),
                "params": tf.Variable(np.concatenate(initial, axis=1), trainable=False, name="stacked_params"),
                "steps": tf.Variable([int(o.iterations.numpy()) for o in optimizers], dtype=tf.int64,
                                     trainable=False, name="steps"),
                "active": tf.Variable(np.ones(count, bool), trainable=False, name="active"),
                "totals": tf.Variable(np.zeros((len(names), count), np.float32), trainable=False, name="totals"),
                "counts": tf.Variable(np.zeros((len(names), count), np.float32), trainable=False, name="counts"),
            }
            classes = {kind: [k for k in range(count) if kinds[k] == kind] for kind in OPTIMIZERS if kind in kinds}
            width = int(state["params"].shape[1])
            state["classes"] = {kind: tf.constant(rows, tf.int32) for kind, rows in classes.items()}
            state["slots"] = {kind: {name: tf.Variable(tf.zeros([len(rows), width]), trainable=False, name=name)
                                     for name in _SLOTS[kind]} for kind, rows in classes.items()}
            state["hyper"] = {kind: _hyperparameters(kind, [optimizers[k] for k in rows])
                              for kind, rows in classes.items()}
            # A plain attribute (object.__setattr__): Keras must not track any of it as the pack's own layers,
            # metrics or weights (the members are tracked by PackedModel).
            object.__setattr__(self, "_stack", state)

        # -- the optimizer: each member's own class and arguments (Keras 3's update_step, over the stack)

        def _apply(self, grad: Any) -> None:
            """One step of every active member's optimizer. The members of each optimizer class are updated
            together, on their rows only (gathered, updated, put back in place)."""
            st = self._stack
            variable = st["params"]
            lr = tf.reshape(tf.stack([_learning_rate(o, st["steps"][k]) for k, o in enumerate(st["optimizers"])]),
                            [-1, 1])
            active = tf.reshape(st["active"], [-1, 1])
            steps = tf.reshape(tf.cast(st["steps"] + 1, tf.float32), [-1, 1])
            indices, updated = [], []
            for kind, rows in st["classes"].items():
                whole = len(rows) == st["plan"].count

                def take(tensor: Any, rows: Any = rows, whole: bool = whole) -> Any:
                    return tensor if whole else tf.gather(tensor, rows)

                old = take(variable)
                new = _UPDATES[kind](take(grad), old, take(lr), take(steps), st["slots"][kind], st["hyper"][kind],
                                     take(active))
                indices.append(rows)
                updated.append(tf.where(take(active), new, old))
            new_var = updated[0] if len(updated) == 1 else tf.dynamic_stitch(indices, updated)
            variable.assign(new_var)
            st["steps"].assign_add(tf.cast(st["active"], tf.int64))

        # -- the forward pass, losses and metrics

        def _forward(self, x: Any, training: bool) -> Any:
            st = self._stack
            pieces = iter(tf.split(st["params"], st["sizes"], axis=1))
            count = st["plan"].count
            seeds = None
            if training and st["seeds"] is not None:
                seeds = st["seeds"].read_value()
            h = x
            for layer in st["plan"].shared:
                h = layer(h)
            stacked = False
            kernels = []
            denses = iter(st["denses"])
            for position, op in enumerate(st["plan"].ops):
                if op.kind == "dense":
                    dense = next(denses)
                    rows, units = dense["shape"]
                    kernel = tf.reshape(next(pieces), [count, rows, units])
                    kernels.append((kernel, dense))
                    if dense["mask"] is not None:
                        h = h * dense["mask"]
                    h = tf.matmul(h, kernel)
                    stacked = True
                    if dense["bias"]:
                        h = h + tf.expand_dims(next(pieces), 1)
                    h = op.layers[0].activation(h)
                else:
                    h = op.layers[0].activation(h)
                if seeds is not None and stacked and any(op.dropouts):
                    h = self._dropout(h, position, seeds)
            if seeds is not None:
                st["seeds"].assign_add(tf.constant([[0, 1]] * len(st["dropouts"]), st["seeds"].dtype))
            return h, kernels

        def _dropout(self, h: Any, position: int, seeds: Any) -> Any:
            """Each member's own Dropout layers at a step of the stack, with the masks they draw alone.

            Keras' dropout (``tf.nn.experimental.stateless_dropout`` with the seed the layer's generator gives) is
            ``where(uniform(shape, seed) >= rate, x * (1 / (1 - rate)), 0)``. The uniform numbers are drawn per
            member, on its own shape (its real units: the padding is filled with ones), and the rest is one
            elementwise step for the stack, with each member's rate and scale (0 and 1 for members without one).
            """
            st = self._stack
            count, width = st["plan"].count, int(h.shape[-1])
            for layers in _dropout_rounds(st["dropouts"], position, count):
                shape = tf.shape(h)[1:]
                randoms, rates, scales = [], [], []
                for k in range(count):
                    if layers[k] is None:
                        randoms.append(tf.ones(shape, h.dtype))
                        rates.append(0.0)
                        scales.append(1.0)
                        continue
                    index, layer = layers[k]
                    units = _units_at(st["plan"], position, k)
                    seed = seeds[index]  # as Keras' _cast_seed makes it
                    if seed.dtype != tf.int32:
                        seed = tf.cast(tf.math.floormod(seed, tf.int32.max - 1), tf.int32)
                    random = tf.random.stateless_uniform(tf.stack([shape[0], units]), seed=seed, dtype=h.dtype)
                    if units < width:
                        random = tf.pad(random, [[0, 0], [0, width - units]], constant_values=1.0)
                    randoms.append(random)
                    rates.append(float(layer.rate))
                    scales.append(1 / (1 - float(layer.rate)))
                keep = tf.stack(randoms) >= tf.constant(rates, h.dtype, shape=[count, 1, 1])
                h = tf.where(keep, h * tf.constant(scales, h.dtype, shape=[count, 1, 1]), tf.zeros([], h.dtype))
            return h

        def _regularization(self, kernels: List[Tuple[Any, Dict[str, Any]]]) -> List[Any]:
            """Each Dense's L1/L2 penalty per member (Keras' L1L2 on the member's kernel)."""
            terms = []
            for kernel, dense in kernels:
                if not any(dense["l1"]) and not any(dense["l2"]):
                    continue
                term = tf.zeros([self._stack["plan"].count], tf.float32)
                if any(dense["l1"]):
                    term = term + tf.constant(dense["l1"], tf.float32) * tf.reduce_sum(tf.abs(kernel), axis=[1, 2])
                if any(dense["l2"]):
                    term = term + tf.constant(dense["l2"], tf.float32) * tf.reduce_sum(tf.square(kernel), axis=[1, 2])
                terms.append(term)
            return terms

        def _align(self, y: Any, y_pred: Any, dtype: Any) -> Any:
            """The labels as Keras aligns them with one member's predictions, repeated for every member."""
            y = tf.cast(y, dtype)
            y, _ = squeeze_or_expand_to_same_rank(y, y_pred[0])
            return tf.broadcast_to(tf.expand_dims(y, 0), tf.concat([[self._stack["plan"].count], tf.shape(y)], 0))

        def _member_losses(self, y: Any, y_pred: Any, sample_weight: Any, kernels: Any) -> Any:
            """Each member's total loss (its compiled loss plus regularization), as its own ``compute_loss``."""
            loss = self._stack["loss"]
            values = loss.fn(self._align(y, y_pred, loss.dtype), tf.cast(y_pred, loss.dtype), **loss._fn_kwargs)
            if sample_weight is not None:
                weight = tf.cast(sample_weight, values.dtype)
                _, weight = squeeze_or_expand_to_same_rank(values[0], weight)
                values = values * tf.expand_dims(weight, 0)
            axes = list(range(1, len(values.shape)))
            size = tf.cast(tf.reduce_prod(tf.shape(values)[1:]), values.dtype)
            terms = [tf.math.divide_no_nan(tf.reduce_sum(values, axis=axes), size)] + self._regularization(kernels)
            return terms[0] if len(terms) == 1 else tf.reduce_sum(tf.stack(terms), axis=0)

        def _update_metrics(self, losses: Any, y: Any, y_pred: Any, batch: Any) -> Dict[str, Any]:
            st = self._stack
            count = st["plan"].count
            batch = tf.cast(batch, tf.float32)
            totals, counts = [losses * batch], [tf.fill([count], batch)]
            for metric in st["metrics"]:
                values = tf.cast(metric._fn(self._align(y, y_pred, y_pred.dtype), y_pred, **metric._fn_kwargs),
                                 tf.float32)
                if len(values.shape) > 2:
                    values = tf.reduce_mean(values, axis=list(range(2, len(values.shape))))
                totals.append(tf.reduce_sum(values, axis=1))
                counts.append(tf.fill([count], tf.cast(tf.shape(values)[1], tf.float32)))
            st["totals"].assign_add(tf.stack(totals))
            st["counts"].assign_add(tf.stack(counts))
            results = tf.math.divide_no_nan(st["totals"], st["counts"])
            if self._stack["verbose"]:  # Keras' progress bar shows each member's values, "<k>:<name>"
                return {f"{k}:{name}": results[i, k] for k in range(count) for i, name in enumerate(st["names"])}
            return {"stacked": results}  # one log entry, the (metric, member) matrix: split by _member_logs

        def train_step(self, data):
            x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data[0])
            params = self._stack["params"]
            with tf.GradientTape() as tape:
                tape.watch(params)
                y_pred, kernels = self._forward(x, training=True)
                losses = self._member_losses(y, y_pred, sample_weight, kernels)
                total = tf.reduce_sum(losses)  # each member's row gets its own loss's gradient only
            self._apply(tape.gradient(total, params))
            return self._update_metrics(losses, y, y_pred, tf.shape(x)[0])

        def test_step(self, data):
            x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data[0])
            y_pred, kernels = self._forward(x, training=False)
            return self._update_metrics(self._member_losses(y, y_pred, sample_weight, kernels), y, y_pred,
                                        tf.shape(x)[0])

        def reset_metrics(self):
            for name in ("totals", "counts"):
                self._stack[name].assign(tf.zeros_like(self._stack[name]))

        def _member_logs(self, logs: Dict[str, Any]) -> List[Dict[str, float]]:
            if self._stack["verbose"]:
                return super()._member_logs(logs)
            out: List[Dict[str, float]] = [{} for _ in range(self._stack["plan"].count)]
            for key, prefix in (("stacked", ""), ("val_stacked", "val_")):
                if key in (logs or {}):
                    matrix = np.asarray(logs[key])
                    for i, name in enumerate(self._stack["names"]):
                        for k in range(len(out)):
                            out[k][prefix + name] = float(matrix[i, k])
            return out

        def _sync_members(self) -> None:
            """Each member's optimizer counts the steps it took (its learning rate in its history is read there)."""
            for optimizer, steps in zip(self._stack["optimizers"], self._stack["steps"].numpy()):
                optimizer.iterations.assign(int(steps))

        def _members_changed(self, evaluation: bool) -> None:
            """A member stopped or finished: masked out of the update, no new trace (all are evaluated)."""
            self._stack["active"].assign(np.isin(np.arange(self._stack["plan"].count), self.training_members))
            if not self.training_members:
                self.stop_training = True

    StackedPack.__module__ = __name__
    return StackedPack


# Each class's optimizer slots (one row per member of the class).
_SLOTS = {"SGD": ["momentum"], "Adam": ["m", "v"], "RMSprop": ["velocity", "momentum", "average"]}


def _hyperparameters(kind: str, optimizers: Sequence[Any]) -> Dict[str, Any]:
    """The arguments of one class's members, each a ``(members, 1)`` tensor. Python floats become float32 as in
    Keras (``1 - beta_1`` is computed in Python first)."""
    import numpy as np
    import tensorflow as tf

    def column(values: Sequence[Any], dtype: Any = tf.float32) -> Any:
        return tf.constant(np.asarray(values).reshape(-1, 1), dtype=dtype)

    def of(name: str) -> List[float]:
        return [float(getattr(o, name)) for o in optimizers]

    if kind == "SGD":
        return {"momentum": column(of("momentum")), "has_momentum": column([o.momentum != 0 for o in optimizers],
                                                                           tf.bool),
                "nesterov": column([bool(o.nesterov) for o in optimizers], tf.bool)}
    if kind == "Adam":
        return {"beta_1": column(of("beta_1")), "beta_2": column(of("beta_2")), "epsilon": column(of("epsilon")),
                "one_minus_beta_1": column([1 - b for b in of("beta_1")]),
                "one_minus_beta_2": column([1 - b for b in of("beta_2")])}
    return {"rho": column(of("rho")), "one_minus_rho": column([1 - r for r in of("rho")]),
            "epsilon": column(of("epsilon")), "momentum": column(of("momentum")),
            "has_momentum": column([o.momentum > 0 for o in optimizers], tf.bool),
            "centered": column([bool(o.centered) for o in optimizers], tf.bool)}


def _sgd(grad: Any, variable: Any, lr: Any, steps: Any, slots: Dict[str, Any], hyper: Dict[str, Any],
         active: Any) -> Any:
    """Keras 3's ``SGD.update_step`` for rows of members (each with its own momentum and Nesterov switch)."""
    import tensorflow as tf

    momentum = hyper["momentum"]
    m = tf.subtract(tf.multiply(slots["momentum"], momentum), tf.multiply(grad, lr))
    stepped = tf.where(hyper["nesterov"], variable + (m * momentum - grad * lr), variable + m)
    slots["momentum"].assign(tf.where(tf.logical_and(active, hyper["has_momentum"]), m, slots["momentum"]))
    return tf.where(hyper["has_momentum"], stepped, variable - tf.multiply(grad, lr))


def _adam(grad: Any, variable: Any, lr: Any, steps: Any, slots: Dict[str, Any], hyper: Dict[str, Any],
          active: Any) -> Any:
    """Keras 3's ``Adam.update_step`` (without amsgrad) for rows of members."""
    import tensorflow as tf

    beta_1_power = tf.pow(hyper["beta_1"], steps)
    beta_2_power = tf.pow(hyper["beta_2"], steps)
    alpha = lr * tf.sqrt(1 - beta_2_power) / (1 - beta_1_power)
    m = slots["m"] + tf.multiply(grad - slots["m"], hyper["one_minus_beta_1"])
    v = slots["v"] + tf.multiply(tf.square(grad) - slots["v"], hyper["one_minus_beta_2"])
    slots["m"].assign(tf.where(active, m, slots["m"]))
    slots["v"].assign(tf.where(active, v, slots["v"]))
    return variable - tf.divide(tf.multiply(m, alpha), tf.add(tf.sqrt(v), hyper["epsilon"]))


def _rmsprop(grad: Any, variable: Any, lr: Any, steps: Any, slots: Dict[str, Any], hyper: Dict[str, Any],
             active: Any) -> Any:
    """Keras 3's ``RMSprop.update_step`` for rows of members (each centered or not, with momentum or not)."""
    import tensorflow as tf

    rho, one_minus_rho, epsilon, centered = hyper["rho"], hyper["one_minus_rho"], hyper["epsilon"], hyper["centered"]
    velocity = tf.add(tf.multiply(rho, slots["velocity"]), tf.multiply(one_minus_rho, tf.square(grad)))
    average = tf.add(tf.multiply(rho, slots["average"]), tf.multiply(one_minus_rho, grad))
    denominator = tf.where(centered, velocity - tf.square(average) + epsilon, tf.add(velocity, epsilon))
    increment = tf.divide(tf.multiply(lr, grad), tf.sqrt(denominator))
    moment = tf.add(tf.multiply(hyper["momentum"], slots["momentum"]), increment)
    slots["velocity"].assign(tf.where(active, velocity, slots["velocity"]))
    slots["average"].assign(tf.where(tf.logical_and(active, centered), average, slots["average"]))
    slots["momentum"].assign(tf.where(tf.logical_and(active, hyper["has_momentum"]), moment, slots["momentum"]))
    return tf.where(hyper["has_momentum"], variable - moment, variable - increment)


_UPDATES = {"SGD": _sgd, "Adam": _adam, "RMSprop": _rmsprop}


def _learning_rate(optimizer: Any, step: Any) -> Any:
    """The member's learning rate at its step: its optimizer's own (``_get_current_learning_rate``), evaluated at
    `step` (the stack counts the steps; the optimizer's counter is set from it after each epoch)."""
    import keras
    import tensorflow as tf

    rate = optimizer._learning_rate
    if isinstance(rate, keras.optimizers.schedules.LearningRateSchedule):
        return tf.cast(rate(step), tf.float32)
    return tf.cast(optimizer._get_current_learning_rate(), tf.float32)


def _dropout_rounds(dropouts: Sequence[Tuple[int, int, Any]], position: int, count: int) -> List[List[Any]]:
    """The Dropout layers at a step of the stack, in rounds: the first of each member's, then its second..., each
    round a list with one ``(seed index, layer)`` or None per member."""
    rounds: List[List[Any]] = []
    seen = [0] * count
    for index, (p, k, layer) in enumerate(dropouts):
        if p != position:
            continue
        if seen[k] == len(rounds):
            rounds.append([None] * count)
        rounds[seen[k]][k] = (index, layer)
        seen[k] += 1
    return rounds


def _units_at(plan_: Plan, position: int, member: int) -> int:
    """The member's width at a step of the stack: that of the last Dense at or before it."""
    units = 0
    for op in plan_.ops[:position + 1]:
        if op.kind == "dense":
            units = int(op.layers[member].kernel.shape[1])
    return units
