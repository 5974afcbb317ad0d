"""Output without a terminal (CI logs): plain progress lines for long work, names never cut."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from mcompress.cli import app, common
from tests import builders

LONG = "encoder.layers.11.attention.self.query_key_value_projection.weight_quantizer_input" * 2


def _long_named_mlp(path: Path) -> Path:
    model = builders.mlp(hidden=64, inputs=32)
    for tensor in model.graph.initializer:
        if tensor.name == "w1":
            tensor.name = LONG
    for node in model.graph.node:
        node.input[:] = [LONG if name == "w1" else name for name in node.input]
    return builders.save(model, path)


def test_sensitivity_in_a_ci_log_has_progress_lines_and_whole_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(common, "PROGRESS_EVERY_S", 0.0)
    src = _long_named_mlp(tmp_path / "m.onnx")
    result = CliRunner().invoke(app, ["sensitivity", str(src), "--levels", "0.5,0.9"])
    assert result.exit_code == 0, result.output
    assert len(LONG) > 160 and LONG in result.stdout  # one cell, not cut at 80 columns
    progress = [line for line in result.stderr.splitlines() if line.startswith("[progress]")]
    assert progress and progress[0].startswith("[progress] sensitivity: 0/4 (0%), ")
    assert progress[-1].startswith("[progress] sensitivity: ")


def test_quick_work_logs_no_progress_and_long_work_logs_every_interval(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    now = [0.0]
    display = common.ProgressDisplay(quiet=False, clock=lambda: now[0])
    assert display.plain  # pytest's stderr is not a terminal
    for step, seconds in enumerate([0.0, 1.0, 2.0]):
        now[0] = seconds
        display.update("quick", step, 2)
    for step, seconds in enumerate([3.0, 14.0, 20.0, 26.0, 40.0]):
        now[0] = seconds
        display.update("slow", step, 4)
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "[progress] slow: 1/4 (25%), 11 s",
        "[progress] slow: 3/4 (75%), 23 s",
        "[progress] slow: 4/4 (100%), 37 s",
    ]


def test_an_exclude_pattern_that_matches_nothing_is_a_warning_naming_it(tmp_path: Path) -> None:
    src = builders.save(builders.mlp(), tmp_path / "m.onnx")
    args = ["quantize", str(src), "--exclude", "fc1", "--exclude", "conv9*", "--exclude", "w2"]
    result = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "q.onnx")])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stdout.splitlines() if line.startswith("warning:")]
    assert warnings == [
        "warning: quantize exclude pattern 'conv9*' matches no node name, op type or weight "
        "name; it keeps nothing in float"
    ]
