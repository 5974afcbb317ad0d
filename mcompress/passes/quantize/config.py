"""Options of the quantize pass."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from mcompress.passes.base import PassConfig


class Config(PassConfig):
    """Options of the quantize pass (YAML `{type: quantize, ...}`)."""

    type: Literal["quantize"] = "quantize"
    mode: Literal["dynamic", "static", "weight-only"] = Field(
        "dynamic",
        description="dynamic: int8 weights, activations quantized at run time where that is "
        "fast (MatMul), weight-only elsewhere; static: activations too, from calibration data; "
        "weight-only: int8 storage, float compute",
    )
    bits: Literal[8, 4] = Field(8, description="4 = block-wise weight-only (MatMul, Gather)")
    block_size: int = Field(32, ge=16, le=2048, description="weights per scale when bits is 4")
    per_channel: bool = Field(True, description="one scale per output channel (else per tensor)")
    symmetric: bool | None = Field(
        None,
        description="true: weights and activations symmetric; false: both asymmetric; "
        "unset: symmetric weights, asymmetric activations (onnxruntime's CPU defaults)",
    )
    calibration: str | None = Field(
        None,
        description=".npz keyed by input names, a folder of them, or 'random': static "
        "activation ranges (unset: the validation data); in every mode also GPTQ rounding of "
        "int8 weights (recover)",
    )
    calibration_method: Literal["minmax", "entropy", "percentile"] = Field(
        "minmax", description="static: how activation ranges are found from calibration data"
    )
    calibration_samples: int = Field(128, ge=1, le=100_000, description="calibration inputs")
    format: Literal["qdq", "qoperator"] = Field("qdq", description="static only")
    recover: bool = Field(
        True, description="with calibration data: GPTQ rounding against the original's outputs"
    )
    exclude: tuple[str, ...] = Field(
        (), description="node names (globs), op types or weight names to keep in float"
    )

    @field_validator("block_size")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        if value & (value - 1):
            raise ValueError("block_size must be a power of two (16, 32, 64, 128, ...)")
        return value

    @property
    def weights_symmetric(self) -> bool:
        return self.symmetric is not False

    @property
    def activations_symmetric(self) -> bool:
        return self.symmetric is True
