"""What every doctor check shares: a Finding, and the Context the checks read."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mcompress import model_io
from mcompress.config import PipelineConfig

Severity = Literal["note", "warning", "problem"]
SEVERITIES: tuple[Severity, ...] = ("problem", "warning", "note")


@dataclass(frozen=True)
class Finding:
    """One pre-flight finding: how bad it is, what was found, and what to do about it."""

    severity: Severity
    check: str
    message: str
    fix: str


@dataclass
class Context:
    """What the checks share: the model, the chosen config and data."""

    path: Path
    model: model_io.Model
    cfg: PipelineConfig | None
    data: Path | None
    input_shapes: dict[str, tuple[int, ...]]

    def uses(self, pass_type: str) -> bool:
        """Whether the chosen config runs `pass_type` (always true without a config)."""
        return self.cfg is None or any(p.type == pass_type for p in self.cfg.passes)

    def pass_configs(self, pass_type: str) -> list[Any]:
        if self.cfg is None:
            return []
        return [p for p in self.cfg.passes if p.type == pass_type]


def clip(text: str, limit: int = 160) -> str:
    """`text` cut to `limit` characters, ending with "..." when cut."""
    return text if len(text) <= limit else text[: limit - 3] + "..."
