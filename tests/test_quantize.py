"""`quantize`: sizes, output agreement, calibration, error stats and fallbacks, on real numbers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from mcompress import config, model_io, pipeline
from mcompress.graph import iter_graphs, model_names
from mcompress.passes import quantize as quantize_pass
from mcompress.passes.base import PassContext
from mcompress.passes.quantize import int4_storage
from mcompress.passes.quantize import matmul as quantize_matmul
from mcompress.passes.quantize import ort as quantize_ort
from mcompress.passes.quantize.math import (
    dequantize_linear,
    dequantize_matmul_nbits,
    error_stats,
    quantize,
)
from mcompress.passes.quantize.weights import find_targets
from tests import builders
from tests.conftest import SAMPLES

ORT_OPTIONS = ort.SessionOptions()
ORT_OPTIONS.log_severity_level = 3


def mcompress(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mcompress", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def quantize_file(src: Path, out: Path, data: str | None = None, **options: Any) -> Any:
    """Run the one-pass pipeline in process (validation off) and return its report."""
    validate: dict[str, Any] = {"enabled": False}
    if data:
        validate["data"] = data
    cfg = config.build({"passes": [{"type": "quantize", **options}], "validate": validate})
    return pipeline.run(cfg, pipeline.RunOptions(input_path=src, output=out, force=True))


def run(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), ORT_OPTIONS, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(-1).astype(np.float64), b.reshape(-1).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def float_weights(path: Path) -> list[str]:
    """Float weights (Conv/MatMul/Gemm/Gather... inputs, >= 64 values) left in any graph."""
    return [t.name for t in find_targets(onnx.load(str(path)), ())]


def ops(path: Path) -> set[str]:
    proto = onnx.load(str(path), load_external_data=False)
    return {n.op_type for g in iter_graphs(proto.graph) for n in g.node}


# ---------------------------------------------------------------- end to end


@pytest.mark.slow
def test_cli_transformer_int8_and_int4_sizes_and_agreement(tmp_path: Path) -> None:
    src = builders.save(builders.transformer_like(), tmp_path / "tl.onnx")
    tokens = np.random.default_rng(1).integers(0, 2000, (4, 16)).astype(np.int64)
    reference = run(src, {"tokens": tokens})[0]

    result = mcompress("quantize", src, "--no-validate", "--json")
    assert result.returncode == 0, result.stderr
    int8 = tmp_path / "tl.int8.onnx"
    report = json.loads(result.stdout)
    assert report["output"]["path"] == str(int8)
    assert int8.stat().st_size <= 0.28 * src.stat().st_size
    assert cosine(run(int8, {"tokens": tokens})[0], reference) >= 0.99
    assert {"MatMulInteger", "Gather", "Cast"} <= ops(int8)
    assert float_weights(int8) == []
    stats = report["passes"][0]["stats"]
    assert stats["weights_quantized"] == 4
    assert stats["methods"] == {"dynamic": 3, "weight-only gather": 1}
    sqnr = [t["sqnr_db"] for t in stats["tensors"]]
    assert sqnr == sorted(sqnr) and 35 < sqnr[0] < 60
    assert stats["worst"][0]["name"] == stats["tensors"][0]["name"]

    int4 = tmp_path / "tl.q4.onnx"
    result = mcompress("quantize", src, "--bits", "4", "-o", int4, "--no-validate", "--json")
    assert result.returncode == 0, result.stderr
    assert int4.stat().st_size <= 0.18 * src.stat().st_size
    assert cosine(run(int4, {"tokens": tokens})[0], reference) >= 0.97
    # MatMuls: 4-bit blocks run as int8 (faster than MatMulNBits); Gather: onnxruntime's 4-bit
    assert {"MatMulInteger", "GatherBlockQuantized"} <= ops(int4)
    assert "MatMulNBits" not in ops(int4)
    rows = json.loads(result.stdout)["passes"][0]["stats"]["tensors"]
    assert {r["bits"] for r in rows} == {4} and all(15 < r["sqnr_db"] < 30 for r in rows)


def test_constant_node_weights_and_batchnorm_are_quantized(tmp_path: Path) -> None:
    src = builders.save(builders.conv_bn(in_constants=True), tmp_path / "cbn.onnx")
    out = tmp_path / "cbn.q.onnx"
    report = quantize_file(src, out)
    assert report.passes[0].stats["weights_quantized"] == 2
    assert float_weights(out) == []
    assert "BatchNormalization" not in ops(out)
    x = np.random.default_rng(0).standard_normal((8, 3, 16, 16)).astype(np.float32)
    assert cosine(run(out, {"x": x})[0], run(src, {"x": x})[0]) > 0.999


def test_if_subgraph_outer_and_inner_weights_quantized(tmp_path: Path) -> None:
    src = builders.save(builders.if_subgraph(), tmp_path / "if.onnx")
    out = tmp_path / "if.q.onnx"
    report = quantize_file(src, out)
    names = {t["name"] for t in report.passes[0].stats["tensors"]}
    assert names == {"w_outer", "w_inner"}
    assert float_weights(out) == []
    r = np.random.default_rng(0)
    for sign in (1.0, -1.0):  # both branches
        x = (sign * np.abs(r.standard_normal((1, 16)))).astype(np.float32)
        assert cosine(run(out, {"x": x})[0], run(src, {"x": x})[0]) > 0.999


@pytest.mark.parametrize("mode", ["dynamic", "weight-only", "static"])
def test_exclude_keeps_matching_nodes_in_float(tmp_path: Path, mode: str) -> None:
    src = builders.save(builders.mlp(), tmp_path / "mlp.onnx")
    out = tmp_path / f"mlp.{mode}.onnx"
    options: dict[str, Any] = {"mode": mode, "exclude": ["fc2*"]}
    if mode == "static":
        options["calibration"] = "random"
    report = quantize_file(src, out, **options)
    assert [t["name"] for t in report.passes[0].stats["tensors"]] == ["w1"]
    assert float_weights(out) == ["w2"]


def test_external_data_model_keeps_external_data(tmp_path: Path) -> None:
    src = builders.save(builders.transformer_like(), tmp_path / "ext.onnx", external=True)
    out = tmp_path / "ext.q.onnx"
    quantize_file(src, out)
    assert (tmp_path / "ext.q.onnx.data").is_file()
    tokens = np.arange(32, dtype=np.int64).reshape(2, 16)
    assert cosine(run(out, {"tokens": tokens})[0], run(src, {"tokens": tokens})[0]) > 0.99


@pytest.mark.parametrize("options", [{}, {"mode": "static", "calibration": "random"}])
def test_models_too_big_for_memory_stay_on_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, options: dict[str, Any]
) -> None:
    """The >2 GB path, forced on a small model: external data throughout, temp dir kept."""
    monkeypatch.setattr(quantize_pass, "IN_MEMORY_LIMIT", 0)
    monkeypatch.setattr(quantize_ort, "_external", lambda path: True)
    src = builders.save(builders.transformer_like(), tmp_path / "big.onnx", external=True)
    out = tmp_path / "big.q.onnx"
    report = quantize_file(src, out, **options)
    assert report.passes[0].stats["weights_quantized"] == 4
    assert ("onnxruntime" if options else "dynamic") in report.passes[0].stats["methods"]
    assert not any("cannot run" in note for note in report.passes[0].notes)
    assert (tmp_path / "big.q.onnx.data").is_file()
    tokens = np.arange(32, dtype=np.int64).reshape(2, 16)
    assert cosine(run(out, {"tokens": tokens})[0], run(src, {"tokens": tokens})[0]) > 0.99


def test_int4_model_with_external_data_runs(tmp_path: Path) -> None:
    src = builders.save(builders.transformer_like(), tmp_path / "ext4.onnx", external=True)
    out = tmp_path / "ext4.q.onnx"
    quantize_file(src, out, bits=4)
    tokens = np.arange(32, dtype=np.int64).reshape(2, 16)
    assert cosine(run(out, {"tokens": tokens})[0], run(src, {"tokens": tokens})[0]) > 0.97


# ---------------------------------------------------------------- static


def test_static_on_sample_cnn_keeps_accuracy_and_lists_ranges(tmp_path: Path) -> None:
    src = SAMPLES / "digits_cnn.onnx"
    calib, val = SAMPLES / "digits_calib.npz", SAMPLES / "digits_val.npz"
    if not (src.is_file() and calib.is_file() and val.is_file()):
        pytest.skip("sample_models not built")
    out = tmp_path / "digits.static.onnx"
    report = quantize_file(src, out, mode="static", calibration=str(calib))
    stats = report.passes[0].stats
    assert stats["calibration"]["synthetic"] is False
    assert stats["calibration"]["samples"] == 64
    ranges = stats["calibration"]["ranges"]
    assert len(ranges) >= 5 and all(low <= high for low, high in ranges.values())
    assert "QuantizeLinear" in ops(out) and float_weights(out) == []
    data = np.load(val)
    labels = data["labels"]
    accuracy = []
    for path in (src, out):
        probs = run(path, {"x": data["x"]})[0]
        accuracy.append(float((probs.argmax(1) == labels).mean()))
    assert accuracy[0] > 0.9
    assert accuracy[0] - accuracy[1] <= 0.01


@pytest.mark.slow
def test_static_without_data_exits_2_and_says_how(tmp_path: Path) -> None:
    src = builders.save(builders.conv_bn(), tmp_path / "m.onnx")
    result = mcompress("quantize", src, "--mode", "static", "-o", tmp_path / "o.onnx")
    assert result.returncode == 2
    assert "mode: static needs calibration data" in result.stderr
    assert "--data" in result.stderr and "calibration: random" in result.stderr
    assert not (tmp_path / "o.onnx").exists()


def test_static_random_calibration_on_old_opset_upgrades_and_marks_synthetic(
    tmp_path: Path,
) -> None:
    proto = builders.conv_bn()
    proto.opset_import[0].version = 11  # every op here has the same semantics in opset 11
    src = builders.save(proto, tmp_path / "op11.onnx")
    out = tmp_path / "op11.q.onnx"
    report = quantize_file(src, out, mode="static", calibration="random", calibration_samples=8)
    stats = report.passes[0].stats
    assert stats["calibration"]["synthetic"] is True
    assert stats["opset_upgrade"] == {"from": 11, "to": 13}
    assert any("opset upgraded from 11 to 13" in n for n in report.passes[0].notes)
    x = np.random.default_rng(0).standard_normal((4, 3, 16, 16)).astype(np.float32)
    assert cosine(run(out, {"x": x})[0], run(src, {"x": x})[0]) > 0.99
    # what onnxruntime added has short names, not `<name>_QuantizeLinear_Output`
    added = model_names(onnx.load(out)) - model_names(onnx.load(src))
    assert len(added) == 57 and all(len(name) <= 3 for name in added)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bits", "4", "--mode", "static"], "bits: 4 is block-wise weight-only"),
        (["--block-size", "48", "--bits", "4"], "block_size must be a power of two"),
        (["--format", "qoperator"], "format applies to mode: static only"),
    ],
)
def test_bad_option_combinations_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    src = builders.save(builders.mlp(), tmp_path / "m.onnx")
    result = mcompress("quantize", src, *args, "--no-validate")
    assert result.returncode == 2
    assert message in result.stderr


# ---------------------------------------------------------------- error numbers


def skewed(seed: int = 0) -> np.ndarray:
    """Mostly small positive values with a long right tail, rows of very different scale."""
    r = np.random.default_rng(seed)
    rows = r.exponential(1.0, (32, 256)) - 0.05
    return (rows * np.geomspace(0.01, 10.0, 32)[:, None]).astype(np.float32)


def test_asymmetric_beats_symmetric_on_a_skewed_tensor() -> None:
    w = skewed()
    sym = error_stats(w, quantize(w, axis=0, symmetric=True).dequantize())
    asym = error_stats(w, quantize(w, axis=0, symmetric=False).dequantize())
    # Symmetric wastes the negative half of the range: about one bit, i.e. ~4x the MSE.
    assert asym[0] < 0.45 * sym[0]
    assert asym[1] > sym[1] + 3.5


def test_per_channel_beats_per_tensor_on_rows_of_different_scale() -> None:
    w = skewed()
    results = {}
    for label, axis in (("tensor", None), ("channel", 0)):
        restored = quantize(w, axis=axis, symmetric=True).dequantize()
        worst_row = min(error_stats(w[i], restored[i])[1] for i in range(w.shape[0]))
        results[label] = (error_stats(w, restored)[0], worst_row)
    # One scale for all rows rounds the smallest rows to zero (0 dB); per-row scales keep them.
    assert results["channel"][0] < 0.25 * results["tensor"][0]
    assert results["tensor"][1] < 3.0
    assert results["channel"][1] > 30.0


def test_zero_tensor_and_exact_values() -> None:
    zeros = np.zeros((4, 8), np.float32)
    q = quantize(zeros, axis=0, symmetric=False)
    assert np.array_equal(q.dequantize(), zeros)
    assert error_stats(zeros, q.dequantize()) == (0.0, float("inf"))
    grid = np.arange(-127, 128, dtype=np.float32).reshape(1, -1) * 0.5
    assert error_stats(grid, quantize(grid, axis=None, symmetric=True).dequantize())[0] == 0.0


def skewed_matmul(tmp_path: Path) -> Path:
    w = skewed().T.copy()  # [256, 32]: columns are the output channels
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
        "skewed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 32])],
        [numpy_helper.from_array(w, "w")],
    )
    return builders.save(builders._model(graph), tmp_path / "skewed.onnx")


def test_reported_dynamic_error_follows_symmetry_and_granularity(tmp_path: Path) -> None:
    src = skewed_matmul(tmp_path)
    mse = {}
    for label, options in {
        "sym": {"symmetric": True},
        "asym": {"symmetric": False},
        "tensor": {"per_channel": False},
    }.items():
        report = quantize_file(src, tmp_path / f"{label}.onnx", **options)
        (row,) = report.passes[0].stats["tensors"]
        assert row["method"] == "dynamic"
        mse[label] = row["mse"]
    assert mse["asym"] < 0.45 * mse["sym"]
    assert mse["sym"] < 0.25 * mse["tensor"]


def test_nbits_dequantizers_match_what_onnxruntime_computes(tmp_path: Path) -> None:
    """Error stats read MatMulNBits/GatherBlockQuantized weights exactly as onnxruntime does."""
    r = np.random.default_rng(0)
    k, n, vocab = 96, 40, 50
    table = r.normal(0, 1, (vocab, 64)).astype(np.float32)
    w = r.normal(0, 1, (k, n)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "ids"], ["rows"], name="embed"),
            helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"),
        ],
        "nbits",
        [
            helper.make_tensor_value_info("ids", TensorProto.INT64, [vocab]),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [k, k]),
        ],
        [
            helper.make_tensor_value_info("rows", TensorProto.FLOAT, [vocab, 64]),
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [k, n]),
        ],
        [numpy_helper.from_array(table, "table"), numpy_helper.from_array(w, "w")],
    )
    src = builders.save(builders._model(graph), tmp_path / "nbits.onnx")
    for symmetric in (True, False):
        out = tmp_path / f"nbits_{symmetric}.onnx"
        quantize_ort.nbits(
            src, out, {"embed", "mm"}, block_size=32, symmetric=symmetric, accuracy_level=None
        )
        rows_rt, w_rt = run(out, {"ids": np.arange(vocab), "x": np.eye(k, dtype=np.float32)})
        proto = onnx.load(str(out))
        inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
        mine = dequantize_matmul_nbits(
            inits["w_Q4"],
            inits["w_scales"],
            inits.get("w_zero_points"),
            k=k,
            n=n,
            bits=4,
            block_size=32,
        )
        np.testing.assert_allclose(mine, w_rt, rtol=1e-5, atol=1e-5)
        zp = inits.get("table_zero_points")
        table_mine = dequantize_linear(
            inits["table_Q4"].astype(np.int32),
            inits["table_scales"],
            None if zp is None else zp.astype(np.int32),
            1,
            32,
        )
        np.testing.assert_allclose(table_mine, rows_rt, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- runs in onnxruntime


def test_dynamic_matmul_is_what_quantize_dynamic_writes_and_fuses(tmp_path: Path) -> None:
    """Same graph and numbers as onnxruntime's quantize_dynamic (per-channel int8), signed
    weights with zero point 0 (onnxruntime's fast U8S8 kernels), 7 bits on x86 without VNNI,
    and onnxruntime fuses it to DynamicQuantizeMatMul at load (the int8 speed-up)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src = builders.save(builders.mlp(hidden=256, inputs=128), tmp_path / "mlp.onnx")
    ours, theirs = tmp_path / "ours.onnx", tmp_path / "theirs.onnx"
    quantize_file(src, ours)
    symmetric = {"WeightSymmetric": True}
    quantize_dynamic(
        src, theirs, per_channel=True, weight_type=QuantType.QInt8, extra_options=symmetric
    )
    assert ops(ours) == ops(theirs)
    weights = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(ours)).graph.initializer}
    assert weights["w1_quantized"].dtype == np.int8
    assert not weights["w1_zero_point"].any()
    limit = 2 ** (quantize_matmul.weight_bits() - 1) - 1
    assert np.abs(weights["w1_quantized"]).max() == limit
    x = np.random.default_rng(0).standard_normal((64, 128)).astype(np.float32)
    reference = run(src, {"x": x})[0]
    errors = [np.abs(run(path, {"x": x})[0] - reference).mean() for path in (ours, theirs)]
    assert errors[0] < 1.2 * errors[1]
    assert cosine(run(ours, {"x": x})[0], reference) > 0.999
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(ours), options, providers=["CPUExecutionProvider"])
    fused = [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    assert fused.count("DynamicQuantizeMatMul") == 2 and "MatMulInteger" not in fused


def test_weight_shared_through_identity_is_quantized_dynamically(tmp_path: Path) -> None:
    """PyTorch writes `Identity(weight)` for layers whose weights are equal; prepare points the
    readers at the weight, so every MatMul reading it goes int8 dynamic."""
    w = np.random.default_rng(0).normal(0, 0.2, (32, 32)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Identity", ["w"], ["w_again"]),
            helper.make_node("MatMul", ["x", "w"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("MatMul", ["r", "w_again"], ["y"]),
        ],
        "shared",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 32])],
        [numpy_helper.from_array(w, "w")],
    )
    src = builders.save(builders._model(graph), tmp_path / "shared.onnx")
    out = tmp_path / "shared.q.onnx"
    report = quantize_file(src, out)
    assert report.prepare is not None and report.prepare.identities_bypassed == 1
    assert report.passes[0].stats["methods"] == {"dynamic": 1}
    assert "Identity" not in ops(out)
    assert [n.op_type for n in onnx.load(str(out)).graph.node].count("MatMulInteger") == 2
    x = np.random.default_rng(1).standard_normal((8, 32)).astype(np.float32)
    assert cosine(run(out, {"x": x})[0], run(src, {"x": x})[0]) > 0.999


def test_linear_gemms_go_dynamic_and_fuse(tmp_path: Path) -> None:
    """Gemm as PyTorch exports nn.Linear (transB=1, bias) and plain A @ B: dynamic int8, fused
    by onnxruntime with the bias; a Gemm with alpha != 1 stays weight-only."""
    r = np.random.default_rng(0)
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1", transB=1),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("Gemm", ["r", "w2"], ["g"], name="fc2"),
            helper.make_node("Gemm", ["g", "w3"], ["y"], name="fc3", alpha=0.5),
        ],
        "linears",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 16])],
        [
            numpy_helper.from_array(r.normal(0, 0.1, (128, 64)).astype(np.float32), "w1"),
            numpy_helper.from_array(r.normal(0, 0.1, (128,)).astype(np.float32), "b1"),
            numpy_helper.from_array(r.normal(0, 0.1, (128, 32)).astype(np.float32), "w2"),
            numpy_helper.from_array(r.normal(0, 0.1, (32, 16)).astype(np.float32), "w3"),
        ],
    )
    src = builders.save(builders._model(graph), tmp_path / "linears.onnx")
    out = tmp_path / "linears.q.onnx"
    report = quantize_file(src, out)
    methods = {t["name"]: (t["method"], t["shape"]) for t in report.passes[0].stats["tensors"]}
    assert methods == {
        "w1": ("dynamic", [128, 64]),
        "w2": ("dynamic", [128, 32]),
        "w3": ("weight-only", [32, 16]),
    }
    x = r.standard_normal((8, 64)).astype(np.float32)
    assert cosine(run(out, {"x": x})[0], run(src, {"x": x})[0]) > 0.999
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(out), options, providers=["CPUExecutionProvider"])
    fused = [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    assert fused.count("DynamicQuantizeMatMul") == 2 and fused.count("Gemm") == 1
    assert "Add" not in fused and "MatMulInteger" not in fused


def test_opset_10_matmul_weights_stay_weight_only(tmp_path: Path) -> None:
    proto = builders.mlp()
    proto.opset_import[0].version = 10
    src = builders.save(proto, tmp_path / "old.onnx")
    out = tmp_path / "old.q.onnx"
    report = quantize_file(src, out)
    assert report.passes[0].stats["methods"] == {"weight-only": 2}
    assert any("opset 10 has no DynamicQuantizeLinear" in n for n in report.passes[0].notes)
    x = np.random.default_rng(0).standard_normal((4, 32)).astype(np.float32)
    assert cosine(run(out, {"x": x})[0], run(src, {"x": x})[0]) > 0.999


def test_unrunnable_dynamic_result_falls_back_to_weight_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = quantize_matmul.rewrite

    def unrunnable(proto: onnx.ModelProto, *args: Any, **kwargs: Any) -> Any:
        rows = real(proto, *args, **kwargs)
        for node in proto.graph.node:
            if node.op_type == "MatMulInteger":
                node.op_type = "MatMulIntegerThatDoesNotExist"
        return rows

    monkeypatch.setattr(quantize_matmul, "rewrite", unrunnable)
    src = builders.save(builders.transformer_like(), tmp_path / "tl.onnx")
    out = tmp_path / "tl.q.onnx"
    report = quantize_file(src, out)
    (note,) = report.passes[0].notes
    assert note.startswith("onnxruntime cannot use the dynamic int8 model")
    assert "MatMulIntegerThatDoesNotExist" in note
    assert report.passes[0].stats["methods"] == {"weight-only": 3, "weight-only gather": 1}
    assert float_weights(out) == [] and "MatMulInteger" not in ops(out)
    tokens = np.random.default_rng(1).integers(0, 2000, (4, 16)).astype(np.int64)
    assert cosine(run(out, {"tokens": tokens})[0], run(src, {"tokens": tokens})[0]) > 0.999


def test_4bit_on_a_model_without_matmul_or_gather_says_it_stored_int8(tmp_path: Path) -> None:
    src = builders.save(builders.conv_bn(), tmp_path / "cbn.onnx")
    report = quantize_file(src, tmp_path / "cbn.q4.onnx", bits=4)
    (note,) = report.passes[0].notes
    assert note.startswith(f"{report.passes[0].stats['weights_quantized']} weights (e.g. ")
    assert "stored as int8" in note


def test_4bit_run_check_feeds_token_ids_within_the_vocabulary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The candidate reads its table through GatherBlockQuantized; the run-once check still
    makes token ids for the model's Gather (2000 rows), not the default range 0..9."""
    from mcompress import inputs

    made: list[Any] = []
    real = inputs.make_feeds

    def recording(*args: Any, **kwargs: Any) -> Any:
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(inputs, "make_feeds", recording)
    src = builders.save(builders.transformer_like(vocab=2000), tmp_path / "tl.onnx")
    report = quantize_file(src, tmp_path / "tl.q4.onnx", bits=4)
    assert "GatherBlockQuantized" in report.passes[0].stats["methods"]
    fills = [m.description["inputs"]["tokens"]["fill"] for m in made]
    assert fills and all("(2000 rows" in fill for fill in fills), fills


def test_failing_4bit_quantizer_falls_back_to_int8_weight_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crashing(*_: Any, **__: Any) -> None:
        raise RuntimeError("[ShapeInferenceError] Inferred shape and existing shape differ")

    monkeypatch.setattr(quantize_ort, "nbits", crashing)
    src = builders.save(builders.mlp(), tmp_path / "mlp.onnx")
    out = tmp_path / "mlp.q4.onnx"
    # asymmetric: MatMuls go to onnxruntime's MatMulNBits (symmetric ones are int4_storage's)
    report = quantize_file(src, out, bits=4, symmetric=False)
    note, int8 = report.passes[0].notes
    assert note.startswith("onnxruntime cannot use the 4-bit model")
    assert "ShapeInferenceError" in note
    assert int8.startswith("2 weights (e.g. 'w1') stored as int8")
    assert report.passes[0].stats["methods"] == {"weight-only": 2}
    x = np.random.default_rng(0).standard_normal((4, 32)).astype(np.float32)
    assert cosine(run(out, {"x": x})[0], run(src, {"x": x})[0]) > 0.999


# ---------------------------------------------------------------- real models


@pytest.mark.slow
def test_classifier_default_is_small_and_agrees(tmp_path: Path, classifier: Path) -> None:
    out = tmp_path / "cls.int8.onnx"
    report = quantize_file(classifier, out)
    assert out.stat().st_size <= 0.35 * classifier.stat().st_size
    assert report.prepare is not None and report.prepare.constants_to_initializers > 100
    assert float_weights(out) == []
    assert "ConvInteger" not in ops(out)
    x = np.random.default_rng(0).uniform(-1, 1, (300, 3, 48, 192)).astype(np.float32)
    before = np.concatenate([run(classifier, {"x": x[i : i + 100]})[0] for i in (0, 100, 200)])
    after = np.concatenate([run(out, {"x": x[i : i + 100]})[0] for i in (0, 100, 200)])
    top2 = np.sort(before, axis=1)[:, -2:]
    confident = top2[:, 1] - top2[:, 0] > 0.2
    assert confident.sum() >= 100
    agreement = (before.argmax(1) == after.argmax(1))[confident].mean()
    assert agreement >= 0.98


def test_vad_default_and_after_strip(tmp_path: Path, vad: Path) -> None:
    out = tmp_path / "vad.int8.onnx"
    report = quantize_file(vad, out)
    assert out.stat().st_size <= 0.45 * vad.stat().st_size
    names = {t["name"] for t in report.passes[0].stats["tensors"]}
    assert "model.decoder.rnn.weight_ih" in names  # a main-graph weight read inside the If
    assert float_weights(out) == []
    feeds = {
        "input": np.random.default_rng(0).uniform(-0.5, 0.5, (1, 512)).astype(np.float32),
        "sr": np.array(16000, np.int64),
        "state": np.zeros((2, 1, 128), np.float32),
    }
    assert abs(run(out, feeds)[0] - run(vad, feeds)[0]).max() < 0.01

    cfg = tmp_path / "strip_quantize.yaml"
    cfg.write_text("passes:\n  - {type: strip}\n  - {type: quantize}\n")
    stripped = tmp_path / "vad.sq.onnx"
    result = mcompress("run", vad, "-c", cfg, "-o", stripped, "--no-validate")
    assert result.returncode == 0, result.stderr
    assert "onnxruntime" not in result.stderr  # its logs of sizes the input probe tried
    assert stripped.stat().st_size <= 0.30 * vad.stat().st_size


# ---------------------------------------------------------------- weights reached through other ops


def sliced_lstm_in_if() -> onnx.ModelProto:
    """Silero-VAD-like: in each If branch, LSTM weights are sliced out of stacked tensors (one
    owned by the branch, one outer-scope); a large -inf floor reshaped before a Max must stay
    exact; a large float bias read by Add is not a weight."""
    r = np.random.default_rng(0)
    hidden, features = 32, 32

    def stacked(name: str) -> onnx.TensorProto:
        values = r.normal(0, 0.2, (2, 4 * hidden, features)).astype(np.float32)
        return numpy_helper.from_array(values, name)

    def branch(name: str, start: int) -> onnx.GraphProto:
        def index(suffix: str, value: int) -> onnx.TensorProto:
            return numpy_helper.from_array(np.array([value], np.int64), f"{name}_{suffix}")

        return helper.make_graph(
            [
                helper.make_node(
                    "Slice", [f"{name}_w_all", f"{name}_s", f"{name}_e"], [f"{name}_w"]
                ),
                helper.make_node("Slice", ["r_all", f"{name}_s", f"{name}_e"], [f"{name}_r"]),
                helper.make_node(
                    "LSTM", ["x", f"{name}_w", f"{name}_r"], [f"{name}_y"], hidden_size=hidden
                ),
            ],
            name,
            [],
            [helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, None)],
            [stacked(f"{name}_w_all"), index("s", start), index("e", start + 1)],
        )

    floor = np.full((4, 1, 16, hidden), -np.inf, np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
            helper.make_node("Greater", ["s", "zero"], ["cond"]),
            helper.make_node(
                "If",
                ["cond"],
                ["y"],
                then_branch=branch("then", 0),
                else_branch=branch("else", 1),
            ),
            helper.make_node("Reshape", ["floor", "floor_shape"], ["floor_4d"]),
            helper.make_node("Max", ["y", "floor_4d"], ["floored"]),
            helper.make_node("Add", ["floored", "bias"], ["out"]),
        ],
        "sliced_lstm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 1, features])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [4, 1, 16, hidden])],
        [
            stacked("r_all"),
            numpy_helper.from_array(floor.reshape(-1), "floor"),
            numpy_helper.from_array(np.array(floor.shape, np.int64), "floor_shape"),
            numpy_helper.from_array(r.normal(0, 1, floor.shape).astype(np.float32), "bias"),
            numpy_helper.from_array(np.array(0, np.float32), "zero"),
        ],
    )
    return builders._model(graph)


def large_floats(path: Path) -> list[str]:
    """Float32 initializers over 4 KB left in any graph."""
    proto = onnx.load(str(path))
    return [
        t.name
        for g in iter_graphs(proto.graph)
        for t in g.initializer
        if t.data_type == TensorProto.FLOAT and np.prod(t.dims) * 4 > 4096
    ]


def test_weights_sliced_before_an_lstm_in_if_branches_are_stored_int8(tmp_path: Path) -> None:
    src = builders.save(sliced_lstm_in_if(), tmp_path / "sliced.onnx")
    out = tmp_path / "sliced.int8.onnx"
    report = quantize_file(src, out)
    assert sorted(large_floats(src)) == ["bias", "else_w_all", "floor", "r_all", "then_w_all"]
    assert large_floats(out) == ["bias"]
    quantized = {row["name"]: row for row in report.passes[0].stats["tensors"]}
    # -inf cannot be scaled: the floor stays float, stored losslessly by packing
    assert set(quantized) == {"else_w_all", "r_all", "then_w_all"}
    assert report.packing is not None
    assert [row.name for row in report.packing.tensors] == ["floor"]
    assert all(row["sqnr_db"] > 38 for row in quantized.values())
    assert model_io.disk_size(out) < 0.45 * model_io.disk_size(src)
    for sign in (1, -1):  # both branches
        x = sign * np.abs(np.random.default_rng(2).standard_normal((4, 1, 32))).astype(np.float32)
        got, want = run(out, {"x": x})[0], run(src, {"x": x})[0]
        assert np.array_equal(np.isinf(got), np.isinf(want))
        assert cosine(got[np.isfinite(got)], want[np.isfinite(want)]) > 0.9999


def test_int4_storage_runs_as_a_fused_int8_matmul(tmp_path: Path) -> None:
    """4-bit blocks with integer multipliers: within 1 dB of free float block scales, about
    4 bits per weight on disk, and onnxruntime folds the rebuild and fuses the int8 MatMul."""
    w = np.random.default_rng(0).normal(0, 0.05, (256, 128)).astype(np.float32)
    stored = int4_storage.quantize(w, 32)
    assert np.abs(stored.codes).max() == 7 and stored.multipliers.min() >= 1
    assert stored.multipliers.max() <= 16 and np.abs(stored.int8().astype(int)).max() <= 112
    blocks = w.reshape(8, 32, 128)
    free = np.abs(blocks).max(axis=1, keepdims=True) / 7
    ideal = error_stats(w, (np.clip(np.rint(blocks / free), -7, 7) * free).reshape(w.shape))[1]
    ours = error_stats(w, stored.int8() * stored.scale)[1]
    assert ideal - 1.0 < ours <= ideal
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
        "one",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 128])],
        [numpy_helper.from_array(w, "w")],
    )
    src = builders.save(builders._model(graph), tmp_path / "one.onnx")
    out = tmp_path / "one.int4.onnx"
    quantize_file(src, out, bits=4)
    assert model_io.disk_size(out) < 0.15 * model_io.disk_size(src)  # 4 bits: 0.125
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(out), options, providers=["CPUExecutionProvider"])
    fused = [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    assert fused == ["DynamicQuantizeMatMul"]
    x = np.random.default_rng(1).standard_normal((16, 256)).astype(np.float32)
    exact = x @ (stored.int8() * stored.scale)
    assert cosine(run(out, {"x": x})[0], exact) > 0.9999


def test_exclude_by_weight_name_keeps_that_weight_float(tmp_path: Path) -> None:
    path = builders.save(builders.mlp(), tmp_path / "m.onnx")
    model = model_io.load_model(path)
    quantize_pass.apply(model, quantize_pass.Config(exclude=("w2",)), PassContext(input_path=path))
    floats = {t.name for t in model.proto.graph.initializer if t.data_type == TensorProto.FLOAT}
    assert "w2" in floats and "w1" not in floats
