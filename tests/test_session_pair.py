"""Validation holds one session at a time when both models together need too much memory."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path
from typing import Any

import pytest

from mcompress import session_pair, validate
from mcompress.config import ValidateConfig
from tests.test_fidelity import _recurrent_model


def test_one_session_at_a_time_gives_the_same_figures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A recurrent model (its state fed back sample after sample) against one that forgets
    its state: held one at a time, no session is alive when the next loads, and every figure
    but latency equals the both-at-once validation's."""
    original = _recurrent_model(tmp_path / "a.onnx", 1.0)
    forgetful = _recurrent_model(tmp_path / "b.onnx", 0.0)
    cfg = ValidateConfig(samples=6, latency_runs=4)
    both = validate.validate_pair(original, forgetful, cfg, lambda *a: None)
    loaded: list[weakref.ref[Any]] = []
    alive_at_load: list[int] = []
    load = validate.load_session

    def tracked(path: Path, role: str) -> Any:
        gc.collect()
        alive_at_load.append(sum(ref() is not None for ref in loaded))
        session = load(path, role)
        loaded.append(weakref.ref(session))
        return session

    monkeypatch.setattr(validate, "load_session", tracked)
    monkeypatch.setattr(session_pair, "ONE_AT_A_TIME_BYTES", -1)
    alone = validate.validate_pair(original, forgetful, cfg, lambda *a: None)
    assert alive_at_load == [0, 0, 0, 0]  # names of both, all feeds of each, latency
    assert alone is not None and both is not None
    assert alone.outputs == both.outputs
    assert alone.outputs["speech"]["max_abs_error"] > 0.05
    assert alone.notes == [*both.notes, session_pair.ONE_AT_A_TIME_NOTE]
    assert alone.latency is not None and both.latency is not None
    assert alone.latency["runs"] == both.latency["runs"] == 4


def test_both_sessions_are_held_below_the_limit() -> None:
    peaks = {"original_peak_bytes": 400 << 20, "compressed_peak_bytes": 500 << 20}
    assert not session_pair.one_at_a_time(peaks)
    assert session_pair.one_at_a_time({**peaks, "compressed_peak_bytes": 700 << 20})
    assert not session_pair.one_at_a_time(None)


_PEAK_GROWTH = """
import sys
from pathlib import Path
import onnxruntime
from mcompress import performance, session_pair, validate
from mcompress.config import ValidateConfig

def peak_kb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))

cfg = ValidateConfig(samples=2, latency_runs=2)
original, compressed = Path(sys.argv[1]), Path(sys.argv[2])
inputs = validate.feeds_for(original, cfg)
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # the peak so far (finding input sizes) is not what is measured
before = peak_kb()
sessions = validate.open_sessions(original, compressed, alone=sys.argv[3] == "alone")
validate.compare_outputs(sessions, inputs, cfg)
performance.latency(sessions, inputs.feeds[0], cfg.latency_runs)
print(peak_kb() - before)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="Linux peak-RSS counter")
def test_one_at_a_time_needs_about_one_models_memory(tmp_path: Path) -> None:
    """Two 64 MB models: held together the peak grows by both, one at a time by about one
    (onnxruntime's own input/output descriptions would keep a released session alive)."""
    import os
    import shutil
    import subprocess
    import sys

    from tests.builders import save
    from tests.test_spill import mlp

    original = save(mlp(layers=4, dim=2048), tmp_path / "a.onnx")
    copy = tmp_path / "b.onnx"
    shutil.copyfile(original, copy)
    growth_mb = {}
    for mode in ("both", "alone"):
        script = [sys.executable, "-c", _PEAK_GROWTH, str(original), str(copy), mode]
        # Large blocks straight from mmap: freed memory goes back to the system at once
        # instead of staying in glibc's heap (a 2.5 GB model's 64 MB tensors always do).
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
        done = subprocess.run(script, capture_output=True, text=True, check=True, env=env)
        growth_mb[mode] = int(done.stdout.split()[-1]) / 1024
    assert growth_mb["both"] > 128
    assert growth_mb["alone"] < growth_mb["both"] - 48
