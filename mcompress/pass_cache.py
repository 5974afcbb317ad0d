"""Models after a prefix of a pipeline's passes, kept while a budget search runs.

A search compresses the same input many times with configs that share their first passes (strip
and prune at one sparsity, then each cluster count). With calibration data each recovering pass
is a sweep over the model, so a trial starts from the model its longest already-run prefix left,
and the final run of the winning config starts from the judged trial's own model: no pass runs
twice on the same input. The passes are deterministic, so the output is the same bytes either
way. Only models held in memory (no external data) up to `MAX_BYTES` are kept.
"""

from __future__ import annotations

import copy
import json
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from mcompress.config import PipelineConfig
from mcompress.model_io import Model
from mcompress.report import PassRecord, RunReport

# Serialized bytes of all kept models together; the oldest entries go first.
MAX_BYTES = 256 * 1024 * 1024


@dataclass
class _Entry:
    proto: bytes
    passes: list[PassRecord]
    notes: list[str]


class PassCache:
    """Model (serialized), pass records and notes after the first k passes of a config."""

    def __init__(self, max_bytes: int = MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self.hits = 0
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def resume(self, source: Path, cfg: PipelineConfig, model: Model, report: RunReport) -> int:
        """Put `model` and `report.passes` in the state after the longest cached prefix of
        `cfg.passes`; the number of passes already applied (0: nothing cached)."""
        if model.had_external_data:
            return 0
        for count in range(len(cfg.passes), 0, -1):
            entry = self._entries.get(_key(source, cfg, count))
            if entry is None:
                continue
            self._entries.move_to_end(_key(source, cfg, count))
            model.proto = onnx.load_model_from_string(entry.proto)
            model.notes[:] = list(entry.notes)
            report.passes[:] = copy.deepcopy(entry.passes)
            self.hits += 1
            return count
        return 0

    def store(
        self, source: Path, cfg: PipelineConfig, count: int, model: Model, report: RunReport
    ) -> None:
        """Keep the state after the first `count` passes (when the model is small enough)."""
        if model.had_external_data or model.proto.ByteSize() > self.max_bytes:
            return
        key = _key(source, cfg, count)
        if key in self._entries:
            return
        entry = _Entry(model.proto.SerializeToString(), copy.deepcopy(report.passes[:count]),
                       list(model.notes))  # fmt: skip
        self._entries[key] = entry
        while sum(len(e.proto) for e in self._entries.values()) > self.max_bytes:
            self._entries.popitem(last=False)


def _key(source: Path, cfg: PipelineConfig, count: int) -> str:
    """What decides the model after `count` passes: the input file (path, size, modification
    time), preparation, the data settings passes may read, and those passes' settings."""
    stat = source.stat()
    spec: dict[str, Any] = {
        "input": str(source.resolve()),
        "stat": [stat.st_size, stat.st_mtime_ns],
        "prepare": cfg.prepare,
        "data": cfg.validation.model_dump(mode="json", include={"data", "seed", "input_shapes"}),
        "passes": [p.model_dump(mode="json") for p in cfg.passes[:count]],
    }
    return json.dumps(spec, sort_keys=True, default=str)
