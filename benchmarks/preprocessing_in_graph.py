"""Benchmark: where the preprocessing runs while training.

ktk prepares the inputs once, outside the graph (text one-hot encoded, every feature scaled with the training
split's statistics, cast to float32), trains on those arrays, and only then wraps the trained network in Keras
preprocessing layers for the saved model (toolkit/deploy/serving.py). The alternative is to train the serving
model itself, so `StringLookup` and `Normalization` run in every training step. This times `fit` both ways on
the same data, network, batch size and epochs (in one process, after a warm-up), for an all-numeric table
(digits) and one with a text column (wine plus a derived text feature).

    python benchmarks/preprocessing_in_graph.py [--epochs 30] [--repeat 3]
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def datasets():
    import pandas as pd
    from sklearn.datasets import load_digits, load_wine

    digits = load_digits()
    wine = load_wine()
    frame = pd.DataFrame(wine.data, columns=wine.feature_names)
    frame["region"] = np.where(frame["alcohol"] > 13.5, "north", np.where(frame["alcohol"] > 12.5, "coast", "south"))
    wine_big = pd.concat([frame] * 10, ignore_index=True)  # 1,780 rows: enough steps per epoch to time
    return {"digits": (pd.DataFrame(digits.data, columns=[f"p{i}" for i in range(64)]), digits.target),
            "wine+text": (wine_big, np.tile(wine.target, 10))}


def core(width, classes):
    import keras

    return keras.Sequential([keras.Input((width,)), keras.layers.Dense(64, activation="relu"),
                             keras.layers.Dense(classes, activation="softmax")])


def outside(frame, y, epochs, batch):
    """ktk's way: encode and scale once with NumPy/pandas, train the core on float32 arrays."""
    import pandas as pd
    import tensorflow as tf

    encoded = pd.get_dummies(frame, dtype=np.float64).to_numpy()
    x = ((encoded - encoded.mean(0)) / np.where(encoded.std(0) > 0, encoded.std(0), 1)).astype(np.float32)
    model = core(x.shape[1], int(y.max()) + 1)
    model.compile("adam", "sparse_categorical_crossentropy", steps_per_execution=32)
    data = tf.data.Dataset.from_tensor_slices((x, y)).cache().shuffle(len(y), seed=0).batch(batch).prefetch(2)
    start = time.perf_counter()
    model.fit(data, epochs=epochs, verbose=0, shuffle=False)
    return time.perf_counter() - start


def inside(frame, y, epochs, batch):
    """The alternative: train ktk's serving model itself, StringLookup and Normalization in every step."""
    import pandas as pd
    import tensorflow as tf

    from toolkit.deploy.serving import serving_model
    from toolkit.schema import Column, InputSchema

    columns = tuple(Column(c, "string", tuple(sorted(frame[c].unique())))
                    if not pd.api.types.is_numeric_dtype(frame[c])
                    else Column(c) for c in frame.columns)
    encoded = pd.get_dummies(frame, dtype=np.float64).to_numpy()  # the same statistics ktk would fit
    scale = np.where(encoded.std(0) > 0, encoded.std(0), 1)
    model = serving_model(core(encoded.shape[1], int(y.max()) + 1), InputSchema("columns", columns=columns),
                          {"method": "standard", "center": encoded.mean(0), "scale": scale})
    model.compile("adam", "sparse_categorical_crossentropy", steps_per_execution=32)
    raw = {c: frame[c].to_numpy(object) if not pd.api.types.is_numeric_dtype(frame[c])
           else frame[c].to_numpy(np.float64)
           for c in frame.columns}
    data = tf.data.Dataset.from_tensor_slices((raw, y)).cache().shuffle(len(y), seed=0).batch(batch).prefetch(2)
    start = time.perf_counter()
    model.fit(data, epochs=epochs, verbose=0, shuffle=False)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    for name, (frame, y) in datasets().items():
        outside(frame, y, 1, args.batch), inside(frame, y, 1, args.batch)  # warm-up: imports and first traces
        times = {"outside (ktk)": [], "inside": []}
        for _ in range(args.repeat):
            times["outside (ktk)"].append(outside(frame, y, args.epochs, args.batch))
            times["inside"].append(inside(frame, y, args.epochs, args.batch))
        a, b = statistics.median(times["outside (ktk)"]), statistics.median(times["inside"])
        print(f"{name:10s} {len(y):5d} rows x {args.epochs} epochs: preprocess once {a:6.2f} s, "
              f"layers in the training graph {b:6.2f} s ({b / a:.2f}x)")


if __name__ == "__main__":
    main()
