"""Malformed inputs are exit 2 with one line naming the problem, before anything is written:
the input's bytes are unchanged and no output exists (issue 12 points 7, 9, 11, 12)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from tests import builders


def mcompress(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mcompress", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def digest(folder: Path) -> dict[str, str]:
    """Every file in `folder` with the hash of its bytes."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def refused(folder: Path, *args: str | Path) -> str:
    """Run a command that must be refused: exit 2, one line, no file added or changed.
    Returns the line."""
    before = digest(folder)
    result = mcompress(*args)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert digest(folder) == before
    return result.stderr.strip()


def _set(model: onnx.ModelProto, name: str, values: np.ndarray) -> None:
    tensor = next(t for t in model.graph.initializer if t.name == name)
    tensor.CopyFrom(numpy_helper.from_array(values, name))


def test_inf_layer_weight_is_refused_naming_it_and_the_count(tmp_path: Path) -> None:
    model = builders.mlp()
    w1 = numpy_helper.to_array(model.graph.initializer[0]).copy()
    w1[0, :2], w1[1, 0] = np.inf, -np.inf
    _set(model, "w1", w1)
    path = builders.save(model, tmp_path / "inf.onnx")
    line = refused(tmp_path, "quantize", path)
    assert line == (
        "mcompress: error: weight 'w1' has 3 infinite value(s); the model is broken "
        "(re-export or fix the model before compressing it)"
    )


def test_minus_inf_in_a_mask_read_by_add_is_allowed(tmp_path: Path) -> None:
    model = builders.mlp()
    b2 = numpy_helper.to_array(model.graph.initializer[3]).copy()
    b2[0] = -np.inf  # like an attention mask: class 0 can never be chosen
    _set(model, "b2", b2)
    path = builders.save(model, tmp_path / "mask.onnx")
    result = mcompress("quantize", path, "-o", tmp_path / "out.onnx")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out.onnx").is_file()


def _broken_models() -> dict[str, tuple[onnx.ModelProto, str]]:
    """Models onnxruntime refuses, with the reason it gives."""
    dangling, unknown_op, cyclic, future = (builders.mlp() for _ in range(4))
    dangling.graph.node[1].input[0] = "nowhere"
    unknown_op.graph.node[2].op_type = "Frobnicate"
    cyclic.graph.node[0].input[0] = "h2"
    future.ir_version = 99
    return {
        "dangling": (
            dangling,
            "Invalid model. Node input 'nowhere' is not a graph input, initializer, or output "
            "of a previous node.",
        ),
        "unknown_op": (unknown_op, "Error No Op registered for Frobnicate"),
        "cyclic": (cyclic, "This is an invalid model. Error: the graph is not acyclic."),
        "ir99": (future, "Unsupported model IR version: 99, max supported IR version: "),
    }


def test_a_model_onnxruntime_refuses_is_exit_2_before_any_pass(tmp_path: Path) -> None:
    for name, (model, reason) in _broken_models().items():
        folder = tmp_path / name
        folder.mkdir()
        path = folder / "m.onnx"
        path.write_bytes(model.SerializeToString())
        line = refused(folder, "quantize", path)
        prefix = "mcompress: error: the input model does not run in onnxruntime: "
        assert line.startswith(prefix), line
        assert reason in line, line
        assert "[ONNXRuntimeError]" not in line and ".cc:" not in line


def test_bad_data_is_exit_2_before_any_pass(tmp_path: Path) -> None:
    path = builders.save(builders.mlp(), tmp_path / "m.onnx")
    x = np.zeros((4, 32), np.float32)
    cases = {
        "name.npz": {"y": x},
        "shape.npz": {"x": np.zeros((4, 31), np.float32)},
        "dtype.npz": {"x": np.array([["a"] * 32] * 4)},
        "empty.npz": {"x": np.zeros((0, 32), np.float32)},
        "none.npz": {},
    }
    for name, arrays in cases.items():
        np.savez(tmp_path / name, **arrays)
    for name in cases:
        line = refused(
            tmp_path, "quantize", path, "--data", tmp_path / name, "-o", tmp_path / "q.onnx"
        )
        assert line.startswith("mcompress: error: data "), line
