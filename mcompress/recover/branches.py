"""Which `If` branches the calibration data takes, so recovery reaches the layers inside them.

Each `If` holding weighted layers has its condition read on every calibration batch (the nodes
before it run once, as in a recovery sweep). When every batch takes the same branch, that
branch is inlined into the scope recovery walks (`mcompress.recover.scope`): its layers get
statistics and reconstruction; the other branch's layers get none and are compressed without
recovery, with the reason in the report. When the batches take both, both branches are
inlined, each run only by the batches that take it (in both models: the original's choice,
so the compressed model's statistics follow the same path). Branches nested in an inlined
branch are decided in the next round, on the batches that reach them.
"""

from __future__ import annotations

import numpy as np
import onnx

from mcompress.model_io import Model
from mcompress.recover.activations import Batch, SegmentRunner, batches
from mcompress.recover.bodies import reach_bodies
from mcompress.recover.scope import (
    Scope,
    holds_layers,
    inline,
    inline_both,
    layer_name,
    main_scope,
    weighted_nodes_in,
)

# Rounds of inlining: an If nested this deep in taken branches stays out of reach.
MAX_DEPTH = 4


def taken_scope(model: Model, feeds: list[Batch]) -> Scope:
    """The main graph with every `If` branch the calibration `feeds` take inlined, and the
    layers of the Loop/Scan bodies in it reached (`mcompress.recover.bodies`)."""
    scope = main_scope(model.proto.graph)
    settled: set[int] = set()
    for _ in range(MAX_DEPTH):
        pending = [n for n in scope.nodes if id(n) not in settled and holds_layers(n)]
        if not pending:
            break
        taken = _conditions(model, batches(feeds, model), scope, pending)
        for node, values in zip(pending, taken, strict=True):
            settled.add(id(node))
            reason = _inline(scope, node, values)
            if reason:
                for inner in weighted_nodes_in(node):
                    scope.reasons[layer_name(inner)] = f"inside If '{node.name}': {reason}"
    reach_bodies(model, scope)
    return scope


def _inline(scope: Scope, node: onnx.NodeProto, values: list[bool | None]) -> str | None:
    """Walk the branches of `node` the batches take (`values`: each batch's); None when done,
    else why not."""
    seen = {v for v in values if v is not None}
    if not seen:
        return "no calibration batch reaches it"
    if len(seen) == 1:
        return inline(scope, node, seen.pop())
    return inline_both(scope, node, values)


def _conditions(
    model: Model, feeds: list[Batch], scope: Scope, nodes: list[onnx.NodeProto]
) -> list[list[bool | None]]:
    """The branch each `If` node takes on each calibration batch (None: not reached)."""
    runner = SegmentRunner(model, feeds, scope)
    found = []
    for node in nodes:
        position = next(i for i, n in enumerate(scope.nodes) if n is node)
        values = runner.values(position, node.input[0])
        found.append([None if v is None else bool(np.asarray(v).reshape(-1)[0]) for v in values])
    return found
