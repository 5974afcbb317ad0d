"""End to end through the CLI: run, strip, inspect, exit codes and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from tests import builders


def mcompress(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mcompress", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_help_lists_commands_and_exit_codes() -> None:
    result = mcompress("--help")
    assert result.returncode == 0
    for word in ("quantize", "prune", "cluster", "fp16", "inspect", "run", "Exit codes"):
        assert word in result.stdout


def test_a_command_imports_only_its_own_command_module() -> None:
    """Start-up time: `mcompress prune` imports no other command's module, and its help needs
    no onnxruntime."""
    code = (
        "import sys\nfrom mcompress.cli import main\nsys.argv = ['mcompress', 'prune', '--help']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in sys.modules if m.startswith('mcompress.cli.')))\n"
        "print('onnxruntime' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    modules, runtime = done.stdout.splitlines()[-2:]
    assert modules == str(
        [
            "mcompress.cli.commands",
            "mcompress.cli.common",
            "mcompress.cli.completion",
            "mcompress.cli.prune",
        ]
    )
    assert runtime == "False"


def test_an_unknown_command_suggests_commands_not_yet_imported() -> None:
    result = mcompress("prun")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "mcompress: error: No such command 'prun'. Did you mean 'prune', 'run'? "
        "(see 'mcompress -h')"
    )


@pytest.mark.slow
def test_inspect_real_models_counts_parameters(classifier: Path, vad: Path) -> None:
    for path, params in ((classifier, 133_700), (vad, 545_671)):
        result = mcompress("inspect", path, "--json")
        assert result.returncode == 0, result.stderr
        facts = json.loads(result.stdout)
        assert facts["parameters"] == params
        assert facts["size_bytes"] == path.stat().st_size
    assert (
        json.loads(mcompress("inspect", classifier, "--json").stdout)["weights_in_constant_nodes"]
        > 100
    )


def test_run_strip_writes_report_with_schema(tmp_path: Path, vad: Path) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("passes:\n  - {type: strip}\nvalidate: {enabled: false}\n")
    out, report = tmp_path / "vad.onnx", tmp_path / "r.json"
    result = mcompress("run", vad, "-c", cfg, "-o", out, "--report", report, "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data == json.loads(report.read_text())
    for key in (
        "schema_version",
        "mcompress_version",
        "input",
        "output",
        "compression_ratio",
        "passes",
        "validation",
        "gates",
        "passed",
    ):
        assert key in data
    assert data["output"]["size_bytes"] == out.stat().st_size < 0.8 * vad.stat().st_size
    assert data["passes"][0]["type"] == "strip" and data["passes"][0]["seconds"] >= 0
    feeds = {
        "input": np.zeros((1, 512), np.float32),
        "sr": np.array(16000, np.int64),
        "state": np.zeros((2, 1, 128), np.float32),
    }
    np.testing.assert_allclose(builders.run(out, feeds)[0], builders.run(vad, feeds)[0], atol=1e-6)


@pytest.mark.parametrize(
    "make_args",
    [
        lambda d: ["strip", d / "missing.onnx"],
        lambda d: ["strip", d / "truncated.onnx"],
        lambda d: ["run", d / "model.onnx", "-c", d / "typo.yaml"],
        lambda d: ["strip", d / "model.onnx", "-o", d / "model.onnx"],
    ],
    ids=["missing", "truncated", "config-typo", "overwrite-input"],
)
def test_bad_input_is_one_line_exit_2(tmp_path: Path, make_args) -> None:  # type: ignore[no-untyped-def]
    model = builders.save(builders.mlp(), tmp_path / "model.onnx")
    (tmp_path / "truncated.onnx").write_bytes(model.read_bytes()[:-40])
    (tmp_path / "typo.yaml").write_text("passes:\n  - {type: strip, doc_string: false}\n")
    before = model.read_bytes()
    result = mcompress(*make_args(tmp_path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mcompress: error: "), result.stderr
    assert "Traceback" not in result.stderr
    assert model.read_bytes() == before


@pytest.mark.slow
def test_existing_output_needs_force(tmp_path: Path) -> None:
    model = builders.save(builders.mlp(), tmp_path / "m.onnx")
    assert mcompress("strip", model, "--no-validate").returncode == 0
    assert (tmp_path / "m.stripped.onnx").is_file()
    again = mcompress("strip", model, "--no-validate")
    assert again.returncode == 2 and "--force" in again.stderr
    assert mcompress("strip", model, "--no-validate", "--force").returncode == 0


def test_constant_weights_model_is_prepared(tmp_path: Path) -> None:
    model = builders.save(builders.conv_bn(in_constants=True), tmp_path / "c.onnx")
    out = tmp_path / "c.out.onnx"
    result = mcompress("strip", model, "-o", out, "--json", "--no-validate")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["prepare"]["batchnorms_folded"] == 1
    assert not any(n.op_type == "Constant" for n in onnx.load(str(out)).graph.node)


def test_nan_weight_is_one_line_exit_2_naming_the_weight(tmp_path: Path) -> None:
    model = builders.mlp()
    weight = next(t for t in model.graph.initializer if len(t.dims) == 2)
    values = onnx.numpy_helper.to_array(weight).copy()
    values[0, :3] = np.nan
    weight.CopyFrom(onnx.numpy_helper.from_array(values, weight.name))
    path = builders.save(model, tmp_path / "nan.onnx")
    result = mcompress("quantize", path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert f"weight '{weight.name}' has 3 NaN value(s)" in result.stderr
    assert not (tmp_path / "nan.int8.onnx").exists()


def test_help_shows_each_default_from_the_config_with_readable_metavars() -> None:
    """Option help is the Config field's description plus its default, written once."""
    from typer.testing import CliRunner

    from mcompress.cli import app
    from mcompress.passes import fp16, prune, quantize

    def help_text(command: str) -> str:
        result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "300"})
        assert result.exit_code == 0
        return " ".join(result.output.split())

    text = help_text("quantize")
    assert "quantize [OPTIONS] MODEL " in text  # not typer's {MODEL}
    assert "validate [OPTIONS] ORIGINAL COMPRESSED " in help_text("validate")
    assert "batch [OPTIONS] PATHS... " in help_text("batch")
    assert "--mode dynamic|static|weight-only" in text
    assert f"[default: {quantize.Config().mode}]" in text
    assert "--calibration-samples N Calibration inputs. [default: 128]" in text
    assert "--per-channel / --per-tensor One scale per output channel" in text
    assert "[default: --per-channel]" in text
    assert "--samples N Random validation inputs" in text
    assert "<" not in text.split("Options:")[1]  # no <str>, <int>, <path> metavars
    sparsity = prune.Config.model_fields["sparsity"].default
    assert (
        f"-s, --sparsity NUMBER Fraction of weights (or channels) to remove. [default: {sparsity}]"
        in help_text("prune")
    )
    assert "--dtype float16|bfloat16 bfloat16 is storage-only" in help_text("fp16")
    assert fp16.Config().dtype == "float16"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["prune", "--sparsity", "1.5"], "--sparsity: must be < 1"),
        (["prune", "-s", "0"], "--sparsity: must be > 0"),
        (["quantize", "--block-size", "3"], "--block-size: must be >= 16"),
        (
            ["quantize", "--block-size", "48"],
            "--block-size: block_size must be a power of two (16, 32, 64, 128, ...)",
        ),
        (["strip", "--min-cosine", "2"], "--min-cosine: must be <= 1"),
        (["strip", "--samples", "0"], "--samples: must be >= 1"),
    ],
)
def test_command_line_errors_name_the_option(tmp_path: Path, args: list[str], message: str) -> None:
    model = builders.save(builders.mlp(), tmp_path / "m.onnx")
    result = mcompress(args[0], model, *args[1:])
    assert (result.returncode, result.stderr) == (2, f"mcompress: error: {message}\n")
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "passes:\n  - type: prune\n    sparsity: 0.3\n    sparsity: 0.9\n",
            "cfg.yaml:4: passes.0.sparsity: duplicate key (first at line 3)",
        ),
        ("passes: []\n", "cfg.yaml:1: passes: no pass to run"),
        ("", "cfg.yaml: the config is empty"),
    ],
)
def test_run_refuses_duplicate_keys_and_configs_without_passes(
    tmp_path: Path, text: str, message: str
) -> None:
    model = builders.save(builders.mlp(), tmp_path / "m.onnx")
    (tmp_path / "cfg.yaml").write_text(text)
    result = mcompress("run", model, "-c", tmp_path / "cfg.yaml")
    hint = "a config needs a 'passes' list of at least one pass, e.g. passes: [{type: quantize}]"
    expected = f"mcompress: error: {tmp_path / message}"
    if "duplicate" not in message:
        expected += f" ({hint})"
    assert (result.returncode, result.stderr) == (2, expected + "\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.yaml", "m.onnx"]
