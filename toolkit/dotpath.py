"""Dot paths into nested config data (``model.hidden.0``): get and set, without validation.

Kept apart from :mod:`toolkit.config` (pydantic) so that readers of result files, like ``ktk compare``,
can use them without loading the config schema.
"""

from __future__ import annotations

import re
from typing import Any

from toolkit.errors import UserError


def get_path(data: Any, path: str) -> Any:
    """The value at a dot path (``model.hidden.0``) of nested dicts and lists; KeyError if absent."""
    node = data
    for part in path.split("."):
        if isinstance(node, list):
            if not re.fullmatch(r"-?\d+", part) or not -len(node) <= int(part) < len(node):
                raise KeyError(path)
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            raise KeyError(path)
    return node


def set_path(data: dict, path: str, value: Any, *, where: str = "--set") -> None:
    """Sets the value at a dot path in place, creating dicts along the way.

    List items are addressed by index (``model.hidden.0``); an index past the end appends when it is
    exactly the length. Unknown keys are not checked here: validation rejects them afterwards.
    """
    parts = path.split(".")
    if not path or any(p == "" for p in parts):
        raise UserError(where=where, expected="a dot path like model.dropout", received=path)
    node: Any = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not re.fullmatch(r"\d+", part) or int(part) > len(node):
                raise UserError(
                    where=where,
                    expected=f"a list index from 0 to {len(node)} at '{'.'.join(parts[:i + 1])}'",
                    received=part,
                )
            index = int(part)
            if index == len(node):
                node.append(None if last else {})
            if last:
                node[index] = value
            else:
                if not isinstance(node[index], (dict, list)):
                    node[index] = {}
                node = node[index]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if not isinstance(node.get(part), (dict, list)):
                    node[part] = {}
                node = node[part]
        else:
            raise UserError(
                where=where,
                expected=f"'{'.'.join(parts[:i])}' to be a mapping or list",
                received=node,
            )
