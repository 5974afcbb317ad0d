"""What a one-pass command loads: only the modules its work needs (start-up time is most of a
small model's run; see the Benchmarks section of the README)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import builders

REPO = Path(__file__).resolve().parents[1]

# Runs the CLI in-process, then prints which of the watched modules were imported and how many
# objects the garbage collector holds frozen.
_LOADED = """
import gc, json, runpy, sys
watched, sys.argv = sys.argv[1].split(","), ["mcompress", *sys.argv[2:]]
code = 0
try:
    runpy.run_module("mcompress", run_name="__main__")
except SystemExit as exc:
    code = exc.code
loaded = sorted(name for name in watched if name in sys.modules)
print(json.dumps({"code": code, "loaded": loaded, "frozen": gc.get_freeze_count()}))
"""

# Needed only by other commands, a YAML config, a budget search, a terminal or a report file.
NOT_FOR_PRUNE = (
    "yaml", "rich.progress", "numpy.random", "numpy.ma", "multiprocessing",
    "mcompress.budget", "mcompress.layer_search", "mcompress.pass_cache", "mcompress.render",
    "mcompress.passes.prune.structured",
)  # fmt: skip


def test_prune_without_validation_loads_only_what_it_uses(tmp_path: Path) -> None:
    src = builders.save(builders.mlp(hidden=64, inputs=32), tmp_path / "m.onnx")
    watched = [*NOT_FOR_PRUNE, "mcompress.encoding.facts", "onnxruntime"]
    args = ["prune", str(src), "-o", str(tmp_path / "p.onnx"), "--no-validate", "--json"]
    done = subprocess.run(
        [sys.executable, "-c", _LOADED, ",".join(watched), *args],
        capture_output=True,
        text=True,
        env={**_without("GITHUB_STEP_SUMMARY"), "PYTHONPATH": str(REPO)},
        check=False,
    )
    found = json.loads(done.stdout.splitlines()[-1])
    assert found["code"] == 0, done.stderr
    # the weights were packed and the input checked in onnxruntime, without the rest
    assert found["loaded"] == ["mcompress.encoding.facts", "onnxruntime"]
    assert found["frozen"] > 10_000  # the CLI's import-time objects, out of the collector's way


def _without(name: str) -> dict[str, str]:
    """This environment without `name` (a CI job's step summary is written with render)."""
    return {key: value for key, value in os.environ.items() if key != name}


def test_a_session_that_runs_once_does_not_spin() -> None:
    """Spinning idle threads burn CPU while such a session loads (the input's load check)."""
    from mcompress import runtime

    once = runtime.options(optimize=False)
    assert once.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert once.get_session_config_entry("session.disable_prepacking") == "1"
    with pytest.raises(RuntimeError, match="does not have configuration"):
        runtime.options().get_session_config_entry("session.intra_op.allow_spinning")
