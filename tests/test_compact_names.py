"""compact_names: short names for what a tool added, the same computation to the bit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from mcompress.compact_names import compact_names
from mcompress.graph import iter_graphs, model_names
from tests import builders


def _long_names(proto: onnx.ModelProto) -> onnx.ModelProto:
    """`proto` with every name but the graph inputs and outputs made long, as onnxruntime's
    quantizers name what they add (`<name>_QuantizeLinear_Output`)."""
    kept = {v.name for v in (*proto.graph.input, *proto.graph.output)}
    long = {n: f"{n}_QuantizeLinear_Output" for n in model_names(proto) - kept}
    for graph in iter_graphs(proto.graph):
        for node in graph.node:
            node.name = long.get(node.name, node.name)
            node.input[:] = [long.get(n, n) for n in node.input]
            node.output[:] = [long.get(n, n) for n in node.output]
        for info in (*graph.input, *graph.output, *graph.value_info):
            info.name = long.get(info.name, info.name)
        for tensor in graph.initializer:
            tensor.name = long.get(tensor.name, tensor.name)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def test_an_if_model_with_outer_scope_reads_computes_the_same_after_renaming(
    tmp_path: Path,
) -> None:
    """The `then` branch reads the main graph's weight, the `else` branch its own: every name
    but `x` and `y` becomes `_0`..., the outer-scope read follows its initializer, and both
    branches give the same bits as before."""
    proto = _long_names(builders.if_subgraph())
    before = builders.save(proto, tmp_path / "long.onnx")
    renamed = compact_names(proto, frozenset())
    after = builders.save(proto, tmp_path / "short.onnx")
    onnx.checker.check_model(proto, full_check=True)
    names = model_names(proto)
    assert renamed == 12 == len(names - {"x", "y"})
    assert all(n in ("x", "y") or (n.startswith("_") and len(n) == 2) for n in names)
    [if_node] = [n for n in proto.graph.node if n.op_type == "If"]
    [then] = [a.g for a in if_node.attribute if a.name == "then_branch"]
    then_read = then.node[0].input[1]
    assert then_read in {t.name for t in proto.graph.initializer}
    assert (before.stat().st_size, after.stat().st_size) == (2846, 2373)
    for sign in (1.0, -1.0):  # sum > 0 takes `then`, else `else`
        x = sign * np.abs(builders.rng(1).normal(size=(1, 16))).astype(np.float32)
        [old], [new] = builders.run(before, {"x": x}), builders.run(after, {"x": x})
        assert np.array_equal(old, new)


def test_kept_names_stay_and_short_names_never_meet_them() -> None:
    """A kept name that looks like a short one (`_0`) is skipped, not reused."""
    proto = builders.mlp()
    proto.graph.node[0].output[0] = "_0"
    proto.graph.node[1].input[0] = "_0"
    kept = frozenset({"_0", "w1", "fc1"})
    compact_names(proto, kept)
    names = model_names(proto)
    assert kept <= names
    assert len([n for n in proto.graph.node if n.name == "fc1"]) == 1
    assert {n.name for n in proto.graph.node} == {"fc1", "_4", "_6", "_8", "_a", "_c"}


def test_a_name_no_longer_than_its_short_one_is_left() -> None:
    proto = builders.mlp()
    compact_names(proto, frozenset())
    assert "h0" in model_names(proto) and "fc1_bias" not in model_names(proto)
