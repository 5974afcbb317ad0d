"""Weight-only int8 storage, written by mcompress where onnxruntime.quantization falls short.

onnxruntime's quantizers skip weights they cannot reach or do not speed up: initializers of an
outer graph read inside If/Loop/Scan bodies ("Expected ... to be an initializer"), Gemm and LSTM
weights in dynamic mode, Conv weights whose ConvInteger kernel is slower than the float Conv
on CPU (measured: benchmarks/README.md), and per-row embedding tables. Each such weight
becomes int8 (or uint8 with a zero point) plus float scales:

- dense: `Cast -> [Sub zero point] -> Mul scale` rebuilds the float tensor under its original
  name, so every consumer in every subgraph keeps working. onnxruntime constant-folds these
  nodes when it creates a session, so inference runs at float speed. (A DequantizeLinear
  would not be folded: onnxruntime keeps it for QDQ fusion and dequantizes on every run.)
- gather rows: an embedding table read only by `Gather(axis=0)` is gathered as int8 and only
  the gathered rows are scaled (per-row scales), so the table stays int8 in memory too.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnx.version_converter
from onnx import TensorProto, helper

from mcompress.graph import FreshNames, iter_graphs, node_excluded
from mcompress.model_io import Model, add_initializer, read_array, remove_initializers
from mcompress.passes.quantize.math import Quantized, error_stats, quantize

# Smaller tensors stay float: their scales and nodes would cost about what int8 saves.
MIN_ELEMENTS = 64
# A float tensor that reaches its layers through ops that only move values (sliced, split,
# transposed, concatenated...) is stored int8 from this size (4 KB) up. Scales, biases and
# other constants read by arithmetic stay float.
MOVED_MIN_ELEMENTS = 1024
MOVING_OPS = {
    "Slice", "Split", "Transpose", "Reshape", "Concat", "Squeeze", "Unsqueeze", "Flatten",
    "Identity", "Gather", "Expand", "Tile",
}  # fmt: skip


def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def weight_axis(node: onnx.NodeProto, slot: int, dims: list[int]) -> int | None:
    """The output-channel axis of the weight read by `node` at input `slot`; None: not a weight.

    Only these (op, input) pairs are weights; biases, norms and other constants stay float.
    A Gather table is an embedding only with rows of several values (so per-row scale tables,
    shaped [rows, 1], are never quantized again).
    """
    rank = len(dims)
    op = node.op_type
    if node.domain not in ("", "ai.onnx"):
        return None
    if op == "Conv" and slot == 1:
        return 0
    if op == "ConvTranspose" and slot == 1:
        return 1 if _attr(node, "group", 1) == 1 else 0
    if op == "Gemm" and slot == 1:
        return 0 if _attr(node, "transB", 0) else 1
    if op == "MatMul" and slot == 1:
        return rank - 1
    if op == "Gather" and slot == 0:
        return 0 if rank >= 2 and dims[-1] > 1 else None
    if op in ("LSTM", "GRU", "RNN") and slot in (1, 2):
        return 1
    return None


@dataclass
class Use:
    """One node input that reads a weight."""

    node: onnx.NodeProto
    slot: int
    in_main: bool


@dataclass
class Target:
    """A float initializer to quantize and every node input that reads it."""

    tensor: onnx.TensorProto
    uses: list[Use] = field(default_factory=list)
    axis: int | None = None
    # Read only through MOVING_OPS (e.g. Slice -> LSTM): scales along the longest axis but
    # the last (the channels of stacked [directions, 4 * hidden, inputs] LSTM weights), one
    # scale for rank 1; kept float when it holds inf or NaN.
    moved: bool = False

    @property
    def name(self) -> str:
        return self.tensor.name

    @property
    def gathered_rows(self) -> bool:
        """Read only as a Gather(axis=0) table of rank >= 2: quantize rows, gather int8."""
        return len(self.tensor.dims) >= 2 and all(
            u.node.op_type == "Gather" and u.slot == 0 and _attr(u.node, "axis", 0) == 0
            for u in self.uses
        )


def find_targets(proto: onnx.ModelProto, exclude: Iterable[str]) -> list[Target]:
    """Float32 initializers (any graph) read as a weight by a node that is not excluded.

    A tensor also read by an excluded node stays float, as do tensors that are graph outputs.
    """
    patterns = tuple(exclude)
    owners: dict[str, onnx.TensorProto] = {}
    outputs: set[str] = set()
    for graph in iter_graphs(proto.graph):
        outputs.update(o.name for o in graph.output)
        for tensor in graph.initializer:
            owners.setdefault(tensor.name, tensor)
    found: dict[str, Target] = {}
    blocked: set[str] = set(outputs)
    for depth, graph in enumerate(iter_graphs(proto.graph)):
        for node in graph.node:
            for slot, name in enumerate(node.input):
                if name not in owners:
                    continue
                tensor = owners[name]
                if node_excluded(node, patterns) or _named(name, patterns):
                    blocked.add(name)
                    continue
                target = found.setdefault(name, Target(tensor))
                target.uses.append(Use(node, slot, depth == 0))
                axis = weight_axis(node, slot, list(tensor.dims))
                if axis is not None and target.axis is None:
                    target.axis = axis
    targets = []
    for name, t in found.items():
        if name in blocked or t.tensor.data_type != TensorProto.FLOAT:
            continue
        size = int(np.prod(t.tensor.dims, dtype=np.int64))
        if t.axis is None and size >= MOVED_MIN_ELEMENTS and _only_moved(t):
            t.moved = True
            leading = list(t.tensor.dims)[:-1]
            t.axis = int(np.argmax(leading)) if leading else None
        if (t.axis is not None or t.moved) and size >= MIN_ELEMENTS:
            targets.append(t)
    return targets


def _named(weight: str, patterns: tuple[str, ...]) -> bool:
    """Whether an `exclude` pattern names this weight (as prune and cluster's do)."""
    return any(fnmatch.fnmatchcase(weight, p) for p in patterns)


def _only_moved(target: Target) -> bool:
    """Every reader only moves values (Gather tables of one column are per-row scales)."""
    return all(
        u.node.op_type in MOVING_OPS
        and u.node.domain in ("", "ai.onnx")
        and not (u.node.op_type == "Gather" and target.tensor.dims[-1] == 1)
        for u in target.uses
    )


@dataclass
class _Plan:
    """A quantized target and the names of the initializers that will hold it."""

    q: Quantized
    gathered_rows: bool
    values: str
    scale: str
    zero_point: str | None


def rewrite_all(
    proto: onnx.ModelProto,
    targets: list[Target],
    base_dir: Any,
    *,
    per_channel: bool,
    symmetric: bool,
) -> list[dict[str, Any]]:
    """Store every target as int8 plus dequantizing nodes; return per-tensor error stats.

    All tensors are quantized first; graphs are then edited innermost first, by value names,
    because rebuilding a graph's node list copies its nodes and with them their subgraphs.
    """
    names = FreshNames(proto)
    plans: dict[str, _Plan] = {}
    rows: list[dict[str, Any]] = []
    for target in targets:
        weight = np.asarray(read_array(target.tensor, base_dir), dtype=np.float32)
        if target.moved and not np.isfinite(weight).all():
            continue
        q = quantize(weight, axis=target.axis if per_channel else None, symmetric=symmetric)
        mse, sqnr = error_stats(weight, q.dequantize())
        name = target.name
        plans[name] = _Plan(
            q=q,
            gathered_rows=target.gathered_rows,
            values=names.fresh(f"{name}_quantized"),
            scale=names.fresh(f"{name}_scale"),
            zero_point=None if q.zero_point is None else names.fresh(f"{name}_zero_point"),
        )
        rows.append(
            {
                "name": name,
                "shape": list(weight.shape),
                "bits": 8,
                "method": "weight-only gather" if target.gathered_rows else "weight-only",
                "mse": mse,
                "sqnr_db": sqnr,
                "bytes_before": int(weight.nbytes),
                "bytes_after": q.nbytes,
            }
        )
    for graph in reversed(list(iter_graphs(proto.graph))):
        _edit_graph(graph, plans, names)
    return rows


def _edit_graph(graph: onnx.GraphProto, plans: dict[str, _Plan], names: FreshNames) -> None:
    owned = [t.name for t in graph.initializer if t.name in plans]
    prepend: list[onnx.NodeProto] = []
    for name in owned:
        plan = plans[name]
        _add_initializers(graph, plan)
        if not plan.gathered_rows:
            prepend.extend(_dense_nodes(name, plan, names))
    body: list[onnx.NodeProto] = []
    replaced = False
    for node in graph.node:
        table = node.input[0] if node.op_type == "Gather" and node.input else ""
        if table in plans and plans[table].gathered_rows:
            body.extend(_gather_nodes(node, plans[table], names))
            replaced = True
        else:
            body.append(node)
    if prepend or replaced:
        del graph.node[:]
        graph.node.extend([*prepend, *body])
    remove_initializers(graph, set(owned))


def _compact(array: np.ndarray) -> np.ndarray:
    """A per-tensor scale as a scalar; a per-channel one keeps its broadcasting shape."""
    return array.reshape(()) if array.size == 1 else array


def _add_initializers(graph: onnx.GraphProto, plan: _Plan) -> None:
    add_initializer(graph, plan.q.values, plan.values)
    add_initializer(graph, _compact(plan.q.scale), plan.scale)
    if plan.zero_point is not None and plan.q.zero_point is not None:
        add_initializer(graph, _compact(plan.q.zero_point).astype(np.float32), plan.zero_point)


def _dense_nodes(name: str, plan: _Plan, names: FreshNames) -> list[onnx.NodeProto]:
    """Cast -> [Sub zero point] -> Mul scale, producing the original name (folded at load)."""
    current = names.fresh(f"{name}_cast")
    nodes = [helper.make_node("Cast", [plan.values], [current], to=1)]
    if plan.zero_point is not None:
        centred = names.fresh(f"{name}_centred")
        nodes.append(helper.make_node("Sub", [current, plan.zero_point], [centred]))
        current = centred
    nodes.append(helper.make_node("Mul", [current, plan.scale], [name]))
    return nodes


def _gather_nodes(node: onnx.NodeProto, plan: _Plan, names: FreshNames) -> list[onnx.NodeProto]:
    """Gather int8 rows, then scale only those rows: the table stays int8 at run time too."""
    out = node.output[0]
    indices = node.input[1]
    per_row = plan.q.scale.size > 1
    nodes: list[onnx.NodeProto] = []

    def add(op: str, inputs: list[str], output: str | None = None, **attrs: Any) -> str:
        result = output or names.fresh(f"{out}_{op.lower()}")
        nodes.append(helper.make_node(op, inputs, [result], **attrs))
        return result

    current = add("Cast", [add("Gather", [plan.values, indices], axis=0)], to=1)
    if plan.zero_point is not None:
        zp = add("Gather", [plan.zero_point, indices], axis=0) if per_row else plan.zero_point
        current = add("Sub", [current, zp])
    scale = add("Gather", [plan.scale, indices], axis=0) if per_row else plan.scale
    add("Mul", [current, scale], output=out)
    nodes[0].name = node.name
    return nodes


# onnxruntime has no CPU kernel for Mul or Sub before opset 7 (their broadcast attribute era).
MIN_REWRITE_OPSET = 7


def raise_opset_for_rewrite(model: Model) -> dict[str, int] | None:
    """Convert a model older than `MIN_REWRITE_OPSET` to that opset (onnx's version converter
    rewrites the old broadcast attributes), so the Cast/Mul rebuilding int8 weights runs in
    onnxruntime; {"from", "to"} when it did."""
    opset = model.opset()
    if opset >= MIN_REWRITE_OPSET:
        return None
    graph = model.proto.graph
    listed = {i.name for i in graph.input}
    # The converter looks initializers up among the graph inputs (as IR < 4 requires).
    added = [t for t in graph.initializer if t.name not in listed]
    graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, t.dims) for t in added)
    converted = onnx.version_converter.convert_version(model.proto, MIN_REWRITE_OPSET)
    names = {t.name for t in added}
    kept = [i for i in converted.graph.input if i.name not in names]
    del converted.graph.input[:]
    converted.graph.input.extend(kept)
    model.proto.CopyFrom(converted)
    return {"from": opset, "to": MIN_REWRITE_OPSET}
