"""Weights recovery cannot reconstruct, and what recovery does with them instead.

Recovery re-fits a layer from the Gram matrix of its input, which Conv, Gemm and MatMul have.
A weight read by any other op (an embedding table read by Gather, LSTM/GRU/RNN weights,
ConvTranspose) has none: compressed as without data, its error reaches every later layer and
no re-fit removes it (on the exported encoder the token table, pruned or 4-bit, kept most of
the output error recovery removed from the MatMuls; see the README). Under recovery such a
weight is held at 8 bits instead: rounded to an 8-bit grid, before the reconstruction so the
layers after it are fitted around its small error. `prune` uses a symmetric grid with one
scale for the tensor (at most 255 values, which `mcompress.encoding` stores as 8-bit codes: a
quarter of the float bytes, fewer than a 50% pruned tensor's); `quantize` its int8 storage;
`cluster` 256 shared values (k-means, 8-bit codes).
"""

from __future__ import annotations

import numpy as np

from mcompress.weights import Candidate

RECONSTRUCTED_OPS = frozenset({"Conv", "Gemm", "MatMul"})
INT8_MAX = 127
EIGHT_BIT_VALUES = 256


def reconstructable(candidate: Candidate) -> bool:
    """Whether every op reading the weight is one recovery re-fits (Conv, Gemm, MatMul)."""
    return set(candidate.ops) <= RECONSTRUCTED_OPS


def int8_grid(values: np.ndarray) -> np.ndarray:
    """`values` on a symmetric 8-bit grid with one scale (max |value| / 127) for the tensor."""
    peak = float(np.max(np.abs(values), initial=0.0))
    if peak == 0.0 or not np.isfinite(peak):
        return values
    step = peak / INT8_MAX
    return (np.rint(values / step) * step).astype(values.dtype)
