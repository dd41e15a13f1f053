"""What the chief and its workers say to each other beyond keras-tuner's protocol.

keras-tuner's gRPC service carries the trials. ktk adds three small calls on the same channel (service
:data:`SERVICE`, JSON messages): ``Hello`` (a worker's handshake: its config must be the chief's, its id not in
use), ``Heartbeat`` and ``Goodbye``.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Dict

SERVICE = "ktk.Sweep"
CALLS = ("Hello", "Heartbeat", "Goodbye")


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, default=str).encode("utf-8")


def loads(data: bytes) -> Any:
    return json.loads(data.decode("utf-8"))


def config_identity(config: Any) -> Dict[str, Any]:
    """The resolved config with its search section normalized (the sweep's config.yaml): a worker's must equal it."""
    from toolkit.search import parse_search
    from toolkit.sweeps.directory import sweep_config_dict

    return sweep_config_dict(config, parse_search(config))


def config_fingerprint(identity: Dict[str, Any]) -> str:
    """A short hash of :func:`config_identity`."""
    text = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
