"""Which sweep trials may be trained together as one pack (``search.pack``), as pure functions of their configs.

The packed model (:mod:`toolkit.sweeps.packed`) trains each member exactly as it would train alone, so a pack
only needs what its members share: the same mini-batches, in the same number per epoch. Trials pack when their
configs agree on everything that makes the batches (the data section and task, batch size, shuffle, class
weights, steps per execution) and use nothing the packed path does not implement. Everything else may differ:
the seed (members with other seeds get their own pipeline), layer widths and depth, activations, dropout,
regularization, initializers, the optimizer and its arguments, the learning-rate schedule, epochs and early
stopping. Trials that cannot pack run alone, unchanged. Nothing here imports TensorFlow or keras-tuner.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

OFF = "off"
AUTO = "auto"
# search.pack: auto packs this many trials at most. Measured on digits MLPs (5 epochs, 2 CPU cores; README,
# "Packed trials"), per trial including building: stacked packs 0.34 s in packs of 8, 0.22 s of 16, 0.19 s of
# 32; packs of members with their own train steps 0.8-1.2 s in packs of 4 to 16 (2.4-3.0 s alone). 16 takes
# most of the gain while keeping the oracle's wait for a pack's results, and a pack's memory, modest.
AUTO_PACK_SIZE = 16
# A pack's members together may hold at most this much memory (weights, gradients, optimizer slots and
# activations of one batch, estimated by :func:`member_memory_bytes`); a larger pack is split.
PACK_MEMORY_BUDGET_MB = 1024

# Keys of `training` the pack's shared pipeline is made from: they must be equal in a pack.
_SHARED_TRAINING = ("batch_size", "shuffle", "class_weight", "steps_per_execution")
# Settings of `training` the packed path does not implement: a trial that changes them from these values
# runs alone. (Absent keys are at their defaults.)
_LONE_UNLESS = {"precision": "float32", "jit_compile": ("auto", False), "distribute": None,
                "callbacks": ([], None), "monitor": ({"gradients": False}, None)}


def pack_size(setting: Union[str, int], tuner: str) -> int:
    """How many trials to take from the oracle at once for ``search.pack`` (1: none packed).

    Args:
        setting: ``"auto"``, ``"off"`` or a positive int.
        tuner: the search's tuner. With ``auto``, the Bayesian tuner takes trials one at a time (each
            proposal then uses every earlier result); an explicit K packs it too.
    """
    if setting == OFF:
        return 1
    if setting == AUTO:
        return 1 if tuner == "bayesian" else AUTO_PACK_SIZE
    return int(setting)


def pack_key(config: Mapping[str, Any], executions: int = 1, task: Optional[Mapping[str, Any]] = None) -> Optional[str]:
    """What a trial must share with the others of its pack, as text; None when it must run alone.

    Args:
        config: the trial's resolved config (``Config.to_dict()``).
        executions: ``search.executions_per_trial`` (more than one: the trial runs alone).
        task: the trial's task, when known (a trial with TensorBoard tracking runs alone).
    """
    if executions != 1 or (task is not None and task.get("tensorboard_dir")):
        return None
    training = config.get("training") or {}
    for key, allowed in _LONE_UNLESS.items():
        allowed = allowed if isinstance(allowed, tuple) else (allowed,)
        if key in training and training[key] not in allowed:
            return None
    model = config.get("model") or {}
    if model.get("custom_modules"):  # code ktk does not know might share state between members
        return None
    shared = {"data": config.get("data"), "task": config.get("task"),
              "training": {key: training.get(key) for key in _SHARED_TRAINING}}
    return json.dumps(shared, sort_keys=True, default=str)


def group(keys: Sequence[Optional[str]], size: int) -> List[List[int]]:
    """Splits trials (given by their pack keys, in order) into packs of at most `size` trials of one key.

    Returns:
        Lists of indices into `keys`, in order of their first trial; a trial whose key is None is a pack of one.
    """
    packs: List[List[int]] = []
    open_packs: Dict[str, List[int]] = {}
    for index, key in enumerate(keys):
        if key is None or size <= 1:
            packs.append([index])
            continue
        current = open_packs.get(key)
        if current is None or len(current) >= size:
            current = open_packs[key] = []
            packs.append(current)
        current.append(index)
    return packs


def member_memory_bytes(params: int, batch: int, activations: int) -> int:
    """Estimated memory of one member: weights, gradients and two optimizer slots (4 copies of its parameters),
    and three copies (forward, backward, dropout masks) of one batch of its layers' outputs, in float32."""
    return 4 * (4 * params + 3 * batch * activations)


def split_by_memory(sizes: Sequence[int], budget_bytes: int) -> List[List[int]]:
    """Splits a pack (its members' estimated bytes, in order) into consecutive packs within `budget_bytes`.

    A member larger than the budget alone is a pack of one (it runs as a lone trial would).
    """
    packs: List[List[int]] = []
    total = 0
    for index, size in enumerate(sizes):
        if not packs or total + size > budget_bytes:
            packs.append([])
            total = 0
        packs[-1].append(index)
        total += size
    return packs
