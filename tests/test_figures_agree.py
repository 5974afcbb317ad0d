"""The same figure agrees between commands and report formats."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from onnx import helper
from typer.testing import CliRunner

from mcompress import render, render_charts
from mcompress.cli import app
from tests import builders


def _json(*args: object) -> dict:
    result = CliRunner().invoke(app, [*map(str, args), "--json"])
    assert result.exit_code in (0, 3), result.output
    return json.loads(result.stdout)


def test_parameters_of_a_pruned_model_agree_between_prune_and_validate(tmp_path: Path) -> None:
    src = builders.save(builders.mlp(hidden=256, inputs=64), tmp_path / "m.onnx")
    out = tmp_path / "m.pruned.onnx"
    pruned = _json("prune", src, "--sparsity", "0.5", "-o", out, "--no-validate")
    checked = _json("validate", src, out)
    assert pruned["packing"]["tensors"]  # stored as bit-masks: fewer stored elements
    assert (
        checked["output"]["parameters"]
        == pruned["output"]["parameters"]
        == 64 * 256 + 256 * 10 + 256 + 10
    )


def test_constant_node_weights_agree_between_inspect_and_doctor(tmp_path: Path) -> None:
    model = builders.conv_bn(in_constants=True)
    shape = helper.make_tensor("shape", 7, [2], [1, -1])  # an int64 constant is not a weight
    model.graph.node.insert(0, helper.make_node("Constant", [], ["shape_c"], value=shape))
    src = builders.save(model, tmp_path / "c.onnx")
    inspected = _json("inspect", src)["weights_in_constant_nodes"]
    doctor = _json("doctor", src)["findings"]
    [note] = [f["message"] for f in doctor if f["check"] == "constant-weights"]
    assert note.startswith(f"{inspected} weight tensor(s) ")
    floats = [
        n for n in model.graph.node if n.op_type == "Constant" and n.attribute[0].t.data_type == 1
    ]
    assert inspected == len([n for n in floats if np.prod(n.attribute[0].t.dims) > 1])


def test_strip_shows_what_preparation_changed_beside_no_change(tmp_path: Path) -> None:
    src = builders.save(builders.conv_bn(in_constants=True), tmp_path / "c.onnx")
    result = CliRunner().invoke(app, ["strip", str(src), "--no-validate"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    [start] = [i for i, line in enumerate(lines) if "│ prepare" in line]
    assert "Constant-node tensors moved to initializers" in lines[start]
    assert "BatchNorms folded" in lines[start + 1]  # one change per line keeps the column narrow


def test_near_perfect_figures_keep_their_digits_in_markdown_and_html() -> None:
    assert render_charts.num(0.99996) == "0.99996" and render_charts.num(1.0) == "1"
    assert render_charts.num(0.123456) == "0.1235" and render_charts.num(0.9999999) == "0.9999999"
    report = {
        "command": "quantize",
        "input": {"path": "m.onnx", "size_bytes": 10, "gzip_bytes": 9, "parameters": 1},
        "output": {"path": "m.int8.onnx", "size_bytes": 5, "gzip_bytes": 4, "parameters": 1},
        "compression_ratio": 2.0,
        "passes": [],
        "validation": {
            "inputs": {"source": "data", "path": "val.npz", "labels": False},
            "samples": 4,
            "outputs": {"y": {"cosine": 0.99996, "max_abs_error": 0.01}},
            "overall": {"cosine": 0.99996},
            "notes": ["see `exclude`"],
        },
        "gates": [],
        "notes": [],
        "seconds": 1.0,
        "passed": True,
    }
    assert "0.99996" in render.to_markdown(report)
    page = render.to_html(report)
    assert "<code>val.npz</code>" in page and "<code>exclude</code>" in page
    assert "`" not in page.split("<body", 1)[1].split("<script", 1)[0]
