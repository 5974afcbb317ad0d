"""Is the compressed model slower? Decided from interleaved timings with a statistical test, not
from two medians: on small models timer noise and CPU contention move single medians by 30%.

The ratio of medians gets a paired bootstrap 95% confidence interval; a one-sided Mann-Whitney U
test gives the probability that the compressed model's runs are not slower. SLOWER needs all of:
a ratio above `SLOWER_RATIO`, a confidence interval entirely above 1, p below `ALPHA`, and
medians apart by more than `MIN_SLOWDOWN_MS`: two sessions of byte-identical files differ
noticeably on a tiny model (memory layout, scheduling; benchmarks/README.md), steadily enough
to pass any test.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

import numpy as np

SLOWER_RATIO = 1.05
ALPHA = 0.01
BOOTSTRAP_RESAMPLES = 2000
MIN_SLOWDOWN_MS = 0.05


def compare(original_ms: list[float], compressed_ms: list[float], seed: int = 0) -> dict[str, Any]:
    """Ratio of medians (compressed / original), its 95% interval, the one-sided Mann-Whitney
    p-value for "compressed is slower", the confidence (1 - p) and the verdict."""
    original = np.asarray(original_ms, np.float64)
    compressed = np.asarray(compressed_ms, np.float64)
    base = statistics.median(original_ms)
    ratio = float(statistics.median(compressed_ms) / base) if base else None
    low, high = _bootstrap(original, compressed, seed)
    p_value = mann_whitney_p(original, compressed)
    apart = statistics.median(compressed_ms) - base > MIN_SLOWDOWN_MS
    confident = low is not None and low > 1.0 and p_value < ALPHA
    slower = ratio is not None and ratio > SLOWER_RATIO and confident and apart
    return {
        "ratio": ratio,
        "ratio_ci95": [low, high],
        # What the latency gate compares: slower with 95% confidence and beyond timer noise.
        "gate_ratio": (low if apart else min(low, 1.0)) if low is not None else ratio,
        "p_slower": p_value,
        "confidence_slower": 1.0 - p_value,
        "slower": bool(slower),
    }


def _bootstrap(
    original: np.ndarray, compressed: np.ndarray, seed: int
) -> tuple[float | None, float | None]:
    """Percentile interval of the ratio of medians over resampled run pairs (runs are
    interleaved, so pair i of both models saw the same machine state)."""
    n = min(original.size, compressed.size)
    if n < 2:
        return None, None
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, n, size=(BOOTSTRAP_RESAMPLES, n))
    bases = np.median(original[:n][picks], axis=1)
    ratios = np.median(compressed[:n][picks], axis=1) / np.where(bases > 0, bases, np.nan)
    ratios = ratios[np.isfinite(ratios)]
    if not ratios.size:
        return None, None
    return float(np.percentile(ratios, 2.5)), float(np.percentile(ratios, 97.5))


def mann_whitney_p(original: np.ndarray, compressed: np.ndarray) -> float:
    """One-sided p-value that `compressed` times are not larger than `original` ones (normal
    approximation with tie correction; 1.0 when there is nothing to compare)."""
    n1, n2 = original.size, compressed.size
    if not n1 or not n2:
        return 1.0
    values = np.concatenate([original, compressed])
    ranks = _average_ranks(values)
    u = float(ranks[n1:].sum()) - n2 * (n2 + 1) / 2  # compressed runs beating original runs
    _, counts = np.unique(values, return_counts=True)
    total = n1 + n2
    ties = float(np.sum(counts**3 - counts)) / (total * (total - 1)) if total > 1 else 0.0
    variance = n1 * n2 / 12 * ((total + 1) - ties)
    if variance <= 0:
        return 1.0
    z = (u - n1 * n2 / 2 - 0.5) / math.sqrt(variance)  # continuity-corrected
    return 0.5 * math.erfc(z / math.sqrt(2))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(values.size, np.float64)
    ranks[order] = np.arange(1, values.size + 1)
    sorted_values = values[order]
    start = 0
    for end in range(1, values.size + 1):
        if end == values.size or sorted_values[end] != sorted_values[start]:
            ranks[order[start:end]] = (start + end + 1) / 2
            start = end
    return ranks
