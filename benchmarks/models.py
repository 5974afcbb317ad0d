"""Models the benchmarks generate (never committed): a MiniLM-shaped encoder, a big MLP.

The encoder is the graph PyTorch's exporter writes for a BERT encoder (token + position
embeddings, LayerNormalization, MatMul + Add projections, multi-head attention with
Reshape/Transpose, erf GELU), built with onnx.helper so benchmarks need no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class _Builder:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def weight(self, name: str, shape: tuple[int, ...], std: float = 0.02) -> str:
        value = self.rng.normal(0, std, shape).astype(np.float32)
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def const(self, name: str, value: Any, dtype: Any = np.float32) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def node(self, op: str, inputs: list[str], out: str, **attrs: Any) -> str:
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def linear(self, x: str, name: str, rows: int, cols: int) -> str:
        w = self.weight(f"{name}.weight", (rows, cols))
        b = self.weight(f"{name}.bias", (cols,))
        return self.node("Add", [self.node("MatMul", [x, w], f"{name}.mm"), b], name)

    def layer_norm(self, x: str, name: str, dim: int) -> str:
        g = self.const(f"{name}.gamma", np.ones(dim))
        b = self.const(f"{name}.beta", np.zeros(dim))
        return self.node("LayerNormalization", [x, g, b], name, axis=-1, epsilon=1e-12)


def encoder(
    path: Path, *, layers: int = 6, dim: int = 384, heads: int = 12, vocab: int = 30522
) -> Path:
    """A MiniLM-L6-sized encoder (22.7M parameters, 91 MB at the defaults); input
    `input_ids` [batch, sequence] int64, output `last_hidden_state`."""
    b = _Builder(0)
    head_dim, ffn = dim // heads, 4 * dim
    tokens = b.node("Gather", [b.weight("word_embeddings", (vocab, dim)), "input_ids"], "tok")
    shape = b.node("Shape", ["input_ids"], "ids_shape")
    seq = b.node("Gather", [shape, b.const("one", 1, np.int64)], "seq_len", axis=0)
    positions = b.node(
        "Range", [b.const("zero", 0, np.int64), seq, b.const("step", 1, np.int64)], "positions"
    )
    pos = b.node("Gather", [b.weight("position_embeddings", (512, dim)), positions], "pos")
    h = b.layer_norm(b.node("Add", [tokens, pos], "embedded"), "embeddings.norm", dim)
    split_heads = b.const("split_heads", [0, 0, heads, head_dim], np.int64)
    merge_heads = b.const("merge_heads", [0, 0, dim], np.int64)
    scale = b.const("attention_scale", head_dim**-0.5)
    for i in range(layers):
        p = f"layer{i}"

        def heads_of(x: str, perm: list[int], name: str) -> str:
            return b.node(
                "Transpose", [b.node("Reshape", [x, split_heads], f"{name}.r")], name, perm=perm
            )

        q = heads_of(b.linear(h, f"{p}.query", dim, dim), [0, 2, 1, 3], f"{p}.q")
        k = heads_of(b.linear(h, f"{p}.key", dim, dim), [0, 2, 3, 1], f"{p}.k")
        v = heads_of(b.linear(h, f"{p}.value", dim, dim), [0, 2, 1, 3], f"{p}.v")
        scores = b.node("Mul", [b.node("MatMul", [q, k], f"{p}.qk"), scale], f"{p}.scores")
        probs = b.node("Softmax", [scores], f"{p}.probs", axis=-1)
        context = b.node("MatMul", [probs, v], f"{p}.context")
        context = b.node(
            "Reshape",
            [b.node("Transpose", [context], f"{p}.context.t", perm=[0, 2, 1, 3]), merge_heads],
            f"{p}.context.merged",
        )
        attn = b.linear(context, f"{p}.output", dim, dim)
        h = b.layer_norm(b.node("Add", [attn, h], f"{p}.res1"), f"{p}.norm1", dim)
        up = b.linear(h, f"{p}.up", dim, ffn)
        erf = b.node(
            "Erf", [b.node("Mul", [up, b.const(f"{p}.rsqrt2", 2**-0.5)], f"{p}.u")], f"{p}.erf"
        )
        gelu = b.node(
            "Mul",
            [
                b.node(
                    "Mul",
                    [up, b.node("Add", [erf, b.const(f"{p}.one", 1.0)], f"{p}.e1")],
                    f"{p}.ue",
                ),
                b.const(f"{p}.half", 0.5),
            ],
            f"{p}.gelu",
        )
        down = b.linear(gelu, f"{p}.down", ffn, dim)
        h = b.layer_norm(b.node("Add", [down, h], f"{p}.res2"), f"{p}.norm2", dim)
    b.node("Identity", [h], "last_hidden_state")
    graph = helper.make_graph(
        b.nodes,
        "encoder",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"])],
        [
            helper.make_tensor_value_info(
                "last_hidden_state", TensorProto.FLOAT, ["batch", "sequence", dim]
            )
        ],
        b.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def big_mlp(path: Path, *, tensors: int = 38, dim: int = 4096) -> Path:
    """`tensors` square MatMul+Relu layers (dim 4096: 64 MB each, 2.55 GB at the defaults),
    weights in one external data file, written one tensor at a time."""
    nodes, inits, x = [], [], "x"
    data = path.with_name(path.name + ".data")
    offset = 0
    with data.open("wb") as out:
        for i in range(tensors):
            rng = np.random.default_rng(i)
            weight = rng.normal(0, dim**-0.5, (dim, dim)).astype(np.float32)
            out.write(weight.tobytes())
            tensor = onnx.TensorProto(name=f"w{i}", data_type=TensorProto.FLOAT, dims=[dim, dim])
            tensor.data_location = TensorProto.EXTERNAL
            for key, value in (
                ("location", data.name),
                ("offset", offset),
                ("length", weight.nbytes),
            ):
                tensor.external_data.add(key=key, value=str(value))
            offset += weight.nbytes
            inits.append(tensor)
            nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"h{i}"], name=f"mm{i}"))
            nodes.append(helper.make_node("Relu", [f"h{i}"], [f"r{i}"], name=f"relu{i}"))
            x = f"r{i}"
    graph = helper.make_graph(
        nodes,
        "big_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", dim])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["batch", dim])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path
