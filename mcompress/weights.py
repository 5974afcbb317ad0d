"""Which initializers the layers of a model read as weights, across every graph.

A name is resolved in the innermost graph defining it, so a subgraph reading a main-graph
initializer sees that initializer (`walk`). `find_candidates` lists the float initializers read
only as layer weights (or biases): what prune, cluster and sensitivity work on.
"""

from __future__ import annotations

import fnmatch
from collections import Counter
from dataclasses import dataclass, field

import onnx

from mcompress.graph import node_excluded, subgraphs
from mcompress.model_io import Model, Weight

Key = tuple[int, str]

# Input slots holding weights (pruned) and biases (pruned only with include_biases).
WEIGHT_SLOTS: dict[str, tuple[int, ...]] = {
    "Conv": (1,),
    "ConvTranspose": (1,),
    "Gemm": (0, 1),
    "MatMul": (0, 1),
    "Gather": (0,),
    "LSTM": (1, 2),
    "GRU": (1, 2),
    "RNN": (1, 2),
}
BIAS_SLOTS: dict[str, tuple[int, ...]] = {
    "Conv": (2,),
    "ConvTranspose": (2,),
    "Gemm": (2,),
    "LSTM": (3,),
    "GRU": (3,),
    "RNN": (3,),
}
_FLOATS = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}


@dataclass(frozen=True)
class Initializer:
    """An initializer as a node sees it: `key` = (graph index, name) is unique in the model."""

    key: Key
    weight: Weight


@dataclass
class Site:
    """A node, the graph it is in, and the initializers visible to it (outer scopes included)."""

    graph: onnx.GraphProto
    graph_id: int
    node: onnx.NodeProto
    scope: dict[str, Initializer | None]

    def const(self, slot: int) -> Initializer | None:
        """The initializer read at input `slot`, or None for a computed value or empty slot."""
        if slot >= len(self.node.input) or not self.node.input[slot]:
            return None
        return self.scope.get(self.node.input[slot])


def walk(model: Model) -> list[Site]:
    """Every node of every graph in topological order, with name resolution across scopes.

    A name is looked up in the innermost graph defining it (as input, initializer or node
    output), so a subgraph reading a main-graph initializer resolves to that initializer.
    """
    sites: list[Site] = []
    counter = iter(range(1 << 30))

    def visit(graph: onnx.GraphProto, outer: dict[str, Initializer | None]) -> None:
        graph_id = next(counter)
        scope = dict(outer)
        for vi in graph.input:
            scope[vi.name] = None
        for tensor in graph.initializer:
            scope[tensor.name] = Initializer((graph_id, tensor.name), Weight(tensor, graph, model))
        for node in graph.node:
            for out in node.output:
                if out:
                    scope[out] = None
        for node in graph.node:
            sites.append(Site(graph, graph_id, node, scope))
            for sub in subgraphs(node):
                visit(sub, scope)

    visit(model.proto.graph, {})
    return sites


def reader_counts(sites: list[Site]) -> Counter[Key]:
    """How many node inputs (over all graphs, nested reads included) read each initializer."""
    counts: Counter[Key] = Counter()
    for site in sites:
        for slot in range(len(site.node.input)):
            init = site.const(slot)
            if init is not None:
                counts[init.key] += 1
    return counts


# ---------------------------------------------------------------- which tensors


@dataclass
class Candidate:
    """A weight to prune, where it is (`key`: graph index, name) and the ops that read it."""

    weight: Weight
    key: Key
    ops: list[str] = field(default_factory=list)


def find_candidates(
    model: Model,
    min_elements: int,
    include_biases: bool = False,
    exclude: tuple[str, ...] | list[str] = (),
) -> tuple[list[Candidate], list[dict[str, str]]]:
    """Float initializers read only as layer weights (or biases), with reasons for the rest."""
    uses: dict[Key, list[tuple[Site, int]]] = {}
    weights: dict[Key, Weight] = {}
    for site in walk(model):
        for slot in range(len(site.node.input)):
            init = site.const(slot)
            if init is not None and init.weight.tensor.data_type in _FLOATS:
                uses.setdefault(init.key, []).append((site, slot))
                weights[init.key] = init.weight
    candidates: list[Candidate] = []
    skipped: list[dict[str, str]] = []
    for key, sites in uses.items():
        weight = weights[key]
        roles = [_role(site.node, slot, include_biases) for site, slot in sites]
        if not any(roles):
            continue
        reason = None
        if not all(roles):
            site, slot = next(u for u, r in zip(sites, roles, strict=True) if not r)
            reason = f"also read by {site.node.op_type} '{site.node.name}' (input {slot})"
        elif any(node_excluded(s.node, exclude) for s, _ in sites) or any(
            fnmatch.fnmatchcase(weight.name, p) for p in exclude
        ):
            reason = "excluded"
        elif weight.size < max(min_elements, 1):
            reason = f"{weight.size} elements < min_elements {min_elements}"
        if reason:
            skipped.append({"name": weight.name, "reason": reason})
        else:
            candidates.append(Candidate(weight, key, sorted({s.node.op_type for s, _ in sites})))
    return candidates, skipped


def _role(node: onnx.NodeProto, slot: int, include_biases: bool) -> bool:
    if node.domain not in ("", "ai.onnx"):
        return False
    if slot in WEIGHT_SLOTS.get(node.op_type, ()):
        return True
    return include_biases and slot in BIAS_SLOTS.get(node.op_type, ())
