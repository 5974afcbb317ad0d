"""The graph layer every pass shares: graphs nested in subgraphs, the one scheme for naming
the values and nodes a pass adds (`FreshNames`), and which nodes an `exclude` list names."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator

import onnx


def node_excluded(node: onnx.NodeProto, patterns: tuple[str, ...] | list[str]) -> bool:
    """True when a node's name or op type matches one of the `exclude` patterns (globs)."""
    return any(node.op_type == p or fnmatch.fnmatchcase(node.name, p) for p in patterns)


class FreshNames:
    """Value and node names unique across the whole model, for nodes and tensors a pass adds."""

    def __init__(self, proto: onnx.ModelProto) -> None:
        self.taken: set[str] = set()
        for graph in iter_graphs(proto.graph):
            self.taken.update(t.name for t in graph.initializer)
            self.taken.update(v.name for v in (*graph.input, *graph.output, *graph.value_info))
            for node in graph.node:
                self.taken.update(node.input)
                self.taken.update(node.output)
                if node.name:
                    self.taken.add(node.name)

    def fresh(self, base: str) -> str:
        """`base`, or `base_1`, `base_2`, ... : the first not yet used."""
        name, i = base, 0
        while name in self.taken:
            i += 1
            name = f"{base}_{i}"
        self.taken.add(name)
        return name


def iter_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """`graph` and all graphs nested in its nodes' attributes, depth first."""
    yield graph
    for node in graph.node:
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
