"""The text a sweep prints: one progress line per finished trial, and the summary at the end of ``ktk tune``."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Optional

from toolkit.errors import cut
from toolkit.results import SPLITS, TRIALS_FILE
from toolkit.summary import format_metric
from toolkit.sweeps.records import param_columns

if TYPE_CHECKING:
    from toolkit.sweeps.tuning import SweepResult


def format_progress(*, done: int, planned: Optional[int], trial_id: Any, worker: Optional[str], objective: str,
                    completed: bool, score: Optional[float], message: Optional[str], best: Optional[tuple],
                    elapsed: float, finished_since_start: int) -> str:
    """The one line printed per finished trial (by a sweep, and by a distributed sweep's chief).

    ``best`` is (score, trial id) of the best trial so far; the time left is estimated from the
    `finished_since_start` trials finished in `elapsed` seconds.
    """
    outcome = f"{objective} {format_metric(score)}" if completed else f"failed: {shorten(message or 'failed', 80)}"
    best_text = f"best {format_metric(best[0])} (trial {best[1]})" if best is not None else "best -"
    eta = "?"
    if planned and finished_since_start > 0:
        eta = clock(elapsed / finished_since_start * max(0, planned - done))
    tag = f" [{worker}]" if worker else ""
    return (f"trial {done}/{planned or '?'} (id {trial_id}){tag}: {outcome} | {best_text} | "
            f"elapsed {clock(elapsed)} | eta {eta}")


def format_sweep_summary(result: "SweepResult") -> str:
    """A few lines for the end of `ktk tune`: counts, the best trial, its test metrics, the paths."""
    spec = result.spec
    lines = ["", f"sweep {result.sweep_dir}: {result.completed} trials completed, {result.failed} failed "
                 f"({spec.tuner} search, objective {spec.objective.name}, {spec.objective.direction})"]
    if result.best is not None:
        best = result.best
        values = ", ".join(f"{p}={show_value(best.get(p))}" for p in param_columns(spec) if best.get(p) is not None)
        lines.append(f"  best: trial {best['trial_id']}, {spec.objective.name} {format_metric(best['score'])}: {values}")
    if result.best_run is not None:
        metrics = result.best_run.metrics
        for split in SPLITS[1:]:  # validation and test: what the retrained best configuration scores
            shown = ", ".join(f"{k} {format_metric(v)}" for k, v in (metrics.get(split) or {}).items())
            lines.append(f"  best retrained, {split}: {shown}")
        lines.append(f"  best run directory: {result.best_run.run_dir}")
    for run in result.top_runs:
        lines.append(f"  also retrained: {run.run_dir}")
    lines.append(f"  trials table: {result.sweep_dir / TRIALS_FILE}")
    return "\n".join(lines)


def show_value(value: Any) -> str:
    """A searched value in a summary line: 4 significant digits, lists and mappings as compact JSON."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def clock(seconds: float) -> str:
    """Seconds as H:MM:SS."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def last_line(text: Optional[str]) -> str:
    """The last non-blank line of `text` (of a traceback: the error itself), stripped; "" if none."""
    lines = [line.strip() for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def shorten(text: str, width: int) -> str:
    """`text` on one line, cut to `width` characters with "..." when longer."""
    text = " ".join(str(text).split())
    return text if len(text) <= width else cut(text, width - 3) + "..."
