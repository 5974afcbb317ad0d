"""`mcompress fp16`: half-precision weights (float16 or bfloat16), and compute where it runs."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from mcompress.cli.common import ModelArg, writes_model


@writes_model(lambda o: "bf16" if o.get("dtype") == "bfloat16" else "fp16", pass_type="fp16")
def fp16(
    model: ModelArg,
    dtype: Annotated[
        str | None,
        typer.Option(
            "--dtype",
            help="float16 (default) or bfloat16 (storage-only on onnxruntime CPU: weights are "
            "cast to float32 at load).",
        ),
    ] = None,
    compute: Annotated[
        str | None,
        typer.Option(
            "--compute",
            help="cpu (default: half compute only for ops onnxruntime's CPU provider runs in "
            "half; the rest computes in float32 from half weights), all (every op with a half "
            "type, for GPU providers) or none (storage only).",
        ),
    ] = None,
    keep_io_types: Annotated[
        bool | None,
        typer.Option(
            "--keep-io-types/--half-io",
            help="Keep model inputs/outputs float32 (default) or make them half.",
        ),
    ] = None,
    block_op: Annotated[
        list[str] | None,
        typer.Option(
            "--block-op",
            metavar="OP",
            help="Op type kept in float32 (repeatable; replaces the default list of fragile "
            "ops such as Range, CumSum, TopK).",
        ),
    ] = None,
    block_node: Annotated[
        list[str] | None,
        typer.Option(
            "--block-node",
            metavar="PATTERN",
            help="Node name or glob kept in float32 (repeatable).",
        ),
    ] = None,
    auto: Annotated[
        bool | None,
        typer.Option(
            "--auto/--no-auto",
            help="Run the float32 model once (--data, else random inputs) and keep nodes whose "
            "activations overflow half or lose precision in float32 (default: on).",
        ),
    ] = None,
    clamp: Annotated[
        bool | None,
        typer.Option(
            "--clamp/--no-clamp",
            help="Clamp weights beyond the half range instead of keeping them float32.",
        ),
    ] = None,
) -> dict[str, Any]:
    """Convert weights to float16 (file ~2x smaller) without NaN/inf; inputs/outputs stay float32.

    Example: mcompress fp16 model.onnx   # writes model.fp16.onnx
    """
    return {
        "dtype": dtype,
        "compute": compute,
        "keep_io_types": keep_io_types,
        "block_ops": block_op,
        "block_nodes": block_node,
        "auto": auto,
        "clamp": clamp,
    }
