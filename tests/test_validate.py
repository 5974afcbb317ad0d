"""Validation: metrics on real numbers, gates, and `mcompress validate` end to end."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from mcompress.cli import app
from mcompress.config import ValidateConfig
from mcompress.errors import DataError, GateError, ModelError
from mcompress.render_terminal import validation_lines
from mcompress.report import FileInfo, RunReport
from mcompress.validate import (
    Validation,
    classification_metrics,
    evaluate_gates,
    output_metrics,
    validate_pair,
)
from tests import builders

runner = CliRunner()
SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"


def _cli(*args: str | Path, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = runner.invoke(app, ["validate", *map(str, args)], env=env)
    return result.exit_code, result.output


def _mcompress(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """The real command line, error boundary and exit codes included."""
    return subprocess.run(
        [sys.executable, "-m", "mcompress", "validate", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def _scaled(model: onnx.ModelProto, factor: float) -> onnx.ModelProto:
    broken = onnx.ModelProto()
    broken.CopyFrom(model)
    for tensor in broken.graph.initializer:
        tensor.CopyFrom(
            numpy_helper.from_array(numpy_helper.to_array(tensor) * factor, tensor.name)
        )
    return broken


def _scores_model(path: Path, bias: list[float]) -> Path:
    """y = x + bias for x [batch, 3]: predictions are whatever the data says, plus a bias."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "bias"], ["scores"])],
        "scores",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(np.array(bias, np.float32), "bias")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


# ---------------------------------------------------------------- what it must show


def test_model_against_itself_is_exact(tmp_path: Path) -> None:
    model = builders.save(builders.mlp(), tmp_path / "mlp.onnx")
    code, out = _cli(model, model, "--json", "--min-cosine", "1", "--min-top1-agreement", "1")
    assert code == 0, out
    report = json.loads(out)
    overall = report["validation"]["overall"]
    assert overall["max_abs_error"] == 0 and overall["mean_abs_error"] == 0
    assert overall["cosine"] == 1.0 and overall["top1_agreement"] == 1.0
    assert overall["sqnr_db"] == "inf" and overall["nan_count"] == 0
    assert report["validation"]["samples"] == 32
    assert report["validation"]["inputs"]["source"] == "random"
    assert report["compression_ratio"] == 1.0 and report["passed"] is True
    gates = [(g["name"], g["passed"]) for g in report["gates"]]
    assert gates == [("min_cosine", True), ("min_top1_agreement", True)]


def test_weights_scaled_by_ten_fail_the_cosine_gate(tmp_path: Path) -> None:
    model = builders.mlp()
    original = builders.save(model, tmp_path / "mlp.onnx")
    broken = builders.save(_scaled(model, 10.0), tmp_path / "broken.onnx")
    report_path = tmp_path / "report.json"
    result = _mcompress(original, broken, "--min-cosine", "0.99", "--report", report_path)
    assert result.returncode == 3, result.stderr
    assert result.stderr == (
        f"mcompress: FAILED: gate min_cosine 0.7249 < 0.99 (report written to {report_path})\n"
    )
    report = json.loads(report_path.read_text())
    assert report["passed"] is False
    # The floor judges the softmax by top-1: scaling every layer keeps most predictions.
    gate, top1 = report["gates"]
    assert (top1["name"], top1["value"], top1["passed"]) == ("min_top1_agreement", 0.875, True)
    assert gate["name"] == "min_cosine" and gate["threshold"] == 0.99 and not gate["passed"]
    assert gate["value"] == report["validation"]["overall"]["cosine"] < 0.9
    assert report["validation"]["overall"]["max_abs_error"] > 0.1


def test_accuracy_precision_recall_f1_hand_computed(tmp_path: Path) -> None:
    x = np.array(
        [
            [0.9, 0.05, 0.05],  # label 0: original 0, compressed 0
            [0.6, 0.1, 0.3],  # label 0: original 0, compressed 2
            [0.1, 0.5, 0.1],  # label 1: original 1, compressed 2
            [0.2, 0.3, 0.5],  # label 1: original 2, compressed 2
            [0.1, 0.2, 0.7],  # label 2: original 2, compressed 2
            [0.5, 0.4, 0.1],  # label 2: original 0, compressed 2
        ],
        np.float32,
    )
    np.savez(tmp_path / "val.npz", x=x, labels=np.array([0, 0, 1, 1, 2, 2]))
    original = _scores_model(tmp_path / "a.onnx", [0, 0, 0])
    compressed = _scores_model(tmp_path / "b.onnx", [0, 0, 0.5])
    code, out = _cli(original, compressed, "--data", tmp_path / "val.npz", "--json", "--no-gates")
    assert code == 0, out
    task = json.loads(out)["validation"]["task"]
    assert task["output"] == "scores" and task["samples"] == 6
    # original predictions [0,0,1,2,2,0]: per class P = 2/3, 1, 1/2; R = 1, 1/2, 1/2
    expected_original = {"accuracy": 4 / 6, "precision": 13 / 18, "recall": 2 / 3, "f1": 59 / 90}
    # compressed [0,2,2,2,2,2]: P = 1, 0, 2/5; R = 1/2, 0, 1; F1 = 2/3, 0, 4/7
    expected_compressed = {"accuracy": 0.5, "precision": 7 / 15, "recall": 0.5, "f1": 26 / 63}
    for key, value in expected_original.items():
        assert task["original"][key] == pytest.approx(value, abs=1e-12), key
    for key, value in expected_compressed.items():
        assert task["compressed"][key] == pytest.approx(value, abs=1e-12), key
    assert task["accuracy_drop"] == pytest.approx(1 / 6)
    code, _ = _cli(
        original, compressed, "--data", tmp_path / "val.npz", "--max-accuracy-drop", "0.1"
    )
    assert code == 3


def test_sample_classifier_with_its_validation_data() -> None:
    model, data = SAMPLES / "digits_mlp.onnx", SAMPLES / "digits_val.npz"
    if not (model.is_file() and data.is_file()):
        pytest.skip("sample_models/digits_mlp.onnx not built")
    code, out = _cli(model, model, "--data", data, "--json", "--max-accuracy-drop", "0")
    assert code == 0, out
    task = json.loads(out)["validation"]["task"]
    npz = np.load(data)
    (probs,) = builders.run(model, {"x": npz["x"]})
    accuracy = float(np.mean(probs.argmax(1) == npz["labels"]))
    assert task["samples"] == len(npz["labels"])  # all of the data, not the default 32
    assert task["original"]["accuracy"] == task["compressed"]["accuracy"] == accuracy
    assert task["accuracy_drop"] == 0
    assert set(task["original"]) == {"accuracy", "precision", "recall", "f1"}


def test_vad_against_itself_runs_unaided(vad: Path) -> None:
    code, out = _cli(vad, vad, "--json", "--samples", "4")
    assert code == 0, out
    validation = json.loads(out)["validation"]
    assert set(validation["outputs"]) == {"output", "stateN"}
    assert validation["overall"]["max_abs_error"] == 0
    assert validation["inputs"]["inputs"]["sr"]["min"] == 16000
    assert validation["latency"]["input_shapes"]["input"] == [1, 512]  # its window


# ---------------------------------------------------------------- metrics


def test_output_metrics_numbers() -> None:
    a = [np.array([[3.0, 4.0]], np.float32)]
    b = [np.array([[3.0, 5.0]], np.float32)]
    m = output_metrics(a, b, "logits")
    assert m["max_abs_error"] == 1.0 and m["mean_abs_error"] == 0.5
    assert m["cosine"] == pytest.approx(29 / (5 * math.sqrt(34)))
    # variance of the original 0.25, mean squared error 0.5
    assert m["sqnr_db"] == pytest.approx(10 * math.log10(0.25 / 0.5))
    assert m["relative_l2_error"] == pytest.approx(1 / 5)
    assert m["top1_agreement"] == 1.0 and m["classes"] == 2


def test_confident_agreement_ignores_close_calls() -> None:
    original = [np.array([[0.55, 0.45]]), np.array([[0.9, 0.1]]), np.array([[0.2, 0.8]])]
    compressed = [np.array([[0.45, 0.55]]), np.array([[0.8, 0.2]]), np.array([[0.7, 0.3]])]
    m = output_metrics(original, compressed)
    assert m["top1_agreement"] == pytest.approx(1 / 3)
    assert m["confident_rows"] == 2  # the 0.55/0.45 row has a margin of 0.1
    assert m["top1_agreement_confident"] == 0.5


def test_new_nan_makes_outputs_incomparable() -> None:
    m = output_metrics([np.ones((1, 4))], [np.array([[1.0, np.nan, 1.0, 1.0]])])
    assert m["nan_count"] == 1 and math.isnan(m["cosine"]) and m["max_abs_error"] == math.inf
    report = _report({"overall": {"cosine": m["cosine"]}})
    (gate,) = evaluate_gates(ValidateConfig(min_cosine=0.5), report)
    assert not gate.passed


def test_classification_metrics_class_never_predicted() -> None:
    m = classification_metrics(np.array([0, 1, 1, 1]), np.array([0, 0, 0, 0]))
    assert m == {"accuracy": 0.25, "precision": 0.125, "recall": 0.5, "f1": pytest.approx(0.2)}


def test_progress_reaches_total(tmp_path: Path) -> None:
    model = builders.save(builders.mlp(), tmp_path / "mlp.onnx")
    calls: list[tuple[str, int, int]] = []
    cfg = ValidateConfig(samples=5, latency_runs=3)
    result = validate_pair(model, model, cfg, lambda *a: calls.append(a))
    assert result is not None and result.latency is not None and result.latency["runs"] == 3
    assert calls[0] == ("validating", 1, 8) and calls[-1] == ("validating", 8, 8)
    assert validate_pair(model, model, ValidateConfig(enabled=False), lambda *a: None) is None


# ---------------------------------------------------------------- gates


def _report(validation: dict | None, ratio: float = 2.0) -> RunReport:
    info = FileInfo("m.onnx", 100, 90, 10)
    section = None if validation is None else Validation(**validation)
    return RunReport("validate", info, info, compression_ratio=ratio, validation=section)


def test_gates_compare_in_the_right_direction() -> None:
    check = {"output": "y", "metric": "top1_agreement", "value": 0.97, "threshold": 0.98}
    validation = {
        "overall": {"cosine": 0.995, "top1_agreement": 0.97},
        "floor": {"inputs": "data", "checks": [{**check, "passed": False}]},
        "task": {"accuracy_drop": 0.02},
        "latency": {"ratio": 1.6, "ratio_ci95": [1.3, 1.9], "gate_ratio": 1.3},
    }
    cfg = ValidateConfig(
        max_accuracy_drop=0.01,
        min_cosine=0.99,
        min_top1_agreement=0.98,
        max_latency_ratio=1.5,
        min_compression_ratio=2.0,
    )
    gates = {g.name: (g.value, g.passed) for g in evaluate_gates(cfg, _report(validation))}
    assert gates == {
        "max_accuracy_drop": (0.02, False),
        "min_cosine": (0.995, True),
        "min_top1_agreement": (0.97, False),
        "max_latency_ratio": (1.3, True),
        "min_compression_ratio": (2.0, True),
    }


def test_unmeasurable_gate_fails_with_a_reason() -> None:
    report = _report({"overall": {"cosine": 1.0}, "task": None})
    (gate,) = evaluate_gates(ValidateConfig(max_accuracy_drop=0.01), report)
    assert (gate.value, gate.passed) == (None, False)
    assert report.notes == [
        "gate max_accuracy_drop fails: accuracy drop (needs --data with labels) is unavailable "
        "(not measured)"
    ]
    skipped = _report(None)
    (gate,) = evaluate_gates(ValidateConfig(min_cosine=0.9), skipped)
    assert not gate.passed and "validation was skipped" in skipped.notes[0]


def test_markdown_and_step_summary(tmp_path: Path) -> None:
    model = builders.save(builders.mlp(), tmp_path / "mlp.onnx")
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    code, out = _cli(
        model, model, "--samples", "2", "--markdown", tmp_path / "r.md",
        env={"GITHUB_STEP_SUMMARY": str(summary)},
    )  # fmt: skip
    assert code == 0, out
    text = (tmp_path / "r.md").read_text()
    assert text.startswith("## mcompress validate: PASSED")
    assert "| probs | 0 | 0 | 1 | ∞ | 0/0 | 100.00% |" in text
    assert summary.read_text() == "earlier step\n" + text + "\n"


def test_missing_model_exits_2_with_one_line(tmp_path: Path) -> None:
    model = builders.save(builders.mlp(), tmp_path / "mlp.onnx")
    result = _mcompress(model, tmp_path / "nope.onnx")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"mcompress: error: model file '{tmp_path / 'nope.onnx'}' does not exist"
    ]


def test_mismatched_data_and_models_are_bad_input(tmp_path: Path) -> None:
    model = builders.save(builders.mlp(), tmp_path / "mlp.onnx")
    np.savez(tmp_path / "bad.npz", x=np.zeros((2, 31), np.float32))
    other = builders.save(builders.conv_bn(), tmp_path / "conv.onnx")
    for args, error, message in (
        ((model, model, "--data", tmp_path / "bad.npz"), DataError, "input 'x' has shape [2, 31]"),
        ((model, other), DataError, "the compressed model failed on sample 0"),
        ((model, tmp_path / "bad.npz"), ModelError, "bad.npz"),
    ):
        result = runner.invoke(app, ["validate", *map(str, args)])
        assert isinstance(result.exception, error), result.output
        assert message in result.exception.message and result.exception.exit_code == 2


@pytest.mark.parametrize(
    ("slower", "text"), [(True, "SLOWER (1.30x, 99.9% confidence)"), (False, "(1.30x)")]
)
def test_summary_says_slower_only_when_the_test_says_so(slower: bool, text: str) -> None:
    latency = {
        "original": {"median_ms": 1.0, "p90_ms": 1.1},
        "compressed": {"median_ms": 1.3, "p90_ms": 1.4},
        "ratio": 1.3,
        "slower": slower,
        "confidence_slower": 0.999,
    }
    rows = validation_lines(Validation(samples=1, inputs={"synthetic": True}, latency=latency))
    (row,) = [r for r in rows if r[0] == "latency (median)"]
    assert text in row[2] and ("SLOWER" in row[2]) is slower


def test_summary_names_the_output_behind_each_worst_figure() -> None:
    outputs = {
        "prob": {"cosine": 0.90, "max_abs_error": 0.0016},
        "state": {"cosine": 0.98, "max_abs_error": 2.0},
    }
    overall = {"cosine": 0.90, "max_abs_error": 2.0}
    validation = Validation(samples=1, outputs=outputs, overall=overall)
    rows = {label: text for label, _, text in validation_lines(validation)}
    assert rows["cosine"] == "0.900000 (prob)"
    assert rows["max abs error"] == "2 (state)"
    validation.outputs = {"prob": outputs["prob"]}
    assert {label: t for label, _, t in validation_lines(validation)}["cosine"] == "0.900000"


def test_onnxruntime_crashing_on_the_output_is_a_one_line_error_exit_3(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sessions live in child processes: a segfault there (onnxruntime mis-optimizing a graph)
    becomes exit 3 naming the model, not a dead mcompress."""
    from mcompress import model_server

    crash = (
        "import os, signal, sys\nif 'out' in sys.argv[2]: os.kill(os.getpid(), signal.SIGSEGV)\n"
    )
    monkeypatch.setattr(model_server, "BOOT", crash + model_server.BOOT)
    src = builders.save(builders.mlp(), tmp_path / "mlp.onnx")
    out = tmp_path / "out.onnx"
    result = runner.invoke(app, ["quantize", str(src), "-o", str(out)])
    error = result.exception
    assert isinstance(error, GateError) and error.exit_code == 3
    assert "onnxruntime crashed (SIGSEGV)" in error.message and "compressed model" in error.message
    assert out.is_file()


def test_models_with_different_input_names_are_one_line_exit_2(tmp_path: Path) -> None:
    original = builders.save(builders.mlp(), tmp_path / "a.onnx")
    renamed = builders.mlp()
    renamed.graph.input[0].name = "pixels"
    renamed.graph.node[0].input[0] = "pixels"
    other = builders.save(renamed, tmp_path / "b.onnx")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    result = _mcompress(original, other)
    assert (result.returncode, result.stderr) == (
        2,
        "mcompress: error: the models have different inputs: "
        "original ['x'], compressed ['pixels']\n",
    )
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


@pytest.mark.parametrize("alone", [True, False])
def test_memory_is_measured_one_after_the_other_or_side_by_side_alike(
    tmp_path: Path, alone: bool
) -> None:
    """Small models are served side by side, large ones in turn; both ways each model gets its
    own peak: a 4x larger MLP needs more memory to load and run."""
    from mcompress import performance, validate
    from mcompress.inputs import make_feeds

    small = builders.save(builders.mlp(hidden=64), tmp_path / "small.onnx")
    large = builders.save(builders.mlp(hidden=16384), tmp_path / "large.onnx")
    feeds = make_feeds(small, data=None, samples=1, seed=0, input_shapes={})
    sessions = validate.open_sessions(small, large, alone)
    for which in sessions.order():
        sessions[which].run(None, feeds.feeds[0])
    found = performance.memory(sessions)
    sessions.close()
    assert found is not None
    assert found["compressed_peak_bytes"] > found["original_peak_bytes"] + (1 << 20)


def test_a_crash_of_the_original_served_alone_stops_before_the_compressed_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Served one after the other (large models), the original's crash is the error at once:
    the compressed model's process is not started (it would write a marker file)."""
    from mcompress import model_server, performance

    marker = tmp_path / "started"
    script = (
        "import os, pathlib, signal, sys\n"
        "if sys.argv[2].endswith('orig.onnx'): os.kill(os.getpid(), signal.SIGSEGV)\n"
        f"pathlib.Path({str(marker)!r}).touch()\n"
    )
    monkeypatch.setattr(model_server, "BOOT", script + model_server.BOOT)
    monkeypatch.setattr(performance, "SIDE_BY_SIDE_BYTES", 0)
    original = builders.save(builders.mlp(), tmp_path / "orig.onnx")
    compressed = builders.save(builders.mlp(), tmp_path / "out.onnx")
    with pytest.raises(ModelError, match="crashed .SIGSEGV. loading and running the original"):
        validate_pair(original, compressed, ValidateConfig(), lambda *a: None)
    assert not marker.exists()
