"""`--shard I/N`: which of a batch's models one CI matrix job compresses.

Shard I of N takes every N-th model in path order, starting at the I-th, so the partition
depends only on the set of models (not on the order the paths were given) and the shards
together cover every model exactly once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcompress.errors import UsageError

_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


@dataclass(frozen=True)
class Shard:
    """Shard `index` (1-based) of `count`."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """`I/N` with 1 <= I <= N, e.g. `2/3`."""
        match = _SHARD.match(text)
        if match is None or not 1 <= int(match[1]) <= int(match[2]):
            raise UsageError(f"--shard '{text}' must be I/N with 1 <= I <= N, e.g. 2/3")
        return cls(int(match[1]), int(match[2]))

    @property
    def summary_name(self) -> str:
        """The summary file this shard writes instead of summary.json."""
        return f"summary-{self.index}-of-{self.count}.json"

    def members(self, models: list[Path]) -> list[int]:
        """Positions in `models` that belong to this shard, ascending."""
        by_path = sorted(range(len(models)), key=lambda i: (models[i].as_posix(), i))
        return sorted(by_path[self.index - 1 :: self.count])

    def describe(self, positions: list[int], total: int) -> dict[str, Any]:
        """The `shard` entry of this shard's summary: its rows are the batch's models at
        `positions` (of `total`), which is what lets batch-merge put them back in order."""
        return {
            "index": self.index,
            "count": self.count,
            "models_total": total,
            "positions": positions,
        }
