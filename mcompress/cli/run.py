"""`mcompress run`: a YAML pipeline (or a bundled preset) of passes on one model."""

from __future__ import annotations

from typing import Annotated

import typer

from mcompress import config
from mcompress.cli.common import ModelArg, writes_model


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
