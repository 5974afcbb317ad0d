"""Fidelity metrics and the default floor: the cases that fooled cosine, recurrent state, and
the BROKEN verdict end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from typer.testing import CliRunner

from mcompress import fidelity
from mcompress.cli import app
from mcompress.validate import cosine, output_metrics
from tests import builders

runner = CliRunner()


def _offset_model(path: Path, scale: float) -> Path:
    """features = x @ (scale * w) + 100: a large constant offset on a small variation."""
    w = builders.rng(1).normal(0, 1, (8, 4)).astype(np.float32) * scale
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["h"]),
            helper.make_node("Add", ["h", "offset"], ["features"]),
        ],
        "offset",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 4])],
        [builders._init("w", w), builders._init("offset", np.full(4, 100, np.float32))],
    )
    return builders.save(builders._model(graph), path)


def _recurrent_model(path: Path, feedback: float) -> Path:
    """stateN = tanh(x @ U + state @ (feedback * W)); speech = sigmoid(stateN @ V)."""
    r = builders.rng(2)
    inits = [
        builders._init("U", r.normal(0, 0.5, (4, 8)).astype(np.float32)),
        builders._init("W", r.normal(0, 0.5, (8, 8)).astype(np.float32) * feedback),
        builders._init("V", r.normal(0, 0.5, (8, 1)).astype(np.float32)),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "U"], ["a"]),
        helper.make_node("MatMul", ["state", "W"], ["b"]),
        helper.make_node("Add", ["a", "b"], ["c"]),
        helper.make_node("Tanh", ["c"], ["stateN"]),
        helper.make_node("MatMul", ["stateN", "V"], ["d"]),
        helper.make_node("Sigmoid", ["d"], ["speech"]),
    ]
    graph = helper.make_graph(
        nodes,
        "recurrent",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4]),
            helper.make_tensor_value_info("state", TensorProto.FLOAT, [1, 8]),
        ],
        [
            helper.make_tensor_value_info("speech", TensorProto.FLOAT, [1, 1]),
            helper.make_tensor_value_info("stateN", TensorProto.FLOAT, [1, 8]),
        ],
        inits,
    )
    return builders.save(builders._model(graph), path)


def _validate(*args: str | Path) -> tuple[int, str, str]:
    result = runner.invoke(app, ["validate", *map(str, args)])
    return result.exit_code, result.stdout, result.stderr


# ---------------------------------------------------------------- the cases that fooled cosine


def test_offset_output_fools_cosine_not_sqnr() -> None:
    variation = builders.rng(0).normal(0, 1, 1000)
    original, flattened = 100 + variation, np.full(1000, 100.0)
    assert cosine(original, flattened) > 0.9999  # every bit of variation lost
    assert -0.05 < fidelity.sqnr_db(original, flattened) <= 0  # no better than the mean
    # the same offset added to both sides changes nothing
    noisy = original + 0.1 * builders.rng(1).normal(0, 1, 1000)
    assert fidelity.sqnr_db(original, noisy) == pytest.approx(
        fidelity.sqnr_db(original - 100, noisy - 100)
    )
    assert fidelity.sqnr_db(original, noisy) == pytest.approx(20, abs=0.5)


def test_offset_model_with_its_variation_gone_is_broken(tmp_path: Path) -> None:
    original = _offset_model(tmp_path / "a.onnx", 1.0)
    flattened = _offset_model(tmp_path / "b.onnx", 0.0)
    code, out, err = _validate(original, flattened, "--json")
    assert code == 3
    report = json.loads(out)
    metrics = report["validation"]["outputs"]["features"]
    assert metrics["cosine"] > 0.999 and "top1_agreement" not in metrics
    assert metrics["sqnr_db"] == pytest.approx(0.0, abs=0.05)
    assert report["passed"] is False
    assert err.startswith("mcompress: BROKEN: output 'features' SQNR 0.0 dB < floor 1 dB on random")
    code, out, _ = _validate(original, flattened, "--no-gates")
    assert code == 0 and out.rstrip().endswith("PASSED (--no-gates: nothing judged)")


def test_near_constant_probability_is_judged_on_the_probability_scale() -> None:
    """A VAD's speech probability on random audio: 0.0015 +- 0.0005, error 0.0016 (cosine 0.90
    on the real model); no decision can change, and the floor does not cry wolf."""
    r = builders.rng(0)
    original = np.clip(0.0015 + 0.0005 * r.normal(0, 1, 512), 0, 1)
    compressed = np.clip(original + r.uniform(-0.0016, 0.0016, 512), 0, 1)
    assert cosine(original, compressed) < 0.9
    sqnr = fidelity.sqnr_db(original, compressed)
    # variance floored at 1e-4 against a mean squared error of about 0.0016**2 / 3
    assert sqnr == pytest.approx(10 * math.log10(1e-4 / np.mean((compressed - original) ** 2)))
    assert sqnr > 20 > fidelity.RANDOM_FLOOR.min_sqnr_db
    # the same error on an unbounded output of that spread is noise
    assert fidelity.sqnr_db(original - 1, compressed - 1) < 0


def test_class_scores_are_detected_conservatively() -> None:
    r = builders.rng(0)
    logits = r.normal(0, 3, (16, 5))
    softmax = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert fidelity.is_class_scores([softmax])
    assert fidelity.is_class_scores([np.log(softmax)])  # log-softmax
    assert fidelity.is_class_scores([logits], "logits")
    assert not fidelity.is_class_scores([logits], "embedding")  # could be anything
    assert not fidelity.is_class_scores([softmax[:, :1]])  # one column
    assert not fidelity.is_class_scores([softmax.reshape(2, 2, 4, 5)])  # a feature map


def test_class_scores_are_judged_by_top1_agreement() -> None:
    original = [np.array([[0.7, 0.3]]), np.array([[0.2, 0.8]]), np.array([[0.6, 0.4]])]
    swapped = [np.array([[0.3, 0.7]]), np.array([[0.8, 0.2]]), np.array([[0.6, 0.4]])]
    metrics = output_metrics(original, swapped, "prob")
    assert metrics["top1_agreement"] == pytest.approx(1 / 3)
    (check,) = fidelity.floor_checks({"prob": metrics}, fidelity.RANDOM_FLOOR)
    assert (check["metric"], check["passed"]) == ("top1_agreement", False)
    assert fidelity.describe(check) == "output 'prob': top-1 agreement 33.3% < floor 50%"


def test_recurrent_state_pairs_need_the_name_and_the_shape() -> None:
    inputs = {"state": [2, 1, 128], "x": [1, 512], "past_kv": [1, 4]}
    outputs = {"stateN": [2, 1, 128], "output": [1, 1], "present_kv": [1, 4], "xn": [1, 3]}
    assert fidelity.state_outputs(inputs, outputs) == {"stateN": "state", "present_kv": "past_kv"}


def test_recurrent_state_is_judged_through_the_output_it_feeds(tmp_path: Path) -> None:
    """The compressed model ignores its state: identical on the first step, wrong after. The
    samples run as one sequence, so the error shows in `speech`."""
    original = _recurrent_model(tmp_path / "a.onnx", 1.0)
    forgetful = _recurrent_model(tmp_path / "b.onnx", 0.0)
    code, out, _ = _validate(original, forgetful, "--json", "--no-gates")
    assert code == 0
    validation = json.loads(out)["validation"]
    state, speech = validation["outputs"]["stateN"], validation["outputs"]["speech"]
    assert state["recurrent_state_of"] == "state" and "recurrent_state_of" not in speech
    assert speech["max_abs_error"] > 0.05
    assert validation["overall"]["sqnr_db"] == speech["sqnr_db"]  # the state is not judged
    assert [c["output"] for c in validation["floor"]["checks"]] == ["speech"]
    assert any("'stateN' is recurrent state fed back to 'state'" in n for n in validation["notes"])


# ---------------------------------------------------------------- the floor end to end


def test_summary_ends_with_the_output_path_and_the_verdict(tmp_path: Path) -> None:
    model = builders.save(builders.mlp(), tmp_path / "mlp.onnx")
    out = tmp_path / "mlp.int8.onnx"
    result = runner.invoke(app, ["quantize", str(model), "-o", str(out)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.rstrip().splitlines()
    assert lines[-2:] == [f"output: {out.resolve()}", "PASSED"]


def test_floor_thresholds_are_options(tmp_path: Path) -> None:
    original = _offset_model(tmp_path / "a.onnx", 1.0)
    noisy = _offset_model(tmp_path / "b.onnx", 0.9)  # SQNR 20 dB
    assert _validate(original, noisy)[0] == 0
    code, _, err = _validate(original, noisy, "--min-sqnr", "30")
    assert code == 3 and "SQNR 20.0 dB < floor 30 dB" in err
    config = tmp_path / "strict.yaml"
    config.write_text("passes: [{type: strip}]\nvalidate: {min_sqnr: 400}\n")
    result = runner.invoke(app, ["run", str(original), "-c", str(config)])
    assert result.exit_code == 0  # strip changes no number: SQNR is infinite
    assert result.stdout.rstrip().endswith("PASSED")


def test_structured_pruning_of_the_classifier_is_broken(classifier: Path, tmp_path: Path) -> None:
    """The issue's case: accuracy 0.990 -> 0.500 on real crops, exit 0 before."""
    out = tmp_path / "cls.pruned.onnx"
    args = ["prune", str(classifier), "--structured", "--sparsity", "0.3", "-o", str(out)]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 3
    report = json.loads(result.stdout)
    (gate,) = report["gates"]
    assert (gate["name"], gate["value"], gate["passed"]) == ("min_top1_agreement", 0.0, False)
    assert report["passed"] is False
    name = "save_infer_model/scale_0.tmp_1"
    assert result.stderr == (
        f"mcompress: BROKEN: output '{name}' top-1 agreement 0.0% < floor 50% on random inputs "
        f"(model written to {out}; no report file requested)\n"
    )
    assert onnx.load(str(out)).graph.node
