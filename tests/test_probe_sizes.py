"""Sizes for dynamic dims: every failed probe tries the next size, guesses never explode memory,
sizes the model implies are used, and onnxruntime's own log lines never reach the terminal."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import helper

from mcompress import runtime
from mcompress.inputs import make_feeds
from tests import builders

REPO = Path(__file__).resolve().parents[1]


def _cli(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mcompress", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        timeout=300,
    )


def _feeds(path: Path, **kw: object) -> object:
    args: dict[str, object] = {"data": None, "samples": 1, "seed": 0, "input_shapes": {}}
    args.update(kw)
    return make_feeds(path, **args)  # type: ignore[arg-type]


def test_reflect_pad_vad_quantizes_unaided_and_onnxruntime_stays_quiet(tmp_path: Path) -> None:
    """The silero-vad package export's shape: `input [?, ?]` padded by 64 (reflect) on each side,
    `state [2, ?, 16]` whose batch must match. 64 samples are rejected; the ladder finds 128."""
    src = builders.save(builders.reflect_pad_vad(), tmp_path / "vad.onnx")
    done = _cli("quantize", src, "--json")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    validation = json.loads(done.stdout)["validation"]
    assert validation["inputs"]["guessed"] == {"input": [128]}
    assert validation["inputs"]["inputs"]["state"]["shape"] == [2, 1, 16]
    assert any("input[1] guessed: 128" in n for n in validation["inputs"]["dimensions"])
    # The run-once check keeps the smallest size that runs.
    probe = _feeds(src, smallest=True)
    assert probe.feeds[0]["input"].shape == (1, 128)  # type: ignore[attr-defined]


def test_a_rejected_pinned_size_is_one_line_without_onnxruntime_log(tmp_path: Path) -> None:
    src = builders.save(builders.reflect_pad_vad(), tmp_path / "vad.onnx")
    copy = tmp_path / "copy.onnx"
    copy.write_bytes(src.read_bytes())
    done = _cli("validate", src, copy, "--input-shape", "input=1x32")
    assert done.returncode == 2
    assert "onnxruntime:" not in done.stderr and "\x1b[" not in done.stderr
    assert done.stderr.count("\n") == 1
    assert "pre-pad (64) exceeds maximum allowed (31)" in done.stderr


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads Linux VmHWM")
def test_attention_over_guessed_image_sizes_is_bounded(tmp_path: Path) -> None:
    """At the 224x224 guess the scores tensor [1, 50176, 50176] would take 9.4 GB: the memory
    estimate (profiled runs at 8 and 16, extrapolated as the 4th power) picks 32 instead."""
    src = builders.save(builders.pixel_attention(), tmp_path / "attn.onnx")
    made = _feeds(src)
    assert made.feeds[0]["x"].shape == (1, 8, 32, 32)  # type: ignore[attr-defined]
    notes = " ".join(made.description["dimensions"])  # type: ignore[attr-defined]
    assert "guessed: 32 (the default sizes would need a 9,604 MB activation)" in notes
    measured = subprocess.run(
        [sys.executable, "-c", _PEAK_RSS, "quantize", str(src), "--json"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        timeout=300,
    )
    assert measured.returncode == 0, measured.stderr
    assert int(measured.stderr.split()[-1]) < 1_000_000  # kB: mcompress and its children
    assert json.loads(measured.stdout)["validation"]["inputs"]["guessed"] == {"x": [32, 32]}


# Runs the CLI in-process, then prints the peak RSS (kB) of it and of any child it started.
_PEAK_RSS = """
import resource, runpy, sys
sys.argv = ["mcompress", *sys.argv[1:]]
code = 0
try:
    runpy.run_module("mcompress", run_name="__main__")
except SystemExit as exc:
    code = exc.code
# VmHWM, not RUSAGE_SELF: that one keeps the peak of the process we were spawned from.
with open("/proc/self/status") as status:
    own = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
print(max(own, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss), file=sys.stderr)
sys.exit(code)
"""


def test_extrapolation_follows_each_nodes_power_of_the_size() -> None:
    small = {"conv": 4 * 16, "scores": 4 * 16**2, "pooled": 32}
    large = {"conv": 4 * 32, "scores": 4 * 32**2, "pooled": 32}
    # x8 the size: conv x8, scores x64, pooled unchanged; the largest wins.
    assert runtime.extrapolate(small, large, 2.0, 8.0) == 4 * 32**2 * 64


def test_sizes_the_model_implies(tmp_path: Path) -> None:
    """A Reshape to a constant shape fixes the one free dim; metadata names the image size."""
    attn = builders.pixel_attention()
    helper.set_model_props(attn, {"input_shape": "8,48,192"})
    src = builders.save(attn, tmp_path / "meta.onnx")
    made = _feeds(src)
    assert made.feeds[0]["x"].shape == (1, 8, 48, 192)  # type: ignore[attr-defined]
    assert made.description["guessed"] == {}  # type: ignore[attr-defined]
    assert "(model metadata 'input_shape')" in " ".join(made.description["dimensions"])  # type: ignore[attr-defined]

    mlp = builders.mlp(inputs=32)
    mlp.graph.input[0].type.tensor_type.shape.dim[1].Clear()
    mlp.graph.initializer.append(
        helper.make_tensor("flat", 7, [2], np.array([1, 32], np.int64).tolist())
    )
    mlp.graph.node.insert(0, helper.make_node("Reshape", ["x", "flat"], ["x_flat"], name="flat"))
    mlp.graph.node[1].input[0] = "x_flat"
    made = _feeds(builders.save(mlp, tmp_path / "reshape.onnx"))
    assert made.feeds[0]["x"].shape == (1, 32)  # type: ignore[attr-defined]
    assert "(Reshape 'flat')" in " ".join(made.description["dimensions"])  # type: ignore[attr-defined]


def test_npz_extra_arrays_are_ignored_with_one_note(tmp_path: Path) -> None:
    src = builders.save(builders.mlp(inputs=32), tmp_path / "mlp.onnx")
    data = tmp_path / "val.npz"
    np.savez(
        data,
        x=np.ones((3, 32), np.float32),
        labels=np.zeros(3, np.int64),
        boxes=np.zeros((3, 4), np.float32),
        names=np.array([b"a", b"b", b"c"]),
    )
    made = _feeds(src, data=data, samples=10)
    assert len(made.feeds) == 3 and set(made.feeds[0]) == {"x"}  # type: ignore[attr-defined]
    assert made.description["notes"] == [  # type: ignore[attr-defined]
        "data 'val.npz': ignored array(s) 'boxes', 'names', which are not model inputs"
    ]
    done = _cli("quantize", src, "--data", data, "--json")
    assert done.returncode == 0, done.stderr
    notes = json.loads(done.stdout)["validation"]["notes"]
    assert (
        notes[0] == "data 'val.npz': ignored array(s) 'boxes', 'names', which are not model inputs"
    )


def _window_past_the_guess() -> object:
    """y = sum(x[:, 300:400]): below 300 samples the slice is empty and y is 0 whatever x is,
    as an audio model's output ignores a chunk shorter than its window."""
    x = helper.make_tensor_value_info("x", 1, ["batch", "samples"])
    y = helper.make_tensor_value_info("y", 1, None)
    consts = [
        helper.make_tensor(name, 7, [1], [value])
        for name, value in (("starts", 300), ("ends", 400), ("axes", 1))
    ]
    nodes = [
        helper.make_node("Slice", ["x", "starts", "ends", "axes"], ["window"]),
        helper.make_node("ReduceSum", ["window"], ["y"], keepdims=1),
    ]
    graph = helper.make_graph(nodes, "window", [x], [y], initializer=consts)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_a_guess_whose_outputs_ignore_the_inputs_is_grown(tmp_path: Path) -> None:
    """At the default 64 samples every random feed gives y = 0, so validating there would pass
    any model: the guess grows along the ladder (128, 256, 512) to the first size that responds."""
    src = builders.save(_window_past_the_guess(), tmp_path / "window.onnx")  # type: ignore[arg-type]
    made = _feeds(src, samples=4)
    assert made.feeds[0]["x"].shape == (1, 512)  # type: ignore[attr-defined]
    notes = " ".join(made.description["dimensions"])  # type: ignore[attr-defined]
    assert "guessed: 512 (at 64 the outputs do not depend on the inputs)" in notes
    values = [runtime.session(src).run(None, feed)[0].item() for feed in made.feeds]  # type: ignore[attr-defined]
    assert len(set(values)) == 4


def test_screening_the_probe_ladder_draws_no_large_inputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ladder (up to 2048x2048) is screened by shape arithmetic: filling every rung of an
    image input [N, 3, H, W] drew 17M random values, seconds of overhead on a text detector."""
    from mcompress.inputs import shapes

    drawn: list[int] = []
    real_fill = shapes.fill

    def counting_fill(rule: object, shape: list[int], *args: object) -> np.ndarray:
        drawn.append(int(np.prod(shape)))
        return real_fill(rule, shape, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(shapes, "fill", counting_fill)
    model = builders.conv_bn()
    for axis, name in ((2, "H"), (3, "W")):
        model.graph.input[0].type.tensor_type.shape.dim[axis].dim_param = name
    src = builders.save(model, tmp_path / "cnn.onnx")
    made = _feeds(src)
    assert made.feeds[0]["x"].shape == (1, 3, 224, 224)  # type: ignore[attr-defined]
    assert max(drawn) == 3 * 224 * 224
    assert sum(drawn) < 6 * 3 * 224 * 224
