"""Safe YAML: the one way ktk reads YAML (configs, ``extends:`` bases, ``--set`` values, result files).

Safe means two things. No YAML tag can build a Python object (the loaders are ``SafeLoader``\\ s). And
the work is bounded whatever the input: a file is read only when it is a regular file of at most
:data:`MAX_BYTES` (a FIFO or a device is refused without blocking), a document may nest at most
:data:`MAX_DEPTH` levels and hold at most :data:`MAX_VALUES` values with its aliases expanded (so a
700-byte "billion laughs" of nested aliases is refused instead of filling the memory), aliases may not
make a structure contain itself, and mapping keys must be plain values (a list as a key is refused).

Configs and result files may use anchors and aliases within those bounds; in ``--set`` values an alias of
a list or mapping is refused (one value on a command line has no use for them).

Every refusal is a :class:`RefusedYAML`, a ``yaml.YAMLError``, so readers that already treat malformed YAML as "damaged" handle it the same way.

Result files are parsed by libyaml's C parser when PyYAML has it: a run's ``config.yaml`` is read about
ten times faster than by the pure-Python parser, which matters when ``ktk compare`` reads a thousand.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from pathlib import Path
from typing import Any, Dict, Optional, Set, Union

import yaml

from toolkit.errors import UserError, show

MAX_BYTES = 1 << 20  # 1 MiB: a config or a run's config.yaml is a few kB
MAX_DEPTH = 50  # levels of nesting; a config uses fewer than ten
MAX_VALUES = 100_000  # scalars, lists and mappings, counted with every alias expanded


class RefusedYAML(yaml.MarkedYAMLError):
    """Well-formed YAML that ktk refuses to load: too deep, too large, a recursive alias, a list as a key."""

    def __init__(self, problem: str, at: Any = None, expected: Optional[str] = None):
        super().__init__(problem=problem, problem_mark=getattr(at, "start_mark", None))
        self.expected = expected


try:  # libyaml's parser; the constructors (what values become) stay PyYAML's safe ones either way
    _FastSafeLoader: Any = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - PyYAML built without libyaml
    _FastSafeLoader = yaml.SafeLoader


class _Bounded:
    """Loader mixin: checks the composed node graph before any value is constructed from it."""

    allow_aliases = True

    def compose_node(self, parent: Any, index: Any) -> Any:
        # Only the pure-Python composer recurses here (libyaml composes in C and stops at 1000 levels itself);
        # counting keeps a deeply nested document from ending in a RecursionError.
        depth = getattr(self, "_ktk_depth", 0) + 1
        _check_depth(self.peek_event(), depth)  # type: ignore[attr-defined]
        self._ktk_depth = depth
        try:
            return super().compose_node(parent, index)  # type: ignore[misc]
        finally:
            self._ktk_depth = depth - 1

    def get_single_node(self) -> Any:
        node = super().get_single_node()  # type: ignore[misc]
        if node is not None:
            check_nodes(node, allow_aliases=self.allow_aliases)
        return node


def check_nodes(root: yaml.Node, allow_aliases: bool = True) -> None:
    """Refuses a composed YAML document that is too deep or too large once its aliases are expanded.

    An alias is the same node object reached twice, so sizes and heights are computed once per node and
    reused: the check takes time in proportion to the text, never to its expansion.

    Raises:
        RefusedYAML: naming the line of the offending node.
    """
    if _check_plain_nodes(root):
        return
    sizes: Dict[int, int] = {}
    heights: Dict[int, int] = {}
    on_path: Set[int] = set()
    stack: list = [(root, 1, False)]
    while stack:
        node, depth, leaving = stack.pop()
        key = id(node)
        children = _children(node)
        if leaving:
            on_path.discard(key)
            sizes[key] = 1 + sum(sizes[id(child)] for child in children)
            heights[key] = 1 + max((heights[id(child)] for child in children), default=0)
            if sizes[key] > MAX_VALUES:
                raise RefusedYAML(f"the YAML holds more than {MAX_VALUES} values once its aliases are expanded",
                                  node, expected=f"at most {MAX_VALUES} values (aliases *name count each time "
                                                 "they are used)")
            continue
        if key in on_path:
            raise RefusedYAML("an alias refers to a collection that contains it (a recursive structure)", node,
                              expected="aliases (*name) of values defined before them, outside them")
        if key in sizes:  # met before: this is an alias
            if not allow_aliases:
                raise RefusedYAML("anchors and aliases (&name, *name) are not allowed here", node,
                                  expected="plain YAML values")
            _check_depth(node, depth + heights[key] - 1, " once its aliases are expanded")
            continue
        _check_depth(node, depth)
        _check_keys(node)
        on_path.add(key)
        stack.append((node, depth, True))
        stack.extend((child, depth + 1, False) for child in reversed(children))


def _check_plain_nodes(root: yaml.Node) -> bool:
    """The check of a document without aliases, kept lean (the common case: ktk writes none); False on an alias.

    A result file is read in about the time of parsing it alone; the full check would double that.
    """
    seen: Set[int] = set()
    stack = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        value = node.value
        if isinstance(value, str):  # a scalar: nothing below it, and reusing one is harmless
            continue
        _check_depth(node, depth)
        if id(node) in seen:
            return False  # an alias of a list or mapping: the full check counts what it expands to
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            _check_keys(node)
            stack.extend((item, depth + 1) for _, item in value)
        else:
            stack.extend((item, depth + 1) for item in value)
    return True


def _check_depth(node: Any, depth: int, how: str = "") -> None:
    if depth > MAX_DEPTH:
        raise RefusedYAML(f"the YAML is nested more than {MAX_DEPTH} levels deep{how}", node,
                          expected=f"at most {MAX_DEPTH} levels of nesting")


def _check_keys(node: yaml.Node) -> None:
    for key_node, _ in node.value if isinstance(node, yaml.MappingNode) else ():
        if not isinstance(key_node, yaml.ScalarNode):
            kind = "a list" if isinstance(key_node, yaml.SequenceNode) else "a mapping"
            raise RefusedYAML(f"a mapping key is {kind}", key_node, expected="plain keys (text or numbers)")


def _children(node: yaml.Node) -> list:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


# ------------------------------------------------------------------------------------------- loaders


class ResultLoader(_Bounded, _FastSafeLoader):
    """Result files (a run's ``config.yaml``, cells of ``trials.csv``): YAML as ktk writes it, or a user edited it."""


class ConfigLoader(_Bounded, yaml.SafeLoader):
    """Configs: reads ``1e-4`` as a number, as users mean it, and refuses duplicate keys.

    The pure-Python parser: a config is small, and its messages for malformed YAML are the clearer ones.

    YAML 1.1 only reads floats with a dot (``1.0e-4``); ``1e-4`` would otherwise be a string.
    """


class ValueLoader(ConfigLoader):
    """``--set`` values: as in configs, but without aliases of lists and mappings."""

    allow_aliases = False


_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
ConfigLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


_MERGE_TAG = "tag:yaml.org,2002:merge"


def _no_duplicate_keys(loader: Any, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = set()
    for key_node, _ in node.value:
        if key_node.tag == _MERGE_TAG:  # `<<: *base`: its keys may be overridden, that is what it is for
            continue
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {show(key, 60)}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)  # (SafeConstructor's: it applies merge keys first)


ConfigLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicate_keys)

MAX_NUMBER_CHARS = 100  # a number written with more characters is a mistake (a seed has 10 digits)
_BASES = {"0b": ("binary", 2), "0x": ("hexadecimal", 16)}


def _number_length(node: yaml.ScalarNode) -> None:
    """Refuses a number too long to be meant, before Python converts it (over 4300 digits it cannot)."""
    if len(node.value) > MAX_NUMBER_CHARS:
        raise RefusedYAML(f"a number written with {len(node.value):,} characters is too long", node,
                          expected=f"a number of at most {MAX_NUMBER_CHARS} characters")


def _bounded_int(loader: Any, node: yaml.ScalarNode) -> int:
    _number_length(node)
    return yaml.constructor.SafeConstructor.construct_yaml_int(loader, node)


def _bounded_float(loader: Any, node: yaml.ScalarNode) -> float:
    _number_length(node)
    return yaml.constructor.SafeConstructor.construct_yaml_float(loader, node)


def _decimal_int(loader: Any, node: yaml.ScalarNode) -> int:
    """An integer as YAML 1.2 and people read it: decimal digits. YAML 1.1's other notations are refused,
    saying what they would be read as (``0x1F`` is 31, ``017`` is 15, ``1:30`` is 90)."""
    value = _bounded_int(loader, node)
    digits = node.value.replace("_", "").lstrip("+-")
    how = None
    if digits[:2] in _BASES:
        how = f"the {_BASES[digits[:2]][0]} number {value}"
    elif ":" in digits:
        how = f"the base-60 (sexagesimal) number {value}"
    elif len(digits) > 1 and digits[0] == "0":
        how = f"the octal number {value}"
    if how is not None:
        raise RefusedYAML(f"YAML 1.1 reads {node.value} as {how}", node,
                          expected=f"a decimal number ({value}), or quotes ('{node.value}') for text")
    return value


def _decimal_float(loader: Any, node: yaml.ScalarNode) -> float:
    value = _bounded_float(loader, node)
    if ":" in node.value:
        raise RefusedYAML(f"YAML 1.1 reads {node.value} as the base-60 (sexagesimal) number {value}", node,
                          expected=f"a decimal number ({value}), or quotes ('{node.value}') for text")
    return value


ConfigLoader.add_constructor("tag:yaml.org,2002:int", _decimal_int)
ConfigLoader.add_constructor("tag:yaml.org,2002:float", _decimal_float)
ResultLoader.add_constructor("tag:yaml.org,2002:int", _bounded_int)
ResultLoader.add_constructor("tag:yaml.org,2002:float", _bounded_float)


# ------------------------------------------------------------------------------------------- reading


def read_bytes(path: Union[str, Path], limit: int = MAX_BYTES) -> bytes:
    """The bytes of a regular file of at most `limit` bytes.

    Opened without blocking, so a FIFO is refused at once instead of waiting for a writer; devices
    (``/dev/zero``), sockets and directories are refused too.

    Raises:
        OSError: with ``strerror`` saying what is wrong (also for a missing or unreadable file).
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(errno.EISDIR, "a directory, not a file", str(path))
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file (a FIFO, device or socket)", str(path))
        if info.st_size > limit:
            raise OSError(errno.EFBIG, f"larger than {_size(limit)}", str(path))
        chunks, total = [], 0
        while total <= limit:  # the size may grow while we read
            chunk = os.read(fd, min(1 << 16, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > limit:
            raise OSError(errno.EFBIG, f"larger than {_size(limit)}", str(path))
        return b"".join(chunks)
    finally:
        os.close(fd)


def _size(limit: int) -> str:
    return f"{limit >> 20} MiB" if limit % (1 << 20) == 0 else f"{limit} bytes"


def load(text: Union[str, bytes], loader: type = ConfigLoader) -> Any:
    """Parses one YAML document with one of this module's loaders (RefusedYAML or YAMLError when it cannot)."""
    return yaml.load(text, Loader=loader)  # a SafeLoader: constructs plain data only


def parse_yaml(text: str, source: str = "<string>", loader: type = ConfigLoader) -> Any:
    """Parses config YAML text; malformed or refused YAML becomes a UserError naming the line.

    Args:
        source: where the text came from, for the message (a file name, or ``--set key``).
        loader: :class:`ConfigLoader` (files) or :class:`ValueLoader` (``--set`` values: no aliases).
    """
    try:
        return load(text, loader)
    except yaml.YAMLError as error:
        raise _yaml_error(error, source) from None


def _yaml_error(error: yaml.YAMLError, source: str) -> UserError:
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else None
    problem = getattr(error, "problem", None) or str(error)
    if isinstance(error, RefusedYAML):
        return UserError(problem, where=where, expected=error.expected, file=source)
    return UserError(f"malformed YAML: {problem}", where=where, file=source)


def read_yaml_file(path: Union[str, Path], where: Optional[str] = None, file: Optional[str] = None) -> Any:
    """Reads and parses a YAML config file.

    Args:
        path: the file.
        where: the key that named the file (``extends``), when another file did.
        file: that other file.

    Raises:
        UserError: for a missing, unreadable, non-regular, huge, non-UTF-8 or malformed file.
    """
    text = read_text(path, where=where, file=file)
    return parse_yaml(text, source=str(path))


def read_text(path: Union[str, Path], where: Optional[str] = None, file: Optional[str] = None,
              what: str = "a YAML config file") -> str:
    """The UTF-8 text of a (config) file, or a UserError saying why it cannot be read."""
    try:
        data = read_bytes(path)
    except (OSError, ValueError) as error:  # ValueError: a NUL byte in the path
        raise UserError(_unreadable(error), where=where, expected=what, received=str(path), file=file) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        column = error.start - (data.rfind(b"\n", 0, error.start) + 1) + 1
        raise UserError(f"not UTF-8 text (byte 0x{data[error.start]:02x} at line {line}, column {column})",
                        expected=what + " in UTF-8", file=str(path)) from None


def _unreadable(error: Exception) -> str:
    if isinstance(error, FileNotFoundError):
        return "file not found"
    if isinstance(error, IsADirectoryError):
        return "not a file (a directory)"
    if isinstance(error, OSError) and error.errno == errno.EINVAL and error.strerror:
        return error.strerror
    if isinstance(error, OSError) and error.errno == errno.EFBIG:
        return f"the file is {error.strerror}"
    if isinstance(error, OSError):
        return f"cannot read the file ({(error.strerror or str(error)).lower()})"
    return f"cannot read the file ({error})"


def dump_yaml(data: Any) -> str:
    """Plain data as block YAML, keys in their order (how ktk writes every config.yaml)."""
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=100)

