"""The saved model: raw inputs in, the trained model's outputs out.

ktk trains the *core* model on inputs it prepared once, outside the graph (numbers as float64, text columns
one-hot encoded, then scaled with training-split statistics and cast to float32): that keeps training as
fast as plain Keras on arrays (benchmarks/serving.py measures the alternative, preprocessing layers inside
the training graph). What is saved as ``model.keras`` wraps the trained core in Keras' own preprocessing
layers, set to exactly those statistics and vocabularies, so the saved model takes the raw features:

- text column: ``StringLookup(vocabulary=training categories, output_mode="one_hot")``, its
  out-of-vocabulary slot dropped, so an unseen value encodes as none of the known categories (all zeros),
  as ktk's encoding does;
- every numeric feature and one-hot column, concatenated in training order, then ``Normalization`` with
  the training split's center and scale, in float64 like ktk's own scaling, then cast to float32.

The result reproduces ktk's own preparation, so ``model.predict(raw)`` gives what ktk measured.
"""

from __future__ import annotations

import warnings
from typing import Any, Dict

import numpy as np

from toolkit.schema import TEXT, InputSchema


def input_name(column: str, index: int) -> str:
    """A Keras-safe layer name for a raw column (Keras refuses ``/`` in names); the dict key stays the column."""
    name = column.replace("/", "_").strip()
    return name if name else f"column_{index}"


def serving_model(core: Any, schema: InputSchema, normalization: Dict[str, Any]) -> Any:
    """`core` wrapped so that it takes raw inputs described by `schema`.

    Args:
        core: the trained Keras model (inputs as ktk prepared them).
        schema: the raw inputs (:class:`toolkit.schema.InputSchema`).
        normalization: ``Dataset.normalization``: the method and, unless ``none``, the training split's
            float64 ``center`` and ``scale`` of every prepared feature.
    """
    import keras
    from keras import ops

    if schema.kind == "array":
        inputs: Any = keras.Input(shape=schema.shape, dtype="float64", name="features")
        x = inputs
    else:
        inputs = {}
        parts = []
        for i, column in enumerate(schema.columns):
            name = input_name(column.name, i)
            if column.dtype == TEXT:
                raw = keras.Input(shape=(1,), dtype="string", name=name)
                lookup = keras.layers.StringLookup(vocabulary=list(column.categories or ()), num_oov_indices=1,
                                                   output_mode="one_hot", name=f"{name}_lookup")
                parts.append(ops.cast(lookup(raw)[:, 1:], "float64"))  # slot 0 is out-of-vocabulary
            else:
                raw = keras.Input(shape=(1,), dtype="float64", name=name)
                parts.append(raw)
            inputs[column.name] = raw
        x = keras.layers.Concatenate(dtype="float64", name="features")(parts) if len(parts) > 1 else parts[0]
    # in_model: the core normalizes its inputs itself (images; see toolkit.models.input_block)
    if normalization.get("method", "none") != "none" and not normalization.get("in_model"):
        center = np.asarray(normalization["center"], dtype=np.float64)
        scale = np.asarray(normalization["scale"], dtype=np.float64)
        axis = tuple(range(1, len(center.shape) + 1)) if center.ndim > 1 else -1
        x = keras.layers.Normalization(axis=axis, mean=center, variance=np.square(scale), dtype="float64",
                                       name="normalization")(x)
    x = ops.cast(x, "float32")
    with warnings.catch_warnings():  # a dict key that is not its Input's name (a column with "/")
        warnings.simplefilter("ignore", UserWarning)
        return keras.Model(inputs, core(x), name="ktk_serving")
