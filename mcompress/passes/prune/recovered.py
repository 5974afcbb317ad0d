"""Unstructured `prune` with calibration data: each layer is pruned and re-fitted in graph order
against the original model's outputs (mcompress.recover), instead of zeroing by magnitude alone.

Weights that recovery cannot reach (inside subgraphs, shared by several nodes, other ops such as
embedding tables read by Gather) are pruned by magnitude as without data, before the
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
from mcompress.recover.layers import find_layers
from mcompress.recover.options import load_calibration
from mcompress.recover.pruning import magnitude_baseline, pruner
from mcompress.recover.sequential import RecoveryStats, reconstruct
from mcompress.weights import find_candidates


def apply(model: Model, cfg: Config, ctx: PassContext) -> PassResult:
    """Prune with recovery; stats as without data plus a `recovery` section."""
    candidates, skipped = find_candidates(model, cfg.min_elements, cfg.include_biases, cfg.exclude)
    counts = layer_counts(candidates, cfg.sparsity, cfg.scope, cfg.layers)
    shares = {
        c.weight.name: k / max(c.weight.size, 1) for c, k in zip(candidates, counts, strict=True)
    }
    excluded = {row["name"] for row in skipped if row["reason"] == "excluded"}
    layers = [
        layer
        for layer in find_layers(model)
        if layer.weight.name in shares or not _excluded(layer, cfg, excluded)
    ]
    reachable = {layer.weight.name for layer in layers}
    before = {c.weight.name: np.array(c.weight.array(), copy=True) for c in candidates}
    # Weights recovery cannot reach are pruned first, so the layers after them compensate.
    unreached = {
        c.weight.name: {**prune_tensor(c, k), "recovered": False}
        for c, k in zip(candidates, counts, strict=True)
        if c.weight.name not in reachable
    }
    calibration = load_calibration(model, cfg, ctx)
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
    notes = [recovery.summary()]
    if unreached:
        example = next(iter(unreached.values()))
        notes.append(
            f"prune: {len(unreached)} weights recovery cannot reconstruct (e.g. "
            f"'{example['name']}', read by {', '.join(example['ops'])}) pruned by magnitude; "
            "only the layers after them compensate (exclude them to keep them whole)"
        )
    if recovery.synthetic:
        notes.append("prune: recovery calibrated on synthetic random inputs (calibration: random)")
    return PassResult(modified=bool(tensors) or bool(layers), stats=stats, notes=notes)


def _excluded(layer: Any, cfg: Config, excluded: set[str]) -> bool:
    return layer.weight.name in excluded or node_excluded(layer.node, cfg.exclude)
