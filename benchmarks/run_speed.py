"""Benchmark: `ktk run` against a plain hand-written Keras script on the same 50-epoch digits MLP.

Runs each as a whole fresh process (imports included, as a user would), alternating, `--repeat` times,
and reports median wall times, the ratio and the test accuracies. Also times `ktk --help` and
`ktk validate`. Target (issue #2): ratio <= 0.7 at the same accuracy (+-1 point); help/validate < 1 s.

    python benchmarks/run_speed.py [--repeat 3]
"""

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def timed(command):
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3")
    start = time.perf_counter()
    out = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
    elapsed = time.perf_counter() - start
    if out.returncode != 0:
        sys.exit(f"failed: {' '.join(command)}\n{out.stderr[-2000:]}")
    return elapsed, out.stdout


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    plain_times, ktk_times, plain_acc, ktk_acc = [], [], [], []
    work = Path(tempfile.mkdtemp(prefix="ktk-bench-"))
    try:
        for i in range(args.repeat):
            elapsed, out = timed([sys.executable, str(HERE / "plain_digits_mlp.py")])
            plain_times.append(elapsed)
            plain_acc.append(float(re.search(r"test_accuracy=([\d.]+)", out).group(1)))
            elapsed, out = timed([sys.executable, "-m", "toolkit", "run", str(HERE / "digits_mlp_50.yaml"),
                                  "--out", str(work / f"run{i}"), "-q"])
            ktk_times.append(elapsed)
            ktk_acc.append(float(re.search(r"^\s+test\s+([\d.]+)", out, re.M).group(1)))
        help_time = statistics.median(timed([sys.executable, "-m", "toolkit", "--help"])[0] for _ in range(3))
        validate_time = statistics.median(
            timed([sys.executable, "-m", "toolkit", "validate", "configs/quickstart.yaml"])[0] for _ in range(3))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    plain, ktk = statistics.median(plain_times), statistics.median(ktk_times)
    print(f"plain Keras script (NumPy into fit): {plain:6.2f} s  test accuracy {statistics.median(plain_acc):.4f}")
    print(f"ktk run (tf.data pipeline):          {ktk:6.2f} s  test accuracy {statistics.median(ktk_acc):.4f}")
    print(f"ratio ktk/plain: {ktk / plain:.2f} (target <= 0.70)")
    print(f"ktk --help: {help_time:.2f} s   ktk validate configs/quickstart.yaml: {validate_time:.2f} s (target < 1 s)")


if __name__ == "__main__":
    main()
