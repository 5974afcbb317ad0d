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

from typing import Any

import numpy as np
import onnx
from onnx import helper

from mcompress.errors import NothingToDo
from mcompress.model_io import Model, saves_external
from mcompress.passes.base import PassContext, PassResult
from mcompress.passes.cluster.config import Config
from mcompress.passes.cluster.share import clustered, totals_of
from mcompress.passes.cluster.workers import in_order, worker_count
from mcompress.recover.options import NO_DATA_NOTE, check_calibration, wants_recovery
from mcompress.weights import WEIGHT_SLOTS, Candidate, Key, find_candidates, walk

summary = "Share weights: each weight becomes the nearest of K values (stored as a codebook)."


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
    half = saves_external(model)
    tensors: list[dict[str, Any]] = []

    def work(cand: Candidate) -> tuple[dict[str, Any] | None, str, np.ndarray | None]:
        return clustered(cand, cfg.for_weight(cand.weight.name), axes.get(cand.key), half=half)

    workers = worker_count(sum(cand.weight.size for cand in candidates))
    results = in_order(work, candidates, workers)
    for done, (cand, (row, reason, new)) in enumerate(zip(candidates, results, strict=True)):
        ctx.progress("cluster", done, len(candidates))
        if row is None or new is None:
            skipped.append({"name": cand.weight.name, "reason": reason})
        else:
            cand.weight.replace(new)
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
