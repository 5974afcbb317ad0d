"""The fp16 pass: sizes and accuracy on real models, overflow protection, subgraphs, CLI."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from typer.testing import CliRunner

from mcompress import config, pipeline
from mcompress.cli import app
from mcompress.errors import PassError
from mcompress.graph import iter_graphs
from mcompress.model_io import load_model
from mcompress.passes import fp16
from mcompress.passes.base import PassContext, PassResult
from mcompress.passes.fp16.ops import FP16_CPU_KERNELS
from mcompress.prepare import prepare
from tests.builders import conv_bn, if_subgraph, mlp, run, save, transformer_like

F32, F16 = TensorProto.FLOAT, TensorProto.FLOAT16
NAIVE = {"compute": "all", "auto": False, "block_ops": []}


# ---------------------------------------------------------------- helpers


def _model(nodes: list, inputs: list, outputs: list, inits: list, opset: int = 18) -> Any:
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _init(name: str, values: Any) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values), name)


def _convert(
    src: Path, out: Path, data: Path | None = None, **options: Any
) -> tuple[PassResult, onnx.ModelProto]:
    """Run prepare + the fp16 pass like the pipeline does, save and reload the result."""
    model = load_model(src)
    cfg = fp16.Config(**options)
    fp16.check(model, cfg)
    prepare(model)
    result = fp16.apply(model, cfg, PassContext(input_path=src, data=data))
    onnx.checker.check_model(model.proto)
    from mcompress.model_io import save_model

    save_model(model, out)
    return result, onnx.load(str(out))


def _cast_pairs(model: onnx.ModelProto) -> int:
    """Cast nodes that read the output of another Cast (a redundant pair)."""
    pairs = 0
    for graph in iter_graphs(model.graph):
        cast_outputs = {n.output[0] for n in graph.node if n.op_type == "Cast"}
        pairs += sum(n.op_type == "Cast" and n.input[0] in cast_outputs for n in graph.node)
    return pairs


def _run_pipeline(src: Path, out: Path, passes: list[dict[str, Any]]) -> Any:
    cfg = config.build({"passes": passes, "validate": {"enabled": False}})
    return pipeline.run(cfg, pipeline.RunOptions(input_path=src, output=out))


# ---------------------------------------------------------------- test models


def overflow_model() -> onnx.ModelProto:
    """`big_mm` makes activations up to ~2e5 (beyond float16); `cancel` subtracts them from
    themselves: float32 gives 0, float16 compute gives inf - inf = NaN."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("MatMul", ["x", "w_big"], ["big"], name="big_mm"),
        helper.make_node("Sub", ["big", "big"], ["zero"], name="cancel"),
        helper.make_node("MatMul", ["x", "w"], ["h"], name="fc"),
        helper.make_node("Add", ["h", "zero"], ["y"], name="out"),
    ]
    inits = [
        _init("w_big", rng.uniform(1e4, 2e4, (8, 8)).astype(np.float32)),
        _init("w", rng.normal(0, 0.5, (8, 8)).astype(np.float32)),
    ]
    x = helper.make_tensor_value_info("x", F32, [1, 8])
    y = helper.make_tensor_value_info("y", F32, [1, 8])
    return _model(nodes, [x], [y], inits)


def overflow_data(path: Path) -> Path:
    x = np.random.default_rng(1).uniform(1.0, 2.0, (4, 1, 8)).astype(np.float32)
    np.savez(path, x=x)
    return path


def if_resize_model() -> onnx.ModelProto:
    """Resize (float scales, empty roi) then an If whose branches read an outer-scope weight and
    a weight of their own."""
    rng = np.random.default_rng(0)

    def branch(name: str, op: str, weight: str, inits: list) -> onnx.GraphProto:
        return helper.make_graph(
            [helper.make_node(op, ["up", weight], [f"{name}_y"], name=f"{name}_{op.lower()}")],
            name,
            [],
            [helper.make_tensor_value_info(f"{name}_y", F32, None)],
            inits,
        )

    w_inner = _init("w_inner", rng.normal(0, 1, (8, 8)).astype(np.float32))
    nodes = [
        helper.make_node("Resize", ["x", "roi", "scales"], ["up"], name="resize", mode="linear"),
        helper.make_node("ReduceSum", ["x"], ["s"], name="sum", keepdims=0),
        helper.make_node("Greater", ["s", "zero"], ["cond"], name="gt"),
        helper.make_node(
            "If",
            ["cond"],
            ["y"],
            name="if",
            then_branch=branch("then", "Mul", "w_outer", []),
            else_branch=branch("else", "Add", "w_inner", [w_inner]),
        ),
    ]
    inits = [
        _init("roi", np.array([], np.float32)),
        _init("scales", np.array([1, 1, 2, 2], np.float32)),
        _init("zero", np.array(0, np.float32)),
        _init("w_outer", rng.normal(0, 1, (8, 8)).astype(np.float32)),
    ]
    x = helper.make_tensor_value_info("x", F32, [1, 2, 4, 4])
    y = helper.make_tensor_value_info("y", F32, [1, 2, 8, 8])
    return _model(nodes, [x], [y], inits)


def shape_math_model() -> onnx.ModelProto:
    """Reshape to a shape computed in float (4098 * 0.5 = 2049, not representable in float16)."""
    nodes = [
        helper.make_node("Shape", ["x"], ["shp"], name="shape"),
        helper.make_node("Cast", ["shp"], ["shp_f"], name="to_float", to=F32),
        helper.make_node("Mul", ["shp_f", "factors"], ["new_f"], name="scale_shape"),
        helper.make_node("Cast", ["new_f"], ["new_shape"], name="to_int", to=TensorProto.INT64),
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("Reshape", ["r", "new_shape"], ["y"], name="reshape"),
    ]
    x = helper.make_tensor_value_info("x", F32, [2, 4098])
    y = helper.make_tensor_value_info("y", F32, [4, 2049])
    return _model(nodes, [x], [y], [_init("factors", np.array([2.0, 0.5], np.float32))])


def loop_model() -> onnx.ModelProto:
    """A Loop whose body reads an outer-scope weight three times over a carried value."""
    w = _init("w", np.random.default_rng(0).normal(0, 0.3, (8, 8)).astype(np.float32))
    body = helper.make_graph(
        [
            helper.make_node("MatMul", ["v", "w"], ["mm"], name="body_mm"),
            helper.make_node("Tanh", ["mm"], ["v_next"], name="body_tanh"),
            helper.make_node("Identity", ["cond_in"], ["cond_out"], name="body_cond"),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v", F32, [1, 8]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_next", F32, [1, 8]),
        ],
    )
    nodes = [helper.make_node("Loop", ["trips", "go", "x"], ["y"], name="loop", body=body)]
    inits = [w, _init("trips", np.array(3, np.int64)), _init("go", np.array(True))]
    x = helper.make_tensor_value_info("x", F32, [1, 8])
    y = helper.make_tensor_value_info("y", F32, [1, 8])
    return _model(nodes, [x], [y], inits)


# ---------------------------------------------------------------- real models


def _classifier_outputs(path: Path) -> np.ndarray:
    x = np.random.default_rng(0).uniform(-1, 1, (4, 3, 48, 192)).astype(np.float32)
    return run(path, {"x": x})[0]


def _vad_outputs(path: Path) -> np.ndarray:
    """Speech probabilities over 12 chained chunks of a noisy tone, state fed back."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    state = np.zeros((2, 1, 128), np.float32)
    probs = []
    for i in range(12):
        t = np.arange(512) + 512 * i
        chunk = 0.3 * np.sin(2 * np.pi * 220 * t / 16000) + rng.normal(0, 0.05, 512)
        feed = {"input": chunk[None].astype(np.float32), "sr": np.array(16000), "state": state}
        prob, state = session.run(None, feed)
        probs.append(prob)
    return np.concatenate(probs)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("fixture", "outputs", "limit"),
    [("classifier", _classifier_outputs, 0.56), ("vad", _vad_outputs, 0.62)],
)
def test_real_models_halve_and_match(
    request: pytest.FixtureRequest, tmp_path: Path, fixture: str, outputs: Any, limit: float
) -> None:
    src: Path = request.getfixturevalue(fixture)
    plain, stripped = tmp_path / "plain.onnx", tmp_path / "stripped.onnx"
    _run_pipeline(src, plain, [{"type": "fp16"}])
    _run_pipeline(src, stripped, [{"type": "strip"}, {"type": "fp16"}])
    size = os.path.getsize(src)
    assert os.path.getsize(plain) / size <= limit
    assert os.path.getsize(stripped) / size <= 0.52
    reference = outputs(src)
    for out in (plain, stripped):
        got = outputs(out)
        assert np.isfinite(got).all()
        assert np.abs(got - reference).max() <= 1e-2
        assert _cast_pairs(onnx.load(str(out))) == 0


def test_classifier_compute_all_has_no_cast_pairs(classifier: Path, tmp_path: Path) -> None:
    result, converted = _convert(classifier, tmp_path / "all.onnx", compute="all", auto_samples=2)
    assert result.stats["auto"]["ran"] and result.stats["auto"]["tensors_analysed"] > 200
    assert result.stats["nodes"]["half"] > 150
    assert _cast_pairs(converted) == 0
    got = _classifier_outputs(tmp_path / "all.onnx")
    assert np.abs(got - _classifier_outputs(classifier)).max() <= 1e-2


# ---------------------------------------------------------------- numeric safety


def _half_runtime(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """Outputs from onnx's reference evaluator, which computes float16 ops in float16 (as GPU
    providers do). onnxruntime's CPU provider would hide the overflow: it runs float16 nodes
    without a half kernel, and isolated half nodes, in float32."""
    with np.errstate(over="ignore", invalid="ignore"):
        return np.asarray(ReferenceEvaluator(str(path)).run(None, feeds)[0])


def test_naive_cast_overflows_and_auto_keeps_the_node(tmp_path: Path) -> None:
    src = save(overflow_model(), tmp_path / "overflow.onnx")
    data = overflow_data(tmp_path / "x.npz")
    x = np.load(data)["x"][0]
    reference = run(src, {"x": x})[0]

    naive, _ = _convert(src, tmp_path / "naive.onnx", **NAIVE)
    assert naive.stats["nodes"]["half"] == 4
    assert np.isnan(_half_runtime(tmp_path / "naive.onnx", {"x": x})).all()

    safe, _ = _convert(src, tmp_path / "safe.onnx", data=data, compute="all", block_ops=[])
    for got in (
        _half_runtime(tmp_path / "safe.onnx", {"x": x}),
        run(tmp_path / "safe.onnx", {"x": x})[0],
    ):
        assert np.isfinite(got).all()
        assert np.abs(got - reference).max() <= 1e-2
    kept = {k["node"]: k for k in safe.stats["kept_nodes"]}
    assert set(kept) == {"big_mm", "cancel"}
    assert kept["big_mm"]["reason"] == "overflow"
    assert kept["big_mm"]["tensor"] == "big"
    assert 1e5 < kept["big_mm"]["max_abs"] < 5e5
    assert safe.stats["nodes"]["half_ops"] == {"MatMul": 1, "Add": 1}
    assert any("auto kept 2 node(s) in float32: big_mm (overflow" in n for n in safe.notes)


def test_weights_beyond_float16_range_are_kept_or_clamped(tmp_path: Path) -> None:
    weights = np.random.default_rng(0).normal(0, 1, (16, 16)).astype(np.float32)
    weights[0, :3] = [1e5, -2e5, 7e4]
    weights[1, 0] = 1e-9  # underflows to zero in float16
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")]
    x, y = (helper.make_tensor_value_info(n, F32, [1, 16]) for n in ("x", "y"))
    src = save(_model(nodes, [x], [y], [_init("w", weights)]), tmp_path / "big.onnx")

    kept, model = _convert(src, tmp_path / "kept.onnx", compute="all")
    assert kept.stats["weights"]["out_of_range"] == {"tensors": 1, "values": 3}
    assert kept.stats["weights"]["kept_float32"] == {"out_of_range": 1}
    assert kept.stats["nodes"]["float32_reasons"] == {"weight_out_of_range": 1}
    assert model.graph.initializer[0].data_type == F32
    feed = {"x": np.ones((1, 16), np.float32)}
    assert np.array_equal(run(tmp_path / "kept.onnx", feed)[0], run(src, feed)[0])

    clamped, model = _convert(src, tmp_path / "clamped.onnx", compute="all", clamp=True)
    assert clamped.stats["weights"]["converted"] == 1
    assert clamped.stats["weights"]["underflow_to_zero"] == 1
    stored = numpy_helper.to_array(model.graph.initializer[0])
    assert stored.dtype == np.float16 and float(np.abs(stored).max()) == 65504.0
    assert any("beyond +-65504: clamped" in n for n in clamped.notes)


def test_shape_computations_stay_float32(tmp_path: Path) -> None:
    src = save(shape_math_model(), tmp_path / "shape.onnx")
    result, _ = _convert(src, tmp_path / "shape16.onnx", **NAIVE)
    # Relu and Reshape follow their float32 input: converting them would only add Casts.
    assert result.stats["nodes"]["float32_reasons"] == {"shape_computation": 1, "inputs_float32": 2}
    x = np.random.default_rng(0).normal(size=(2, 4098)).astype(np.float32)
    got = run(tmp_path / "shape16.onnx", {"x": x})[0]
    assert got.shape == (4, 2049)
    assert np.abs(got - np.maximum(x, 0).reshape(4, 2049)).max() <= 1e-2


def test_cast_from_int_feeding_half_is_one_cast(tmp_path: Path) -> None:
    nodes = [
        helper.make_node("Cast", ["mask"], ["mask_f"], name="mask_cast", to=F32),
        helper.make_node("Mul", ["x", "mask_f"], ["y"], name="apply_mask"),
    ]
    inputs = [
        helper.make_tensor_value_info("x", F32, [1, 8]),
        helper.make_tensor_value_info("mask", TensorProto.INT64, [1, 8]),
    ]
    y = helper.make_tensor_value_info("y", F32, [1, 8])
    src = save(_model(nodes, inputs, [y], []), tmp_path / "m.onnx")
    _, model = _convert(src, tmp_path / "m16.onnx", **NAIVE)
    casts = [n for n in model.graph.node if n.op_type == "Cast"]
    found = [(n.input[0], n.attribute[0].i) for n in casts]
    assert found == [("x", F16), ("mask", F16), ("y_fp16", F32)]
    feed = {"x": np.arange(8, dtype=np.float32)[None], "mask": np.array([[1, 0] * 4])}
    assert np.array_equal(run(tmp_path / "m16.onnx", feed)[0], run(src, feed)[0])


# ---------------------------------------------------------------- subgraphs and interfaces


def test_if_with_resize_converts_and_runs(tmp_path: Path) -> None:
    src = save(if_resize_model(), tmp_path / "ifr.onnx")
    x_pos = np.random.default_rng(0).uniform(0.1, 1, (1, 2, 4, 4)).astype(np.float32)
    np.savez(tmp_path / "pos.npz", x=x_pos[None])
    for name, options in (("cpu", {}), ("all", {"compute": "all"})):
        out = tmp_path / f"{name}.onnx"
        result, model = _convert(src, out, data=tmp_path / "pos.npz", **options)
        for x in (x_pos, -x_pos):
            assert np.abs(run(out, {"x": x})[0] - run(src, {"x": x})[0]).max() <= 1e-2
        resize = next(n for n in model.graph.node if n.op_type == "Resize")
        assert list(resize.input[1:]) == ["roi", "scales"]
        types = {t.name: t.data_type for t in model.graph.initializer}
        assert types["scales"] == F32 and types["roi"] == F32
    reasons = result.stats["nodes"]
    assert reasons["half_ops"] == {"Resize": 1, "ReduceSum": 1, "Greater": 1, "Mul": 1}
    assert reasons["float32_reasons"]["not_analysed"] == 1  # the else branch never ran
    assert model.graph.node[-1].op_type == "If"


def test_outer_weight_used_inside_subgraphs_is_cast_once(tmp_path: Path) -> None:
    src = save(if_subgraph(), tmp_path / "if.onnx")
    result, model = _convert(src, tmp_path / "if16.onnx")
    casts = [n for n in model.graph.node if n.op_type == "Cast"]
    assert [(n.input[0], n.output[0]) for n in casts] == [("w_outer_fp16", "w_outer")]
    assert result.stats["weights"]["converted"] == 2
    for sign in (1, -1):
        x = sign * np.ones((1, 16), np.float32)
        assert np.abs(run(tmp_path / "if16.onnx", {"x": x})[0] - run(src, {"x": x})[0]).max() < 1e-2


@pytest.mark.parametrize("auto", [True, False])
def test_loop_body_converts_and_runs(tmp_path: Path, auto: bool) -> None:
    src = save(loop_model(), tmp_path / "loop.onnx")
    result, _ = _convert(src, tmp_path / "loop16.onnx", compute="all", auto=auto)
    half = result.stats["nodes"]["half_ops"]
    assert half == ({} if auto else {"MatMul": 1, "Tanh": 1})
    x = np.random.default_rng(0).normal(size=(1, 8)).astype(np.float32)
    assert np.abs(run(tmp_path / "loop16.onnx", {"x": x})[0] - run(src, {"x": x})[0]).max() < 1e-2


def test_block_nodes_and_ops_stay_float32(tmp_path: Path) -> None:
    src = save(mlp(), tmp_path / "mlp.onnx")
    options = {"compute": "all", "auto": False}
    result, _ = _convert(
        src, tmp_path / "b.onnx", **options, block_nodes=["fc2*", "nomatch"], block_ops=["Relu"]
    )
    assert result.stats["nodes"]["float32_reasons"] == {"blocked_node": 2, "blocked_op": 1}
    assert result.stats["nodes"]["half_ops"] == {"MatMul": 1, "Add": 1, "Softmax": 1}
    assert "block_nodes: 'nomatch' matches no node name" in result.notes
    x = np.random.default_rng(0).normal(size=(2, 32)).astype(np.float32)
    assert np.abs(run(tmp_path / "b.onnx", {"x": x})[0] - run(src, {"x": x})[0]).max() < 1e-2


def test_keep_io_types_false_makes_io_half(tmp_path: Path) -> None:
    src = save(mlp(), tmp_path / "mlp.onnx")
    _, kept = _convert(src, tmp_path / "kept.onnx")
    _, half = _convert(src, tmp_path / "half.onnx", keep_io_types=False)
    io = (kept.graph.input[0], kept.graph.output[0], half.graph.input[0], half.graph.output[0])
    assert [v.type.tensor_type.elem_type for v in io] == [F32, F32, F16, F16]
    x = np.random.default_rng(0).normal(size=(2, 32)).astype(np.float32)
    got = run(tmp_path / "half.onnx", {"x": x.astype(np.float16)})[0]
    assert got.dtype == np.float16
    assert np.abs(got.astype(np.float32) - run(src, {"x": x})[0]).max() < 1e-2


def test_external_data_model(tmp_path: Path) -> None:
    src = save(mlp(hidden=256), tmp_path / "ext.onnx", external=True)
    out = tmp_path / "ext16.onnx"
    _run_pipeline(src, out, [{"type": "fp16"}])
    x = np.random.default_rng(0).normal(size=(2, 32)).astype(np.float32)
    assert np.abs(run(out, {"x": x})[0] - run(src, {"x": x})[0]).max() < 1e-2
    before = (tmp_path / "ext.onnx.data").stat().st_size
    assert (tmp_path / "ext16.onnx.data").stat().st_size < before * 0.55


_SWEEP_MODELS = {
    "mlp": mlp,
    "conv_bn": lambda: conv_bn(in_constants=True),
    "if": if_subgraph,
    "embedding": transformer_like,
    "if_resize": if_resize_model,
    "loop": loop_model,
    "shape_math": shape_math_model,
}
_SWEEP_OPTIONS = {
    "default": {},
    "all": {"compute": "all", "auto": False},
    "all_half_io": {"compute": "all", "auto": False, "keep_io_types": False},
}


@pytest.mark.parametrize("options", sorted(_SWEEP_OPTIONS))
@pytest.mark.parametrize("name", sorted(_SWEEP_MODELS))
def test_converted_types_are_consistent(name: str, options: str, tmp_path: Path) -> None:
    """Every value_info, output and subgraph type matches what the nodes produce."""
    model = onnx.shape_inference.infer_shapes(_SWEEP_MODELS[name]())  # declares intermediates
    src = tmp_path / "m.onnx"
    onnx.save(model, str(src))
    _, converted = _convert(src, tmp_path / "out.onnx", **_SWEEP_OPTIONS[options])
    onnx.shape_inference.infer_shapes(converted, check_type=True, strict_mode=True)
    ort.InferenceSession(str(tmp_path / "out.onnx"), providers=["CPUExecutionProvider"])
    assert _cast_pairs(converted) == 0


def test_ir3_initializers_listed_as_inputs(tmp_path: Path) -> None:
    model = mlp()
    model.opset_import[0].version = 8
    model.ir_version = 3
    for t in model.graph.initializer:
        model.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, t.dims))
    src = tmp_path / "ir3.onnx"
    onnx.save(model, str(src))
    _, converted = _convert(src, tmp_path / "ir3_16.onnx")
    inputs = {i.name: i.type.tensor_type.elem_type for i in converted.graph.input}
    assert inputs == {"x": F32, "w1_fp16": F16, "b1_fp16": F16, "w2_fp16": F16, "b2": F32}
    x = np.random.default_rng(0).normal(size=(2, 32)).astype(np.float32)
    assert np.abs(run(tmp_path / "ir3_16.onnx", {"x": x})[0] - run(src, {"x": x})[0]).max() < 1e-2


# ---------------------------------------------------------------- bfloat16


def test_bfloat16_is_storage_only(tmp_path: Path) -> None:
    src = save(mlp(hidden=128), tmp_path / "mlp.onnx")
    result, model = _convert(src, tmp_path / "bf16.onnx", dtype="bfloat16")
    types = {t.name: t.data_type for t in model.graph.initializer}
    assert types["w1_bf16"] == TensorProto.BFLOAT16 and types["w2_bf16"] == TensorProto.BFLOAT16
    assert result.stats["nodes"]["half"] == 0
    assert any(n.startswith("bfloat16 is storage-only") for n in result.notes)
    x = np.random.default_rng(0).normal(size=(2, 32)).astype(np.float32)
    assert np.abs(run(tmp_path / "bf16.onnx", {"x": x})[0] - run(src, {"x": x})[0]).max() < 2e-2


def test_check_refuses_bfloat16_below_opset_13_and_unknown_block_ops(tmp_path: Path) -> None:
    nodes = [helper.make_node("Relu", ["x"], ["y"])]
    x, y = (helper.make_tensor_value_info(n, F32, [1]) for n in ("x", "y"))
    model = load_model(save(_model(nodes, [x], [y], [], opset=11), tmp_path / "old.onnx"))
    with pytest.raises(PassError, match=r"^dtype bfloat16 needs opset >= 13 \(Cast to "):
        fp16.check(model, fp16.Config(dtype="bfloat16"))
    with pytest.raises(PassError, match="block_ops: 'conv' is not an ONNX operator"):
        fp16.check(model, fp16.Config(block_ops=("conv",)))


# ---------------------------------------------------------------- onnxruntime kernel table

_PROBES: dict[str, tuple[list[tuple[str, list[int]]], dict[str, Any], dict[str, Any]]] = {
    "Identity": ([("x", [4, 8])], {}, {}),
    "Reshape": ([("x", [4, 8])], {}, {"shape": np.array([8, 4])}),
    "Transpose": ([("x", [4, 8])], {"perm": [1, 0]}, {}),
    "Concat": ([("x", [4, 8]), ("y", [4, 8])], {"axis": 0}, {}),
    "Slice": ([("x", [4, 8])], {}, {"starts": np.array([1]), "ends": np.array([3])}),
    "Gather": ([("x", [4, 8])], {}, {"idx": np.array([0, 2])}),
    "Expand": ([("x", [1, 8])], {}, {"shape": np.array([4, 8])}),
    "Sign": ([("x", [4, 8])], {}, {}),
    "Max": ([("x", [4, 8]), ("y", [4, 8])], {}, {}),
    "Clip": ([("x", [4, 8])], {}, {}),
    "LayerNormalization": ([("x", [4, 8]), ("s", [8]), ("b", [8])], {}, {}),
    # counter-examples: no float16 kernel on x86-64 CPU, onnxruntime wraps them in Casts
    "Conv": ([("x", [1, 2, 4, 4]), ("w", [3, 2, 3, 3])], {}, {}),
    "MatMul": ([("x", [4, 8]), ("y", [8, 4])], {}, {}),
    "Add": ([("x", [4, 8]), ("y", [4, 8])], {}, {}),
}


def _casts_inserted(op: str, tmp_path: Path) -> int:
    inputs, attrs, ints = _PROBES[op]
    names = [n for n, _ in inputs] + list(ints)
    node = helper.make_node(op, names, ["out"], **attrs)
    vis = [helper.make_tensor_value_info(n, F16, shape) for n, shape in inputs]
    inits = [_init(n, v.astype(np.int64)) for n, v in ints.items()]
    out = helper.make_tensor_value_info("out", F16, None)
    graph = helper.make_graph([node], op, vis, [out], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.optimized_model_filepath = str(tmp_path / f"{op}.onnx")
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return sum(n.op_type == "Cast" for n in onnx.load(options.optimized_model_filepath).graph.node)


@pytest.mark.parametrize("op", sorted(_PROBES))
def test_cpu_kernel_table_matches_onnxruntime(op: str, tmp_path: Path) -> None:
    if op not in FP16_CPU_KERNELS and platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("float16 kernels of compute ops differ by CPU architecture")
    assert (_casts_inserted(op, tmp_path) == 0) == (op in FP16_CPU_KERNELS)


# ---------------------------------------------------------------- CLI


@pytest.mark.slow
def test_cli_end_to_end(tmp_path: Path) -> None:
    src = save(overflow_model(), tmp_path / "model.onnx")
    data = overflow_data(tmp_path / "x.npz")
    report = tmp_path / "report.json"
    args = ["fp16", str(src), "--compute", "all", "--block-op", "Range", "--data", str(data)]
    result = CliRunner().invoke(app, [*args, "--report", str(report), "--json"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "model.fp16.onnx"
    x = np.load(data)["x"][0]
    assert np.abs(run(out, {"x": x})[0] - run(src, {"x": x})[0]).max() <= 1e-2
    stats = json.loads(report.read_text())["passes"][0]["stats"]
    assert [k["node"] for k in stats["kept_nodes"]] == ["big_mm", "cancel"]
    assert stats["weights"]["converted"] == 2
    bad = subprocess.run(
        [sys.executable, "-m", "mcompress", "fp16", str(src), "--dtype", "float8"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2
    assert (
        bad.stderr == "mcompress: error: --dtype: must be 'float16' or 'bfloat16', not 'float8'\n"
    )


def test_half_embedding_transposed_into_a_matmul_loads_in_onnxruntime(tmp_path: Path) -> None:
    """Gather (half table) -> Transpose -> MatMul, as in a PyTorch TransformerEncoder: with the
    float32 Cast after the Transpose, onnxruntime 1.32 segfaults creating a default session.
    The Cast goes before the Transpose; loading is checked in a child process."""
    r = np.random.default_rng(0)
    model = _model(
        [
            helper.make_node("Gather", ["emb", "tokens"], ["h"]),
            helper.make_node("Transpose", ["h"], ["t"], perm=[1, 0, 2]),
            helper.make_node("MatMul", ["t", "w"], ["y"]),
        ],
        [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["seq", "batch", 32])],
        [_init("emb", r.normal(0, 1, (100, 16)).astype(np.float32)),
         _init("w", r.normal(0, 0.25, (16, 32)).astype(np.float32))],
        opset=17,
    )  # fmt: skip
    src = save(model, tmp_path / "emb.onnx")
    out = tmp_path / "emb.fp16.onnx"
    _, converted = _convert(src, out)
    producers = {o: n for n in converted.graph.node for o in n.output}
    casts_of_transposes = [
        n
        for n in converted.graph.node
        if n.op_type == "Cast" and getattr(producers.get(n.input[0]), "op_type", "") == "Transpose"
    ]
    assert casts_of_transposes == []
    load = f"import onnxruntime as ort; ort.InferenceSession({str(out)!r})"
    assert subprocess.run([sys.executable, "-c", load], timeout=120).returncode == 0
    tokens = r.integers(0, 100, (2, 8)).astype(np.int64)
    reference = run(src, {"tokens": tokens})[0]
    assert np.abs(run(out, {"tokens": tokens})[0] - reference).max() < 0.01


def test_half_io_output_validates_with_inputs_cast_to_its_declared_types(tmp_path: Path) -> None:
    """`fp16 --compute all --half-io` (the README's GPU recipe): validation casts the float32
    inputs to the compressed model's float16 inputs instead of failing on them."""
    src = save(mlp(), tmp_path / "mlp.onnx")
    out = tmp_path / "mlp.fp16.onnx"
    result = CliRunner().invoke(
        app, ["fp16", str(src), "--compute", "all", "--half-io", "-o", str(out), "--json"]
    )
    assert result.exit_code == 0, result.output
    model = onnx.load(str(out))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    validation = json.loads(result.output)["validation"]
    assert validation["overall"]["cosine"] > 0.9999
    assert validation["overall"]["top1_agreement"] == 1.0
    assert validation["memory"]["compressed_peak_bytes"] > 0
