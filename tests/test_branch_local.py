"""Weights one `If` branch alone reads move into it, with their restore nodes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from mcompress.branch_local import localize
from tests import builders

DIM = 64


def _branch(name: str, weights: list[str]) -> onnx.GraphProto:
    nodes, x = [], "x"
    for i, weight in enumerate(weights):
        nodes.append(helper.make_node("MatMul", [x, weight], [f"{name}{i}"], name=f"{name}{i}"))
        x = f"{name}{i}"
    return helper.make_graph(
        nodes, name, [], [helper.make_tensor_value_info(x, TensorProto.FLOAT, None)]
    )


def _model() -> onnx.ModelProto:
    """then reads an int8 weight restored by Cast+Mul in the main graph and a shared weight;
    else reads a float weight and the shared one; a main-graph MatMul reads its own weight;
    a Loop body reads another."""
    r = builders.rng(0)

    def init(name: str, value: np.ndarray) -> onnx.TensorProto:
        return numpy_helper.from_array(value, name)

    weights = [
        init("q_then", r.integers(-127, 128, (DIM, DIM)).astype(np.int8)),
        init("scale_then", np.array(0.01, np.float32)),
        init("w_else", r.normal(0, 0.1, (DIM, DIM)).astype(np.float32)),
        init("w_shared", r.normal(0, 0.1, (DIM, DIM)).astype(np.float32)),
        init("w_main", r.normal(0, 0.1, (DIM, DIM)).astype(np.float32)),
        init("w_loop", r.normal(0, 0.1, (DIM, DIM)).astype(np.float32)),
        init("trips", np.array(2, np.int64)),
    ]
    loop_body = helper.make_graph(
        [
            helper.make_node("MatMul", ["carried", "w_loop"], ["carried_out"]),
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("carried", TensorProto.FLOAT, None),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("carried_out", TensorProto.FLOAT, None),
        ],
    )
    nodes = [
        helper.make_node("Cast", ["q_then"], ["q_then_float"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["q_then_float", "scale_then"], ["w_then"]),
        helper.make_node(
            "If",
            ["cond"],
            ["branch_y"],
            then_branch=_branch("then", ["w_then", "w_shared"]),
            else_branch=_branch("else", ["w_else", "w_shared"]),
        ),
        helper.make_node("MatMul", ["branch_y", "w_main"], ["main_y"]),
        helper.make_node("Loop", ["trips", "", "main_y"], ["y"], body=loop_body),
    ]
    graph = helper.make_graph(
        nodes,
        "branches",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, DIM]),
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, DIM])],
        weights,
    )
    return builders._model(graph)


def _branches(model: onnx.ModelProto) -> tuple[onnx.GraphProto, onnx.GraphProto]:
    node = next(n for n in model.graph.node if n.op_type == "If")
    found = {a.name: a.g for a in node.attribute}
    return found["then_branch"], found["else_branch"]


def _outputs(model: onnx.ModelProto) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = builders.rng(1).normal(size=(1, DIM)).astype(np.float32)
    return [session.run(None, {"x": x, "cond": np.array(c)})[0] for c in (True, False)]


def test_weights_one_branch_reads_move_into_it_with_their_restore_nodes() -> None:
    model = _model()
    before = _outputs(model)
    assert localize(model) == 5  # Cast, Mul, q_then, scale_then, w_else
    onnx.checker.check_model(model)
    then, other = _branches(model)
    assert [n.op_type for n in then.node] == ["Cast", "Mul", "MatMul", "MatMul"]
    assert sorted(t.name for t in then.initializer) == ["q_then", "scale_then"]
    assert [t.name for t in other.initializer] == ["w_else"]
    # read by both branches, by the main graph, by a Loop body: they stay
    assert sorted(t.name for t in model.graph.initializer) == [
        "trips", "w_loop", "w_main", "w_shared"
    ]  # fmt: skip
    after = _outputs(model)
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))


def test_an_initializer_that_is_also_a_graph_input_stays() -> None:
    model = _model()
    model.graph.input.append(helper.make_tensor_value_info("w_else", TensorProto.FLOAT, [DIM, DIM]))
    assert localize(model) == 4
    assert "w_else" in {t.name for t in model.graph.initializer}


def test_a_pruned_model_stores_branch_weights_in_the_branch_and_unpacks(tmp_path: Path) -> None:
    """End to end: the packed weights (sharing encoding constants with the main graph) land in
    their branch, the output validates, and compressing the output again unpacks them."""
    model = _model()
    source = builders.save(model, tmp_path / "m.onnx")
    pruned, again = tmp_path / "p.onnx", tmp_path / "again.onnx"
    for src, dst in ((source, pruned), (pruned, again)):
        done = subprocess.run(
            [sys.executable, "-m", "mcompress", "prune", str(src), "-o", str(dst)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
    out = onnx.load(str(pruned))
    _, other = _branches(out)
    assert any(n.op_type == "CumSum" for n in other.node)  # w_else's mask expansion
    assert "w_else" not in {t.name for t in out.graph.initializer}
