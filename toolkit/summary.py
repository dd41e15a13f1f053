"""The one-screen text summary printed at the end of `ktk run`."""

from __future__ import annotations

from typing import Any, List

SPLITS = ("train", "validation", "test")


def format_run_summary(result: Any) -> str:
    """Train/validation/test loss and metrics, epochs, parameters and time of a finished run."""
    metrics = result.metrics
    names: List[str] = []
    for split in SPLITS:
        for name in metrics.get(split, {}):
            if name not in names:
                names.append(name)
    width = max(len(n) for n in names) if names else 4
    width = max(width, 10)
    header = " " * 12 + "".join(f"{n:>{width + 2}}" for n in names)
    rows = [header]
    for split in SPLITS:
        values = metrics.get(split, {})
        cells = "".join(f"{format_metric(values.get(n)):>{width + 2}}" for n in names)
        rows.append(f"  {split:<10}{cells}")
    sizes = metrics.get("sizes", {})
    size_text = " / ".join(f"{sizes[s]}" for s in SPLITS if s in sizes)
    lines = [
        "",
        f"{result.config.name}: {metrics['epochs_run']} epochs (best {metrics['best_epoch']} by "
        f"{metrics['monitor']}), {metrics['params']:,} parameters, {metrics['wall_time_s']:.1f} s",
        *rows,
    ]
    if size_text:
        lines.append(f"  examples (train / validation / test): {size_text}")
    lines.append(f"  run directory: {result.run_dir}")
    return "\n".join(lines)


def format_metric(value: Any) -> str:
    """A metric for a summary line: 4 decimals, '-' when missing."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)
