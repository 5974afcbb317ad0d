"""Cluster one weight tensor (or each of its channels) and describe the result in a stats row."""

from __future__ import annotations

from typing import Any

import numpy as np

from mcompress.passes.cluster.config import Config
from mcompress.passes.cluster.kmeans1d import KMeans1D, kmeans1d
from mcompress.weights import Candidate


def cluster_weight(
    cand: Candidate, cfg: Config, axis: int | None
) -> tuple[dict[str, Any] | None, str]:
    """Cluster one weight (per slice along `axis` when given); its stats row, or why not."""
    weight = cand.weight
    if weight.size < 2 * cfg.clusters:
        return None, f"{weight.size} elements < 2 x clusters ({2 * cfg.clusters})"
    values = np.asarray(weight.array())
    data = values if values.dtype == np.float64 else values.astype(np.float32, copy=False)
    if not np.isfinite(data).all():
        return None, "contains NaN or infinity"
    distinct = int(np.unique(data).size)
    if distinct <= cfg.clusters:
        return None, f"already has {distinct} <= {cfg.clusters} distinct values"
    if axis is not None and data.ndim > 1:
        moved = np.moveaxis(data, axis, 0)
        results = [_kmeans(row, cfg) for row in moved.reshape(moved.shape[0], -1)]
        stacked = np.stack([r.centroids[r.labels] for r in results]).reshape(moved.shape)
        new = np.moveaxis(stacked, 0, axis)
    else:
        axis = None
        results = [_kmeans(data, cfg)]
        new = results[0].centroids[results[0].labels]
    inertia = sum(r.inertia for r in results)
    new = _keep_off_zero(new, data, values.dtype)
    weight.replace(new)
    row_stats: dict[str, Any] = {
        "name": weight.name,
        "ops": cand.ops,
        "shape": list(weight.shape),
        "elements": weight.size,
        "clusters": cfg.clusters,
        "unique_values_before": distinct,
        "unique_values_after": int(np.unique(new).size),
        "inertia": inertia,
        "mse": inertia / max(weight.size, 1),
        "relative_rmse": _relative_rmse(inertia, data),
        "bytes_before": int(values.nbytes),
    }
    if axis is not None:
        row_stats["axis"] = axis
        row_stats["max_unique_per_channel"] = _max_unique_per_slice(new, axis)
    return row_stats, ""


def _kmeans(values: np.ndarray, cfg: Config) -> KMeans1D:
    return kmeans1d(
        values, cfg.clusters, init=cfg.init, max_iter=cfg.max_iter, tol=cfg.tol, seed=cfg.seed
    )


def _keep_off_zero(new: np.ndarray, original: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Cast to the weight's dtype; a non-zero value that would round to 0 becomes the smallest
    non-zero of its sign, so zeros after clustering are exactly the zeros before."""
    cast = new.astype(dtype, copy=False)
    lost = (cast == 0) & (original != 0)
    if lost.any():
        tiny = np.nextafter(dtype.type(0), dtype.type(1))
        cast = cast.copy()
        cast[lost] = np.where(new[lost] < 0, -tiny, tiny)
    return cast


def _relative_rmse(inertia: float, data: np.ndarray) -> float:
    """RMS error over RMS weight: a scale-free measure of how much the tensor changed."""
    power = float(np.square(data, dtype=np.float64).sum())
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
