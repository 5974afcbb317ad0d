"""Which `If` branches the calibration data takes, so recovery reaches the layers inside them.

Each `If` holding weighted layers has its condition read on every calibration batch (the nodes
before it run once, as in a recovery sweep). When every batch takes the same branch, that
branch is inlined into the scope recovery walks (`mcompress.recover.scope`): its layers get
statistics and reconstruction; the other branch's layers get none and are compressed without
recovery, with the reason in the report. Branches nested in an inlined branch are decided in
the next round. An `If` whose branch changes between batches stays whole (out of reach).
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
            reason = (
                inline(scope, node, values.pop())
                if len(values) == 1
                else "the calibration batches take both of its branches"
            )
            if reason:
                for inner in weighted_nodes_in(node):
                    scope.reasons[layer_name(inner)] = f"inside If '{node.name}': {reason}"
    reach_bodies(model, scope)
    return scope


def _conditions(
    model: Model, feeds: list[Batch], scope: Scope, nodes: list[onnx.NodeProto]
) -> list[set[bool]]:
    """The values each `If` node's condition takes over the calibration batches."""
    runner = SegmentRunner(model, feeds, scope)
    found = []
    for node in nodes:
        position = next(i for i, n in enumerate(scope.nodes) if n is node)
        values = runner.values(position, node.input[0])
        found.append({bool(np.asarray(v).reshape(-1)[0]) for v in values})
    return found
