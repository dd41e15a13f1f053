"""The baseline for benchmarks/gpu_check.py's CNN: a plain hand-written Keras script on an npz of images.

Same split fractions, per-pixel standardization (training-split statistics), layers, optimizer, batch size and
epochs as the ktk config gpu_check.py writes (`cnn_config`).

    python benchmarks/plain_cnn.py IMAGES.npz EPOCHS BATCH_SIZE    # prints test_accuracy=, train_s=, gpus=
"""

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # read when TensorFlow is imported, so set before the imports

import keras
import numpy as np
from sklearn.model_selection import train_test_split

path, epochs, batch_size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
keras.utils.set_random_seed(42)
with np.load(path) as archive:
    x, y = archive["x"].astype("float64"), archive["y"]
x_train, x_rest, y_train, y_rest = train_test_split(x, y, test_size=0.3, stratify=y, random_state=42)
x_val, x_test, y_val, y_test = train_test_split(x_rest, y_rest, test_size=0.5, stratify=y_rest, random_state=42)
center, scale = x_train.mean(axis=0), x_train.std(axis=0)
scale = np.where(scale > 0, scale, 1.0)
x_train, x_val, x_test = (((a - center) / scale).astype("float32") for a in (x_train, x_val, x_test))

model = keras.Sequential([
    keras.Input(x.shape[1:]),
    keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
    keras.layers.MaxPooling2D(),
    keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
    keras.layers.MaxPooling2D(),
    keras.layers.Flatten(),
    keras.layers.Dense(128, activation="relu"),
    keras.layers.Dense(int(y.max()) + 1, activation="softmax"),
])
model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
started = time.perf_counter()
model.fit(x_train, y_train, batch_size=batch_size, epochs=epochs, validation_data=(x_val, y_val), verbose=0)
loss, accuracy = model.evaluate(x_test, y_test, verbose=0)
print(f"test_accuracy={accuracy:.4f}")
print(f"train_s={time.perf_counter() - started:.3f}")

import tensorflow as tf  # noqa: E402  (already loaded by Keras)

print(f"gpus={len(tf.config.list_physical_devices('GPU'))}")
sys.exit(0)
