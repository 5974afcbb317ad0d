"""`mcompress fp16`: half-precision weights (float16 or bfloat16), and compute where it runs."""

from __future__ import annotations

from typing import Annotated, Any

from mcompress.cli.common import ModelArg, config_option, writes_model
from mcompress.passes.fp16 import Config


@writes_model(lambda o: "bf16" if o.get("dtype") == "bfloat16" else "fp16", pass_type="fp16")
def fp16(
    model: ModelArg,
    dtype: Annotated[str | None, config_option(Config, "dtype", "--dtype")] = None,
    compute: Annotated[str | None, config_option(Config, "compute", "--compute")] = None,
    keep_io_types: Annotated[
        bool | None, config_option(Config, "keep_io_types", "--keep-io-types/--half-io")
    ] = None,
    block_op: Annotated[
        list[str] | None,
        config_option(
            Config,
            "block_ops",
            "--block-op",
            metavar="OP",
            help="op type kept in float32 (repeatable; replaces the default list)",
        ),
    ] = None,
    block_node: Annotated[
        list[str] | None,
        config_option(
            Config,
            "block_nodes",
            "--block-node",
            metavar="PATTERN",
            help="node name or glob kept in float32 (repeatable)",
        ),
    ] = None,
    auto: Annotated[bool | None, config_option(Config, "auto", "--auto/--no-auto")] = None,
    clamp: Annotated[bool | None, config_option(Config, "clamp", "--clamp/--no-clamp")] = None,
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
