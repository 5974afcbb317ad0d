"""Compact storage of weights that stock onnxruntime expands at load (stub: filled in by #5/#6)."""

from __future__ import annotations

from typing import Any

from mcompress.model_io import Model


def pack(model: Model) -> dict[str, Any]:
    """Re-encode each weight in its smallest lossless form; return per-tensor stats."""
    return {}
