"""tune's per-layer stage: one bisection over robustness thresholds for the push steps, and
4-bit blocks for the MatMul weights that take neither pruning nor per-tensor weight sharing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml
from onnx import TensorProto, helper
from typer.testing import CliRunner

from mcompress import layer_search
from mcompress.cli import app
from tests import builders

runner = CliRunner()


def _block_scaled(path: Path, dim: int = 128) -> Path:
    """y = (x * gain) @ w, where each block of 32 rows of w has its own scale (0.1-1) and
    `gain` undoes it: every row matters equally, so magnitude pruning and per-tensor weight
    sharing lose the small rows, while 4-bit blocks (one scale per 32 rows) keep them."""
    r = builders.rng(7)
    scales = np.repeat(10 ** r.uniform(-1, 0, dim // 32), 32).astype(np.float32)
    w = (r.normal(0, 1, (dim, dim)) * scales[:, None]).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "gain"], ["xg"], name="balance"),
         helper.make_node("MatMul", ["xg", "w"], ["y"], name="mm")],
        "block_scaled",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", dim])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", dim])],
        [builders._init("gain", 1 / scales), builders._init("w", w)],
    )  # fmt: skip
    return builders.save(builders._model(graph), path)


def test_tune_puts_a_matmul_in_4bit_where_pruning_and_sharing_do_not_fit(tmp_path: Path) -> None:
    model = _block_scaled(tmp_path / "m.onnx")
    out, emitted = tmp_path / "m.tuned.onnx", tmp_path / "m.tuned.yaml"
    result = runner.invoke(app, ["tune", str(model), "-o", str(out), "--min-sqnr", "18", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    trials = report["search"]["trials"]
    assert report["search"]["chosen"]["label"] == "per layer: 1 of 1 MatMul weights in 4-bit"
    others = [t["size_bytes"] for t in trials if t["passed"] and "4-bit" not in t["label"]]
    # 4-bit blocks (and a scale per 32) against the best int8 / shared-value candidate: 0.64x
    assert report["output"]["size_bytes"] < 0.7 * min(others)
    assert report["validation"]["overall"]["sqnr_db"] >= 18
    passes = yaml.safe_load(emitted.read_text())["passes"]
    assert passes[-2:] == [
        {"type": "quantize", "mode": "dynamic", "exclude": ["w"]},
        {"type": "quantize", "mode": "dynamic", "bits": 4},
    ]
    again = tmp_path / "again.onnx"
    result = runner.invoke(app, ["run", str(model), "-c", str(emitted), "-o", str(again)])
    assert result.exit_code == 0, result.output
    assert again.read_bytes() == out.read_bytes()


def test_max_compression_goes_per_layer_where_level3_stops(tmp_path: Path) -> None:
    """level3 stops at one global setting; max-compression (`per_layer: true`) continues per
    layer, here to 4-bit blocks, within the same floor."""
    model = _block_scaled(tmp_path / "m.onnx")
    reports = {}
    for preset in ("level3", "max-compression"):
        out = tmp_path / f"{preset}.onnx"
        args = ["run", str(model), "-c", preset, "-o", str(out), "--min-sqnr", "18", "--json"]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, (preset, result.output)
        reports[preset] = json.loads(result.stdout)
    level3, most = reports["level3"], reports["max-compression"]
    assert not any(t["label"].startswith("per layer") for t in level3["search"]["trials"])
    assert most["search"]["chosen"]["label"] == "per layer: 1 of 1 MatMul weights in 4-bit"
    assert most["output"]["size_bytes"] < 0.7 * level3["output"]["size_bytes"]
    assert most["validation"]["overall"]["sqnr_db"] >= 18


def test_max_compression_says_when_the_global_setting_is_the_most(tmp_path: Path) -> None:
    """At 25 dB neither the push steps nor 4-bit fit: the result is the global setting, and
    the summary says the per-layer stage found nothing smaller."""
    model = _block_scaled(tmp_path / "m.onnx")
    args = ["run", str(model), "-c", "max-compression", "-o", str(tmp_path / "o.onnx")]
    result = runner.invoke(app, [*args, "--min-sqnr", "25", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert any(t["label"].startswith("per layer") for t in report["search"]["trials"])
    assert not report["search"]["chosen"]["label"].startswith("per layer")
    assert (
        "no per-layer candidate was smaller within the budget: the global setting is the most "
        "it allows here" in report["notes"]
    )


def _chain(path: Path, layers: int = 12, dim: int = 64) -> Path:
    """Gemm+Tanh x `layers`: every other weight is mostly near-zero (takes heavy pruning),
    the others dense Gaussian (do not): a model whose layers differ, for the push stage."""
    r = builders.rng(3)
    nodes, inits, prev = [], [], "x"
    for i in range(layers):
        w = r.normal(0, 1 / np.sqrt(dim), (dim, dim))
        if i % 2:
            w = w * (r.random((dim, dim)) < 0.15) + r.normal(0, 1e-3 / np.sqrt(dim), (dim, dim))
        inits.append(builders._init(f"w{i}", (w * np.sqrt(2)).astype(np.float32)))
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}"], [f"g{i}"], name=f"fc{i}"))
        nodes.append(helper.make_node("Tanh", [f"g{i}"], [f"h{i}"], name=f"act{i}"))
        prev = f"h{i}"
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", dim])],
        [helper.make_tensor_value_info(prev, TensorProto.FLOAT, ["batch", dim])],
        inits,
    )
    return builders.save(builders._model(graph), path)


def test_the_push_stage_is_one_bisection_not_one_per_layer_count_and_step(
    tmp_path: Path,
) -> None:
    """12 layers and 3 push steps, trials recovering on calibration data: the global stage
    bisects the preset's coarser `with_calibration` lists (4 trials after the baseline, against
    7 over the full lists without calibration), then one bisection over the robustness
    thresholds (at most MAX_THRESHOLDS = 7, so 3 trials), where a bisection per step over the
    layer count takes 6 here (without calibration, where trials are cheap); the result is still
    a per-layer candidate below the global best (43,246 bytes against 44,838 at sparsity 0.4
    with 64 values, both at 20 dB)."""
    model = _chain(tmp_path / "chain.onnx")
    args = ["run", str(model), "-c", "max-compression", "--min-sqnr", "20", "--json", "--force"]
    pushes, global_stage = {}, {}
    for calibration in ([], ["--calibration", "random"]):
        result = runner.invoke(app, [*args, *calibration, "-o", str(tmp_path / "o.onnx")])
        assert result.exit_code == 0, result.output
        search = json.loads(result.stdout)["search"]
        labels = [t["label"] for t in search["trials"]]
        pushes[bool(calibration)] = [
            t for t in search["trials"] if t["label"].startswith("per layer")
        ]
        global_stage[bool(calibration)] = labels[1 : len(labels) - len(pushes[bool(calibration)])]
    assert len(pushes[False]) == 6
    assert len(pushes[True]) == layer_search.MAX_THRESHOLDS.bit_length() == 3
    assert len(global_stage[False]) == 7
    assert global_stage[True] == [
        "sparsity 0.4", "sparsity 0.6", "sparsity 0.4, 16 clusters", "sparsity 0.4, 64 clusters"
    ]  # fmt: skip
    best_global = min(
        t["size_bytes"] for t in search["trials"] if t["passed"] and t not in pushes[True]
    )
    assert search["chosen"]["label"] == "per layer: 1 of 12 at 0.65, 16; 5 at 0.5, 32"
    chosen = next(t for t in pushes[True] if t["label"] == search["chosen"]["label"])
    assert chosen["size_bytes"] == 43246 < best_global == 44838
