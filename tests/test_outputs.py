"""Never lose a byte: every path a command writes is checked against every input up front,
claimed atomically, and `--force` replaces outputs, never inputs (issue 12, points 1-5)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from mcompress.cli import main
from mcompress.outputs import OutputError, Outputs, claim
from tests import builders

REPO = Path(__file__).resolve().parents[1]


def hashes(folder: Path) -> dict[str, str]:
    """Every file under `folder` (hidden ones included) -> sha256 of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def mcompress(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str]:
    """Run the CLI in-process as a user would; (exit code, stderr)."""
    argv = sys.argv
    sys.argv = ["mcompress", *map(str, args)]
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        sys.argv = argv
    return code, capsys.readouterr().err


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return builders.save(builders.mlp(), tmp_path / "m.onnx")


@pytest.mark.parametrize("option", ["--report", "--markdown", "--html"])
def test_a_report_path_naming_the_input_model_is_refused_even_with_force(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, model: Path, option: str
) -> None:
    before = hashes(tmp_path)
    code, err = mcompress(capsys, "quantize", model, option, model, "--force")
    assert code == 2
    assert one_line(err) == (
        f"mcompress: error: {option} '{model}' is the input model '{model}'; "
        "--force never replaces an input, choose another path"
    )
    assert hashes(tmp_path) == before


def test_a_report_over_the_output_or_the_data_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, model: Path
) -> None:
    data = tmp_path / "val.npz"
    np.savez(data, x=np.zeros((4, 32), np.float32))
    before = hashes(tmp_path)
    out = tmp_path / "out.onnx"
    code, err = mcompress(capsys, "quantize", model, "-o", out, "--report", out)
    assert code == 2
    assert one_line(err) == (
        f"mcompress: error: -o and --report both name '{out}'; give them different paths"
    )
    code, err = mcompress(capsys, "quantize", model, "--data", data, "--html", data, "--force")
    assert code == 2
    assert f"--html '{data}' is the --data file" in one_line(err)
    assert hashes(tmp_path) == before


def test_an_existing_report_is_not_replaced_without_force(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, model: Path
) -> None:
    report = tmp_path / "r.json"
    report.write_text("mine")
    before = hashes(tmp_path)
    code, err = mcompress(capsys, "quantize", model, "--report", report, "--no-validate")
    assert code == 2
    assert one_line(err) == (
        f"mcompress: error: output '{report}' already exists; pass --force to overwrite it"
    )
    assert hashes(tmp_path) == before
    code, _ = mcompress(capsys, "quantize", model, "--report", report, "--no-validate", "--force")
    assert code == 0 and json.loads(report.read_text())["command"] == "quantize"


def test_a_symlink_to_the_input_is_the_input(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, model: Path
) -> None:
    link = tmp_path / "link.json"
    link.symlink_to(model)
    before = hashes(tmp_path)
    code, err = mcompress(capsys, "quantize", model, "--report", link, "--force")
    assert code == 2 and "is the input model" in one_line(err)
    assert hashes(tmp_path) == before


def _with_data_file(tmp_path: Path, location: str) -> Path:
    """d/m.onnx whose weights live in d/<location>."""
    folder = tmp_path / "d"
    folder.mkdir()
    path = folder / "m.onnx"
    onnx.save_model(
        builders.mlp(), str(path), save_as_external_data=True, location=location, size_threshold=0
    )
    return path


@pytest.mark.parametrize("force", [False, True])
def test_the_outputs_data_file_never_replaces_the_inputs_data(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, force: bool
) -> None:
    src = _with_data_file(tmp_path, "x.onnx.data")
    before = hashes(tmp_path)
    extra = ["--force"] if force else []
    code, err = mcompress(capsys, "quantize", src, "-o", src.parent / "x.onnx", *extra)
    assert code == 2
    data = src.parent / "x.onnx.data"
    assert one_line(err) == (
        f"mcompress: error: the external data of -o '{data}' is the external data of the "
        f"input model '{data.resolve()}'; --force never replaces an input, choose another path"
    )
    code, err = mcompress(capsys, "quantize", src, "-o", data, *extra)
    assert code == 2 and f"-o '{data}' is the external data of the input model" in err
    assert hashes(tmp_path) == before


def test_an_unrelated_data_file_is_not_replaced(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    src = _with_data_file(tmp_path, "m.onnx.data")
    stale = src.parent / "out.onnx.data"
    stale.write_bytes(b"someone else's")
    before = hashes(tmp_path)
    code, err = mcompress(capsys, "quantize", src, "-o", src.parent / "out.onnx")
    assert code == 2
    assert one_line(err) == (
        f"mcompress: error: output '{stale}' already exists; pass --force to overwrite it"
    )
    assert hashes(tmp_path) == before


def test_force_over_the_input_validates_against_the_original(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, model: Path
) -> None:
    original = model.read_bytes()
    report = tmp_path / "r.json"
    code, _ = mcompress(capsys, "prune", model, "-o", model, "--force", "-s", "0.9",
                        "--min-elements", "1", "--report", report)  # fmt: skip
    assert code == 3  # the fidelity floor fails: measured against the original, not itself
    cosine = json.loads(report.read_text())["validation"]["overall"]["cosine"]
    assert cosine < 0.99  # 90% of the weights gone: compared with the original, not itself
    assert model.read_bytes() != original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "r.json"]


def test_force_over_the_input_needs_force(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, model: Path
) -> None:
    before = hashes(tmp_path)
    code, err = mcompress(capsys, "quantize", model, "-o", model)
    assert code == 2
    assert one_line(err) == (
        f"mcompress: error: output '{model}' is the input model; choose another -o path "
        "(or pass --force to replace the input)"
    )
    assert hashes(tmp_path) == before


def test_claim_lets_exactly_one_writer_win(tmp_path: Path) -> None:
    target = tmp_path / "out.onnx"
    first, second = tmp_path / "a", tmp_path / "b"
    first.write_text("first")
    second.write_text("second")
    assert claim(first, target, force=False)
    with pytest.raises(OutputError, match="another process wrote it meanwhile"):
        claim(second, target, force=False)
    assert target.read_text() == "first" and second.exists()


@pytest.mark.slow
def test_two_processes_writing_the_same_output_one_wins(tmp_path: Path, model: Path) -> None:
    out = tmp_path / "out.onnx"
    command = [sys.executable, "-m", "mcompress", "quantize", str(model), "-o", str(out)]
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    racers = [
        subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    results = [(p.wait(timeout=120), p.stderr.read().decode()) for p in racers]  # type: ignore[union-attr]
    assert sorted(code for code, _ in results) == [0, 2]
    (loser,) = [err for code, err in results if code == 2]
    assert f"output '{out}' already exists" in loser
    builders.run(out, {"x": np.zeros((1, 32), np.float32)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "out.onnx"]


def test_leaving_without_commit_removes_everything_staged(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt), Outputs(force=False) as outs:
        outs.add(tmp_path / "r.json", "--report")
        outs.check()
        outs.write_text(tmp_path / "r.json", "{}")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_batch_never_replaces_an_existing_report_without_force(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, model: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    report = out / "m.report.json"
    report.write_text("kept")
    before = hashes(tmp_path)
    code, err = mcompress(capsys, "batch", model, "-c", "level1", "-o", out)
    assert code == 2
    assert one_line(err) == (
        f"mcompress: error: output '{report}' already exists; pass --force to overwrite it"
    )
    assert hashes(tmp_path) == before
