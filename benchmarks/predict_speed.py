"""Benchmark: `ktk predict` on a large CSV against plain `model.predict` on a preloaded NumPy array.

Trains a small model on a generated CSV (8 numeric columns and one text column), writes an N-row CSV of new
rows (default 1,000,000), then runs, each as a fresh process:
- `ktk predict RUN big.csv --output out.csv` (streamed in chunks of 10,000 rows);
- a plain script that loads the whole file into NumPy/pandas first and calls `model.predict` on it.
Reports wall time, rows/s and peak RSS (ru_maxrss of the child) for both. The point: ktk's memory is bounded
by the chunk, not by the file.

    python benchmarks/predict_speed.py [--rows 1000000]
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

PLAIN = r'''
import sys, numpy as np, pandas as pd, keras, tensorflow as tf
model = keras.saving.load_model(sys.argv[1] + "/model.keras")
frame = pd.read_csv(sys.argv[2], dtype={"color": str})
features = {c: tf.constant(frame[c].to_numpy()) for c in frame.columns if c != "y"}
probabilities = model.predict(features, batch_size=1024, verbose=0)
np.save(sys.argv[3], probabilities)
'''


def table(rows, seed):
    import pandas as pd

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 8))
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(8)])
    frame["color"] = rng.choice(["red", "green", "blue"], size=rows)
    frame["y"] = ((x[:, 0] + x[:, 1] + (frame["color"] == "red")) > 0.5).astype(int)
    return frame


MEASURE = ("import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
           "print('maxrss', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(code)")


def child(command):
    """Runs `command` in a fresh wrapper process; returns (wall seconds, the command's peak RSS in MiB)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3")
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", MEASURE, *map(str, command)], capture_output=True, text=True,
                         env=env)
    elapsed = time.perf_counter() - start
    if out.returncode != 0:
        sys.exit(f"failed: {' '.join(map(str, command))}\n{out.stderr[-2000:]}")
    peak_kib = int(out.stderr.rsplit("maxrss", 1)[1].split()[0])
    return elapsed, peak_kib / 1024


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ktk-predict-bench-"))
    try:
        table(2000, 0).to_csv(work / "train.csv", index=False)
        (work / "config.yaml").write_text("name: bench\ndata: {source: csv, path: train.csv, target: y}\n"
                                          "model: {hidden: [32]}\ntraining: {epochs: 3}\n")
        child([sys.executable, "-m", "toolkit", "run", str(work / "config.yaml"), "--out", str(work / "run"), "-q"])
        table(args.rows, 1).to_csv(work / "big.csv", index=False)
        size = (work / "big.csv").stat().st_size / 2**20
        ktk_time, ktk_peak = child([sys.executable, "-m", "toolkit", "predict", str(work / "run"),
                                       str(work / "big.csv"), "--output", str(work / "out.csv")])
        (work / "plain.py").write_text(PLAIN)
        plain_time, plain_peak = child([sys.executable, str(work / "plain.py"), str(work / "run"),
                                           str(work / "big.csv"), str(work / "plain.npy")])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{args.rows:,} rows, CSV of {size:.0f} MiB")
    print(f"ktk predict (streamed, writes CSV):    {ktk_time:7.1f} s  {args.rows / ktk_time:9,.0f} rows/s  "
          f"peak RSS {ktk_peak:7.0f} MiB")
    print(f"plain model.predict (whole file in RAM): {plain_time:5.1f} s  {args.rows / plain_time:9,.0f} rows/s  "
          f"peak RSS {plain_peak:7.0f} MiB")


if __name__ == "__main__":
    main()
