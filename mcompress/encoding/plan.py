"""One candidate encoding of one tensor (`Plan`: its nodes and tensors, and their cost in
bytes), the edits to one graph (`GraphState`), each under its own `mcp/<n>` scope."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mcompress.graph import FreshNames
from mcompress.model_io import store_raw

# Short, because every node and tensor of an expansion carries it: bytes in the file.
PREFIX = "mcp/"


def packed_tensors(graphs: Iterable[onnx.GraphProto]) -> dict[str, TensorProto]:
    """The stored tensors of mcompress expansions in `graphs`, by name: what `unpack` and
    the parameter count read (an `If` branch's expansion may use an enclosing graph's)."""
    return {t.name: t for g in graphs for t in g.initializer if t.name.startswith(PREFIX)}


def element_count(dims: Any) -> int:
    return int(np.prod(list(dims), dtype=np.int64))


def field_cost(body: int) -> int:
    """Bytes of a length-delimited protobuf field with a `body`-byte body and 1-byte tag."""
    return 1 + max(1, (body.bit_length() + 6) // 7) + body


def tensor_stub(name: str, data_type: int, shape: tuple[int, ...]) -> TensorProto:
    tensor = TensorProto(name=name, data_type=data_type)
    tensor.dims.extend(shape)
    return tensor


def tensor_cost(stub: TensorProto, payload: int) -> int:
    """Serialized bytes of an initializer: header, raw data and its field framing."""
    return field_cost(stub.ByteSize() + field_cost(payload))


Producer = Callable[[], np.ndarray]


@dataclass
class Plan:
    """One candidate encoding of one tensor: its protos, and producers of its data."""

    encoding: str
    tag: str
    helpers: dict[tuple[Any, ...], str]  # helper constants the graph already has
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    data: list[tuple[TensorProto, Producer]] = field(default_factory=list)
    new_helpers: dict[tuple[Any, ...], TensorProto] = field(default_factory=dict)
    bytes: int = 0
    # What onnxruntime holds at load beyond the weight itself: every intermediate of the
    # expansion, kept until constant folding ends. Stored tensors are not counted: in a model
    # with external data (the only one with a load budget) each is read for the node that
    # uses it and dropped.
    load_bytes: int = 0

    def tensor(self, suffix: str, dtype: Any, shape: tuple[int, ...], make: Producer) -> str:
        """A per-tensor initializer whose values `make()` produces only if this plan wins."""
        stub = tensor_stub(f"{self.tag}/{suffix}", helper.np_dtype_to_tensor_dtype(dtype), shape)
        self.data.append((stub, make))
        payload = element_count(shape) * np.dtype(dtype).itemsize
        self.bytes += tensor_cost(stub, payload)
        return stub.name

    def const(self, key: str, values: np.ndarray) -> str:
        """A small helper constant shared by every expansion in the graph."""
        full_key = (values.dtype.str, values.shape, values.tobytes())
        if full_key in self.helpers:
            return self.helpers[full_key]
        if full_key not in self.new_helpers:
            tensor = numpy_helper.from_array(values, f"{self.tag}/{key}")
            self.new_helpers[full_key] = tensor
            self.bytes += field_cost(tensor.ByteSize())
        return self.new_helpers[full_key].name

    def node(
        self, op: str, inputs: list[str], output: str | None = None, *, out_bytes: int, **attrs: Any
    ) -> str:
        """A node of the expansion; `out_bytes` is the size of its output, an intermediate held
        at load unless `output` is the weight itself."""
        name = f"{self.tag}/{len(self.nodes)}"
        node = helper.make_node(op, inputs, [output or name], name=name, **attrs)
        self.nodes.append(node)
        self.bytes += field_cost(node.ByteSize())
        if output is None:
            self.load_bytes += out_bytes
        return node.output[0]

    def cost(self) -> int:
        return self.bytes


class GraphState:
    """Edits to one graph, applied together: new tensors, nodes first, originals removed."""

    def __init__(self, graph: onnx.GraphProto, names: FreshNames) -> None:
        self.graph = graph
        self.names = names
        self.helpers: dict[tuple[Any, ...], str] = {}
        self.nodes: list[onnx.NodeProto] = []
        self.removed: set[str] = set()

    def plan(self, encoding: str) -> Plan:
        return Plan(encoding, self.names.scope(PREFIX), self.helpers)

    def commit(self, plan: Plan) -> None:
        for key, tensor in plan.new_helpers.items():
            self.graph.initializer.append(tensor)
            self.helpers[key] = tensor.name
        for stub, make in plan.data:
            added = self.graph.initializer.add()  # append(stub) would copy its data again
            added.CopyFrom(stub)
            store_raw(added, make())
        self.nodes.extend(plan.nodes)
        self.removed.add(plan.nodes[-1].output[0])

    def finish(self) -> None:
        for index in reversed(range(len(self.graph.initializer))):
            if self.graph.initializer[index].name in self.removed:
                del self.graph.initializer[index]
        if self.nodes:
            rest = list(self.graph.node)
            del self.graph.node[:]
            self.graph.node.extend(self.nodes + rest)
