"""Experiment suites: a folder of configs run one after another, then compared.

A suite is a folder (``experiments/initialization``, ...) holding a ``base.yaml`` with what its configs
share and one config per variant, each starting with ``extends: base.yaml``. :func:`run_suite` trains each
variant (files starting with ``base`` or ``_`` are not variants) into ``<out>/<variant>`` with
:func:`toolkit.runs.run`. A variant with a ``search:`` section is a sweep and goes to ``ktk tune``'s
:func:`toolkit.sweeps.tune`.

:func:`lesson_rows` adds what the lessons look at and the general comparison table does not show: how fast
the training loss fell (its first value and its mean over the epochs, the area under the curve) and the
bias/variance verdict.
"""

from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Union

from toolkit.errors import UserError
from toolkit.lessons.run_files import columns, first_line, read_history_rows
from toolkit.results import check_new_dir, check_path_given, finished_best_run, make_dir

DEFAULT_OUT = Path("runs") / "experiments"
TAIL = 10  # epochs at the end whose training-loss spread is reported (tail_sd)


@dataclass
class SuiteResult:
    """Where a suite's runs (and sweeps) went, in the suite's order."""

    suite: Path
    out_dir: Path
    run_dirs: List[Path] = field(default_factory=list)
    sweep_dirs: List[Path] = field(default_factory=list)
    names: List[str] = field(default_factory=list)

    @property
    def paths(self) -> List[Path]:
        """Every run and sweep directory, for ``ktk compare``."""
        return [*self.run_dirs, *self.sweep_dirs]

    def finished_runs(self) -> List[Path]:
        """The run directories plus each sweep's retrained ``best/`` (when it finished), in suite order."""
        out = []
        for path in [self.out_dir / name for name in self.names]:
            if path in self.sweep_dirs:
                best = finished_best_run(path)
                if best is not None:
                    out.append(best)
            else:
                out.append(path)
        return out


def suite_configs(suite: Union[str, Path]) -> List[Path]:
    """The variant configs of a suite folder, sorted by name (``base*`` and ``_*`` files excluded)."""
    expected = "a folder of configs, e.g. experiments/initialization"
    check_path_given(suite, None, expected, problem="an empty path")
    path = Path(suite)
    try:
        if not path.is_dir():
            raise UserError("suite folder not found" if not path.exists() else "not a folder", expected=expected,
                            received=str(path))
        configs = sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file()
                         and not p.name.startswith(("base", "_")))
    except (OSError, ValueError) as error:  # unreadable, a name too long, a NUL byte in the path
        raise UserError(f"cannot read the suite folder ({first_line(error)})", expected=expected,
                        received=str(path)) from None
    if not configs:
        raise UserError("the suite folder holds no configs", expected="one or more *.yaml files besides base.yaml",
                        received=str(path))
    stems = [p.stem for p in configs]
    twice = sorted({p.name for p in configs if stems.count(p.stem) > 1})
    if twice:  # both would run into <out>/<stem>
        raise UserError("two configs share a name", expected="one config per variant name",
                        received=", ".join(twice), file=str(path))
    return configs


def run_suite(suite: Union[str, Path], out_dir: Optional[Union[str, Path]] = None,
              overrides: Iterable[str] = (), verbose: int = 0, only: Optional[Sequence[str]] = None,
              progress: Optional[Callable[[str], None]] = None) -> SuiteResult:
    """Runs every config of a suite folder; each into ``<out_dir>/<config stem>``.

    Args:
        suite: the suite folder.
        out_dir: where the runs go; default ``runs/experiments/<suite>/<timestamp>``. Must be new or empty.
        overrides: ``--set`` overrides applied to every config (``training.epochs=5`` for a quick look).
        verbose: Keras' progress display for each run.
        only: run only the variants with these names (config stems).
        progress: called with a line as each run starts and for each finished sweep trial; None: silent.

    Returns:
        A :class:`SuiteResult` listing the run (and sweep) directories.

    Raises:
        UserError: a missing or empty suite folder, a bad config (checked for every variant before
            anything trains), or an output folder that already holds results.
    """
    from toolkit.config import load_config

    suite_path = Path(suite)
    configs = suite_configs(suite_path)
    if only is not None:
        names = [p.stem for p in configs]
        for name in only:
            if name not in names:
                raise UserError(where="--only", expected="a config of the suite", received=name, choices=names)
        configs = [p for p in configs if p.stem in only]
    overrides = list(overrides)
    loaded = [load_config(p, overrides=overrides) for p in configs]  # every mistake before any training
    for config_path, config in zip(configs, loaded):
        if config.search is not None:  # a sweep's search section too, not after the variants before it trained
            from toolkit.search import parse_search

            try:
                parse_search(config)
            except UserError as error:
                raise error.at(file=str(config_path)) from None
    check_path_given(out_dir, "--out", "a new or empty folder", problem="an empty path")
    out = _claim_default_out(suite_path) if out_dir is None else _check_out(Path(out_dir))

    result = SuiteResult(suite=suite_path, out_dir=out)
    for number, (config_path, config) in enumerate(zip(configs, loaded), start=1):
        target = out / config_path.stem
        if progress is not None:
            kind = "sweep" if config.search is not None else "run"
            progress(f"[{number}/{len(configs)}] {config_path.stem}: {kind} into {target}")
        if config.search is not None:
            result.sweep_dirs.append(_tune(config, target, verbose, progress))
        else:
            from toolkit.runs import run

            run(config, out_dir=target, verbose=verbose)
            result.run_dirs.append(target)
        result.names.append(config_path.stem)
    return result


def _check_out(out: Path) -> Path:
    """`out` created, when it is new or empty and can be made; said before anything trains."""
    try:
        check_new_dir(out, "output folder")
        return make_dir(out)
    except (OSError, ValueError) as error:  # a name too long, a NUL byte in the path
        raise UserError(f"cannot use the folder ({first_line(error)})", where="--out", received=str(out)) from None


def _claim_default_out(suite: Path) -> Path:
    """A new ``runs/experiments/<suite>/<timestamp>`` folder, made here so that two suites started in the same
    second never share one (the later gets ``<timestamp>-2``)."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = make_dir(DEFAULT_OUT / suite.resolve().name)
    out, number = base / stamp, 1
    while True:
        try:
            out.mkdir()  # exclusive: of two suites making the same folder, one gets FileExistsError
            return out
        except FileExistsError:
            number += 1
            out = base / f"{stamp}-{number}"
        except OSError as error:
            raise UserError(f"cannot create the directory ({first_line(error)})", where="--out",
                            received=str(out)) from None


def _tune(config: Any, target: Path, verbose: int, progress: Optional[Callable[[str], None]]) -> Path:
    from toolkit.sweeps import tune

    tune(config, out_dir=target, verbose=bool(verbose), progress=progress)
    return target


# --------------------------------------------------------------------------------- lesson figures


def lesson_rows(run_dirs: Sequence[Union[str, Path]], names: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
    """Per run: convergence figures from history.csv and the bias/variance figures from ``ktk diagnose``.

    Columns: run, epochs, first_loss (training loss of epoch 1), mean_loss (training loss averaged over
    the epochs: lower means faster convergence), final_loss, tail_sd (standard deviation of the training
    loss over the last 10 epochs: how much it still wanders), best_val_loss, train_error, val_error,
    verdict, variance.
    """
    from toolkit.lessons.diagnosis import diagnose

    rows = []
    for i, run_dir in enumerate(run_dirs):
        run_dir = Path(run_dir)
        diagnosis = diagnose(run_dir)  # first: it refuses a damaged run directory with a clear message
        history = columns(read_history_rows(run_dir) or [])
        loss = history.get("loss", [])
        val_loss = [v for v in history.get("val_loss", []) if math.isfinite(v)]
        rows.append({
            "run": names[i] if names else run_dir.name,
            "epochs": len(loss),
            "first_loss": loss[0] if loss else math.nan,
            "mean_loss": sum(loss) / len(loss) if loss else math.nan,
            "final_loss": loss[-1] if loss else math.nan,
            "tail_sd": _sd(loss[-TAIL:]) if len(loss) >= 2 else math.nan,
            "best_val_loss": min(val_loss) if val_loss else math.nan,
            "train_error": diagnosis.train_error,
            "val_error": diagnosis.validation_error,
            "verdict": diagnosis.verdict,
            "variance": diagnosis.variance,
        })
    return rows


def _sd(values: Sequence[float]) -> float:
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def format_lesson_rows(rows: Sequence[Dict[str, Any]]) -> str:
    """A plain text table of :func:`lesson_rows` (missing values as '-')."""
    from toolkit.tables import rows_table

    return rows_table(rows, missing="-").rstrip("\n")
