"""Options of the prune pass."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from mcompress.passes.base import Exclude, checked_overrides, overrides_field
from mcompress.recover.options import RecoveryConfig


class Config(RecoveryConfig):
    """Options of the prune pass (YAML `{type: prune, ...}`)."""

    type: Literal["prune"] = "prune"
    sparsity: float = Field(
        0.5, gt=0, lt=1, description="fraction of weights (or channels) to remove"
    )
    scope: Literal["layer", "global"] = Field(
        "layer", description="one magnitude threshold per tensor, or one across all of them"
    )
    min_elements: int = Field(1024, ge=0, description="leave tensors smaller than this alone")
    include_biases: bool = Field(False, description="also prune Conv/Gemm/RNN biases")
    exclude: Exclude = ()
    layers: dict[str, float] = overrides_field("sparsity", "`sparsity` and `scope`")
    structured: bool = Field(False, description="remove whole output channels")
    criterion: Literal["l1", "l2", "magnitude", "wanda", "sparsegpt"] | None = Field(
        None,
        description="structured: channel ranking norm l1 (default) or l2; unstructured: "
        "magnitude (default without calibration), wanda (|W| x input norm) or sparsegpt "
        "(second-order, default with calibration); the last two need calibration data",
    )
    n_m: str | None = Field(
        None,
        pattern=r"^\d+:\d+$",
        description="N:M pattern, e.g. '2:4': N of every M consecutive input weights removed "
        "(unstructured, with calibration)",
    )

    @field_validator("layers")
    @classmethod
    def _layer_sparsities(cls, layers: dict[str, float]) -> dict[str, float]:
        return checked_overrides(layers, lambda v: 0 <= v < 1, "sparsity", ">= 0 and < 1")

    round_to: int = Field(
        4,
        ge=1,
        description="keep channel counts multiples of this (onnxruntime's fast CPU convolutions "
        "need multiples of 4)",
    )
