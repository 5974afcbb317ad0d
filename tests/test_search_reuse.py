"""A budget search does no work twice: trials sharing their first passes start from the model
those left, the final run reuses the judged trial's model (byte for byte what a fresh run of the
chosen config writes), and the original model runs once per validation input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from mcompress import budget, config, pipeline
from mcompress.cli import app
from mcompress.recover import sequential
from tests import builders

runner = CliRunner()


def test_search_runs_each_recovering_prefix_once_and_reuses_the_winner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sweeps: list[str] = []
    real_sweep = sequential._reconstruct

    def counting(*args: Any, **kwargs: Any) -> None:
        sweeps.append("sweep")
        real_sweep(*args, **kwargs)

    chosen: list[config.PipelineConfig] = []
    real_search = budget.search

    def searching(*args: Any, **kwargs: Any) -> Any:
        found = real_search(*args, **kwargs)
        chosen.append(found[0])
        sweeps.append("final")
        return found

    monkeypatch.setattr(sequential, "_reconstruct", counting)
    monkeypatch.setattr(budget, "search", searching)
    model = builders.save(builders.mlp(hidden=64, inputs=64), tmp_path / "mlp.onnx")
    out = tmp_path / "out.onnx"
    args = ["run", str(model), "-c", "level3", "-o", str(out), "--calibration", "random"]
    result = runner.invoke(app, [*args, "--min-top1-agreement", "0.5", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    trials = report["search"]["trials"]
    # Without the cache: one sweep per recovering pass of every trial (quantize, prune,
    # cluster); with it, a trial's prefix already run (strip + prune at a sparsity tried
    # before) is not run again, and the final run reruns nothing.
    uncached = sum(1 + (t["sparsity"] is not None) + (t["clusters"] is not None) for t in trials)
    searched = sweeps.index("final")
    shared = sum(1 for t in trials if t["clusters"] is not None and t["sparsity"] is not None)
    assert searched == uncached - shared
    assert sweeps[searched + 1 :] == []
    assert any("passes ran in a trial; their model reused" in n for n in report["notes"])

    fresh = tmp_path / "fresh.onnx"
    pipeline.run(chosen[0], pipeline.RunOptions(model, fresh, force=True))
    assert fresh.read_bytes() == out.read_bytes()


def test_the_original_runs_once_per_input_across_trials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs: list[int] = []
    real_session = budget.load_session

    class Counting:
        def __init__(self, session: Any) -> None:
            self.session = session

        def __getattr__(self, name: str) -> Any:
            return getattr(self.session, name)

        def run(self, *args: Any) -> Any:
            runs.append(1)
            return self.session.run(*args)

    def session(path: Path, role: str = "compressed") -> Any:
        found = real_session(path, role)
        return Counting(found) if role == "original" else found

    monkeypatch.setattr(budget, "load_session", session)
    model = builders.save(builders.mlp(hidden=64, inputs=64), tmp_path / "mlp.onnx")
    out = tmp_path / "out.onnx"
    args = ["run", str(model), "-c", "level2", "-o", str(out), "--samples", "5", "--json"]
    result = runner.invoke(app, [*args, "--min-top1-agreement", "0.5"])
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)["search"]["trials"]) >= 3
    assert len(runs) == 5
