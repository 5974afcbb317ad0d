"""Dynamic int8 MatMul and Gemm, written by mcompress: onnxruntime's graph, whole tensors at once.

onnxruntime's `quantize_dynamic` with per-channel scales quantizes a weight one column at a
time in Python (most of its run time; benchmarks/README.md). This writes the
graph it writes for a MatMul with a constant 2-D weight - DynamicQuantizeLinear on the input,
MatMulInteger with an int8 weight, Cast, Mul by both scales, which onnxruntime fuses to
DynamicQuantizeMatMul when it loads the model - with one numpy pass per tensor. A Gemm (as
PyTorch exports `nn.Linear` on 2-D inputs, which `quantize_dynamic` leaves float) gets the
same graph on its weight (transposed when `transB`) plus an Add of its bias, which onnxruntime
fuses too (faster than the float Gemm).

Symmetric weights are signed int8 (zero point 0): onnxruntime's x86 U8S8 kernels are faster
than U8U8 (figures in benchmarks/README.md), and on ARM64 MLAS runs both through the same
dot-product kernel. Without VNNI,
x86 computes U8S8 with vpmaddubsw, whose int16 pair sums saturate for weights beyond +-64, so
there the weights get 7 bits (`reduce_range`, what onnxruntime advises); see `weight_bits`.
Asymmetric weights stay uint8 with a zero point.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from mcompress.graph import FreshNames
from mcompress.model_io import add_initializer, read_array, remove_initializers
from mcompress.passes.quantize import int4_storage
from mcompress.passes.quantize.math import error_stats, quantize

# DynamicQuantizeLinear is opset 11; older models keep these weights weight-only.
MIN_OPSET = 11
METHOD = "dynamic"


@dataclass
class Rewritten:
    """The error stats of the weights rewritten, and what `undo` needs to put them back."""

    rows: list[dict[str, Any]]
    originals: dict[str, onnx.NodeProto]  # name of the node now writing a MatMul's output
    added_nodes: set[str]
    added_initializers: set[str]
    removed: list[onnx.TensorProto]
    removed_inputs: list[onnx.ValueInfoProto]

    def undo(self, graph: onnx.GraphProto) -> None:
        """Restore the float MatMuls and their weights (the removed protos are still alive, so
        nothing is re-read); other edits made since, such as weight-only storage, stay."""
        body = []
        for node in graph.node:
            if node.name not in self.added_nodes:
                body.append(node)
            elif node.name in self.originals:
                body.append(self.originals[node.name])
        del graph.node[:]
        graph.node.extend(body)
        remove_initializers(graph, self.added_initializers)
        graph.initializer.extend(self.removed)
        graph.input.extend(self.removed_inputs)


def rewrite(
    proto: onnx.ModelProto,
    nodes: set[str],
    base_dir: Any,
    *,
    per_channel: bool,
    symmetric: bool,
    block_size: int | None = None,
) -> Rewritten:
    """Replace the named main-graph MatMul nodes, and Gemm nodes that `plain_gemm` accepts, by
    dynamic int8 ones; with `block_size`, symmetric weights are stored as 4-bit blocks
    (`int4_storage`) that onnxruntime rebuilds as int8 at load.

    Each node's second input must be a float32 2-D initializer read only by these nodes.
    An activation read by several of them is quantized once.
    """
    graph = proto.graph
    names = FreshNames(proto)
    inits = {t.name: t for t in graph.initializer}
    # (weight, transposed) -> its quantized values, scales and zero points
    weights: dict[tuple[str, bool], tuple[str, str, str]] = {}
    activations: dict[str, tuple[str, str, str]] = {}
    done = Rewritten([], {}, set(), set(), [], [])
    body: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.name not in nodes:
            body.append(node)
            continue
        x, w = node.input[:2]
        key = (w, _attr(node, "transB", 0) == 1)
        if key not in weights:
            values, scale, zero_point, row = quantize_weight(
                inits[w], base_dir, per_channel, symmetric, key[1], block_size
            )
            weights[key] = (
                names.fresh(f"{w}_quantized"),
                names.fresh(f"{w}_scale"),
                names.fresh(f"{w}_zero_point"),
            )
            if isinstance(values, int4_storage.Int4Weight):
                built, stored = int4_storage.rebuild_nodes(graph, values, w, weights[key][0], names)
                body.extend(built)
                done.added_nodes.update(n.name for n in built)
                done.added_initializers.update(stored)
            else:
                add_initializer(graph, values, weights[key][0])
            for array, name in zip((scale, zero_point), weights[key][1:], strict=True):
                add_initializer(graph, array, name)
            done.added_initializers.update(weights[key])
            done.rows.append(row)
        if x not in activations:
            activations[x] = (
                names.fresh(f"{x}_quantized"),
                names.fresh(f"{x}_scale"),
                names.fresh(f"{x}_zero_point"),
            )
            quantize_input = helper.make_node(
                "DynamicQuantizeLinear",
                [x],
                list(activations[x]),
                name=names.fresh(f"{x}_QuantizeLinear"),
            )
            body.append(quantize_input)
            done.added_nodes.add(quantize_input.name)
        added = _matmul_nodes(node, activations[x], weights[key], names)
        body.extend(added)
        done.added_nodes.update(n.name for n in added)
        done.originals[added[-1].name] = node
    replaced = {w for w, _ in weights}
    done.removed = [t for t in graph.initializer if t.name in replaced]
    done.removed_inputs = [i for i in graph.input if i.name in replaced]
    del graph.node[:]
    graph.node.extend(body)
    remove_initializers(graph, replaced)
    return done


def plain_gemm(node: onnx.NodeProto) -> bool:
    """A Gemm that is `A @ B (+ C)`, B maybe transposed: what this module can rewrite."""
    return (
        node.op_type == "Gemm"
        and node.domain in ("", "ai.onnx")
        and _attr(node, "transA", 0) == 0
        and _attr(node, "alpha", 1.0) == 1.0
        and (len(node.input) < 3 or not node.input[2] or _attr(node, "beta", 1.0) == 1.0)
    )


@cache
def weight_bits() -> int:
    """Bits of the signed weights: 7 on x86 CPUs without VNNI (or when the CPU flags cannot be
    read), where 8-bit weights saturate onnxruntime's U8S8 kernel; 8 elsewhere."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return 8
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return 7
    return 8 if {"avx512_vnni", "avx_vnni", "amx_int8"} & set(flags) else 7


def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def quantize_weight(
    tensor: onnx.TensorProto,
    base_dir: Any,
    per_channel: bool,
    symmetric: bool,
    transposed: bool,
    block_size: int | None,
) -> tuple[np.ndarray | int4_storage.Int4Weight, np.ndarray, np.ndarray, dict[str, Any]]:
    """(values, scales, zero points, error row) of a [K, N] weight (stored [N, K] when
    `transposed`), per column or tensor: int8 when symmetric, else uint8; 4-bit blocks when
    `block_size` is given, the weight symmetric and its rows whole blocks."""
    weight = np.asarray(read_array(tensor, base_dir), dtype=np.float32)
    if transposed:
        weight = np.ascontiguousarray(weight.T)
    if block_size and symmetric and int4_storage.fits(weight.shape[0], block_size):
        stored = int4_storage.quantize(weight, block_size)
        mse, sqnr = error_stats(weight, stored.int8() * stored.scale)
        row = _row(tensor, 4, mse, sqnr, weight.nbytes, stored.nbytes)
        return stored, stored.scale, np.zeros(stored.scale.shape, np.int8), row
    bits = weight_bits() if symmetric else 8
    q = quantize(weight, axis=1 if per_channel else None, symmetric=symmetric, bits=bits)
    mse, sqnr = error_stats(weight, q.dequantize())
    if q.zero_point is None:
        values, zero_point = q.values, np.zeros(q.scale.shape, np.int8)
    else:
        values, zero_point = q.values, q.zero_point
    shape = (-1,) if per_channel else ()
    scale, zero_point = q.scale.reshape(shape), zero_point.reshape(shape)
    after = values.nbytes + scale.nbytes + zero_point.nbytes
    return values, scale, zero_point, _row(tensor, bits, mse, sqnr, weight.nbytes, after)


def _row(
    tensor: onnx.TensorProto, bits: int, mse: float, sqnr: float, before: int, after: int
) -> dict[str, Any]:
    return {
        "name": tensor.name,
        "shape": [int(d) for d in tensor.dims],
        "bits": bits,
        "method": METHOD,
        "mse": mse,
        "sqnr_db": sqnr,
        "bytes_before": int(before),
        "bytes_after": int(after),
    }


def _matmul_nodes(
    node: onnx.NodeProto,
    activation: tuple[str, str, str],
    weight: tuple[str, str, str],
    names: FreshNames,
) -> list[onnx.NodeProto]:
    """MatMulInteger -> Cast -> Mul(x scale * w scale) [-> Add a Gemm's bias], writing the
    node's output."""
    x_q, x_scale, x_zero = activation
    w_q, w_scale, w_zero = weight
    base = node.output[0]
    scales = names.fresh(f"{base}_quant_scales_mul:0")
    product = names.fresh(f"{node.output[0]}_output_quantized")
    as_float = names.fresh(f"{product}_cast_output")
    bias = node.input[2] if node.op_type == "Gemm" and len(node.input) > 2 else ""
    scaled = names.fresh(f"{base}_scaled") if bias else base
    nodes = [
        helper.make_node(
            "Mul", [x_scale, w_scale], [scales], name=names.fresh(f"{base}_quant_scales_mul")
        ),
        helper.make_node(
            "MatMulInteger",
            [x_q, w_q, x_zero, w_zero],
            [product],
            name=names.fresh(f"{base}_quant"),
        ),
        helper.make_node(
            "Cast", [product], [as_float], name=names.fresh(f"{product}_cast"), to=TensorProto.FLOAT
        ),
        helper.make_node(
            "Mul",
            [as_float, scales],
            [scaled],
            name=names.fresh(f"{base}_quant_output_scale_mul"),
        ),
    ]
    if bias:
        nodes.append(
            helper.make_node("Add", [scaled, bias], [base], name=names.fresh(f"{base}_bias"))
        )
    return nodes
