"""The pass contract (passes/base.py), checked in one place: requires -> apply -> ensures."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

import pytest
from onnx import helper

from mcompress import model_io
from mcompress.passes import PASSES
from mcompress.passes.base import (
    ContractError,
    PassConfig,
    PassContext,
    PassResult,
    apply_pass,
    check_pass,
    graph_defects,
)
from tests import builders


class _Config(PassConfig):
    type: Literal["fake"] = "fake"


def _fake(apply: Callable[[model_io.Model], PassResult]) -> Any:
    return SimpleNamespace(
        Config=_Config,
        summary="a pass for the test",
        check=lambda model, cfg: None,
        apply=lambda model, cfg, ctx: apply(model),
    )


def _model(tmp_path: Path) -> model_io.Model:
    return model_io.load_model(builders.save(builders.mlp(), tmp_path / "mlp.onnx"))


def _ctx(tmp_path: Path) -> PassContext:
    return PassContext(input_path=tmp_path / "mlp.onnx")


def test_a_pass_that_keeps_the_graph_whole_returns_its_result(tmp_path: Path) -> None:
    model = _model(tmp_path)
    result = PassResult(True, {"changed": 1})
    assert apply_pass(_fake(lambda m: result), model, _Config(), _ctx(tmp_path)) is result


def test_a_dangling_input_breaks_the_contract(tmp_path: Path) -> None:
    def cut(model: model_io.Model) -> PassResult:
        model.proto.graph.node[0].input[1] = "gone"
        return PassResult(True, {"changed": 1})

    with pytest.raises(ContractError, match="pass fake left a broken graph: MatMul 'fc1' reads"):
        apply_pass(_fake(cut), _model(tmp_path), _Config(), _ctx(tmp_path))


def test_no_stats_or_a_foreign_config_breaks_the_contract(tmp_path: Path) -> None:
    model = _model(tmp_path)
    with pytest.raises(ContractError, match="pass fake returned no stats"):
        apply_pass(_fake(lambda m: PassResult(False)), model, _Config(), _ctx(tmp_path))
    with pytest.raises(ContractError, match="Config given to a pass expecting _Config"):
        check_pass(_fake(lambda m: PassResult(False)), model, PASSES["strip"].Config())


def test_defects_the_input_already_had_are_not_the_pass_s_fault(tmp_path: Path) -> None:
    proto = builders.mlp()
    proto.graph.node.append(helper.make_node("Relu", ["nowhere"], ["r"], name="stray"))
    proto.graph.node.append(helper.make_node("Foo", ["x"], ["f"], name="f", domain="acme"))
    assert graph_defects(proto) == {
        "Relu 'stray' reads undefined 'nowhere'",
        "domain 'acme' has no opset import",
    }
    assert graph_defects(builders.if_subgraph()) == set()  # outer-scope reads are defined
    model = _model(tmp_path)
    model.proto.graph.node.append(helper.make_node("Relu", ["nowhere"], ["r"], name="stray"))
    result = PassResult(True, {"changed": 1})
    assert apply_pass(_fake(lambda m: result), model, _Config(), _ctx(tmp_path)) is result
