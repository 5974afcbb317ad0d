"""Distillation: numpy fits on tiny layers, and the `distill` pass / command end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from mcompress import encoding, model_io
from mcompress.recover.distill import (
    HeadData,
    KDOptions,
    TargetStats,
    fit_layer,
    fit_on_grid,
    kd_fit,
    kl,
    log_softmax,
)
from mcompress.recover.layers import find_layers
from tests import builders

WIDTH, CLASSES = 16, 4


def classifier(seed: int = 0) -> onnx.ModelProto:
    """Gemm-Relu-Gemm-Relu-MatMul-Add-Softmax: two hidden layers and a classifier."""
    r = np.random.default_rng(seed)
    sizes = [(WIDTH, WIDTH), (WIDTH, WIDTH)]
    inits = []
    for i, (a, b) in enumerate(sizes):
        inits.append(numpy_helper.from_array(r.normal(0, 0.4, (a, b)).astype(np.float32), f"w{i}"))
        inits.append(numpy_helper.from_array(r.normal(0, 0.1, b).astype(np.float32), f"b{i}"))
    inits.append(numpy_helper.from_array(r.normal(0, 1, (WIDTH, CLASSES)).astype(np.float32), "wc"))
    inits.append(numpy_helper.from_array(r.normal(0, 0.1, CLASSES).astype(np.float32), "bc"))
    nodes = [
        helper.make_node("Gemm", ["x", "w0", "b0"], ["g0"], name="fc0"),
        helper.make_node("Relu", ["g0"], ["r0"], name="relu0"),
        helper.make_node("Gemm", ["r0", "w1", "b1"], ["g1"], name="fc1"),
        helper.make_node("Relu", ["g1"], ["r1"], name="relu1"),
        helper.make_node("MatMul", ["r1", "wc"], ["z0"], name="head"),
        helper.make_node("Add", ["z0", "bc"], ["z"], name="head_bias"),
        helper.make_node("Softmax", ["z"], ["probs"], name="softmax", axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "classifier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", WIDTH])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["n", CLASSES])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = builders.IR_VERSION
    return model


def pruned(model: onnx.ModelProto, share: float) -> onnx.ModelProto:
    """Every weight matrix with its smallest `share` of magnitudes set to zero."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for tensor in out.graph.initializer:
        w = numpy_helper.to_array(tensor)
        if w.ndim == 2:
            w = np.where(np.abs(w) < np.quantile(np.abs(w), share), 0, w).astype(np.float32)
            tensor.CopyFrom(numpy_helper.from_array(w, tensor.name))
    return out


def inputs(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, WIDTH)).astype(np.float32)


def probs(path: Path, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[
        0
    ]


def mean_kl(teacher: np.ndarray, student: np.ndarray) -> float:
    return kl(np.log(np.maximum(teacher, 1e-12)), np.log(np.maximum(student, 1e-12)))


def test_fit_layer_keeps_the_mask_and_recovers_an_expressible_target(tmp_path: Path) -> None:
    path = builders.save(classifier(), tmp_path / "m.onnx")
    layer = find_layers(model_io.load_model(path))[1]  # fc1: Gemm with bias
    mats = layer.matrices()
    cols = np.array([True] * WIDTH + [False])
    r = np.random.default_rng(1)
    mask = r.random(mats.shape) < 0.5
    mask[..., -1] = False
    truth = np.where(mask, 0.0, r.normal(size=mats.shape))
    student = np.where(mask, 0.0, mats)  # pruned, wrong values
    stats = TargetStats()
    x = inputs(200, seed=2)
    stats.add(layer, x, x @ truth[0, :, :-1].T + truth[0, :, -1])
    fitted = fit_layer(student, cols, stats)
    assert np.all(fitted[mask] == 0)
    assert stats.error(student) > 0.3
    # exact up to the ridge (1e-2 x mean diag(XᵀX)) that pulls towards the student's weights
    assert stats.error(fitted) < 2e-4
    np.testing.assert_allclose(fitted, truth, atol=0.03)


def test_fit_layer_keeps_a_clustered_weight_on_its_shared_values(tmp_path: Path) -> None:
    path = builders.save(classifier(), tmp_path / "m.onnx")
    layer = find_layers(model_io.load_model(path))[1]
    mats = layer.matrices()
    book = np.array([-0.6, -0.2, 0.2, 0.6])
    student = mats.copy()
    student[..., :-1] = book[np.abs(mats[..., :-1, None] - book).argmin(-1)]
    mixing = np.random.default_rng(4).normal(size=(WIDTH, WIDTH))
    x = (inputs(300, seed=3) @ mixing).astype(np.float32)  # correlated, as real activations
    stats = TargetStats()
    stats.add(layer, x, x @ mats[0, :, :-1].T + mats[0, :, -1])
    fitted = fit_layer(student, np.array([True] * WIDTH + [False]), stats)
    assert np.unique(fitted[..., :-1]).size <= 4
    assert stats.error(fitted) < 0.7 * stats.error(student)  # measured 0.084 against 0.149


def test_kd_fit_lowers_held_out_kl() -> None:
    r = np.random.default_rng(0)
    x = r.normal(size=(240, 8))
    teacher_w = r.normal(size=(3, 8))
    teacher = log_softmax(x @ teacher_w.T)
    student_w = teacher_w + r.normal(0, 1.0, teacher_w.shape)
    fit, held = slice(0, 160), slice(160, 240)
    labels = teacher.argmax(axis=1)
    result = kd_fit(
        student_w,
        np.zeros(3),
        HeadData(x[fit], teacher[fit], labels[fit]),
        HeadData(x[held], teacher[held], labels[held]),
        KDOptions(temperature=2.0, alpha=0.8, steps=400),
    )
    before = kl(teacher[held], x[held] @ student_w.T)
    after = kl(teacher[held], x[held] @ result.w.T)
    assert before > 0.2
    assert after < 0.1 * before
    assert abs(result.held_kl[0] - before) < 1e-9


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mcompress", *args], capture_output=True, text=True, timeout=120
    )


def test_distill_cli_lowers_kl_on_unseen_inputs(tmp_path: Path) -> None:
    teacher = builders.save(classifier(), tmp_path / "teacher.onnx")
    student = builders.save(pruned(classifier(), 0.6), tmp_path / "student.onnx")
    x = inputs(256, seed=5)
    np.savez(tmp_path / "calib.npz", x=x, labels=probs(teacher, x).argmax(axis=1))
    unseen = inputs(200, seed=6)
    np.savez(tmp_path / "val.npz", x=unseen)
    result = _cli(
        "distill", str(teacher), str(student), "--calibration", str(tmp_path / "calib.npz"),
        "--data", str(tmp_path / "val.npz"), "--json", "--no-gates",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = tmp_path / "student.distilled.onnx"
    report = json.loads(result.stdout)
    stats = report["passes"][0]["stats"]
    assert [r["name"] for r in stats["layers"]] == ["fc0", "fc1"]
    assert all(r["error_after"] < r["error_before"] for r in stats["layers"])
    assert stats["classifier"]["name"] == "head"
    # calibration_samples (128) of the 256 given, a quarter held out
    assert stats["samples_held_out"] == 32 and stats["labels"] is True
    assert stats["after"]["kl"] < stats["before"]["kl"]
    assert report["input"]["path"] == str(teacher)
    # inputs never used for fitting: KL to the teacher falls by more than half
    t = probs(teacher, unseen)
    before, after = mean_kl(t, probs(student, unseen)), mean_kl(t, probs(out, unseen))
    assert before > 0.05
    assert after < 0.5 * before
    # the pruned weights stay pruned (the output stores them packed: expand to compare)
    kept = model_io.load_model(out)
    encoding.unpack(kept)
    after_w = {t.name: numpy_helper.to_array(t) for t in kept.proto.graph.initializer}
    for t in onnx.load(str(student)).graph.initializer:
        if t.name in ("w0", "w1", "wc"):
            assert np.array_equal(after_w[t.name] == 0, numpy_helper.to_array(t) == 0)


def test_distill_not_last_in_a_pipeline_is_exit_2(tmp_path: Path) -> None:
    model = builders.save(classifier(), tmp_path / "m.onnx")
    config = tmp_path / "c.yaml"
    config.write_text("passes:\n  - type: distill\n  - type: quantize\n")
    result = _cli("run", str(model), "-c", str(config), "--calibration", "random")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"mcompress: error: {config}:2: passes.0: distill must be the last pass "
        "(1 pass(es) follow it) (move distill to the end of 'passes')"
    )


def test_distill_without_calibration_is_exit_2(tmp_path: Path) -> None:
    teacher = builders.save(classifier(), tmp_path / "t.onnx")
    student = builders.save(pruned(classifier(), 0.5), tmp_path / "s.onnx")
    result = _cli("distill", str(teacher), str(student))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "mcompress: error: distill needs calibration data: give --calibration FILE.npz (or "
        "calibration: in the pass); the original model is the teacher"
    )
    assert not (tmp_path / "s.distilled.onnx").exists()


@pytest.mark.slow
def test_pipeline_ending_in_distill_uses_run_calibration_and_no_recover(tmp_path: Path) -> None:
    model = builders.save(classifier(), tmp_path / "m.onnx")
    x = inputs(128, seed=5)
    np.savez(tmp_path / "calib.npz", x=x)
    config = tmp_path / "c.yaml"
    config.write_text(
        "passes:\n  - {type: prune, sparsity: 0.6, min_elements: 0, recover: false}\n"
        "  - {type: distill}\n"
    )
    common = ["run", str(model), "-c", str(config), "--calibration", str(tmp_path / "calib.npz")]
    result = _cli(*common, "-o", str(tmp_path / "on.onnx"), "--json", "--no-gates")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    stats = report["passes"][1]["stats"]
    assert stats["teacher"] == str(model)  # the pipeline's input is the teacher
    assert stats["after"]["kl"] < 0.7 * stats["before"]["kl"]  # measured 0.29 against 0.55
    assert report["passes"][0]["stats"]["totals"]["sparsity"] >= 0.59  # prune ran without recovery
    off = _cli(*common, "--no-recover", "-o", str(tmp_path / "off.onnx"), "--json", "--no-gates")
    assert off.returncode == 0, off.stderr
    off_note = "distill: recover is off (--no-recover / recover: false): the model is unchanged"
    assert off_note in json.loads(off.stdout)["notes"]


def test_fit_on_grid_stays_on_the_int8_grid_and_lowers_the_error(tmp_path: Path) -> None:
    path = builders.save(classifier(), tmp_path / "m.onnx")
    layer = find_layers(model_io.load_model(path))[1]
    truth = layer.matrices()
    cols = np.array([True] * WIDTH + [False])
    scale = np.ones_like(truth)
    scale[..., :-1] = np.abs(truth[..., :-1]).max(axis=2, keepdims=True) / 127
    noisy = truth + np.random.default_rng(5).normal(0, 0.05, truth.shape)
    student = noisy.copy()
    student[..., :-1] = np.clip(np.rint(noisy[..., :-1] / scale[..., :-1]), -127, 127)
    student[..., :-1] *= scale[..., :-1]
    mixing = np.random.default_rng(4).normal(size=(WIDTH, WIDTH))
    x = (inputs(300, seed=3) @ mixing).astype(np.float32)
    stats = TargetStats()
    stats.add(layer, x, x @ truth[0, :, :-1].T + truth[0, :, -1])
    fitted = fit_on_grid(student, cols, stats, (scale, np.zeros_like(scale), -127, 127))
    codes = fitted[..., :-1] / scale[..., :-1]
    np.testing.assert_allclose(codes, np.rint(codes), atol=1e-6)
    assert np.abs(codes).max() <= 127 + 1e-9
    assert stats.error(student) > 0.01
    assert stats.error(fitted) < 0.1 * stats.error(student)


def test_distill_refits_a_quantized_conv_on_its_grid_and_names_what_it_skips(
    tmp_path: Path,
) -> None:
    model = builders.save(builders.conv_bn(channels=8), tmp_path / "m.onnx")
    x = np.random.default_rng(0).normal(size=(64, 3, 16, 16)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    config = tmp_path / "c.yaml"
    config.write_text(
        "passes:\n  - {type: prune, sparsity: 0.6, min_elements: 0, recover: false}\n"
        "  - {type: quantize, recover: false}\n  - {type: distill}\n"
    )
    out = tmp_path / "o.onnx"
    result = _cli(
        "run", str(model), "-c", str(config), "--calibration", str(tmp_path / "calib.npz"),
        "-o", str(out), "--json", "--no-gates",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)["passes"][-1]["stats"]
    [conv1] = stats["layers"]
    assert conv1["name"] == "conv1" and conv1["storage"] == "quantized"
    assert conv1["error_after"] <= conv1["error_before"]
    assert stats["skipped"] == [
        {"name": "conv2", "reason": "its weight is quantized and it has no bias to re-fit with it"}
    ]
    assert stats["after"]["kl"] < stats["before"]["kl"]
    graph = onnx.load(str(out)).graph
    codes = {t.name: numpy_helper.to_array(t) for t in graph.initializer if t.data_type == 3}
    conv = next(n for n in graph.node if n.name == "conv1")
    mul = next(n for n in graph.node if n.output[0] == conv.input[1])
    cast = next(n for n in graph.node if n.op_type == "Cast" and n.output[0] in mul.input)
    assert codes[cast.input[0]].dtype == np.int8


def test_distill_refuses_a_teacher_of_another_model(tmp_path: Path) -> None:
    teacher = builders.save(builders.conv_bn(), tmp_path / "other.onnx")
    student = builders.save(pruned(classifier(), 0.5), tmp_path / "s.onnx")
    np.savez(tmp_path / "calib.npz", x=inputs(16, seed=1))
    result = _cli(
        "distill", str(teacher), str(student), "--calibration", str(tmp_path / "calib.npz")
    )
    assert result.returncode == 2
    assert result.stderr.startswith(
        "mcompress: error: distill: the teacher does not run on the calibration inputs: "
    )
    assert len(result.stderr.strip().splitlines()) == 1
