"""Output-side OS problems are exit 2 with one line naming the path and the OS reason, the
inputs unchanged and no stray file left (issue 12 point 10): a read-only folder, a full disk,
a missing report folder, names at the 255-byte limit."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests import builders


def mcompress(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mcompress", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def files(folder: Path) -> dict[str, str]:
    """Every file and folder under `folder` (hidden staging folders included), with hashes."""
    return {
        str(p.relative_to(folder)): _digest(p) if p.is_file() else "" for p in folder.rglob("*")
    }


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@contextmanager
def tmpfs(mount_point: Path, options: str) -> Iterator[Path]:
    """A small file system of its own at `mount_point` (needs root; skips otherwise)."""
    mount_point.mkdir()
    command = ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount_point)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def _refused(tmp_path: Path, *args: str | Path) -> str:
    before = files(tmp_path)
    result = mcompress(*args)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert files(tmp_path) == before  # inputs unchanged, nothing added (no staging left)
    return result.stderr.strip()


def test_read_only_output_folder_is_exit_2_naming_it(tmp_path: Path) -> None:
    model = builders.save(builders.mlp(), tmp_path / "m.onnx")
    if os.geteuid() == 0:  # root writes into a chmod 555 folder: use a read-only mount
        with tmpfs(tmp_path / "ro", "ro,size=1m") as folder:
            out = folder / "q.onnx"
            line = _refused(tmp_path, "quantize", model, "-o", out)
            assert line == f"mcompress: error: cannot write '{out}': Read-only file system"
    else:
        folder = tmp_path / "ro"
        folder.mkdir(mode=0o555)
        out = folder / "q.onnx"
        line = _refused(tmp_path, "quantize", model, "-o", out)
        assert line == f"mcompress: error: cannot write '{out}': Permission denied"


def test_full_disk_is_exit_2_naming_the_output_and_leaves_nothing(tmp_path: Path) -> None:
    model = builders.save(builders.mlp(hidden=2048, inputs=256), tmp_path / "m.onnx")  # 2.2 MB
    with tmpfs(tmp_path / "small", "size=1m") as folder:
        out = folder / "s.onnx"
        line = _refused(tmp_path, "strip", model, "-o", out)
        assert line == f"mcompress: error: cannot write '{out}': No space left on device"
        report = folder / "r.json"  # a report that does not fit: the model is not claimed
        _fill(folder / "filler")
        small = builders.save(builders.mlp(hidden=16), tmp_path / "small.onnx")
        line = _refused(tmp_path, "strip", small, "-o", tmp_path / "o.onnx", "--report", report)
        assert line == f"mcompress: error: cannot write '{report}': No space left on device"


def _fill(path: Path) -> None:
    """Write `path` until its file system is full."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)


def test_missing_report_folder_is_exit_2_before_any_work(tmp_path: Path) -> None:
    model = builders.save(builders.mlp(), tmp_path / "m.onnx")
    report = tmp_path / "nowhere" / "r.json"
    line = _refused(tmp_path, "quantize", model, "--report", report)
    assert line == (
        f"mcompress: error: folder '{report.parent}' of --report '{report}' does not exist"
    )


def test_names_at_the_255_byte_limit(tmp_path: Path) -> None:
    model = builders.save(builders.mlp(), tmp_path / "m.onnx")
    # a 255-byte output name: its (unused) external-data name would be 260 bytes
    longest = tmp_path / ("a" * 250 + ".onnx")
    result = mcompress("strip", model, "-o", longest)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["m.onnx", longest.name])
    # a report name over 255 bytes: refused before any work, naming it and the reason
    report = tmp_path / ("r" * 252 + ".json")
    line = _refused(tmp_path, "strip", model, "-o", tmp_path / "o.onnx", "--report", report)
    assert line == f"mcompress: error: cannot write '{report}': File name too long"
    # an output with external data whose data file name would pass 255 bytes
    (tmp_path / "x").mkdir()
    external = builders.save(builders.mlp(), tmp_path / "x" / "e.onnx", external=True)
    out = tmp_path / ("b" * 250 + ".onnx")
    line = _refused(tmp_path, "strip", external, "-o", out)
    data = f"{out}.data"
    assert line == f"mcompress: error: cannot write '{data}': File name too long"
