"""``ktk report``: one HTML page and one Markdown file describing a sweep (or a folder of runs).

A sweep report holds the search space (with a flag where the best value sits at the edge of a range),
the best configuration with its test metrics and the command that reproduces it, the plots of
:mod:`toolkit.analysis.plots`, and the table of trials. The HTML page is self-contained (inline CSS, images
embedded as base64 PNG, no scripts), so it can be mailed or attached as one file; the Markdown file links
the PNG files written next to it.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import os
import shlex
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple, Union

from toolkit import tables
from toolkit.analysis.compare import (TRIAL, Sweep, compare, main_metric, parameters, read_sweep, result_dirs,
                                      row_kind, table_cells)
from toolkit.errors import UserError
from toolkit.metrics import direction_of
from toolkit.results import (BEST_DIR, CONFIG_FILE, METRICS_FILE, SPLITS, TRIALS_FILE, OutputFolder, check_outside,
                             check_path_given, finished_best_run, read_json)
from toolkit.search import DEPTH_PATH
from toolkit.tables import compact, format_value, is_number

PathLike = Union[str, Path]


@dataclass
class ReportResult:
    """The files a report wrote, and what was skipped while reading the results."""

    html: Path
    markdown: Path
    images: List[Path] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)


@dataclass
class _Document:
    """The report as a list of blocks, written out both as HTML and as Markdown.

    Every text it is given may come from the results (run names, paths, values, messages): the HTML is
    escaped, and the Markdown escaped by :func:`toolkit.tables.markdown_text`, so none of it is live markup.
    """

    title: str
    html: List[str] = field(default_factory=list)
    markdown: List[str] = field(default_factory=list)

    def heading(self, text: str) -> None:
        self.html.append(f"<h2>{html.escape(text)}</h2>")
        self.markdown.append(f"## {tables.markdown_text(text)}")

    def paragraph(self, text: str, css: str = "") -> None:
        mark = f' class="{css}"' if css else ""
        self.html.append(f"<p{mark}>{html.escape(text)}</p>")
        self.markdown.append(tables.markdown_text(text))

    def items(self, lines: Sequence[str], css: str = "") -> None:
        mark = f' class="{css}"' if css else ""
        self.html.append(f"<ul{mark}>" + "".join(f"<li>{html.escape(line)}</li>" for line in lines) + "</ul>")
        self.markdown.append("\n".join(f"- {tables.markdown_text(line)}" for line in lines))

    def command(self, text: str) -> None:
        self.html.append(f"<pre><code>{html.escape(text)}</code></pre>")
        self.markdown.append(tables.markdown_code(text))

    def table(self, header: Sequence[str], cells: Sequence[Sequence[str]], numeric: Optional[Sequence[bool]] = None,
              highlight: Optional[int] = None) -> None:
        numeric = list(numeric) if numeric is not None else [False] * len(header)
        self.html.append(tables.html_table(header, cells, numeric, highlight=highlight))
        self.markdown.append(tables.markdown_table(header, cells, numeric).rstrip("\n"))

    def image(self, path: Path, caption: str) -> None:
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        self.html.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        self.markdown.append(f"![{tables.markdown_text(caption)}]({urllib.parse.quote(path.name)})")


REPORT_FILES = ("report.html", "report.md")
REPORT_DIR = "report"  # the default: <sweep or folder>/report


def report(path: PathLike, out_dir: Optional[PathLike] = None) -> ReportResult:
    """Writes ``report.html`` and ``report.md`` (and the PNG plots they show) for a sweep or a folder of runs.

    Files in the output folder that ktk did not write there (a report.md of the user's, a link, a FIFO) are
    never replaced, and nothing is written inside a run or sweep directory the report reads, except its own
    default folder ``<path>/report`` (which must be a real folder, not a link).

    Args:
        path: a sweep directory, or a folder of run (and sweep) directories.
        out_dir: where to write; default ``<path>/report``.

    Returns:
        The files written and the warnings about results that could not be read.

    Raises:
        UserError: when `path` does not exist or holds no runs or sweeps, or the output folder is refused.
    """
    path = Path(path)
    if not path.is_dir():
        raise UserError("not found" if not path.exists() else "not a folder", where="SWEEP_OR_DIR",
                        expected="a sweep directory or a folder of runs", received=str(path))
    where = "--out" if out_dir is not None else "SWEEP_OR_DIR"
    check_path_given(out_dir, "--out", "a folder path")
    out = Path(out_dir) if out_dir is not None else path / REPORT_DIR
    own = path / REPORT_DIR
    if out_dir is None and os.path.islink(own):
        raise UserError(f"{own} is a link; a report is written into a real {REPORT_DIR}/ folder of the sweep, never "
                        f"through a link to elsewhere. Remove the link, or give --out DIR", where=where,
                        received=str(own))
    inputs = result_dirs(path)
    check_outside(out, [d for d in inputs if not _same(d, path)], where)
    if any(_same(d, path) for d in inputs):  # a sweep (or run): in it, only into its own report/ folder
        check_outside(out, [path], where, own=None if own.is_symlink() else own)
    folder = OutputFolder(out, where)
    is_sweep = (path / TRIALS_FILE).exists() and (path / CONFIG_FILE).exists()
    document, images, warnings = (_sweep_report if is_sweep else _runs_report)(path, folder)
    if warnings:
        document.heading("Warnings")
        document.items(warnings, css="warning")
    stamp = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    document.paragraph(f"Written by ktk report on {stamp} from {path}.")
    html_name, markdown_name = REPORT_FILES
    html_path = folder.write(html_name, tables.html_page(document.title, document.html))
    markdown_path = folder.write(markdown_name, f"# {tables.markdown_text(document.title)}\n\n"
                                 + "\n\n".join(document.markdown) + "\n")
    return ReportResult(html_path, markdown_path, images, warnings)


def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


# ------------------------------------------------------------------------------------------ sweeps


def _sweep_report(path: Path, folder: OutputFolder) -> Tuple[_Document, List[Path], List[str]]:
    from toolkit.analysis.plots import plan_sweep_plots

    try:
        sweep = read_sweep(path)
    except ValueError as error:
        raise UserError(f"the sweep cannot be read: {error}", where="SWEEP_OR_DIR", received=str(path)) from None
    warnings = list(sweep.warnings)
    search = sweep.search
    objective, direction = sweep.objective
    name = sweep.config.get("name") or path.name
    document = _Document(f"Sweep report: {name}")
    counts = sweep.status_counts()
    best = sweep.best_trial()
    summary = [f"Sweep directory: {path}",
               f"Tuner: {search.get('tuner', 'unknown')}; objective: {objective} "
               f"({'lower' if direction == 'min' else 'higher'} is better)",
               f"Trials: {len(sweep.trials)} (" + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + ")"]
    if best is not None:
        summary.append(f"Best: trial {best['trial_id']}, {objective} {format_value(best['score'])}")
    document.items(summary)

    space = parameters(sweep)
    document.heading("Best configuration")
    best_dir = path / BEST_DIR
    if best is None:
        document.paragraph("No trial completed, so there is no best configuration yet.")
    else:
        document.table(["parameter", "best value"], [[p.name, _show(best.get(p.name))] for p in space])
    if finished_best_run(path) is not None:
        _metrics_table(document, best_dir, "Test metrics of the best configuration, retrained into best/ "
                                           "(the only use of the test split):")
        document.paragraph("Reproduce the best run:")
        document.command(f"ktk run {shlex.quote(str(best_dir / CONFIG_FILE))}")
    elif best is not None:
        document.paragraph("The best configuration has not been retrained into best/ yet (the sweep has not "
                           "finished); finish the sweep with ktk tune on its config, or train it alone:")
        sets = " ".join(f"--set {shlex.quote(f'{p.name}={_exact(best.get(p.name))}')}" for p in space
                        if best.get(p.name) is not None and p.name != DEPTH_PATH)
        document.command(f"ktk run {shlex.quote(str(path / CONFIG_FILE))} {sets}".rstrip())

    document.heading("Search space")
    rows = []
    for p in space:
        condition = ", ".join(f"{k} in {v}" for k, v in (p.when or {}).items())
        rows.append([p.name, p.describe(), condition, _show(p.best), p.edge_message or ""])
    document.table(["parameter", "searched", "when", "best", "note"], rows)
    at_edge = [p for p in space if p.edge]
    if at_edge:
        document.paragraph(f"{len(at_edge)} parameter(s) have their best value at the edge of the searched range: "
                           "the optimum may lie outside it. Widen the range and search again.", css="warning")

    images: List[Path] = []
    plots = plan_sweep_plots(sweep, folder, also=REPORT_FILES).write()
    warnings += [w for w in plots.warnings if w not in warnings]
    document.heading("Plots")
    for image in plots.files:
        document.image(image, _caption(image, sweep))
        images.append(image)

    document.heading("Trials")
    try:
        table = compare(path)
    except UserError as error:
        document.paragraph(str(error), css="warning")
    else:
        warnings += [w for w in table.attrs.get("warnings", []) if w not in warnings]
        column = "validation." + objective[4:] if objective.startswith("val_") else objective
        if column in table.columns:
            table = table.sort_values(column, ascending=direction == "min", na_position="last", kind="stable")
        header, cells, numeric = table_cells(table)
        winner = None
        if best is not None:
            labels = list(table["run"])
            winner = next((i for i, label in enumerate(labels) if label.endswith(f"#{best['trial_id']}")), None)
        document.paragraph(f"Sorted by {column}; the best trial is highlighted. Trial metrics are at each "
                           "trial's best epoch; test metrics exist only for retrained runs (best/).")
        document.table(header, cells, numeric, highlight=winner)
    return document, images, warnings


def _caption(image: Path, sweep: Sweep) -> str:
    stem = image.stem
    if stem.startswith("param-"):
        return f"{sweep.objective[0]} of each trial against {stem[len('param-'):]} (star: best trial; x: failed)"
    if stem == "trial-status":
        return "Trials by status"
    if stem == "best-trials":
        return "Learning curves of the best trials (solid: training, dashed: validation, dot: best epoch)"
    return stem


# -------------------------------------------------------------------------------------------- runs


def _runs_report(path: Path, folder: OutputFolder) -> Tuple[_Document, List[Path], List[str]]:
    from toolkit.analysis.plots import plan_table_plots

    table = compare(path)
    warnings = list(table.attrs.get("warnings", []))
    document = _Document(f"Runs report: {path.resolve().name}")
    runs = table[[row_kind(row) != TRIAL for row in table.to_dict(orient="records")]]
    metric_columns = [c for c in table.columns if c.startswith("validation.")]
    metric = main_metric(c.split(".", 1)[1] for c in metric_columns) if metric_columns else None
    column = f"validation.{metric}" if metric else None
    lower_is_better = metric is None or direction_of(metric) == "min"
    if column is not None:
        table = table.sort_values(column, ascending=lower_is_better, na_position="last", kind="stable")
    document.items([f"Folder: {path}", f"Rows: {len(table)} ({len(runs)} runs)"]
                   + ([f"Sorted by {column} ({'lower' if lower_is_better else 'higher'} is better)"] if column else []))

    best_row = None
    if column is not None:
        candidates = runs[runs[column].notna()].sort_values(column, ascending=lower_is_better, kind="stable")
        if len(candidates):
            best_row = candidates.iloc[0]
    document.heading("Best run")
    if best_row is None:
        document.paragraph("No run has validation results.")
    else:
        best_dir = Path(best_row["path"])
        document.paragraph(f"{best_row['run']}: {column} {format_value(best_row[column])}")
        _metrics_table(document, best_dir, "Its metrics:")
        document.paragraph("Reproduce it:")
        document.command(f"ktk run {shlex.quote(str(best_dir / CONFIG_FILE))}")

    document.heading("Runs")
    header, cells, numeric = table_cells(table)
    winner = None
    if best_row is not None:
        winner = list(table["run"]).index(best_row["run"])
    document.table(header, cells, numeric, highlight=winner)

    plots = plan_table_plots(table, folder, also=REPORT_FILES).write()
    warnings += plots.warnings
    document.heading("Plots")
    for image in plots.files:
        caption = ("Learning curves (solid: training, dashed: validation, dot: best epoch)"
                   if image.stem == "learning_curves" else image.stem)
        document.image(image, caption)
    return document, list(plots.files), warnings


# ----------------------------------------------------------------------------------------- helpers


def _metrics_table(document: _Document, run_dir: Path, intro: str) -> None:
    path = run_dir / METRICS_FILE
    try:
        metrics = read_json(path)
        if not isinstance(metrics, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as error:
        document.paragraph(f"{path} cannot be read: {getattr(error, 'strerror', None) or error}", css="warning")
        return
    splits = {split: metrics.get(split) if isinstance(metrics.get(split), dict) else {} for split in SPLITS}
    names: List[str] = []
    for split in SPLITS:
        for name in splits[split]:
            if str(name) not in names:
                names.append(str(name))
    rows = [[name] + [format_value(splits[split].get(name)) for split in SPLITS] for name in names]
    document.paragraph(intro)
    document.table(["metric", *SPLITS], rows, [False, True, True, True])
    facts = [f"{key}: {format_value(metrics[key])}" for key in ("epochs_run", "best_epoch", "params", "wall_time_s")
             if is_number(metrics.get(key))]
    if facts:
        document.paragraph("; ".join(facts))


def _show(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) or is_number(value):
        return format_value(value)
    return compact(value)


def _exact(value: Any) -> str:
    """A value as --set reads it back exactly (full precision; lists and mappings in YAML flow style)."""
    return repr(float(value)) if isinstance(value, float) else compact(value)
