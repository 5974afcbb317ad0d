"""Validation of a compressed model against its original (stub: filled in by #7)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from mcompress.config import ValidateConfig
from mcompress.report import Gate, RunReport


def validate_pair(
    original: Path,
    compressed: Path,
    cfg: ValidateConfig,
    progress: Callable[[str, int, int], None],
) -> dict[str, Any] | None:
    """Run both models on the same inputs and measure how far apart they are."""
    return None


def evaluate_gates(cfg: ValidateConfig, report: RunReport) -> list[Gate]:
    """Compare the report's measurements to the configured thresholds."""
    gates = []
    if cfg.min_compression_ratio is not None:
        value = report.compression_ratio
        gates.append(
            Gate(
                "min_compression_ratio",
                cfg.min_compression_ratio,
                value,
                value is not None and value >= cfg.min_compression_ratio,
            )
        )
    return gates
