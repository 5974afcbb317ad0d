"""`mcompress distill`: recover a model compressed elsewhere from its original (the teacher)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from mcompress.cli.common import CalibrationOpt, ExcludeOpt, config_option, writes_model
from mcompress.passes.distill import Config


@writes_model("distilled", pass_type="distill")
def distill(
    original: Annotated[
        Path,
        typer.Argument(
            help="The original model: the teacher, and what the output is validated against.",
            show_default=False,
            metavar="ORIGINAL",
        ),
    ],
    model: Annotated[
        Path,
        typer.Argument(
            help="The compressed model to recover (the student).",
            show_default=False,
            metavar="COMPRESSED",
        ),
    ],
    calibration: CalibrationOpt = None,
    layers: Annotated[int | None, config_option(Config, "layers", "--layers")] = None,
    temperature: Annotated[
        float | None, config_option(Config, "temperature", "--temperature", "-T")
    ] = None,
    alpha: Annotated[float | None, config_option(Config, "alpha", "--alpha")] = None,
    steps: Annotated[int | None, config_option(Config, "steps", "--steps")] = None,
    holdout: Annotated[float | None, config_option(Config, "holdout", "--holdout")] = None,
    exclude: ExcludeOpt = None,
) -> dict[str, Any]:
    """Fit the last layers and the classifier of COMPRESSED to ORIGINAL's outputs.

    Example: mcompress distill model.onnx model.pruned.onnx --calibration calib.npz
    --data val.npz   # writes model.pruned.distilled.onnx, validated against model.onnx
    """
    return {
        "teacher": str(original),
        "calibration": calibration,
        "layers": layers,
        "temperature": temperature,
        "alpha": alpha,
        "steps": steps,
        "holdout": holdout,
        "exclude": exclude or None,
    }
