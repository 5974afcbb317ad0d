"""Shell completion offers preset names and the choices of Literal-typed options."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from mcompress.cli import app


def _complete(words: str) -> list[str]:
    current = len(words.split()) - (0 if words.endswith(" ") else 1)
    env = {"_MCOMPRESS_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(current)}
    result = CliRunner().invoke(app, [], prog_name="mcompress", env=env)
    assert result.exit_code == 0, result.output
    return result.stdout.split()


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        ("mcompress quantize m.onnx --mode ", ["dynamic", "static", "weight-only"]),
        ("mcompress quantize m.onnx --calibration-method p", ["percentile"]),
        ("mcompress fp16 m.onnx --compute a", ["all"]),
        ("mcompress run m.onnx -c level", ["level1", "level2", "level3"]),
        ("mcompress batch models/ --config max", ["max-compression"]),
        ("mcompress doctor m.onnx -c fp", ["fp16"]),
        (
            "mcompress configs show ",
            [
                "fixed-level2",
                "fixed-level3",
                "fixed-max-compression",
                "fp16",
                "int4-weight-only",
                "level1",
                "level2",
                "level3",
                "max-compression",
            ],  # fmt: skip
        ),
    ],
)
def test_completion_of_presets_and_choices(words: str, expected: list[str]) -> None:
    assert _complete(words) == expected
