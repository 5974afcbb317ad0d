"""`mcompress doctor`: each check on a model built to trigger it, exit codes, real models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from mcompress import config, doctor
from mcompress.cli import app
from tests import builders
from tests.conftest import SAMPLES

runner = CliRunner()


def _model(
    nodes: list[onnx.NodeProto],
    inits: list[onnx.TensorProto],
    *,
    x_shape: list[int | str] | None = None,
    opset: int = 17,
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape or ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _matmul(
    weight: np.ndarray, x_shape: list[int | str] | None = None, opset: int = 17
) -> onnx.ModelProto:
    w = numpy_helper.from_array(weight.astype(np.float32), "w")
    node = helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")
    return _model([node], [w], x_shape=x_shape, opset=opset)


def _by_check(findings: list[doctor.Finding]) -> dict[str, doctor.Finding]:
    return {f.check: f for f in findings}


def _doctor_json(*args: str | Path) -> tuple[int, dict]:
    result = runner.invoke(app, ["doctor", *map(str, args), "--json"])
    return result.exit_code, json.loads(result.stdout)


def test_weight_above_float16_range_is_flagged(tmp_path: Path) -> None:
    weight = np.full((4, 8), 0.5, np.float32)
    weight[1, 2] = 70000.0
    weight[3, 3] = -1e6
    path = builders.save(_matmul(weight), tmp_path / "big.onnx")

    code, report = _doctor_json(path)

    assert code == 0
    [finding] = [f for f in report["findings"] if f["check"] == "fp16-range"]
    assert finding["severity"] == "warning"
    assert "2 weight value(s) exceed the float16 maximum 65504" in finding["message"]
    assert "'w' (2 values, max 1e+06)" in finding["message"]
    assert "clamp: true" in finding["fix"]


def test_weights_within_float16_range_are_not_flagged(tmp_path: Path) -> None:
    path = builders.save(_matmul(np.full((4, 8), 65504.0)), tmp_path / "ok.onnx")
    assert "fp16-range" not in _by_check(doctor.diagnose(path))


def test_weights_in_constant_nodes_are_flagged(tmp_path: Path) -> None:
    model = builders.conv_bn(in_constants=True)
    constants = sum(
        n.op_type == "Constant" and np.prod(n.attribute[0].t.dims) > 1 for n in model.graph.node
    )
    path = builders.save(model, tmp_path / "constants.onnx")

    finding = _by_check(doctor.diagnose(path))["constant-weights"]

    assert constants >= 5
    assert finding.severity == "note"
    assert finding.message.startswith(f"{constants} weight tensor(s)")
    assert "Constant nodes" in finding.message and "prepare: true" in finding.fix
    no_prepare = config.build({"prepare": False, "passes": [{"type": "strip"}]})
    finding = _by_check(doctor.diagnose(path, cfg=no_prepare))["constant-weights"]
    assert finding.severity == "warning" and "prepare: false" in finding.fix


def test_duplicate_and_unused_weights(tmp_path: Path) -> None:
    weight = np.arange(32, dtype=np.float32).reshape(4, 8)
    inits = [
        numpy_helper.from_array(weight, "w1"),
        numpy_helper.from_array(weight.copy(), "w2"),
        numpy_helper.from_array(np.ones((8, 8), np.float32), "dead"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["a"]),
        helper.make_node("MatMul", ["x", "w2"], ["b"]),
        helper.make_node("Add", ["a", "b"], ["y"]),
    ]
    path = builders.save(_model(nodes, inits), tmp_path / "tied.onnx")

    found = _by_check(doctor.diagnose(path))

    assert "1 group(s) of identical weight tensors store 128 B more than once" in (
        found["duplicate-weights"].message
    )
    assert "'w1' = 'w2'" in found["duplicate-weights"].message
    assert found["unused-initializers"].message.startswith("1 initializer(s) (256 B)")
    assert "'dead'" in found["unused-initializers"].message


def test_dynamic_dims_are_flagged_unless_pinned(tmp_path: Path) -> None:
    path = builders.save(
        _matmul(np.ones((4, 8)), x_shape=["batch", "seq", 4]), tmp_path / "dyn.onnx"
    )

    finding = _by_check(doctor.diagnose(path))["dynamic-dims"]

    assert finding.severity == "warning"
    assert "input 'x' has dynamic dimension(s) 1 ('seq')" in finding.message
    assert "--input-shape x=1x<seq>x4" in finding.fix
    pinned = doctor.diagnose(path, input_shapes={"x": (1, 7, 4)})
    assert "dynamic-dims" not in _by_check(pinned)


def test_dynamic_dims_doctor_flags_are_the_ones_validation_guesses(tmp_path: Path) -> None:
    """One home of shape guessing: recurrent state and sizes the model states are not
    flagged; the unpinned audio length of the silero-vad package's export is."""
    vad = builders.save(builders.reflect_pad_vad(), tmp_path / "vad.onnx")
    finding = _by_check(doctor.diagnose(vad))["dynamic-dims"]
    assert "input 'input' has dynamic dimension(s) 1 ('?')" in finding.message
    assert "--input-shape input=1x<d1>" in finding.fix
    flagged = [f for f in doctor.diagnose(vad) if f.check == "dynamic-dims"]
    assert len(flagged) == 1  # not state [2, ?, 16]
    stated = builders.pixel_attention()
    helper.set_model_props(stated, {"input_shape": "8,48,192"})
    path = builders.save(stated, tmp_path / "stated.onnx")
    assert "dynamic-dims" not in _by_check(doctor.diagnose(path))


def test_activation_beyond_float16_range_with_data(tmp_path: Path) -> None:
    scale = numpy_helper.from_array(np.full((4,), 3000.0, np.float32), "scale")
    nodes = [
        helper.make_node("Mul", ["x", "scale"], ["big"], name="amplify"),
        helper.make_node("Mul", ["big", "big"], ["sq"], name="square"),
        helper.make_node("ReduceMax", ["sq"], ["y"], name="peak", keepdims=0),
    ]
    path = builders.save(_model(nodes, [scale]), tmp_path / "act.onnx")
    data = tmp_path / "val.npz"
    np.savez(data, x=np.full((3, 4), 0.5, np.float32))

    finding = _by_check(doctor.diagnose(path, data=data))["activations"]

    # 0.5 * 3000 = 1500 fits; 1500**2 = 2.25e6 does not, and neither does the max after it
    assert finding.severity == "warning"
    assert finding.message.startswith("2 activation(s) exceed the float16 range")
    assert "'square' (2.25e+06)" in finding.message and "'amplify'" not in finding.message
    assert "auto: true" in finding.fix
    assert "activations" not in _by_check(doctor.diagnose(path))  # needs data


def test_old_opset_with_per_channel_quantization(tmp_path: Path) -> None:
    path = builders.save(_matmul(np.ones((4, 8)), opset=11), tmp_path / "old.onnx")

    assert _by_check(doctor.diagnose(path))["opset"].severity == "note"
    static = config.build(
        {"passes": [{"type": "quantize", "mode": "static", "calibration": "random"}]}
    )
    finding = _by_check(doctor.diagnose(path, cfg=static))["opset"]
    assert finding.severity == "warning" and "converts the model to opset 13" in finding.message
    assert "per_channel: false" in finding.fix
    for passes in ([{"type": "strip"}], [{"type": "quantize"}]):
        cfg = config.build({"passes": passes})
        assert "opset" not in _by_check(doctor.diagnose(path, cfg=cfg))


def test_problems_exit_2(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07garbage")
    code, report = _doctor_json(corrupt)
    assert code == 2 and report["counts"]["problem"] == 1
    assert "corrupt or truncated" in report["findings"][0]["message"]

    external = builders.save(builders.mlp(), tmp_path / "ext.onnx", external=True)
    code, report = _doctor_json(external)
    notes = [f["message"] for f in report["findings"] if f["check"] == "external-data"]
    assert code == 0 and notes == [
        "weights live in the external file 'ext.onnx.data'; outputs keep external data"
    ]
    (tmp_path / "ext.onnx.data").unlink()
    code, report = _doctor_json(external)
    assert code == 2 and report["findings"][0]["check"] == "load"
    assert "external data file 'ext.onnx.data'" in report["findings"][0]["message"]
    assert "is missing" in report["findings"][0]["message"]

    model = builders.save(_matmul(np.ones((4, 8))), tmp_path / "m.onnx")
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, tokens=np.zeros((2, 4), np.float32))
    code, report = _doctor_json(model, "--data", wrong)
    [problem] = [f for f in report["findings"] if f["severity"] == "problem"]
    assert code == 2 and problem["check"] == "data"
    assert "has no array for input 'x'" in problem["message"]


def test_text_output_lists_severity_message_and_fix(tmp_path: Path) -> None:
    path = builders.save(builders.conv_bn(in_constants=True), tmp_path / "c.onnx")
    result = runner.invoke(app, ["doctor", str(path), "--config", "level1"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    note = next(i for i, line in enumerate(lines) if "Constant nodes" in line)
    assert lines[note].startswith("note ")
    assert lines[note + 1].strip().startswith("fix: nothing to do")
    assert "0 problem(s)" in lines[-1] and "ready to run" in lines[-1]


def test_sample_model_with_its_data_is_ready(tmp_path: Path) -> None:
    code, report = _doctor_json(
        SAMPLES / "digits_cnn.onnx", "--data", SAMPLES / "digits_val.npz", "--config", "level2"
    )
    assert code == 0
    assert report["counts"]["problem"] == 0
    assert {f["check"] for f in report["findings"]} <= {"int8-kernels", "fp16-kernels"}


@pytest.mark.parametrize("fixture", ["classifier", "vad"])
def test_real_models(fixture: str, request: pytest.FixtureRequest) -> None:
    path = request.getfixturevalue(fixture)
    code, report = _doctor_json(path)
    assert code == 0
    checks = {f["check"]: f for f in report["findings"]}
    assert "fp16-kernels" in checks and "dynamic-dims" in checks
    if fixture == "classifier":
        assert checks["constant-weights"]["message"].startswith("213 weight tensor(s)")
        assert checks["opset"]["message"].startswith("opset 11 is older than 13")
        assert checks["opset"]["severity"] == "note"
    else:
        assert checks["unused-initializers"]["message"].startswith("3 initializer(s)")
