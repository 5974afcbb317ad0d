"""The README's figure tables are what benchmarks/readme_figures.py generates (a cheap subset
here: one row per table; `python benchmarks/readme_figures.py --check` compares them all)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import CLASSIFIER, REPO, VAD, shared_model

_spec = importlib.util.spec_from_file_location(
    "readme_figures", REPO / "benchmarks" / "readme_figures.py"
)
assert _spec and _spec.loader
figures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(figures)


def _readme(name: str) -> list[str]:
    return figures.readme_table((REPO / "README.md").read_text(encoding="utf-8"), name)


def test_every_generated_table_is_marked_in_the_readme() -> None:
    for name in figures.TABLES:
        assert len(_readme(name)) >= 3, name


@pytest.mark.slow
def test_readme_preset_figures_are_generated(tmp_path: Path) -> None:
    shared_model(CLASSIFIER)
    shared_model(VAD)
    generated = figures.presets_table(tmp_path, only=("level1",))
    readme = _readme("presets")
    assert generated[:2] == readme[:2]  # header: the model's size and accuracy before
    assert generated[2] in readme, f"README row is stale; generated:\n{generated[2]}"


@pytest.mark.slow
def test_readme_real_model_figures_are_generated(tmp_path: Path) -> None:
    shared_model(CLASSIFIER)
    shared_model(VAD)
    generated = figures.real_models_table(tmp_path, only=("quantize",))
    readme = _readme("real-models")
    assert generated[:2] == readme[:2]
    assert generated[2] in readme, f"README row is stale; generated:\n{generated[2]}"


@pytest.mark.slow
def test_the_readme_example_config_passes_its_own_gate(tmp_path: Path) -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    [block] = [b for b in text.split("```yaml\n")[1:] if "validate: {data: sample_models/" in b]
    config = tmp_path / "example.yaml"
    config.write_text(block.split("```", 1)[0], encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "mcompress", "run", "sample_models/digits_cnn.onnx", "-c",
         str(config), "-o", str(tmp_path / "out.onnx"), "--json"],
        capture_output=True, text=True, cwd=REPO, timeout=600,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["gates"][0]["name"] == "max_accuracy_drop"
