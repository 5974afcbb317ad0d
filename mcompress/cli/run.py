"""`mcompress run`: a YAML pipeline (or a bundled preset) of passes on one model."""

from __future__ import annotations

from typing import Annotated

import typer

from mcompress import config
from mcompress.cli.common import CalibrationOpt, ModelArg, RecoverOpt, writes_model


@writes_model("compressed")
def run(
    model: ModelArg,
    config_path: Annotated[
        str,
        typer.Option("-c", "--config", help="YAML pipeline file, or a preset name (level1...)."),
    ],
    calibration: CalibrationOpt = None,
    recover: RecoverOpt = None,
) -> config.PipelineConfig:
    """Run a YAML pipeline of passes on MODEL.

    Example: mcompress run model.onnx -c level2 --data val.npz --max-accuracy-drop 0.01
    """
    return with_recovery(config.load(config_path), calibration, recover)


def with_recovery(
    cfg: config.PipelineConfig, calibration: str | None, recover: bool | None
) -> config.PipelineConfig:
    """`--calibration` / `--recover` apply to every pass with recovery that does not set them."""
    if calibration is None and recover is None:
        return cfg
    data = cfg.model_dump(by_alias=True, exclude_unset=True)
    for entry, pass_cfg in zip(data.get("passes", []), cfg.passes, strict=True):
        entry["type"] = pass_cfg.type
        if not {"calibration", "recover"} <= set(type(pass_cfg).model_fields):
            continue
        if calibration is not None and "calibration" not in entry:
            entry["calibration"] = calibration
        if recover is not None:
            entry["recover"] = recover
    return config.build(data)
