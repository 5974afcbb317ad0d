"""Bundled presets: each one valid and described, `configs` lists/shows them, and the three
deployment levels give monotonically smaller files within their gates."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mcompress import config, pipeline
from mcompress.cli import app
from mcompress.cli.configs import preset_description, preset_paths
from tests.conftest import SAMPLES

runner = CliRunner()
PRESETS = preset_paths()
EXPECTED = {"level1", "level2", "level3", "fp16", "int4-weight-only", "max-compression"}
# The accuracy each level keeps on the sample classifier's held-out digits (labelled data).
MAX_ACCURACY_DROP = {"level1": 0.01, "level2": 0.01, "level3": 0.02}


def test_the_promised_presets_are_bundled() -> None:
    assert {p.stem for p in PRESETS} >= EXPECTED


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_preset_is_valid_described_and_strips_first(path: Path) -> None:
    cfg = config.load(path.stem)  # found by name, as --config level2 finds it
    assert config.resolve_config_path(path.stem) == path
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# ") and len(first) <= 100
    assert preset_description(path) == first[2:]
    assert cfg.passes[0].type == "strip"
    assert len(cfg.passes) >= 2
    gates = [g for g in ("min_cosine", "max_accuracy_drop") if getattr(cfg.validation, g)]
    assert gates, "every preset states the quality it guarantees"


def test_configs_lists_every_preset_with_its_description() -> None:
    result = runner.invoke(app, ["configs"])
    assert result.exit_code == 0, result.output
    for path in PRESETS:
        line = next(line for line in result.stdout.splitlines() if line.split()[:1] == [path.stem])
        assert preset_description(path) in " ".join(line.split())


def test_configs_show_prints_the_file_and_rejects_unknown_names() -> None:
    result = runner.invoke(app, ["configs", "show", "level2"])
    assert result.exit_code == 0
    assert result.stdout == (config.PRESETS_DIR / "level2.yaml").read_text(encoding="utf-8")
    wrong = subprocess.run(
        [sys.executable, "-m", "mcompress", "configs", "show", "levle2"],
        capture_output=True,
        text=True,
    )
    assert wrong.returncode == 2 and wrong.stdout == ""
    assert wrong.stderr.strip().startswith("mcompress: error: no bundled preset 'levle2'")
    assert "level2" in wrong.stderr


@pytest.mark.slow
def test_levels_are_monotonically_smaller_within_their_gates(tmp_path: Path) -> None:
    sizes = {}
    for level, bound in MAX_ACCURACY_DROP.items():
        cfg = config.load(level)
        merged = cfg.model_dump(by_alias=True, exclude_unset=True)
        merged["validate"] = {
            **cfg.validation.model_dump(exclude_unset=True),
            "data": str(SAMPLES / "digits_val.npz"),
            "max_accuracy_drop": bound,
        }
        report = pipeline.run(
            config.build(merged),
            pipeline.RunOptions(
                input_path=SAMPLES / "digits_cnn.onnx", output=tmp_path / f"{level}.onnx"
            ),
        )
        assert report.output is not None and report.validation is not None
        assert report.passed, (level, [g for g in report.gates if not g.passed])
        assert report.validation.task["accuracy_drop"] <= bound
        sizes[level] = report.output.size_bytes
    assert sizes["level1"] > sizes["level2"] > sizes["level3"], sizes
    assert sizes["level1"] < 0.35 * (SAMPLES / "digits_cnn.onnx").stat().st_size
