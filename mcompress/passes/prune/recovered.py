"""Unstructured `prune` with calibration data: each layer is pruned and re-fitted in graph order
against the original model's outputs (mcompress.recover), instead of zeroing by magnitude alone.

Weights read by ops recovery cannot re-fit (embedding tables read by Gather, LSTM weights) are
rounded to an 8-bit grid instead of pruned (mcompress.recover.tables says why); other weights
it cannot reach (in an If branch the calibration data does not take, in Loop bodies, shared by
several nodes) are pruned by magnitude as without data. Both happen before the
reconstruction, so the layers after them compensate; the stats say which.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np

from mcompress.graph import node_excluded
from mcompress.model_io import Model
from mcompress.passes.base import PassContext, PassResult
from mcompress.passes.prune.config import Config
from mcompress.passes.prune.magnitude import layer_counts, prune_tensor, tensor_row, totals_of
from mcompress.recover import tables
from mcompress.recover.branches import taken_scope
from mcompress.recover.layers import find_layers
from mcompress.recover.options import load_calibration
from mcompress.recover.pruning import magnitude_baseline, pruner
from mcompress.recover.sequential import RecoveryStats, reconstruct
from mcompress.weights import Candidate, find_candidates


def apply(model: Model, cfg: Config, ctx: PassContext) -> PassResult:
    """Prune with recovery; stats as without data plus a `recovery` section."""
    candidates, skipped = find_candidates(model, cfg.min_elements, cfg.include_biases, cfg.exclude)
    counts = layer_counts(candidates, cfg.sparsity, cfg.scope, cfg.layers)
    shares = {
        c.weight.name: k / max(c.weight.size, 1) for c, k in zip(candidates, counts, strict=True)
    }
    excluded = {row["name"] for row in skipped if row["reason"] == "excluded"}
    calibration = load_calibration(model, cfg, ctx)
    scope = taken_scope(model, calibration.feeds)
    layers = [
        layer
        for layer in find_layers(model, scope=scope)
        if layer.weight.name in shares or not _excluded(layer, cfg, excluded)
    ]
    reachable = {layer.weight.name for layer in layers}
    before = {c.weight.name: np.array(c.weight.array(), copy=True) for c in candidates}
    # Weights recovery cannot reach are compressed first, so the layers after them compensate.
    unreached = {
        c.weight.name: _unreached(c, k)
        for c, k in zip(candidates, counts, strict=True)
        if c.weight.name not in reachable
    }
    recovery = RecoveryStats(calibration.source, calibration.synthetic, len(calibration.feeds))
    criterion = cfg.criterion or "sparsegpt"
    nm = tuple(int(v) for v in cfg.n_m.split(":")) if cfg.n_m else None
    reconstruct(
        model,
        layers,
        calibration.feeds,
        pruner(shares, criterion, nm),  # type: ignore[arg-type]
        magnitude_baseline(shares),
        recovery,
        ctx.progress,
        scope,
    )
    tensors = [
        unreached.get(c.weight.name) or tensor_row(c, before[c.weight.name], c.weight.array())
        for c in candidates
    ]
    totals = totals_of(tensors)
    stats: dict[str, Any] = {
        "mode": "unstructured",
        "criterion": criterion,
        "n_m": cfg.n_m,
        "scope": cfg.scope,
        "target_sparsity": cfg.sparsity,
        "totals": totals,
        "tensors": tensors,
        "skipped": skipped,
        "recovery": asdict(recovery),
    }
    notes = [recovery.summary(), *_unreached_notes(list(unreached.values()))]
    if recovery.synthetic:
        notes.append("prune: recovery calibrated on synthetic random inputs (calibration: random)")
    return PassResult(modified=bool(tensors) or bool(layers), stats=stats, notes=notes)


def _unreached(cand: Candidate, k: int) -> dict[str, Any]:
    """Compress a weight recovery does not reconstruct: on the 8-bit grid when its ops have no
    re-fit, else (a layer out of reach) pruned by magnitude."""
    if tables.reconstructable(cand):
        return {**prune_tensor(cand, k), "recovered": False}
    values = np.asarray(cand.weight.array())
    rounded = tables.int8_grid(values)
    cand.weight.replace(rounded)
    return {**tensor_row(cand, values, rounded), "recovered": False, "int8_grid": True}


def _unreached_notes(rows: list[dict[str, Any]]) -> list[str]:
    """One note per treatment of the weights recovery cannot reconstruct."""
    notes = []
    rounded = [row for row in rows if row.get("int8_grid")]
    pruned = [row for row in rows if not row.get("int8_grid")]
    if rounded:
        notes.append(
            f"prune: {len(rounded)} weights recovery cannot reconstruct (e.g. "
            f"'{rounded[0]['name']}', read by {', '.join(rounded[0]['ops'])}) rounded to 8 bits "
            "instead of pruned: no later layer could undo their pruning error (exclude them to "
            "keep them whole)"
        )
    if pruned:
        notes.append(
            f"prune: {len(pruned)} weights recovery cannot reconstruct (e.g. "
            f"'{pruned[0]['name']}', read by {', '.join(pruned[0]['ops'])}) pruned by "
            "magnitude; only the layers after them compensate (exclude them to keep them whole)"
        )
    return notes


def _excluded(layer: Any, cfg: Config, excluded: set[str]) -> bool:
    return layer.weight.name in excluded or node_excluded(layer.node, cfg.exclude)
