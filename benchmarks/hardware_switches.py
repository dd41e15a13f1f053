"""Benchmark: what the training switches cost, on the 50-epoch digits MLP (benchmarks/digits_mlp_50.yaml).

Each variant trains in a fresh process (the switches are process-global: op determinism, XLA's caches), the
variants alternating, `--repeat` times. Reported: the median time of ``fit`` (50 epochs, XLA's compilation
included), the median time of one epoch after the first (steady state), and the test accuracy, each beside
the time of the first variant (ktk's defaults on this machine). Runs on whatever TensorFlow sees: on a GPU
machine the same variants measure the GPU.

    python benchmarks/hardware_switches.py [--repeat 3] [--variants default,nondeterministic,...] [--epochs 50]

Variants: default (float32, deterministic, XLA as ``auto`` resolves: off), nondeterministic, xla_off and xla
(both with deterministic: false, as XLA needs: xla_off is xla's baseline), mixed_bfloat16, mixed_float16.
The machine's other load shows as the spread between the median and the best (min) of the repeats.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CONFIG = HERE / "digits_mlp_50.yaml"
VARIANTS = {
    "default": {},
    "nondeterministic": {"training.deterministic": False},
    "xla_off": {"training.deterministic": False, "training.jit_compile": False},
    "xla": {"training.deterministic": False, "training.jit_compile": True},
    "mixed_bfloat16": {"training.precision": "mixed_bfloat16"},
    "mixed_float16": {"training.precision": "mixed_float16"},
}


def child(variant: str, epochs: int) -> None:
    """Trains one variant in this process; prints one JSON line."""
    sys.path.insert(0, str(REPO))
    import keras

    from toolkit import training
    from toolkit.config import load_config
    from toolkit.data import load_data
    from toolkit.hardware.devices import switches_in_effect

    config = load_config(CONFIG).with_values({**VARIANTS[variant], "training.epochs": epochs})
    data = load_data(config)
    model = training.prepare_model(config, data)  # seed, op determinism, build (dtype policy), compile (XLA)
    epoch_times = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            epoch_times.append(time.perf_counter() - self.started)

    started = time.perf_counter()
    training.fit(model, config, data, callbacks=[Timer()], verbose=0, keep_best=False)
    fit_s = time.perf_counter() - started
    accuracy = training.evaluate(model, config, data, "test")["accuracy"]
    switches = switches_in_effect(config, model)
    print(json.dumps({"variant": variant, "fit_s": fit_s, "epoch_s": statistics.median(epoch_times[1:] or epoch_times),
                      "accuracy": accuracy, **switches}))


def measure(variant: str, epochs: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run([sys.executable, __file__, "--child", variant, "--epochs", str(epochs)],
                         capture_output=True, text=True, env=env, cwd=REPO)
    if out.returncode != 0:
        sys.exit(f"variant {variant} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="fresh processes per variant (default 3)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated (default: all)")
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.epochs)
        return
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    results = {v: [] for v in variants}
    for _ in range(args.repeat):
        for variant in variants:  # alternating: a busy moment of the machine spreads over every variant
            results[variant].append(measure(variant, args.epochs))
    first = variants[0]
    base_fit = statistics.median(r["fit_s"] for r in results[first])
    base_epoch = statistics.median(r["epoch_s"] for r in results[first])
    devices = results[first][0]["devices"]
    print(f"digits MLP, {args.epochs} epochs, on {', '.join(devices)}; median of {args.repeat} fresh processes")
    print(f"{'variant':<18}{'fit s':>7}{'best':>7}{'x ' + first:>12}{'epoch ms':>10}{'x ' + first:>12}"
          f"{'test acc':>10}  in effect")
    for variant in variants:
        fit = statistics.median(r["fit_s"] for r in results[variant])
        best = min(r["fit_s"] for r in results[variant])
        epoch = statistics.median(r["epoch_s"] for r in results[variant])
        accuracy = statistics.median(r["accuracy"] for r in results[variant])
        effect = results[variant][0]["training_switches"]
        shown = ", ".join(f"{k}={v['in_effect']}" for k, v in effect.items())
        print(f"{variant:<18}{fit:>7.2f}{best:>7.2f}{fit / base_fit:>12.2f}{epoch * 1000:>10.1f}"
              f"{epoch / base_epoch:>12.2f}{accuracy:>10.4f}  {shown}")


if __name__ == "__main__":
    main()
