"""Decide node by node which nodes compute in half precision, then rewrite the graphs once.

`plan` walks the main graph and every subgraph (outer scope first, nodes in order) and gives
each float32 value a precision: half when its producer computes in half, float32 otherwise.
`rewrite` then renames node inputs to the version of each value they need, creating at most one
Cast per value and direction in the graph that owns the value (so a weight's Cast is folded
by onnxruntime at load and shared by every subgraph), and keeps graph interfaces stable:
model inputs/outputs keep their names (and float32 with `keep_io_types`), subgraph inputs and
outputs stay float32, so If/Loop/Scan nodes and their outer-scope references stay valid.
"""

from __future__ import annotations

import fnmatch
from collections import ChainMap
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import onnx
from onnx import helper

from mcompress.graph import subgraphs
from mcompress.passes.fp16.ops import (
    ATTRIBUTE_TYPED_OPS,
    CONTROL_FLOW_OPS,
    FIXED_TYPE_OPS,
    FLOAT,
    NEUTRAL_OPS,
    TYPE_AGNOSTIC_OPS,
    converted_io,
    exact_inputs,
    half_kernel_on_cpu,
    op_info,
    output_types,
    schema_types,
)

_DEFAULT_DOMAINS = ("", "ai.onnx")


@dataclass
class Flag:
    """Why the auto analysis says a tensor must stay float32."""

    reason: str  # "overflow" or "precision"
    max_abs: float
    rel_error: float


@dataclass
class Settings:
    """What the planner needs from the pass config and the analyses before it."""

    half_type: int
    compute: str  # "cpu" | "all" | "none"
    keep_io_types: bool
    block_ops: frozenset[str]
    block_nodes: tuple[str, ...]
    opset: int
    ir_version: int
    weight_in_range: dict[tuple[int, str], bool]
    flags: dict[tuple[int, str], Flag] | None = None  # None: no auto analysis ran
    analysed: set[tuple[int, str]] = field(default_factory=set)


@dataclass(eq=False, slots=True)
class Val:
    """A float (or other) value in one graph's scope, and the precision it will have."""

    name: str
    elem: int
    gidx: int
    producer: tuple[int, int] | None = None  # (graph index, node index)
    weight: onnx.TensorProto | None = None
    is_input: bool = False
    half: bool = False
    int_derived: bool = False
    fixed_half: bool | None = None  # precision the original name must keep denoting
    reads: set[str] = field(default_factory=set)  # weights: "half" / "full" / "exact"
    names: dict[bool, str] = field(default_factory=dict)

    @property
    def key(self) -> tuple[int, str]:
        return (self.gidx, self.name)


@dataclass(eq=False, slots=True)
class Decision:
    """The precision chosen for one node, and which inputs/outputs follow it."""

    node: onnx.NodeProto
    gidx: int
    index: int
    half: bool
    reason: str = ""
    inputs: list[Val | None] = field(default_factory=list)
    needs: list[bool | None] = field(default_factory=list)  # per input: half / float32 / any
    conv_in: list[bool] = field(default_factory=list)  # inputs whose type follows the node
    exact_in: list[bool] = field(default_factory=list)  # inputs whose float32 value must stay
    half_outputs: list[bool] = field(default_factory=list)
    float_node: bool = False  # it has float32 inputs or outputs the pass could convert
    flag: tuple[str, Flag] | None = None

    @property
    def label(self) -> str:
        first = self.node.output[0] if self.node.output else str(self.index)
        return self.node.name or f"{self.node.op_type}:{first}"


@dataclass
class GraphState:
    graph: onnx.GraphProto
    gidx: int
    is_main: bool
    vals: dict[str, Val] = field(default_factory=dict)  # values this graph defines
    output_vals: list[Val | None] = field(default_factory=list)


class Plan:
    """The result of planning: every node's decision and every value's precision."""

    def __init__(self, proto: onnx.ModelProto, settings: Settings) -> None:
        self.s = settings
        self.graphs: list[GraphState] = []
        self.decisions: list[Decision] = []
        self.weights: list[Val] = []
        self.float_values: dict[int, list[str]] = {}
        self.main_outputs: dict[str, Val] = {}
        self._plan_graph(proto.graph, ChainMap(), is_main=True)

    def _plan_graph(self, graph: onnx.GraphProto, scope: ChainMap[str, Val], is_main: bool) -> None:
        gidx = len(self.graphs)
        self.graphs.append(GraphState(graph, gidx, is_main))
        local = scope.new_child()
        declared = _declared_types(graph)
        floats = self.float_values[gidx] = []
        for vi in graph.input:
            elem = vi.type.tensor_type.elem_type if vi.type.HasField("tensor_type") else 0
            half = is_main and elem == FLOAT and not self.s.keep_io_types
            local[vi.name] = Val(vi.name, elem, gidx, is_input=True, half=half)
        for tensor in graph.initializer:
            overridable = tensor.name in local.maps[0] and self.s.ir_version >= 4
            val = Val(tensor.name, tensor.data_type, gidx, weight=tensor, is_input=overridable)
            local[tensor.name] = val
            if tensor.data_type == FLOAT:
                self.weights.append(val)
        for sparse in graph.sparse_initializer:  # read as float32 constants, never converted
            local[sparse.values.name] = Val(sparse.values.name, sparse.values.data_type, gidx)
        for index, node in enumerate(graph.node):
            ins = [_lookup(local, name, gidx) if name else None for name in node.input]
            if subgraphs(node):
                decision, outs = self._control_flow(node, gidx, index, ins, local, declared)
            else:
                decision, outs = self._decide(node, gidx, index, ins, declared)
            self.decisions.append(decision)
            for i, read in enumerate(ins):
                if read is not None and read.weight is not None and read.elem == FLOAT:
                    kind = _read_kind(decision, i)
                    if kind:
                        read.reads.add(kind)
            for out in outs:
                out.producer = (gidx, index)
                local[out.name] = out
                if out.elem == FLOAT:
                    floats.append(out.name)
        self.graphs[gidx].vals = dict(local.maps[0])
        self._plan_outputs(self.graphs[gidx], local)

    def _plan_outputs(self, state: GraphState, local: ChainMap[str, Val]) -> None:
        for vi in state.graph.output:
            val = local.get(vi.name)
            state.output_vals.append(val)
            if val is None or val.elem != FLOAT:
                continue
            if val.weight is not None:
                val.reads.add("exact")
            if state.is_main:
                self.main_outputs[vi.name] = val
                if val.producer is not None:
                    val.fixed_half = not self.s.keep_io_types

    def _control_flow(
        self,
        node: onnx.NodeProto,
        gidx: int,
        index: int,
        ins: list[Val | None],
        local: ChainMap[str, Val],
        declared: dict[str, int],
    ) -> tuple[Decision, list[Val]]:
        """Nodes with bodies (If/Loop/Scan...) keep float32 interfaces; each body is planned as a
        graph of its own, seeing the outer scope."""
        first = len(self.graphs)
        for body in subgraphs(node):
            self._plan_graph(body, local, is_main=False)
        in_elems = [v.elem if v is not None else 0 for v in ins]
        if node.op_type in CONTROL_FLOW_OPS and node.domain in _DEFAULT_DOMAINS:
            body_outputs = self.graphs[first].output_vals  # If: then_branch; Loop/Scan: body
            elems = [v.elem if v is not None else 0 for v in body_outputs]
            elems = elems[1 if node.op_type == "Loop" else 0 :]  # a Loop body also returns cond
        else:
            info = op_info(node.op_type, node.domain, self.s.opset)
            elems = output_types(node, info, in_elems, declared)
        outs = [Val(name, elem, gidx) for name, elem in zip(node.output, elems, strict=False)]
        needs: list[bool | None] = [False if e == FLOAT else None for e in in_elems]
        decision = Decision(node, gidx, index, False, "control_flow", ins, needs)
        decision.half_outputs = [False] * len(node.output)
        return decision, [v for v in outs if v.name]

    def _decide(
        self,
        node: onnx.NodeProto,
        gidx: int,
        index: int,
        ins: list[Val | None],
        declared: dict[str, int],
    ) -> tuple[Decision, list[Val]]:
        default = node.domain in _DEFAULT_DOMAINS
        info = op_info(node.op_type, node.domain, self.s.opset) if default else None
        in_elems = tuple(v.elem if v is not None else 0 for v in ins)
        out_elems, conv_in, conv_out, exact_in = self._types(node, info, in_elems, declared)
        outs = [Val(name, elem, gidx) for name, elem in zip(node.output, out_elems, strict=True)]
        decision = Decision(node, gidx, index, False, inputs=ins)
        decision.half_outputs = [False] * len(node.output)
        if default and node.op_type == "Cast":
            self._decide_cast(decision, outs)
            return decision, [v for v in outs if v.name]
        decision.conv_in = conv_in
        decision.exact_in = exact_in
        agnostic = default and node.op_type in TYPE_AGNOSTIC_OPS
        decision.needs = [None if v is None or v.elem != FLOAT or agnostic else False for v in ins]
        decision.float_node = not agnostic and (
            any(conv_in) or any(conv_out) or FLOAT in in_elems or FLOAT in out_elems
        )
        if not decision.float_node:
            return decision, [v for v in outs if v.name]
        acts = [v for v, c in zip(ins, conv_in, strict=True) if c and v and v.weight is None]
        tainted = bool(acts) and all(v.int_derived for v in acts)
        for val in outs:
            val.int_derived = tainted or (default and node.op_type in FIXED_TYPE_OPS)
        reason = self._keep_reason(node, info, ins, conv_in, conv_out, acts, tainted)
        if not reason:
            reason = self._auto_reason(decision, ins, conv_in, outs, conv_out)
        if reason:
            decision.reason = reason
            return decision, [v for v in outs if v.name]
        decision.half = True
        decision.needs = [
            True if c else need for c, need in zip(conv_in, decision.needs, strict=True)
        ]
        decision.half_outputs = list(conv_out)
        for val, c in zip(outs, conv_out, strict=True):
            val.half = c
        return decision, [v for v in outs if v.name]

    def _types(
        self, node: onnx.NodeProto, info: Any, in_elems: tuple[int, ...], declared: dict[str, int]
    ) -> tuple[list[int], list[bool], list[bool], list[bool]]:
        """Output types, converted inputs/outputs and exact inputs of `node`."""
        if info is not None and node.op_type not in ATTRIBUTE_TYPED_OPS:
            opset, half = self.s.opset, self.s.half_type
            out, conv_in, conv_out, exact = schema_types(
                node.op_type, opset, half, in_elems, len(node.output)
            )
            elems = [e or declared.get(n, 0) for e, n in zip(out, node.output, strict=True)]
            return elems, list(conv_in), list(conv_out), list(exact)
        elems = output_types(node, info, list(in_elems), declared)
        conv_in_list, conv_out_list = converted_io(
            node, info, list(in_elems), elems, self.s.half_type
        )
        return elems, conv_in_list, conv_out_list, exact_inputs(node, info, list(in_elems))

    def _decide_cast(self, decision: Decision, outs: list[Val]) -> None:
        """Cast reads whichever version of its input exists; a Cast to float32 of a half value
        becomes a Cast to half (exact, and no Cast pair)."""
        decision.needs = [None] * len(decision.node.input)
        src = decision.inputs[0] if decision.inputs else None
        out = outs[0] if outs else None
        if src is None or out is None or out.elem != FLOAT:
            return
        decision.float_node = src.elem == FLOAT
        if src.elem not in (FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE):
            out.int_derived = True
            return
        out.int_derived = src.int_derived
        if src.elem == FLOAT and src.half:
            decision.half = True
            decision.half_outputs = [True]
            out.half = True

    def _keep_reason(
        self,
        node: onnx.NodeProto,
        info: Any,
        ins: list[Val | None],
        conv_in: list[bool],
        conv_out: list[bool],
        acts: list[Val],
        tainted: bool,
    ) -> str:
        """Why `node` stays float32 before looking at activations ('' when it may go half)."""
        s = self.s
        if info is None:
            return "custom_domain" if node.domain not in _DEFAULT_DOMAINS else "unknown_op"
        if node.op_type in FIXED_TYPE_OPS:
            return "fixed_output_type"
        if not any(conv_in) and not any(conv_out):
            return "no_half_type"
        if node.op_type in s.block_ops:
            return "blocked_op"
        if node.name and any(fnmatch.fnmatchcase(node.name, p) for p in s.block_nodes):
            return "blocked_node"
        if any(v is not None and v.elem == 0 for v in ins):
            return "unknown_input_type"
        if tainted:
            return "shape_computation"
        for v, c in zip(ins, conv_in, strict=True):
            if c and v is not None and v.weight is not None and not s.weight_in_range[v.key]:
                return "weight_out_of_range"
        if s.compute == "none":
            return "storage_only"
        if s.compute == "cpu" and not half_kernel_on_cpu(node.op_type, s.opset, s.half_type):
            return "no_cpu_kernel"
        follows = s.compute == "cpu" or node.op_type in NEUTRAL_OPS
        if follows and not _inputs_mostly_half(ins, conv_in, acts, s.weight_in_range):
            return "inputs_float32"
        return ""

    def _auto_reason(
        self,
        decision: Decision,
        ins: list[Val | None],
        conv_in: list[bool],
        outs: list[Val],
        conv_out: list[bool],
    ) -> str:
        """Keep the node float32 when a tensor it reads or writes overflows or loses precision."""
        flags = self.s.flags
        if flags is None:
            return ""
        tensors = [v for v, c in zip(ins, conv_in, strict=True) if c and v is not None]
        tensors = [v for v in tensors if v.weight is None and not v.half]
        tensors += [v for v, c in zip(outs, conv_out, strict=True) if c and v.name]
        for val in tensors:
            flag = flags.get(val.key)
            if flag is not None:
                decision.flag = (val.name, flag)
                return flag.reason
        if any(val.key not in self.s.analysed for val in tensors):
            return "not_analysed"
        return ""

    def needs_analysis(self) -> bool:
        """True when some node would compute in half on activations (auto has work to do)."""
        for d in self.decisions:
            if not d.half:
                continue
            if d.node.op_type not in NEUTRAL_OPS:
                return True
            for v, need in zip(d.inputs, d.needs, strict=True):
                if need and v is not None and v.weight is None and not v.half:
                    return True
        return False

    def float_decisions(self) -> Iterator[Decision]:
        """Decisions of nodes that have float32 tensors the pass could convert."""
        return (d for d in self.decisions if d.float_node)


def _lookup(scope: ChainMap[str, Val], name: str, gidx: int) -> Val:
    """The value `name` refers to; an unresolvable name gets an unknown type (keeps float32)."""
    found = scope.get(name)
    return found if found is not None else Val(name, 0, gidx)


def _read_kind(decision: Decision, index: int) -> str:
    """How a node reads a weight: 'half', 'full' (a rounded copy is fine) or 'exact'."""
    need = decision.needs[index]
    op = decision.node.op_type
    if need is None:
        return "exact" if op == "Cast" else ""
    if decision.reason == "control_flow" or decision.node.domain not in _DEFAULT_DOMAINS:
        return "full"
    if decision.reason == "shape_computation" or decision.exact_in[index]:
        return "exact"
    return "half" if need else "full"


def _inputs_mostly_half(
    ins: list[Val | None], conv_in: list[bool], acts: list[Val], in_range: dict[Any, bool]
) -> bool:
    """A cheap op computes in half only when that saves Casts: most of its inputs are half."""
    if acts:
        return sum(v.half for v in acts) * 2 > len(acts)
    # Only weights as float inputs: worth it for a lookup such as Gather(embedding, ids), where
    # the table then stays half in memory; a weight-only node is folded at load anyway.
    runtime = any(v is not None and v.weight is None for v in ins)
    weights = [v for v, c in zip(ins, conv_in, strict=True) if c and v is not None]
    return runtime and all(v.weight is not None and in_range[v.key] for v in weights)


def _declared_types(graph: onnx.GraphProto) -> dict[str, int]:
    declared = {}
    for vi in (*graph.value_info, *graph.output):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            declared[vi.name] = vi.type.tensor_type.elem_type
    return declared


def make_cast(src: str, dst: str, to: int) -> onnx.NodeProto:
    """A Cast node with no name (names only cost bytes; onnxruntime does not need them)."""
    return helper.make_node("Cast", [src], [dst], to=to)
