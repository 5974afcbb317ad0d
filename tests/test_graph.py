"""mcompress.graph: one naming scheme for what passes add, scopes of nested graphs, producers."""

from __future__ import annotations

import onnx
import pytest
from onnx import helper

from mcompress.graph import (
    FreshNames,
    input_reads,
    iter_graphs,
    producers,
    temporary_node_names,
)
from tests import builders


def _with_names(*outputs: str) -> onnx.ModelProto:
    """A chain of Identity nodes whose outputs carry the given names."""
    nodes, previous = [], "x"
    for out in outputs:
        nodes.append(helper.make_node("Identity", [previous], [out]))
        previous = out
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info(previous, onnx.TensorProto.FLOAT, [1])],
    )
    return helper.make_model(graph)


def test_fresh_names_never_reuse_a_name_of_any_graph() -> None:
    model = builders.if_subgraph()
    names = FreshNames(model)
    # "then_y" is a value inside the If's then-branch only.
    assert names.fresh("then_y") == "then_y_1"
    assert names.fresh("then_y") == "then_y_2"
    assert names.fresh("new") == "new"


def test_scopes_skip_numbers_any_name_starts_a_path_with() -> None:
    names = FreshNames(_with_names("mcp/0", "mcp/0/v", "mcp/2/x", "mcp/10"))
    assert [names.scope("mcp/") for _ in range(3)] == ["mcp/1", "mcp/3", "mcp/4"]
    assert names.fresh("mcp/5") == "mcp/5"
    assert names.scope("mcp/") == "mcp/6"
    assert names.scope("other/") == "other/0"


def test_temporary_node_names_are_unique_and_removed_even_after_an_error() -> None:
    model = _with_names("a", "b", "c")
    model.graph.node[1].name = "named"
    with pytest.raises(RuntimeError), temporary_node_names(model, FreshNames(model), "tmp/"):
        assert [n.name for n in model.graph.node] == ["tmp/Identity", "named", "tmp/Identity_1"]
        raise RuntimeError("the block failed")
    assert [n.name for n in model.graph.node] == ["", "named", ""]


def test_producers_and_nested_graphs() -> None:
    model = builders.if_subgraph()
    assert [g.name for g in iter_graphs(model.graph)] == ["if_model", "else", "then"]
    made_by = producers(model.graph)
    assert {name: node.name for name, node in made_by.items()} == {
        "s": "sum",
        "cond": "gt",
        "y": "if",
    }


def test_input_reads_counts_every_read_nested_ones_included() -> None:
    reads = input_reads(builders.if_subgraph().graph)
    # x: ReduceSum and both branches' MatMul; w_outer only from the then-branch.
    assert (reads["x"], reads["w_outer"], reads["w_inner"], reads["cond"]) == (3, 1, 1, 1)
    assert reads["y"] == 0


def test_iter_graphs_reads_graphs_of_control_flow_and_other_domains_only() -> None:
    """If branches and a custom-domain op's graph attribute are walked; a default-domain op's
    attributes are not read (only If, Loop, Scan and SequenceMap hold graphs there)."""
    model = builders.if_subgraph()
    body = helper.make_graph([], "custom_body", [], [])
    custom = helper.make_node("Fused", [], [], domain="com.example", body=body)
    # not a valid ONNX node: a graph attribute on Relu is never looked at
    odd = helper.make_node("Relu", ["x"], ["y"], body=helper.make_graph([], "relu_body", [], []))
    model.graph.node.extend([custom, odd])
    names = [graph.name for graph in iter_graphs(model.graph)]
    assert names == ["if_model", "else", "then", "custom_body"]
