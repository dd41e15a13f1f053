"""The one-screen text summary printed at the end of `ktk run`."""

from __future__ import annotations

from typing import Any, List

from toolkit.results import SPLITS
from toolkit.tables import format_metric, text_table

__all__ = ["format_run_summary", "format_metric"]  # format_metric lives in toolkit.tables; kept here for its users


def format_run_summary(result: Any) -> str:
    """Train/validation/test loss and metrics, epochs, parameters and time of a finished run."""
    metrics = result.metrics
    names: List[str] = []
    for split in SPLITS:
        for name in metrics.get(split) or {}:
            if name not in names:
                names.append(name)
    cells = [[split] + [format_metric((metrics.get(split) or {}).get(n)) for n in names] for split in SPLITS]
    table = text_table(["", *names], cells, [False] + [True] * len(names), rule=False, indent="  ", min_width=10)
    sizes = metrics.get("sizes", {})
    size_text = " / ".join("none" if sizes[s] is None else f"{sizes[s]}" for s in SPLITS if s in sizes)
    lines = [
        "",
        f"{result.config.name}: {metrics['epochs_run']} epochs (best {metrics['best_epoch']} by "
        f"{metrics['monitor']}), {metrics['params']:,} parameters, {metrics['wall_time_s']:.1f} s",
        table.rstrip("\n"),
    ]
    if size_text:
        lines.append(f"  examples (train / validation / test): {size_text}")
    lines.append(f"  run directory: {result.run_dir}")
    return "\n".join(lines)
