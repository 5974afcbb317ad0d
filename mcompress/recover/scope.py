"""The nodes recovery walks, in order: the main graph's, with each `If` whose branch the
calibration data takes replaced by that branch's nodes, so the layers inside it get statistics
and reconstruction like main-graph layers (the real nodes and initializers: what recovery
writes lands in the branch). An `If` whose calibration batches take both branches is replaced
by both branches' nodes, each guarded by the branch it belongs to: a calibration batch runs
only the nodes of the branches it takes (`Scope.runs`), so each branch's layers get the
statistics of the batches that take it. `mcompress.recover.branches` decides which branches
are taken; `mcompress.recover.bodies` adds the layers of Loop and Scan bodies (`Scope.inner`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx
from onnx import helper

from mcompress.graph import subgraphs

WEIGHTED_OPS = ("Conv", "Gemm", "MatMul")


@dataclass
class Scope:
    """Nodes in execution order, the graphs whose initializers they read, and why layers of
    branches left out are not reached (by node name, or weight name for an unnamed node)."""

    nodes: list[onnx.NodeProto]
    graphs: list[onnx.GraphProto]
    reasons: dict[str, str] = field(default_factory=dict)
    # Weighted nodes of Loop/Scan bodies, each at the position of the node holding it.
    inner: list[tuple[int, onnx.NodeProto]] = field(default_factory=list)
    # Per inner node (by id): a copy of its Loop/Scan that also outputs the node's first input
    # stacked over the iterations, and that output's name.
    probes: dict[int, tuple[onnx.NodeProto, str]] = field(default_factory=dict)
    # Per guarded node (by id): the (If, branch) pairs a batch must take to run it; per If (by
    # id) the branch each calibration batch takes (None: the batch does not reach the If).
    guards: dict[int, tuple[tuple[int, bool], ...]] = field(default_factory=dict)
    conditions: dict[int, list[bool | None]] = field(default_factory=dict)

    def runs(self, node: onnx.NodeProto, batch: int) -> bool:
        """Whether calibration batch number `batch` runs `node` (it takes its branches)."""
        guard = self.guards.get(id(node), ())
        return all(self.conditions[key][batch] is taken for key, taken in guard)

    def guard(
        self, nodes: list[onnx.NodeProto], like: onnx.NodeProto, *more: tuple[int, bool]
    ) -> None:
        """Guard `nodes` as `like` is, and by the (If, branch) pairs `more`."""
        guard = (*self.guards.get(id(like), ()), *more)
        if guard:
            self.guards.update((id(n), guard) for n in nodes)

    def walk(self) -> list[tuple[int, onnx.NodeProto]]:
        """(position, node) for the nodes and the inner nodes, in execution order."""
        return sorted([*enumerate(self.nodes), *self.inner], key=lambda item: item[0])

    def initializers(self) -> dict[str, tuple[onnx.TensorProto, onnx.GraphProto]]:
        """Each initializer the nodes can read, with the graph holding it."""
        return {t.name: (t, g) for g in self.graphs for t in g.initializer}


def main_scope(model_graph: onnx.GraphProto) -> Scope:
    """The main graph alone (no branch inlined)."""
    return Scope(list(model_graph.node), [model_graph])


def weighted_nodes(
    graph: onnx.GraphProto, owner: onnx.NodeProto | None = None
) -> list[tuple[onnx.NodeProto, onnx.NodeProto | None]]:
    """Conv/Gemm/MatMul nodes of `graph` and its bodies, each with the outermost control-flow
    node holding it (`owner`, None in `graph` itself)."""
    found = []
    for node in graph.node:
        if node.op_type in WEIGHTED_OPS and node.domain in ("", "ai.onnx"):
            found.append((node, owner))
        for sub in subgraphs(node):
            found.extend(weighted_nodes(sub, owner or node))
    return found


def layer_name(node: onnx.NodeProto) -> str:
    """How recovery names a weighted node: its name, else its weight's."""
    return node.name or (node.input[1] if len(node.input) > 1 else "")


def branch_of(node: onnx.NodeProto, taken: bool) -> onnx.GraphProto:
    """An `If` node's then (`taken` True) or else branch."""
    wanted = "then_branch" if taken else "else_branch"
    return next(a.g for a in node.attribute if a.name == wanted)


def holds_layers(node: onnx.NodeProto) -> bool:
    """An `If` of the default domain with a weighted node somewhere in its branches."""
    return node.op_type == "If" and node.domain in ("", "ai.onnx") and bool(weighted_nodes_in(node))


def weighted_nodes_in(node: onnx.NodeProto) -> list[onnx.NodeProto]:
    """The weighted nodes in a node's bodies, at any depth."""
    return [n for sub in subgraphs(node) for n, _ in weighted_nodes(sub)]


def inline(scope: Scope, node: onnx.NodeProto, taken: bool) -> str | None:
    """Replace the `If` `node` in `scope` by its taken branch's nodes (plus an Identity per
    output); None when done, else why not (a name in the branch clashes with one outside)."""
    reason = _clash(scope, node, taken)
    if reason:
        return reason
    label = "then" if taken else "else"
    for skipped, _ in weighted_nodes(branch_of(node, not taken)):
        scope.reasons[layer_name(skipped)] = (
            f"in the {'else' if taken else 'then'} branch of If '{node.name}', which the "
            f"calibration data does not take (it takes the {label} branch)"
        )
    at = next(i for i, n in enumerate(scope.nodes) if n is node)
    scope.nodes[at : at + 1] = _branch_nodes(scope, node, taken)
    return None


def inline_both(scope: Scope, node: onnx.NodeProto, taken: list[bool | None]) -> str | None:
    """Replace the `If` `node` by both branches' nodes, each guarded by its branch, given the
    branch each calibration batch takes; None when done, else why not (a name clash)."""
    reason = _clash(scope, node, True) or _clash(scope, node, False)
    if reason:
        return reason
    scope.conditions[id(node)] = taken
    at = next(i for i, n in enumerate(scope.nodes) if n is node)
    scope.nodes[at : at + 1] = [
        *_branch_nodes(scope, node, True, (id(node), True)),
        *_branch_nodes(scope, node, False, (id(node), False)),
    ]
    return None


def _clash(scope: Scope, node: onnx.NodeProto, taken: bool) -> str | None:
    """Why a branch cannot be walked in the `If`'s place: a name it defines is used outside."""
    branch = branch_of(node, taken)
    inner = {o for n in branch.node for o in n.output if o} | {t.name for t in branch.initializer}
    outside = {o for n in scope.nodes if n is not node for o in n.output if o}
    outside |= set(scope.initializers())
    clash = sorted(inner & outside)
    return f"its branch defines '{clash[0]}', a name also used outside it" if clash else None


def _branch_nodes(
    scope: Scope, node: onnx.NodeProto, taken: bool, *guard: tuple[int, bool]
) -> list[onnx.NodeProto]:
    """A branch's nodes and an Identity per `If` output, guarded as the `If` and by `guard`;
    the branch's initializers join the scope's."""
    branch = branch_of(node, taken)
    outputs = [
        helper.make_node("Identity", [inside.name], [outside_name])
        for inside, outside_name in zip(branch.output, node.output, strict=False)
        if outside_name
    ]
    nodes = [*branch.node, *outputs]
    scope.guard(nodes, node, *guard)
    scope.graphs.append(branch)
    return nodes
