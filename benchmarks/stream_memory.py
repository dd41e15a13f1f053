"""Peak memory (RSS) and throughput of a streamed csv table against pandas.read_csv + fit on the in-memory table.

For each row count, a csv of 4 numeric features, 1 text feature and a binary target is generated, then two
fresh processes train 1 epoch (batch 1024): ktk with `stream: true` (the one pass, then training), and plain
pandas.read_csv + keras fit on arrays. Each reports its peak RSS (ru_maxrss) and rows/s of the whole thing.

Usage: python benchmarks/stream_memory.py [ROWS ...]   (default 100000 1000000 10000000)
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def write_csv(path: Path, rows: int) -> None:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    header = True
    for start in range(0, rows, 1_000_000):
        n = min(1_000_000, rows - start)
        frame = pd.DataFrame({f"x{i}": rng.normal(size=n) for i in range(4)})
        frame["c"] = rng.choice(["a", "b", "c"], n)
        frame["y"] = ((frame.x0 + frame.x1 + (frame.c == "a")) > 0.5).astype(int)
        frame.to_csv(path, mode="w" if header else "a", header=header, index=False)
        header = False


def streamed(path: str, rows: int) -> dict:
    from toolkit.config import parse_config
    from toolkit.data import load_data
    from toolkit import training

    config = parse_config({"name": "bench", "data": {"source": "csv", "path": path, "target": "y", "stream": True},
                           "model": {"hidden": [32]}, "training": {"epochs": 1, "batch_size": 1024}})
    started = time.perf_counter()
    data = load_data(config)
    model = training.prepare_model(config, data)
    training.fit(model, config, data, verbose=0)
    return {"seconds": time.perf_counter() - started}


def in_memory(path: str, rows: int) -> dict:
    import keras
    import numpy as np
    import pandas as pd

    started = time.perf_counter()
    frame = pd.read_csv(path)
    x = pd.get_dummies(frame.drop(columns="y"), dtype=np.float32).to_numpy(np.float32)
    x = (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-9)
    y = frame["y"].to_numpy(np.float32)
    model = keras.Sequential([keras.Input((x.shape[1],)), keras.layers.Dense(32, activation="relu"),
                              keras.layers.Dense(1, activation="sigmoid")])
    model.compile("adam", "binary_crossentropy")
    model.fit(x, y, batch_size=1024, epochs=1, verbose=0)
    return {"seconds": time.perf_counter() - started}


def child(kind: str, path: str, rows: int) -> None:
    outcome = (streamed if kind == "streamed" else in_memory)(path, rows)
    outcome["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(outcome))


def main(counts: list) -> None:
    print(f"{'rows':>10} {'kind':>9} {'peak RSS MiB':>13} {'seconds':>8} {'rows/s':>9}")
    with tempfile.TemporaryDirectory() as folder:
        for rows in counts:
            path = Path(folder) / f"t{rows}.csv"
            write_csv(path, rows)
            for kind in ("streamed", "in-memory"):
                env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3")
                done = subprocess.run([sys.executable, __file__, "--child", kind, str(path), str(rows)],
                                      capture_output=True, text=True, env=env)
                if done.returncode:
                    print(f"{rows:>10} {kind:>9} failed: {done.stderr.strip().splitlines()[-1:]}")
                    continue
                result = json.loads(done.stdout.strip().splitlines()[-1])
                print(f"{rows:>10} {kind:>9} {result['peak_rss_mib']:>13.0f} {result['seconds']:>8.1f} "
                      f"{rows / result['seconds']:>9.0f}", flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        main([int(a) for a in sys.argv[1:]] or [100_000, 1_000_000, 10_000_000])
