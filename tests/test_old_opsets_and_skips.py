"""Old opsets and pipelines with a pass that has nothing to do: the other work still happens."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from mcompress.cli import app
from mcompress.errors import NothingToDo
from tests import builders


def _conv_opset6(listed_weights: bool) -> onnx.ModelProto:
    """The ONNX backend's pytorch-converted/test_Conv2d shape: IR 3, opset 6, a Conv whose
    weights are (as IR 3 requires) also graph inputs, or not (as some exporters wrote)."""
    r = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(r.normal(0, 0.2, (8, 3, 3, 3)).astype(np.float32), "W"),
        numpy_helper.from_array(r.normal(0, 0.1, (8,)).astype(np.float32), "B"),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])]
    if listed_weights:
        inputs += [helper.make_tensor_value_info(t.name, t.data_type, t.dims) for t in inits]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "W", "B"], ["y"], kernel_shape=[3, 3])],
        "conv6",
        inputs,
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 6, 6])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 6)])
    model.ir_version = 3
    return model


def _run(*args: object) -> tuple[int, dict]:
    result = CliRunner().invoke(app, [*map(str, args), "--json"])
    return result.exit_code, json.loads(result.stdout) if result.stdout.strip() else {}


def test_opset6_conv_quantizes_with_the_opset_raised_and_reported(tmp_path: Path) -> None:
    for listed in (True, False):
        src = tmp_path / f"conv6_{listed}.onnx"
        onnx.save(_conv_opset6(listed), str(src))
        for command in (["quantize"], ["run", "-c", "level3"]):
            out = tmp_path / f"out_{listed}_{command[0]}.onnx"
            code, report = _run(*command, src, "-o", out)
            assert code == 0, report
            quantize = next(p for p in report["passes"] if p["type"] == "quantize")
            assert quantize["stats"]["opset_upgrade"] == {"from": 6, "to": 7}
            assert any("opset raised from 6 to 7" in n for n in report["notes"])
            written = onnx.load(str(out))
            assert [o.version for o in written.opset_import if o.domain == ""] == [7]
            assert report["validation"]["overall"]["cosine"] > 0.999


def test_level3_without_prunable_layers_runs_the_other_passes(tmp_path: Path) -> None:
    weight = np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "scale"], ["y"], name="mul")],
        "scale_only",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64, 64])],
        [numpy_helper.from_array(weight, "scale")],
    )
    src = builders.save(builders._model(graph), tmp_path / "scale.onnx")
    # The fixed recipe (level3 itself searches, and drops passes that change nothing)
    code, report = _run("run", src, "-c", "fixed-level3", "-o", tmp_path / "out.onnx")
    assert code == 0, report
    records = {p["type"]: p for p in report["passes"]}
    assert records["prune"]["stats"] == {"skipped": True}
    assert records["prune"]["notes"][0].startswith("prune skipped: nothing to prune")
    assert records["cluster"]["notes"][0].startswith("cluster skipped: nothing to cluster")
    assert records["strip"]["stats"].get("skipped") is None
    # Alone, the same pass is still an error naming what is missing.
    result = CliRunner().invoke(app, ["prune", str(src), "-o", str(tmp_path / "p.onnx")])
    assert isinstance(result.exception, NothingToDo) and result.exception.exit_code == 2
    assert result.exception.message.startswith("nothing to prune")
