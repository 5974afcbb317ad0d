"""Cluster one weight tensor (or each of its channels) and describe the result in a stats row."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mcompress.passes.cluster.config import Config
from mcompress.passes.cluster.histogram import expand
from mcompress.passes.cluster.kmeans1d import HISTOGRAM_ABOVE, KMeans1D, kmeans1d
from mcompress.weights import Candidate

# Elements sampled to rule out "already has at most K distinct values" without a full sort.
DISTINCT_SAMPLE = 4096


def cluster_weight(
    cand: Candidate, cfg: Config, axis: int | None
) -> tuple[dict[str, Any] | None, str]:
    """Cluster one weight (per slice along `axis` when given) in place; its stats row, or why
    not (see `clustered`)."""
    row, reason, new = clustered(cand, cfg, axis)
    if new is not None:
        cand.weight.replace(new)
    return row, reason


def clustered(
    cand: Candidate, cfg: Config, axis: int | None, *, half: bool = False
) -> tuple[dict[str, Any] | None, str, np.ndarray | None]:
    """One weight clustered (per slice along `axis` when given), the model left as it is: its
    stats row and new values, or why not. Safe to run on several weights at once. With `half`,
    float32 centroids are rounded to float16 values (see `_table`).

    Large tensors are never sorted here: a random sample rules out "already has <= K values"
    and their distinct values before clustering are not counted (None in the stats)."""
    weight = cand.weight
    if weight.size < 2 * cfg.clusters:
        return None, f"{weight.size} elements < 2 x clusters ({2 * cfg.clusters})", None
    values = np.asarray(weight.array())
    data = values if values.dtype == np.float64 else values.astype(np.float32, copy=False)
    if not (math.isfinite(data.min()) and math.isfinite(data.max())):
        return None, "contains NaN or infinity", None
    few = _distinct_if_at_most(data, cfg.clusters)
    if few is not None:
        return None, f"already has {few} <= {cfg.clusters} distinct values", None
    if axis is not None and data.ndim > 1:
        moved = np.moveaxis(data, axis, 0)
        results = [_kmeans(row, cfg) for row in moved.reshape(moved.shape[0], -1)]
        tables = [_table(r.centroids, values.dtype, half) for r in results]
        stacked = np.stack([t[r.labels] for t, r in zip(tables, results, strict=True)])
        new = np.moveaxis(stacked.reshape(moved.shape), 0, axis)
        before = int(np.unique(data).size) if data.size <= HISTOGRAM_ABOVE else None
    else:
        axis = None
        results = [_kmeans(data, cfg)]
        tables = [_table(results[0].centroids, values.dtype, half)]
        new = expand(tables[0], results[0].labels)
        before = results[0].distinct
    inertia = sum(r.inertia for r in results)
    row_stats: dict[str, Any] = {
        "name": weight.name,
        "ops": cand.ops,
        "shape": list(weight.shape),
        "elements": weight.size,
        "clusters": cfg.clusters,
        "unique_values_before": before,
        # Every centroid is used: the distinct values after are those of the tables.
        "unique_values_after": int(np.unique(np.concatenate(tables)).size),
        "inertia": inertia,
        "mse": inertia / max(weight.size, 1),
        "relative_rmse": _relative_rmse(inertia, data),
        "bytes_before": int(values.nbytes),
    }
    if axis is not None:
        row_stats["axis"] = axis
        row_stats["max_unique_per_channel"] = _max_unique_per_slice(new, axis)
    return row_stats, "", new


def _distinct_if_at_most(data: np.ndarray, limit: int) -> int | None:
    """How many distinct values `data` holds when that is at most `limit`, else None; a
    random sample usually shows more than `limit` without a full sort."""
    if data.size > DISTINCT_SAMPLE:
        picks = np.random.default_rng(0).integers(0, data.size, DISTINCT_SAMPLE)
        if np.unique(data.reshape(-1)[picks]).size > limit:
            return None
    distinct = int(np.unique(data).size)
    return distinct if distinct <= limit else None


def _kmeans(values: np.ndarray, cfg: Config) -> KMeans1D:
    return kmeans1d(
        values, cfg.clusters, init=cfg.init, max_iter=cfg.max_iter, tol=cfg.tol, seed=cfg.seed
    )


def _table(centroids: np.ndarray, dtype: np.dtype, half: bool) -> np.ndarray:
    """The centroids as the weight's values. With `half` (a model saved with external data),
    float32 centroids within float16's range are rounded to float16 values (a relative change
    under 5e-4, far inside the clustering error) so the packed weight can be stored as float16
    and restored by one Cast, which holds nothing but the weight when onnxruntime loads it
    (a codebook's int32 indices double that: see `mcompress.encoding.LOAD_PEAK_LIMIT`)."""
    finite = np.abs(centroids).max(initial=0.0) <= np.finfo(np.float16).max
    if half and dtype == np.float32 and finite:
        return _keep_off_zero(centroids, np.dtype(np.float16)).astype(np.float32)
    return _keep_off_zero(centroids, dtype)


def _keep_off_zero(centroids: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Centroids cast to the weight's dtype; a non-zero one that would round to 0 becomes the
    smallest non-zero of its sign, so zeros after clustering are exactly the zeros before (the
    only zero centroid is the exact one that holds the zeros)."""
    cast = centroids.astype(dtype)
    lost = (cast == 0) & (centroids != 0)
    if lost.any():
        tiny = np.nextafter(dtype.type(0), dtype.type(1))
        cast[lost] = np.where(centroids[lost] < 0, -tiny, tiny)
    return cast


def _relative_rmse(inertia: float, data: np.ndarray) -> float:
    """RMS error over RMS weight: a scale-free measure of how much the tensor changed."""
    flat = data.reshape(-1)
    power = float(np.einsum("i,i->", flat, flat, dtype=np.float64))
    return float(np.sqrt(inertia / power)) if power > 0 else 0.0


def _max_unique_per_slice(values: np.ndarray, axis: int) -> int:
    rows = np.moveaxis(values, axis, 0).reshape(values.shape[axis], -1)
    ordered = np.sort(rows, axis=1)
    return int(((ordered[:, 1:] != ordered[:, :-1]).sum(axis=1) + 1).max())


def totals_of(tensors: list[dict[str, Any]]) -> dict[str, Any]:
    elements = sum(t["elements"] for t in tensors)
    inertia = sum(t["inertia"] for t in tensors)
    return {
        "tensors": len(tensors),
        "elements": elements,
        "inertia": inertia,
        "mse": inertia / max(elements, 1),
        "max_unique_values_after": max((t["unique_values_after"] for t in tensors), default=0),
        "bytes_before": sum(t["bytes_before"] for t in tensors),
    }
