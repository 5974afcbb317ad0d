"""SLOWER and the latency gate are decided by a statistical test over interleaved runs."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from mcompress import latency_stats, performance, validate
from tests import builders


def test_a_clear_slowdown_is_slower_with_its_confidence() -> None:
    rng = np.random.default_rng(0)
    original = list(rng.normal(1.0, 0.05, 20))
    compressed = list(rng.normal(1.3, 0.05, 20))
    result = latency_stats.compare(original, compressed)
    assert result["slower"] and result["p_slower"] < 1e-6
    assert result["confidence_slower"] > 0.999999
    low, high = result["ratio_ci95"]
    assert 1.2 < low == result["gate_ratio"] < result["ratio"] < high < 1.4
    # The same ratio on a 0.03 ms model is within timer noise: not slower, gate sees 1.0.
    tiny = latency_stats.compare([v * 0.03 for v in original], [v * 0.03 for v in compressed])
    assert not tiny["slower"] and tiny["gate_ratio"] == 1.0


def test_noise_and_outliers_are_not_slower() -> None:
    rng = np.random.default_rng(1)
    original = list(rng.normal(1.0, 0.3, 20))
    compressed = list(rng.normal(1.0, 0.3, 20))
    compressed[:3] = [5.0, 6.0, 7.0]  # a few runs hit by another process
    result = latency_stats.compare(original, compressed)
    assert not result["slower"] and result["p_slower"] > 0.01


def test_mann_whitney_matches_the_textbook_value() -> None:
    # Every compressed run slower than every original one: U = 9, exact one-sided p = 1/20;
    # the normal approximation with continuity correction (as scipy.stats) gives 0.0404.
    p = latency_stats.mann_whitney_p(np.array([1.0, 2.0, 3.0]), np.array([4.0, 5.0, 6.0]))
    assert round(p, 4) == 0.0404


def test_identical_files_are_never_slower_in_ten_validations(tmp_path: Path) -> None:
    src = builders.save(builders.mlp(hidden=1024, inputs=1024), tmp_path / "a.onnx")
    copy = tmp_path / "b.onnx"
    shutil.copyfile(src, copy)
    sessions = validate.open_sessions(src, copy)
    feed = {"x": np.random.default_rng(0).normal(size=(1, 1024)).astype(np.float32)}
    verdicts = [performance.latency(sessions, feed, 20) for _ in range(10)]
    assert [v["slower"] for v in verdicts] == [False] * 10
    assert all(v["gate_ratio"] <= 1.0 or v["p_slower"] >= 0.01 for v in verdicts)
