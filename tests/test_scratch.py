"""Temporary files of a command live in one private folder, removed at the end; the folders of
killed processes (a 3 GB spill was once left behind) are removed by the next command."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest

from mcompress import spill
from mcompress.outputs import _HOST, STAGING_PREFIX
from mcompress.scratch import private_temp


def _dead_pid() -> int:
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(done.stdout)


def test_private_temp_holds_spills_and_sweeps_those_of_dead_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("TMPDIR", "/elsewhere")
    killed = tmp_path / f"{STAGING_PREFIX}{_HOST}-{_dead_pid()}-abc.tmp"
    (killed / "mcompress-spill-x").mkdir(parents=True)
    (killed / "mcompress-spill-x" / "tensors.data").write_bytes(b"\0" * 4096)
    alive = tmp_path / f"{STAGING_PREFIX}{_HOST}-1-abc.tmp"  # pid 1 runs
    alive.mkdir()
    other_host = tmp_path / f"{STAGING_PREFIX}ffff-{_dead_pid()}-abc.tmp"
    other_host.mkdir()

    with private_temp():
        mine = Path(tempfile.gettempdir())
        assert os.environ["TMPDIR"] == str(mine)  # child processes use it too
        assert mine.parent == tmp_path and mine.name.startswith(f"{STAGING_PREFIX}{_HOST}-")
        assert f"-{os.getpid()}-" in mine.name
        with spill.spilling(True):
            tensor = onnx.TensorProto(name="w", data_type=onnx.TensorProto.FLOAT, dims=[512, 512])
            assert spill.store(tensor, np.zeros((512, 512), np.float32))
            location = Path(next(e.value for e in tensor.external_data if e.key == "location"))
            assert location.parent.parent == mine
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            [alive.name, other_host.name, mine.name]
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive.name, other_host.name])
    assert (tempfile.tempdir, os.environ["TMPDIR"]) == (str(tmp_path), "/elsewhere")
