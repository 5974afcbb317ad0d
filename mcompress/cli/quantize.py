"""`mcompress quantize`: int8 dynamic/static or 4-bit weight-only quantization."""

from __future__ import annotations

from typing import Annotated, Any

from mcompress.cli.common import ModelArg, RecoverOpt, config_option, writes_model
from mcompress.passes.quantize import Config


@writes_model(lambda o: "int4" if o.get("bits") == 4 else "int8", pass_type="quantize")
def quantize(
    model: ModelArg,
    mode: Annotated[str | None, config_option(Config, "mode", "--mode")] = None,
    bits: Annotated[int | None, config_option(Config, "bits", "--bits", metavar="8|4")] = None,
    block_size: Annotated[int | None, config_option(Config, "block_size", "--block-size")] = None,
    per_channel: Annotated[
        bool | None, config_option(Config, "per_channel", "--per-channel/--per-tensor")
    ] = None,
    symmetric: Annotated[
        bool | None, config_option(Config, "symmetric", "--symmetric/--asymmetric")
    ] = None,
    calibration: Annotated[
        str | None, config_option(Config, "calibration", "--calibration", metavar="PATH|random")
    ] = None,
    calibration_method: Annotated[
        str | None, config_option(Config, "calibration_method", "--calibration-method")
    ] = None,
    recover: RecoverOpt = None,
    calibration_samples: Annotated[
        int | None, config_option(Config, "calibration_samples", "--calibration-samples")
    ] = None,
    quant_format: Annotated[str | None, config_option(Config, "format", "--format")] = None,
    exclude: Annotated[
        list[str] | None,
        config_option(
            Config,
            "exclude",
            "--exclude",
            metavar="PATTERN",
            help="keep in float: node name, glob or op type (repeatable)",
        ),
    ] = None,
) -> dict[str, Any]:
    """Quantize weights to int8 (or 4-bit) so the model is ~4x smaller and runs in onnxruntime.

    Example: mcompress quantize model.onnx   # writes model.int8.onnx
    """
    return {
        "mode": mode,
        "bits": bits,
        "block_size": block_size,
        "per_channel": per_channel,
        "symmetric": symmetric,
        "calibration": calibration,
        "calibration_method": calibration_method,
        "calibration_samples": calibration_samples,
        "recover": recover,
        "format": quant_format,
        "exclude": exclude or None,
    }
