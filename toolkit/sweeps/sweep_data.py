"""A sweep's data: loaded and split once per sweep, and given to trials without its test split."""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Dict, Tuple


class DataCache:
    """Data loaded and split once per sweep (once per distinct data section when data.* is searched)."""

    def __init__(self) -> None:
        self._full: Dict[str, Any] = {}
        self._trials: Dict[str, Any] = {}

    @staticmethod
    def key(config: Any) -> str:
        """What the loaded data depends on: the data section, the seed (the split) and the task."""
        return json.dumps({"data": config.to_dict()["data"], "seed": config.seed, "task": config.task},
                          sort_keys=True, default=str)

    def get(self, config: Any) -> Any:
        """The full data set (all three splits): for best/ and the checks before the search."""
        from toolkit.data import load_data

        key = self.key(config)
        if key not in self._full:
            self._full[key] = load_data(config)
        return self._full[key]

    def get_for_trials(self, config: Any) -> Tuple[str, Any]:
        """(key, data set without its test split): trials cannot use the test split, even by mistake."""
        key = self.key(config)
        if key not in self._trials:
            full = self.get(config)
            if hasattr(full, "without_test"):  # pipelines (streamed tables, image files): paths, not arrays
                self._trials[key] = full.without_test()
            else:
                self._trials[key] = dataclasses.replace(full, x_test=full.x_test[:0], y_test=full.y_test[:0])
        return key, self._trials[key]
