"""`cluster`: weight sharing - replace each weight by the nearest of K shared values.

Each tensor (or each output channel, `per_channel: true`) is clustered with the fast 1-D
k-means of `kmeans1d`; the pass writes dense arrays with at most K distinct values
and `mcompress.encoding` stores them as packed indices plus a codebook at save, so the file
shrinks. Exact zeros stay exactly zero, so clustering after pruning keeps the sparsity.
Weights covered are those `prune` covers: float initializers read only as layer weights.
Per channel, a tensor holds up to K values in each of its C channels (C x K in all), which a
single codebook of at most 256 entries cannot always hold.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import onnx
from onnx import helper
from pydantic import Field

from mcompress.errors import NothingToDo
from mcompress.model_io import Model
from mcompress.passes.base import PassContext, PassResult
from mcompress.passes.cluster.kmeans1d import MAX_CLUSTERS, KMeans1D, kmeans1d
from mcompress.passes.prune import WEIGHT_SLOTS, Candidate, find_candidates
from mcompress.passes.prune.channel_groups import Key, walk
from mcompress.recover.options import (
    NO_DATA_NOTE,
    RecoveryConfig,
    check_calibration,
    wants_recovery,
)

summary = "Share weights: each weight becomes the nearest of K values (stored as a codebook)."


class Config(RecoveryConfig):
    """Options of the cluster pass (YAML `{type: cluster, ...}`)."""

    type: Literal["cluster"] = "cluster"
    clusters: int = Field(
        16, ge=2, le=MAX_CLUSTERS, description="shared values per tensor (or per channel)"
    )
    per_channel: bool = Field(False, description="one set of K values per output channel")
    init: Literal["auto", "linear", "density", "kmeans++", "random"] = Field(
        "auto",
        description="starting centroids: auto (optimal on a summary, then split), linear "
        "(evenly spaced), density (quantiles), kmeans++ or random (seeded)",
    )
    max_iter: int = Field(300, ge=1, le=100_000, description="Lloyd iterations at most")
    tol: float = Field(1e-6, ge=0, le=1, description="stop when inertia improves less (relative)")
    seed: int = Field(0, description="seed for the kmeans++ and random inits")
    min_elements: int = Field(
        256,
        ge=0,
        description="leave tensors smaller than this (or than 2 x clusters) alone: their "
        "codebook would cost about what it saves",
    )
    exclude: tuple[str, ...] = Field(
        (), description="node names (globs), op types or weight names to leave alone"
    )


def check(model: Model, cfg: Config) -> None:
    """Refuse models without any layer whose weights could be clustered."""
    ops = {node.op_type for graph in model.graphs() for node in graph.node}
    if not ops & set(WEIGHT_SLOTS):
        raise NothingToDo(
            "nothing to cluster: the model has no " + ", ".join(sorted(WEIGHT_SLOTS)) + " layer"
        )
    check_calibration(cfg)


def apply(model: Model, cfg: Config, ctx: PassContext) -> PassResult:
    """Cluster every covered weight in place; stats list each tensor touched or skipped."""
    if wants_recovery(cfg) and not cfg.per_channel:
        from mcompress.passes.cluster import recovered

        return recovered.apply(model, cfg, ctx)
    candidates, skipped = find_candidates(model, cfg.min_elements, False, cfg.exclude)
    axes = _channel_axes(model, candidates) if cfg.per_channel else {}
    tensors: list[dict[str, Any]] = []
    for done, cand in enumerate(candidates):
        ctx.progress("cluster", done, len(candidates))
        row, reason = cluster_weight(cand, cfg, axes.get(cand.key))
        if row is None:
            skipped.append({"name": cand.weight.name, "reason": reason})
        else:
            tensors.append(row)
    ctx.progress("cluster", len(candidates), len(candidates))
    notes = [] if tensors else ["cluster: no weight was clustered (see skipped)"]
    if wants_recovery(cfg):
        notes.append("cluster: recovery works on per-tensor codebooks; per_channel ran without it")
    elif cfg.recover and tensors:
        notes.append(NO_DATA_NOTE.format(name="cluster"))
    stats: dict[str, Any] = {
        "clusters": cfg.clusters,
        "per_channel": cfg.per_channel,
        "init": cfg.init,
        "totals": totals_of(tensors),
        "tensors": tensors,
        "skipped": skipped,
    }
    return PassResult(modified=bool(tensors), stats=stats, notes=notes)


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


# ---------------------------------------------------------------- per-channel axes


def _channel_axes(model: Model, candidates: list[Candidate]) -> dict[Key, int]:
    """The output-channel axis of each candidate, from the first layer reading it as weight."""
    wanted = {c.key: c.weight.shape for c in candidates}
    axes: dict[Key, int] = {}
    for site in walk(model):
        for slot in WEIGHT_SLOTS.get(site.node.op_type, ()):
            init = site.const(slot)
            if init is None or init.key not in wanted or init.key in axes:
                continue
            rank = len(wanted[init.key])
            axes[init.key] = _output_axis(site.node, slot, rank) % max(rank, 1)
    return axes


def _output_axis(node: onnx.NodeProto, slot: int, rank: int) -> int:
    """Axis of a weight that indexes the layer's output channels (features, for Gather)."""
    op = node.op_type
    if op in ("ConvTranspose", "LSTM", "GRU", "RNN"):
        return 1
    if op == "Gemm":
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if slot == 1:
            return 0 if attrs.get("transB", 0) else 1
        return 1 if attrs.get("transA", 0) else 0
    if op == "MatMul":
        return -1 if slot == 1 or rank < 2 else -2
    if op == "Gather":
        return -1
    return 0
