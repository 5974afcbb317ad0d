"""Activation-aware weight sharing for one layer: K shared values chosen where the layer's
inputs are large (k-means weighted by diag(XᵀX), as SqueezeLLM does), assigned with GPTQ-style
error feedback, then the K values re-fitted to minimise the layer's output error."""

from __future__ import annotations

import numpy as np

from mcompress.recover import solve
from mcompress.recover.layers import Layer
from mcompress.recover.pruning import prunable_columns
from mcompress.recover.sequential import Compressor
from mcompress.recover.stats import GramStats

# The codebook re-fit builds a [groups, rows, inputs, K] array; above this many elements it is
# skipped (the assignment with error feedback already did most of the work).
_REFIT_MAX_ELEMENTS = 20_000_000


def weighted_kmeans(
    values: np.ndarray, weights: np.ndarray, centroids: np.ndarray, iterations: int = 30
) -> np.ndarray:
    """1-D Lloyd iterations minimising Σ weight * (value - centroid)², from `centroids`."""
    order = np.argsort(values, kind="stable")
    v, w = values[order], np.maximum(weights[order], 1e-30)
    c = np.sort(np.asarray(centroids, dtype=np.float64))
    wv = np.concatenate([[0.0], np.cumsum(w * v)])
    ws = np.concatenate([[0.0], np.cumsum(w)])
    for _ in range(iterations):
        cuts = np.searchsorted(v, (c[1:] + c[:-1]) / 2)
        lo = np.concatenate([[0], cuts])
        hi = np.concatenate([cuts, [v.size]])
        mass = ws[hi] - ws[lo]
        new = np.where(mass > 0, (wv[hi] - wv[lo]) / np.where(mass > 0, mass, 1), c)
        if np.allclose(new, c, rtol=0, atol=0):
            break
        c = np.sort(new)
    return c


def nearest(values: np.ndarray, codebook: np.ndarray) -> np.ndarray:
    """Index of the nearest codebook entry (sorted codebook) for each value."""
    mids = (codebook[1:] + codebook[:-1]) / 2
    return np.searchsorted(mids, values)


def clusterer(
    clusters: int, initial: dict[str, np.ndarray], refit_others: bool = True
) -> Compressor:
    """A compressor sharing `clusters` values in each layer named in `initial` (weight name ->
    starting centroids, zero excluded); other layers are only re-fitted (when `refit_others`)."""

    def compress(layer: Layer, mats: np.ndarray, stats: GramStats) -> np.ndarray:
        assert stats.hcc is not None
        target = solve.ls_target(mats, stats.hcc, stats.cross(), stats.ridge)
        start = initial.get(layer.weight.name)
        cols = prunable_columns(layer, mats)
        if start is None:
            return target if refit_others and solve.untouched(mats, cols) else mats
        h = solve.damped(stats.hcc, stats.ridge)
        zero = (mats == 0) & cols
        importance = np.broadcast_to(np.einsum("gii->gi", h)[:, None, :], mats.shape)
        live = cols[None, None, :] & ~zero
        codebook = weighted_kmeans(target[live], importance[live], start)

        def snap(column: np.ndarray, _: int) -> np.ndarray:
            return codebook[nearest(column, codebook)]

        swept = solve.obs_sweep(target, h, prunable=cols, fixed_zero=zero, quantize=snap)
        codes = nearest(swept, codebook)
        frozen = ~live | (swept == 0)
        if swept.size * codebook.size <= _REFIT_MAX_ELEMENTS:
            codebook = solve.codebook_refit(target, h, codes, codebook, frozen, swept)
        return np.where(frozen, swept, codebook[codes])

    return compress


def clustered_baseline(initial: dict[str, np.ndarray]) -> Compressor:
    """Plain nearest-centroid sharing with the starting centroids (the report's 'without')."""

    def compress(layer: Layer, mats: np.ndarray, stats: GramStats) -> np.ndarray:
        start = initial.get(layer.weight.name)
        if start is None:
            return mats
        cols = prunable_columns(layer, mats)
        live = cols[None, None, :] & (mats != 0)
        codebook = np.sort(start)
        return np.where(live, codebook[nearest(mats, codebook)], mats)

    return compress
