"""Which layers distillation fits: the classifier (the last weighted layer, whose output reaches
a graph output through bias Adds, Softmax and reshapes only) and the N weighted layers before
it, each with the reason when it is left alone."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper

from mcompress.graph import node_excluded
from mcompress.model_io import Model, read_array
from mcompress.passes.distill.quantized import Grid, find_grid
from mcompress.recover.layers import Layer, find_layers

WEIGHTED_OPS = {
    "Conv", "ConvTranspose", "Gemm", "MatMul", "MatMulInteger", "ConvInteger", "MatMulNBits",
    "QLinearConv", "QLinearMatMul", "DynamicQuantizeMatMul", "MatMulIntegerToFloat",
}  # fmt: skip
# Ops between the classifier layer and the output that keep one row of class scores per sample.
_PASS_THROUGH = {"Identity", "Reshape", "Flatten", "Squeeze"}
QUANTIZED_NOTE = "its weight is stored quantized ({how}); distill re-fits float, pruned, "
QUANTIZED_NOTE += "clustered and Cast/Mul-rebuilt integer weights only"


@dataclass
class Head:
    """The classifier layer, the constant added to its output, and the graph output it feeds."""

    layer: Layer
    offset: np.ndarray
    output: str


@dataclass
class Plan:
    """Layers to reconstruct (graph order), the classifier, and what was left alone and why."""

    layers: list[Layer] = field(default_factory=list)
    head: Head | None = None
    skipped: list[dict[str, str]] = field(default_factory=list)
    grids: dict[int, Grid] = field(default_factory=dict)  # position -> quantized layer's grid


def plan(model: Model, teacher_names: set[str], count: int, exclude: tuple[str, ...]) -> Plan:
    """The classifier and the `count` weighted layers before it in the main graph."""
    graph = model.proto.graph
    constant = _constants(graph)
    weighted = [
        (i, node)
        for i, node in enumerate(graph.node)
        if node.op_type in WEIGHTED_OPS
        and len(node.input) > 1
        and any(name in constant for name in node.input[1:])
    ]
    layers = {layer.position: layer for layer in find_layers(model)}
    result = Plan()
    chain = _chain_to_output(model, graph, weighted[-1][1]) if weighted else None
    last_quantized = bool(weighted) and _quantized_how(weighted[-1][1], graph) is not None
    if chain is None and last_quantized:
        node = weighted.pop()[1]
        how = QUANTIZED_NOTE.format(how=_quantized_how(node, graph))
        result.skipped.append({"name": node.name or node.output[0], "reason": f"classifier: {how}"})
    elif not weighted:
        why = "no Conv, Gemm or MatMul with a constant weight in the main graph (layers inside "
        result.skipped.append({"name": "(model)", "reason": why + "If/Loop bodies are not fitted)"})
    elif chain is None:
        why = "the last weighted layer does not feed a graph output through bias Adds, Softmax "
        result.skipped.append({"name": "(classifier)", "reason": why + "and reshapes only"})
    else:
        head_at, head_node = weighted.pop()
        result.head = _head(graph, layers.get(head_at), head_node, chain, result, exclude)
    for position, node in weighted[max(len(weighted) - count, 0) :]:
        layer = layers.get(position)
        grid = find_grid(model, position) if layer is None else None
        if isinstance(grid, Grid):
            layer = grid.layer
            result.grids[position] = grid
        reason = grid if isinstance(grid, str) else None
        reason = reason or _why_not(node, layer, teacher_names, exclude, graph)
        if reason or layer is None:
            result.skipped.append({"name": node.name or node.output[0], "reason": str(reason)})
        else:
            result.layers.append(layer)
    return result


def _why_not(
    node: onnx.NodeProto,
    layer: Layer | None,
    teacher_names: set[str],
    exclude: tuple[str, ...],
    graph: onnx.GraphProto,
) -> str | None:
    """Why a weighted node is not reconstructed (None: it is)."""
    if node_excluded(node, exclude):
        return "excluded"
    if layer is None:
        how = _quantized_how(node, graph)
        if how:
            return QUANTIZED_NOTE.format(how=how)
        return "its weight is not a float initializer read by this node alone"
    if node.output[0] not in teacher_names:
        return f"the teacher has no tensor '{node.output[0]}' to match its output against"
    return None


def _quantized_how(node: onnx.NodeProto, graph: onnx.GraphProto) -> str | None:
    """How a weighted node's weight is quantized, or None when it is not."""
    if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
        return node.op_type
    producer = {out: n for n in graph.node for out in n.output}
    frontier = [node.input[1]]
    inits = {t.name: t for t in graph.initializer}
    while frontier:
        name = frontier.pop()
        if name in inits and inits[name].data_type in _INTEGER_TYPES:
            return f"{onnx.TensorProto.DataType.Name(inits[name].data_type).lower()} codes"
        source = producer.get(name)
        if source is not None:
            frontier.extend(i for i in source.input if i)
    return None


_INTEGER_TYPES = {
    onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT4, onnx.TensorProto.UINT4,
}  # fmt: skip


def _head(
    graph: onnx.GraphProto,
    layer: Layer | None,
    node: onnx.NodeProto,
    chain: tuple[np.ndarray, str],
    result: Plan,
    exclude: tuple[str, ...],
) -> Head | None:
    """The classifier `node` as a Head, or None (with the reason in `result.skipped`)."""
    reason = None
    if node_excluded(node, exclude):
        reason = "excluded"
    elif layer is None:
        how = _quantized_how(node, graph)
        reason = QUANTIZED_NOTE.format(how=how) if how else "its weight is not a float initializer"
    elif layer.groups != 1:
        reason = "grouped convolution"
    if reason is not None or layer is None:
        result.skipped.append(
            {"name": node.name or node.output[0], "reason": f"classifier: {reason}"}
        )
        return None
    return Head(layer, chain[0], chain[1])


def _chain_to_output(
    model: Model, graph: onnx.GraphProto, node: onnx.NodeProto
) -> tuple[np.ndarray, str] | None:
    """(constant added to the layer's output, graph output) when the layer's output reaches a
    graph output through constant Adds, a last-axis Softmax / LogSoftmax and reshapes only."""
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for name in n.input:
            readers.setdefault(name, []).append(n)
    inits = {t.name: t for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    offset = np.zeros(1)
    current = node.output[0]
    while current not in outputs:
        nexts = readers.get(current, [])
        if len(nexts) != 1 or len(nexts[0].output) != 1:
            return None
        step = nexts[0]
        if step.op_type == "Add":
            other = [i for i in step.input if i != current]
            if len(other) != 1 or other[0] not in inits:
                return None
            offset = offset + read_array(inits[other[0]], model.base_dir).reshape(-1)
        elif step.op_type in ("Softmax", "LogSoftmax"):
            if _attr(step, "axis", -1) not in (-1, 1):
                return None
        elif step.op_type not in _PASS_THROUGH:
            return None
        current = step.output[0]
    return offset.astype(np.float64), current


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    for a in node.attribute:
        if a.name == name:
            return int(helper.get_attribute_value(a))
    return default


def _constants(graph: onnx.GraphProto) -> set[str]:
    """Names whose values do not depend on the graph inputs (initializers, Constant nodes and
    what is computed from them alone)."""
    known = {t.name for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" or (
            node.input and all(not i or i in known for i in node.input)
        ):
            known.update(o for o in node.output if o)
    return known
