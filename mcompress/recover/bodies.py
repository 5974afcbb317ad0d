"""Recovery inside Loop and Scan bodies: a weighted node there runs once per iteration with the
same weight, so its statistics are the sum of the Grams of its input over all iterations.

Stock onnxruntime cannot show a body's intermediate values, so recovery walks rewritten copies
(used only for statistics; what recovery writes lands in the real body):
- the walked copy of the Loop/Scan reads the body layers' weights (and biases) from the outer
  scope instead of body initializers, so each model's run feeds its own weights (the original's
  for the original model, the compressed ones for the compressed model);
- one probe copy per body layer also returns the layer's input as an extra scan output, stacked
  over the iterations. Statistics are added one calibration batch at a time, so memory holds
  one batch's inputs over all iterations.
Layers in bodies nested deeper, or whose names would clash once lifted, keep no statistics and
are named in the report.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from mcompress.graph import FreshNames, subgraphs
from mcompress.model_io import Model
from mcompress.recover.scope import WEIGHTED_OPS, Scope, layer_name, weighted_nodes_in

LOOPS = ("Loop", "Scan")


def reach_bodies(model: Model, scope: Scope) -> None:
    """Add the layers of each Loop/Scan body in `scope` (directly in the body) to
    `scope.inner`, walking lifted copies of their Loop/Scan nodes."""
    names = FreshNames(model.proto)
    outside = _outside_names(model, scope)
    for position, node in enumerate(scope.nodes):
        if node.op_type not in LOOPS or node.domain not in ("", "ai.onnx"):
            continue
        body = subgraphs(node)[0]
        layers = [n for n in body.node if _reachable(n)]
        if not layers:
            continue
        inits = {t.name for t in body.initializer}
        lifted = {name for n in layers for name in n.input[1:3] if name in inits}
        clash = sorted(lifted & outside)
        if clash:
            for inner in weighted_nodes_in(node):
                scope.reasons[layer_name(inner)] = (
                    f"inside the body of {node.op_type} '{node.name}': its weight '{clash[0]}' "
                    "has a name also used outside the body"
                )
            continue
        walked = _lifted(node, lifted)
        scope.nodes[position] = walked
        scope.guard([walked, *layers], node)
        scope.graphs.append(body)
        for inner in layers:
            scope.inner.append((position, inner))
            scope.probes[id(inner)] = _exposing(walked, inner.input[0], names)


def _reachable(node: onnx.NodeProto) -> bool:
    """A weighted node whose re-fit needs no new input: MatMul, or Conv/Gemm with a bias (a
    bias recovery adds would be missing from the copies walked)."""
    if node.op_type not in WEIGHTED_OPS or node.domain not in ("", "ai.onnx"):
        return False
    return node.op_type == "MatMul" or (len(node.input) > 2 and bool(node.input[2]))


def _outside_names(model: Model, scope: Scope) -> set[str]:
    """Names the walked graph defines outside any body."""
    names = {o for n in scope.nodes for o in n.output if o} | set(scope.initializers())
    return names | {i.name for i in model.proto.graph.input}


def _lifted(node: onnx.NodeProto, lifted: set[str]) -> onnx.NodeProto:
    """A copy of the Loop/Scan `node` whose body reads the initializers `lifted` from outside."""
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    body = subgraphs(copy)[0]
    kept = [t for t in body.initializer if t.name not in lifted]
    del body.initializer[:]
    body.initializer.extend(kept)
    return copy


def _exposing(node: onnx.NodeProto, value: str, names: FreshNames) -> tuple[onnx.NodeProto, str]:
    """A copy of the Loop/Scan `node` with one more scan output: `value` (a name the body reads)
    at every iteration, stacked on a new first axis; and that output's name."""
    probe = onnx.NodeProto()
    probe.CopyFrom(node)
    body = subgraphs(probe)[0]
    inner = names.fresh(f"{value}_each_iteration")
    body.node.append(helper.make_node("Identity", [value], [inner]))
    # Loop outputs: the carried values then the scan outputs; its body also returns a condition.
    outputs = len(body.output) - (1 if probe.op_type == "Loop" else 0)
    while len(probe.output) < outputs:
        probe.output.append(names.fresh(f"{probe.name or probe.op_type}_unused"))
    body.output.append(helper.make_tensor_value_info(inner, TensorProto.FLOAT, None))
    stacked = names.fresh(f"{value}_all_iterations")
    probe.output.append(stacked)
    for attr in probe.attribute:
        if attr.name in ("scan_output_axes", "scan_output_directions"):
            attr.ints.append(0)
    return probe, stacked
