"""`mcompress inspect`: a model's structure, parameters, sizes and largest weights."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from mcompress import model_io
from mcompress.cli.common import EXIT_CODES_HELP, ModelArg, app, out


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
    from mcompress.render_terminal import inspect_tables
    from mcompress.report import finite

    facts = describe(model_io.load_model(model), top=top)
    if json_out:
        sys.stdout.write(json.dumps(finite(facts), indent=2) + "\n")
        return
    for table in inspect_tables(facts):
        out.print(table)
