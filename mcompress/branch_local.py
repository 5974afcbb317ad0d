"""Weights that one `If` branch alone reads are stored inside that branch, together with the
constant nodes that restore them (dequantization, unpacking), so onnxruntime folds them into
the branch's own initializers: onnxruntime runs those faster than weights read from the outer
scope (the shared VAD, whose main graph holds the weights of two `If` branches, became as fast
as `quantize_dynamic`'s output, which writes its transposed LSTM weights into the branches;
figures in benchmarks/README.md).

Only `If` branches receive weights (a branch runs at most once per run); `Loop` and `Scan`
bodies, graph inputs and outputs, and values read by more than one branch stay where they are.
"""

from __future__ import annotations

from collections import Counter

import onnx

from mcompress.graph import names_used, subgraphs


def localize(proto: onnx.ModelProto) -> int:
    """Move branch-only weights and their constant restore nodes into their branch, in every
    graph; returns how many initializers and nodes moved."""
    if proto.ir_version < 4:  # initializers must also be graph inputs: leave such models alone
        return 0
    return _localize(proto.graph, frozenset(i.name for i in proto.graph.input))


def _localize(graph: onnx.GraphProto, inputs: frozenset[str]) -> int:
    moved = 0
    if _branches(graph):
        readers = _Readers(graph, _branches(graph))
        moved += _move_nodes(graph, _branches(graph), readers, inputs)
        # rewriting graph.node copied the If nodes: their branches are found again
        moved += _move_initializers(graph, _branches(graph), readers, inputs)
    for node in graph.node:
        for sub in subgraphs(node):
            moved += _localize(sub, inputs | {i.name for i in sub.input})
    return moved


def _branches(graph: onnx.GraphProto) -> list[onnx.GraphProto]:
    return [b for node in graph.node if node.op_type == "If" for b in subgraphs(node)]


class _Readers:
    """Who reads each value of `graph`: the index of each branch, and how many reads `graph`
    itself makes (its nodes and outputs, and subgraphs that are not `If` branches)."""

    def __init__(self, graph: onnx.GraphProto, branches: list[onnx.GraphProto]) -> None:
        self.branches: dict[str, set[int]] = {}
        self.outer: Counter[str] = Counter(o.name for o in graph.output)
        for index, branch in enumerate(branches):
            for name in names_used(branch):
                self.branches.setdefault(name, set()).add(index)
        for node in graph.node:
            self.outer.update(node.input)
            if node.op_type != "If":
                for sub in subgraphs(node):
                    self.outer.update(names_used(sub))

    def owner(self, names: list[str]) -> int | None:
        """The one branch that alone reads all of `names`, if there is one."""
        if any(self.outer[n] for n in names if n):
            return None
        owners = set().union(*(self.branches.get(n, set()) for n in names if n))
        return owners.pop() if len(owners) == 1 else None

    def moved(self, node: onnx.NodeProto, owner: int) -> None:
        """`node` now lives in branch `owner`: its inputs are read there, not here."""
        self.outer.subtract(node.input)
        for name in node.input:
            self.branches.setdefault(name, set()).add(owner)


def _is_constant(node: onnx.NodeProto, constant: set[str]) -> bool:
    if subgraphs(node):
        return False
    if node.op_type == "Constant":
        return True
    return bool(node.input) and all(name in constant for name in node.input if name)


def _move_nodes(
    graph: onnx.GraphProto,
    branches: list[onnx.GraphProto],
    readers: _Readers,
    inputs: frozenset[str],
) -> int:
    """Move constant nodes (a Constant, or every input an initializer or a constant node's
    output) whose outputs one branch alone reads, last first, so that whole restore chains
    move; their value_info goes with them."""
    constant = {t.name for t in graph.initializer} - inputs
    for node in graph.node:
        if _is_constant(node, constant):
            constant.update(node.output)
    moving: dict[int, list[onnx.NodeProto]] = {}
    for node in reversed(list(graph.node)):
        owner = readers.owner(list(node.output)) if _is_constant(node, constant) else None
        if owner is not None:
            moving.setdefault(owner, []).insert(0, node)
            readers.moved(node, owner)
    moved = {id(node): owner for owner, nodes in moving.items() for node in nodes}
    if not moved:
        return 0
    outputs = {
        name: moved[id(node)] for node in graph.node if id(node) in moved for name in node.output
    }
    for owner, nodes in moving.items():
        branch = branches[owner]
        rest = list(branch.node)
        del branch.node[:]
        branch.node.extend([*nodes, *rest])
        branch.value_info.extend(v for v in graph.value_info if outputs.get(v.name) == owner)
    kept_info = [v for v in graph.value_info if v.name not in outputs]
    kept = [node for node in graph.node if id(node) not in moved]
    del graph.node[:], graph.value_info[:]
    graph.node.extend(kept)
    graph.value_info.extend(kept_info)
    return len(moved)


def _move_initializers(
    graph: onnx.GraphProto,
    branches: list[onnx.GraphProto],
    readers: _Readers,
    inputs: frozenset[str],
) -> int:
    """Move initializers that one branch alone reads (after the node moves) into it."""
    kept, moved = [], 0
    for tensor in graph.initializer:
        owner = None if tensor.name in inputs else readers.owner([tensor.name])
        if owner is None:
            kept.append(tensor)
            continue
        branches[owner].initializer.append(tensor)
        moved += 1
    if moved:
        del graph.initializer[:]
        graph.initializer.extend(kept)
    return moved
