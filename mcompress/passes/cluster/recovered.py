"""`cluster` with calibration data: each layer's K shared values are chosen, assigned and
re-fitted in graph order against the original model's outputs (mcompress.recover.clustering).

Weights recovery cannot reach are clustered as without data, before the reconstruction, so the
layers after them compensate: with their own K when they are layers out of reach (in an If
branch the calibration data does not take, in Loop bodies, shared by several nodes), with 256
values (8 bits) when no Conv/Gemm/MatMul reads them (embedding tables;
mcompress.recover.tables says why).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np

from mcompress.graph import node_excluded
from mcompress.model_io import Model
from mcompress.passes.base import PassContext, PassResult
from mcompress.passes.cluster.config import Config
from mcompress.passes.cluster.kmeans1d import kmeans1d
from mcompress.passes.cluster.share import cluster_weight, totals_of
from mcompress.recover import tables
from mcompress.recover.branches import taken_scope
from mcompress.recover.clustering import clustered_baseline, clusterer
from mcompress.recover.layers import find_layers
from mcompress.recover.options import load_calibration
from mcompress.recover.sequential import RecoveryStats, reconstruct
from mcompress.weights import Candidate, find_candidates


def apply(model: Model, cfg: Config, ctx: PassContext) -> PassResult:
    """Cluster with recovery; stats as without data plus a `recovery` section."""
    candidates, skipped = find_candidates(model, cfg.min_elements, False, cfg.exclude)
    initial, reasons = _starting_centroids(candidates, cfg)
    excluded = {row["name"] for row in skipped if row["reason"] == "excluded"}
    calibration = load_calibration(model, cfg, ctx)
    scope = taken_scope(model, calibration.feeds)
    layers = [
        layer
        for layer in find_layers(model, scope=scope)
        if layer.weight.name in initial
        or (layer.weight.name not in excluded and not node_excluded(layer.node, cfg.exclude))
    ]
    reachable = {layer.weight.name for layer in layers}
    before = {c.weight.name: np.array(c.weight.array(), copy=True) for c in candidates}
    # Weights recovery cannot reach are clustered first, so the layers after them compensate.
    unreached = {
        c.weight.name: cluster_weight(c, _unreached_config(c, cfg), None)
        for c in candidates
        if c.weight.name not in reasons and c.weight.name not in reachable
    }
    recovery = RecoveryStats(calibration.source, calibration.synthetic, len(calibration.feeds))
    reconstruct(
        model,
        layers,
        calibration.feeds,
        clusterer(cfg.clusters, {k: v for k, v in initial.items() if k in reachable}),
        clustered_baseline(initial),
        recovery,
        ctx.progress,
        scope,
    )
    tensors: list[dict[str, Any]] = []
    for cand in candidates:
        name = cand.weight.name
        if name in reasons:
            skipped.append({"name": name, "reason": reasons[name]})
        elif name in reachable:
            tensors.append(_row(cand, before[name], cfg.for_weight(name).clusters))
        else:
            row, reason = unreached[name]
            if row is None:
                skipped.append({"name": name, "reason": reason})
            else:
                tensors.append({**row, "recovered": False})
    stats: dict[str, Any] = {
        "clusters": cfg.clusters,
        "per_channel": False,
        "init": cfg.init,
        "totals": totals_of(tensors),
        "tensors": tensors,
        "skipped": skipped,
        "recovery": asdict(recovery),
    }
    notes = [recovery.summary()]
    held = [
        row
        for c in candidates
        if c.weight.name in unreached
        and (row := unreached[c.weight.name][0])
        and row["clusters"] > cfg.for_weight(c.weight.name).clusters
    ]
    if held:
        notes.append(
            f"cluster: {len(held)} weights recovery cannot reconstruct (e.g. '{held[0]['name']}', "
            f"read by {', '.join(held[0]['ops'])}) clustered to {tables.EIGHT_BIT_VALUES} values "
            "(8 bits): no later layer could undo their error (exclude them to keep them whole)"
        )
    if recovery.synthetic:
        notes.append(
            "cluster: recovery calibrated on synthetic random inputs (calibration: random)"
        )
    return PassResult(modified=bool(tensors) or bool(layers), stats=stats, notes=notes)


def _unreached_config(cand: Candidate, cfg: Config) -> Config:
    """A weight no Conv/Gemm/MatMul reads is held at 8 bits (256 shared values); a layer out of
    recovery's reach gets its own K."""
    own = cfg.for_weight(cand.weight.name)
    if tables.reconstructable(cand) or own.clusters >= tables.EIGHT_BIT_VALUES:
        return own
    return own.model_copy(update={"clusters": tables.EIGHT_BIT_VALUES})


def _starting_centroids(
    candidates: list[Candidate], options: Config
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Plain k-means centroids (zero excluded) per weight to cluster, and why others are not."""
    initial: dict[str, np.ndarray] = {}
    reasons: dict[str, str] = {}
    for cand in candidates:
        cfg = options.for_weight(cand.weight.name)
        values = np.asarray(cand.weight.array(), dtype=np.float32)
        distinct = int(np.unique(values).size)
        if cand.weight.size < 2 * cfg.clusters:
            reasons[cand.weight.name] = f"{cand.weight.size} elements < 2 x clusters"
        elif not np.isfinite(values).all():
            reasons[cand.weight.name] = "contains NaN or infinity"
        elif distinct <= cfg.clusters:
            reasons[cand.weight.name] = f"already has {distinct} <= {cfg.clusters} distinct values"
        else:
            fit = kmeans1d(
                values, cfg.clusters, init=cfg.init, max_iter=cfg.max_iter, seed=cfg.seed
            )
            initial[cand.weight.name] = fit.centroids[fit.centroids != 0].astype(np.float64)
    return initial, reasons


def _row(cand: Candidate, values: np.ndarray, clusters: int) -> dict[str, Any]:
    new = np.asarray(cand.weight.array())
    diff = np.square(new.astype(np.float64) - values, dtype=np.float64).sum()
    power = float(np.square(values, dtype=np.float64).sum())
    return {
        "name": cand.weight.name,
        "ops": cand.ops,
        "shape": list(cand.weight.shape),
        "elements": cand.weight.size,
        "clusters": clusters,
        "unique_values_before": int(np.unique(values).size),
        "unique_values_after": int(np.unique(new).size),
        "inertia": float(diff),
        "mse": float(diff) / max(cand.weight.size, 1),
        "relative_rmse": float(np.sqrt(diff / power)) if power > 0 else 0.0,
        "bytes_before": int(values.nbytes),
    }
