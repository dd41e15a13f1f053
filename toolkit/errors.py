"""The one error type users see, and its message template.

Every mistake a user can fix (a bad config, a missing file, a bad column, a bad flag) is raised as a
:class:`UserError`. The CLI prints it as one message and exits with status 2; it never shows a traceback.

The template reads::

    configs/x.yaml: model.dropout: expected a number in [0, 1); received 1.5.
    configs/x.yaml: model.dropuot: unknown key; received 'dropuot'. Valid choices: activation, ... Did you mean 'dropout'?
"""

from __future__ import annotations

import difflib
import re
from typing import Any, Iterable, Optional, Sequence


class UserError(Exception):
    """A mistake the user can fix. Shown as one message; the CLI exits with status 2.

    Args:
        problem: free text saying what is wrong, used when `expected` does not fit.
        where: the key path (``model.dropout``) or flag (``--set``) the problem is at.
        expected: what was expected ("a number in [0, 1)").
        received: the value that was received (shown with :func:`show`).
        choices: the valid choices, listed in the message.
        file: the file the key path is in; filled in by the caller when it knows it.
    """

    _UNSET = object()

    def __init__(
        self,
        problem: Optional[str] = None,
        *,
        where: Optional[str] = None,
        expected: Optional[str] = None,
        received: Any = _UNSET,
        choices: Optional[Iterable[Any]] = None,
        file: Optional[str] = None,
    ):
        self.problem = problem
        self.where = where
        self.expected = expected
        self.received = received
        self.choices = list(choices) if choices is not None else None
        self.file = file
        super().__init__(self.message)

    @property
    def message(self) -> str:
        place = ": ".join(str(p) for p in (self.file, self.where) if p)
        parts = []
        if self.problem:
            parts.append(self.problem)
        if self.expected:
            parts.append(f"expected {self.expected}")
        if self.received is not UserError._UNSET:
            parts.append(f"received {show(self.received)}")
        text = "; ".join(parts) if parts else "invalid value"
        if not text.endswith((".", "?", "!")):
            text += "."
        if self.choices is not None:
            text += " Valid choices: " + (", ".join(str(c) for c in self.choices) or "(none)") + "."
            if isinstance(self.received, str):
                guess = did_you_mean(self.received, self.choices)
                if guess is not None:
                    text += f" Did you mean '{guess}'?"
        return f"{place}: {text}" if place else text

    def __str__(self) -> str:
        return self.message

    def at(self, file: Optional[str] = None, prefix: Optional[str] = None) -> "UserError":
        """Returns this error with the file filled in (if unset) and `prefix` put before its key path."""
        if file and not self.file:
            self.file = file
        if prefix:
            self.where = f"{prefix}.{self.where}" if self.where else prefix
        self.args = (self.message,)
        return self


class DataWarning(UserWarning):
    """A doubt about the data that does not stop a run (a split far from its fractions); the CLI shows it as
    one ``ktk: warning:`` line."""


class InvalidValue(ValueError):
    """A :class:`UserError` raised inside a config schema validator, its `where` relative to the value checked.

    pydantic turns a ``ValueError`` raised by a validator into a located error; :mod:`toolkit.config` turns
    it back into this UserError, with the key path of the value put before its `where`.
    """

    def __init__(self, problem: Optional[str] = None, **parts: Any):
        self.error = UserError(problem, **parts)
        super().__init__(self.error.message)


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (library messages can run to many lines), or its type."""
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def reason(error: BaseException) -> str:
    """The line of a library error that says what is wrong. Keras nests the cause of a failed deserialization
    after its last "Exception encountered:", and the cause of a failed layer call on the line after
    "Exception encountered when calling ..."; other errors give their first line."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip()
    marker = "Exception encountered:"
    if marker in text:
        text = text.rsplit(marker, 1)[1].strip()
    elif text.startswith("Exception encountered when calling"):
        rest = [line.strip() for line in text.splitlines()[1:] if line.strip()]
        text = rest[0] if rest else text
    lines = text.splitlines()
    return lines[0] if lines else type(error).__name__


def show(value: Any) -> str:
    """Formats a received value for a message: strings quoted, everything else as YAML would show it."""
    if isinstance(value, str):
        return repr(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = repr(value) if not isinstance(value, (dict, list)) else _compact(value)
    return text if len(text) <= 200 else text[:197] + "..."


def _compact(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_compact(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_compact(v) for v in value) + "]"
    return show(value)


def did_you_mean(name: str, choices: Sequence[Any]) -> Optional[str]:
    """The closest valid choice to a misspelt `name`, or None when nothing is close."""
    names = [str(c) for c in choices]
    lowered = {n.lower(): n for n in names}
    matches = difflib.get_close_matches(str(name).lower(), list(lowered), n=1, cutoff=0.6)
    if not matches:
        # An abbreviation made of the words' initials, as Keras' old `lr` for `learning_rate`.
        matches = [n for n in lowered if len(str(name)) > 1 and "_" in n
                   and "".join(word[:1] for word in n.split("_")) == str(name).lower()][:1]
    if not matches or lowered[matches[0]] == name:
        return None
    return lowered[matches[0]]
