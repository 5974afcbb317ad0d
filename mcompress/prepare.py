"""Graph preparation run before compression passes so every weight is visible and worth packing.

Turns `Constant`-node tensors into initializers, lets readers of `Identity(weight)` read the
weight itself, folds BatchNormalization into the preceding Conv/ConvTranspose/Gemm (onnxruntime
does the same at load, so outputs do not change) and drops initializers nothing reads. Without
it, BN parameters and exporter leftovers cap every pass.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from mcompress.errors import ModelError
from mcompress.graph import FreshNames, iter_graphs, names_used, producers
from mcompress.model_io import Model, add_initializer, fill_tensor, remove_initializers


@dataclass
class Prepared:
    """What preparation changed, counted: the report's `prepare` section."""

    constants_to_initializers: int
    identities_bypassed: int
    batchnorms_folded: int
    unused_initializers_removed: int


def prepare(model: Model) -> Prepared:
    """Run all preparation steps, in this order; return their counts for the report."""
    return Prepared(
        constants_to_initializers=constants_to_initializers(model),
        identities_bypassed=bypass_identities(model),
        batchnorms_folded=fold_batchnorms(model),
        unused_initializers_removed=remove_unused_initializers(model),
    )


def constants_to_initializers(model: Model) -> int:
    """Move `Constant` nodes holding a tensor into their graph's initializers."""
    moved = 0
    needs_inputs = model.proto.ir_version < 4
    for graph in model.graphs():
        keep = []
        for node in graph.node:
            tensor = _constant_tensor(node)
            if tensor is None:
                keep.append(node)
                continue
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
            if needs_inputs:
                graph.input.append(
                    helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims)
                )
            moved += 1
        if moved:
            del graph.node[:]
            graph.node.extend(keep)
    return moved


def bypass_identities(model: Model) -> int:
    """Point readers of `Identity(initializer)` at the initializer and drop the Identity.

    Exporters write these for weights shared between layers (PyTorch deduplicates equal
    tensors): behind the Identity, no pass sees those layers' MatMul/Gemm as weight readers.
    Identities that produce a graph output stay.
    """
    bypassed = 0
    for graph in model.graphs():
        sources = {t.name for t in graph.initializer}
        outputs = {o.name for o in graph.output}
        alias: dict[str, str] = {}
        for node in graph.node:
            if (
                node.op_type == "Identity"
                and node.domain in ("", "ai.onnx")
                and len(node.input) == 1
                and node.input[0] in sources
                and node.output[0] not in outputs
            ):
                alias[node.output[0]] = alias.get(node.input[0], node.input[0])
                sources.add(node.output[0])
        if not alias:
            continue
        for inner in iter_graphs(graph):
            for node in inner.node:
                for slot, name in enumerate(node.input):
                    if name in alias:
                        node.input[slot] = alias[name]
        for entries in (graph.node, graph.value_info):
            for index in reversed(range(len(entries))):
                entry = entries[index]
                names = entry.output if isinstance(entry, onnx.NodeProto) else [entry.name]
                if any(name in alias for name in names):
                    del entries[index]
        bypassed += len(alias)
    return bypassed


def _constant_tensor(node: onnx.NodeProto) -> onnx.TensorProto | None:
    if node.op_type != "Constant" or node.domain not in ("", "ai.onnx") or len(node.output) != 1:
        return None
    for attr in node.attribute:
        if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(attr.t)
            return tensor
    return None


def remove_unused_initializers(model: Model) -> int:
    """Drop initializers (and their graph-input twins) that no node or output reads."""
    removed = 0
    for graph in model.graphs():
        used = names_used(graph)
        unused = {t.name for t in graph.initializer if t.name not in used}
        if not unused:
            continue
        remove_initializers(graph, unused)
        removed += len(unused)
    return removed


def fold_batchnorms(model: Model) -> int:
    """Fold inference-mode BatchNormalization into the producing Conv/ConvTranspose/Gemm."""
    folded = 0
    names = FreshNames(model.proto)
    for graph in model.graphs():
        folded += _fold_in_graph(model, graph, names)
    return folded


def _fold_in_graph(model: Model, graph: onnx.GraphProto, names: FreshNames) -> int:
    inits = {t.name: t for t in graph.initializer}
    readers: Counter[str] = Counter()
    for g in iter_graphs(graph):
        for node in g.node:
            readers.update(set(node.input))
    outputs = {o.name for o in graph.output}
    producer = producers(graph)
    removed: set[int] = set()
    for bn in graph.node:
        if bn.op_type != "BatchNormalization" or len(bn.output) != 1:
            continue
        layer = producer.get(bn.input[0])
        if layer is None or layer.op_type not in ("Conv", "ConvTranspose", "Gemm"):
            continue
        if readers[bn.input[0]] != 1 or bn.input[0] in outputs:
            continue
        params = [inits.get(name) for name in bn.input[1:5]]
        weight = inits.get(layer.input[1]) if len(layer.input) > 1 else None
        if weight is None or any(p is None for p in params) or readers[weight.name] != 1:
            continue
        bias_name = layer.input[2] if len(layer.input) > 2 and layer.input[2] else None
        bias = inits.get(bias_name) if bias_name else None
        if bias_name and (bias is None or readers[bias_name] != 1):
            continue
        if not _fold_pair(model, graph, layer, bn, weight, bias, params, names):  # type: ignore[arg-type]
            continue
        layer.output[0] = bn.output[0]
        removed.add(id(bn))
    if removed:
        kept = [n for n in graph.node if id(n) not in removed]
        del graph.node[:]
        graph.node.extend(kept)
    return len(removed)


def _fold_pair(
    model: Model,
    graph: onnx.GraphProto,
    layer: onnx.NodeProto,
    bn: onnx.NodeProto,
    weight: onnx.TensorProto,
    bias: onnx.TensorProto | None,
    params: list[onnx.TensorProto],
    names: FreshNames,
) -> bool:
    from mcompress.model_io import read_array

    eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
    gamma, beta, mean, var = (read_array(p, model.base_dir).astype(np.float64) for p in params)
    w = read_array(weight, model.base_dir)
    if w.dtype != np.float32 or gamma.ndim != 1:
        return False
    scale = gamma / np.sqrt(var + eps)
    attrs = {a.name: helper.get_attribute_value(a) for a in layer.attribute}
    if layer.op_type == "Conv":
        axis = 0
    elif layer.op_type == "ConvTranspose":
        if attrs.get("group", 1) != 1:
            return False
        axis = 1
    else:
        if attrs.get("transA", 0) or w.ndim != 2:
            return False
        axis = 0 if attrs.get("transB", 0) else 1
    if w.shape[axis] != scale.size:
        return False
    shape = [1] * w.ndim
    shape[axis] = scale.size
    new_w = (w.astype(np.float64) * scale.reshape(shape)).astype(np.float32)
    b = np.zeros(scale.size) if bias is None else read_array(bias, model.base_dir)
    if layer.op_type == "Gemm":
        alpha = float(attrs.get("alpha", 1.0))
        b = np.broadcast_to(float(attrs.get("beta", 1.0)) * np.asarray(b, np.float64), scale.shape)
        new_w = (new_w * alpha).astype(np.float32)
        _set_attr(layer, "alpha", 1.0)
        _set_attr(layer, "beta", 1.0)
    elif b.shape != scale.shape:
        return False
    new_b = ((np.asarray(b, np.float64) - mean) * scale + beta).astype(np.float32)
    fill_tensor(weight, new_w, weight.name)
    if bias is not None:
        fill_tensor(bias, new_b, bias.name)
    else:
        name = names.fresh(weight.name + "_bn_bias")
        add_initializer(graph, new_b, name)
        while len(layer.input) < 3:
            layer.input.append("")
        layer.input[2] = name
    return True


def _set_attr(node: onnx.NodeProto, name: str, value: float) -> None:
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend([*kept, helper.make_attribute(name, value)])


def reject_nan_weights(model: Model) -> None:
    """Fail before any work when a float weight holds NaN, or when a layer weight (read by a
    Conv, Gemm, MatMul, recurrent layer or as Gather's table) holds +-inf: every statistic a
    pass computes (thresholds, scales, centroids) would be meaningless, and so would the
    output. Other constants may hold -inf on purpose (attention masks read by Add or Where)."""
    layer_weights = _layer_weight_names(model)
    for weight in model.weights():
        values = weight.array()
        if values.dtype.kind != "f":
            continue
        flat = values.reshape(-1)
        starts = range(0, flat.size, _CHUNK)
        check_inf = weight.name in layer_weights
        for start in starts:
            chunk = flat[start : start + _CHUNK]
            # min() is NaN when any value is, and faster than counting them.
            low = chunk.min()
            if np.isnan(low):
                nans = sum(int(np.isnan(flat[i : i + _CHUNK]).sum()) for i in starts)
                raise _broken(weight.name, f"{nans} NaN value(s)")
            if check_inf and (np.isinf(low) or np.isinf(chunk.max())):
                infs = sum(int(np.isinf(flat[i : i + _CHUNK]).sum()) for i in starts)
                raise _broken(weight.name, f"{infs} infinite value(s)")


def _broken(name: str, what: str) -> ModelError:
    return ModelError(
        f"weight '{name}' has {what}; the model is broken",
        "re-export or fix the model before compressing it",
    )


_LAYER_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "LSTM", "GRU", "RNN"}


def _layer_weight_names(model: Model) -> set[str]:
    """Names read as weights by layers: any input of a Conv/Gemm/MatMul/recurrent node, and
    the table (input 0) of a Gather."""
    names: set[str] = set()
    for graph in model.graphs():
        for node in graph.node:
            if node.op_type in _LAYER_OPS:
                names.update(node.input)
            elif node.op_type == "Gather" and node.input:
                names.add(node.input[0])
    return names


_CHUNK = 1 << 24
