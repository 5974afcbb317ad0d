"""Apply a fp16 plan to the model: rename inputs to the version each node needs, add the Casts.

Every float32 value has a primary version (what its producer makes) and, on demand, one other
version made by a single Cast placed right after the producer in the graph that owns the value
(weights: at the top of their graph, where onnxruntime folds the Cast at load). Original names
keep their meaning where callers depend on them: model inputs/outputs, and weights read in
float32 (the half initializer gets a `_fp16` name and a Cast recreates the float32 name).
"""

from __future__ import annotations

import onnx

from mcompress.graph import FreshNames, input_reads, iter_graphs, names_used, producers
from mcompress.passes.fp16.ops import FLOAT
from mcompress.passes.fp16.plan import Decision, GraphState, Plan, Val, make_cast

_DEFAULT = ("", "ai.onnx")
_TRANSPOSE = {("Transpose", ""), ("Transpose", "ai.onnx")}
_SUFFIX: dict[int, str] = {onnx.TensorProto.FLOAT16: "_fp16", onnx.TensorProto.BFLOAT16: "_bf16"}


class Rewriter:
    """Edits the planned proto in place; `casts` is the net number of Cast nodes added."""

    def __init__(self, proto: onnx.ModelProto, plan: Plan) -> None:
        self.proto = proto
        self.plan = plan
        self.half_type = plan.s.half_type
        self.names = FreshNames(proto)
        self.added: dict[int, dict[int, list[onnx.NodeProto]]] = {}
        self.by_producer = {(d.gidx, d.index): d for d in plan.decisions}
        self.bypassed: set[tuple[int, int]] = set()
        self.casts = 0

    def apply(self) -> None:
        """Rewrite all graphs; node lists are rebuilt last, innermost graph first."""
        for decision in self.plan.decisions:
            self._rewrite_node(decision)
        for state in self.plan.graphs:
            self._rewrite_interface(state)
        dead = self._dead_casts()
        for state in reversed(self.plan.graphs):
            self._rebuild(state, dead.get(state.gidx, set()))
        for graph in iter_graphs(self.proto.graph):  # the live graphs, after the rebuilds
            _cast_before_transpose(graph, self.names)

    # ---------------------------------------------------------------- names and casts

    def name_for(self, val: Val, half: bool) -> str:
        """The name of `val`'s `half` (or float32) version, creating its Cast once."""
        if not val.names:
            self._init_names(val)
        if half not in val.names:
            val.names[half] = self._add_cast(val, half, None)
        return val.names[half]

    def _init_names(self, val: Val) -> None:
        fixed = val.fixed_half
        if fixed is None or fixed == val.half:
            val.names[val.half] = val.name
            return
        suffix = _SUFFIX[self.half_type] if val.half else "_fp32"
        primary = self.names.fresh(val.name + suffix)
        val.names[val.half] = primary
        if val.weight is not None:
            val.weight.name = primary
        elif val.producer is not None:
            node = self.by_producer[val.producer].node
            for j, name in enumerate(node.output):
                if name == val.name:
                    node.output[j] = primary
        val.names[fixed] = self._add_cast(val, fixed, val.name)

    def _add_cast(self, val: Val, half: bool, target: str | None) -> str:
        """Make `val`'s other version (named `target`, else a fresh name) with one Cast."""
        source = val.names[val.half]
        to = self.half_type if half else FLOAT
        where = -1
        gidx = val.gidx
        if val.producer is not None:
            gidx, where = val.producer
            producer = self.by_producer[val.producer]
            if producer.node.op_type == "Cast" and producer.node.domain in ("", "ai.onnx"):
                # Cast from the Cast's own source: no Cast pair (int -> float16 directly).
                source = producer.node.input[0]
                self.bypassed.add(val.producer)
                origin = producer.inputs[0]
                if target is None and origin is not None and origin.elem == to:
                    return source
        suffix = _SUFFIX[self.half_type] if half else "_fp32"
        name = target or self.names.fresh(val.name + suffix)
        self.added.setdefault(gidx, {}).setdefault(where, []).append(make_cast(source, name, to))
        self.casts += 1
        return name

    # ---------------------------------------------------------------- edits

    def _rewrite_node(self, decision: Decision) -> None:
        node = decision.node
        for i, val in enumerate(decision.inputs):
            if val is None or val.elem != FLOAT:
                continue
            need = decision.needs[i]
            name = self.name_for(val, val.half if need is None else need)
            if node.input[i] != name:
                node.input[i] = name
        if decision.half and node.op_type == "Cast":
            for attr in node.attribute:
                if attr.name == "to":
                    attr.i = self.half_type

    def _rewrite_interface(self, state: GraphState) -> None:
        graph = state.graph
        for vi, val in zip(graph.output, state.output_vals, strict=True):
            if val is None or val.elem != FLOAT:
                continue
            if state.is_main:
                half = val.half if val.fixed_half is None else val.fixed_half
            else:
                half = False
            vi.name = self.name_for(val, half)
            if half:
                vi.type.tensor_type.elem_type = self.half_type
        for vi in graph.input:  # model inputs; with IR < 4 also every initializer
            val = state.vals.get(vi.name)
            if val is not None and val.elem == FLOAT and val.half:
                vi.name = self.name_for(val, True)
                vi.type.tensor_type.elem_type = self.half_type
        for vi in graph.value_info:
            val = state.vals.get(vi.name)
            half = val is not None and val.elem == FLOAT and val.half
            if half and val is not None and self.name_for(val, True) == vi.name:
                vi.type.tensor_type.elem_type = self.half_type

    def _dead_casts(self) -> dict[int, set[int]]:
        """Original Casts whose every reader now reads a Cast from their source instead."""
        if not self.bypassed:
            return {}
        used = names_used(self.proto.graph)
        for casts in self.added.values():
            for nodes in casts.values():
                for node in nodes:
                    used.update(node.input)
        dead: dict[int, set[int]] = {}
        for gidx, index in self.bypassed:
            node = self.by_producer[(gidx, index)].node
            if not any(name in used for name in node.output):
                dead.setdefault(gidx, set()).add(index)
        return dead

    def _rebuild(self, state: GraphState, dead: set[int]) -> None:
        added = self.added.get(state.gidx, {})
        if not added and not dead:
            return
        graph = state.graph
        nodes = list(added.get(-1, []))
        for i, node in enumerate(graph.node):
            if i not in dead:
                nodes.append(node)
            nodes.extend(added.get(i, []))
        self.casts -= len(dead)
        del graph.node[:]
        graph.node.extend(nodes)


def _cast_before_transpose(graph: onnx.GraphProto, names: FreshNames) -> None:
    """Turn `Transpose (half) -> Cast to float32` into `Cast -> Transpose`: same values; the
    half Transpose goes when nothing else reads it.

    onnxruntime crashes (segfault; versions in benchmarks/README.md) creating a session with
    default optimizations when such
    a pair feeds a MatMul whose weight is a Cast, as in a PyTorch TransformerEncoder whose
    embedding stays half: its MatMul-Transpose fusion looks through the Cast.
    """
    made_by = producers(graph)
    outputs = {o.name for o in graph.output}
    before: dict[int, onnx.NodeProto] = {}
    moved: list[onnx.NodeProto] = []
    for index, cast in enumerate(graph.node):
        to = next((a.i for a in cast.attribute if a.name == "to"), None)
        if cast.op_type != "Cast" or cast.domain not in _DEFAULT or to != FLOAT:
            continue
        transpose = made_by.get(cast.input[0])
        if transpose is None or (transpose.op_type, transpose.domain) not in _TRANSPOSE:
            continue
        source = names.fresh(f"{transpose.input[0]}_fp32")
        before[index] = onnx.helper.make_node("Cast", [transpose.input[0]], [source], to=FLOAT)
        cast.op_type = "Transpose"
        del cast.attribute[:]
        cast.attribute.extend(transpose.attribute)
        cast.input[0] = source
        moved.append(transpose)
    if not before:
        return
    readers = input_reads(graph)
    dead = {id(t) for t in moved if not readers[t.output[0]] and t.output[0] not in outputs}
    nodes: list[onnx.NodeProto] = []
    for index, node in enumerate(graph.node):
        if index in before:
            nodes.append(before[index])
        if id(node) not in dead:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
