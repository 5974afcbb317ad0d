"""The graph layer every pass shares: graphs nested in subgraphs, who produces each value, which
nodes an `exclude` list names, and the one scheme for naming what a pass adds (`FreshNames`).

An initializer already in the model is named across subgraph scopes by `(graph index, name)`
(`mcompress.weights.Key`, from the same depth-first order as `iter_graphs`).
"""

from __future__ import annotations

import contextlib
import fnmatch
from collections import Counter
from collections.abc import Iterator

import onnx


def node_excluded(node: onnx.NodeProto, patterns: tuple[str, ...] | list[str]) -> bool:
    """True when a node's name or op type matches one of the `exclude` patterns (globs)."""
    return any(node.op_type == p or fnmatch.fnmatchcase(node.name, p) for p in patterns)


# The default-domain ops whose attributes may hold graphs (the ONNX schemas give no other); the
# attributes of every other default-domain node are not read: each read wraps a message, and
# the passes walk the graphs dozens of times (figures in benchmarks/README.md).
CONTROL_FLOW_OPS = frozenset({"If", "Loop", "Scan", "SequenceMap"})


def iter_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """`graph` and all graphs nested in its nodes' attributes, depth first."""
    yield graph
    for node in graph.node:
        if node.domain in ("", "ai.onnx") and node.op_type not in CONTROL_FLOW_OPS:
            continue
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from iter_graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from iter_graphs(sub)


def subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The graphs held directly in a node's attributes."""
    found: list[onnx.GraphProto] = []
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            found.append(attr.g)
        elif attr.type == onnx.AttributeProto.GRAPHS:
            found.extend(attr.graphs)
    return found


def names_used(graph: onnx.GraphProto) -> set[str]:
    """Every value name read by `graph`'s nodes, its nested subgraphs, or its outputs."""
    used = {o.name for o in graph.output}
    for g in iter_graphs(graph):
        for node in g.node:
            used.update(node.input)
        used.update(o.name for o in g.output)
    used.discard("")
    return used


def input_reads(graph: onnx.GraphProto) -> Counter[str]:
    """How many node inputs of `graph` and its nested subgraphs read each value name."""
    return Counter(name for g in iter_graphs(graph) for node in g.node for name in node.input)


def producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    """The node of `graph` (not of its subgraphs) that outputs each value."""
    return {name: node for node in graph.node for name in node.output if name}


def model_names(proto: onnx.ModelProto) -> set[str]:
    """Every value, initializer and node name in the model, subgraphs included."""
    taken: set[str] = set()
    for graph in iter_graphs(proto.graph):
        taken.update(t.name for t in graph.initializer)
        taken.update(s.values.name for s in graph.sparse_initializer)
        taken.update(v.name for v in (*graph.input, *graph.output, *graph.value_info))
        for node in graph.node:
            taken.update(node.input)
            taken.update(node.output)
            if node.name:
                taken.add(node.name)
    taken.discard("")
    return taken


class FreshNames:
    """Names for the values and nodes a pass adds, unique across the whole model.

    `fresh(base)` names one value or node: `base`, else `base_1`, `base_2`, ...
    `scope(prefix)` opens a namespace for a group of names (`<scope>/<part>`): `prefix` plus the
    smallest number that no name in the model uses as `<prefix><n>` or `<prefix><n>/...`.
    """

    def __init__(self, proto: onnx.ModelProto) -> None:
        self.taken = model_names(proto)
        self._scopes: dict[str, set[str]] = {}
        self._next: dict[str, int] = {}

    def fresh(self, base: str) -> str:
        """`base`, or `base_1`, `base_2`, ... : the first not yet used."""
        name, i = base, 0
        while name in self.taken:
            i += 1
            name = f"{base}_{i}"
        self.taken.add(name)
        for prefix, used in self._scopes.items():
            if name.startswith(prefix):
                used.add(name[len(prefix) :].split("/")[0])
        return name

    def scope(self, prefix: str) -> str:
        """`prefix` + the first number no name in the model starts a path with."""
        used = self._scopes.get(prefix)
        if used is None:
            used = {n[len(prefix) :].split("/")[0] for n in self.taken if n.startswith(prefix)}
            self._scopes[prefix] = used
        number = self._next.get(prefix, 0)
        while str(number) in used:
            number += 1
        used.add(str(number))
        self._next[prefix] = number
        return f"{prefix}{number}"


@contextlib.contextmanager
def temporary_node_names(proto: onnx.ModelProto, names: FreshNames, prefix: str) -> Iterator[None]:
    """Give every unnamed node a fresh name starting with `prefix` for the duration of the block
    (tools such as onnxruntime's quantizer select nodes by name); they are unnamed again after,
    wherever they have moved to."""
    for graph in iter_graphs(proto.graph):
        for node in graph.node:
            if not node.name:
                node.name = names.fresh(f"{prefix}{node.op_type}")
    try:
        yield
    finally:
        for graph in iter_graphs(proto.graph):
            for node in graph.node:
                if node.name.startswith(prefix):
                    node.name = ""
