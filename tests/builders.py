"""Tiny models built with onnx.helper, shaped like real files (Constant weights, If, external)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

IR_VERSION = 8
OPSET = 17


def _model(graph: onnx.GraphProto, opset: int = OPSET, ir: int = IR_VERSION) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir
    onnx.checker.check_model(model)
    return model


def _init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.ascontiguousarray(array), name)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def mlp(hidden: int = 64, inputs: int = 32, classes: int = 10, seed: int = 0) -> onnx.ModelProto:
    """MatMul+Add+Relu x2 then Softmax: a classifier-like model with initializer weights."""
    r = rng(seed)
    inits = [
        _init("w1", r.normal(0, 0.2, (inputs, hidden)).astype(np.float32)),
        _init("b1", r.normal(0, 0.1, (hidden,)).astype(np.float32)),
        _init("w2", r.normal(0, 0.2, (hidden, classes)).astype(np.float32)),
        _init("b2", r.normal(0, 0.1, (classes,)).astype(np.float32)),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h0"], name="fc1"),
        helper.make_node("Add", ["h0", "b1"], ["h1"], name="fc1_bias"),
        helper.make_node("Relu", ["h1"], ["h2"], name="relu1"),
        helper.make_node("MatMul", ["h2", "w2"], ["l0"], name="fc2"),
        helper.make_node("Add", ["l0", "b2"], ["logits"], name="fc2_bias"),
        helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", inputs])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", classes])],
        inits,
    )
    return _model(graph)


def conv_bn(channels: int = 8, seed: int = 0, in_constants: bool = False) -> onnx.ModelProto:
    """Conv-BN-Relu-Conv-GAP-Flatten-Gemm; weights in Constant nodes when `in_constants`."""
    r = rng(seed)
    weights = {
        "c1_w": r.normal(0, 0.3, (channels, 3, 3, 3)).astype(np.float32),
        "c1_b": r.normal(0, 0.1, (channels,)).astype(np.float32),
        "bn_scale": r.uniform(0.5, 1.5, (channels,)).astype(np.float32),
        "bn_bias": r.normal(0, 0.1, (channels,)).astype(np.float32),
        "bn_mean": r.normal(0, 0.1, (channels,)).astype(np.float32),
        "bn_var": r.uniform(0.5, 1.5, (channels,)).astype(np.float32),
        "c2_w": r.normal(0, 0.3, (channels, channels, 3, 3)).astype(np.float32),
        "fc_w": r.normal(0, 0.3, (4, channels)).astype(np.float32),
        "fc_b": r.normal(0, 0.1, (4,)).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "c1_w", "c1_b"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node(
            "BatchNormalization",
            ["c1", "bn_scale", "bn_bias", "bn_mean", "bn_var"],
            ["bn"],
            name="bn1",
        ),
        helper.make_node("Relu", ["bn"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "c2_w"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["c2"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="fc", transB=1),
    ]
    if in_constants:
        consts = [
            helper.make_node("Constant", [], [name], value=_init(name, value))
            for name, value in weights.items()
        ]
        nodes = consts + nodes
        inits = []
    else:
        inits = [_init(name, value) for name, value in weights.items()]
    graph = helper.make_graph(
        nodes,
        "conv_bn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])],
        inits,
    )
    return _model(graph)


def if_subgraph(seed: int = 0) -> onnx.ModelProto:
    """An `If` whose branches use an outer-scope weight and a weight of their own."""
    r = rng(seed)
    outer = _init("w_outer", r.normal(0, 0.3, (16, 16)).astype(np.float32))
    inner = _init("w_inner", r.normal(0, 0.3, (16, 16)).astype(np.float32))

    def branch(name: str, weight: str, inits: list[onnx.TensorProto]) -> onnx.GraphProto:
        return helper.make_graph(
            [helper.make_node("MatMul", ["x", weight], [f"{name}_y"], name=f"{name}_mm")],
            name,
            [],
            [helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, None)],
            inits,
        )

    nodes = [
        helper.make_node("ReduceSum", ["x"], ["s"], name="sum", keepdims=0),
        helper.make_node("Greater", ["s", "zero"], ["cond"], name="gt"),
        helper.make_node(
            "If",
            ["cond"],
            ["y"],
            name="if",
            then_branch=branch("then", "w_outer", []),
            else_branch=branch("else", "w_inner", [inner]),
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "if_model",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])],
        [outer, _init("zero", np.array(0, np.float32))],
    )
    return _model(graph)


def transformer_like(vocab: int = 2000, dim: int = 64, seed: int = 0) -> onnx.ModelProto:
    """Gather embedding + two MatMul layers + mean pool: dominated by the embedding table."""
    r = rng(seed)
    inits = [
        _init("embedding", r.normal(0, 0.5, (vocab, dim)).astype(np.float32)),
        _init("w_q", r.normal(0, 0.2, (dim, dim)).astype(np.float32)),
        _init("w_ff", r.normal(0, 0.2, (dim, 4 * dim)).astype(np.float32)),
        _init("w_out", r.normal(0, 0.2, (4 * dim, dim)).astype(np.float32)),
    ]
    nodes = [
        helper.make_node("Gather", ["embedding", "tokens"], ["emb"], name="embed", axis=0),
        helper.make_node("MatMul", ["emb", "w_q"], ["q"], name="q_proj"),
        helper.make_node("Relu", ["q"], ["q_act"], name="q_relu"),
        helper.make_node("MatMul", ["q_act", "w_ff"], ["ff"], name="ff1"),
        helper.make_node("Relu", ["ff"], ["ff_act"], name="ff_relu"),
        helper.make_node("MatMul", ["ff_act", "w_out"], ["y"], name="ff2"),
    ]
    graph = helper.make_graph(
        nodes,
        "transformer_like",
        [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", dim])],
        inits,
    )
    return _model(graph)


def residual(channels: int = 8, seed: int = 0) -> onnx.ModelProto:
    """Conv-BN-Relu-Conv + skip Add (the classic residual block), then GAP+Gemm."""
    r = rng(seed)
    inits = [
        _init("stem_w", r.normal(0, 0.3, (channels, 3, 3, 3)).astype(np.float32)),
        _init("a_w", r.normal(0, 0.3, (channels, channels, 3, 3)).astype(np.float32)),
        _init("bn_s", r.uniform(0.5, 1.5, (channels,)).astype(np.float32)),
        _init("bn_b", r.normal(0, 0.1, (channels,)).astype(np.float32)),
        _init("bn_m", r.normal(0, 0.1, (channels,)).astype(np.float32)),
        _init("bn_v", r.uniform(0.5, 1.5, (channels,)).astype(np.float32)),
        _init("b_w", r.normal(0, 0.3, (channels, channels, 3, 3)).astype(np.float32)),
        _init("fc_w", r.normal(0, 0.3, (4, channels)).astype(np.float32)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "stem_w"], ["stem"], name="stem", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["stem", "a_w"], ["a"], name="conv_a", pads=[1, 1, 1, 1]),
        helper.make_node(
            "BatchNormalization", ["a", "bn_s", "bn_b", "bn_m", "bn_v"], ["a_bn"], name="bn_a"
        ),
        helper.make_node("Relu", ["a_bn"], ["a_r"], name="relu_a"),
        helper.make_node("Conv", ["a_r", "b_w"], ["b"], name="conv_b", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["b", "stem"], ["res"], name="skip_add"),
        helper.make_node("GlobalAveragePool", ["res"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc_w"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "residual",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])],
        inits,
    )
    return _model(graph)


def save(model: onnx.ModelProto, path: Path, external: bool = False) -> Path:
    """Save a built model, optionally with all tensors in one external data file."""
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=external,
        all_tensors_to_one_file=True,
        location=path.name + ".data",
        size_threshold=0,
    )
    return path


def run(path: Path | str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run a model file in a fresh onnxruntime CPU session."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def reflect_pad_vad(seed: int = 0) -> onnx.ModelProto:
    """Like the silero-vad package's export: `input [?, ?]`, `state [2, ?, 16]`, scalar `sr`,
    weights in `If` branches; its reflect Pad (64 each side) rejects inputs of <= 64 samples."""
    r = rng(seed)
    branches = []
    for label in ("then", "else"):
        w = _init(f"{label}_w", r.normal(0, 0.2, (16, 16)).astype(np.float32))
        nodes = [
            helper.make_node(
                "Pad", ["input", "pads"], ["padded"], name=f"{label}_pad", mode="reflect"
            ),
            helper.make_node("ReduceMean", ["padded"], ["mean"], axes=[1], keepdims=1),
            helper.make_node("Expand", ["mean", "wide"], ["feat"]),
            helper.make_node("MatMul", ["feat", f"{label}_w"], [f"{label}_out"]),
        ]
        out = helper.make_tensor_value_info(f"{label}_out", TensorProto.FLOAT, None)
        branches.append(helper.make_graph(nodes, label, [], [out], [w]))
    inits = [
        _init("pads", np.array([0, 64, 0, 64], np.int64)),
        _init("wide", np.array([1, 16], np.int64)),
        _init("rate", np.array(16000, np.int64)),
        _init("zero", np.array([0], np.int64)),
        _init("one", np.array([1], np.int64)),
        _init("three", np.array([3], np.int64)),
    ]
    nodes = [
        helper.make_node("Equal", ["sr", "rate"], ["is16k"]),
        helper.make_node(
            "If", ["is16k"], ["feat"], then_branch=branches[0], else_branch=branches[1]
        ),
        helper.make_node("Unsqueeze", ["feat", "zero"], ["feat3"]),
        helper.make_node("Concat", ["state", "feat3"], ["both"], axis=0),  # batch must match
        helper.make_node("Slice", ["both", "one", "three", "zero"], ["stateN"]),
        helper.make_node("ReduceMean", ["feat"], ["score"], axes=[1], keepdims=1),
        helper.make_node("Sigmoid", ["score"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "vad",
        [
            helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, None]),
            helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, None, 16]),
            helper.make_tensor_value_info("sr", TensorProto.INT64, []),
        ],
        [
            helper.make_tensor_value_info("output", TensorProto.FLOAT, [None, 1]),
            helper.make_tensor_value_info("stateN", TensorProto.FLOAT, [2, None, 16]),
        ],
        inits,
    )
    return _model(graph)


def pixel_attention(channels: int = 8, seed: int = 0) -> onnx.ModelProto:
    """Self-attention over the pixels of `x [N, C, H, W]` (H, W dynamic): scores
    [N, H*W, D] x [N, D, H*W] -> [N, H*W, H*W], quartic in the image side (10 GB at 224x224)."""
    r = rng(seed)
    inits = [
        _init("to_seq", np.array([0, channels, -1], np.int64)),
        _init("wq", r.normal(0, 0.2, (channels, channels)).astype(np.float32)),
    ]
    nodes = [
        helper.make_node("Reshape", ["x", "to_seq"], ["seq_t"]),
        helper.make_node("Transpose", ["seq_t"], ["seq"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["seq", "wq"], ["q"]),
        helper.make_node("MatMul", ["q", "seq_t"], ["scores"]),
        helper.make_node("Softmax", ["scores"], ["attn"], axis=-1),
        helper.make_node("MatMul", ["attn", "seq"], ["mixed"]),
        helper.make_node("ReduceMean", ["mixed"], ["y"], axes=[1], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "pixel_attention",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", channels, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", channels])],
        inits,
    )
    return _model(graph)
