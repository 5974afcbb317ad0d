"""1-D k-means numerics against an exact reference (dynamic programming on small data)."""

from __future__ import annotations

import numpy as np
import pytest

from mcompress.passes.cluster.kmeans1d import INITS, kmeans1d


def optimal_inertia(values: np.ndarray, k: int) -> float:
    """Exact minimum 1-D k-means inertia by dynamic programming over the sorted values."""
    x = np.sort(values.astype(np.float64))
    n = x.size
    s1 = np.concatenate(([0.0], np.cumsum(x)))
    s2 = np.concatenate(([0.0], np.cumsum(x * x)))
    i, j = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
    with np.errstate(divide="ignore", invalid="ignore"):
        cost = s2[j] - s2[i] - (s1[j] - s1[i]) ** 2 / (j - i)
    cost[j <= i] = np.inf
    best = cost[0]
    for _ in range(k - 1):
        best = np.min(best[:, None] + cost, axis=0)
    return float(best[n])


def lloyd_fixed_point(values: np.ndarray, centroids: np.ndarray, labels: np.ndarray) -> None:
    """Every value sits at its nearest centroid and every centroid is its members' mean."""
    flat, flat_labels = values.reshape(-1), labels.reshape(-1)
    nearest = np.abs(flat[:, None] - centroids[None, :].astype(np.float64)).min(axis=1)
    assigned = np.abs(flat - centroids[flat_labels].astype(np.float64))
    np.testing.assert_allclose(assigned, nearest, rtol=0, atol=1e-6)
    for j, c in enumerate(centroids):
        members = flat[flat_labels == j]
        np.testing.assert_allclose(c, members.mean(), rtol=1e-5, atol=1e-7)


SAMPLES = {
    "normal": np.random.default_rng(0).normal(0, 0.1, 300),
    "laplace": np.random.default_rng(1).laplace(0, 0.05, 300),
    "heavy_tail": np.random.default_rng(2).standard_t(2, 300),
    "bimodal": np.concatenate(
        [
            np.random.default_rng(3).normal(-1, 0.1, 150),
            np.random.default_rng(4).normal(2, 0.3, 150),
        ]
    ),
}


@pytest.mark.parametrize("name", sorted(SAMPLES))
@pytest.mark.parametrize("k", [2, 5, 16])
def test_auto_is_within_one_percent_of_the_optimum(name: str, k: int) -> None:
    values = SAMPLES[name].astype(np.float32)
    result = kmeans1d(values, k)
    best = optimal_inertia(values, k)
    assert best <= result.inertia <= 1.01 * best
    assert result.centroids.dtype == np.float32 and result.labels.dtype == np.uint8
    assert result.centroids.size == k
    assert np.all(np.diff(result.centroids) > 0)
    reconstructed = result.centroids[result.labels].astype(np.float64)
    assert result.inertia == pytest.approx(float(np.sum((values - reconstructed) ** 2)), rel=1e-9)


def test_isolated_outliers_do_not_take_the_dense_values_clusters() -> None:
    # Most of the start's candidate cuts land in the gaps between the outliers; they must be
    # spent elsewhere, or the dense core gets too few clusters.
    rng = np.random.default_rng(8)
    outliers = [-2.0, -0.7, 0.5, 0.9, 1.3, 5.0, 7.5, 11.0, 20.0, 40.0]
    values = np.concatenate([rng.normal(0, 0.01, 290), outliers]).astype(np.float32)
    result = kmeans1d(values, 16)
    assert result.centroids.size == 16
    assert result.inertia <= 1.01 * optimal_inertia(values, 16)


@pytest.mark.parametrize("k", [16, 100])
def test_large_tensors_are_labelled_at_their_nearest_centroid(k: int) -> None:
    # Above SEARCH_VALUES values, few cuts are applied by comparisons and many by binary search.
    values = np.random.default_rng(9).laplace(0, 0.05, 6000).astype(np.float32)
    result = kmeans1d(values, k, tol=0, max_iter=10_000)
    assert result.centroids.size == k
    lloyd_fixed_point(values, result.centroids, result.labels)


@pytest.mark.parametrize("init", INITS)
def test_every_init_converges_to_a_lloyd_fixed_point(init: str) -> None:
    values = SAMPLES["laplace"].astype(np.float32)
    result = kmeans1d(values, 8, init=init, tol=0, max_iter=10_000)
    assert result.centroids.size == 8
    lloyd_fixed_point(values, result.centroids, result.labels)
    best = optimal_inertia(values, 8)
    assert best <= result.inertia <= 2 * best  # a local optimum, but not a broken one


@pytest.mark.parametrize("init", ["kmeans++", "random"])
def test_seeded_inits_are_reproducible(init: str) -> None:
    values = SAMPLES["heavy_tail"].astype(np.float32)
    first = kmeans1d(values, 6, init=init, seed=7)
    again = kmeans1d(values, 6, init=init, seed=7)
    np.testing.assert_array_equal(first.centroids, again.centroids)
    np.testing.assert_array_equal(first.labels, again.labels)


def test_zeros_are_their_own_fixed_centroid() -> None:
    rng = np.random.default_rng(5)
    values = rng.normal(0, 0.02, (30, 20)).astype(np.float32)
    values[rng.random(values.shape) < 0.4] = 0.0
    result = kmeans1d(values, 16)
    clustered = result.centroids[result.labels]
    assert result.labels.shape == values.shape
    np.testing.assert_array_equal(clustered == 0, values == 0)
    assert np.count_nonzero(result.centroids == 0) == 1
    assert result.centroids.size == 16  # zero is counted in K
    nonzero = values != 0
    expected = optimal_inertia(values[nonzero], 15)
    assert expected <= result.inertia <= 1.01 * expected


def test_no_other_centroid_is_exactly_zero() -> None:
    # The only other cluster is {-1, 1}: its mean is 0, which would merge it with the zeros.
    values = np.array([0, 0, -1, 1, 0], np.float32)
    result = kmeans1d(values, 2)
    clustered = result.centroids[result.labels]
    np.testing.assert_array_equal(clustered == 0, values == 0)
    assert np.count_nonzero(result.centroids) == 1


def test_without_keep_zero_zeros_are_ordinary_values() -> None:
    values = np.array([0, 0, 0, 0.1, 0.11, 5, 5.2], np.float32)
    result = kmeans1d(values, 2, keep_zero=False)
    assert 0.0 not in result.centroids
    assert result.inertia == pytest.approx(optimal_inertia(values, 2), rel=1e-6)


def test_few_distinct_values_are_kept_exactly() -> None:
    values = np.tile(np.array([-0.5, 0.25, 3.0], np.float32), 40)
    result = kmeans1d(values, 8)
    np.testing.assert_array_equal(result.centroids, [-0.5, 0.25, 3.0])
    np.testing.assert_array_equal(result.centroids[result.labels], values)
    assert result.inertia == 0.0


def test_all_zeros() -> None:
    result = kmeans1d(np.zeros((4, 4), np.float32), 4)
    np.testing.assert_array_equal(result.centroids, [0.0])
    assert result.labels.shape == (4, 4) and not result.labels.any()


def test_histogram_mode_matches_exact_mode() -> None:
    values = np.random.default_rng(6).laplace(0, 0.05, 200_000).astype(np.float32)
    exact = kmeans1d(values, 32)
    histogram = kmeans1d(values, 32, histogram_above=10_000)
    assert histogram.inertia <= 1.01 * exact.inertia
    assert (exact.distinct, histogram.distinct) == (np.unique(values).size, None)
    assert histogram.centroids.size == 32
    assert histogram.labels.shape == values.shape
    reconstructed = histogram.centroids[histogram.labels].astype(np.float64)
    assert histogram.inertia == pytest.approx(float(np.sum((values - reconstructed) ** 2)))


def test_256_clusters_fit_in_uint8_labels() -> None:
    values = np.random.default_rng(7).normal(0, 1, 20_000).astype(np.float32)
    values[:100] = 0
    result = kmeans1d(values, 256)
    assert result.centroids.size == 256
    assert int(result.labels.max()) == 255
    np.testing.assert_array_equal(result.centroids[result.labels] == 0, values == 0)


@pytest.mark.parametrize(
    ("k", "values", "message"),
    [
        (1, np.ones(4), "k must be an integer from 2 to 256"),
        (257, np.ones(4), "k must be an integer from 2 to 256"),
        (4, np.array([1.0, np.nan]), "NaN or infinity"),
        (4, np.array([1.0, np.inf]), "NaN or infinity"),
    ],
)
def test_bad_arguments(k: int, values: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        kmeans1d(values, k)


def test_unknown_init() -> None:
    with pytest.raises(ValueError, match="init must be one of"):
        kmeans1d(np.ones(4), 2, init="fancy")  # type: ignore[arg-type]


def test_histogram_mode_holds_no_index_array_of_the_tensors_size() -> None:
    """A large tensor's bins are counted chunk by chunk and computed again for its labels:
    besides the uint8 labels it allocates under twice the float tensor (16 MB chunk buffers and
    the bins; a whole-tensor bin index and its 8-byte copies took 4x, with each 64 MB weight
    paying 0.4 s of page faults)."""
    import tracemalloc

    values = np.random.default_rng(8).normal(0, 0.02, 12_000_000).astype(np.float32)
    tracemalloc.start()
    result = kmeans1d(values, 256)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak - result.labels.nbytes < 2 * values.nbytes
    assert result.centroids.size == 256


def test_expand_is_the_table_at_the_labels() -> None:
    from mcompress.passes.cluster.histogram import CACHE_CHUNK, expand

    table = np.array([-1.5, 0.25, 2.0], np.float32)
    labels = np.random.default_rng(9).integers(0, 3, (3, CACHE_CHUNK + 5)).astype(np.uint8)
    out = expand(table, labels)
    assert out.dtype == np.float32 and out.shape == labels.shape
    np.testing.assert_array_equal(out, table[labels])
