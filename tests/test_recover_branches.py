"""Recovery inside `If` branches: the branch the calibration data takes is reconstructed, the
other is compressed without recovery and named in the report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from mcompress import model_io
from mcompress.passes import prune
from mcompress.passes.base import PassContext
from mcompress.passes.quantize.config import Config
from mcompress.passes.quantize.recovered import grid_chooser
from mcompress.prepare import prepare
from mcompress.recover.activations import SegmentRunner, batches
from mcompress.recover.branches import taken_scope
from mcompress.recover.layers import find_layers, unreached_layers
from mcompress.recover.sequential import layer_stats
from tests import builders

CHANNELS = 8


def if_model(seed: int = 0, low: float = -100) -> onnx.ModelProto:
    """`x [n, 8, 6, 6]`; `If (mean(x) > low)`, true on any sensible input by default: its
    then-branch is Conv 3x3 -> Relu -> Conv 1x1 -> Relu -> GlobalAveragePool -> Flatten ->
    MatMul, its else-branch one MatMul on the pooled input."""
    r = np.random.default_rng(seed)

    def init(name: str, shape: tuple[int, ...]) -> onnx.TensorProto:
        fan_in = int(np.prod(shape[1:])) if len(shape) == 4 else shape[0]
        return numpy_helper.from_array(r.normal(0, fan_in**-0.5, shape).astype(np.float32), name)

    then_nodes = [
        helper.make_node("Conv", ["x", "c1_w", "c1_b"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "c2_w"], ["c2"], name="conv2"),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["p2"]),
        helper.make_node("Flatten", ["p2"], ["f2"]),
        helper.make_node("MatMul", ["f2", "fc_w"], ["y_then"], name="fc_then"),
    ]
    then_inits = [
        init("c1_w", (16, CHANNELS, 3, 3)),
        numpy_helper.from_array(r.normal(0, 0.1, 16).astype(np.float32), "c1_b"),
        init("c2_w", (16, 16, 1, 1)),
        init("fc_w", (16, 10)),
    ]
    else_nodes = [
        helper.make_node("GlobalAveragePool", ["x"], ["p_else"]),
        helper.make_node("Flatten", ["p_else"], ["f_else"]),
        helper.make_node("MatMul", ["f_else", "else_w"], ["y_else"], name="fc_else"),
    ]
    out = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y_then", "y_else")]
    then_branch = helper.make_graph(then_nodes, "then", [], [out[0]], then_inits)
    else_branch = helper.make_graph(else_nodes, "else", [], [out[1]], [init("else_w", (8, 10))])
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["x"], ["m"], keepdims=0),
         helper.make_node("Greater", ["m", "low"], ["cond"]),
         helper.make_node("If", ["cond"], ["y"], name="branch",
                          then_branch=then_branch, else_branch=else_branch)],
        "if_model",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", CHANNELS, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 10])],
        [numpy_helper.from_array(np.array(low, np.float32), "low")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = builders.IR_VERSION
    onnx.checker.check_model(model)
    return model


def images(n: int, seed: int, offset: float = 0.0) -> np.ndarray:
    """Channels mixed by one fixed matrix: correlated inputs, as real activations are."""
    mixing = np.random.default_rng(99).normal(size=(CHANNELS, CHANNELS))
    x = np.random.default_rng(seed).normal(size=(n, 6, 6, CHANNELS)) @ mixing + offset
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)).astype(np.float32)


def signed_blocks(blocks: int, seed: int) -> np.ndarray:
    """Blocks of 16 images (one calibration batch each) whose mean is alternately above and
    below 0: with `if_model(low=0)` they take the then and else branch in turn."""
    return np.concatenate(
        [images(16, seed + b, offset=1.0 if b % 2 == 0 else -1.0) for b in range(blocks)]
    )


def test_the_taken_branch_is_walked_and_the_other_named(tmp_path: Path) -> None:
    model = model_io.load_model(builders.save(if_model(), tmp_path / "if.onnx"))
    scope = taken_scope(model, [{"x": images(4, seed=1)}])
    assert [layer.name for layer in find_layers(model, scope=scope)] == [
        "conv1", "conv2", "fc_then",
    ]  # fmt: skip
    assert find_layers(model) == []  # the main graph alone has none
    assert unreached_layers(model, scope) == [
        {"name": "fc_else", "op": "MatMul",
         "reason": "in the else branch of If 'branch', which the calibration data does not "
         "take (it takes the then branch)"},
    ]  # fmt: skip


def _error(path: Path, reference: np.ndarray, x: np.ndarray) -> float:
    """Relative squared output error of the model at `path` in stock onnxruntime."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    y = session.run(None, {"x": x})[0]
    return float(np.sum((y - reference) ** 2) / np.sum(reference**2))


def test_prune_with_calibration_reconstructs_layers_inside_the_taken_branch(
    tmp_path: Path,
) -> None:
    source = builders.save(if_model(), tmp_path / "if.onnx")
    np.savez(tmp_path / "calib.npz", x=images(128, seed=2))
    held_out = images(64, seed=3)
    reference = builders.run(source, {"x": held_out})[0]
    errors, reports = {}, {}
    for label, extra in (("magnitude", []), ("recovered", ["--calibration", "calib.npz"])):
        out = tmp_path / f"{label}.onnx"
        result = subprocess.run(
            [sys.executable, "-m", "mcompress", "prune", "if.onnx", "-s", "0.5",
             "--min-elements", "0", *extra, "-o", str(out), "--json"],
            capture_output=True, text=True, timeout=120, cwd=tmp_path,
        )  # fmt: skip
        assert result.returncode in (0, 3), result.stderr
        reports[label] = json.loads(result.stdout)
        errors[label] = _error(out, reference, held_out)
    recovery = reports["recovered"]["passes"][0]["stats"]["recovery"]
    layers = {row["name"]: row for row in recovery["layers"]}
    assert sorted(layers) == ["conv1", "conv2", "fc_then"]
    for row in layers.values():
        assert row["error_with"] < 0.7 * row["error_without"], row
    with_, without = (
        sum(row[k] for row in layers.values()) for k in ("error_with", "error_without")
    )
    assert with_ < 0.4 * without, layers
    assert [row["name"] for row in recovery["unreached"]] == ["fc_else"]
    assert errors["recovered"] < 0.1 * errors["magnitude"], errors  # measured 0.005 vs 0.19
    tensors = reports["recovered"]["passes"][0]["stats"]["tensors"]
    assert {t["name"]: round(t["sparsity"], 2) for t in tensors} == {
        "c1_w": 0.5, "c2_w": 0.5, "fc_w": 0.5, "else_w": 0.5,
    }  # fmt: skip


def test_gptq_rounds_branch_layers_on_the_int8_grid_they_are_stored_on(tmp_path: Path) -> None:
    model = model_io.load_model(builders.save(if_model(), tmp_path / "if.onnx"))
    scope = taken_scope(model, [{"x": images(4, seed=1)}])
    grid_of = grid_chooser(model, Config(bits=4, block_size=16), {"c1_w", "c2_w", "fc_w"})
    for layer in find_layers(model, scope=scope):
        mats = layer.matrices()
        grid = grid_of(layer, mats, np.ones(mats.shape[2], bool))
        assert grid is not None and grid.qmax == 127, layer.name


def test_an_if_whose_batches_take_both_branches_walks_each_on_its_batches(
    tmp_path: Path,
) -> None:
    model = model_io.load_model(builders.save(if_model(low=0), tmp_path / "if.onnx"))
    x = signed_blocks(4, seed=1)
    feeds = [{"x": x[i : i + 1]} for i in range(len(x))]
    scope = taken_scope(model, feeds)
    layers = find_layers(model, scope=scope)
    assert [layer.name for layer in layers] == ["conv1", "conv2", "fc_then", "fc_else"]
    assert unreached_layers(model, scope) == []
    runner = SegmentRunner(model, batches(feeds, model), scope)
    rows = {layer.name: layer_stats(layer, runner).rows for layer in layers}
    # 2 of the 4 batches of 16 images take each branch; conv1 sees 36 positions per image
    assert rows == {"conv1": 32 * 36, "conv2": 32 * 36, "fc_then": 32, "fc_else": 32}


def test_prune_reconstructs_both_branches_on_the_batches_taking_each(tmp_path: Path) -> None:
    source = builders.save(if_model(low=0), tmp_path / "if.onnx")
    np.savez(tmp_path / "calib.npz", x=signed_blocks(8, seed=2))
    held_out = {taken: images(32, seed=50, offset=1.0 if taken else -1.0) for taken in (1, 0)}
    errors: dict[str, list[float]] = {}
    for label, options in (
        ("magnitude", {}),
        ("recovered", {"calibration": str(tmp_path / "calib.npz")}),
    ):
        model = model_io.load_model(source)
        prepare(model)
        cfg = prune.Config(sparsity=0.5, min_elements=0, **options)
        result = prune.apply(model, cfg, PassContext(input_path=source))
        model_io.save_model(model, tmp_path / f"{label}.onnx")
        errors[label] = [
            _error(tmp_path / f"{label}.onnx", builders.run(source, {"x": x})[0], x)
            for x in held_out.values()
        ]
    recovery = result.stats["recovery"]
    assert [row["name"] for row in recovery["layers"]] == ["conv1", "conv2", "fc_then", "fc_else"]
    assert recovery["unreached"] == []
    # measured: then-branch images 0.0027 vs 0.229, else-branch images 0.0113 vs 0.0326
    then_, else_ = (w / wo for w, wo in zip(errors["recovered"], errors["magnitude"], strict=True))
    assert then_ < 0.05 and else_ < 0.5, errors
