"""Tables and values for reading: the one place that turns results into text, Markdown and HTML.

Used by ``ktk compare`` (every table format), ``ktk report`` (its HTML page and Markdown file), the
``ktk experiment`` lesson table and the summary at the end of ``ktk run``. Everything here is a pure
function of its arguments: no file is read, nothing is printed.

- Values: :func:`is_missing`, :func:`is_number`, :func:`is_finite`, :func:`compact` (YAML-like text), :func:`format_value`
  (4 significant digits), :func:`format_metric` (4 decimals), :func:`shorten` (one line, cut),
  :func:`json_value` (a cell as JSON).
- Text tables: :func:`text_table` (aligned columns; fitted to a terminal width when given one),
  :func:`rows_table` (a list of dicts as a text table).
- Markdown: :func:`markdown_text` and :func:`markdown_table` escape everything that comes from data
  (HTML tags, links, table pipes, newlines, backticks), :func:`markdown_code` fences a block safely.
- HTML: :func:`html_table` and :func:`html_page` (self-contained, inline CSS, every value escaped).
"""

from __future__ import annotations

import html
import math
import numbers
import re
from typing import Any, Iterable, List, Mapping, Optional, Sequence

from toolkit.errors import cut

# ------------------------------------------------------------------------------------------ values


def is_missing(value: Any) -> bool:
    """True for None and NaN (how a DataFrame holds a missing cell)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool) or type(value).__name__ == "bool_"


def is_number(value: Any) -> bool:
    """True for a real number that is not NaN (bools are not numbers here)."""
    if _is_bool(value) or not isinstance(value, numbers.Real):
        return False
    return not math.isnan(value)


def is_finite(value: Any) -> bool:
    """True for a real number that is neither NaN nor infinite (bools are not numbers here)."""
    return is_number(value) and math.isfinite(value)


COMPACT_LIMIT = 10_000  # characters: a list or mapping longer than this as text is cut with "..."


class _Literal(str):
    """Text that :func:`compact` writes as it is (brackets and separators), as opposed to a value."""


def compact(value: Any, limit: int = COMPACT_LIMIT) -> str:
    """A value as short YAML-like text: ``[128, 64]``, ``{l2: 0.0001}``, ``true``, ``null``.

    Text longer than `limit` is cut with "...": a YAML document of nested aliases (a few hundred bytes
    that stand for billions of items) costs no more than `limit` characters of work. Nesting of any depth
    is walked without recursion.
    """
    pieces: List[str] = []
    size = 0
    pending: List[Any] = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, _Literal):
            text = str(item)
        elif isinstance(item, (dict, list, tuple)):
            is_map = isinstance(item, dict)
            entries = list(item.items()) if is_map else list(item)
            pending.append(_Literal("}" if is_map else "]"))
            for index in reversed(range(len(entries))):  # pushed last first, so they pop in order
                if is_map:
                    pending.extend([entries[index][1], _Literal(f"{entries[index][0]}: ")])
                else:
                    pending.append(entries[index])
                if index:
                    pending.append(_Literal(", "))
            text = "{" if is_map else "["
        elif item is None:
            text = "null"
        elif _is_bool(item):
            text = "true" if item else "false"
        else:
            text = str(item)
        if size + len(text) > limit:
            pieces.append(cut(text, limit - size) + "...")
            break
        pieces.append(text)
        size += len(text)
    return "".join(pieces)


def format_value(value: Any, missing: str = "") -> str:
    """A cell for reading: 4 significant digits, integers whole, lists compact, missing values as `missing`."""
    if is_missing(value):
        return missing
    if _is_bool(value):
        return "true" if value else "false"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        value = float(value)
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return f"{value:.4g}"
    if isinstance(value, str):
        return value
    return compact(value)


def format_metric(value: Any) -> str:
    """A metric for a summary line: 4 decimals, '-' when missing."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def shorten(text: Any, width: int) -> str:
    """`text` on one line (runs of whitespace as one space), cut to `width` characters with '...'."""
    text = " ".join(str(text).split())
    return text if len(text) <= width else cut(text, width - 3) + "..."


def json_value(value: Any) -> Any:
    """A cell as a JSON value: numpy scalars as Python numbers, NaN and infinities as None, the rest as text."""
    if value is None or isinstance(value, str):
        return value
    if _is_bool(value):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value) if math.isfinite(value) else None
    return compact(value)


def is_numeric_column(values: Iterable[Any]) -> bool:
    """True when the column has a value and every value that is not missing is a number."""
    present = [v for v in values if not is_missing(v)]
    return bool(present) and all(is_number(v) for v in present)


# ------------------------------------------------------------------------------------ text tables

GAP = "  "  # between two columns
CELL_LIMIT = 40  # the widest column a terminal table shows (names abbreviated, values cut beyond it)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def terminal_text(text: str) -> str:
    """`text` safe to print in a terminal: control characters (escape sequences, newlines) shown as ``\\xNN``."""
    return _CONTROL.sub(lambda m: {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(m.group(), f"\\x{ord(m.group()):02x}"),
                        text)


def abbreviate(name: str, limit: int) -> str:
    """A dot path that fits `limit` characters: leading parts cut to their first letter
    (``training.optimizer.learning_rate`` -> ``t.o.learning_rate``), then the end cut with '...'."""
    if len(name) <= limit:
        return name
    parts = name.split(".")
    for i in range(len(parts) - 1):
        parts[i] = parts[i][:1]
        shorter = ".".join(parts)
        if len(shorter) <= limit:
            return shorter
    return shorten(".".join(parts), limit)


def text_table(header: Sequence[str], cells: Sequence[Sequence[str]], numeric: Optional[Sequence[bool]] = None, *,
               width: Optional[int] = None, rule: bool = True, indent: str = "", min_width: int = 0) -> str:
    """An aligned plain-text table of already formatted cells (numeric columns right-aligned).

    Args:
        header: the column names.
        cells: the rows, one string per column.
        numeric: which columns are right-aligned (default: none).
        width: the terminal's width. When given, names and values longer than :data:`CELL_LIMIT` are
            abbreviated, control characters are shown escaped, and columns that do not fit go into further
            blocks below, each repeating the first column. None: every column whole, side by side.
        rule: a dashed line under the header.
        indent: text before every line.
        min_width: the narrowest a column may be.
    """
    numeric = list(numeric) if numeric is not None else [False] * len(header)
    header, cells = [str(h) for h in header], [[str(c) for c in row] for row in cells]
    if not header:
        return ""
    if width is None:
        return _block(header, cells, numeric, range(len(header)), rule, indent, min_width)
    header = _unique_abbreviations([terminal_text(h) for h in header])
    cells = [[shorten(terminal_text(c), CELL_LIMIT) for c in row] for row in cells]
    widths = [max([len(h), min_width] + [len(r[i]) for r in cells]) for i, h in enumerate(header)]
    blocks: List[List[int]] = []
    for column in range(1, len(header)):
        if blocks and _block_width([0, *blocks[-1], column], widths, indent) <= width:
            blocks[-1].append(column)
        else:
            blocks.append([column])
    if not blocks:  # one column only
        blocks = [[]]
    return "\n".join(_block(header, cells, numeric, [0, *columns], rule, indent, min_width) for columns in blocks)


def _unique_abbreviations(header: List[str]) -> List[str]:
    short = [abbreviate(h, CELL_LIMIT) for h in header]
    # two names that abbreviate alike are cut at the end instead, which keeps their distinct beginnings
    return [shorten(h, CELL_LIMIT) if short.count(s) > 1 else s for h, s in zip(header, short)]


def _block_width(columns: Sequence[int], widths: Sequence[int], indent: str) -> int:
    return len(indent) + sum(widths[c] for c in columns) + len(GAP) * (len(columns) - 1)


def _block(header: Sequence[str], cells: Sequence[Sequence[str]], numeric: Sequence[bool], columns: Iterable[int],
           rule: bool, indent: str, min_width: int) -> str:
    columns = list(columns)
    widths = {c: max([len(header[c]), min_width] + [len(r[c]) for r in cells]) for c in columns}

    def line(values: Sequence[str]) -> str:
        text = GAP.join(values[c].rjust(widths[c]) if numeric[c] else values[c].ljust(widths[c]) for c in columns)
        return (indent + text).rstrip()

    lines = [line(header)]
    if rule:
        lines.append(indent + GAP.join("-" * widths[c] for c in columns))
    lines += [line(r) for r in cells]
    return "\n".join(lines) + "\n"


def rows_table(rows: Sequence[Mapping[str, Any]], missing: str = "-") -> str:
    """A list of dicts (one per row, the first row's keys as columns) as an aligned text table."""
    if not rows:
        return ""
    columns = list(rows[0])
    values = [[row.get(c) for c in columns] for row in rows]
    numeric = [i > 0 and is_numeric_column(v[i] for v in values) for i in range(len(columns))]
    cells = [[format_value(v, missing) for v in row] for row in values]
    return text_table(columns, cells, numeric)


# ---------------------------------------------------------------------------------------- Markdown

# Backslash escapes for what Markdown would read as syntax (code, links and images, emphasis, tables);
# the HTML-significant characters become entities, so no tag from the data is ever live.
_MARKDOWN_ESCAPES = {"\\": "\\\\", "`": "\\`", "*": "\\*", "[": "\\[", "]": "\\]", "|": "\\|",
                     "<": "&lt;", ">": "&gt;", "&": "&amp;"}
_MARKDOWN_SPECIAL = re.compile("[" + re.escape("".join(_MARKDOWN_ESCAPES)) + "]")
# what would make a line a heading or a list item ("# x", "- x", "1. x"), escaped by a backslash before its mark
_BLOCK_START = re.compile(r"^(\s*)(#{1,6}|[-+]|\d{1,9}(?=[.)]))(?=[.)]?(\s|$))")


def markdown_text(text: Any) -> str:
    """Text from data (a run name, a path, a value, a message) as inert Markdown on one line.

    HTML tags, links, images, code spans, emphasis and table pipes are escaped, and newlines become
    spaces, so the text shows as written and cannot break the table or paragraph it is put in.
    """
    one_line = " ".join(str(text).splitlines())
    escaped = _MARKDOWN_SPECIAL.sub(lambda m: _MARKDOWN_ESCAPES[m.group()], one_line)
    return _BLOCK_START.sub(_escape_block_start, escaped, count=1)


def _escape_block_start(match: "re.Match[str]") -> str:
    indent, mark = match.group(1), match.group(2)
    if mark[0].isdigit():
        return indent + mark + "\\"  # "1. x" -> "1\. x": the backslash goes before the dot
    return indent + "\\" + mark


def markdown_code(text: str) -> str:
    """A fenced code block holding `text` as it is (the fence is longer than any run of backticks in it)."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}\n{text}\n{fence}"


def markdown_table(header: Sequence[str], cells: Sequence[Sequence[str]], numeric: Optional[Sequence[bool]] = None) -> str:
    """A Markdown (GitHub) pipe table of already formatted cells, every cell escaped; numeric columns right-aligned."""
    numeric = list(numeric) if numeric is not None else [False] * len(header)

    def line(values: Iterable[str]) -> str:
        return "| " + " | ".join(markdown_text(v) for v in values) + " |"

    lines = [line(header), "| " + " | ".join("---:" if n else "---" for n in numeric) + " |"]
    lines += [line(r) for r in cells]
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------------------------------- HTML

STYLE = """
body { font-family: -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; margin: 2em;
       color: #1a1a1a; max-width: 1400px; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; white-space: nowrap; }
th { background: #f2f2f2; position: sticky; top: 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr:nth-child(even) td { background: #fafafa; }
tr.best td { background: #e6f4ea; font-weight: 600; }
.scroll { overflow-x: auto; }
figure { display: inline-block; margin: 0.5em 1em 1em 0; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.85em; color: #555; max-width: 600px; }
pre, code { background: #f6f8fa; padding: 0.1em 0.3em; border-radius: 3px; }
pre { padding: 0.7em; overflow-x: auto; }
.warning { color: #8a4b00; }
"""


def html_table(header: Sequence[str], cells: Sequence[Sequence[str]], numeric: Optional[Sequence[bool]] = None,
               highlight: Optional[int] = None) -> str:
    """An HTML <table> of already formatted cells, every cell escaped (numbers right-aligned; row `highlight` marked)."""
    numeric = list(numeric) if numeric is not None else [False] * len(header)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for index, values in enumerate(cells):
        tds = "".join(f'<td class="num">{html.escape(v)}</td>' if n else f"<td>{html.escape(v)}</td>"
                      for v, n in zip(values, numeric))
        mark = ' class="best"' if index == highlight else ""
        body.append(f"<tr{mark}>{tds}</tr>")
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(body) + "\n</tbody>\n</table>"


def html_page(title: str, parts: Sequence[str]) -> str:
    """A self-contained HTML page (inline CSS, no scripts, no external files) around `parts` (already HTML)."""
    body = "\n".join(f'<div class="scroll">{p}</div>' if p.startswith("<table") else p for p in parts)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
            f"<h1>{html.escape(title)}</h1>\n{body}\n</body>\n</html>\n")
