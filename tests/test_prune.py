"""Prune pass: exact sparsity, real file-size savings, structured channel removal that runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from mcompress import config, model_io, pipeline
from mcompress.cli import app
from mcompress.passes import prune
from mcompress.passes.base import PassContext
from mcompress.passes.prune import structured as prune_structured
from mcompress.passes.prune.magnitude import smallest_mask
from mcompress.prepare import prepare
from tests import builders

runner = CliRunner()


def run_cli(*args: str | Path) -> dict[str, Any]:
    """`mcompress <args> --json` in process; the parsed report."""
    result = runner.invoke(app, [*map(str, args), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def prune_stats(report: dict[str, Any]) -> dict[str, Any]:
    return report["passes"][0]["stats"]


def apply_prune(proto: onnx.ModelProto, tmp_path: Path, **options: Any) -> Any:
    """Run the pass on an in-memory model (after prepare, as the pipeline does)."""
    path = builders.save(proto, tmp_path / "in.onnx")
    model = model_io.load_model(path)
    prepare(model)
    cfg = prune.Config(**options)
    prune.check(model, cfg)
    return model, prune.apply(model, cfg, PassContext(input_path=path))


def vad_feeds(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "input": rng.standard_normal((1, 512)).astype(np.float32),
        "sr": np.array(16000, np.int64),
        "state": np.zeros((2, 1, 128), np.float32),
    }


def classifier_feeds(seed: int) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((2, 3, 48, 192)).astype(np.float32)}


# ---------------------------------------------------------------- unstructured, real models


@pytest.mark.parametrize(
    ("fixture", "max_ratio", "feeds"),
    [("classifier", 0.62, classifier_feeds), ("vad", 0.66, vad_feeds)],
)
def test_half_sparsity_on_real_models_shrinks_file_and_matches_dense_reference(
    request: pytest.FixtureRequest, tmp_path: Path, fixture: str, max_ratio: float, feeds: Any
) -> None:
    source: Path = request.getfixturevalue(fixture)
    out = tmp_path / "pruned.onnx"
    report = run_cli("prune", source, "--sparsity", "0.5", "-o", out, "--no-validate")
    stats = prune_stats(report)
    assert stats["tensors"], "nothing was pruned"
    for row in stats["tensors"]:
        assert abs(row["sparsity"] - 0.5) <= 0.01, row
    assert abs(stats["totals"]["sparsity"] - 0.5) <= 0.01
    assert out.stat().st_size <= max_ratio * source.stat().st_size

    # Dense reference: same prepared graph, the same zeros chosen independently with numpy.
    reference = model_io.load_model(source)
    prepare(reference)
    pruned_names = {row["name"] for row in stats["tensors"]}
    for weight in reference.weights():
        if weight.name in pruned_names:
            values = np.array(weight.array())
            flat = values.reshape(-1)
            flat[np.argsort(np.abs(flat), kind="stable")[: int(round(0.5 * flat.size))]] = 0
            weight.replace(values)
    model_io.save_model(reference, tmp_path / "reference.onnx")
    for seed in (0, 1):
        got = builders.run(out, feeds(seed))
        want = builders.run(tmp_path / "reference.onnx", feeds(seed))
        for a, b in zip(got, want, strict=True):
            assert np.array_equal(a, b)


def matmul_heavy(width: int = 256, layers: int = 4) -> onnx.ModelProto:
    rng = np.random.default_rng(3)
    nodes, inits, prev = [], [], "x"
    for i in range(layers):
        inits.append(
            numpy_helper.from_array(rng.normal(0, 0.1, (width, width)).astype(np.float32), f"w{i}")
        )
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"h{i}"], name=f"mm{i}"))
        nodes.append(helper.make_node("Relu", [f"h{i}"], [f"r{i}"], name=f"relu{i}"))
        prev = f"r{i}"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info(prev, TensorProto.FLOAT, ["N", width])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.slow
def test_ninety_percent_on_matmul_model_is_at_most_17_percent_of_input(tmp_path: Path) -> None:
    source = builders.save(matmul_heavy(), tmp_path / "mm.onnx")
    out = tmp_path / "mm.pruned.onnx"
    report = run_cli("prune", source, "--sparsity", "0.9", "-o", out, "--no-gates")
    assert prune_stats(report)["totals"]["sparsity"] == pytest.approx(0.9, abs=1e-4)
    assert out.stat().st_size <= 0.17 * source.stat().st_size
    x = np.random.default_rng(0).standard_normal((3, 256)).astype(np.float32)
    assert builders.run(out, {"x": x})[0].shape == (3, 256)


# ---------------------------------------------------------------- unstructured, exactness


def test_ties_never_overshoot_target() -> None:
    magnitudes = np.ones(1000, np.float32)
    magnitudes[::7] = 0.5
    mask = smallest_mask(magnitudes, 400)
    assert mask.sum() == 400
    assert mask[::7].all()  # the strictly smaller entries go first
    stable = np.argsort(magnitudes, kind="stable")[:400]
    assert set(np.flatnonzero(mask)) == set(stable)


def test_tied_weights_pruned_to_exact_count(tmp_path: Path) -> None:
    proto = matmul_heavy(width=64, layers=1)
    tied = np.where(np.arange(64 * 64) % 2 == 0, 0.25, -0.25).reshape(64, 64).astype(np.float32)
    proto.graph.initializer[0].CopyFrom(numpy_helper.from_array(tied, "w0"))
    model, result = apply_prune(proto, tmp_path, sparsity=0.3)
    row = result.stats["tensors"][0]
    assert row["zeros_after"] == round(0.3 * 4096) == 1229
    values = numpy_helper.to_array(model.proto.graph.initializer[0])
    assert np.count_nonzero(values == 0) == 1229


def two_scale_model() -> onnx.ModelProto:
    proto = matmul_heavy(width=64, layers=2)
    rng = np.random.default_rng(5)
    big = rng.normal(0, 1.0, (64, 64)).astype(np.float32)
    small = rng.normal(0, 0.01, (64, 64)).astype(np.float32)
    proto.graph.initializer[0].CopyFrom(numpy_helper.from_array(big, "w0"))
    proto.graph.initializer[1].CopyFrom(numpy_helper.from_array(small, "w1"))
    return proto


def test_layer_scope_prunes_each_tensor_equally(tmp_path: Path) -> None:
    _, result = apply_prune(two_scale_model(), tmp_path, sparsity=0.5, scope="layer")
    assert [row["sparsity"] for row in result.stats["tensors"]] == [0.5, 0.5]


def test_global_scope_uses_one_threshold(tmp_path: Path) -> None:
    _, result = apply_prune(two_scale_model(), tmp_path, sparsity=0.5, scope="global")
    rows = {row["name"]: row for row in result.stats["tensors"]}
    assert result.stats["totals"]["zeros_after"] == 4096
    assert rows["w1"]["sparsity"] > 0.95  # the small-magnitude tensor goes almost entirely
    assert rows["w0"]["sparsity"] < 0.05


def test_if_branch_weights_and_outer_weight_used_inside_are_pruned(tmp_path: Path) -> None:
    model, result = apply_prune(builders.if_subgraph(), tmp_path, sparsity=0.5, min_elements=0)
    assert sorted(row["name"] for row in result.stats["tensors"]) == ["w_inner", "w_outer"]
    assert all(row["zeros_after"] == 128 for row in result.stats["tensors"])
    assert [row["name"] for row in result.stats["skipped"]] == []  # 'zero' is read by Greater


def test_gather_embedding_pruned_and_small_or_excluded_tensors_listed(tmp_path: Path) -> None:
    _, result = apply_prune(
        builders.transformer_like(), tmp_path, sparsity=0.5, min_elements=5000, exclude=("ff2",)
    )
    assert [row["name"] for row in result.stats["tensors"]] == ["embedding", "w_ff"]
    assert result.stats["tensors"][0]["ops"] == ["Gather"]
    skipped = {row["name"]: row["reason"] for row in result.stats["skipped"]}
    assert skipped == {"w_q": "4096 elements < min_elements 5000", "w_out": "excluded"}


def test_biases_only_with_include_biases(tmp_path: Path) -> None:
    proto = builders.conv_bn(channels=8)
    _, plain = apply_prune(proto, tmp_path, sparsity=0.5, min_elements=0)
    _, with_bias = apply_prune(proto, tmp_path, sparsity=0.5, min_elements=0, include_biases=True)
    assert "c1_b" not in {row["name"] for row in plain.stats["tensors"]}
    assert "c1_b" in {row["name"] for row in with_bias.stats["tensors"]}


def test_option_mix_and_nothing_to_prune_are_one_line_errors(tmp_path: Path) -> None:
    source = builders.save(builders.mlp(), tmp_path / "mlp.onnx")
    result = subprocess.run(
        [sys.executable, "-m", "mcompress", "prune", str(source), "--criterion", "l2"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "mcompress: error: criterion 'l2' does not apply to unstructured pruning "
        "(use one of: magnitude, wanda, sparsegpt)"
    )
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    with pytest.raises(prune.PassError, match="nothing to prune"):
        prune.check(
            model_io.Model(helper.make_model(graph), source, tmp_path, False), prune.Config()
        )


# ---------------------------------------------------------------- structured


@pytest.mark.slow
def test_structured_classifier_runs_with_fewer_parameters(classifier: Path, tmp_path: Path) -> None:
    out = tmp_path / "cls.onnx"
    report = run_cli(
        "prune", classifier, "--structured", "--sparsity", "0.3", "-o", out, "--no-gates"
    )
    stats = prune_stats(report)
    assert report["output"]["parameters"] <= 0.8 * report["input"]["parameters"]
    assert stats["macs_after"] < 0.75 * stats["macs_before"]
    assert stats["groups"]["pruned"] >= 15
    assert stats["left_alone"], "the classifier's output group must be listed as left alone"
    assert all(g["reason"] and g["layers"] for g in stats["left_alone"])
    assert any("MatMul@0" in g["layers"] for g in stats["left_alone"])
    for kept in stats["pruned_groups"]:
        assert kept["channels_after"] % 4 == 0 < kept["channels_after"] < kept["channels_before"]
    probs = builders.run(out, classifier_feeds(0))[0]
    assert probs.shape == (2, 2)
    assert np.allclose(probs.sum(1), 1, atol=1e-5)


def test_structured_residual_keeps_skip_add_consistent(tmp_path: Path) -> None:
    model, result = apply_prune(builders.residual(), tmp_path, structured=True, round_to=1)
    groups = {tuple(sorted(g["layers"])): g for g in result.stats["pruned_groups"]}
    assert groups[("conv_b", "stem")]["channels_after"] == 4
    assert groups[("conv_a",)]["channels_after"] == 4
    weights = {t.name: tuple(t.dims) for t in model.proto.graph.initializer}
    assert weights["stem_w"] == (4, 3, 3, 3)
    assert weights["b_w"] == (4, 4, 3, 3)
    assert weights["fc_w"] == (4, 4)
    out = tmp_path / "res.onnx"
    model_io.save_model(model, out)
    onnx.checker.check_model(onnx.shape_inference.infer_shapes(onnx.load(out), strict_mode=True))
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    assert builders.run(out, {"x": x})[0].shape == (2, 4)


def se_block(zero: bool) -> onnx.ModelProto:
    """A MobileNetV3-style block as Paddle exports it: SE offsets behind Reshape, residual
    Add, and a Reshape target assembled from Shape + a constant before the classifier Gemm.

    With `zero`, the channels the pruner should drop (lowest norm) are exactly zero, so the
    pruned model must compute the same function.
    """
    rng = np.random.default_rng(11)
    c, e, s = 8, 16, 4

    def w(*shape: int) -> np.ndarray:
        return rng.normal(0, 0.3, shape).astype(np.float32)

    t = {
        "stem_w": w(c, 3, 3, 3), "stem_b": w(c),
        "exp_w": w(e, c, 1, 1), "exp_b": w(e),
        "dw_w": w(e, 1, 3, 3), "dw_b": w(e),
        "se1_w": w(s, e, 1, 1), "se1_off": w(s),
        "se2_w": w(e, s, 1, 1), "se2_off": w(e),
        "lin_w": w(c, e, 1, 1), "lin_b": w(c),
        "fc_w": w(c, 3), "fc_b": w(3),
    }  # fmt: skip
    if zero:
        for name in ("exp_w", "exp_b", "dw_w", "dw_b", "se2_w", "se2_off"):
            t[name][[1, 6, 9, 12]] = 0  # 4 of 16 expand channels
        for name in ("se1_w", "se1_off"):
            t[name][[2]] = 0  # 1 of 4 SE channels
        for name in ("stem_w", "stem_b", "lin_w", "lin_b"):
            t[name][[0, 5]] = 0  # 2 of 8 residual channels
    inits = [numpy_helper.from_array(v, k) for k, v in t.items()]
    inits += [
        numpy_helper.from_array(np.array([1, s, 1, 1], np.int64), "se1_shape"),
        numpy_helper.from_array(np.array([1, e, 1, 1], np.int64), "se2_shape"),
        numpy_helper.from_array(np.array([c], np.int64), "flat_c"),
        numpy_helper.from_array(np.array([0], np.int64), "zero1"),
        numpy_helper.from_array(np.array([1], np.int64), "one1"),
    ]
    n = helper.make_node
    nodes = [
        n("Conv", ["x", "stem_w", "stem_b"], ["stem"], name="stem", pads=[1, 1, 1, 1]),
        n("Relu", ["stem"], ["stem_r"], name="stem_relu"),
        n("Conv", ["stem_r", "exp_w", "exp_b"], ["exp"], name="expand"),
        n("Relu", ["exp"], ["exp_r"], name="expand_relu"),
        n("Conv", ["exp_r", "dw_w", "dw_b"], ["dw"], name="dw", group=e, pads=[1, 1, 1, 1]),
        n("Relu", ["dw"], ["dw_r"], name="dw_relu"),
        n("GlobalAveragePool", ["dw_r"], ["pool"], name="se_pool"),
        n("Conv", ["pool", "se1_w"], ["se1"], name="se1"),
        n("Reshape", ["se1_off", "se1_shape"], ["se1_off_r"], name="se1_off_reshape"),
        n("Add", ["se1", "se1_off_r"], ["se1_b"], name="se1_add"),
        n("Relu", ["se1_b"], ["se1_r"], name="se1_relu"),
        n("Conv", ["se1_r", "se2_w"], ["se2"], name="se2"),
        n("Reshape", ["se2_off", "se2_shape"], ["se2_off_r"], name="se2_off_reshape"),
        n("Add", ["se2", "se2_off_r"], ["se2_b"], name="se2_add"),
        n("HardSigmoid", ["se2_b"], ["scale"], name="se_gate", alpha=0.2, beta=0.5),
        n("Mul", ["dw_r", "scale"], ["excited"], name="se_mul"),
        n("Conv", ["excited", "lin_w", "lin_b"], ["lin"], name="linear"),
        n("Add", ["stem_r", "lin"], ["res"], name="residual"),
        n("GlobalAveragePool", ["res"], ["gap"], name="gap"),
        n("Shape", ["gap"], ["gap_shape"], name="shape"),
        n("Slice", ["gap_shape", "zero1", "one1", "zero1"], ["batch"], name="take_batch"),
        n("Concat", ["batch", "flat_c"], ["target"], name="target", axis=0),
        n("Reshape", ["gap", "target"], ["flat"], name="flatten"),
        n("MatMul", ["flat", "fc_w"], ["logits0"], name="fc"),
        n("Add", ["logits0", "fc_b"], ["logits"], name="fc_bias"),
    ]
    graph = helper.make_graph(
        nodes,
        "se_block",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 12, 12])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    return model


def test_structured_se_block_removes_zero_channels_without_changing_outputs(
    tmp_path: Path,
) -> None:
    proto = se_block(zero=True)
    source = builders.save(proto, tmp_path / "se.onnx")
    model, result = apply_prune(proto, tmp_path, structured=True, sparsity=0.25, round_to=1)
    stats = result.stats
    kept = {tuple(sorted(g["layers"])): g["channels_after"] for g in stats["pruned_groups"]}
    assert kept == {("dw", "expand", "se2"): 12, ("se1",): 3, ("linear", "stem"): 6}
    assert [g["layers"] for g in stats["left_alone"]] == [["fc"]]
    assert stats["constants_folded"] == 2
    out = tmp_path / "se.pruned.onnx"
    model_io.save_model(model, out)
    target = next(t for t in model.proto.graph.initializer if t.name == "flat_c")
    assert numpy_helper.to_array(target).tolist() == [6]
    x = np.random.default_rng(2).standard_normal((3, 3, 12, 12)).astype(np.float32)
    np.testing.assert_allclose(
        builders.run(out, {"x": x})[0], builders.run(source, {"x": x})[0], rtol=1e-5, atol=1e-5
    )
    assert stats["parameters_after"] < stats["parameters_before"]
    assert stats["macs_after"] < stats["macs_before"]


def torch_style(zero: bool) -> onnx.ModelProto:
    """SE with Gemm layers and `view(N, C, 1, 1)`, then Flatten of a 2x2 map into a Gemm."""
    rng = np.random.default_rng(12)

    def w(*shape: int) -> np.ndarray:
        return rng.normal(0, 0.5, shape).astype(np.float32)

    t = {"c_w": w(8, 3, 3, 3), "c_b": w(8), "g1_w": w(4, 8), "g1_b": w(4)}
    t |= {"g2_w": w(8, 4), "g2_b": w(8), "g3_w": w(5, 32)}
    if zero:
        for name in ("c_w", "c_b", "g2_w", "g2_b"):
            t[name][[2, 3]] = 0
        for name in ("g1_w", "g1_b"):
            t[name][[1]] = 0
    inits = [numpy_helper.from_array(v, k) for k, v in t.items()]
    inits.append(numpy_helper.from_array(np.array([-1, 8, 1, 1], np.int64), "view"))
    n = helper.make_node
    nodes = [
        n("Conv", ["x", "c_w", "c_b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        n("Relu", ["c"], ["f"], name="relu"),
        n("GlobalAveragePool", ["f"], ["p"], name="gap"),
        n("Flatten", ["p"], ["pf"], name="flat1"),
        n("Gemm", ["pf", "g1_w", "g1_b"], ["g1"], name="fc1", transB=1),
        n("Relu", ["g1"], ["g1r"], name="relu1"),
        n("Gemm", ["g1r", "g2_w", "g2_b"], ["g2"], name="fc2", transB=1),
        n("Sigmoid", ["g2"], ["g2s"], name="gate"),
        n("Reshape", ["g2s", "view"], ["s"], name="view"),
        n("Mul", ["f", "s"], ["m"], name="excite"),
        n("MaxPool", ["m"], ["mp"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        n("Flatten", ["mp"], ["flat"], name="flat2"),
        n("Gemm", ["flat", "g3_w"], ["y"], name="head", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "torch_style",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def test_structured_gemm_se_view_and_flatten_into_gemm(tmp_path: Path) -> None:
    proto = torch_style(zero=True)
    source = builders.save(proto, tmp_path / "t.onnx")
    model, result = apply_prune(proto, tmp_path, structured=True, sparsity=0.25, round_to=1)
    kept = {tuple(sorted(g["layers"])): g["channels_after"] for g in result.stats["pruned_groups"]}
    assert kept == {("conv", "fc2"): 6, ("fc1",): 3}
    assert result.stats["left_alone"][0]["layers"] == ["head"]
    dims = {t.name: tuple(t.dims) for t in model.proto.graph.initializer}
    assert dims["c_w"] == (6, 3, 3, 3) and dims["g1_w"] == (3, 6) and dims["g2_w"] == (6, 3)
    assert dims["g3_w"] == (5, 24)  # 6 channels x 2x2 positions
    view = next(t for t in model.proto.graph.initializer if t.name == "view")
    assert numpy_helper.to_array(view).tolist() == [-1, 6, 1, 1]
    out = tmp_path / "t.pruned.onnx"
    model_io.save_model(model, out)
    x = np.random.default_rng(3).standard_normal((4, 3, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(
        builders.run(out, {"x": x})[0], builders.run(source, {"x": x})[0], rtol=1e-5, atol=1e-5
    )


def test_structured_concat_and_output_groups(tmp_path: Path) -> None:
    """Channels concatenated with a graph input stay aligned; an output layer is left alone."""
    rng = np.random.default_rng(4)
    inits = [
        numpy_helper.from_array(rng.normal(0, 1, (6, 2, 1, 1)).astype(np.float32), "a_w"),
        numpy_helper.from_array(rng.normal(0, 1, (5, 8, 1, 1)).astype(np.float32), "b_w"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "a_w"], ["a"], name="a"),
        helper.make_node("Concat", ["x", "a"], ["cat"], name="cat", axis=1),
        helper.make_node("Conv", ["cat", "b_w"], ["y"], name="b"),
    ]
    graph = helper.make_graph(
        nodes,
        "cat",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5, 4, 4])],
        inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    model, result = apply_prune(proto, tmp_path, structured=True, sparsity=0.5, round_to=1)
    assert result.stats["pruned_groups"][0]["channels_after"] == 3
    assert result.stats["left_alone"][0]["reason"] == "reaches the model output 'y'"
    dims = {t.name: tuple(t.dims) for t in model.proto.graph.initializer}
    assert dims == {"a_w": (3, 2, 1, 1), "b_w": (5, 5, 1, 1)}
    out = tmp_path / "cat.onnx"
    model_io.save_model(model, out)
    assert builders.run(out, {"x": np.ones((1, 2, 4, 4), np.float32)})[0].shape == (1, 5, 4, 4)


def test_kept_count_rounds_to_multiples() -> None:
    assert prune_structured.kept_count(200, 0.3, 1) == 140
    assert prune_structured.kept_count(200, 0.3, 8) == 144
    assert prune_structured.kept_count(22, 0.3, 4) == 16
    assert prune_structured.kept_count(8, 0.3, 4) == 8
    assert prune_structured.kept_count(2, 0.3, 4) == 2
    assert prune_structured.kept_count(3, 0.9, 1) == 1


def test_yaml_pipeline_runs_prune(tmp_path: Path) -> None:
    source = builders.save(matmul_heavy(width=64, layers=2), tmp_path / "m.onnx")
    cfg = config.build({"passes": [{"type": "prune", "sparsity": 0.75}], "validate": {}})
    report = pipeline.run(cfg, pipeline.RunOptions(source, tmp_path / "o.onnx"))
    assert report.passes[0].stats["totals"]["sparsity"] == 0.75
    assert report.output is not None and report.output.size_bytes < report.input.size_bytes


def test_layers_give_one_weight_its_own_sparsity(tmp_path: Path) -> None:
    """`layers: {w1: 0.8}` prunes w1 to 80% and the rest (one global threshold) to 30%."""
    proto = builders.mlp(hidden=64, inputs=32, classes=32)
    model, _ = apply_prune(
        proto, tmp_path, sparsity=0.3, scope="global", min_elements=0, layers={"w1": 0.8}
    )
    weights = {t.name: numpy_helper.to_array(t) for t in model.proto.graph.initializer}
    assert np.count_nonzero(weights["w1"] == 0) == round(0.8 * 32 * 64)
    assert np.count_nonzero(weights["w2"] == 0) == round(0.3 * 64 * 32)
    with pytest.raises(Exception, match="sparsity of 'w1' must be >= 0 and < 1"):
        config.build_pass({"type": "prune", "layers": {"w1": 1.0}})
