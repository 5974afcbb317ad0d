"""Fast one-dimensional k-means for weight clustering.

In one dimension every cluster is a contiguous run of the sorted values, so after sorting once
an assignment step is a `searchsorted` of the K-1 midpoints between centroids and an update step
is a difference of prefix sums: O(K log n) per Lloyd iteration instead of the O(nK) of a general
k-means. Very large tensors are first reduced to a fine weighted histogram (no sort at all).

Lloyd only finds a local optimum near its start. The default start (`auto`) is the optimal
clustering (dynamic programming) of the values into at most 32 clusters whose boundaries lie on
a grid of about 4 candidate cuts per cluster, spaced like the boundaries of an optimal quantizer
(density^(1/3)): usually already in the basin of the global optimum, so Lloyd only polishes it.
For more clusters it is grown to K by splitting the clusters whose exact best two-way cut gains
the most, then improved by merge-one-split-one swaps while they lower the inertia; each step is
followed by Lloyd. On real weights it lands 1-6% below scikit-learn's k-means++ result.
`linear`, `density` (quantiles), `kmeans++` and `random` are the classic starts (as in
TensorFlow's clustering API).

Small tensors are dominated by per-call overhead, so every step works on a few small arrays,
in place where it can: the sort, the prefix sums and the final labelling and inertia are the
only passes over all values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from mcompress.passes.cluster.histogram import CACHE_CHUNK, HISTOGRAM_BINS, Histogram

Init = Literal["auto", "linear", "density", "kmeans++", "random"]
INITS: tuple[str, ...] = ("auto", "linear", "density", "kmeans++", "random")
MAX_CLUSTERS = 256
# Tensors with more (non-zero) elements are clustered on a weighted histogram (`Histogram`).
HISTOGRAM_ABOVE = 4_000_000
# `auto` solves up to this many clusters exactly with cuts on a grid of DP_GROUPS_PER_CLUSTER * k.
DP_CLUSTERS = 32
DP_GROUPS_PER_CLUSTER = 4
# The grid follows the density of the values, estimated on runs of equal mass holding about
# this many distinct values each (but 2 to 8 runs per group).
DP_DENSITY_POINTS = 16
# `auto` searches on a summary of at most this many weighted points, then refines on all values.
SUMMARY_POINTS = 1 << 16
# `auto` then tries up to this many merge-one-split-one moves to leave a local optimum.
IMPROVE_ROUNDS = 16
# kmeans++ seeding runs on at most this many weighted points (a coarser summary).
PLUSPLUS_POINTS = 1 << 12
# Tensors with more values than this and fewer cuts than COMPARE_CUTS are labelled by one
# vectorised comparison per cut, which streams through memory; others by a binary search per
# value, which mispredicts branches but is cheaper while the values fit in the cache.
SEARCH_VALUES = 4096
COMPARE_CUTS = 64


@dataclass
class KMeans1D:
    """Clustering of a tensor: `centroids[labels]` is the clustered tensor."""

    centroids: np.ndarray  # float32, ascending, distinct; contains 0.0 iff the input had zeros
    labels: np.ndarray  # uint8, the input's shape
    inertia: float  # sum of squared differences between the input and centroids[labels]
    iterations: int  # Lloyd iterations run in total
    distinct: int | None = None  # distinct input values; None when not sorted (histogram)


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
    if data.size and not (math.isfinite(data.min()) and math.isfinite(data.max())):
        raise ValueError("values contain NaN or infinity")
    has_zero = keep_zero and int(np.count_nonzero(data)) < data.size
    nonzero = data != 0 if has_zero else None
    free = data[nonzero] if nonzero is not None else data
    if free.size == 0:
        labels = np.zeros(np.shape(values), np.uint8)
        return KMeans1D(np.zeros(1, np.float32), labels, 0.0, 0, int(data.size > 0))

    histogram = Histogram(free, HISTOGRAM_BINS) if free.size > histogram_above else None
    if histogram is not None:
        points, mass = histogram.points, histogram.mass
    else:
        points, mass = _unique_counts(np.sort(free))
    summary = _Sorted(points, mass)
    centroids, iterations = _fit(summary, k - has_zero, init, max_iter, tol, seed)
    # Cut in the values' own precision, so that the runs of `points` are exactly the clusters.
    cuts = centroids[:-1] + centroids[1:]
    cuts *= 0.5
    cuts += summary.shift
    cuts = cuts.astype(free.dtype)
    bounds = np.empty(centroids.size + 1, np.intp)
    bounds[0], bounds[-1] = 0, points.size
    bounds[1:-1] = points.searchsorted(cuts, "right")
    free_labels = _labels(free, cuts) if histogram is None else histogram.labels(cuts)
    centroids32, free_labels = _finalize(free, free_labels, summary, bounds, keep_zero)
    inertia = _inertia(free, centroids32, free_labels)

    if nonzero is not None:
        zero_at = int(np.searchsorted(centroids32, 0.0))
        centroids32 = np.insert(centroids32, zero_at, np.float32(0.0))
        labels = np.full(data.shape, zero_at, np.uint8)
        labels[nonzero] = free_labels + (free_labels >= zero_at)
    else:
        labels = free_labels
    distinct = None if histogram is not None else points.size + has_zero
    return KMeans1D(centroids32, labels.reshape(np.shape(values)), inertia, iterations, distinct)


class _Sorted:
    """Ascending weighted points, shifted by a middle point (float64) for precision, with prefix
    sums of w, w*x and w*x^2: the count, sum and squared error of any run of points are O(1).
    Built from the points and the prefix sums of their weights (`mass`, from 0), as the
    reductions yield them."""

    def __init__(self, points: np.ndarray, mass: np.ndarray) -> None:
        self.shift = float(points[points.size // 2])
        self.x = np.subtract(points, self.shift, dtype=np.float64)
        self.mass = mass
        self.first = np.empty(mass.size)
        self.second = np.empty(mass.size)
        self.first[0] = self.second[0] = 0.0
        # In place, without temporaries: fresh memory (page faults) costs as much as these O(n)
        # passes. `moment` holds w, then w*x, then w*x^2.
        moment = self.second[1:]
        np.subtract(mass[1:], mass[:-1], out=moment)
        moment *= self.x
        moment.cumsum(out=self.first[1:])
        moment *= self.x
        moment.cumsum(out=moment)

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
    data: _Sorted, k: int, init: str, max_iter: int, tol: float, seed: int
) -> tuple[np.ndarray, int]:
    """At most `k` centred centroids (ascending) for `data`, and the Lloyd iterations run."""
    if data.size <= k:
        return data.x, 0
    if init == "auto":
        return _search(data, k, max_iter, tol)
    return _lloyd(data, _initial(data, k, init, seed), max_iter, tol)


def _search(data: _Sorted, k: int, max_iter: int, tol: float) -> tuple[np.ndarray, int]:
    """The `auto` clustering, found on a summary of at most SUMMARY_POINTS runs of `data`:
    optimal small clustering, then (for more clusters) grown by splitting and improved by
    merge-and-split moves. When the dynamic programme already placed all k clusters the
    swaps are skipped: from its start they practically never lower the inertia."""
    summary = data
    if data.size > SUMMARY_POINTS:
        summary = _Sorted(*_coarsen(data, SUMMARY_POINTS))
    centroids, iterations = _lloyd(summary, _dp_start(summary, min(k, DP_CLUSTERS)), max_iter, tol)
    if k > DP_CLUSTERS:
        centroids, grown = _grow(summary, centroids, k, max_iter, tol)
        centroids, swapped = _improve(summary, centroids, IMPROVE_ROUNDS, max_iter, tol)
        iterations += grown + swapped
    if summary is not data:
        centroids, more = _lloyd(data, centroids + summary.shift, max_iter, tol)
        iterations += more
    return centroids, iterations


def _unique_counts(ordered: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values of a sorted array and the prefix sums of how often each occurs (from 0):
    the positions where each run of equal values starts, then the size."""
    starts = np.empty(ordered.size + 1, bool)
    starts[0] = starts[-1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=starts[1:-1])
    mass = starts.nonzero()[0]
    return ordered[mass[:-1]], mass.astype(np.float64)


def _group_bounds(data: _Sorted, groups: int) -> np.ndarray:
    """Boundaries [0, ..., size] of at most `groups` runs of `data`, cut both at equal mass
    (detail where values are dense) and at equal width (detail in the tails)."""
    if data.size <= groups:
        return np.arange(data.size + 1)
    half = groups // 2
    by_mass = np.searchsorted(
        data.mass[1:], np.linspace(0, data.mass[-1], half, endpoint=False), "right"
    )
    by_width = np.searchsorted(data.x, np.linspace(data.x[0], data.x[-1], half, endpoint=False))
    return np.unique(np.concatenate((by_mass, by_width, [0, data.size])))


def _coarsen(data: _Sorted, groups: int) -> tuple[np.ndarray, np.ndarray]:
    """At most `groups` runs of `data` as weighted points: their means (centred, ascending)
    and the prefix sums of their masses (from 0)."""
    if data.size <= groups:
        return data.x, data.mass
    bounds = _group_bounds(data, groups)
    return data.means(bounds[:-1], bounds[1:]), data.mass[bounds]


def _dp_grid(data: _Sorted, groups: int) -> np.ndarray:
    """Boundaries [0, ..., size] of about `groups` runs of `data` at equal steps of the
    integral of density^(1/3): the spacing of optimal k-means boundaries for many clusters
    (Panter-Dite), so every optimal cluster gets about the same number of candidate cuts.
    The density comes from runs of equal mass (see DP_DENSITY_POINTS)."""
    if data.size <= groups:
        return np.arange(data.size + 1)
    runs = min(max(data.size // DP_DENSITY_POINTS, 2 * groups), 8 * groups)
    starts = data.mass.searchsorted(np.arange(runs + 1) * (data.mass[-1] / runs))
    edges, mass = data.x.take(starts, mode="clip"), data.mass.take(starts, mode="clip")
    measure = np.cbrt((mass[1:] - mass[:-1]) * np.square(edges[1:] - edges[:-1]))
    cumulative = np.zeros(runs + 1)
    measure.cumsum(out=cumulative[1:])
    steps = np.arange(groups + 1) * (cumulative[-1] / groups)
    grid = data.x.searchsorted(np.interp(steps, cumulative, edges))
    grid[-1] = data.size
    grid = grid[np.concatenate(([True], grid[1:] > grid[:-1]))]
    if 2 * grid.size > groups:
        return grid
    # Most steps fell into a few gaps between values (isolated outliers): spend the lost ones
    # again at equal counts of values, so that at least half of the runs remain.
    lost = groups + 1 - grid.size
    return np.union1d(grid, np.arange(lost + 1) * data.size // lost)


def _dp_start(data: _Sorted, k: int) -> np.ndarray:
    """The best k (< data.size) clusters of `data` whose boundaries lie on a grid of about
    DP_GROUPS_PER_CLUSTER * k runs (dynamic programming over the grid, O(k g^2), exact errors
    from the prefix sums)."""
    grid = _dp_grid(data, DP_GROUPS_PER_CLUSTER * k)
    mass, first, second = data.mass[grid], data.first[grid], data.second[grid]
    # cost[j, i]: squared error of the points from grid[i] to grid[j] as one cluster (j > i).
    # In place throughout: allocating fresh matrices costs more than the arithmetic here.
    count, total, cost = mass[:, None] - mass, first[:, None] - first, second[:, None] - second
    empty = count <= 0
    count[empty] = np.inf  # no division by zero
    np.square(total, out=total)
    total /= count
    cost -= total
    cost[empty] = np.inf
    rows = np.arange(grid.size)
    best = cost[:, 0]
    choices = np.empty((k - 1, grid.size), np.intp)
    for choice in choices:
        np.add(cost, best, out=total)
        total.argmin(axis=1, out=choice)
        best = total[rows, choice]
    cuts = [grid.size - 1]
    for choice in choices[::-1]:
        cuts.append(int(choice[cuts[-1]]))
    bounds = grid[[0, *reversed(cuts)]]
    return data.means(bounds[:-1], bounds[1:])


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


def _initial(data: _Sorted, k: int, init: str, seed: int) -> np.ndarray:
    """`k` starting centroids (centred, ascending, may repeat) for `data`."""
    if init == "linear":
        return np.linspace(data.x[0], data.x[-1], k)
    if init == "density":
        targets = (np.arange(k) + 0.5) / k * data.mass[-1]
        return data.x[np.minimum(np.searchsorted(data.mass[1:], targets), data.size - 1)]
    rng = np.random.default_rng(seed)
    if init == "random":
        chosen = rng.choice(data.size, size=k, replace=False, p=np.diff(data.mass) / data.mass[-1])
        return np.sort(data.x[chosen])
    points, mass = _coarsen(data, PLUSPLUS_POINTS)
    return _kmeans_plus_plus(points, np.diff(mass), k, rng)


def _kmeans_plus_plus(
    points: np.ndarray, weights: np.ndarray, k: int, rng: np.random.Generator
) -> np.ndarray:
    """Greedy k-means++ seeding (as scikit-learn does it) of weighted sorted `points`."""
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

    Stops when an iteration lowers the inertia by at most `tol` times the inertia, which
    includes the iteration in which no point changes cluster.
    """
    bounds = np.empty(centroids.size + 1, np.intp)
    bounds[0], bounds[-1] = 0, data.size
    points, prefix_mass, prefix_first = data.x, data.mass, data.first
    square = float(data.second[-1])
    best = math.inf
    iterations = 0
    while iterations < max_iter:
        iterations += 1
        bounds[1:-1] = points.searchsorted((centroids[:-1] + centroids[1:]) * 0.5, "right")
        mass, first = prefix_mass.take(bounds), prefix_first.take(bounds)
        count, total = mass[1:] - mass[:-1], first[1:] - first[:-1]
        if np.minimum.reduce(count) <= 0:
            centroids = _relocate(data, centroids, bounds, count, total)
            best = math.inf
            continue
        centroids = total / count
        inertia = square - float(total.dot(centroids))
        if best - inertia <= tol * abs(inertia):
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


def _labels(values: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    """Cluster of each value: how many of the ascending `cuts` lie below it (uint8)."""
    if values.size <= SEARCH_VALUES or cuts.size >= COMPARE_CUTS:
        return np.searchsorted(cuts, values).astype(np.uint8)
    labels = np.zeros(values.shape, np.uint8)
    above = np.empty(values.shape, bool)
    for cut in cuts:
        labels += np.greater(values, cut, out=above)
    return labels


def _finalize(
    free: np.ndarray, labels: np.ndarray, data: _Sorted, bounds: np.ndarray, keep_zero: bool
) -> tuple[np.ndarray, np.ndarray]:
    """One last update step (each centroid becomes the mean of its run of `data` between
    `bounds`), rounded to float32 and kept off exact zero; unused and duplicate centroids are
    dropped and `labels` renumbered to match."""
    mass, first = data.mass[bounds], data.first[bounds]
    count, total = mass[1:] - mass[:-1], first[1:] - first[:-1]
    used = count > 0
    # Empty runs get the (unused) mean 0 + shift instead of 0 / 0.
    rounded = (total / np.maximum(count, 1e-300) + data.shift).astype(np.float32)
    if keep_zero and not rounded.all():
        for j in np.flatnonzero(used & (rounded == 0)):
            members = free[labels == j]
            rounded[j] = members[np.argmin(np.abs(members))]
    if used.all() and (rounded[1:] > rounded[:-1]).all():
        return rounded, labels
    kept = np.unique(rounded[used])
    return kept, np.searchsorted(kept, rounded).astype(np.uint8)[labels]


def _inertia(free: np.ndarray, centroids: np.ndarray, labels: np.ndarray) -> float:
    """Sum of squared errors in float64, in cache-sized chunks (no BLAS `dot`: its threads
    would spin on idle cores)."""
    table = centroids.astype(np.float64)
    buffer = np.empty(min(free.size, CACHE_CHUNK))
    total = 0.0
    for start in range(0, free.size, CACHE_CHUNK):
        chunk = labels[start : start + CACHE_CHUNK]
        diff = buffer[: chunk.size]
        table.take(chunk, out=diff)
        diff -= free[start : start + CACHE_CHUNK]
        total += float(np.einsum("i,i->", diff, diff))
    return total
