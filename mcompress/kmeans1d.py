"""Fast one-dimensional k-means for weight clustering.

In one dimension every cluster is a contiguous run of the sorted values, so after sorting once
an assignment step is a `searchsorted` of the K-1 midpoints between centroids and an update step
is a difference of prefix sums: O(K log n) per Lloyd iteration instead of the O(nK) of a general
k-means. Very large tensors are first reduced to a fine weighted histogram (no sort at all).

Lloyd only finds a local optimum near its start. The default start (`auto`) is the optimal
clustering (dynamic programming) of a coarse summary of the values into at most 16 clusters,
grown to K by splitting the clusters whose exact best two-way cut gains the most, then improved
by merge-one-split-one swaps while they lower the inertia; each step is followed by Lloyd. On
real weights it lands 1-6% below scikit-learn's k-means++ result. `linear`, `density`
(quantiles), `kmeans++` and `random` are the classic starts (as in TensorFlow's clustering API).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

Init = Literal["auto", "linear", "density", "kmeans++", "random"]
INITS: tuple[str, ...] = ("auto", "linear", "density", "kmeans++", "random")
MAX_CLUSTERS = 256
# Tensors with more (non-zero) elements are clustered on a weighted histogram of this many bins.
HISTOGRAM_ABOVE = 4_000_000
HISTOGRAM_BINS = 1 << 20
# `auto` solves up to this many clusters exactly on a summary of DP_GROUPS_PER_CLUSTER * k runs.
DP_CLUSTERS = 16
DP_GROUPS_PER_CLUSTER = 8
# `auto` searches on a summary of at most this many weighted points, then refines on all values.
SUMMARY_POINTS = 1 << 16
# `auto` then tries up to this many merge-one-split-one moves to leave a local optimum.
IMPROVE_ROUNDS = 16
# kmeans++ seeding runs on at most this many weighted points (a coarser summary).
PLUSPLUS_POINTS = 1 << 12


@dataclass
class KMeans1D:
    """Clustering of a tensor: `centroids[labels]` is the clustered tensor."""

    centroids: np.ndarray  # float32, ascending, distinct; contains 0.0 iff the input had zeros
    labels: np.ndarray  # uint8, the input's shape
    inertia: float  # sum of squared differences between the input and centroids[labels]
    iterations: int  # Lloyd iterations run in total


def kmeans1d(
    values: np.ndarray,
    k: int,
    *,
    init: Init = "auto",
    max_iter: int = 300,
    tol: float = 1e-6,
    seed: int = 0,
    keep_zero: bool = True,
    histogram_above: int = HISTOGRAM_ABOVE,
) -> KMeans1D:
    """Cluster `values` into at most `k` (2..256) shared values with Lloyd's algorithm.

    With `keep_zero`, exact zeros form their own fixed centroid (counted in `k`); no other
    value maps to it and no other centroid is exactly zero, so a pruned tensor stays as sparse.
    Lloyd stops when no value changes cluster, after `max_iter` iterations, or when an
    iteration lowers the inertia by less than `tol` (relative).
    """
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 2 <= k <= MAX_CLUSTERS:
        raise ValueError(f"k must be an integer from 2 to {MAX_CLUSTERS}, got {k!r}")
    if init not in INITS:
        raise ValueError(f"init must be one of {', '.join(INITS)}, got {init!r}")
    flat = np.asarray(values).reshape(-1)
    data = flat if flat.dtype in (np.float32, np.float64) else flat.astype(np.float32)
    if not np.isfinite(data).all():
        raise ValueError("values contain NaN or infinity")
    nonzero = data != 0 if keep_zero else np.ones(data.shape, bool)
    has_zero = not bool(nonzero.all())
    free = data[nonzero] if has_zero else data
    if free.size == 0:
        return KMeans1D(np.zeros(1, np.float32), np.zeros(np.shape(values), np.uint8), 0.0, 0)

    centroids, free_labels, iterations = _fit(
        free, k - has_zero, init, max_iter, tol, seed, histogram_above
    )
    centroids = _refine(free, free_labels, centroids)
    centroids32, free_labels = _finalize(free, free_labels, centroids, keep_zero)
    inertia = _inertia(free, centroids32, free_labels)

    if has_zero:
        zero_at = int(np.searchsorted(centroids32, 0.0))
        centroids32 = np.insert(centroids32, zero_at, np.float32(0.0))
        labels = np.full(data.shape, zero_at, np.uint8)
        labels[nonzero] = free_labels + (free_labels >= zero_at)
    else:
        labels = free_labels.astype(np.uint8)
    return KMeans1D(centroids32, labels.reshape(np.shape(values)), inertia, iterations)


class _Sorted:
    """Ascending weighted points, centred for precision, with prefix sums of w, w*x and w*x^2:
    the count, sum and squared error of any run of points are O(1)."""

    def __init__(self, points: np.ndarray, weights: np.ndarray) -> None:
        self.shift = float(np.average(points, weights=weights))
        self.x = points - self.shift
        self.w = weights
        self.mass = np.concatenate(([0.0], np.cumsum(weights)))
        self.first = np.concatenate(([0.0], np.cumsum(weights * self.x)))
        self.second = np.concatenate(([0.0], np.cumsum(weights * self.x * self.x)))

    @property
    def size(self) -> int:
        return int(self.x.size)

    def bounds(self, centroids: np.ndarray) -> np.ndarray:
        """Run boundaries [0, b1, ..., size] of the clusters of ascending centred `centroids`."""
        bounds = np.empty(centroids.size + 1, np.intp)
        bounds[0], bounds[-1] = 0, self.size
        bounds[1:-1] = np.searchsorted(self.x, (centroids[:-1] + centroids[1:]) * 0.5, "right")
        return bounds

    def means(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        return (self.first[hi] - self.first[lo]) / (self.mass[hi] - self.mass[lo])

    def sse(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Squared error of the runs [lo, hi) around their means (empty runs: 0)."""
        total = self.first[hi] - self.first[lo]
        count = np.maximum(self.mass[hi] - self.mass[lo], 1e-300)
        return self.second[hi] - self.second[lo] - total * total / count


def _fit(
    free: np.ndarray, k: int, init: str, max_iter: int, tol: float, seed: int, hist_above: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Centroids (float64, ascending) for the non-fixed values, each value's cluster, and the
    Lloyd iterations run. Above `hist_above` values, clusters are found for histogram bins."""
    if free.size > hist_above:
        points, weights, bin_of = _histogram(free, HISTOGRAM_BINS)
    else:
        points, weights = _unique_counts(np.sort(free))
    if points.size <= k:
        centroids, iterations = points, 0
    else:
        data = _Sorted(points, weights)
        if init == "auto":
            start, iterations = _search(data, k, max_iter, tol)
        else:
            start, iterations = _initial(data.x, weights, k, init, seed), 0
        centroids, more = _lloyd(data, start, max_iter, tol)
        centroids, iterations = centroids + data.shift, iterations + more
    midpoints = (centroids[:-1] + centroids[1:]) * 0.5
    if free.size > hist_above:
        return centroids, np.searchsorted(midpoints, points)[bin_of], iterations
    return centroids, np.searchsorted(midpoints, free), iterations


def _search(data: _Sorted, k: int, max_iter: int, tol: float) -> tuple[np.ndarray, int]:
    """The `auto` start, found on a summary of at most SUMMARY_POINTS runs of `data`: optimal
    small clustering, grown by splitting, then improved by merge-and-split moves."""
    points, weights = _coarsen(data.x, data.w, SUMMARY_POINTS)
    summary = data if points.size == data.size else _Sorted(points, weights)
    offset = summary.shift - data.shift
    start = _dp_start(summary, min(k, DP_CLUSTERS))
    centroids, iterations = _lloyd(summary, start, max_iter, tol)
    centroids, grown = _grow(summary, centroids, k, max_iter, tol)
    centroids, swapped = _improve(summary, centroids, IMPROVE_ROUNDS, max_iter, tol)
    return centroids + offset, iterations + grown + swapped


def _unique_counts(ordered: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values of a sorted array (float64) and how often each occurs."""
    starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
    counts = np.diff(np.append(starts, ordered.size)).astype(np.float64)
    return ordered[starts].astype(np.float64), counts


def _histogram(values: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reduce values to the means of the non-empty ones of `bins` equal-width bins (ascending),
    their counts, and for each value the position of its bin in that list."""
    lo, hi = float(values.min()), float(values.max())
    if hi == lo:
        return np.array([lo]), np.array([float(values.size)]), np.zeros(values.size, np.intp)
    index = ((values - values.dtype.type(lo)) * values.dtype.type(bins / (hi - lo))).astype(
        np.int32
    )
    np.minimum(index, bins - 1, out=index)
    count = np.bincount(index, minlength=bins).astype(np.float64)
    total = np.bincount(index, weights=values, minlength=bins)
    filled = count > 0
    position = np.cumsum(filled) - 1
    return np.clip(total[filled] / count[filled], lo, hi), count[filled], position[index]


def _coarsen(points: np.ndarray, weights: np.ndarray, groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge sorted weighted points into at most `groups` runs, cut both at equal mass (detail
    where values are dense) and at equal width (detail in the tails); weighted means, ascending."""
    if points.size <= groups:
        return points, weights
    mass = np.concatenate(([0.0], np.cumsum(weights)))
    moment = np.concatenate(([0.0], np.cumsum(weights * points)))
    half = groups // 2
    by_mass = np.searchsorted(mass[1:], np.linspace(0, mass[-1], half, endpoint=False), "right")
    by_width = np.searchsorted(points, np.linspace(points[0], points[-1], half, endpoint=False))
    cuts = np.unique(np.concatenate((by_mass, by_width, [points.size])))
    cuts = cuts[cuts > 0]
    starts = np.concatenate(([0], cuts[:-1]))
    group_mass = mass[cuts] - mass[starts]
    return (moment[cuts] - moment[starts]) / group_mass, group_mass


def _dp_start(data: _Sorted, k: int) -> np.ndarray:
    """The optimal k clusters of a coarse summary of `data` (dynamic programming, O(k g^2))."""
    points, weights = _coarsen(data.x, data.w, DP_GROUPS_PER_CLUSTER * k)
    if points.size <= k:
        return points
    summary = _Sorted(points, weights)
    runs = np.arange(summary.size + 1)
    # cost[j, i]: squared error of the run [i, j) as one cluster (rows contiguous for argmin).
    with np.errstate(over="ignore", invalid="ignore"):
        cost = np.where(runs[:, None] > runs, summary.sse(runs, runs[:, None]), np.inf)
    best = cost[:, 0]
    choices = []
    for _ in range(k - 1):
        total = cost + best
        choice = total.argmin(axis=1)
        best = total[runs, choice]
        choices.append(choice)
    cuts = [summary.size]
    for choice in reversed(choices):
        cuts.append(int(choice[cuts[-1]]))
    bounds = np.array([0, *reversed(cuts)])
    return summary.means(bounds[:-1], bounds[1:]) + summary.shift


def _grow(
    data: _Sorted, centroids: np.ndarray, k: int, max_iter: int, tol: float
) -> tuple[np.ndarray, int]:
    """Reach k centroids by splitting, each round, up to as many clusters as there are at
    their exact best two-way cut, largest error reduction first, then running Lloyd again."""
    iterations = 0
    while centroids.size < k:
        lo, hi = _runs(data, centroids)
        gain, cut = _best_splits(data, lo, hi)
        top = np.argsort(-gain, kind="stable")[: k - centroids.size]
        top = top[gain[top] > 0]
        if top.size == 0:
            break
        halves = np.concatenate((data.means(lo[top], cut[top]), data.means(cut[top], hi[top])))
        centroids = np.sort(np.concatenate((np.delete(centroids, top), halves)))
        centroids, used = _lloyd(data, centroids, max_iter, tol)
        iterations += used
    return centroids, iterations


def _improve(
    data: _Sorted, centroids: np.ndarray, rounds: int, max_iter: int, tol: float
) -> tuple[np.ndarray, int]:
    """Escape Lloyd's local optima with swaps: merge two neighbouring clusters that cost little
    to merge and split a cluster that gains more, then run Lloyd; keep the result only if the
    inertia drops. Each round tries all such disjoint swaps at once, then only the best one."""
    iterations = 0
    current = _total_sse(data, centroids)
    for _ in range(rounds):
        lo, hi = _runs(data, centroids)
        if lo.size != centroids.size or lo.size < 3:
            break
        errors = data.sse(lo, hi)
        merge = data.sse(lo[:-1], hi[1:]) - errors[:-1] - errors[1:]
        gain, cut = _best_splits(data, lo, hi)
        moves = _pick_swaps(merge, gain)
        improved = False
        for batch in (moves, moves[:1]) if len(moves) > 1 else (moves,):
            if not batch:
                break
            pairs = np.array([pair for pair, _ in batch])
            splits = np.array([split for _, split in batch])
            trial = np.concatenate(
                (
                    np.delete(centroids, np.concatenate((pairs, pairs + 1, splits))),
                    data.means(lo[pairs], hi[pairs + 1]),
                    data.means(lo[splits], cut[splits]),
                    data.means(cut[splits], hi[splits]),
                )
            )
            trial, used = _lloyd(data, np.sort(trial), max_iter, tol)
            iterations += used
            error = _total_sse(data, trial)
            if error < current:
                centroids, current, improved = trial, error, True
                break
        if not improved:
            break
    return centroids, iterations


def _pick_swaps(merge: np.ndarray, gain: np.ndarray) -> list[tuple[int, int]]:
    """Disjoint (merge pair j/j+1, split i) swaps whose split gain beats the merge cost,
    cheapest merges paired with the largest gains."""
    used = np.zeros(gain.size, bool)
    splits = iter(np.argsort(-gain, kind="stable"))
    moves: list[tuple[int, int]] = []
    for pair in np.argsort(merge, kind="stable"):
        if used[pair] or used[pair + 1]:
            continue
        split = next((int(i) for i in splits if not used[i] and i not in (pair, pair + 1)), None)
        if split is None or gain[split] <= merge[pair]:
            break
        moves.append((int(pair), split))
        used[[pair, pair + 1, split]] = True
    return moves


def _runs(data: _Sorted, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end of each non-empty cluster's run of points."""
    bounds = data.bounds(centroids)
    filled = bounds[1:] > bounds[:-1]
    return bounds[:-1][filled], bounds[1:][filled]


def _total_sse(data: _Sorted, centroids: np.ndarray) -> float:
    """Inertia of centred `centroids` over `data`, each point at its nearest centroid."""
    bounds = data.bounds(centroids)
    count = np.diff(data.mass[bounds])
    total = np.diff(data.first[bounds])
    square = np.diff(data.second[bounds])
    return float((square - 2 * centroids * total + centroids * centroids * count).sum())


def _best_splits(data: _Sorted, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each non-empty run [lo, hi): how much its best two-way cut lowers the squared error
    (-inf for single points), and where that cut is. One vectorised pass over all points."""
    sizes = hi - lo
    at = np.arange(data.size)
    left, right = np.repeat(lo, sizes), np.repeat(hi, sizes)
    cost = data.sse(left, at) + data.sse(at, right)
    cost[at == left] = np.inf
    best = np.minimum.reduceat(cost, lo)
    hits = np.flatnonzero(cost == np.repeat(best, sizes))
    cut = hits[np.searchsorted(hits, lo)]
    return data.sse(lo, hi) - best, cut


def _initial(points: np.ndarray, weights: np.ndarray, k: int, init: str, seed: int) -> np.ndarray:
    """`k` starting centroids (ascending, may repeat) for weighted sorted `points`."""
    if init == "linear":
        return np.linspace(points[0], points[-1], k)
    if init == "density":
        cumulative = np.cumsum(weights)
        targets = (np.arange(k) + 0.5) / k * cumulative[-1]
        return points[np.minimum(np.searchsorted(cumulative, targets), points.size - 1)]
    rng = np.random.default_rng(seed)
    if init == "random":
        chosen = rng.choice(points.size, size=k, replace=False, p=weights / weights.sum())
        return np.sort(points[chosen])
    return _kmeans_plus_plus(points, weights, k, rng)


def _kmeans_plus_plus(
    points: np.ndarray, weights: np.ndarray, k: int, rng: np.random.Generator
) -> np.ndarray:
    """Greedy k-means++ seeding (as scikit-learn does it) on at most PLUSPLUS_POINTS points."""
    points, weights = _coarsen(points, weights, PLUSPLUS_POINTS)
    trials = 2 + int(math.log(k))
    chosen = [points[_draw(weights, 1, rng)[0]]]
    closest = weights * (points - chosen[0]) ** 2
    for _ in range(1, k):
        if closest.sum() <= 0:
            break
        candidates = _draw(closest, trials, rng)
        options = np.minimum(closest, weights * (points - points[candidates, None]) ** 2)
        best = int(np.argmin(options.sum(axis=1)))
        chosen.append(points[candidates[best]])
        closest = options[best]
    chosen.extend(chosen[-1:] * (k - len(chosen)))
    return np.sort(np.array(chosen))


def _draw(mass: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Indices drawn with probability proportional to `mass` (with replacement)."""
    cumulative = np.cumsum(mass)
    picks = np.searchsorted(cumulative, rng.random(size) * cumulative[-1], side="right")
    return np.minimum(picks, mass.size - 1)


def _lloyd(
    data: _Sorted, centroids: np.ndarray, max_iter: int, tol: float
) -> tuple[np.ndarray, int]:
    """Lloyd iterations on centred sorted points: assign by searchsorted, update by prefix sums.

    Stops when no point changes cluster or an iteration lowers the inertia by less than `tol`
    times the inertia.
    """
    bounds = np.empty(centroids.size + 1, np.intp)
    bounds[0], bounds[-1] = 0, data.size
    previous = np.zeros_like(bounds)
    best = np.inf
    iterations = 0
    while iterations < max_iter:
        iterations += 1
        bounds[1:-1] = np.searchsorted(data.x, (centroids[:-1] + centroids[1:]) * 0.5, "right")
        mass = data.mass[bounds]
        count = mass[1:] - mass[:-1]
        first = data.first[bounds]
        total = first[1:] - first[:-1]
        if count.min() <= 0:
            centroids = _relocate(data, centroids, bounds, count, total)
            best = np.inf
            continue
        centroids = total / count
        if (bounds == previous).all():
            break
        previous[:] = bounds
        inertia = data.second[-1] - float(total @ centroids)
        if best - inertia <= tol * inertia:
            break
        best = inertia
    return centroids, iterations


def _relocate(
    data: _Sorted, centroids: np.ndarray, bounds: np.ndarray, count: np.ndarray, total: np.ndarray
) -> np.ndarray:
    """Update step with empty clusters: each empty centroid moves to the farthest member of the
    widest remaining cluster (as scikit-learn does); the result is sorted again."""
    filled = count > 0
    updated = centroids.copy()
    updated[filled] = total[filled] / count[filled]
    lo, hi = bounds[:-1], bounds[1:]
    spread = np.where(filled, data.sse(lo, hi), 0.0)
    for j in np.flatnonzero(~filled):
        widest = int(np.argmax(spread))
        if spread[widest] <= 0:
            break
        left, right = data.x[lo[widest]], data.x[hi[widest] - 1]
        centre = updated[widest]
        updated[j] = right if right - centre >= centre - left else left
        spread[widest] = 0.0
    updated.sort()
    return updated


def _refine(free: np.ndarray, labels: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """One exact update step on the full data: each centroid becomes the mean of its members."""
    count = np.bincount(labels, minlength=centroids.size)
    total = np.bincount(labels, weights=free, minlength=centroids.size)
    filled = count > 0
    refined = centroids.copy()
    refined[filled] = total[filled] / count[filled]
    return refined


def _finalize(
    free: np.ndarray, labels: np.ndarray, centroids: np.ndarray, keep_zero: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Round centroids to float32, keep them off exact zero, drop unused and duplicate ones."""
    used = np.bincount(labels, minlength=centroids.size) > 0
    rounded = centroids.astype(np.float32)
    if keep_zero:
        for j in np.flatnonzero(used & (rounded == 0)):
            members = free[labels == j]
            rounded[j] = members[np.argmin(np.abs(members))]
    kept = np.unique(rounded[used])
    remap = np.searchsorted(kept, rounded)
    return kept, remap[labels]


def _inertia(free: np.ndarray, centroids: np.ndarray, labels: np.ndarray) -> float:
    diff = free.astype(np.float64) - centroids[labels]
    return float(np.square(diff).sum())
