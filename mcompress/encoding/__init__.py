"""Compact lossless weight storage that stock onnxruntime expands at load.

Pruned or clustered weights are dense float arrays full of zeros or repeated values, so their
files do not shrink. `pack` stores each weight in its smallest lossless form: packed codebook
indices plus a codebook (one per tensor, or one per channel for per-channel clustering); a
bit-mask of the non-zeros plus their values; gap-coded positions of the non-zeros plus their
values (very sparse tensors); or either of the last two with the values themselves
codebook-coded. Standard ops of opset 11 (BitShift, Cast, CumSum, Add, Mul, Gather, Reshape,
Slice, ConstantOfShape, ScatterElements) rebuild each tensor under its own name, and
onnxruntime constant-folds them when it creates a session. `unpack` turns them (and any
`sparse_initializer`) back into dense initializers so a packed model can be compressed again.

`sparse_initializer` is not emitted: onnx shape inference cannot type it (`check_model(...,
full_check=True)` fails), the checker rejects the int32 indices onnxruntime accepts, and with
int64 indices it is larger than the gap-coded form.

Modules: `facts` (what one weight holds), `plan` (a candidate encoding and its byte cost),
`forms` (the encodings), `expand` (unpacking).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mcompress.encoding.expand import densify_sparse, evaluate_expansions
from mcompress.encoding.facts import BIT_VIEWS, Facts, PackedTensor, worth
from mcompress.encoding.forms import candidates
from mcompress.encoding.plan import (
    PREFIX,
    GraphState,
    Plan,
    element_count,
    packed_tensors,
    tensor_cost,
    tensor_stub,
)
from mcompress.graph import FreshNames, iter_graphs
from mcompress.model_io import Model, load_model, read_array, saves_external

# Opset that has every op the node encodings use (BitShift and CumSum arrived in 11).
MIN_OPSET = 11

# IR version from which initializers need not also be graph inputs.
MIN_IR = 4

# A model saved with external data (large: hundreds of MB and up) is packed only as far as
# onnxruntime's load peak stays within this multiple of its dense weights. onnxruntime
# constant-folds every expansion in one pass (graph order) and frees the intermediates only
# when the pass ends (Graph::Resolve); each stored tensor in external data is read for the
# node that uses it and dropped, and dense weights are memory-mapped and touched only after
# the folding, when MatMul pre-packs them. So the peak is the larger of the dense weights and
# the sum, over the packed weights, of each one's intermediates plus the weight: 2x the weight
# for an 8-bit codebook (its int32 indices), 1x for float16 + Cast, ~5.5x for a bit-mask.
# Measurements, and the forms tried that fold no lighter: benchmarks/README.md.
LOAD_PEAK_LIMIT = 1.3


@dataclass
class Packing:
    """What `pack` re-encoded: the report's `packing` section. Only tensors whose encoding
    changed are listed; the totals cover those tensors. `note` says why nothing was packed,
    or why some weights were left dense."""

    tensors: list[PackedTensor]
    scanned: int
    bytes_before: int
    bytes_after: int
    note: str | None = None

    @classmethod
    def of(cls, tensors: list[PackedTensor], scanned: int) -> Packing:
        before, after = (sum(t.bytes_before for t in tensors), sum(t.bytes_after for t in tensors))
        return cls(tensors, scanned, before, after)

    def to_json(self) -> dict[str, Any]:
        """The JSON form: `note` only when there is one."""
        data = asdict(self)
        if self.note is None:
            del data["note"]
        return data


def pack(model: Model, *, min_elements: int = 64) -> Packing:
    """Re-encode each float weight in its smallest lossless form; return what changed."""
    rows: list[PackedTensor] = []
    scanned = 0
    if model.opset("") < MIN_OPSET or model.proto.ir_version < MIN_IR:
        note = f"weights left dense: packing needs opset >= {MIN_OPSET} and IR >= {MIN_IR}"
        return Packing(rows, 0, 0, 0, note)
    names = FreshNames(model.proto)
    budget = LoadBudget.of(model)
    # Innermost graphs first: editing a graph copies its nodes, and with them any subgraph.
    for graph in reversed(list(iter_graphs(model.proto.graph))):
        state = GraphState(graph, names)
        graph_rows: list[PackedTensor] = []
        inputs = {i.name for i in graph.input}
        for tensor in list(graph.initializer):
            if (
                tensor.data_type not in BIT_VIEWS
                or tensor.name.startswith(PREFIX)
                or tensor.name in inputs
                or element_count(tensor.dims) < min_elements
            ):
                continue
            scanned += 1
            facts = Facts.of(tensor, read_array(tensor, model.base_dir))
            dense = tensor_cost(
                tensor_stub(tensor.name, tensor.data_type, facts.shape), facts.nbytes
            )
            plans = [p for p in candidates(facts, state) if worth(dense, p.cost())]
            best = budget.choose(plans, facts.nbytes)
            if best is not None:
                graph_rows.append(facts.row(best.encoding, dense, best.cost()))
                state.commit(best)
        state.finish()
        rows[:0] = graph_rows
    packing = Packing.of(rows, scanned)
    if budget.left_dense:
        packing.note = (
            f"{budget.left_dense} weights stored dense: unpacking them too at load would "
            f"take onnxruntime's peak over {LOAD_PEAK_LIMIT:.1f}x the dense weights "
            "(models with external data are packed only that far)"
        )
        model.notes.append(f"packing: {packing.note}")
    return packing


@dataclass
class LoadBudget:
    """What onnxruntime may hold while it folds the expansions of a model saved with external
    data (`limit` None: no limit, a model saved inline): LOAD_PEAK_LIMIT x the dense bytes of
    the weights seen so far, less what the packed ones hold. Each weight takes the smallest
    form its share affords: a light form (float16 + Cast holds just the weight) packs every
    weight, and what it leaves over upgrades some to heavier, smaller ones (a codebook)."""

    limit: float | None
    seen: int = 0
    held: int = 0
    left_dense: int = 0

    @classmethod
    def of(cls, model: Model) -> LoadBudget:
        return cls(LOAD_PEAK_LIMIT if saves_external(model) else None)

    def choose(self, plans: list[Plan], nbytes: int) -> Plan | None:
        """The smallest plan within the budget; None to store the weight dense. Folding a
        plan holds its intermediates and the weight; a dense weight is touched only later."""
        if self.limit is None:
            return min(plans, key=Plan.cost, default=None)
        self.seen += nbytes
        allowance = self.limit * self.seen - self.held
        affordable = [p for p in plans if p.load_bytes + nbytes <= allowance]
        best = min(affordable, key=Plan.cost, default=None)
        if best is None:
            self.left_dense += bool(plans)
            return None
        self.held += best.load_bytes + nbytes
        return best


def unpack(model: Model) -> int:
    """Turn mcompress expansions and sparse initializers back into dense initializers.

    Returns how many tensors were restored.
    """
    count = 0
    graphs = list(iter_graphs(model.proto.graph))
    # innermost first, while the packed tensors they may share with enclosing graphs exist
    packed = packed_tensors(graphs)
    for graph in reversed(graphs):
        count += densify_sparse(graph, model) + evaluate_expansions(graph, model, packed)
    return count


def expanded_weights(path: str | Path) -> dict[str, np.ndarray]:
    """Every float weight of the model at `path`, expanded as onnxruntime sees it."""
    model = load_model(path)
    unpack(model)
    return {w.name: np.array(w.array()) for w in model.weights()}
