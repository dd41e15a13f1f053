"""``HOST:PORT`` network addresses given on the command line: ``ktk tune``'s chief and workers
(:mod:`toolkit.distributed.plan`) and a multi-worker run's cluster (:mod:`toolkit.hardware.cluster`).

ASCII only: a host name gRPC resolves (an IDN in its ``xn--`` form), an IPv6 address in brackets, a port of
ASCII digits (never ``int()`` of other digit systems or of thousands of digits).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from toolkit.errors import UserError

_ADDRESS = re.compile(r"\[([0-9A-Fa-f:.]+)\](?::([0-9]{0,6}))?|([A-Za-z0-9._-]+)(?::([0-9]{0,6}))?")


@dataclass(frozen=True)
class Address:
    """A host and a port."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_address(text: str, *, flag: str, default_port: Optional[int] = None,
                  example: str = "127.0.0.1:8470 or 10.0.0.5:8470") -> Address:
    """Parses ``HOST:PORT`` (``[::1]:PORT`` for IPv6); ``HOST`` alone when a default port is allowed.

    Raises:
        UserError: naming the flag, for anything else.
    """
    text = str(text).strip()
    expected = f"HOST:PORT, e.g. {example}"
    match = _ADDRESS.fullmatch(text)
    if not match:
        raise UserError(where=flag, expected=expected, received=text)
    host = match.group(1) or match.group(3)
    port_text = match.group(2) or match.group(4)
    if not port_text:
        if default_port is None:
            raise UserError("the port is missing", where=flag, expected=expected, received=text)
        port = default_port
    else:
        port = int(port_text)
    if not 0 <= port <= 65535 or (port == 0 and default_port is None):
        raise UserError(where=flag, expected="a port between 1 and 65535", received=port)
    return Address(host, port)
