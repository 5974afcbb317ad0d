"""`mcompress sensitivity`: each layer alone at each level, sorted table and JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from typer.testing import CliRunner

from mcompress import model_io, sensitivity
from mcompress.cli import app
from mcompress.errors import UsageError
from mcompress.passes import quantize
from mcompress.passes.base import PassContext
from mcompress.passes.quantize.restored import restored_weights
from mcompress.weights import find_candidates
from tests import builders
from tests.conftest import SAMPLES

runner = CliRunner()
DIGITS = SAMPLES / "digits_mlp.onnx"
DIGITS_VAL = SAMPLES / "digits_val.npz"


@pytest.fixture
def digits() -> Path:
    if not (DIGITS.is_file() and DIGITS_VAL.is_file()):
        pytest.skip("sample_models/digits_mlp.onnx or digits_val.npz not built")
    return DIGITS


def test_digits_with_labels_json_sorted_and_report_written(digits: Path, tmp_path: Path) -> None:
    report = tmp_path / "sens.json"
    result = runner.invoke(
        app,
        ["sensitivity", str(digits), "--data", str(DIGITS_VAL), "--json", "--report", str(report)],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert json.loads(report.read_text()) == data
    assert data["metric"] == "accuracy"
    assert data["baseline"] > 0.95
    assert data["levels"] == [0.3, 0.5, 0.7, 0.9]
    assert data["layers_probed"] == data["layers_total"] >= 2
    scores = [row["score"] for row in data["layers"]]
    assert scores == sorted(scores, reverse=True)
    for row in data["layers"]:
        assert [r["level"] for r in row["results"]] == data["levels"]
        assert row["score"] == pytest.approx(np.mean([r["delta"] for r in row["results"]]))
        for r in row["results"]:
            assert r["delta"] == pytest.approx(data["baseline"] - r["metric"])
    # Removing 90% of a layer costs more accuracy than removing 30% of it.
    worst = data["layers"][0]["results"]
    assert worst[-1]["metric"] < worst[0]["metric"] - 0.05


def test_digits_table_lists_layers_most_sensitive_first(digits: Path, tmp_path: Path) -> None:
    html = tmp_path / "sens.html"
    result = runner.invoke(
        app,
        ["sensitivity", str(digits), "--data", str(DIGITS_VAL), "--levels", "0.5,0.9"]
        + ["--html", str(html)],
        terminal_width=200,
    )
    assert result.exit_code == 0, result.output
    assert "sensitivity to prune (accuracy" in result.stdout
    data = sensitivity.analyze(
        digits,
        pass_type="prune",
        levels=[0.5, 0.9],
        data=DIGITS_VAL,
        samples=256,
        seed=0,
        input_shapes={},
        max_layers=0,
    )
    names = [row["name"] for row in data["layers"]]
    positions = [result.stdout.index(f" {name} ") for name in names]
    assert positions == sorted(positions)
    page = html.read_text()
    assert page.startswith("<!doctype html>") and "<svg" in page


def test_quantize_random_inputs_cosine_and_max_layers(tmp_path: Path) -> None:
    source = builders.save(builders.transformer_like(vocab=500), tmp_path / "t.onnx")
    data = sensitivity.analyze(
        source,
        pass_type="quantize",
        levels=[8, 4],
        data=None,
        samples=8,
        seed=0,
        input_shapes={"tokens": (1, 16)},
        max_layers=2,
    )
    assert data["metric"] == "cosine"
    assert data["layers_total"] == 4 and data["layers_probed"] == 2
    assert {row["name"] for row in data["layers"]} == {"embedding", "w_ff"}  # the two largest
    assert any("probed the 2 largest of 4" in note for note in data["notes"])
    for row in data["layers"]:
        eight, four = (r["metric"] for r in row["results"])
        assert eight > 0.999 and four < eight


def test_level_parsing() -> None:
    assert sensitivity.parse_levels(None, "quantize") == [8.0, 4.0]
    assert sensitivity.parse_levels(None, "cluster") == [16.0, 4.0]
    assert sensitivity.parse_levels("0.2, 0.8", "prune") == [0.2, 0.8]
    with pytest.raises(UsageError, match="not between 0 and 1"):
        sensitivity.parse_levels("0.5,1.5", "prune")
    with pytest.raises(UsageError, match="not a bit width of the quantize pass"):
        sensitivity.parse_levels("2", "quantize")
    with pytest.raises(UsageError, match="not a cluster count"):
        sensitivity.parse_levels("300", "cluster")


@pytest.mark.parametrize("bits", [8, 4])
def test_quantize_levels_are_what_the_weight_only_pass_writes(bits: int, tmp_path: Path) -> None:
    """Each probed weight is quantized by the pass's own code (per channel at 8 bits, blocks at
    4): the original model with those weights gives exactly the quantized model's outputs."""
    source = builders.save(builders.transformer_like(vocab=500), tmp_path / "t.onnx")
    model = model_io.load_model(source)
    probed, _ = find_candidates(model, min_elements=0)
    values = sensitivity.level_values(model, probed, "quantize", bits)
    cfg = quantize.Config(mode="weight-only", bits=bits)
    restored = restored_weights(model, cfg)
    assert values.keys() == restored.keys() == {"embedding", "w_q", "w_ff", "w_out"}
    quantize.apply(model, cfg, PassContext(source))
    quantized = tmp_path / "q.onnx"
    model_io.save_model(model, quantized)
    altered = onnx.load(str(source))
    for tensor in altered.graph.initializer:
        tensor.CopyFrom(numpy_helper.from_array(restored[tensor.name], tensor.name))
    altered_path = tmp_path / "altered.onnx"
    onnx.save(altered, str(altered_path))
    tokens = {"tokens": np.arange(32, dtype=np.int64).reshape(2, 16)}
    expected = builders.run(quantized, tokens)[0]
    assert np.array_equal(builders.run(altered_path, tokens)[0], expected)
    assert np.abs(expected - builders.run(source, tokens)[0]).max() > 1e-3


def test_quantize_levels_per_channel_like_dynamic_matmul(tmp_path: Path) -> None:
    """Dynamic MatMul weights: int8 per column, as the stored weight and its scales say."""
    source = builders.save(builders.transformer_like(vocab=500), tmp_path / "t.onnx")
    model = model_io.load_model(source)
    probed, _ = find_candidates(model, min_elements=0)
    w_q = sensitivity.level_values(model, probed, "quantize", 8)["w_q"]
    quantize.apply(model, quantize.Config(), PassContext(source))
    inits = {t.name: numpy_helper.to_array(t) for t in model.proto.graph.initializer}
    stored = inits["w_q_quantized"].astype(np.float32) * inits["w_q_scale"]
    assert np.array_equal(w_q, stored)
    assert np.unique(inits["w_q_scale"]).size == w_q.shape[1]  # one scale per column


def test_cluster_levels_share_the_passes_values(tmp_path: Path) -> None:
    source = builders.save(builders.mlp(), tmp_path / "m.onnx")
    model = model_io.load_model(source)
    probed, _ = find_candidates(model, min_elements=0)
    values = sensitivity.level_values(model, probed, "cluster", 4)
    assert values and all(len(np.unique(v)) <= 4 for v in values.values())
    untouched = {c.weight.name: np.asarray(c.weight.array()) for c in probed}
    assert all(len(np.unique(untouched[name])) > 4 for name in values)


def test_bad_levels_exit_2_with_one_line(tmp_path: Path) -> None:
    source = builders.save(builders.mlp(), tmp_path / "m.onnx")
    result = subprocess.run(
        [sys.executable, "-m", "mcompress", "sensitivity", str(source), "--levels", "x"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "mcompress: error: --levels 'x' is not a comma-separated list of numbers"
    )
