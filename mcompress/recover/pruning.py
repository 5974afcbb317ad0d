"""Unstructured pruning with recovery: the mask and the re-fit of the kept weights (and bias)
for one layer, from its calibration statistics.

`sparsegpt`: OBS saliency w² / [H⁻¹]_jj² chooses the mask while the sweep spreads each removed
weight's error over the weights not yet visited, then the kept weights get their exact
least-squares re-fit. `wanda`: mask by |W| x ||x_j|| per output row, then the same re-fit.
`magnitude`: the plain magnitude mask, then the re-fit. Every target is the original layer's
output (see `solve.ls_target`).
"""

from __future__ import annotations

import numpy as np

from mcompress.recover import solve
from mcompress.recover.layers import Layer
from mcompress.recover.sequential import Compressor
from mcompress.recover.stats import GramStats

# Above this many weights per group an exact per-row re-fit costs more than it gains
# (rows x kept³); the SparseGPT sweep alone is kept.
_EXACT_REFIT_MAX_INPUTS = 1024


def prunable_columns(layer: Layer, mats: np.ndarray) -> np.ndarray:
    """Columns that may be pruned: all but the bias column."""
    cols = np.ones(mats.shape[2], bool)
    if layer.has_bias_column:
        cols[-1] = False
    return cols


def pruner(
    sparsity: dict[str, float], criterion: str, nm: tuple[int, int] | None = None
) -> Compressor:
    """A compressor pruning each layer (by weight name) to its sparsity; other layers are only
    re-fitted to the original outputs (they absorb upstream error) unless an earlier pass
    pruned or clustered them."""

    def compress(layer: Layer, mats: np.ndarray, stats: GramStats) -> np.ndarray:
        assert stats.hcc is not None
        target = solve.ls_target(mats, stats.hcc, stats.cross(), stats.ridge)
        share = sparsity.get(layer.weight.name)
        cols = prunable_columns(layer, mats)
        if share is None:
            return target if solve.untouched(mats, cols) else mats
        h = solve.damped(stats.hcc, stats.ridge)
        zero = (mats == 0) & cols
        if criterion == "sparsegpt" and nm is None and solve.greedy_affordable(mats.shape, share):
            mask = solve.obs_greedy(target, h, share, cols, zero)
        elif criterion == "sparsegpt":
            pruned = solve.obs_sweep(
                target, h, sparsity=share, prunable=cols, fixed_zero=zero, nm=nm
            )
            mask = (pruned == 0) & cols
            if mats.shape[2] > _EXACT_REFIT_MAX_INPUTS:
                return pruned
        else:
            score = solve.wanda_scores(mats, stats.hcc) if criterion == "wanda" else np.abs(mats)
            mask = solve.mask_by_score(np.where(zero, -1.0, score), share, cols, nm)
            if mats.shape[2] > _EXACT_REFIT_MAX_INPUTS:
                return solve.obs_sweep(target, h, prunable=cols, fixed_zero=mask)
        return solve.refit_masked(target, h, mask)

    return compress


def magnitude_baseline(sparsity: dict[str, float]) -> Compressor:
    """The same layers pruned by magnitude without recovery (the report's 'without')."""

    def compress(layer: Layer, mats: np.ndarray, stats: GramStats) -> np.ndarray:
        share = sparsity.get(layer.weight.name)
        if share is None:
            return mats
        cols = prunable_columns(layer, mats)
        core = np.ascontiguousarray(mats[..., cols])
        flat = core.reshape(-1)
        k = int(round(share * flat.size))
        if k:
            flat[np.argsort(np.abs(flat), kind="stable")[:k]] = 0
        out = mats.copy()
        out[..., cols] = core
        return out

    return compress
