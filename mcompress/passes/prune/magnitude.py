"""Magnitude pruning of one tensor or a set of them, and the stats rows the prune pass reports."""

from __future__ import annotations

from typing import Any

import numpy as np

from mcompress.model_io import Weight
from mcompress.weights import Candidate


def layer_counts(
    candidates: list[Candidate],
    sparsity: float,
    scope: str,
    layers: dict[str, float] | None = None,
) -> list[int]:
    """Weights to remove per candidate: one share per tensor, or one global threshold; a
    weight named in `layers` gets its own share (the global threshold spans the others)."""
    layers = layers or {}
    counts = {
        c.weight.name: int(round(layers[c.weight.name] * c.weight.size))
        for c in candidates
        if c.weight.name in layers
    }
    rest = [c for c in candidates if c.weight.name not in counts]
    if scope == "global":
        shares = global_counts([c.weight for c in rest], sparsity)
        counts.update(zip((c.weight.name for c in rest), shares, strict=True))
    else:
        counts.update((c.weight.name, int(round(sparsity * c.weight.size))) for c in rest)
    return [counts[c.weight.name] for c in candidates]


# ---------------------------------------------------------------- which tensors


def smallest_mask(magnitudes: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of exactly `k` smallest entries of a 1-D array; ties go to lower indices.

    Equals taking the first `k` of a stable argsort, without sorting: partition finds the k-th
    value, everything below it is taken, then just enough entries equal to it.
    """
    n = magnitudes.size
    k = max(0, min(k, n))
    if k == 0:
        return np.zeros(n, bool)
    threshold = np.partition(magnitudes, k - 1)[k - 1]
    mask = magnitudes <= threshold
    if np.count_nonzero(mask) == k:  # no ties at the threshold: one pass fewer
        return mask
    np.less(magnitudes, threshold, out=mask)
    ties = np.flatnonzero(magnitudes == threshold)[: k - int(np.count_nonzero(mask))]
    mask[ties] = True
    return mask


def zero_smallest(values: np.ndarray, k: int) -> np.ndarray:
    """A copy of `values` with its `k` smallest-magnitude entries set to zero."""
    out = np.array(values, copy=True)
    flat = out.reshape(-1)
    flat[smallest_mask(np.abs(flat), k)] = 0
    return out


def global_counts(weights: list[Weight], sparsity: float) -> list[int]:
    """How many entries of each tensor one global magnitude threshold removes (exact total)."""
    if not weights:
        return []
    magnitudes = np.concatenate(
        [np.abs(np.asarray(w.array(), dtype=np.float32)).reshape(-1) for w in weights]
    )
    total = int(round(sparsity * magnitudes.size))
    mask = smallest_mask(magnitudes, total)
    bounds = np.cumsum([0, *(w.size for w in weights)])
    return [int(mask[a:b].sum()) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def prune_tensor(cand: Candidate, k: int) -> dict[str, Any]:
    """Zero the `k` smallest-magnitude entries of one weight; return its stats row."""
    weight = cand.weight
    values = np.asarray(weight.array())
    # Zeros have the smallest magnitudes: with k above their count, pruning adds zeros.
    if k > values.size - int(np.count_nonzero(values)):
        pruned = zero_smallest(values, k)
        weight.replace(pruned)
    else:
        pruned = values
    return tensor_row(cand, values, pruned)


def tensor_row(cand: Candidate, values: np.ndarray, pruned: np.ndarray) -> dict[str, Any]:
    """The stats row of one pruned weight."""
    weight = cand.weight
    zeros_before = values.size - int(np.count_nonzero(values))
    zeros_after = pruned.size - int(np.count_nonzero(pruned))
    return {
        "name": weight.name,
        "ops": cand.ops,
        "shape": list(weight.shape),
        "elements": weight.size,
        "zeros_before": zeros_before,
        "zeros_after": zeros_after,
        "sparsity": zeros_after / max(weight.size, 1),
        "bytes_before": int(values.nbytes),
    }


def totals_of(tensors: list[dict[str, Any]]) -> dict[str, Any]:
    elements = sum(t["elements"] for t in tensors)
    zeros_after = sum(t["zeros_after"] for t in tensors)
    return {
        "tensors": len(tensors),
        "elements": elements,
        "zeros_before": sum(t["zeros_before"] for t in tensors),
        "zeros_after": zeros_after,
        "sparsity": zeros_after / max(elements, 1),
        "bytes_before": sum(t["bytes_before"] for t in tensors),
    }
