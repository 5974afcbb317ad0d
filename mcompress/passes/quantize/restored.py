"""What the quantize pass makes of each weight, as float values: the same plan (`plan_step`) and the
same quantizers (`matmul`, `int4_storage`, weight-only `quantize`, onnxruntime's 4-bit Gather),
without rewriting the graph. `mcompress sensitivity` and `tune` feed these values in place of a
weight to measure what quantizing that layer alone costs.

Only weight quantization is covered (modes dynamic and weight-only): static mode also quantizes
activations, which depends on calibration data rather than on the weight.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mcompress.model_io import Model, read_array
from mcompress.passes.quantize import Config, plan_step
from mcompress.passes.quantize import matmul as quantize_matmul
from mcompress.passes.quantize import ort as quantize_ort
from mcompress.passes.quantize.int4_storage import Int4Weight
from mcompress.passes.quantize.math import quantize
from mcompress.passes.quantize.weights import find_targets


def restored_weights(model: Model, cfg: Config) -> dict[str, np.ndarray]:
    """{weight name: its values after the pass} for every float weight the pass quantizes
    (weights it leaves float are absent). Nodes the plan selects by name must be named."""
    if cfg.mode == "static":
        raise ValueError("restored_weights covers weight quantization, not mode: static")
    targets = {t.name: t for t in find_targets(model.proto, cfg.exclude)}
    step, _ = plan_step(model, cfg, list(targets.values()))
    planned = set(step.nodes) if step is not None else set()
    # 4-bit MatMuls of dynamic mode are written by mcompress (`_int4_matmuls`), the rest of a
    # 4-bit step by onnxruntime's quantizer.
    ours = step is not None and (
        step.kind == "dynamic"
        or (cfg.mode == "dynamic" and cfg.weights_symmetric
            and model.opset() >= quantize_matmul.MIN_OPSET)
    )  # fmt: skip
    restored: dict[str, np.ndarray] = {}
    for node in model.proto.graph.node:
        if node.name not in planned:
            continue
        name = node.input[0] if node.op_type == "Gather" else node.input[1]
        tensor = targets[name].tensor
        if name in restored:
            continue
        if node.op_type != "Gather" and ours:
            restored[name] = _matmul_weight(node, tensor, model.base_dir, cfg)
        else:
            restored[name] = _with_onnxruntime(node.op_type, tensor, model.base_dir, cfg)
    for target in targets.values():
        if target.name not in restored:
            weight = np.asarray(read_array(target.tensor, model.base_dir), dtype=np.float32)
            axis = target.axis if cfg.per_channel else None
            q = quantize(weight, axis=axis, symmetric=cfg.weights_symmetric)
            restored[target.name] = q.dequantize()
    return restored


def _matmul_weight(node: onnx.NodeProto, tensor: TensorProto, base_dir: Path, cfg: Config) -> Any:
    """A MatMul/Gemm weight as mcompress's dynamic rewrite stores it (int8, or 4-bit blocks)."""
    transposed = node.op_type == "Gemm" and any(
        a.name == "transB" and a.i == 1 for a in node.attribute
    )
    block, per_channel = (cfg.block_size, True) if cfg.bits == 4 else (None, cfg.per_channel)
    values, scale, zero_point, _ = quantize_matmul.quantize_weight(
        tensor, base_dir, per_channel, cfg.weights_symmetric, transposed, block
    )
    if isinstance(values, Int4Weight):
        weight = values.int8().astype(np.float32) * values.scale
    else:
        weight = (values.astype(np.float32) - zero_point.astype(np.float32)) * scale
    return np.ascontiguousarray(weight.T) if transposed else weight.astype(np.float32)


def _with_onnxruntime(op: str, tensor: TensorProto, base_dir: Path, cfg: Config) -> np.ndarray:
    """A weight as onnxruntime's 4-bit quantizer stores it (MatMulNBits, GatherBlockQuantized):
    the quantizer is run on a one-node model and the stored blocks are read back."""
    weight = np.asarray(read_array(tensor, base_dir), dtype=np.float32)
    inputs = ["w", "x"] if op == "Gather" else ["x", "w"]
    x_type = TensorProto.INT64 if op == "Gather" else TensorProto.FLOAT
    x_shape = [None] if op == "Gather" else [None, weight.shape[0]]
    graph = helper.make_graph(
        [helper.make_node(op, inputs, ["y"], name="node")],
        "weight",
        [helper.make_tensor_value_info("x", x_type, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(weight, "w")],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with tempfile.TemporaryDirectory(prefix="mcompress-restored-") as tmp:
        src, dst = Path(tmp) / "src.onnx", Path(tmp) / "dst.onnx"
        onnx.save_model(proto, str(src))
        quantize_ort.nbits(
            src, dst, {"node"}, block_size=cfg.block_size, symmetric=cfg.weights_symmetric,
            accuracy_level=None,
        )  # fmt: skip
        done = onnx.load(str(dst))
    inits = {t.name: t for t in done.graph.initializer}
    node = done.graph.node[0]
    if node.op_type in ("MatMulNBits", "GatherBlockQuantized"):
        return quantize_ort.block_weight(node, inits, Path(tmp))[0].reshape(weight.shape)
    return weight
