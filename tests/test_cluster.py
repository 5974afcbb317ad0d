"""Cluster pass: at most K shared values per weight, zeros kept, files that really shrink."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from mcompress import model_io
from mcompress.cli import app
from mcompress.encoding import expanded_weights
from mcompress.errors import ConfigError, PassError
from mcompress.passes import cluster
from mcompress.passes.base import PassContext
from mcompress.prepare import prepare
from tests import builders

runner = CliRunner()


def run_cli(*args: str | Path) -> dict[str, Any]:
    """`mcompress <args> --json` in process; the parsed report."""
    result = runner.invoke(app, [*map(str, args), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def cluster_stats(report: dict[str, Any], index: int = 0) -> dict[str, Any]:
    return report["passes"][index]["stats"]


def apply_cluster(proto: onnx.ModelProto, tmp_path: Path, **options: Any) -> Any:
    """Run the pass on an in-memory model (after prepare, as the pipeline does)."""
    path = builders.save(proto, tmp_path / "in.onnx")
    model = model_io.load_model(path)
    prepare(model)
    cfg = cluster.Config(**options)
    cluster.check(model, cfg)
    return model, cluster.apply(model, cfg, PassContext(input_path=path))


def weights_of(model: model_io.Model) -> dict[str, np.ndarray]:
    return {w.name: np.array(w.array()) for w in model.weights()}


def distinct(values: np.ndarray) -> int:
    return int(np.unique(values).size)


def wide_mlp(seed: int = 0) -> onnx.ModelProto:
    """MatMul 64->256 + Relu + MatMul 256->10 + Softmax: most bytes are in two weights."""
    rng = np.random.default_rng(seed)
    inits = {
        "w1": rng.normal(0, 0.15, (64, 256)).astype(np.float32),
        "b1": rng.normal(0, 0.1, (256,)).astype(np.float32),
        "w2": rng.normal(0, 0.1, (256, 10)).astype(np.float32),
        "b2": rng.normal(0, 0.1, (10,)).astype(np.float32),
    }
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h0"], name="fc1"),
        helper.make_node("Add", ["h0", "b1"], ["h1"], name="fc1_bias"),
        helper.make_node("Relu", ["h1"], ["h2"], name="relu"),
        helper.make_node("MatMul", ["h2", "w2"], ["l0"], name="fc2"),
        helper.make_node("Add", ["l0", "b2"], ["logits"], name="fc2_bias"),
        helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "wide_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def layer_zoo() -> onnx.ModelProto:
    """Conv, ConvTranspose, Gemm (transB) and MatMul: one weight layout each."""
    rng = np.random.default_rng(1)
    shapes = {
        "w_conv": (16, 8, 3, 3),
        "w_convt": (16, 4, 3, 3),
        "w_gemm": (32, 4),
        "w_mm": (32, 24),
    }
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.2, s).astype(np.float32), n)
        for n, s in shapes.items()
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w_conv"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("ConvTranspose", ["c", "w_convt"], ["t"], name="convt"),
        helper.make_node("GlobalAveragePool", ["t"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w_gemm"], ["e"], name="gemm", transB=1),
        helper.make_node("MatMul", ["e", "w_mm"], ["y"], name="mm"),
    ]
    graph = helper.make_graph(
        nodes,
        "zoo",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 24])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


# ---------------------------------------------------------------- CLI end to end


def test_cli_clusters_weights_shrinks_file_and_validates(tmp_path: Path) -> None:
    source = builders.save(wide_mlp(), tmp_path / "mlp.onnx")
    out = tmp_path / "mlp.clustered.onnx"
    report = run_cli("cluster", source, "--clusters", "16", "-o", out, "--samples", "16")
    stats = cluster_stats(report)
    rows = {row["name"]: row for row in stats["tensors"]}
    assert sorted(rows) == ["w1", "w2"]  # biases are left alone
    assert all(row["unique_values_after"] == 16 for row in rows.values())
    original = weights_of(model_io.load_model(source))
    for name, row in rows.items():
        clustered = expanded_weights(out)[name]
        assert distinct(clustered) == 16
        mse = float(np.mean((clustered.astype(np.float64) - original[name]) ** 2))
        assert row["mse"] == pytest.approx(mse, rel=1e-6)
        assert row["bytes_before"] == original[name].nbytes
    expanded = expanded_weights(out)
    for bias in ("b1", "b2"):
        np.testing.assert_array_equal(expanded[bias], original[bias])
    assert stats["totals"]["tensors"] == 2
    assert stats["totals"]["bytes_before"] == (64 * 256 + 256 * 10) * 4
    # 4-bit indices: a bit over 1/8 of the weight bytes, plus the graph.
    assert out.stat().st_size <= 0.2 * source.stat().st_size
    assert report["output"]["size_bytes"] == out.stat().st_size
    assert report["validation"]["overall"]["cosine"] > 0.95
    # The packed file computes exactly what the dense clustered weights compute.
    x = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    logits = np.maximum(x @ expanded["w1"] + expanded["b1"], 0) @ expanded["w2"] + expanded["b2"]
    want = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(builders.run(out, {"x": x})[0], want, rtol=1e-4, atol=1e-6)


def test_cli_default_output_name_and_options(tmp_path: Path) -> None:
    source = builders.save(wide_mlp(), tmp_path / "mlp.onnx")
    report = run_cli(
        "cluster",
        source,
        "--per-channel",
        "--init",
        "kmeans++",
        "--exclude",
        "fc2",
        "--no-validate",
    )
    out = tmp_path / "mlp.clustered.onnx"
    assert out.is_file() and report["output"]["path"] == str(out)
    stats = cluster_stats(report)
    assert stats["clusters"] == 16 and stats["per_channel"] and stats["init"] == "kmeans++"
    assert [row["name"] for row in stats["tensors"]] == ["w1"]
    assert {"name": "w2", "reason": "excluded"} in stats["skipped"]
    assert stats["tensors"][0]["axis"] == 1  # MatMul B: output features are the last axis
    assert stats["tensors"][0]["max_unique_per_channel"] == 16


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--clusters", "1"], "--clusters: must be >= 2"),
        (["-k", "300"], "--clusters: must be <= 256"),
        (
            ["--init", "fancy"],
            "--init: must be 'auto', 'linear', 'density', 'kmeans++' or 'random', not 'fancy'",
        ),
    ],
)
def test_cli_bad_options_are_config_errors(tmp_path: Path, args: list[str], message: str) -> None:
    source = builders.save(wide_mlp(), tmp_path / "mlp.onnx")
    result = runner.invoke(app, ["cluster", str(source), *args])
    assert isinstance(result.exception, ConfigError)
    assert result.exception.exit_code == 2
    assert result.exception.message == message
    assert not (tmp_path / "mlp.clustered.onnx").exists()


def test_cli_error_exit_code_and_message(tmp_path: Path) -> None:
    source = builders.save(wide_mlp(), tmp_path / "mlp.onnx")
    done = subprocess.run(
        [sys.executable, "-m", "mcompress", "cluster", str(source), "--clusters", "0"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert done.stderr == "mcompress: error: --clusters: must be >= 2\n"
    assert "Traceback" not in done.stderr


# ---------------------------------------------------------------- the pass


def test_zeros_stay_exactly_zero(tmp_path: Path) -> None:
    proto = wide_mlp()
    w1 = numpy_helper.to_array(proto.graph.initializer[0]).copy()
    w1[np.abs(w1) < np.median(np.abs(w1))] = 0
    proto.graph.initializer[0].CopyFrom(numpy_helper.from_array(w1, "w1"))
    model, result = apply_cluster(proto, tmp_path, clusters=16)
    clustered = weights_of(model)["w1"]
    np.testing.assert_array_equal(clustered == 0, w1 == 0)
    assert distinct(clustered) == 16  # zero plus 15 shared non-zero values
    row = result.stats["tensors"][0]
    assert (row["unique_values_before"], row["unique_values_after"]) == (distinct(w1), 16)


def test_large_weights_are_clustered_without_sorting_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Above kmeans1d.HISTOGRAM_ABOVE values nothing sorts the whole tensor (a sort of a
    64 MB weight took longer than clustering it): a sample rules out "already has <= K
    values", the values before are not counted, the values after come from the codebook."""
    from mcompress.passes.cluster import kmeans1d

    rows, cols = 2048, kmeans1d.HISTOGRAM_ABOVE // 2048 + 1
    values = np.random.default_rng(0).normal(0, 0.02, (rows, cols)).astype(np.float32)
    node = helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")
    graph = helper.make_graph(
        [node],
        "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, rows])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, cols])],
        [numpy_helper.from_array(values, "w")],
    )
    sizes: list[int] = []
    for name in ("sort", "unique"):
        original = getattr(np, name)
        monkeypatch.setattr(
            np, name, lambda a, *r, _f=original, **k: sizes.append(np.size(a)) or _f(a, *r, **k)
        )
    model, result = apply_cluster(builders._model(graph), tmp_path, clusters=256)
    monkeypatch.undo()
    row = result.stats["tensors"][0]
    assert max(sizes) < values.size // 20
    assert (row["unique_values_before"], row["unique_values_after"]) == (None, 256)
    assert distinct(weights_of(model)["w"]) == 256


def test_per_channel_uses_each_layers_output_axis(tmp_path: Path) -> None:
    before = weights_of(model_io.load_model(builders.save(layer_zoo(), tmp_path / "z.onnx")))
    model, result = apply_cluster(
        layer_zoo(), tmp_path, clusters=4, per_channel=True, min_elements=0
    )
    rows = {row["name"]: row for row in result.stats["tensors"]}
    expected_axes = {"w_conv": 0, "w_convt": 1, "w_gemm": 0, "w_mm": 1}
    assert {name: row["axis"] for name, row in rows.items()} == expected_axes
    after = weights_of(model)
    for name, axis in expected_axes.items():
        slices = np.moveaxis(after[name], axis, 0).reshape(after[name].shape[axis], -1)
        assert max(distinct(s) for s in slices) == 4
        assert distinct(after[name]) > 4
        assert after[name].shape == before[name].shape
    _, per_tensor = apply_cluster(layer_zoo(), tmp_path, clusters=4, min_elements=0)
    for row in per_tensor.stats["tensors"]:
        assert rows[row["name"]]["inertia"] < row["inertia"]
    model_io.save_model(model, tmp_path / "out.onnx")
    x = np.random.default_rng(0).standard_normal((1, 8, 6, 6)).astype(np.float32)
    assert builders.run(tmp_path / "out.onnx", {"x": x})[0].shape == (1, 24)


def test_per_channel_embedding_shares_values_per_feature(tmp_path: Path) -> None:
    model, result = apply_cluster(
        builders.transformer_like(vocab=300, dim=16), tmp_path, clusters=4, per_channel=True
    )
    rows = {row["name"]: row for row in result.stats["tensors"]}
    assert rows["embedding"]["axis"] == 1 and rows["embedding"]["ops"] == ["Gather"]
    embedding = weights_of(model)["embedding"]
    assert max(distinct(embedding[:, d]) for d in range(16)) == 4


def test_per_channel_wins_when_channel_scales_differ(tmp_path: Path) -> None:
    proto = layer_zoo()
    w_conv = numpy_helper.to_array(proto.graph.initializer[0])
    scaled = w_conv * np.exp2(np.arange(16) / 3).reshape(16, 1, 1, 1).astype(np.float32)
    proto.graph.initializer[0].CopyFrom(numpy_helper.from_array(scaled, "w_conv"))
    options = {"clusters": 4, "min_elements": 0, "exclude": ("convt", "gemm", "mm")}
    tensor, _ = apply_cluster(proto, tmp_path, **options)
    channel, _ = apply_cluster(proto, tmp_path, per_channel=True, **options)

    def smallest_channel_error(model: model_io.Model) -> float:
        got = weights_of(model)["w_conv"][0]
        return float(np.linalg.norm(got - scaled[0]) / np.linalg.norm(scaled[0]))

    assert distinct(weights_of(tensor)["w_conv"][0]) <= 2  # the big channels took the values
    assert smallest_channel_error(channel) < 0.3 * smallest_channel_error(tensor)


def test_weights_in_if_branches_and_constant_nodes_are_clustered(tmp_path: Path) -> None:
    model, result = apply_cluster(builders.if_subgraph(), tmp_path, clusters=4)
    assert sorted(row["name"] for row in result.stats["tensors"]) == ["w_inner", "w_outer"]
    assert all(distinct(v) == 4 for v in weights_of(model).values() if v.size == 256)
    model, result = apply_cluster(builders.conv_bn(in_constants=True), tmp_path, clusters=4)
    assert [row["name"] for row in result.stats["tensors"]] == ["c2_w"]
    assert distinct(weights_of(model)["c2_w"]) == 4


def test_skipped_tensors_say_why(tmp_path: Path) -> None:
    proto = builders.transformer_like(vocab=300, dim=16)
    few = np.tile(np.array([0.5, -0.5, 0.25], np.float32), 16 * 16 // 3 + 1)[: 16 * 16]
    proto.graph.initializer[1].CopyFrom(numpy_helper.from_array(few.reshape(16, 16), "w_q"))
    _, result = apply_cluster(proto, tmp_path, clusters=200, exclude=("ff2",))
    skipped = {row["name"]: row["reason"] for row in result.stats["skipped"]}
    assert skipped == {"w_q": "256 elements < 2 x clusters (400)", "w_out": "excluded"}
    assert sorted(row["name"] for row in result.stats["tensors"]) == ["embedding", "w_ff"]
    _, result = apply_cluster(proto, tmp_path, clusters=4, min_elements=1000)
    skipped = {row["name"]: row["reason"] for row in result.stats["skipped"]}
    assert skipped["w_q"] == "256 elements < min_elements 1000"
    _, result = apply_cluster(proto, tmp_path, clusters=4, min_elements=0)
    skipped = {row["name"]: row["reason"] for row in result.stats["skipped"]}
    assert skipped["w_q"] == "already has 3 <= 4 distinct values"


def test_float16_weights_stay_float16(tmp_path: Path) -> None:
    proto = wide_mlp()
    w1 = numpy_helper.to_array(proto.graph.initializer[0]).astype(np.float16)
    proto.graph.initializer[0].CopyFrom(numpy_helper.from_array(w1, "w1"))
    cast = helper.make_node("Cast", ["w1"], ["w1_f32"], name="cast", to=TensorProto.FLOAT)
    proto.graph.node.insert(0, cast)
    proto.graph.node[1].input[1] = "w1_f32"
    model, result = apply_cluster(proto, tmp_path, clusters=8)
    assert [row["name"] for row in result.stats["tensors"]] == ["w2"]  # w1 is read by Cast
    proto.graph.node.remove(cast)
    proto.graph.node[0].input[1] = "w1"
    model, result = apply_cluster(proto, tmp_path, clusters=8)
    clustered = weights_of(model)["w1"]
    assert clustered.dtype == np.float16 and distinct(clustered) == 8


def test_nothing_to_cluster(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    with pytest.raises(PassError, match="nothing to cluster: the model has no Conv"):
        apply_cluster(proto, tmp_path)
    _, result = apply_cluster(wide_mlp(), tmp_path, min_elements=100_000)
    assert not result.modified
    assert result.notes == ["cluster: no weight was clustered (see skipped)"]


# ---------------------------------------------------------------- real models


def confident_agreement(original: Path, compressed: Path, samples: int = 300) -> tuple[int, float]:
    """Top-1 agreement on random crops where the original's top-1 leads top-2 by > 0.2."""
    x = np.random.default_rng(0).uniform(-1, 1, (samples, 3, 48, 192)).astype(np.float32)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    probs = [
        ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"]).run(
            None, {"x": x}
        )[0]
        for p in (original, compressed)
    ]
    top2 = np.sort(probs[0], axis=1)[:, -2:]
    confident = top2[:, 1] - top2[:, 0] > 0.2
    agree = probs[0].argmax(axis=1) == probs[1].argmax(axis=1)
    return int(confident.sum()), float(agree[confident].mean())


REAL = {
    "classifier": {16: 0.25, 256: 0.38, "shape": "x=1x3x48x192"},
    "vad": {16: 0.36, 256: 0.45, "shape": "input=1x512"},
}


@pytest.mark.slow
@pytest.mark.parametrize("clusters", [16, 256])
@pytest.mark.parametrize("fixture", ["classifier", "vad"])
def test_real_models_shrink_to_target_with_at_most_k_values(
    request: pytest.FixtureRequest, tmp_path: Path, fixture: str, clusters: int
) -> None:
    source: Path = request.getfixturevalue(fixture)
    out = tmp_path / "clustered.onnx"
    validate = ["--samples", "8", "--input-shape", str(REAL[fixture]["shape"])]
    if clusters == 256:
        validate = ["--no-validate"]
    report = run_cli("cluster", source, "--clusters", str(clusters), "-o", out, *validate)
    stats = cluster_stats(report)
    assert stats["totals"]["tensors"] >= 14
    expanded = expanded_weights(out)
    for row in stats["tensors"]:
        assert distinct(expanded[row["name"]]) <= clusters, row["name"]
    ratio = out.stat().st_size / source.stat().st_size
    assert ratio <= REAL[fixture][clusters], ratio
    if clusters == 16:
        overall = report["validation"]["overall"]
        assert overall["cosine"] is not None and overall["nan_count"] == 0
    if fixture == "classifier" and clusters == 256:
        confident, agreement = confident_agreement(source, out)
        assert confident >= 100
        assert agreement >= 0.99


@pytest.mark.parametrize("fixture", ["classifier", "vad"])
def test_prune_then_cluster_keeps_sparsity_and_beats_either_alone(
    request: pytest.FixtureRequest, tmp_path: Path, fixture: str
) -> None:
    source: Path = request.getfixturevalue(fixture)
    pipelines = {
        "prune": "  - {type: prune, sparsity: 0.5}\n",
        "cluster": "  - {type: cluster, clusters: 16}\n",
    }
    pipelines["both"] = pipelines["prune"] + pipelines["cluster"]
    outputs = {}
    for name, passes in pipelines.items():
        cfg = tmp_path / f"{name}.yaml"
        cfg.write_text("passes:\n" + passes)
        outputs[name] = tmp_path / f"{name}.onnx"
        run_cli("run", source, "-c", cfg, "-o", outputs[name], "--no-validate")
    pruned, both = expanded_weights(outputs["prune"]), expanded_weights(outputs["both"])
    assert sum(int((v == 0).sum()) for v in pruned.values()) > 0.3 * sum(
        v.size for v in pruned.values()
    )
    for name, values in pruned.items():
        np.testing.assert_array_equal(both[name] == 0, values == 0, err_msg=name)
    size = {name: path.stat().st_size for name, path in outputs.items()}
    assert size["both"] < size["prune"] and size["both"] < size["cluster"], size


def test_layers_give_one_weight_its_own_cluster_count(tmp_path: Path) -> None:
    path = builders.save(builders.mlp(hidden=64, inputs=32, classes=32), tmp_path / "m.onnx")
    model = model_io.load_model(path)
    cfg = cluster.Config(clusters=16, min_elements=0, layers={"w2": 4})
    cluster.apply(model, cfg, PassContext(input_path=path))
    weights = {t.name: numpy_helper.to_array(t) for t in model.proto.graph.initializer}
    assert np.unique(weights["w1"]).size == 16
    assert np.unique(weights["w2"]).size == 4


def test_clustering_on_threads_gives_the_same_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Weights clustered by several threads at once come out as clustered one by one, in the
    model's order; the pass's stats rows are the same."""
    from mcompress.passes.cluster import workers

    proto = wide_mlp()
    for folder in ("one", "three"):
        (tmp_path / folder).mkdir()
    alone, alone_result = apply_cluster(proto, tmp_path / "one", clusters=16)
    monkeypatch.setattr(workers, "PARALLEL_ELEMENTS", 0)
    monkeypatch.setattr(workers.os, "sched_getaffinity", lambda pid: {0, 1, 2})
    assert workers.worker_count(1) == 3
    threaded, threaded_result = apply_cluster(proto, tmp_path / "three", clusters=16)
    assert threaded_result.stats == alone_result.stats
    for name, values in weights_of(alone).items():
        np.testing.assert_array_equal(weights_of(threaded)[name], values)


def test_in_order_keeps_order_and_runs_only_a_few_ahead() -> None:
    import threading

    from mcompress.passes.cluster.workers import in_order

    started: list[int] = []
    lock = threading.Lock()

    def work(item: int) -> int:
        with lock:
            started.append(item)
        return item * item

    seen = []
    for result in in_order(work, range(20), 2):
        seen.append(result)
        assert len(started) <= len(seen) + 2
    assert seen == [i * i for i in range(20)]
