"""`unpack`'s side: sparse initializers and mcompress expansions back to dense initializers,
evaluated in numpy."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from mcompress.encoding.plan import PREFIX, element_count
from mcompress.errors import ModelError
from mcompress.graph import names_used
from mcompress.model_io import Model, add_initializer, read_array


def densify_sparse(graph: onnx.GraphProto, model: Model) -> int:
    for sparse in graph.sparse_initializer:
        values = read_array(sparse.values, model.base_dir).reshape(-1)
        indices = read_array(sparse.indices, model.base_dir).astype(np.int64)
        shape = tuple(int(d) for d in sparse.dims)
        dense = np.zeros(element_count(shape), values.dtype)
        flat = indices if indices.ndim == 1 else np.ravel_multi_index(tuple(indices.T), shape)
        dense[flat] = values
        add_initializer(graph, dense.reshape(shape), sparse.values.name)
    count = len(graph.sparse_initializer)
    del graph.sparse_initializer[:]
    return count


def evaluate_expansions(
    graph: onnx.GraphProto, model: Model, outer: dict[str, onnx.TensorProto] | None = None
) -> int:
    """Evaluate `graph`'s expansions; an input it does not hold is read from `outer` (the
    packed tensors of enclosing graphs: an `If` branch's expansion may share them)."""
    ours = [n for n in graph.node if n.name.startswith(PREFIX)]
    if not ours:
        return 0
    env = {
        t.name: read_array(t, model.base_dir)
        for t in graph.initializer
        if t.name.startswith(PREFIX)
    }
    # Each value is dropped after its last use and each weight stored as soon as it is
    # restored, so unpacking holds one weight's expansion at a time.
    last_use = {name: index for index, node in enumerate(ours) for name in node.input}
    restored = 0
    for index, node in enumerate(ours):
        args = []
        for name in node.input:
            if name not in env and outer is not None and name in outer:
                env[name] = read_array(outer[name], model.base_dir)
            if name not in env:
                raise ModelError(f"cannot unpack '{node.name}': its input '{name}' is missing")
            args.append(env[name])
        for name in node.input:
            if last_use[name] == index:
                env.pop(name, None)
        output = node.output[0]
        if output.startswith(PREFIX):
            env[output] = _run(node, args)
        else:
            add_initializer(graph, _run(node, args), output)
            restored += 1
        del args
    rest = [n for n in graph.node if not n.name.startswith(PREFIX)]
    del graph.node[:]
    graph.node.extend(rest)
    infos = [v for v in graph.value_info if not v.name.startswith(PREFIX)]
    del graph.value_info[:]
    graph.value_info.extend(infos)
    used = names_used(graph)
    for index in reversed(range(len(graph.initializer))):
        name = graph.initializer[index].name
        if name.startswith(PREFIX) and name not in used:
            del graph.initializer[index]
    return restored


def _run(node: onnx.NodeProto, args: list[np.ndarray]) -> np.ndarray:
    """numpy for the few ops `pack` emits (exact integer and gather semantics)."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    op = node.op_type
    if op == "BitShift":
        shift = np.left_shift if attrs["direction"] == b"LEFT" else np.right_shift
        return np.asarray(shift(args[0], args[1]), dtype=args[0].dtype)
    if op == "Cast":
        return args[0].astype(helper.tensor_dtype_to_np_dtype(attrs["to"]))
    if op == "Reshape":
        return args[0].reshape(tuple(int(d) for d in args[1]))
    if op == "Slice":
        return args[0][int(args[1][0]) : int(args[2][0])]
    if op == "CumSum":
        return np.cumsum(args[0], axis=int(args[1]), dtype=args[0].dtype)
    if op == "Mul":
        return np.asarray(args[0] * args[1])
    if op == "Add":
        return np.asarray(args[0] + args[1])
    if op == "ConstantOfShape":
        fill = numpy_helper.to_array(attrs["value"]).reshape(-1)
        return np.full(tuple(int(d) for d in args[0]), fill[0], fill.dtype)
    if op == "ScatterElements":
        out = args[0].copy()
        out[args[1].astype(np.int64)] = args[2]
        return out
    if op == "Gather":
        return np.take(args[0], args[1].astype(np.int64), axis=int(attrs.get("axis", 0)))
    raise ModelError(f"cannot unpack '{node.name}': op {op} is not one mcompress emits")
