"""`quantize --calibration` outside static mode: GPTQ rounding (mcompress.recover.rounding)
puts each layer's weights on the int8 grid this pass then uses, compensating each rounding
error in the weights not yet rounded, layer by layer against the original's outputs."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from mcompress.graph import node_excluded
from mcompress.model_io import Model
from mcompress.passes.base import PassContext
from mcompress.recover.layers import find_layers
from mcompress.recover.options import load_calibration, wants_recovery
from mcompress.recover.rounding import nearest, rounder
from mcompress.recover.sequential import RecoveryStats, reconstruct

if TYPE_CHECKING:
    from mcompress.passes.quantize import Config


def pre_round(
    model: Model, cfg: Config, ctx: PassContext, weights: set[str]
) -> tuple[dict[str, Any] | None, list[str]]:
    """GPTQ-round `weights` in place when calibration data is given; (recovery stats, notes)."""
    if cfg.mode == "static" or not wants_recovery(cfg):
        return None, []
    if cfg.bits != 8 or not cfg.weights_symmetric:
        return None, [
            "quantize: GPTQ rounding covers symmetric 8-bit weights; these weights were "
            "rounded to nearest"
        ]
    layers = [layer for layer in find_layers(model) if not node_excluded(layer.node, cfg.exclude)]
    calibration = load_calibration(model, cfg, ctx)
    recovery = RecoveryStats(calibration.source, calibration.synthetic, len(calibration.feeds))
    reconstruct(
        model,
        layers,
        calibration.feeds,
        rounder(cfg.per_channel, weights),
        nearest(cfg.per_channel, weights),
        recovery,
        ctx.progress,
    )
    notes = [recovery.summary()]
    if recovery.synthetic:
        notes.append("quantize: GPTQ calibrated on synthetic random inputs (calibration: random)")
    return asdict(recovery), notes
