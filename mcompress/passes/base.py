"""The pass contract: a strict `Config`, `check` that fails early, `apply` that edits in place."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict

from mcompress.model_io import Model


class PassConfig(BaseModel):
    """Base of every pass config: immutable, and an unknown key is an error."""

    model_config = ConfigDict(frozen=True, extra="forbid")


@dataclass
class PassContext:
    """What a pass may need beyond its config: data for calibration and a progress hook."""

    input_path: Path
    data: Path | None = None
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    seed: int = 0
    progress: Callable[[str, int, int], None] = lambda label, done, total: None


@dataclass
class PassResult:
    """Whether the model changed, and the numbers the report shows for this pass."""

    modified: bool
    stats: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class Pass(Protocol):
    """Shape of a pass module (see `mcompress.passes.PASSES`)."""

    Config: type[PassConfig]
    summary: str

    def check(self, model: Model, cfg: Any) -> None: ...

    def apply(self, model: Model, cfg: Any, ctx: PassContext) -> PassResult: ...


def unmatched_patterns(model: Model, patterns: tuple[str, ...] | list[str]) -> list[str]:
    """The `exclude` patterns that match no node name, op type or weight name anywhere in the
    model: usually a typo, and then nothing is kept in float."""
    names: set[str] = set()
    for graph in model.graphs():
        names.update(t.name for t in graph.initializer)
        for node in graph.node:
            names.update((node.name, node.op_type))
            if node.op_type == "Constant":
                names.update(node.output)
    return [p for p in patterns if p not in names and not fnmatch.filter(names, p)]
