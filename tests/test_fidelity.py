"""Fidelity metrics and the default floor: the cases that fooled cosine, recurrent state, and
the BROKEN verdict end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper
from typer.testing import CliRunner

from mcompress import config, fidelity, render
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


def _map_model(path: Path, scale: float = 1.0, bias: float = 0.5) -> Path:
    """maps = sigmoid(conv3x3(x) * scale + bias * scale): a detector's probability map."""
    w = builders.rng(3).normal(0, 2, (1, 1, 3, 3)).astype(np.float32) * scale
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w", "b"], ["logits"], pads=[1, 1, 1, 1]),
            helper.make_node("Sigmoid", ["logits"], ["maps"]),
        ],
        "map",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 16, 16])],
        [helper.make_tensor_value_info("maps", TensorProto.FLOAT, [1, 1, 16, 16])],
        [builders._init("w", w), builders._init("b", np.array([bias * scale], np.float32))],
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


def test_class_scores_of_a_single_predicted_class_are_judged_by_sqnr() -> None:
    """Random inputs that all fall in one class: a model collapsed onto it agrees 100%."""
    original = [np.array([[0.1, 0.9]]), np.array([[0.3, 0.7]]), np.array([[0.05, 0.95]])]
    collapsed = [np.array([[0.0, 1.0]])] * 3
    metrics = output_metrics(original, collapsed, "prob")
    assert metrics["top1_agreement"] == 1.0 and metrics["original_classes_predicted"] == 1
    check, agreement = fidelity.floor_checks({"prob": metrics}, fidelity.RANDOM_FLOOR)
    assert (check["metric"], check["threshold"], check["passed"]) == ("sqnr_db", 0.0, True)
    # variance of the flattened scores 0.1342, mean squared error 0.0342
    assert check["value"] == pytest.approx(10 * math.log10(0.13417 / 0.03417), abs=1e-3)
    assert (agreement["metric"], agreement["passed"]) == ("top1_agreement", True)


def test_a_single_predicted_class_left_on_half_the_rows_is_broken() -> None:
    """A CRNN proxy predicts blank at every step of random images; structured pruning that
    sends its real lines to 0% correct keeps SQNR 0.93 dB (the classes' spread dominates the
    variance) but agrees on 49.9% of steps: the agreement check stops it."""
    metrics = {"sqnr_db": 0.93, "top1_agreement": 0.4994, "original_classes_predicted": 1}
    sqnr, agreement = fidelity.floor_checks({"softmax_out": metrics}, fidelity.RANDOM_FLOOR)
    assert (sqnr["metric"], sqnr["passed"]) == ("sqnr_db", True)
    assert (agreement["metric"], agreement["threshold"], agreement["passed"]) == (
        "top1_agreement",
        0.5,
        False,
    )
    assert fidelity.describe(agreement) == (
        "output 'softmax_out': top-1 agreement 49.9% < floor 50%"
    )


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
    # Random inputs all fall in class 1 for this model, so its scores are judged (agreement
    # is judged too: the pruned model predicts the other class)
    gate, agreement = report["gates"]
    assert (gate["name"], gate["threshold"], gate["passed"]) == ("min_sqnr", 0.0, False)
    assert (agreement["name"], agreement["passed"]) == ("min_top1_agreement", False)
    assert gate["value"] < -4
    assert report["passed"] is False
    name = "save_infer_model/scale_0.tmp_1"
    assert result.stderr == (
        f"mcompress: BROKEN: output '{name}' SQNR {gate['value']:.1f} dB < floor 0 dB; output "
        f"'{name}' top-1 agreement 0.0% < floor 50% on random inputs (model written to {out}; "
        "no report file requested)\n"
    )
    assert onnx.load(str(out)).graph.node


# ---------------------------------------------------------------- presets as budgets, tune


def _flat_stack(path: Path) -> Path:
    """Two 64x64 MatMuls whose weights all have the same magnitude: magnitude pruning removes
    signal in proportion, so no sparsity keeps 20 dB, while int8 keeps about 40 dB."""
    r = builders.rng(3)
    weights = [np.sign(r.normal(0, 1, (64, 64))).astype(np.float32) * 0.1 for _ in range(2)]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w0"], ["h"]),
         helper.make_node("MatMul", ["h", "w1"], ["y"])],
        "flat",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 64])],
        [builders._init("w0", weights[0]), builders._init("w1", weights[1])],
    )  # fmt: skip
    return builders.save(builders._model(graph), path)


def test_presets_never_prune_below_their_budget(tmp_path: Path) -> None:
    model = _flat_stack(tmp_path / "flat.onnx")
    reports = {}
    for preset in ("level1", "level2", "level3", "max-compression"):
        out = tmp_path / f"{preset}.onnx"
        args = ["run", str(model), "-c", preset, "-o", str(out), "--min-sqnr", "20", "--json"]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, (preset, result.output)
        reports[preset] = json.loads(result.stdout)
    level2 = reports["level2"]
    assert [t["passed"] for t in level2["search"]["trials"]][1:] == [False, False]
    assert level2["output"]["size_bytes"] == reports["level1"]["output"]["size_bytes"]
    assert any("the result is the baseline" in n for n in level2["notes"])
    sizes = [reports[p]["output"]["size_bytes"] for p in reports]
    assert sizes == sorted(sizes, reverse=True), sizes
    for report in reports.values():
        assert report["validation"]["overall"]["sqnr_db"] >= 20


@pytest.mark.parametrize("preset", ["fixed-level2", "fixed-level3", "fixed-max-compression"])
def test_fixed_recipe_on_the_same_model_is_broken(preset: str, tmp_path: Path) -> None:
    """Where the budget presets fall back to level1, each fixed recipe prunes anyway: exit 3."""
    model = _flat_stack(tmp_path / "flat.onnx")
    args = ["run", str(model), "-c", preset, "-o", str(tmp_path / "o.onnx")]
    result = runner.invoke(app, [*args, "--min-sqnr", "20"])
    assert result.exit_code == 3
    assert "BROKEN: output 'y' SQNR" in result.stderr


def test_tune_writes_the_smallest_model_and_a_pipeline_that_reproduces_it(tmp_path: Path) -> None:
    model = builders.save(builders.mlp(hidden=64, inputs=64), tmp_path / "mlp.onnx")
    out, emitted = tmp_path / "mlp.tuned.onnx", tmp_path / "mlp.tuned.yaml"
    # A random MLP's top-1 changes under any pruning: the budget is stated, otherwise the
    # search's own margin (98% agreement) keeps the baseline.
    args = ["tune", str(model), "-o", str(out), "--min-top1-agreement", "0.5", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    search = report["search"]
    assert search["trials"][0]["label"] == "baseline (no prune, no cluster)"
    assert report["output"]["size_bytes"] == min(t["size_bytes"] for t in search["front"])
    assert report["output"]["size_bytes"] < search["trials"][0]["size_bytes"]
    markdown = render.to_markdown(report)
    assert "### Search" in markdown and "| baseline (no prune, no cluster) |" in markdown
    again = tmp_path / "again.onnx"
    result = runner.invoke(app, ["run", str(model), "-c", str(emitted), "-o", str(again)])
    assert result.exit_code == 0, result.output
    assert again.read_bytes() == out.read_bytes()


def _small_but_vital(path: Path) -> Path:
    """x -> MatMul w0 (all +-0.01: small, and every weight matters) -> MatMul w1 (a few +-2
    that matter, many +-0.02 that do not). One global magnitude threshold prunes w0 first and
    breaks the model at any sparsity; per layer, w1 alone can lose 80%."""
    r = builders.rng(5)
    w0 = np.sign(r.normal(0, 1, (64, 64))).astype(np.float32) * 0.01
    w1 = np.sign(r.normal(0, 1, (64, 64))).astype(np.float32) * 0.02
    w1[r.random((64, 64)) < 0.1] *= 100
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w0"], ["h"], name="mm0"),
         helper.make_node("MatMul", ["h", "w1"], ["y"], name="mm1")],
        "small_but_vital",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 64])],
        [builders._init("w0", w0), builders._init("w1", w1)],
    )  # fmt: skip
    return builders.save(builders._model(graph), path)


def test_tune_per_layer_beats_one_global_sparsity_and_reproduces(tmp_path: Path) -> None:
    model = _small_but_vital(tmp_path / "m.onnx")
    out, emitted = tmp_path / "m.tuned.onnx", tmp_path / "m.tuned.yaml"
    args = ["tune", str(model), "-o", str(out), "--min-sqnr", "20", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    trials = report["search"]["trials"]
    global_trials = [t for t in trials if t["sparsity"] is not None]
    assert global_trials and not any(t["passed"] for t in global_trials)
    assert report["search"]["chosen"]["label"].startswith("per layer: 1 of 2 at 0.8, 8")
    assert report["output"]["size_bytes"] < trials[0]["size_bytes"]  # below the int8 baseline
    assert report["validation"]["overall"]["sqnr_db"] >= 20
    pipeline_yaml = yaml.safe_load(emitted.read_text())
    prune_cfg = next(p for p in pipeline_yaml["passes"] if p["type"] == "prune")
    assert prune_cfg["scope"] == "layer" and prune_cfg["sparsity"] >= 0.5
    assert prune_cfg["layers"] == {"w0": 0.0}
    again = tmp_path / "again.onnx"
    result = runner.invoke(app, ["run", str(model), "-c", str(emitted), "-o", str(again)])
    assert result.exit_code == 0, result.output
    assert again.read_bytes() == out.read_bytes()


def test_search_without_labels_keeps_a_margin_above_the_floor() -> None:
    """A candidate that keeps the lenient floor (here 8.9 dB > 1 dB) but not the search's own
    margin is rejected without labels; an accuracy budget or an explicit min_sqnr decides
    instead."""
    from types import SimpleNamespace

    from mcompress import budget, config
    from mcompress.report import Gate

    def report(sqnr: float, top1: float | None = None) -> SimpleNamespace:
        metrics = {"sqnr_db": sqnr, "top1_agreement": top1, "original_classes_predicted": 2}
        return SimpleNamespace(validation=SimpleNamespace(outputs={"y": metrics}))

    plain = config.build({"passes": [{"type": "strip"}]})
    floor = [Gate("min_sqnr", 1.0, 8.9, True)]
    assert not budget._within_margin(plain, report(8.9), floor)
    assert budget._within_margin(plain, report(24.0), floor)
    assert not budget._within_margin(plain, report(40.0, top1=0.95), floor)
    assert budget._within_margin(plain, report(40.0, top1=0.99), floor)
    accuracy = [*floor, Gate("max_accuracy_drop", 0.01, 0.005, True)]
    assert budget._within_margin(plain, report(8.9), accuracy)
    own = config.build({"passes": [{"type": "strip"}], "validate": {"min_sqnr": 6}})
    assert budget._within_margin(own, report(8.9), floor)


def test_search_trials_recover_on_fewer_calibration_samples(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Trials recover on at most SEARCH_CALIBRATION_SAMPLES (recovery costs grow with the
    samples), and the result is the chosen trial's own config. The search names its choice."""
    from mcompress import budget, pipeline

    seen: list[list[int]] = []
    real = pipeline.trial_runner

    def recording(opts: pipeline.RunOptions) -> budget.Compress:
        compress = real(opts)

        def wrapped(cfg: config.PipelineConfig, path: Path) -> Any:
            seen.append(
                [p.calibration_samples for p in cfg.passes if getattr(p, "calibration", None)]
            )
            return compress(cfg, path)

        return wrapped

    chosen_configs: list[config.PipelineConfig] = []
    real_search = budget.search

    def searching(*args: Any, **kwargs: Any) -> Any:
        chosen_config, section = real_search(*args, **kwargs)
        chosen_configs.append(chosen_config)
        return chosen_config, section

    monkeypatch.setattr(pipeline, "trial_runner", recording)
    monkeypatch.setattr(budget, "search", searching)
    model = builders.save(builders.mlp(hidden=64, inputs=64), tmp_path / "mlp.onnx")
    out = tmp_path / "out.onnx"
    args = ["run", str(model), "-c", "level2", "-o", str(out), "--calibration", "random"]
    result = runner.invoke(app, [*args, "--min-top1-agreement", "0.5", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    trials = report["search"]["trials"]
    assert len(seen) == len(trials) == budget.planned_trials(config.load("level2"))
    assert all(samples and max(samples) == budget.SEARCH_CALIBRATION_SAMPLES for samples in seen)
    chosen = report["search"]["chosen"]["label"]
    assert any(f"search: chose {chosen} of {len(trials)} trials" in n for n in report["notes"])
    # The result is the judged trial itself, on the same samples: it keeps the gates it kept.
    [final] = chosen_configs
    recovering = [p for p in final.passes if getattr(p, "calibration", None)]
    assert recovering and {p.calibration_samples for p in recovering} == {32}


def test_an_accuracy_drop_equal_to_the_budget_keeps_it() -> None:
    """0.99 - 0.98 is 0.010000000000000009 in floating point: one point lost on 400 samples
    keeps a one-point budget."""
    from types import SimpleNamespace

    from mcompress import config, validate

    cfg = config.build({"passes": [{"type": "strip"}], "validate": {"max_accuracy_drop": 0.01}})
    report = SimpleNamespace(
        validation=SimpleNamespace(task={"accuracy_drop": 0.99 - 0.98}, floor=None), notes=[]
    )
    gates = validate.evaluate_gates(cfg.validation, report)  # type: ignore[arg-type]
    assert [(g.name, g.passed) for g in gates if g.name == "max_accuracy_drop"] == [
        ("max_accuracy_drop", True)
    ]


def _lstm(path: Path) -> Path:
    """A recurrent model: LSTM (hidden 32) over a [seq, batch, 16] input, then a projection."""
    r = builders.rng(7)
    graph = helper.make_graph(
        [helper.make_node("LSTM", ["x", "w", "r", "b"], ["y"], hidden_size=32, name="lstm"),
         helper.make_node("Squeeze", ["y", "axis"], ["h"], name="squeeze"),
         helper.make_node("MatMul", ["h", "proj"], ["out"], name="proj")],
        "lstm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 1, 16])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [8, 1, 4])],
        [builders._init("w", r.normal(0, 0.3, (1, 128, 16)).astype(np.float32)),
         builders._init("r", r.normal(0, 0.3, (1, 128, 32)).astype(np.float32)),
         builders._init("b", r.normal(0, 0.1, (1, 256)).astype(np.float32)),
         builders._init("axis", np.array([1], np.int64)),
         builders._init("proj", r.normal(0, 0.3, (32, 4)).astype(np.float32))],
    )  # fmt: skip
    return builders.save(builders._model(graph), path)


@pytest.mark.parametrize("command", ["quantize", "fp16"])
@pytest.mark.parametrize("kind", ["cnn", "residual", "transformer", "recurrent"])
def test_default_int8_and_fp16_pass_the_floor_on_random_inputs(
    kind: str, command: str, tmp_path: Path
) -> None:
    """No false alarm: the safe commands keep the default floor on CNN, transformer-like and
    recurrent models judged on random inputs."""
    build = {
        "cnn": lambda p: builders.save(builders.conv_bn(), p),
        "residual": lambda p: builders.save(builders.residual(), p),
        "transformer": lambda p: builders.save(builders.transformer_like(vocab=500), p),
        "recurrent": _lstm,
    }[kind]
    model = build(tmp_path / f"{kind}.onnx")
    result = runner.invoke(app, [command, str(model), "-o", str(tmp_path / "o.onnx"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    checks = report["validation"]["floor"]["checks"]
    assert report["validation"]["floor"]["inputs"] == "random"
    assert checks and all(c["passed"] for c in checks), checks


def test_tune_time_budget_stops_with_the_best_so_far(tmp_path: Path) -> None:
    """A time budget spent by the first trial: the search stops, keeps the baseline, says so."""
    model = _small_but_vital(tmp_path / "m.onnx")
    out = tmp_path / "m.tuned.onnx"
    args = ["tune", str(model), "-o", str(out), "--min-sqnr", "20", "--time-budget", "0.01s"]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    trials = report["search"]["trials"]
    assert trials[0]["passed"] and trials[0]["ran"]
    # one untried candidate per stage is listed as such (no size), then the stage ends
    assert [(t["label"], t["ran"], t["size_bytes"]) for t in trials[1:]] == [
        ("sparsity 0.35", False, None),
        ("32 clusters", False, None),
    ]
    assert report["output"]["size_bytes"] == trials[0]["size_bytes"]
    assert "the time budget (0.01 s) ended the search: 2 candidates not run" in report["notes"]
    assert not any("the result is the baseline" in n for n in report["notes"])
    rows = render.to_markdown(report)
    assert "| sparsity 0.35 | not run: time budget spent | - | no |  | - |" in rows


# ---------------------------------------------------------------- probability maps


def test_a_probability_map_on_random_inputs_is_judged_by_its_decisions(tmp_path: Path) -> None:
    """A detector's map on random images is noise around its training, where SQNR judged noise
    (the detector proxy pruned to 50%: SQNR 0.8 dB, BROKEN, while IoU 0.946 on real images).
    Its decisions at 0.5 are judged instead: kept decisions pass, flipped ones stay BROKEN."""
    original = _map_model(tmp_path / "map.onnx")
    squashed = _map_model(tmp_path / "squashed.onnx", scale=0.01)  # same signs, values ~0.5
    code, out, err = _validate(original, squashed)
    assert code == 0, err
    assert "gate min_map_iou" in out and "1 (maps) pass" in out
    flipped = _map_model(tmp_path / "flipped.onnx", scale=-1.0)
    code, _, err = _validate(original, flipped)
    assert code == 3
    assert "BROKEN: output 'maps' decision IoU 0.0% < floor 50% on random inputs" in err
    # An explicit SQNR floor judges every output by SQNR, maps too; so does real data.
    code, _, err = _validate(original, squashed, "--min-sqnr", "1")
    assert code == 3 and "output 'maps' SQNR" in err
    data = tmp_path / "x.npz"
    np.savez(data, x=builders.rng(4).normal(0, 1, (8, 1, 16, 16)).astype(np.float32))
    code, _, err = _validate(original, squashed, "--data", data)
    assert code == 3 and "output 'maps' SQNR" in err


def test_a_map_decided_one_way_everywhere_is_judged_by_sqnr() -> None:
    """A map all above 0.5 agrees with a model collapsed onto 'all text': SQNR judges it."""
    original = [
        np.full((1, 1, 16, 16), 0.9, np.float32) + np.linspace(0, 0.05, 256).reshape(16, 16)
    ]
    collapsed = [np.full((1, 1, 16, 16), 0.99, np.float32)]
    metrics = output_metrics(original, collapsed, "maps")
    assert metrics["map_iou"] == 1.0 and metrics["map_positive_share"] == 1.0
    (check,) = fidelity.floor_checks({"maps": metrics}, fidelity.RANDOM_FLOOR)
    assert (check["metric"], check["passed"]) == ("sqnr_db", False)
