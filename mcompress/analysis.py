"""Facts about a model for `inspect` and reports: parameters, bytes by dtype and op, big tensors."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper

from mcompress.encoding.plan import PREFIX, packed_tensors
from mcompress.graph import iter_graphs
from mcompress.gzipped import gzip_estimated, gzip_size
from mcompress.model_io import (
    FLOAT_TYPES,
    Model,
    disk_size,
    external_files,
    read_array,
)

# Integer types that hold weights (quantized or codebook indices), as opposed to shapes/indices.
_WEIGHT_INT_TYPES = {
    onnx.TensorProto.INT8,
    onnx.TensorProto.UINT8,
    onnx.TensorProto.INT4,
    onnx.TensorProto.UINT4,
}
PARAMETER_TYPES = {
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.BFLOAT16,
    onnx.TensorProto.DOUBLE,
    *_WEIGHT_INT_TYPES,
}


@dataclass
class TensorSite:
    """A stored tensor: an initializer or a Constant node's value, in any graph."""

    tensor: onnx.TensorProto
    name: str
    in_constant: bool


def tensor_sites(proto: onnx.ModelProto, sparse_values: bool = True) -> list[TensorSite]:
    """All stored tensors of all graphs: initializers, Constant values and (unless
    `sparse_values` is false) the value tensors of sparse initializers."""
    sites: list[TensorSite] = []
    for graph in iter_graphs(proto.graph):
        sites.extend(TensorSite(t, t.name, False) for t in graph.initializer)
        if sparse_values:
            sites.extend(
                TensorSite(s.values, s.values.name, False) for s in graph.sparse_initializer
            )
        for node in graph.node:
            if node.op_type == "Constant":
                for attr in node.attribute:
                    if attr.type == onnx.AttributeProto.TENSOR:
                        sites.append(TensorSite(attr.t, node.output[0], True))
    return sites


def constant_node_weights(proto: onnx.ModelProto) -> list[TensorSite]:
    """Weights stored in Constant nodes: float tensors of more than one element (shape and
    index constants are not weights). `inspect` and `doctor` count these same tensors."""
    return [
        site
        for site in tensor_sites(proto)
        if site.in_constant and site.tensor.data_type in FLOAT_TYPES and _count(site.tensor) > 1
    ]


def _count(tensor: onnx.TensorProto) -> int:
    return math.prod(tensor.dims)


def count_parameters(proto: onnx.ModelProto) -> int:
    """Elements of weight-like tensors (float and 8/4-bit types), wherever they are stored.

    A sparse initializer counts its dense shape, not its stored values; a weight mcompress
    stored packed counts the elements onnxruntime rebuilds, not its codes and masks.
    """
    total = 0
    for graph in iter_graphs(proto.graph):
        for sparse in graph.sparse_initializer:
            if sparse.values.data_type in PARAMETER_TYPES:
                total += math.prod(sparse.dims)
    rebuilt = _rebuilt_counts(proto)
    for site in tensor_sites(proto, sparse_values=False):
        packed = site.name.startswith(PREFIX) and rebuilt is not None
        if site.tensor.data_type in PARAMETER_TYPES and not packed:
            total += _count(site.tensor)
    return total + sum(rebuilt or [])


def _rebuilt_counts(proto: onnx.ModelProto) -> list[int] | None:
    """Element counts of the weights mcompress expansions rebuild at load, by shape inference
    on the expansion nodes alone with payload-free stand-ins for their packed inputs; None
    when one is not inferable."""
    packed = packed_tensors(iter_graphs(proto.graph))
    counts: list[int] = []
    for graph in iter_graphs(proto.graph):
        nodes = [n for n in graph.node if n.name.startswith(PREFIX)]
        rebuilt = [n.output[0] for n in nodes if not n.output[0].startswith(PREFIX)]
        if not rebuilt:
            continue
        shapes = _inferred_shapes(proto, nodes, packed)
        for name in rebuilt:
            shape = shapes.get(name)
            if shape is None or not all(d.HasField("dim_value") for d in shape.dim):
                return None
            counts.append(math.prod(d.dim_value for d in shape.dim))
    return counts


def _inferred_shapes(
    proto: onnx.ModelProto, nodes: list[onnx.NodeProto], packed: dict[str, onnx.TensorProto]
) -> dict[str, onnx.TensorShapeProto]:
    produced = {out for node in nodes for out in node.output}
    stand_ins = []
    for name in {i for node in nodes for i in node.input if i and i not in produced}:
        if name not in packed:
            return {}
        tensor = packed[name]
        stand_in = onnx.TensorProto(name=name, data_type=tensor.data_type, dims=tensor.dims)
        if tensor.data_type == onnx.TensorProto.INT64:
            stand_in.CopyFrom(tensor)
        stand_ins.append(stand_in)
    outputs = [helper.make_empty_tensor_value_info(n.output[0]) for n in nodes]
    graph = helper.make_graph(nodes, "expansions", [], outputs, initializer=stand_ins)
    shell = helper.make_model(graph, opset_imports=proto.opset_import)
    shell.ir_version = proto.ir_version
    try:
        inferred = onnx.shape_inference.infer_shapes(shell, strict_mode=True, data_prop=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError):
        return {}
    return {info.name: info.type.tensor_type.shape for info in inferred.graph.value_info} | {
        info.name: info.type.tensor_type.shape
        for info in inferred.graph.output
        if info.type.tensor_type.HasField("shape")
    }


def _nbytes(tensor: onnx.TensorProto) -> int:
    dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type)
    return int(np.dtype(dtype).itemsize * _count(tensor))


def describe(model: Model, top: int = 10) -> dict[str, Any]:
    """The `inspect` report: structure, sizes, parameters and the largest weights."""
    proto = model.proto
    graph = proto.graph
    sites = tensor_sites(proto)
    files = external_files(proto, model.base_dir)
    by_dtype: Counter[str] = Counter()
    for site in sites:
        by_dtype[helper.tensor_dtype_to_string(site.tensor.data_type).split(".")[-1]] += _nbytes(
            site.tensor
        )
    ops: Counter[str] = Counter()
    op_bytes: Counter[str] = Counter()
    sizes = {s.name: _nbytes(s.tensor) for s in sites}
    for g in iter_graphs(graph):
        for node in g.node:
            ops[node.op_type] += 1
            op_bytes[node.op_type] += sum(sizes.get(i, 0) for i in node.input)
    largest = sorted(
        (s for s in sites if s.tensor.data_type in PARAMETER_TYPES),
        key=lambda s: _nbytes(s.tensor),
        reverse=True,
    )[:top]
    return {
        "path": str(model.path),
        "ir_version": proto.ir_version,
        "opsets": {(imp.domain or "ai.onnx"): imp.version for imp in proto.opset_import},
        "producer": f"{proto.producer_name} {proto.producer_version}".strip(),
        "inputs": [_value_info(v) for v in graph.input if v.name not in sizes],
        "outputs": [_value_info(v) for v in graph.output],
        "parameters": count_parameters(proto),
        "size_bytes": disk_size(model.path, files),
        "gzip_bytes": gzip_size(model.path, files),
        "gzip_estimated": gzip_estimated(disk_size(model.path, files)),
        "external_data": model.had_external_data,
        "nodes": sum(ops.values()),
        "weights_in_constant_nodes": len(constant_node_weights(proto)),
        "subgraphs": sum(1 for _ in iter_graphs(graph)) - 1,
        "bytes_by_dtype": dict(by_dtype.most_common()),
        "ops": {op: {"count": n, "weight_bytes": op_bytes[op]} for op, n in ops.most_common()},
        "largest_tensors": [_tensor_facts(model, s) for s in largest],
    }


def _value_info(vi: onnx.ValueInfoProto) -> dict[str, Any]:
    t = vi.type.tensor_type
    dims: list[int | str] = [
        d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim
    ]
    dtype = helper.tensor_dtype_to_string(t.elem_type).split(".")[-1] if t.elem_type else "?"
    return {"name": vi.name, "dtype": dtype, "shape": dims}


def _tensor_facts(model: Model, site: TensorSite) -> dict[str, Any]:
    values = np.asarray(read_array(site.tensor, model.base_dir))
    flat = values.reshape(-1)
    return {
        "name": site.name,
        "shape": list(site.tensor.dims),
        "dtype": helper.tensor_dtype_to_string(site.tensor.data_type).split(".")[-1],
        "bytes": _nbytes(site.tensor),
        "sparsity": float(np.count_nonzero(flat == 0) / flat.size) if flat.size else 0.0,
        "unique_values": int(np.unique(flat).size) if flat.size <= 50_000_000 else None,
        "in_constant_node": site.in_constant,
    }
