"""`mcompress strip`: remove what runs nothing (doc strings, metadata, unused weights)."""

from __future__ import annotations

from typing import Any

from mcompress.cli.common import ModelArg, writes_model


@writes_model("stripped", pass_type="strip")
def strip(model: ModelArg) -> dict[str, Any]:
    """Remove doc strings, exporter node metadata, stale value_info and unused weights.

    Example: mcompress strip model.onnx   # writes model.stripped.onnx
    """
    return {}
