"""Layers whose weight is stored as integer codes rebuilt in the graph (`Cast -> [Sub zero
point] -> Mul scale`, the quantize pass's dense form for Conv and other weights): distill
re-fits them in float and rounds them back onto the same grid (same scales, zero points and
code range), so the file keeps its storage."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from mcompress.graph import input_reads
from mcompress.model_io import Model, Weight, read_array
from mcompress.recover.layers import Layer, layer_at

_INTEGER = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT16,
            onnx.TensorProto.UINT16, onnx.TensorProto.INT32}  # fmt: skip


@dataclass
class Grid:
    """A quantized layer: the layer (its `weight` is the codes initializer), and its grid as
    matrices shaped like the layer's (`[groups, rows, inputs(+1)]`)."""

    layer: Layer
    scale: np.ndarray
    zero: np.ndarray
    low: int
    high: int

    def matrices(self) -> np.ndarray:
        """The layer's float matrices (codes dequantized, bias column as stored)."""
        codes = self.layer.matrices()
        return (codes - self.zero) * self.scale

    def store(self, mats: np.ndarray) -> None:
        """Write float matrices back as codes on the grid (and the float bias)."""
        codes = np.clip(np.rint(mats / self.scale) + self.zero, self.low, self.high)
        self.layer.weight.replace(self.layer.weight_values(codes))
        if self.layer.bias is not None:
            dtype = self.layer.bias.array().dtype
            self.layer.bias.replace(mats[..., -1].reshape(-1).astype(dtype))


def find_grid(model: Model, position: int) -> Grid | str | None:
    """The quantized layer at `position` in the main graph; a reason when it is quantized in a
    way distill leaves alone; None when its weight is not of this form."""
    graph = model.proto.graph
    node = graph.node[position]
    producer = {out: n for n in graph.node for out in n.output}
    inits = {t.name: t for t in graph.initializer}
    readers = input_reads(graph)
    mul = producer.get(node.input[1])
    if mul is None or mul.op_type != "Mul" or readers.get(node.input[1], 0) != 1:
        return None
    scale_name = next((i for i in mul.input if i in inits), None)
    source = next((producer.get(i) for i in mul.input if i != scale_name), None)
    zero_name = None
    if source is not None and source.op_type == "Sub" and source.input[1] in inits:
        zero_name, source = source.input[1], producer.get(source.input[0])
    if scale_name is None or source is None or source.op_type != "Cast":
        return None
    codes = inits.get(source.input[0])
    if codes is None or codes.data_type not in _INTEGER or readers.get(codes.name, 0) != 1:
        return None
    layer = layer_at(model, node, position, Weight(codes, graph, model), inits, readers)
    if layer is None:
        return None
    if layer.has_bias_column and layer.bias is None:
        return "its weight is quantized and it has no bias to re-fit with it"
    return _grid(model, layer, inits[scale_name], inits.get(zero_name or ""))


def _grid(
    model: Model, layer: Layer, scale: onnx.TensorProto, zero: onnx.TensorProto | None
) -> Grid:
    codes = layer.weight.array()
    shape = codes.shape
    s = np.broadcast_to(read_array(scale, model.base_dir).astype(np.float64), shape)
    z = np.zeros(shape) if zero is None else read_array(zero, model.base_dir)
    z = np.broadcast_to(np.asarray(z, np.float64), shape)
    scale_mats = layer.matrices(np.ascontiguousarray(s))
    zero_mats = layer.matrices(np.ascontiguousarray(z))
    if layer.has_bias_column:  # the bias is float: no grid
        scale_mats[..., -1], zero_mats[..., -1] = 1.0, 0.0
    return Grid(layer, scale_mats, zero_mats, int(codes.min()), int(codes.max()))
