"""Validation serves each model from its own process, one at a time when both models' files
are large; mcompress's own memory does not grow by the models'."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mcompress import performance, session_pair, validate
from mcompress.config import ValidateConfig
from mcompress.model_server import ServedSession
from tests.test_fidelity import _recurrent_model


def test_one_session_at_a_time_gives_the_same_figures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A recurrent model (its state fed back sample after sample) against one that forgets
    its state: held one at a time, no other model's process is alive when the next loads, and
    every figure but latency equals the both-at-once validation's."""
    original = _recurrent_model(tmp_path / "a.onnx", 1.0)
    forgetful = _recurrent_model(tmp_path / "b.onnx", 0.0)
    cfg = ValidateConfig(samples=6, latency_runs=4)
    both = validate.validate_pair(original, forgetful, cfg, lambda *a: None)
    assert both is not None and both.memory is not None
    loaded: list[ServedSession] = []
    alive_at_load: list[int] = []

    def tracked(path: Path, role: str, wait: Any) -> ServedSession:
        alive_at_load.append(sum(served.alive() for served in loaded))
        loaded.append(ServedSession(path, role, wait))
        return loaded[-1]

    monkeypatch.setattr(validate, "ServedSession", tracked)
    monkeypatch.setattr(performance, "SIDE_BY_SIDE_BYTES", -1)
    alone = validate.validate_pair(original, forgetful, cfg, lambda *a: None)
    assert alive_at_load == [0, 0, 0, 0]  # names of both, all feeds of each, latency
    assert not any(served.alive() for served in loaded)
    assert alone is not None and both is not None
    assert alone.outputs == both.outputs
    assert alone.outputs["speech"]["max_abs_error"] > 0.05
    assert alone.notes == [*both.notes, session_pair.ONE_AT_A_TIME_NOTE]
    assert alone.latency is not None and both.latency is not None
    assert alone.latency["runs"] == both.latency["runs"] == 4
    assert alone.memory is not None and alone.memory["original_peak_bytes"] > 0


_PEAK_GROWTH = """
import sys
from pathlib import Path
import onnxruntime
from mcompress import performance, validate
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
def test_served_models_leave_mcompress_own_memory_alone(tmp_path: Path) -> None:
    """Two 64 MB models, served side by side or one at a time: mcompress's own peak does not
    grow by either model (each session lives in its own process)."""
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
    assert growth_mb["both"] < 32 and growth_mb["alone"] < 32


def test_side_by_side_the_original_loads_once_the_compressed_model_has(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both processes start at once, but the original's load is asked for only after the
    compressed model answered that it loaded: a packed model's load peak and the original's
    never add up. Nothing loads before it is used (the caller makes its inputs meanwhile)."""
    from tests import builders

    events: list[tuple[str, str]] = []

    class Logged(ServedSession):
        def _send(self, request: Any) -> None:
            if request == "load":
                events.append(("load", self.role))
            super()._send(request)

        def get_inputs(self) -> list[Any]:
            found = super().get_inputs()
            events.append(("loaded", self.role))
            return found

    monkeypatch.setattr(validate, "ServedSession", Logged)
    original = builders.save(builders.mlp(), tmp_path / "a.onnx")
    compressed = builders.save(builders.mlp(), tmp_path / "b.onnx")
    pair = validate.open_sessions(original, compressed)
    assert events == []  # both processes started; neither loads before it is used
    pair[0].get_inputs()
    pair.close()
    assert events[:4] == [
        ("load", "compressed"),
        ("loaded", "compressed"),
        ("load", "original"),
        ("loaded", "original"),
    ]
