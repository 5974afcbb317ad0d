"""GPTQ rounding for symmetric int8 weights: each layer's weights are put on exactly the grid
the quantize pass will use (scale = max|w| / 127 per output channel or per tensor), rounding
column by column with the error spread over the columns not yet rounded, against the original
layer's outputs. The element that sets each scale keeps its value, so the pass's own rounding
finds the same scale and reproduces these integers exactly."""

from __future__ import annotations

import numpy as np

from mcompress.recover import solve
from mcompress.recover.layers import Layer
from mcompress.recover.pruning import prunable_columns
from mcompress.recover.sequential import Compressor
from mcompress.recover.stats import GramStats

QMAX = 127


def _grid(mats: np.ndarray, cols: np.ndarray, per_channel: bool) -> tuple[np.ndarray, np.ndarray]:
    """Scale per row `[g, rows]` and the mask of the element setting each scale."""
    core = np.abs(mats[..., cols])
    if per_channel:
        peak = core.max(axis=2)
        arg = core.argmax(axis=2)
        pinned = np.zeros(core.shape, bool)
        np.put_along_axis(pinned, arg[..., None], True, axis=2)
    else:
        peak = np.full(core.shape[:2], core.max())
        pinned = np.zeros(core.shape, bool)
        pinned.reshape(-1)[int(core.argmax())] = True
    full = np.zeros(mats.shape, bool)
    full[..., cols] = pinned
    return np.where(peak > 0, peak / QMAX, 1.0), full


def rounder(per_channel: bool, layers: set[str]) -> Compressor:
    """GPTQ int8 rounding for the layers named in `layers` (weight names); others re-fitted."""

    def compress(layer: Layer, mats: np.ndarray, stats: GramStats) -> np.ndarray:
        assert stats.hcc is not None
        target = solve.ls_target(mats, stats.hcc, stats.cross())
        cols = prunable_columns(layer, mats)
        if layer.weight.name not in layers:
            return target if solve.untouched(mats, cols) else mats
        if np.unique(mats[..., cols]).size <= solve.SHARED_VALUES:
            return mats  # clustered: rounding to nearest keeps its shared values
        scale, pinned = _grid(mats, cols, per_channel)

        def snap(column: np.ndarray, col: int) -> np.ndarray:
            q = np.clip(np.rint(column / scale), -QMAX, QMAX) * scale
            fixed = pinned[..., col]
            return np.where(fixed, np.sign(mats[..., col]) * QMAX * scale, q)

        zero = (mats == 0) & cols
        h = solve.damped(stats.hcc)
        return solve.obs_sweep(target, h, prunable=cols, fixed_zero=zero, quantize=snap)

    return compress


def nearest(per_channel: bool, layers: set[str]) -> Compressor:
    """Round to nearest on the same grid (the report's 'without')."""

    def compress(layer: Layer, mats: np.ndarray, stats: GramStats) -> np.ndarray:
        if layer.weight.name not in layers:
            return mats
        cols = prunable_columns(layer, mats)
        scale, _ = _grid(mats, cols, per_channel)
        out = mats.copy()
        out[..., cols] = np.clip(np.rint(mats[..., cols] / scale[..., None]), -QMAX, QMAX)
        out[..., cols] *= scale[..., None]
        return out

    return compress
