"""The validated search space as keras-tuner objects: hyperparameters, oracles and the quasi-random oracle.

:mod:`toolkit.search` holds the ``search:`` section as plain typed data; this module is where it meets
keras-tuner (imported lazily, inside the functions).
"""

from __future__ import annotations

import functools
from typing import Any, List, Mapping

from toolkit.search import SEQUENCES, Param, SearchSpec
from toolkit.sweeps.keras_tuner_compat import check_version, is_duplicate, max_collisions, parent_condition


def hyperparameter(param: Param, space: Mapping[str, Param]) -> Any:
    """The keras-tuner hyperparameter object of `param`, with one parent condition per ``when`` key."""
    from keras_tuner.engine import hyperparameters as hp_types

    parents = [parent_condition(parent, [space[parent].encode(v) for v in vals]) for parent, vals in param.when]
    if param.kind == "int":
        return hp_types.Int(param.path, int(param.low), int(param.high),
                            step=None if param.step is None else int(param.step),
                            sampling="log" if param.log else "linear", conditions=parents)
    if param.kind == "float":
        return hp_types.Float(param.path, float(param.low), float(param.high), step=param.step,
                              sampling="log" if param.log else "linear", conditions=parents)
    ordered = all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in param.codes)
    return hp_types.Choice(param.path, list(param.codes), ordered=ordered, conditions=parents)


def declare(spec: SearchSpec, hp: Any) -> None:
    """Registers the whole space (conditional parameters included) on a keras-tuner HyperParameters."""
    by_path = {p.path: p for p in spec.space}
    for param in spec.space:
        hp.merge([hyperparameter(param, by_path)], overwrite=False)


def make_oracle(spec: SearchSpec) -> Any:
    """A fresh keras-tuner Oracle for this search (its state is reloaded by the tuner on resume)."""
    import keras_tuner

    objective = keras_tuner.Objective(spec.objective.name, spec.objective.direction)
    # keras-tuner replaces seed=0 by a random seed (`seed or random.randint(...)`); shift by one so
    # every config seed, 0 included, gives a reproducible search.
    seed = spec.seed + 1
    # Failures in a row are counted by the sweep (it says why it stops), not by keras-tuner.
    common = dict(objective=objective, seed=seed, max_retries_per_trial=0,
                  max_consecutive_failed_trials=10**9)
    if spec.tuner == "random":
        return keras_tuner.oracles.RandomSearchOracle(max_trials=spec.max_trials, **common)
    # The grid and hyperband plan their own number of trials; giving it to keras-tuner also makes the
    # trial ids short ("0".."9" rather than "0000"...).
    if spec.tuner == "grid":
        return keras_tuner.oracles.GridSearchOracle(max_trials=spec.planned_trials(), **common)
    if spec.tuner == "bayesian":
        return keras_tuner.oracles.BayesianOptimizationOracle(
            max_trials=spec.max_trials, num_initial_points=spec.num_initial_points, **common)
    if spec.tuner == "hyperband":
        oracle = keras_tuner.oracles.HyperbandOracle(
            max_epochs=spec.base_epochs, factor=spec.factor, hyperband_iterations=spec.hyperband_iterations,
            **common)
        oracle.max_trials = spec.planned_trials()  # the base Oracle stops there: search.max_trials caps
        return oracle
    return quasi_random_oracle_class()(max_trials=spec.max_trials, sequence=spec.sequence, **common)


def __getattr__(name: str) -> Any:
    # `from toolkit.sweeps.space import QuasiRandomOracle` works without importing keras-tuner at module import.
    if name == "QuasiRandomOracle":
        return quasi_random_oracle_class()
    raise AttributeError(f"module 'toolkit.sweeps.space' has no attribute {name!r}")


@functools.lru_cache(maxsize=None)
def quasi_random_oracle_class() -> type:
    """The quasi-random keras-tuner Oracle class (built on first use so keras-tuner loads lazily)."""
    import keras_tuner
    from keras_tuner.engine.trial import TrialStatus

    check_version()  # it relies on two private names of keras-tuner's Oracle

    class QuasiRandomOracle(keras_tuner.Oracle):
        """Quasi-random search: trial k takes point k of a scrambled Halton or Sobol sequence.

        Recommended by Google's Deep Learning Tuning Playbook for the exploration phase: the points cover
        the space evenly (no clumps or holes as with random search), any prefix of the sequence is itself
        well spread, and unlike a grid every trial tries a new value of every parameter. Each parameter
        owns one coordinate of the sequence whether or not it is active in a trial, so conditional
        parameters do not shift the others. Works with any keras-tuner Tuner.

        Args:
            objective: as for every keras-tuner Oracle.
            max_trials: number of trials.
            sequence: ``"halton"`` (default) or ``"sobol"``.
            seed: scrambling seed.
            **kwargs: other keras-tuner Oracle arguments.
        """

        def __init__(self, objective=None, max_trials=10, sequence="halton", seed=None, **kwargs):
            super().__init__(objective=objective, max_trials=max_trials, seed=seed, **kwargs)
            if sequence not in SEQUENCES:
                raise ValueError(f"Expected sequence to be one of {SEQUENCES}. Received: sequence={sequence!r}")
            self.sequence = sequence
            self._points_drawn = 0
            self._engine = None

        def _make_engine(self, dimensions: int) -> Any:
            from scipy.stats import qmc

            engine_class = qmc.Halton if self.sequence == "halton" else qmc.Sobol
            try:
                engine = engine_class(dimensions, scramble=True, rng=self.seed)
            except TypeError:  # scipy < 1.15 names the argument seed
                engine = engine_class(dimensions, scramble=True, seed=self.seed)
            if self._points_drawn:
                engine.fast_forward(self._points_drawn)
            return engine

        def _next_point(self, dimensions: int) -> List[float]:
            if self._engine is None or self._engine.d != dimensions:
                self._engine = self._make_engine(dimensions)
            point = self._engine.random(1)[0]
            self._points_drawn += 1
            return [float(u) for u in point]

        def populate_space(self, trial_id):
            space = self.hyperparameters.space
            for _ in range(max_collisions(self) + 1):
                point = self._next_point(max(1, len(space)))
                hps = keras_tuner.HyperParameters()
                for coordinate, hp in zip(point, space):
                    hps.merge([hp])
                    if hps.is_active(hp):
                        hps.values[hp.name] = hp.prob_to_value(min(coordinate, 1.0 - 1e-12))
                if not is_duplicate(self, hps.values):
                    return {"status": TrialStatus.RUNNING, "values": hps.values}
            return {"status": TrialStatus.STOPPED, "values": None}

        def get_state(self):
            state = super().get_state()
            state.update({"sequence": self.sequence, "points_drawn": self._points_drawn})
            return state

        def set_state(self, state):
            super().set_state(state)
            self.sequence = state["sequence"]
            self._points_drawn = state["points_drawn"]
            self._engine = None

    QuasiRandomOracle.__module__ = __name__
    return QuasiRandomOracle
