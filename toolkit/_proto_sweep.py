"""PROTOTYPE ONLY (not committed): a plain keras-tuner sweep standing in for toolkit.sweeps until it lands."""

import json
import os
import shutil
from pathlib import Path


def _data():
    from sklearn.datasets import load_iris

    x, y = load_iris(return_X_y=True)
    import numpy as np

    rng = np.random.default_rng(0)
    idx = rng.permutation(len(x))
    x = ((x - x.mean(0)) / x.std(0)).astype("float32")[idx]
    y = y[idx]
    return x[:100], y[:100], x[100:], y[100:]


def _tuner(config, sweep_dir, tuner_id, record=True):
    import keras
    import keras_tuner as kt

    def build(hp):
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(hp.Int("units", 4, 64, step=4),
                                                                        activation="relu"),
                                  keras.layers.Dense(3, activation="softmax")])
        model.compile(keras.optimizers.Adam(hp.Float("lr", 1e-3, 1e-1, sampling="log")),
                      "sparse_categorical_crossentropy", metrics=["accuracy"])
        return model

    class Tuner(kt.RandomSearch):
        def run_trial(self, trial, *args, **kwargs):
            out = super().run_trial(trial, *args, **kwargs)
            delay = float(os.environ.get("PROTO_TRIAL_SLEEP", "0"))
            if delay:
                import time

                time.sleep(delay)
            rec = Path(sweep_dir) / "records" / f"{trial.trial_id}.json"
            rec.parent.mkdir(parents=True, exist_ok=True)
            rec.write_text(json.dumps({"trial_id": trial.trial_id, "worker": tuner_id,
                                       "values": trial.hyperparameters.values}))
            self.trials_run = getattr(self, "trials_run", 0) + 1
            return out

    old = os.environ.get("KERASTUNER_TUNER_ID")
    os.environ["KERASTUNER_TUNER_ID"] = tuner_id
    project = Path(sweep_dir) / "tuner"
    if (project / "oracle.json").exists() and not (project / f"{tuner_id}.json").exists():
        (project / f"{tuner_id}.json").write_text("{}")
    try:
        return Tuner(build, objective="val_accuracy", max_trials=config.search["max_trials"],
                     directory=str(sweep_dir), project_name="tuner", overwrite=False, seed=1)
    finally:
        if old is None:
            os.environ.pop("KERASTUNER_TUNER_ID", None)
        else:
            os.environ["KERASTUNER_TUNER_ID"] = old


def open_chief(config, *, out_dir, overwrite):
    from toolkit.distributed import _ChiefSweep

    sweep_dir = Path(out_dir or f"sweeps/{config.name}")
    if overwrite and sweep_dir.exists():
        shutil.rmtree(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    tuner = _tuner(config, sweep_dir, "chief")
    tuner.oracle.verbose = 0
    tuner.save()

    def finish():
        recs = sorted((sweep_dir / "records").glob("*.json"))
        rows = [json.loads(p.read_text()) for p in recs]
        trials = {t.trial_id: t.status for t in tuner.oracle.trials.values()}
        return {"sweep_dir": str(sweep_dir), "records": rows, "statuses": trials}

    return _ChiefSweep(sweep_dir=sweep_dir, oracle=tuner.oracle, finish=finish, close=lambda: None)


def run_worker(config, *, sweep_dir, worker_id, verbose):
    x, y, xv, yv = _data()
    tuner = _tuner(config, sweep_dir, worker_id)
    tuner.search(x, y, validation_data=(xv, yv), epochs=int(os.environ.get("PROTO_EPOCHS", "1")),
                 verbose=1 if verbose else 0)
    return getattr(tuner, "trials_run", 0)
