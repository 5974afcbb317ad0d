"""A layer's input on calibration data, in the original model and in the model compressed so
far, without re-running the whole model (onnxruntime sessions come from `mcompress.runtime`).

The main graph (or a `Scope`: the main graph with the `If` branches the calibration data takes
inlined) is cut just before each layer to recover. The nodes between two cuts run as a
small model of their own on the activations cached at the previous cut, so one sweep over all
layers costs about one forward pass of each model. The cache holds only the values that cross
the current cut, for every calibration batch; layer statistics are accumulated from it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from mcompress import runtime
from mcompress.graph import subgraphs
from mcompress.model_io import Model, read_array
from mcompress.recover.layers import Layer
from mcompress.recover.scope import Scope, main_scope

Batch = dict[str, np.ndarray]


@dataclass
class LayerInputs:
    """One calibration batch of a layer's input: in the compressed model (`xc`) and in the
    original (`xo`; None while nothing upstream has changed, so both are equal)."""

    xc: np.ndarray
    xo: np.ndarray | None


def batches(feeds: list[Batch], model: Model, size: int = 16) -> list[Batch]:
    """Join per-sample feeds into batches when every input has a free first dimension."""
    free = all(
        vi.type.tensor_type.shape.dim and vi.type.tensor_type.shape.dim[0].dim_value <= 0
        for vi in model.proto.graph.input
        if vi.name in feeds[0]
    )
    if not free or size <= 1:
        return feeds
    return [
        {k: np.concatenate([f[k] for f in feeds[s : s + size]]) for k in feeds[s]}
        for s in range(0, len(feeds), size)
    ]


class SegmentRunner:
    """Walks a model's main graph layer by layer, keeping both models' activations at the cut.

    Call `remember(layer)` before changing a layer's weights, and `inputs(layer)` for layers in
    graph order; the weights of layers visited before are read when the next segment runs.
    """

    def __init__(self, model: Model, feeds: list[Batch], scope: Scope | None = None) -> None:
        self.model = model
        self.graph = model.proto.graph
        self.scope = scope or main_scope(self.graph)
        self.nodes = self.scope.nodes
        self.last_use: dict[str, int] = {o.name: len(self.nodes) for o in self.graph.output}
        for i, node in enumerate(self.nodes):
            for name in _reads(node):
                self.last_use[name] = i
        self.cut = 0
        self.compressed = [dict(f) for f in feeds]
        self.original: list[Batch] | None = None
        self.original_weights: dict[str, np.ndarray] = {}
        self.runs = 0

    def remember(self, layer: Layer) -> None:
        """Keep a layer's original weight and bias (zeros if it has none) before a change."""
        self.original_weights[layer.weight.name] = np.array(layer.weight.array(), copy=True)
        if layer.bias is not None:
            self.original_weights[layer.bias.name] = np.array(layer.bias.array(), copy=True)

    def inputs(self, layer: Layer) -> Iterator[LayerInputs]:
        """Move the cut to just before `layer` and yield its input, batch by batch (the batches
        that run it: all but those taking the other branch of an `If` both are walked for)."""
        self._advance(layer.position)
        probe = self.scope.probes.get(id(layer.node))
        if probe is not None:
            yield from self._iterations(layer.node, *probe)
            return
        name = layer.node.input[0]
        for i in self._running(layer.node):
            yield LayerInputs(
                self.compressed[i][name], None if self.original is None else self.original[i][name]
            )

    def _iterations(
        self, layer: onnx.NodeProto, node: onnx.NodeProto, output: str
    ) -> Iterator[LayerInputs]:
        """Run the Loop/Scan probe `node` at the cut (which stays) and yield its `output`, the
        body `layer`'s input at every iteration, with the iterations folded into the batch."""
        plan = self._plan([node], [output])
        differ = bool(plan.varying) or self.original is not None
        for i in self._running(layer):
            xc = plan.run(self.compressed[i], plan.current)[0]
            xo = None
            if differ:
                xo = plan.run((self.original or self.compressed)[i], plan.before)[0]
            yield LayerInputs(_fold(xc), None if xo is None else _fold(xo))

    def _running(self, node: onnx.NodeProto) -> list[int]:
        """The calibration batches that run `node`."""
        return [i for i in range(len(self.compressed)) if self.scope.runs(node, i)]

    def values(self, position: int, name: str) -> list[np.ndarray | None]:
        """Move the cut to just before node `position` (which reads `name`) and return the
        value of `name` in the compressed model for each batch (None for a batch that does not
        run that node)."""
        self._advance(position)
        running = set(self._running(self.nodes[position]))
        inits = self.scope.initializers()
        if name in inits:
            tensor, _ = inits[name]
            value = read_array(tensor, self.model.base_dir)
            return [value if i in running else None for i in range(len(self.compressed))]
        return [b[name] if i in running else None for i, b in enumerate(self.compressed)]

    def _advance(self, stop: int) -> None:
        if stop <= self.cut:
            return
        nodes = self.nodes[self.cut : stop]
        # Batches taking different branches of an If walked both ways run different nodes.
        patterns: dict[tuple[bool, ...], _Segment] = {}
        plans = []
        for i in range(len(self.compressed)):
            pattern = tuple(self.scope.runs(n, i) for n in nodes)
            if pattern not in patterns:
                patterns[pattern] = self._segment(
                    [n for n, on in zip(nodes, pattern, strict=True) if on], stop
                )
            plans.append(patterns[pattern])
        if any(p.varying for p in plans) or self.original is not None:
            source = self.original if self.original is not None else self.compressed
            self.original = [
                self._step(p, b, p.before, stop) for p, b in zip(plans, source, strict=True)
            ]
        self.compressed = [
            self._step(p, b, p.current, stop) for p, b in zip(plans, self.compressed, strict=True)
        ]
        self.cut = stop

    def _segment(self, nodes: list[onnx.NodeProto], stop: int) -> _Segment:
        """The plan running `nodes` to the values read at or after node `stop`."""
        produced = {o for n in nodes for o in n.output if o}
        outputs = sorted(n for n in produced if self.last_use.get(n, -1) >= stop)
        # Nodes whose values nothing after the cut reads (an inlined If's condition) do not run.
        return self._plan(nodes, outputs)

    def _plan(self, nodes: list[onnx.NodeProto], outputs: list[str]) -> _Segment:
        """A session running `nodes` from the values at the cut to `outputs`, with the weights
        that differ between the two models fed as inputs."""
        inits = {name: t for name, (t, _) in self.scope.initializers().items()}
        produced = {o for n in nodes for o in n.output if o}
        needed = sorted({r for n in nodes for r in _reads(n)} - produced)
        varying = [n for n in needed if n in inits and self._differs(n, inits[n])]
        feeds = [n for n in needed if n not in inits]
        session = self._session(nodes, inits, needed, varying, feeds, outputs) if outputs else None
        current = {n: read_array(inits[n], self.model.base_dir) for n in varying}
        before = {n: self._original(n, current[n]) for n in varying}
        return _Segment(self, session, feeds, outputs, varying, current, before)

    def _original(self, name: str, current: np.ndarray) -> np.ndarray:
        return self.original_weights.get(name, np.zeros_like(current))

    def _differs(self, name: str, tensor: onnx.TensorProto) -> bool:
        """A weight whose value in the compressed model differs from the original's (a bias
        that recovery added exists only in the compressed model)."""
        if name in self.original_weights:
            current = read_array(tensor, self.model.base_dir)
            return not np.array_equal(current, self.original_weights[name])
        owners = [n for n in self.nodes if len(n.input) > 2 and n.input[2] == name]
        return any(o.input[1] in self.original_weights for o in owners)

    def _session(
        self,
        nodes: list[onnx.NodeProto],
        inits: dict[str, onnx.TensorProto],
        needed: list[str],
        varying: list[str],
        feeds: list[str],
        outputs: list[str],
    ) -> Any:  # onnxruntime.InferenceSession
        # A batch taking one branch of an If walked both ways holds only that branch's values.
        sample = {n: next(b[n] for b in self.compressed if n in b) for n in feeds}
        inputs = [helper.make_tensor_value_info(n, _elem(sample[n]), None) for n in feeds]
        inputs += [helper.make_tensor_value_info(n, inits[n].data_type, None) for n in varying]
        constants = [self._tensor(inits[n]) for n in needed if n in inits and n not in varying]
        graph = helper.make_graph(
            nodes, "segment", inputs, [onnx.ValueInfoProto(name=n) for n in outputs], constants
        )
        proto = helper.make_model(
            graph,
            opset_imports=list(self.model.proto.opset_import),
            ir_version=self.model.proto.ir_version,
        )
        proto.functions.extend(self.model.proto.functions)
        # Idle onnxruntime threads spin for a while after each run and starve numpy's BLAS.
        return runtime.session(proto, optimize="basic", spinning=False)

    def _tensor(self, tensor: onnx.TensorProto) -> onnx.TensorProto:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            return numpy_helper.from_array(read_array(tensor, self.model.base_dir), tensor.name)
        return tensor

    def _step(self, plan: _Segment, batch: Batch, weights: Batch, stop: int) -> Batch:
        kept = {n: v for n, v in batch.items() if self.last_use.get(n, -1) >= stop}
        kept.update(zip(plan.outputs, plan.run(batch, weights), strict=True))
        return kept


@dataclass
class _Segment:
    """A session over some nodes (None when nothing is to be computed), the cut values it is
    fed, what it returns, and the weights that differ: as compressed (`current`) and original."""

    runner: SegmentRunner
    session: Any  # onnxruntime.InferenceSession
    feeds: list[str]
    outputs: list[str]
    varying: list[str]
    current: Batch
    before: Batch

    def run(self, batch: Batch, weights: Batch) -> list[np.ndarray]:
        """The outputs for one batch of cut values, with these weights."""
        if self.session is None:
            return []
        self.runner.runs += 1
        return list(
            self.session.run(self.outputs, {**{n: batch[n] for n in self.feeds}, **weights})
        )


def _fold(x: np.ndarray) -> np.ndarray:
    """`[iterations, batch, ...]` -> `[iterations * batch, ...]` (a vector per iteration stays)."""
    return x.reshape(-1, *x.shape[2:]) if x.ndim > 2 else x


def _reads(node: onnx.NodeProto) -> set[str]:
    """Names a node reads, including outer-scope names read inside its subgraphs."""
    names = {n for n in node.input if n}
    for sub in subgraphs(node):
        inner = {o for n in sub.node for o in n.output} | {t.name for t in sub.initializer}
        inner |= {i.name for i in sub.input}
        names |= {r for n in sub.node for r in _reads(n)} - inner
    return names


def _elem(array: np.ndarray) -> int:
    return helper.np_dtype_to_tensor_dtype(array.dtype)
