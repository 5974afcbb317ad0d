"""Weighted layers (Conv, Gemm, MatMul with a constant weight) seen as per-group matrices.

Every algorithm in `mcompress.recover` works on `[groups, rows, inputs(+1)]` matrices: one
output row per output channel, one column per input element (im2col order for Conv), and a last
column for the bias when the layer has one (or gets one: the re-fit solves for it too).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper

from mcompress.graph import FreshNames, input_reads, iter_graphs
from mcompress.model_io import Model, Weight, add_initializer
from mcompress.recover.scope import Scope, layer_name, main_scope, weighted_nodes


@dataclass
class Layer:
    """One weighted node of the main graph and how its weight maps to matrices."""

    node: onnx.NodeProto
    position: int
    weight: Weight
    bias: Weight | None
    kind: str  # "conv" | "gemm" | "matmul"
    groups: int = 1
    kernel: tuple[int, ...] = ()
    strides: tuple[int, ...] = ()
    pads: tuple[int, ...] = ()
    dilations: tuple[int, ...] = ()
    trans_b: bool = False

    @property
    def name(self) -> str:
        return self.node.name or self.weight.name

    @property
    def has_bias_column(self) -> bool:
        """Conv and Gemm re-fit a bias (added when missing); MatMul has none."""
        return self.kind != "matmul"

    def matrices(self, values: np.ndarray | None = None) -> np.ndarray:
        """`[groups, rows, inputs(+1)]` float64 view of the weight (and bias column)."""
        w = np.asarray(self.weight.array() if values is None else values, dtype=np.float64)
        if self.kind == "conv":
            mats = w.reshape(self.groups, w.shape[0] // self.groups, -1)
        elif self.kind == "gemm":
            mats = (w if self.trans_b else w.T)[None]
        else:
            mats = w.T[None]
        if not self.has_bias_column:
            return np.ascontiguousarray(mats)
        bias = np.zeros(mats.shape[0] * mats.shape[1])
        if self.bias is not None:
            bias = np.asarray(self.bias.array(), dtype=np.float64).reshape(-1)
        return np.concatenate([mats, bias.reshape(mats.shape[0], mats.shape[1], 1)], axis=2)

    def weight_values(self, mats: np.ndarray) -> np.ndarray:
        """The weight tensor (original layout and dtype) from matrices."""
        core = mats[..., :-1] if self.has_bias_column else mats
        shape, dtype = self.weight.shape, self.weight.array().dtype
        if self.kind == "conv":
            return core.reshape(shape).astype(dtype)
        flat = core[0]
        return (flat if self.trans_b and self.kind == "gemm" else flat.T).astype(dtype)

    def store(self, mats: np.ndarray, model: Model, names: FreshNames | None = None) -> None:
        """Write matrices back as weight and bias (a Conv/Gemm without bias gets one)."""
        self.weight.replace(self.weight_values(mats))
        if not self.has_bias_column:
            return
        bias = mats[..., -1].reshape(-1).astype(self.weight.array().dtype)
        if self.bias is not None:
            self.bias.replace(bias)
            return
        if not np.any(bias):
            return
        graph = self.weight.graph
        name = (names or FreshNames(model.proto)).fresh(f"{self.weight.name}_bias")
        tensor = add_initializer(graph, bias, name)
        while len(self.node.input) < 3:
            self.node.input.append("")
        self.node.input[2] = name
        self.bias = Weight(tensor, graph, model)


def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def find_layers(
    model: Model, weight_names: set[str] | None = None, scope: Scope | None = None
) -> list[Layer]:
    """Conv (1-D/2-D, explicit pads), Gemm (A not transposed, alpha 1) and MatMul (x @ W, 2-D W)
    whose weight is an initializer read by that node alone, in order: the main graph's, or the
    nodes of `scope` (taken `If` branches inlined, Loop/Scan body layers at their loop's
    position; positions are indexes into `scope.nodes`)."""
    scope = scope or main_scope(model.proto.graph)
    owned = scope.initializers()
    inits = {name: tensor for name, (tensor, _) in owned.items()}
    readers = input_reads(model.proto.graph)
    found = []
    for position, node in scope.walk():
        if len(node.input) < 2 or node.input[1] not in inits or node.domain not in ("", "ai.onnx"):
            continue
        wname = node.input[1]
        if readers.get(wname, 0) != 1 or (weight_names is not None and wname not in weight_names):
            continue
        tensor, graph = owned[wname]
        if tensor.data_type != onnx.TensorProto.FLOAT:
            continue
        layer = layer_at(model, node, position, Weight(tensor, graph, model), inits, readers)
        if layer is not None:
            found.append(layer)
    return found


def layer_at(
    model: Model,
    node: onnx.NodeProto,
    position: int,
    weight: Weight,
    inits: dict[str, onnx.TensorProto],
    readers: dict[str, int],
) -> Layer | None:
    """`node` (at `position` in the main graph) as a Layer over `weight`, or None when its op,
    attributes or bias are a form recovery does not model; `readers` is `input_reads`."""
    bias = None
    if len(node.input) > 2 and node.input[2]:
        tensor = inits.get(node.input[2])
        if tensor is None or readers.get(node.input[2], 0) != 1:
            return None
        bias = Weight(tensor, weight.graph, model)
    shape = weight.shape
    if node.op_type == "Conv" and len(shape) in (3, 4):
        if _attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            return None
        spatial = len(shape) - 2
        pads = tuple(_attr(node, "pads", [0] * 2 * spatial))
        return Layer(
            node, position, weight, bias, "conv",
            groups=int(_attr(node, "group", 1)),
            kernel=tuple(shape[2:]),
            strides=tuple(_attr(node, "strides", [1] * spatial)),
            pads=pads,
            dilations=tuple(_attr(node, "dilations", [1] * spatial)),
        )  # fmt: skip
    if node.op_type == "Gemm" and len(shape) == 2:
        if _attr(node, "transA", 0) or _attr(node, "alpha", 1.0) != 1.0:
            return None
        if bias is not None and (
            _attr(node, "beta", 1.0) != 1.0 or bias.size != _gemm_out(node, shape)
        ):
            return None
        return Layer(node, position, weight, bias, "gemm", trans_b=bool(_attr(node, "transB", 0)))
    if node.op_type == "MatMul" and len(shape) == 2:
        return Layer(node, position, weight, None, "matmul")
    return None


def _gemm_out(node: onnx.NodeProto, shape: tuple[int, ...]) -> int:
    return shape[0] if _attr(node, "transB", 0) else shape[1]


def unreached_layers(model: Model, scope: Scope | None = None) -> list[dict[str, str]]:
    """Conv, Gemm and MatMul nodes with a constant weight that `find_layers` does not return
    for `scope`, and why: recovery reconstructs the main graph, the `If` branches the
    calibration data takes and the Loop/Scan bodies it reaches (a layer in a branch not taken
    or in a nested body has no statistics of its own)."""
    scope = scope or main_scope(model.proto.graph)
    found = {layer.node.name or layer.weight.name for layer in find_layers(model, scope=scope)}
    constants = {t.name for g in iter_graphs(model.proto.graph) for t in g.initializer}
    readers = input_reads(model.proto.graph)
    walked = {layer_name(node) for _, node in scope.walk()}
    rows = []
    for node, owner in weighted_nodes(model.proto.graph):
        weight = node.input[1] if len(node.input) > 1 else ""
        name = layer_name(node)
        if weight not in constants or name in found:
            continue
        if name in scope.reasons:
            reason = scope.reasons[name]
        elif owner is not None and name not in walked:
            reason = f"inside the body of {owner.op_type} '{owner.name}'"
        elif readers.get(weight, 0) > 1:
            reason = f"its weight '{weight}' is read by {readers[weight]} nodes"
        else:
            reason = "a form recovery does not model (weight type, padding or attributes)"
        rows.append({"name": name, "op": node.op_type, "reason": reason})
    return rows
