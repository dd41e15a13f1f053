"""Plots of runs and sweeps as PNG files: learning curves, and per-hyperparameter plots of sweeps.

Matplotlib is imported inside the functions, and only its object-oriented API is used (``Figure`` with
the Agg canvas, never ``pyplot``): no display is needed, and no global backend is switched under a
notebook that imports ktk.

- :func:`learning_curves`: training (solid) and validation (dashed) loss and main metric per epoch,
  several runs overlaid, the best epoch of each marked, so diverging curves (overfitting) and slow
  convergence show at a glance.
- :func:`parameter_plot`: for one searched parameter, the objective of every trial against its value,
  the best trial marked, failed trials along the bottom, a log axis for log-scale parameters, and a flag
  in the title when the best value sits at the edge of the searched range.
- :func:`status_plot`: the share of trials per status (how many failed).
- :func:`plot_table` / :func:`plot`: all of the above for the rows of a comparison.

Every file name is planned before the first plot is drawn: no two plots of one command share a file, and a
file in the output folder that ktk did not write is never replaced (:class:`toolkit.results.OutputFolder`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

from toolkit.analysis.compare import BEST, TRIAL, Parameter, Sweep, history_file, parameters, read_sweep, row_kind
from toolkit.results import OutputFolder, check_outside, read_history_csv, save_output
from toolkit.sweeps.records import trial_history_file
from toolkit.tables import format_value, is_finite, is_number, shorten

PathLike = Union[str, Path]
MAX_LEGEND = 12  # more runs than this are still drawn, but a legend would hide the curves
BEST_TRIALS = 5  # how many of a sweep's best trials get their learning curves drawn
LABEL_WIDTH = 24  # characters of a choice shown under its tick
_STATUS_COLORS = {"completed": "#2e7d32", "failed": "#c62828", "invalid": "#ef6c00", "running": "#1565c0"}


@dataclass
class Curve:
    """One run's per-epoch history to draw: a label, its history.csv and (optionally) its best epoch."""

    label: str
    history: Path
    best_epoch: Optional[int] = None


@dataclass
class PlotResult:
    """The PNG files written, and what could not be drawn (missing or unreadable histories)."""

    files: List[Path] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _save(figure, path: PathLike) -> Path:
    """The figure as a PNG file, written like every file ktk writes (atomically; a link or FIFO never replaced)."""
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return save_output(path, buffer.getvalue())


def _metric_of(history: Dict[str, List[float]]) -> Optional[str]:
    for name in history:
        if name not in ("epoch", "loss", "learning_rate", "lr") and not name.startswith("val_"):
            return name
    return None


def learning_curves(curves: Sequence[Curve], out_path: PathLike, title: str = "Learning curves") -> PlotResult:
    """Draws the loss (and the main metric) per epoch of several runs, overlaid, into one PNG.

    Training curves are solid and validation curves dashed, one color per run; a dot marks each run's
    best epoch on its validation curve. Runs whose history cannot be read are listed in the warnings.
    """
    result = PlotResult()
    loaded = []
    for curve in curves:
        try:
            history = read_history_csv(curve.history)
            if "epoch" not in history:
                raise ValueError("no epochs recorded")
        except (OSError, ValueError) as error:
            result.warnings.append(f"{curve.history}: no learning curve ({getattr(error, 'strerror', None) or error})")
            continue
        loaded.append((curve, history))
    if not loaded:
        return result
    metric = next((m for m in (_metric_of(h) for _, h in loaded) if m), None)
    panels = ["loss"] + ([metric] if metric else [])
    figure = _figure(6.0 * len(panels), 4.2)
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    colors = _colors(len(loaded))
    for (curve, history), color in zip(loaded, colors):
        epochs = history["epoch"]
        for axis, name in zip(axes, panels):
            if name in history:
                axis.plot(epochs, history[name], color=color, lw=1.5, label=curve.label)
            if f"val_{name}" in history:
                axis.plot(epochs, history[f"val_{name}"], color=color, lw=1.5, ls="--")
                if curve.best_epoch and 1 <= curve.best_epoch <= len(epochs):
                    axis.plot([epochs[curve.best_epoch - 1]], [history[f"val_{name}"][curve.best_epoch - 1]],
                              "o", color=color, ms=5)
    from matplotlib.ticker import MaxNLocator

    for axis, name in zip(axes, panels):
        low, high = axis.dataLim.y0, axis.dataLim.y1
        if name == "loss" and low > 0 and high / low > 100:  # a diverging run would flatten the others
            axis.set_yscale("log")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_xlabel("epoch")
        axis.set_ylabel(name)
        axis.set_title(f"{name}: training (solid) and validation (dashed)", fontsize=10)
        axis.grid(alpha=0.3)
    if len(loaded) <= MAX_LEGEND:
        axes[-1].legend(fontsize=8, loc="best")
    figure.suptitle(title + ("" if len(loaded) <= MAX_LEGEND else f" ({len(loaded)} runs)"))
    result.files.append(_save(figure, out_path))
    return result


def _colors(n: int) -> List[Any]:
    from matplotlib import colormaps

    if n <= 10:
        return [colormaps["tab10"](i) for i in range(n)]
    return [colormaps["viridis"](i / max(n - 1, 1)) for i in range(n)]


def parameter_plot(sweep: Sweep, parameter: Parameter, out_path: PathLike) -> Path:
    """The objective of every trial against one searched parameter's value, best trial marked."""
    objective, direction = sweep.objective
    best = sweep.best_trial()
    def drawable(value: Any) -> bool:  # an infinite value (a damaged cell) has no place on an axis
        return value is not None and (is_finite(value) or not is_number(value))

    completed = [t for t in sweep.trials if t.get("status") == "completed" and is_finite(t.get("score"))
                 and drawable(t.get(parameter.name))]
    failed = [t for t in sweep.trials if t.get("status") != "completed" and drawable(t.get(parameter.name))]
    # choices are drawn evenly spaced in their own order (batch sizes 32, 64, 128; or names)
    categorical = parameter.kind == "choice" or any(not is_number(t.get(parameter.name)) for t in completed + failed)
    figure = _figure(6.0, 4.2)
    axis = figure.subplots()
    if categorical:
        order = [_label(c) for c in (parameter.choices or [])]
        for trial in completed + failed:
            if _label(trial[parameter.name]) not in order:
                order.append(_label(trial[parameter.name]))
        position = {value: i for i, value in enumerate(order)}
        x_of = lambda trial: position[_label(trial[parameter.name])]  # noqa: E731
        axis.set_xticks(range(len(order)), order)
        axis.set_xlim(-0.5, len(order) - 0.5)
    else:
        x_of = lambda trial: float(trial[parameter.name])  # noqa: E731
        if parameter.log:
            axis.set_xscale("log")
    xs = [x_of(t) for t in completed]
    ys = [t["score"] for t in completed]
    axis.scatter(xs, ys, s=28, color="#1f77b4", alpha=0.8, label="trial", zorder=2)
    if best is not None and drawable(best.get(parameter.name)):
        axis.scatter([x_of(best)], [best["score"]], s=220, marker="*", color="#d62728", edgecolor="black",
                     lw=0.6, label=f"best ({format_value(best[parameter.name])})", zorder=3)
    if failed:
        spread = (max(ys) - min(ys)) if ys else 0.0
        # at the worse end, beyond every score: failed trials have none
        worst = ((max(ys) + 0.08 * (spread or 1.0)) if direction == "min" else (min(ys) - 0.08 * (spread or 1.0))
                 ) if ys else 0.0
        axis.scatter([x_of(t) for t in failed], [worst] * len(failed), marker="x", color="0.35", s=40,
                     label=f"failed ({len(failed)})", zorder=2)
    if not categorical and parameter.kind in ("int", "float"):
        for bound in (parameter.low, parameter.high):  # the searched range, to see how far the best is from it
            if is_finite(bound):
                axis.axvline(bound, color="0.6", lw=0.8, ls=":")
    axis.set_xlabel(parameter.name + (" (log scale)" if parameter.log else ""))
    axis.set_ylabel(f"{objective} ({'lower' if direction == 'min' else 'higher'} is better)")
    title = parameter.name
    if parameter.edge:
        title += f"\nbest at the {parameter.edge} edge of the searched range: widen it"
    axis.set_title(title, fontsize=10, color="#b71c1c" if parameter.edge else "black")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="best")
    return _save(figure, out_path)


def status_plot(sweep: Sweep, out_path: PathLike) -> Path:
    """A bar of how many trials ended in each status, with the share that failed in the title."""
    counts = sweep.status_counts()
    total = sum(counts.values())
    figure = _figure(6.0, 1.2 + 0.45 * max(len(counts), 1))
    axis = figure.subplots()
    names = sorted(counts, key=lambda s: (s != "completed", s))
    axis.barh(names, [counts[n] for n in names], color=[_STATUS_COLORS.get(n, "#757575") for n in names])
    for i, name in enumerate(names):
        axis.text(counts[name], i, f" {counts[name]} ({counts[name] / total:.0%})", va="center", fontsize=9)
    axis.invert_yaxis()
    axis.set_xlim(0, max(counts.values(), default=1) * 1.3)
    axis.set_xlabel("trials")
    not_completed = total - counts.get("completed", 0)
    share = not_completed / total if total else 0.0
    axis.set_title(f"{total} trials, {share:.0%} did not complete", fontsize=10)
    return _save(figure, out_path)


def best_trials(sweep: Sweep, k: int = BEST_TRIALS) -> List[Dict[str, Any]]:
    """The `k` completed trials with the best scores, best first."""
    return sweep.ranked()[:k]


@dataclass
class PlannedPlot:
    """One PNG file to draw: its name in the output folder, and the function drawing it into a path."""

    name: str
    draw: Callable[[Path], PlotResult]


@dataclass
class PlotPlan:
    """The plots of a command, named and checked against their folder before the first is drawn.

    Made by :func:`plan_sweep_plots` and :func:`plan_table_plots`; :meth:`write` draws them.
    """

    folder: OutputFolder
    plots: List[PlannedPlot] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)

    def write(self) -> PlotResult:
        """Creates the folder and draws every plot into it (each file added to the folder's list of ktk's files)."""
        result = PlotResult(warnings=list(self.warnings))
        self.folder.create()
        for planned in self.plots:
            drawn = planned.draw(self.folder.path / planned.name)
            for path in drawn.files:
                self.folder.record(path.name)
            result.files += drawn.files
            result.warnings += drawn.warnings
        return result


def _checked(folder: OutputFolder, plots: List[PlannedPlot], warnings: List[str], also: Sequence[str]) -> PlotPlan:
    """The plan with every file name unique (also from `also`, the caller's own files), the folder checked."""
    taken = {name.lower() for name in also}
    for planned in plots:
        stem, suffix = planned.name.rsplit(".", 1)
        name, n = planned.name, 1
        while name.lower() in taken:  # (case-insensitive: two names one file on some file systems)
            n += 1
            name = f"{stem}-{n}.{suffix}"
        planned.name = name
        taken.add(name.lower())
    folder.check([p.name for p in plots] + list(also))
    return PlotPlan(folder, plots, warnings)


def _sweep_plots(sweep: Sweep, prefix: str, warnings: List[str]) -> List[PlannedPlot]:
    """The plots of one sweep, named ``<prefix>param-<dot path>.png``, ``<prefix>trial-status.png`` and
    ``<prefix>best-trials.png``; what cannot be drawn is added to `warnings`."""
    if not sweep.trials:
        warnings.append(f"{sweep.path}: no trials yet; nothing to plot")
        return []
    plots = []
    for parameter in parameters(sweep):
        if any(t.get(parameter.name) is not None for t in sweep.trials):
            plots.append(PlannedPlot(f"{prefix}param-{_safe(parameter.name)}.png",
                                     lambda path, parameter=parameter: PlotResult(
                                         [parameter_plot(sweep, parameter, path)])))
    plots.append(PlannedPlot(f"{prefix}trial-status.png", lambda path: PlotResult([status_plot(sweep, path)])))
    top = best_trials(sweep)
    if top:
        curves = []
        for trial in top:
            try:
                history = trial_history_file(sweep.path, trial["trial_id"])
            except ValueError as error:
                warnings.append(f"{sweep.path}: {error}; no learning curve")
                continue
            curves.append(Curve(f"trial {trial['trial_id']} ({format_value(trial['score'])})", history,
                                _epoch(trial.get("best_epoch"))))
        title = f"The {len(top)} best trials by {sweep.objective[0]}"
        if curves:
            plots.append(PlannedPlot(f"{prefix}best-trials.png",
                                     lambda path: learning_curves(curves, path, title=title)))
    return plots


def plan_sweep_plots(sweep: Union[Sweep, PathLike], out_dir: Union[PathLike, OutputFolder], prefix: str = "",
                     where: Optional[str] = None, also: Sequence[str] = ()) -> PlotPlan:
    """The plots of one sweep (see :func:`sweep_plots`), checked against `out_dir` but not drawn yet.

    Args:
        sweep: the sweep, or its directory.
        out_dir: the folder for the PNG files (or the caller's :class:`OutputFolder` of it).
        prefix: put before every file name.
        where: the flag that named `out_dir`, for messages.
        also: other files the caller will write into `out_dir` (checked too; no plot takes their names).

    Raises:
        UserError: a file of a plot's name is there and ktk did not write it (:class:`OutputFolder`).
    """
    if not isinstance(sweep, Sweep):
        sweep = read_sweep(sweep)
    warnings = list(sweep.warnings)
    plots = _sweep_plots(sweep, prefix, warnings)
    return _checked(_folder(out_dir, where), plots, warnings, also)


def sweep_plots(sweep: Union[Sweep, PathLike], out_dir: PathLike, prefix: str = "") -> PlotResult:
    """Every plot of one sweep: one per searched parameter, the trial statuses, the best trials' curves.

    Files are named ``<prefix>param-<dot path>.png``, ``<prefix>trial-status.png`` and
    ``<prefix>best-trials.png`` in `out_dir`. A file of such a name that ktk did not write there is never
    replaced, nor is anything written inside the sweep directory: a UserError says which, before anything is
    drawn.
    """
    if not isinstance(sweep, Sweep):
        sweep = read_sweep(sweep)
    check_outside(out_dir, [sweep.path], None)
    return plan_sweep_plots(sweep, out_dir, prefix).write()


def plan_table_plots(table: Any, out_dir: Union[PathLike, OutputFolder], where: Optional[str] = None,
                     also: Sequence[str] = ()) -> PlotPlan:
    """The plots of a comparison (see :func:`plot_table`), checked against `out_dir` but not drawn yet.

    The caller checks that `out_dir` is not inside the results read (:func:`toolkit.results.check_outside`).

    Raises:
        UserError: a file of a plot's name is there and ktk did not write it (:class:`OutputFolder`).
    """
    if "path" not in table.columns:
        raise ValueError("the table has no 'path' column: pass the DataFrame compare() returned")
    warnings: List[str] = []
    curves, sweeps = [], []
    for row in table.to_dict(orient="records"):
        kind, path, trial_id = row_kind(row), Path(row["path"]), str(row.get("trial_id") or "")
        try:
            curves.append(Curve(str(row["run"]), history_file(path, kind, trial_id), _epoch(row.get("best_epoch"))))
        except ValueError as error:
            warnings.append(f"{path}: {error}; no learning curve")
        sweep_dir = path if kind == TRIAL else path.parent if kind == BEST else None
        if sweep_dir is not None and sweep_dir not in sweeps:
            sweeps.append(sweep_dir)
    plots = [PlannedPlot("learning_curves.png", lambda path: learning_curves(curves, path))] if curves else []
    prefixes = _prefixes(sweeps)
    for sweep_dir in sweeps:
        try:
            sweep = read_sweep(sweep_dir)
        except ValueError as error:
            warnings.append(f"{sweep_dir}: {error}; no sweep plots")
            continue
        warnings += sweep.warnings
        plots += _sweep_plots(sweep, prefixes[sweep_dir], warnings)
    return _checked(_folder(out_dir, where), plots, warnings, also)


def plot_table(table: Any, out_dir: PathLike, where: Optional[str] = None) -> PlotResult:
    """The plots for the rows of a comparison (as returned by :func:`toolkit.analysis.compare.compare`).

    Writes ``learning_curves.png`` overlaying every row that has a per-epoch history (runs, sweep trials,
    sweep best runs), and the sweep plots of every sweep a row comes from (on all of its trials), each
    sweep's files named after its path when there are several. No two plots share a file, and a file ktk
    did not write in `out_dir` is never replaced (a UserError says which, before anything is drawn), nor is
    anything written inside a run or sweep directory of the table.
    """
    if "path" in table.columns:
        check_outside(out_dir, [Path(p) for p in table["path"]], where)
    return plan_table_plots(table, out_dir, where).write()


def plot(paths: Union[PathLike, Sequence[PathLike]], out_dir: PathLike, where: Optional[str] = None) -> PlotResult:
    """Finds the runs and sweeps under `paths` (as :func:`toolkit.analysis.compare.compare` does) and plots them.

    Raises:
        UserError: as :func:`toolkit.analysis.compare.compare`; `out_dir` lies inside one of the runs or sweeps;
            or a file of a plot's name is there and ktk did not write it.
    """
    from toolkit.analysis.compare import compare, result_dirs

    check_outside(out_dir, result_dirs(paths), where)
    table = compare(paths)
    plan = plan_table_plots(table, out_dir, where)
    plan.warnings = list(table.attrs.get("warnings", [])) + plan.warnings
    return plan.write()


def _folder(out_dir: Union[PathLike, OutputFolder], where: Optional[str]) -> OutputFolder:
    return out_dir if isinstance(out_dir, OutputFolder) else OutputFolder(out_dir, where)


def _prefixes(sweeps: Sequence[Path]) -> Dict[Path, str]:
    """A file name prefix per sweep: none for one sweep; else its path from the folder all of them share
    (``xx/sw`` and ``yy/sw`` give ``xx_sw-`` and ``yy_sw-``)."""
    if len(sweeps) <= 1:
        return {sweep: "" for sweep in sweeps}
    absolute = [os.path.abspath(s) for s in sweeps]
    common = os.path.commonpath(absolute)
    if common in absolute:
        common = os.path.dirname(common)
    return {sweep: _safe(os.path.relpath(a, common).replace(os.sep, "_")) + "-" for sweep, a in zip(sweeps, absolute)}


def _epoch(value: Any) -> Optional[int]:
    """A best epoch from a table or trials.csv as an int (None when it is not a usable number)."""
    return int(value) if is_number(value) and 1 <= value < 2**31 else None


def _label(value: Any) -> str:
    """A choice as a tick label; 64 and 64.0 (as trials.csv may read back) are the same choice."""
    return shorten(format_value(value), LABEL_WIDTH)


def _safe(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name).strip("_") or "plot"
