"""Short names for the nodes and values a tool added to a model.

onnxruntime's quantizers name what they add after what it quantizes (`conv1_weights_quantized`,
`x_QuantizeLinear_Output`, `Constant@11_DequantizeLinear`): on the ppocr classifier a third
of the statically quantized file was names. Names of the model before the tool ran stay (graph
inputs and outputs, the nodes `exclude` names, the weights a report lists); every other name
gets a short one (`_0`, `_1`, ... in base 36). One model-wide mapping, injective and clear of
every kept name, renames each name everywhere it occurs (subgraph reads of outer-scope values,
branch outputs, initializers), so the model computes exactly what it did.
"""

from __future__ import annotations

from collections.abc import Iterator, Set

import onnx

from mcompress.graph import iter_graphs

_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


def compact_names(proto: onnx.ModelProto, kept: Set[str]) -> int:
    """Rename, in place, every node and value name of `proto` not in `kept` to a shorter one;
    returns how many names changed. Models with functions or training info are left alone
    (their bodies name values too)."""
    if len(proto.functions) or len(proto.training_info):
        return 0
    kept = kept | {v.name for v in (*proto.graph.input, *proto.graph.output)}
    names = [name for name in _names_in_order(proto) if name not in kept]
    short = _short_names(kept | set(names))
    mapping = {}
    for name in names:
        new = next(short)
        if len(new) < len(name):
            mapping[name] = new
    if mapping:
        _rename(proto, mapping)
    return len(mapping)


def _names_in_order(proto: onnx.ModelProto) -> list[str]:
    """Every node and value name, each once, in the order the graphs first mention it."""
    seen: dict[str, None] = {}
    for graph in iter_graphs(proto.graph):
        seen.update(dict.fromkeys(v.name for v in graph.input))
        seen.update(dict.fromkeys(t.name for t in graph.initializer))
        seen.update(dict.fromkeys(s.values.name for s in graph.sparse_initializer))
        for node in graph.node:
            seen.update(dict.fromkeys((node.name, *node.input, *node.output)))
        seen.update(dict.fromkeys(v.name for v in (*graph.output, *graph.value_info)))
    seen.pop("", None)
    return list(seen)


def _short_names(taken: Set[str]) -> Iterator[str]:
    """`_0` ... `_z`, `_10`, ...: base-36 numbers, skipping every name in `taken`."""
    number = 0
    while True:
        digits, rest = "", number
        while True:
            rest, digit = divmod(rest, len(_DIGITS))
            digits = _DIGITS[digit] + digits
            if not rest:
                break
        number += 1
        if f"_{digits}" not in taken:
            yield f"_{digits}"


def _rename(proto: onnx.ModelProto, mapping: dict[str, str]) -> None:
    def renamed(name: str) -> str:
        return mapping.get(name, name)

    for graph in iter_graphs(proto.graph):
        for node in graph.node:
            node.name = renamed(node.name)
            for names in (node.input, node.output):
                for index, name in enumerate(names):
                    names[index] = renamed(name)
        for info in (*graph.input, *graph.output, *graph.value_info):
            info.name = renamed(info.name)
        for tensor in graph.initializer:
            tensor.name = renamed(tensor.name)
        for sparse in graph.sparse_initializer:
            sparse.values.name = renamed(sparse.values.name)
            sparse.indices.name = renamed(sparse.indices.name)
        for annotation in graph.quantization_annotation:
            annotation.tensor_name = renamed(annotation.tensor_name)
