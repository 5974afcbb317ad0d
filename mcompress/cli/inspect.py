"""Core commands: `run` (YAML pipelines), `strip` and `inspect`."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer

from mcompress import config, model_io
from mcompress.cli.common import EXIT_CODES_HELP, ModelArg, app, out, writes_model


@writes_model("compressed")
def run(
    model: ModelArg,
    config_path: Annotated[
        str,
        typer.Option("-c", "--config", help="YAML pipeline file, or a preset name (level1...)."),
    ],
) -> config.PipelineConfig:
    """Run a YAML pipeline of passes on MODEL.

    Example: mcompress run model.onnx -c level2 --data val.npz --max-accuracy-drop 0.01
    """
    return config.load(config_path)


@writes_model("stripped", pass_type="strip")
def strip(model: ModelArg) -> dict[str, Any]:
    """Remove doc strings, exporter node metadata, stale value_info and unused weights.

    Example: mcompress strip model.onnx   # writes model.stripped.onnx
    """
    return {}


@app.command(epilog=EXIT_CODES_HELP)
def inspect(
    model: ModelArg,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
    top: Annotated[int, typer.Option("--top", help="How many of the largest tensors.")] = 10,
) -> None:
    """Show a model's structure, parameters, sizes and largest weights.

    Example: mcompress inspect model.onnx --json
    """
    from mcompress.analysis import describe
    from mcompress.report import finite, inspect_tables

    facts = describe(model_io.load_model(model), top=top)
    if json_out:
        sys.stdout.write(json.dumps(finite(facts), indent=2) + "\n")
        return
    for table in inspect_tables(facts):
        out.print(table)
