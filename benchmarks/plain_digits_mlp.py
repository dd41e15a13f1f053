"""The baseline: a plain hand-written Keras script, NumPy arrays into model.fit (what ktk replaces).

Same data, split sizes, model, optimizer, batch size and epochs as benchmarks/digits_mlp_50.yaml.

    python benchmarks/plain_digits_mlp.py [EPOCHS]     # 50 by default; prints test_accuracy= and train_s=
"""

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # read when TensorFlow is imported, so set before the imports

import keras
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

keras.utils.set_random_seed(42)
x, y = load_digits(return_X_y=True)
x_train, x_rest, y_train, y_rest = train_test_split(x, y, test_size=0.3, stratify=y, random_state=42)
x_val, x_test, y_val, y_test = train_test_split(x_rest, y_rest, test_size=0.5, stratify=y_rest, random_state=42)
scaler = StandardScaler().fit(x_train)
x_train, x_val, x_test = (scaler.transform(a) for a in (x_train, x_val, x_test))

model = keras.Sequential([
    keras.Input((64,)),
    keras.layers.Dense(128, activation="relu"),
    keras.layers.Dense(64, activation="relu"),
    keras.layers.Dense(10, activation="softmax"),
])
model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
started = time.perf_counter()
epochs = int(sys.argv[1]) if len(sys.argv) > 1 else 50
model.fit(x_train, y_train, batch_size=32, epochs=epochs, validation_data=(x_val, y_val), verbose=0)
loss, accuracy = model.evaluate(x_test, y_test, verbose=0)
print(f"test_accuracy={accuracy:.4f}")
print(f"train_s={time.perf_counter() - started:.3f}")  # fit and evaluate, as ktk's metrics.json wall_time_s
sys.exit(0)
