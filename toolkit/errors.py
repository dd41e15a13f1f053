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
import unicodedata
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
        hint: a few words after the received value, in parentheses (how YAML read it, what to write).
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
        hint: Optional[str] = None,
    ):
        self.problem = problem
        self.hint = hint
        self.where = where
        self.expected = expected
        self.received = received
        self.choices = list(choices) if choices is not None else None
        self.file = file
        super().__init__(self.message)

    @property
    def message(self) -> str:
        place = ": ".join(shorten(str(p), 2 * SHOWN) for p in (self.file, self.where) if p)
        parts = []
        if self.problem:
            parts.append(self.problem)
        if self.expected:
            parts.append(f"expected {self.expected}")
        if self.received is not UserError._UNSET:
            parts.append(f"received {show(self.received)}" + (f" ({self.hint})" if self.hint else ""))
        text = "; ".join(parts) if parts else "invalid value"
        if not text.endswith((".", "?", "!")):
            text += "."
        if self.choices is not None:
            text += " Valid choices: " + (", ".join(c if isinstance(c, str) else show(c) for c in self.choices)
                                          or "(none)") + "."
            if isinstance(self.received, str) and len(self.received) <= SHOWN:
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


def quote_hint(value: Any) -> Optional[str]:
    """Why a value is not text where text was expected, when YAML made it so: an unquoted ``yes``, ``~``,
    ``2020-01-01`` or ``1.5`` is read as a boolean, null, date or number. None for other values."""
    if isinstance(value, bool):
        return "YAML reads unquoted true/false/yes/no/on/off as a boolean; quote it for text"
    if value is None:
        return "YAML reads unquoted ~, null or nothing as null; quote it for text"
    if isinstance(value, (int, float)):
        return "YAML reads it as a number; quote it for text"
    if type(value).__name__ in ("date", "datetime"):
        return "YAML reads it as a date; quote it for text"
    return None


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


SHOWN = 200  # characters of a value a message shows; longer ones end in "..."


def show(value: Any, limit: int = SHOWN) -> str:
    """Formats a received value for a message: strings quoted, everything else as YAML would show it.

    Safe for any value: long text, lists and mappings are cut (by characters, never inside one) to about
    `limit` characters, and an integer too long to print is described by its number of digits.
    """
    if isinstance(value, str):
        if len(value) <= limit:
            return repr(value)
        return repr(shorten(value, max(limit - 5, 1), ellipsis="")) + "..."  # the quotes stay closed
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) and value.bit_length() > _INT_BITS_SHOWN:
        return f"a{' negative' if value < 0 else 'n'} integer of {_digits(value)} digits"
    if isinstance(value, (dict, list, tuple)):
        return _compact(value, limit)
    if type(value).__name__ in ("date", "datetime") and hasattr(value, "isoformat"):
        return value.isoformat()  # as YAML wrote it (an unquoted 2020-01-01 is a date)
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a value that cannot describe itself is still shown
        text = f"<{type(value).__name__}>"
    return shorten(text, limit)


_INT_BITS_SHOWN = 330  # about 100 digits: more is unreadable (and Python refuses to print over 4300)


def _digits(value: int) -> int:
    """Decimal digits of an integer, counted without converting it to text."""
    value = abs(value)
    digits = max(1, int(value.bit_length() * 0.30102999566398120))  # log10(2): the count or one less
    return digits + 1 if value >= 10 ** digits else digits


def _compact(value: Any, limit: int) -> str:
    """A list or mapping in YAML's flow style, cut after about `limit` characters."""
    opening, closing = ("{", "}") if isinstance(value, dict) else ("[", "]")
    items = value.items() if isinstance(value, dict) else ((None, v) for v in value)
    text = opening
    for i, (key, item) in enumerate(items):
        if len(text) >= limit:
            return text + ("..." if i == 0 else ", ...") + closing
        room = max(limit - len(text), 10)
        part = show(item, room) if key is None else f"{_key(key, room)}: {show(item, room)}"
        text += (", " if i else "") + part
    return text + closing


def _key(key: Any, limit: int) -> str:
    return shorten(key, limit) if isinstance(key, str) else show(key, limit)


def shorten(text: str, limit: int = SHOWN, ellipsis: str = "...") -> str:
    """`text` cut to at most `limit` characters (the ellipsis included), never inside a character."""
    if len(text) <= limit:
        return text
    return cut(text, max(limit - len(ellipsis), 0)) + ellipsis


def cut(text: str, length: int) -> str:
    """The first `length` characters of `text` or fewer: never a character cut from the marks that combine
    with it (an accent, a variation selector, a skin tone, a joiner in an emoji sequence), so the end reads
    cleanly. The one truncation of text for people (messages, tables, progress lines)."""
    end = min(max(length, 0), len(text))
    while 0 < end < len(text) and _joins_previous(text[end]):
        end -= 1
    if end > 0 and text[end - 1] == "\u200d":  # a zero-width joiner needs the character after it
        end -= 1
    return text[:end]


def _joins_previous(char: str) -> bool:
    return unicodedata.category(char) in ("Mn", "Me", "Mc") or "\ufe00" <= char <= "\ufe0f" or \
        char == "\u200d" or "\U0001f3fb" <= char <= "\U0001f3ff"  # (skin tones)


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


# ------------------------------------------------------------------ errors carried out of tf.data
# An error raised in Python code that tf.data runs (a generator of ``Dataset.from_generator``, a function of
# ``tf.numpy_function``) reaches the caller of ``fit``/``evaluate`` as TensorFlow's own error, with a C++ and a
# Python traceback pasted into its text. ktk's functions there are wrapped with :func:`carried`, which keeps the
# error they raise; :func:`raise_carried` around the Keras call raises that error instead of TensorFlow's.

_CARRIED: list = []  # errors kept by carried(), oldest first; tf.data's threads append (atomic under the GIL)


def carried(function: Any) -> Any:
    """`function` (a generator function or a plain one) wrapped so that an error it raises is kept for
    :func:`raise_carried`, then raised on to TensorFlow, which ends the iteration with its own error."""
    import functools
    import inspect

    if inspect.isgeneratorfunction(function):
        @functools.wraps(function)
        def generator(*args: Any, **kwargs: Any) -> Any:
            try:
                yield from function(*args, **kwargs)
            except Exception as error:  # noqa: BLE001 - kept, then raised on
                _CARRIED.append(error)
                raise
        return generator

    @functools.wraps(function)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - kept, then raised on
            _CARRIED.append(error)
            raise
    return call


class raise_carried:
    """Context manager around a Keras call that iterates ktk's datasets (``fit``, ``evaluate``, ``predict``): when
    the call fails after a :func:`carried` function failed, the function's error is raised, not TensorFlow's.
    A TensorFlow error saying a dataset held fewer elements than counted (a file shortened after the count) becomes
    a :class:`UserError` naming `what`."""

    def __init__(self, what: str = "the data"):
        self.what = what

    def __enter__(self) -> "raise_carried":
        self.start = len(_CARRIED)
        self.raised: Optional[BaseException] = None  # the carried error raised instead of the call's own
        return self

    def __exit__(self, kind: Any, error: Any, trace: Any) -> bool:
        kept = _CARRIED[self.start:]
        del _CARRIED[self.start:]
        if error is None or not isinstance(error, Exception):
            return False
        if kept and kept[0] is not error:
            self.raised = kept[0]
            raise kept[0] from None
        text = str(error)
        if not kept and type(error).__module__.startswith("tensorflow") and "expected to contain" in text:
            raise UserError(f"{self.what} changed while training: it holds fewer examples than counted before "
                            f"training ({first_line(error).strip()})",
                            expected="files left as they were until the run ends") from None
        return False
