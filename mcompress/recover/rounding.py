"""GPTQ rounding: each layer's weights are put on exactly the grid the quantize pass will use,
rounding column by column with the error spread over the columns not yet rounded, against the
original layer's outputs.

A grid is a step per weight and a largest code: symmetric int8 (`uniform_grid`: scale =
max|w| / qmax per output channel or per tensor) or any grid the quantize pass describes (its
4-bit blocks). The element that sets each step keeps its original value, so the pass's own
rounding finds the same grid and reproduces the integers GPTQ chose exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mcompress.recover import solve
from mcompress.recover.layers import Layer
from mcompress.recover.pruning import prunable_columns
from mcompress.recover.sequential import Compressor
from mcompress.recover.stats import GramStats


@dataclass
class Grid:
    """Per-weight step `[g, rows, d]` (bias column 1), the largest code, and the elements
    whose original value must stay (they set the steps)."""

    step: np.ndarray
    qmax: int
    pinned: np.ndarray

    def snap(self, values: np.ndarray, col: int) -> np.ndarray:
        """Values of column `col` on the grid."""
        step = self.step[..., col]
        return np.clip(np.rint(values / step), -self.qmax, self.qmax) * step

    def nearest(self, mats: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Round to nearest: what the pass writes for weights `mats` without GPTQ."""
        out = mats.copy()
        q = np.clip(np.rint(mats / self.step), -self.qmax, self.qmax) * self.step
        out[..., cols] = q[..., cols]
        return out


# Weight name -> the grid of its original matrices (None: the weight is not quantized here).
GridOf = Callable[[Layer, np.ndarray, np.ndarray], Grid | None]


def uniform_grid(mats: np.ndarray, cols: np.ndarray, per_channel: bool, qmax: int) -> Grid:
    """Symmetric integer grid, one scale per row (output channel) or per tensor."""
    core = np.abs(mats[..., cols])
    if per_channel:
        peak = core.max(axis=2)
        pinned = np.zeros(core.shape, bool)
        np.put_along_axis(pinned, core.argmax(axis=2)[..., None], True, axis=2)
    else:
        peak = np.full(core.shape[:2], core.max())
        pinned = np.zeros(core.shape, bool)
        pinned.reshape(-1)[int(core.argmax())] = True
    step = np.ones(mats.shape)
    step[..., cols] = np.where(peak > 0, peak / qmax, 1.0)[..., None]
    full = np.zeros(mats.shape, bool)
    full[..., cols] = pinned
    return Grid(step, qmax, full)


def rounder(grid_of: GridOf) -> Compressor:
    """GPTQ rounding onto each layer's grid; layers without one are only re-fitted."""

    def compress(layer: Layer, mats: np.ndarray, stats: GramStats) -> np.ndarray:
        assert stats.hcc is not None
        target = solve.ls_target(mats, stats.hcc, stats.cross(), stats.ridge)
        cols = prunable_columns(layer, mats)
        grid = grid_of(layer, mats, cols)
        if grid is None:
            return target if solve.untouched(mats, cols) else mats
        if np.unique(mats[..., cols]).size <= solve.SHARED_VALUES:
            return mats  # clustered: rounding to nearest keeps its shared values
        fixed = grid.nearest(mats, cols)

        def snap(column: np.ndarray, col: int) -> np.ndarray:
            return np.where(grid.pinned[..., col], fixed[..., col], grid.snap(column, col))

        zero = (mats == 0) & cols
        h = solve.damped(stats.hcc, stats.ridge)
        out = solve.obs_sweep(target, h, prunable=cols, fixed_zero=zero, quantize=snap)
        return np.where(grid.pinned, mats, out)

    return compress


def nearest(grid_of: GridOf) -> Compressor:
    """Round to nearest on the same grids (the report's 'without')."""

    def compress(layer: Layer, mats: np.ndarray, stats: GramStats) -> np.ndarray:
        cols = prunable_columns(layer, mats)
        grid = grid_of(layer, mats, cols)
        return mats if grid is None else grid.nearest(mats, cols)

    return compress
