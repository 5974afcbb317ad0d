"""Sequential recovery on tiny models, and `prune --calibration` end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mcompress import model_io
from mcompress.recover.activations import SegmentRunner
from mcompress.recover.layers import find_layers
from mcompress.recover.pruning import pruner
from mcompress.recover.sequential import RecoveryStats, reconstruct
from mcompress.recover.stats import GramStats
from tests import builders


def chain(width: int = 24, seed: int = 0) -> onnx.ModelProto:
    """Gemm-Relu-Gemm-Relu-Gemm: three layers in a row, correlated inputs."""
    r = np.random.default_rng(seed)
    inits, nodes, name = [], [], "x"
    for i in range(3):
        w = r.normal(0, 1 / np.sqrt(width), (width, width)).astype(np.float32)
        b = r.normal(0, 0.1, width).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes.append(helper.make_node("Gemm", [name, f"w{i}", f"b{i}"], [f"g{i}"], name=f"fc{i}"))
        name = f"g{i}"
        if i < 2:
            nodes.append(helper.make_node("Relu", [name], [f"r{i}"], name=f"relu{i}"))
            name = f"r{i}"
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", width])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["n", width])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = builders.IR_VERSION
    return model


def _inputs(n: int, width: int, seed: int) -> np.ndarray:
    mixing = np.random.default_rng(0).normal(size=(width, width))
    return (np.random.default_rng(seed).normal(size=(n, width)) @ mixing).astype(np.float32)


def _model(proto: onnx.ModelProto, tmp_path: Path) -> model_io.Model:
    path = builders.save(proto, tmp_path / f"m{len(list(tmp_path.iterdir()))}.onnx")
    return model_io.load_model(path)


def _error(proto: onnx.ModelProto, original: onnx.ModelProto, x: np.ndarray) -> float:
    import onnxruntime as ort

    def run(p: onnx.ModelProto) -> np.ndarray:
        sess = ort.InferenceSession(p.SerializeToString(), providers=["CPUExecutionProvider"])
        return sess.run(None, {"x": x})[0]

    ref = run(original)
    return float(np.sum((run(proto) - ref) ** 2) / np.sum(ref**2))


def test_sequential_beats_one_shot_on_a_three_layer_chain(tmp_path: Path) -> None:
    original = chain()
    feeds = [{"x": _inputs(256, 24, seed=1)}]
    shares = {f"w{i}": 0.6 for i in range(3)}
    compress = pruner(shares, "sparsegpt")

    sequential = _model(original, tmp_path)
    reconstruct(
        sequential,
        find_layers(sequential),
        feeds,
        compress,
        compress,
        RecoveryStats("t", True, 256),
    )

    one_shot = _model(original, tmp_path)
    untouched = _model(original, tmp_path)
    for layer, source in zip(find_layers(one_shot), find_layers(untouched), strict=True):
        gram = GramStats()
        for batch in SegmentRunner(untouched, feeds).inputs(source):
            gram.add(source, batch.xc, batch.xo)
        layer.store(compress(layer, layer.matrices(), gram), one_shot)

    held_out = _inputs(512, 24, seed=2)
    seq_error = _error(sequential.proto, original, held_out)
    one_error = _error(one_shot.proto, original, held_out)
    assert seq_error < 0.9 * one_error
    for proto in (sequential.proto, one_shot.proto):
        sparsity = [(numpy_helper.to_array(t) == 0).mean() for t in proto.graph.initializer
                    if t.name.startswith("w")]  # fmt: skip
        assert min(sparsity) >= 0.59


def test_segments_run_each_node_once_per_batch(tmp_path: Path) -> None:
    model = _model(chain(), tmp_path)
    runner = SegmentRunner(model, [{"x": _inputs(8, 24, 3)}, {"x": _inputs(8, 24, 4)}])
    layers = find_layers(model)
    for layer in layers:
        runner.remember(layer)
        list(runner.inputs(layer))
    # two segments (before fc1, before fc2), two batches, original == compressed: one run each
    assert runner.runs == 4


def test_prune_with_calibration_cli(tmp_path: Path) -> None:
    source = builders.save(chain(), tmp_path / "chain.onnx")
    np.savez(tmp_path / "calib.npz", x=_inputs(256, 24, seed=5))
    np.savez(tmp_path / "val.npz", x=_inputs(64, 24, seed=6))
    reports = {}
    for flag in ("--recover", "--no-recover"):
        out = tmp_path / f"out{flag}.onnx"
        result = subprocess.run(
            [sys.executable, "-m", "mcompress", "prune", str(source), "-s", "0.5",
             "--min-elements", "0", "--calibration", str(tmp_path / "calib.npz"), flag,
             "--data", str(tmp_path / "val.npz"), "-o", str(out), "--json"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert result.returncode in ((0,) if flag == "--recover" else (0, 3)), result.stderr
        reports[flag] = json.loads(result.stdout)
    stats = reports["--recover"]["passes"][0]["stats"]
    assert stats["criterion"] == "sparsegpt"
    assert [r["name"] for r in stats["recovery"]["layers"]] == ["fc0", "fc1", "fc2"]
    assert all(r["error_with"] < r["error_without"] for r in stats["recovery"]["layers"])
    assert stats["totals"]["sparsity"] >= 0.49
    assert reports["--recover"]["notes"][0].startswith("recovery: 3 layers reconstructed")
    with_sqnr = reports["--recover"]["validation"]["overall"]["sqnr_db"]
    without_sqnr = reports["--no-recover"]["validation"]["overall"]["sqnr_db"]
    assert with_sqnr > without_sqnr + 3
    assert "recovery" not in reports["--no-recover"]["passes"][0]["stats"]


def test_without_data_validation_judges_on_the_calibration_inputs(tmp_path: Path) -> None:
    source = builders.save(chain(), tmp_path / "chain.onnx")
    np.savez(tmp_path / "calib.npz", x=_inputs(48, 24, seed=5))
    result = subprocess.run(
        [sys.executable, "-m", "mcompress", "prune", str(source), "-s", "0.5",
         "--min-elements", "0", "--calibration", str(tmp_path / "calib.npz"),
         "-o", str(tmp_path / "out.onnx"), "--json"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["validation"]["samples"] == 48
    assert report["validation"]["floor"]["inputs"] == "data"
    assert report["notes"][-1].startswith("validated on the calibration data ")


@pytest.mark.slow
def test_cluster_with_calibration_cli(tmp_path: Path) -> None:
    source = builders.save(chain(width=32), tmp_path / "chain.onnx")
    np.savez(tmp_path / "calib.npz", x=_inputs(256, 32, seed=5))
    np.savez(tmp_path / "val.npz", x=_inputs(64, 32, seed=6))
    sqnr = {}
    for flag in ("--recover", "--no-recover"):
        result = subprocess.run(
            [sys.executable, "-m", "mcompress", "cluster", str(source), "-k", "4",
             "--min-elements", "0", "--calibration", str(tmp_path / "calib.npz"), flag,
             "--data", str(tmp_path / "val.npz"), "-o", str(tmp_path / f"{flag}.onnx"), "--json"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        # without recovery the default fidelity floor may fail (exit 3); the report is written
        assert result.returncode in ((0,) if flag == "--recover" else (0, 3)), result.stderr
        report = json.loads(result.stdout)
        sqnr[flag] = report["validation"]["overall"]["sqnr_db"]
        tensors = report["passes"][0]["stats"]["tensors"]
        assert sorted(t["name"] for t in tensors) == ["w0", "w1", "w2"]
        assert all(t["unique_values_after"] <= 4 for t in tensors)
    assert sqnr["--recover"] > sqnr["--no-recover"] + 1.5, sqnr


def test_weighted_kmeans_follows_the_weights() -> None:
    from mcompress.recover.clustering import weighted_kmeans

    values = np.array([0.0, 1.0, 2.0, 10.0, 11.0])
    plain = weighted_kmeans(values, np.ones(5), np.array([0.0, 10.0]))
    heavy = weighted_kmeans(values, np.array([1.0, 1.0, 100.0, 1.0, 1.0]), np.array([0.0, 10.0]))
    np.testing.assert_allclose(plain, [1.0, 10.5])
    np.testing.assert_allclose(heavy, [(0 + 1 + 200) / 102, 10.5])


def test_run_calibration_reaches_every_pass_that_recovers() -> None:
    from mcompress import config
    from mcompress.cli.run import with_recovery

    cfg = config.build(
        {
            "passes": [
                {"type": "prune", "sparsity": 0.4},
                {"type": "cluster", "calibration": "mine.npz"},
                {"type": "quantize", "mode": "dynamic"},
            ]
        }
    )
    out = with_recovery(cfg, "calib.npz", None)
    assert [getattr(p, "calibration", None) for p in out.passes] == [
        "calib.npz",
        "mine.npz",
        "calib.npz",
    ]
    assert out.passes[0].sparsity == 0.4
    off = with_recovery(cfg, None, False)
    assert [getattr(p, "recover", None) for p in off.passes] == [False, False, False]


def test_gptq_weights_are_on_the_grid_the_quantize_pass_uses(tmp_path: Path) -> None:
    from mcompress.passes.quantize.math import quantize
    from mcompress.recover.rounding import nearest, rounder, uniform_grid

    model = _model(chain(), tmp_path)
    feeds = [{"x": _inputs(256, 24, seed=7)}]
    names = {f"w{i}" for i in range(3)}

    def grid(layer, mats, cols):  # type: ignore[no-untyped-def]
        return uniform_grid(mats, cols, True, 127) if layer.weight.name in names else None

    stats = RecoveryStats("t", True, 256)
    reconstruct(model, find_layers(model), feeds, rounder(grid), nearest(grid), stats)
    for layer in find_layers(model):
        w = np.asarray(layer.weight.array())
        q = quantize(w, axis=1, symmetric=True)  # Gemm x @ W: one scale per output column
        np.testing.assert_allclose(q.dequantize(), w, rtol=0, atol=1e-7)
    assert all(r.error_with < 0.7 * r.error_without for r in stats.layers)


@pytest.mark.slow
def test_quantize_with_calibration_cli(tmp_path: Path) -> None:
    source = builders.save(chain(width=64), tmp_path / "chain.onnx")
    np.savez(tmp_path / "calib.npz", x=_inputs(512, 64, seed=5))
    np.savez(tmp_path / "val.npz", x=_inputs(64, 64, seed=6))
    sqnr = {}
    for flag in ("--recover", "--no-recover"):
        result = subprocess.run(
            [sys.executable, "-m", "mcompress", "quantize", str(source), "--per-tensor",
             "--calibration", str(tmp_path / "calib.npz"), flag,
             "--data", str(tmp_path / "val.npz"), "-o", str(tmp_path / f"{flag}.onnx"), "--json"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        sqnr[flag] = report["validation"]["overall"]["sqnr_db"]
    assert sqnr["--recover"] > sqnr["--no-recover"] + 2, sqnr


def test_recovery_leaves_weights_an_earlier_pass_shaped(tmp_path: Path) -> None:
    model = _model(chain(), tmp_path)
    first, second, _ = find_layers(model)
    clustered = np.round(np.asarray(first.weight.array()) * 4) / 4  # a handful of shared values
    first.weight.replace(clustered.astype(np.float32))
    sparse = np.asarray(second.weight.array()).copy()
    sparse[::2] = 0
    second.weight.replace(sparse)
    feeds = [{"x": _inputs(256, 24, seed=8)}]
    compress = pruner({}, "sparsegpt")
    reconstruct(model, find_layers(model), feeds, compress, compress, RecoveryStats("t", True, 256))
    first, second, _ = find_layers(model)
    np.testing.assert_array_equal(first.weight.array(), clustered)
    np.testing.assert_array_equal(second.weight.array(), sparse)


def matmul_layer(rows: int = 64, cols: int = 16, seed: int = 0) -> onnx.ModelProto:
    """x @ W, one MatMul with a [rows, cols] weight of uneven column and block ranges."""
    r = np.random.default_rng(seed)
    w = r.normal(size=(rows, cols)) * r.uniform(0.2, 2.0, size=(rows, 1))
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
        "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", rows])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", cols])],
        [numpy_helper.from_array(w.astype(np.float32), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = builders.IR_VERSION
    return model


def test_4bit_gptq_is_on_the_int4_storage_grid_and_beats_round_to_nearest(
    tmp_path: Path,
) -> None:
    from mcompress.passes.quantize import int4_storage
    from mcompress.passes.quantize.recovered import int4_grid
    from mcompress.recover.rounding import nearest, rounder

    proto = matmul_layer()
    model = _model(proto, tmp_path)
    original = np.asarray(find_layers(model)[0].weight.array()).copy()

    def grid(layer, mats, cols):  # type: ignore[no-untyped-def]
        return int4_grid(np.asarray(layer.weight.array()), 16)

    x = _inputs(512, 64, seed=9)
    stats = RecoveryStats("t", True, 512)
    reconstruct(model, find_layers(model), [{"x": x}], rounder(grid), nearest(grid), stats)
    w = np.asarray(find_layers(model)[0].weight.array())
    stored = int4_storage.quantize(w, 16)
    rtn = int4_storage.quantize(original, 16)
    np.testing.assert_array_equal(stored.multipliers, rtn.multipliers)
    np.testing.assert_array_equal(stored.scale, rtn.scale)

    def err(weight: np.ndarray) -> float:
        return float(np.sum((x @ (weight - original)) ** 2) / np.sum((x @ original) ** 2))

    gptq, plain = err(stored.int8() * stored.scale), err(rtn.int8() * rtn.scale)
    assert gptq < 0.7 * plain, (gptq, plain)
    assert stats.layers[0].error_without == pytest.approx(plain, rel=1e-3)


def test_the_if_branch_not_taken_is_named_as_not_reconstructed(tmp_path: Path) -> None:
    r = np.random.default_rng(11)

    def branch(name: str) -> onnx.GraphProto:
        node = helper.make_node("MatMul", ["h", f"w_{name}"], [f"y_{name}"], name=f"mm_{name}")
        out = helper.make_tensor_value_info(f"y_{name}", TensorProto.FLOAT, ["n", 16])
        return helper.make_graph([node], name, [], [out])

    weights = [r.normal(size=(16, 16)).astype(np.float32) for _ in range(3)]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w_main"], ["h"], name="mm_main"),
         helper.make_node("Constant", [], ["cond"], name="cond",
                          value=numpy_helper.from_array(np.array(True))),
         helper.make_node("If", ["cond"], ["y"], name="branch",
                          then_branch=branch("then"), else_branch=branch("else"))],
        "if_model",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 16])],
        [numpy_helper.from_array(w, f"w_{n}")
         for w, n in zip(weights, ["main", "then", "else"], strict=True)],
    )  # fmt: skip
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = builders.IR_VERSION
    source = builders.save(proto, tmp_path / "if.onnx")
    np.savez(tmp_path / "calib.npz", x=_inputs(64, 16, seed=12))
    result = subprocess.run(
        [sys.executable, "-m", "mcompress", "prune", str(source), "-s", "0.5", "--min-elements",
         "0", "--calibration", str(tmp_path / "calib.npz"), "-o", str(tmp_path / "out.onnx"),
         "--json"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode in (0, 3), result.stderr
    report = json.loads(result.stdout)
    assert report["notes"][0] == (
        "recovery: 2 layers reconstructed on 64 samples of "
        f"{tmp_path / 'calib.npz'}, mean layer output error "
        + report["notes"][0].split("mean layer output error ")[1].split("; ")[0]
        + "; 1 weighted layers not reconstructed (e.g. MatMul 'mm_else': in the else branch of "
        "If 'branch', which the calibration data does not take (it takes the then branch); "
        "see the report's recovery.unreached)"
    )
    unreached = report["passes"][0]["stats"]["recovery"]["unreached"]
    assert [u["name"] for u in unreached] == ["mm_else"]
