"""`mcompress quantize`: int8 dynamic/static or 4-bit weight-only quantization."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from mcompress.cli.common import ModelArg, writes_model


@writes_model(lambda o: "int4" if o.get("bits") == 4 else "int8", pass_type="quantize")
def quantize(
    model: ModelArg,
    mode: Annotated[
        str | None,
        typer.Option(
            "--mode",
            help="dynamic (default: int8 weights, MatMul activations at run time), static "
            "(activations from calibration data), or weight-only.",
        ),
    ] = None,
    bits: Annotated[
        int | None, typer.Option("--bits", help="8 (default) or 4 (block-wise, MatMul/Gather).")
    ] = None,
    block_size: Annotated[
        int | None, typer.Option("--block-size", help="Weights per scale for --bits 4 (32).")
    ] = None,
    per_channel: Annotated[
        bool | None,
        typer.Option("--per-channel/--per-tensor", help="One scale per channel (default) or one."),
    ] = None,
    symmetric: Annotated[
        bool | None,
        typer.Option(
            "--symmetric/--asymmetric",
            help="Weights and activations (default: symmetric weights, asymmetric activations).",
        ),
    ] = None,
    calibration: Annotated[
        str | None,
        typer.Option(
            "--calibration",
            help="Static: .npz keyed by input names, a folder of them, or 'random' "
            "(default: --data).",
        ),
    ] = None,
    calibration_method: Annotated[
        str | None,
        typer.Option("--calibration-method", help="minmax (default), entropy or percentile."),
    ] = None,
    calibration_samples: Annotated[
        int | None, typer.Option("--calibration-samples", help="Calibration inputs (128).")
    ] = None,
    quant_format: Annotated[
        str | None, typer.Option("--format", help="Static: qdq (default) or qoperator.")
    ] = None,
    exclude: Annotated[
        list[str] | None,
        typer.Option(
            "--exclude",
            metavar="PATTERN",
            help="Keep in float: node name, glob or op type (repeatable).",
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
        "format": quant_format,
        "exclude": exclude or None,
    }
