"""Malformed inputs are exit 2 with one line naming the problem, before anything is written:
the input's bytes are unchanged and no output exists (issue 12 points 7, 9, 11, 12)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from typer.testing import CliRunner

from mcompress.errors import DataError, McompressError
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


def _external_mlp(folder: Path, key: str, value: str) -> Path:
    """An mlp saved with external data, then `key` of w1's external data set to `value`."""
    folder.mkdir()
    path = builders.save(builders.mlp(), folder / "m.onnx", external=True)
    model = onnx.load(str(path), load_external_data=False)
    w1 = next(t for t in model.graph.initializer if t.name == "w1")
    entries = {e.key: e for e in w1.external_data}
    if key not in entries:
        entries[key] = w1.external_data.add()
        entries[key].key = key
    entries[key].value = value
    path.write_bytes(model.SerializeToString())
    return path


def test_malformed_external_data_is_one_line_naming_the_tensor(tmp_path: Path) -> None:
    cases = {
        "negative_offset": ("offset", "-8", "has a negative external-data offset (-8)"),
        "text_offset": ("offset", "abc", "has external-data offset 'abc', not a number"),
        "text_length": ("length", "1e3", "has external-data length '1e3', not a number"),
        "negative_length": ("length", "-1", "has a negative external-data length (-1)"),
        "short_length": (
            "length",
            "16",
            "has external-data length 16 but its dims [32, 64] need 8192 bytes",
        ),
        "nul": ("location", "m.onnx.data\0x", "has a NUL character in its external-data location"),
    }
    for name, (key, value, what) in cases.items():
        path = _external_mlp(tmp_path / name, key, value)
        line = refused(path.parent, "quantize", path)
        assert line == f"mcompress: error: tensor 'w1' {what}; the model file is malformed", line


def _inline_mlp(folder: Path, edit: str) -> Path:
    folder.mkdir()
    model = builders.mlp()
    w1 = next(t for t in model.graph.initializer if t.name == "w1")
    if edit == "short_raw":
        w1.raw_data = w1.raw_data[:-4]
    elif edit == "huge_dims":
        w1.dims[:] = [2**16, 2**15]  # 2^31 elements, 8 KB of data
    elif edit == "typed_short":
        values = numpy_helper.to_array(w1).reshape(-1)[:100]
        w1.ClearField("raw_data")
        w1.float_data.extend(values.tolist())
    path = folder / "m.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def test_inline_tensor_bytes_that_do_not_fill_its_dims_are_refused(tmp_path: Path) -> None:
    cases = {
        "short_raw": "holds 8188 bytes but its dims [32, 64] need 8192",
        "huge_dims": "holds 8192 bytes but its dims [65536, 32768] need 8589934592",
        "typed_short": "holds 100 values but its dims [32, 64] need 2048",
    }
    for name, what in cases.items():
        path = _inline_mlp(tmp_path / name, name)
        line = refused(path.parent, "quantize", path)
        assert line == f"mcompress: error: tensor 'w1' {what}; the model file is malformed", line


def test_input_shape_must_be_positive_and_below_2_31_elements(tmp_path: Path) -> None:
    path = builders.save(builders.mlp(), tmp_path / "m.onnx")
    cases = {
        "x=-1x32": "every dimension must be at least 1",
        "x=0x32": "every dimension must be at least 1",
        "x=65536x32768": "has 2147483648 elements; at most 2147483647 are allowed",
    }
    for shape, what in cases.items():
        line = refused(tmp_path, "quantize", path, "--input-shape", shape)
        assert line == f"mcompress: error: --input-shape '{shape}' {what}".replace(
            f"'{shape}' every", f"'{shape}': every"
        ), line


def test_duplicate_node_names_are_refused_as_onnxruntime_refuses_them(tmp_path: Path) -> None:
    """onnxruntime refuses two nodes of one name, so the original cannot be validated: exit 2
    naming the name, not an internal error. Nodes without names are fine (next test)."""
    model = builders.mlp()
    for node in model.graph.node:
        node.name = "same"
    path = builders.save(model, tmp_path / "m.onnx")
    line = refused(tmp_path, "quantize", path)
    assert line == (
        "mcompress: error: the input model does not run in onnxruntime: This is an invalid "
        "model. Error: two nodes with same node name (same)."
    )


def test_nodes_without_names_quantize(tmp_path: Path) -> None:
    model = builders.conv_bn()
    for node in model.graph.node:
        node.name = ""
    path = builders.save(model, tmp_path / "m.onnx")
    result = mcompress("quantize", path, "-o", tmp_path / "q.onnx")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "q.onnx").is_file()


def _bad_npz(folder: Path) -> dict[str, str]:
    """Calibration files that do not fit builders.mlp's input x [batch, 32], each with the
    reason mcompress gives."""
    cases = {
        "name.npz": ({"y": np.zeros((4, 32), np.float32)}, " has no array for input 'x'"),
        "shape.npz": ({"x": np.zeros((4, 31), np.float32)}, ": input 'x' has shape [4, 31]"),
        "dtype.npz": ({"x": np.array([["a"] * 32] * 4)}, ": input 'x' is <U1, the model"),
        "samples.npz": ({"x": np.zeros((0, 32), np.float32)}, ": every array needs the same"),
        "none.npz": ({}, " has no array for input 'x' (expected float32 [batch, 32])"),
    }
    for name, (arrays, _) in cases.items():
        np.savez(folder / name, **arrays)
    return {name: reason for name, (_, reason) in cases.items()}


def test_bad_calibration_is_exit_2_before_any_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mcompress import pipeline
    from mcompress.cli import app

    path = builders.save(builders.mlp(), tmp_path / "m.onnx")
    cases = _bad_npz(tmp_path)
    monkeypatch.setattr(pipeline, "_apply", lambda *a: pytest.fail("a pass ran"))
    commands = [["quantize"], ["quantize", "--mode", "static"], ["prune"], ["cluster"]]
    before = digest(tmp_path)
    for name, reason in cases.items():
        npz = tmp_path / name
        config = tmp_path / "c.yaml"  # a pipeline: the first pass must not run either
        config.write_text(
            f"passes:\n  - {{type: strip}}\n  - {{type: prune, calibration: '{npz}'}}\n",
            encoding="utf-8",
        )
        for args in [*([*c, str(path), "--calibration", str(npz)] for c in commands)] + [
            ["run", str(path), "-c", str(config)]
        ]:
            result = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "out.onnx")])
            exc = result.exception
            assert isinstance(exc, DataError), (args, result.output)
            assert exc.message.startswith(f"calibration data '{npz}'{reason}"), exc.message
        config.unlink()
    assert digest(tmp_path) == before
    line = refused(tmp_path, "quantize", path, "--calibration", tmp_path / "name.npz")
    assert line == (
        f"mcompress: error: calibration data '{tmp_path / 'name.npz'}' has no array for input "
        "'x' (expected float32 [batch, 32])"
    )


def test_yaml_input_shapes_are_checked_like_input_shape(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mcompress import pipeline
    from mcompress.cli import app

    path = builders.save(builders.mlp(), tmp_path / "m.onnx")
    config = tmp_path / "c.yaml"
    monkeypatch.setattr(pipeline, "_apply", lambda *a: pytest.fail("a pass ran"))
    with_line = f"{config}:4: validate.input_shapes: "
    either = "--input-shape / validate.input_shapes"
    cases = {
        "{x: [-1, 32]}": with_line + "'x=-1x32': every dimension must be at least 1",
        "{x: [0, 32]}": with_line + "'x=0x32': every dimension must be at least 1",
        "{x: [65536, 32768]}": with_line
        + "'x=65536x32768' has 2147483648 elements; at most 2147483647 are allowed",
        "{z: [1, 32]}": f"{either} names input 'z', which the model does not have",
        "{x: [1, 31]}": f"{either} x=1x31 does not fit the model's x [batch, 32]",
    }
    for shapes, message in cases.items():
        config.write_text(
            f"passes:\n  - {{type: quantize}}\nvalidate:\n  input_shapes: {shapes}\n",
            encoding="utf-8",
        )
        before = digest(tmp_path)
        args = ["run", str(path), "-c", str(config), "-o", str(tmp_path / "out.onnx")]
        exc = CliRunner().invoke(app, args).exception
        assert isinstance(exc, McompressError) and exc.exit_code == 2, shapes
        assert exc.message == message
        assert digest(tmp_path) == before


def test_a_symlinked_model_with_external_data_compresses(tmp_path: Path) -> None:
    """onnxruntime reads external data beside the file it opens: sessions open the symlink's
    target, so a link to d/m.onnx (weights in d/m.onnx.data) works like d/m.onnx."""
    (tmp_path / "d").mkdir()
    target = builders.save(builders.mlp(), tmp_path / "d" / "m.onnx", external=True)
    link = tmp_path / "link.onnx"
    link.symlink_to(target)
    before = digest(tmp_path / "d")
    result = mcompress("quantize", link, "-o", tmp_path / "q.onnx")
    assert result.returncode == 0, result.stderr
    assert digest(tmp_path / "d") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "link.onnx", "q.onnx", "q.onnx.data"]
    x = np.random.default_rng(0).standard_normal((2, 32)).astype(np.float32)
    (got,), (want,) = builders.run(tmp_path / "q.onnx", {"x": x}), builders.run(target, {"x": x})
    assert np.abs(got - want).max() < 0.02
