"""`distill`: recover a compressed model (the student) from the original (the teacher) on
calibration data, without a training framework.

The last N weighted layers before the classifier are re-fitted by least squares, in graph
order, so that each one's output on the student's own inputs matches the teacher's output of
that layer. Then the classifier layer (the last Gemm / MatMul / 1x1 Conv, feeding the output
through bias Adds, Softmax and reshapes only) is fitted by gradient descent to the teacher's
softened outputs (temperature T), weighted alpha against the hard labels when the calibration
data has `labels`. Part of the calibration data is held out: gradient descent stops when the
KL on it stops falling, and the report's agreement and KL are measured on it; when either got
worse there, every change is undone. Weights keep their form (pruned zeros stay zero,
clustered weights keep their shared values, Cast/Mul-rebuilt int8 codes stay on their grid);
other quantized weights are left alone and listed. The pass runs last in a pipeline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from mcompress.errors import PassError
from mcompress.model_io import Model
from mcompress.passes.base import Exclude, PassContext, PassResult
from mcompress.recover.options import RecoveryConfig, check_calibration

summary = "Distil the compressed model from the original on calibration data (run it last)."

NEEDS_DATA = (
    "distill needs calibration data: give --calibration FILE.npz (or calibration: in the "
    "pass); the original model is the teacher"
)


class Config(RecoveryConfig):
    """Options of the distill pass (YAML `{type: distill, ...}`, last in `passes`)."""

    type: Literal["distill"] = "distill"
    teacher: str | None = Field(
        None, description="the original model (teacher); default: the model the pipeline read"
    )
    layers: int = Field(
        2,
        ge=0,
        le=10_000,
        description="weighted layers before the classifier re-fitted to the teacher's outputs",
    )
    temperature: float = Field(3.0, gt=0, le=100, description="softening of both outputs")
    alpha: float = Field(
        0.7,
        ge=0,
        le=1,
        description="weight of the soft-target loss against hard labels (when data has labels)",
    )
    steps: int = Field(300, ge=0, le=100_000, description="gradient steps for the classifier")
    holdout: float = Field(
        0.25,
        gt=0,
        lt=1,
        description="share of calibration samples held out for early stopping and the report",
    )
    exclude: Exclude = ()


def check(model: Model, cfg: Config) -> None:
    """Refuse to start without calibration data, or with a teacher file that is missing."""
    if cfg.calibration is None:
        raise PassError(NEEDS_DATA)
    check_calibration(cfg)
    if cfg.teacher is not None and not Path(cfg.teacher).is_file():
        raise PassError(f"distill: teacher model '{cfg.teacher}' does not exist")


def apply(model: Model, cfg: Config, ctx: PassContext) -> PassResult:
    """Distil in place; stats give held-out agreement and KL before and after."""
    if not cfg.recover:
        note = "distill: recover is off (--no-recover / recover: false): the model is unchanged"
        return PassResult(modified=False, stats={"skipped": True}, notes=[note])
    from mcompress.passes.distill import fit

    return fit.distill(model, cfg, Path(cfg.teacher) if cfg.teacher else ctx.input_path, ctx)
