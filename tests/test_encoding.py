"""Packed weight encodings: real size ratios, exact onnxruntime outputs, exact unpacking."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from mcompress import encoding, model_io
from mcompress.cli import app
from mcompress.encoding import facts as encoding_facts
from mcompress.graph import iter_graphs
from tests.builders import if_subgraph, run, save

RNG = np.random.default_rng(0)


def matmul_model(
    weights: dict[str, np.ndarray], opset: int = 17, ir: int = 8, inputs: int = 512
) -> onnx.ModelProto:
    """x @ w for each weight, outputs concatenated: a model whose file is its weights.

    float16 weights multiply a float16 copy of x.
    """
    nodes, outputs = [], []
    x16 = helper.make_node("Cast", ["x"], ["x16"], name="to_half", to=TensorProto.FLOAT16)
    for i, (name, w) in enumerate(weights.items()):
        x = "x16" if w.dtype == np.float16 else "x"
        if x == "x16" and x16 not in nodes:
            nodes.append(x16)
        nodes.append(helper.make_node("MatMul", [x, name], [f"y{i}"], name=f"mm{i}"))
        outputs.append(f"y{i}")
    nodes.append(helper.make_node("Concat", outputs, ["y"], name="cat", axis=1))
    out_type = helper.np_dtype_to_tensor_dtype(next(iter(weights.values())).dtype)
    graph = helper.make_graph(
        nodes,
        "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, inputs])],
        [helper.make_tensor_value_info("y", out_type, [2, "n"])],
        [numpy_helper.from_array(w, name) for name, w in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir
    onnx.checker.check_model(model, full_check=True)
    return model


def pruned(shape: tuple[int, ...], sparsity: float) -> np.ndarray:
    w = RNG.normal(0, 0.2, shape).astype(np.float32)
    w[np.abs(w) < np.quantile(np.abs(w), sparsity)] = 0
    return w


def clustered(shape: tuple[int, ...], k: int, zero_fraction: float = 0.0) -> np.ndarray:
    table = RNG.normal(0, 0.2, k - (zero_fraction > 0)).astype(np.float32)
    w = table[RNG.integers(0, table.size, shape)]
    w[RNG.random(shape) < zero_fraction] = 0
    return w


def pack_file(
    proto: onnx.ModelProto, tmp_path: Path, **kw: int
) -> tuple[Path, Path, encoding.Packing]:
    dense = save(proto, tmp_path / "dense.onnx")
    model = model_io.load_model(dense)
    stats = encoding.pack(model, **kw)
    packed = tmp_path / "packed.onnx"
    model_io.save_model(model, packed)
    return dense, packed, stats


def ratio(packed: Path, dense: Path) -> float:
    return model_io.disk_size(packed) / model_io.disk_size(dense)


def assert_same_outputs(dense: Path, packed: Path, feeds: dict[str, np.ndarray]) -> None:
    for a, b in zip(run(dense, feeds), run(packed, feeds), strict=True):
        assert np.array_equal(a, b)


def ort_weight(path: Path, name: str, tmp_path: Path) -> np.ndarray:
    """A main-graph weight as onnxruntime computes it, by exposing it as a graph output."""
    proto = onnx.load(str(path))
    proto.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    probe = tmp_path / "probe.onnx"
    onnx.save(proto, str(probe))
    outputs = run(probe, {"x": np.zeros((2, 512), np.float32)})
    return outputs[-1]


def bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).reshape(-1).view(np.uint8)


@pytest.mark.parametrize(
    ("sparsity", "target", "encoding_name"), [(0.5, 0.60, "bitmask"), (0.9, 0.17, "scatter8")]
)
def test_pruned_weight_shrinks_the_file(
    tmp_path: Path, sparsity: float, target: float, encoding_name: str
) -> None:
    w = pruned((512, 512), sparsity)
    dense, packed, stats = pack_file(matmul_model({"w": w}), tmp_path)
    assert ratio(packed, dense) <= target
    assert [t.encoding for t in stats.tensors] == [encoding_name]
    assert stats.tensors[0].zeros == int(np.count_nonzero(w == 0))
    assert np.array_equal(bits(ort_weight(packed, "w", tmp_path)), bits(w))
    assert_same_outputs(dense, packed, {"x": RNG.normal(size=(2, 512)).astype(np.float32)})


@pytest.mark.parametrize(
    ("k", "target", "encoding_name"), [(256, 0.26, "codebook8"), (16, 0.14, "codebook4")]
)
def test_clustered_weight_uses_a_codebook(
    tmp_path: Path, k: int, target: float, encoding_name: str
) -> None:
    w = clustered((512, 512), k)
    dense, packed, stats = pack_file(matmul_model({"w": w}), tmp_path)
    (row,) = stats.tensors
    assert (row.encoding, row.unique_values) == (encoding_name, k)
    assert row.bytes_after <= target * row.bytes_before
    assert ratio(packed, dense) <= target
    assert np.array_equal(bits(ort_weight(packed, "w", tmp_path)), bits(w))
    assert_same_outputs(dense, packed, {"x": RNG.normal(size=(2, 512)).astype(np.float32)})


def per_channel_clustered(shape: tuple[int, int], k: int, axis: int) -> np.ndarray:
    """Each slice along `axis` holds its own `k` values, as per-channel clustering writes."""
    channels = shape[axis]
    tables = RNG.normal(0, 0.2, (channels, k)).astype(np.float32)
    picks = RNG.integers(0, k, (channels, shape[1 - axis]))
    w = np.take_along_axis(tables, picks, axis=1)
    return np.ascontiguousarray(w if axis == 0 else w.T)


@pytest.mark.parametrize("axis", [0, 1])
def test_per_channel_clustered_weight_uses_channel_codebooks(tmp_path: Path, axis: int) -> None:
    """4096 distinct values in all, 16 per channel: 4-bit codes plus one table per channel."""
    w = per_channel_clustered((512, 256), 16, axis)
    dense, packed, stats = pack_file(matmul_model({"w": w}), tmp_path)
    (row,) = stats.tensors
    assert row.encoding == "channel-codebook4" and row.unique_values is None
    assert ratio(packed, dense) <= 0.20
    assert np.array_equal(bits(ort_weight(packed, "w", tmp_path)), bits(w))
    assert_same_outputs(dense, packed, {"x": RNG.normal(size=(2, 512)).astype(np.float32)})
    model = model_io.load_model(packed)
    assert encoding.unpack(model) == 1
    assert np.array_equal(bits(next(model.weights()).array()), bits(w))


def test_prune_then_cluster_is_smaller_than_either(tmp_path: Path) -> None:
    sizes = {}
    cases = {
        "pruned": pruned((512, 512), 0.5),
        "clustered": clustered((512, 512), 16),
        "both": clustered((512, 512), 16, zero_fraction=0.5),
    }
    for label, w in cases.items():
        folder = tmp_path / label
        folder.mkdir()
        dense, packed, stats = pack_file(matmul_model({"w": w}), folder)
        sizes[label] = model_io.disk_size(packed)
        if label == "both":
            assert stats.tensors[0].encoding == "bitmask+codebook4"
            assert np.array_equal(bits(ort_weight(packed, "w", folder)), bits(w))
    assert sizes["both"] < min(sizes["pruned"], sizes["clustered"])
    assert sizes["both"] <= 0.10 * model_io.disk_size(tmp_path / "both" / "dense.onnx")


def test_dense_random_weight_is_left_dense(tmp_path: Path) -> None:
    w = RNG.normal(size=(512, 512)).astype(np.float32)
    dense, packed, stats = pack_file(matmul_model({"w": w}), tmp_path)
    assert stats.to_json() == {"tensors": [], "scanned": 1, "bytes_before": 0, "bytes_after": 0}
    assert model_io.disk_size(packed) == model_io.disk_size(dense)
    assert [n.op_type for n in onnx.load(str(packed)).graph.node] == ["MatMul", "Concat"]


def test_small_tensors_and_small_savings_are_skipped(tmp_path: Path) -> None:
    weights = {
        "tiny": pruned((512, 8), 0.5),  # 4096 elements: a mask saves > 10%
        "tinier": pruned((512, 1), 0.2),  # 512 elements, 20% zeros: a mask would not pay
    }
    _, _, stats = pack_file(matmul_model(weights), tmp_path)
    assert [t.name for t in stats.tensors] == ["tiny"]
    _, _, stats = pack_file(matmul_model(weights), tmp_path, min_elements=5000)
    assert stats.scanned == 0


def test_weights_in_if_subgraphs(tmp_path: Path) -> None:
    proto = if_subgraph()
    outer = clustered((16, 16), 4)
    inner = pruned((16, 16), 0.95)
    for graph in iter_graphs(proto.graph):
        for tensor in graph.initializer:
            if tensor.name in ("w_outer", "w_inner"):
                values = outer if tensor.name == "w_outer" else inner
                tensor.CopyFrom(numpy_helper.from_array(values, tensor.name))
    dense, packed, stats = pack_file(proto, tmp_path, min_elements=16)
    assert {t.name: t.encoding for t in stats.tensors} == {
        "w_inner": "scatter8",
        "w_outer": "codebook2",
    }
    loaded = onnx.load(str(packed))
    else_branch = next(a.g for a in loaded.graph.node[-1].attribute if a.name == "else_branch")
    assert "w_inner" in {o for n in else_branch.node for o in n.output}
    assert "w_outer" in {o for n in loaded.graph.node for o in n.output}
    onnx.checker.check_model(loaded, full_check=True)
    for sign in (1.0, -1.0):
        x = sign * np.abs(RNG.normal(size=(1, 16))).astype(np.float32)
        assert_same_outputs(dense, packed, {"x": x})


def test_opset11_model_packs_with_opset11_ops(tmp_path: Path) -> None:
    weights = {
        "a": pruned((512, 96), 0.5),
        "b": clustered((512, 96), 16),
        "c": clustered((512, 95), 8, zero_fraction=0.5),
        "d": pruned((512, 33), 0.99),
    }
    dense, packed, stats = pack_file(matmul_model(weights, opset=11, ir=6), tmp_path)
    assert [t.encoding for t in stats.tensors] == [
        "bitmask",
        "codebook4",
        "bitmask+codebook4",
        "scatter8",
    ]
    loaded = onnx.load(str(packed))
    assert [(o.domain, o.version) for o in loaded.opset_import] == [("", 11)]
    onnx.checker.check_model(loaded, full_check=True)
    assert_same_outputs(dense, packed, {"x": RNG.normal(size=(2, 512)).astype(np.float32)})


def test_models_below_opset11_are_left_dense(tmp_path: Path) -> None:
    dense, packed, stats = pack_file(
        matmul_model({"w": pruned((512, 64), 0.9)}, opset=10), tmp_path
    )
    assert stats.tensors == []
    assert "opset >= 11" in stats.to_json()["note"]
    assert model_io.disk_size(packed) == model_io.disk_size(dense)


def test_unpack_restores_exact_arrays(tmp_path: Path) -> None:
    special = pruned((300, 7), 0.6)
    special[0, :3] = [-0.0, np.nan, np.inf]
    used = {
        "mask": pruned((512, 77), 0.5),
        "book2": clustered((512, 33), 3),
        "book8": clustered((512, 3), 200),
        "mask_book": clustered((512, 9), 12, zero_fraction=0.4),
        "gaps16": pruned((512, 512), 0.999),
        "gaps8_book": clustered((512, 40), 5, zero_fraction=0.95),
    }
    unused = {  # odd sizes, so packed codes end in padding
        "special": special,
        "odd_book4": clustered((37, 29), 16),
        "odd_mask": pruned((1001,), 0.5),
    }
    weights = used | unused
    proto = matmul_model(used)
    proto.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in unused.items())
    dense = save(proto, tmp_path / "dense.onnx")
    model = model_io.load_model(dense)
    stats = encoding.pack(model)
    assert len(stats.tensors) == len(weights)
    model_io.save_model(model, tmp_path / "packed.onnx", external=True)
    assert model_io.disk_size(tmp_path / "packed.onnx") < 0.3 * model_io.disk_size(dense)

    loaded = model_io.load_model(tmp_path / "packed.onnx")
    assert encoding.unpack(loaded) == len(weights)
    restored = {w.name: np.array(w.array()) for w in loaded.weights()}
    assert set(restored) == set(weights)
    for name, values in weights.items():
        assert np.array_equal(bits(restored[name]), bits(values)), name
    assert [n.op_type for n in loaded.proto.graph.node] == ["MatMul"] * 6 + ["Concat"]
    assert not any(t.name.startswith(encoding.PREFIX) for t in loaded.proto.graph.initializer)
    expanded = encoding.expanded_weights(tmp_path / "packed.onnx")
    assert np.array_equal(bits(expanded["gaps16"]), bits(weights["gaps16"]))


def test_repacking_a_packed_model_gives_fresh_names(tmp_path: Path) -> None:
    proto = matmul_model({"a": pruned((512, 64), 0.5), "b": clustered((512, 64), 16)})
    _, packed, _ = pack_file(proto, tmp_path)
    model = model_io.load_model(packed)
    model.proto.graph.initializer.append(numpy_helper.from_array(pruned((64, 64), 0.9), "c"))
    stats = encoding.pack(model)
    assert [t.name for t in stats.tensors] == ["c"]
    names = [n.name for n in model.proto.graph.node if n.name.startswith(encoding.PREFIX)]
    assert len(names) == len(set(names))
    assert encoding.unpack(model) == 3


def test_float16_weights(tmp_path: Path) -> None:
    w_mask = pruned((512, 64), 0.5).astype(np.float16)
    w_book = clustered((512, 64), 16).astype(np.float16)
    proto = matmul_model({"a": w_mask, "b": w_book})
    dense, packed, stats = pack_file(proto, tmp_path)
    assert [t.encoding for t in stats.tensors] == ["bitmask", "codebook4"]
    assert ratio(packed, dense) < 0.45
    assert_same_outputs(dense, packed, {"x": RNG.normal(size=(2, 512)).astype(np.float32)})


def test_unpack_densifies_sparse_initializers(tmp_path: Path) -> None:
    w = pruned((64, 64), 0.97)
    flat = np.flatnonzero(w)
    sparse = helper.make_sparse_tensor(
        numpy_helper.from_array(w.reshape(-1)[flat], "w"),
        numpy_helper.from_array(flat.astype(np.int64), "w_indices"),
        w.shape,
    )
    proto = matmul_model({"w": w}, inputs=64)
    del proto.graph.initializer[:]
    proto.graph.sparse_initializer.append(sparse)
    model = model_io.load_model(save(proto, tmp_path / "sparse.onnx"))
    assert encoding.unpack(model) == 1
    (weight,) = model.weights()
    assert np.array_equal(weight.array(), w)
    assert not model.proto.graph.sparse_initializer


def test_dense_tensors_are_ruled_out_without_a_full_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_full_pass(*_: object) -> None:
        raise AssertionError("a dense tensor reached a full codebook pass")

    monkeypatch.setattr(encoding_facts, "_hash_lookup", no_full_pass)
    monkeypatch.setattr(encoding_facts, "_per_channel_codes", no_full_pass)
    proto = matmul_model(
        {f"w{i}": RNG.normal(size=(512, 512)).astype(np.float32) for i in range(4)}
    )
    model = model_io.Model(proto, Path("m.onnx"), Path("."), had_external_data=False)
    assert encoding.pack(model).tensors == []


def test_pruned_tensors_skip_the_per_channel_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """Half-pruned channels of 384 hold ~190 distinct values each: per-channel codes could
    not beat the bit-mask, so the full pass (90% of `prune` on a 90 MB encoder) is skipped."""

    def no_full_pass(*_: object) -> None:
        raise AssertionError("a pruned tensor reached the per-channel codebook pass")

    monkeypatch.setattr(encoding_facts, "_per_channel_codes", no_full_pass)
    proto = matmul_model({"w": pruned((384, 384), 0.5)}, inputs=384)
    model = model_io.Model(proto, Path("m.onnx"), Path("."), had_external_data=False)
    [row] = encoding.pack(model).tensors
    assert row.encoding == "bitmask"
    assert row.bytes_after < 0.55 * row.bytes_before


def test_cli_packs_a_pre_pruned_model(tmp_path: Path) -> None:
    dense = save(matmul_model({"w": pruned((512, 512), 0.9)}), tmp_path / "pre.onnx")
    result = CliRunner().invoke(app, ["strip", str(dense), "--json", "--no-validate"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["packing"]["tensors"][0]["encoding"] == "scatter8"
    output = tmp_path / "pre.stripped.onnx"
    assert model_io.disk_size(output) <= 0.17 * model_io.disk_size(dense)
    assert_same_outputs(dense, output, {"x": RNG.normal(size=(2, 512)).astype(np.float32)})


def test_a_codebook_expansion_holds_one_index_per_element_at_load() -> None:
    """What onnxruntime keeps while it folds an 8-bit codebook expansion beyond the weight
    itself (the Gather's output): the int32 index of every element (Cast). The stored codes of
    a model with external data are read for the Cast and dropped."""
    from mcompress.encoding.facts import Facts
    from mcompress.encoding.forms import codebook_plan
    from mcompress.encoding.plan import GraphState
    from mcompress.graph import FreshNames

    weight = clustered((64, 96), 200)
    model = matmul_model({"w": weight}, inputs=64)
    facts = Facts.of(model.graph.initializer[0], weight)
    assert facts.table is not None
    plan = codebook_plan(facts, GraphState(model.graph, FreshNames(model)))
    assert plan.load_bytes == weight.size * 4


def test_external_data_models_are_packed_only_within_the_load_budget(tmp_path: Path) -> None:
    """A model with external data keeps what onnxruntime holds while folding the expansions
    within LOAD_PEAK_LIMIT x its dense weights: the weights that would pass it stay dense, and
    a note says how many. The same model saved inline is packed whole."""
    weights = {f"w{i}": clustered((64, 256), 200) for i in range(6)}
    proto = matmul_model(weights, inputs=64)
    dense_bytes = sum(w.nbytes for w in weights.values())
    inline = model_io.load_model(save(proto, tmp_path / "inline.onnx"))
    assert len(encoding.pack(inline).tensors) == 6
    external = model_io.load_model(save(proto, tmp_path / "ext.onnx", external=True))
    packing = encoding.pack(external)
    # folding one holds 8 bytes per element (int32 indices, the weight): 2x its dense bytes,
    # so 1.3 x 6 weights' worth holds 3 of them
    assert len(packing.tensors) == int(encoding.LOAD_PEAK_LIMIT * 6 / 2) == 3
    assert packing.note is not None and packing.note.startswith("3 weights stored dense")
    assert any(n.startswith("packing: 3 weights stored dense") for n in external.notes)
    packed = tmp_path / "packed.onnx"
    model_io.save_model(external, packed)
    assert 0.6 * dense_bytes < model_io.disk_size(packed) < 0.7 * dense_bytes
    feed = {"x": RNG.normal(0, 1, (2, 64)).astype(np.float32)}
    np.testing.assert_array_equal(run(packed, feed)[0], run(tmp_path / "ext.onnx", feed)[0])


def test_unpacking_holds_one_weights_expansion_at_a_time(tmp_path: Path) -> None:
    """Each expansion's values are dropped after their last use and each restored weight is
    stored (spilled, while a spill is active) at once: unpacking six packed 1 MB weights peaks
    under the six dense weights together (it held every weight and index array: 2.3x them)."""
    import tracemalloc

    from mcompress import spill

    weights = {f"w{i}": clustered((512, 512), 200) for i in range(6)}
    model = model_io.load_model(save(matmul_model(weights), tmp_path / "dense.onnx"))
    assert len(encoding.pack(model).tensors) == 6
    model_io.save_model(model, tmp_path / "packed.onnx", external=True)
    packed = model_io.load_model(tmp_path / "packed.onnx")
    tracemalloc.start()
    with spill.spilling(True):
        assert encoding.unpack(packed) == 6
        peak = tracemalloc.get_traced_memory()[1]
        restored = {w.name: np.array(w.array()) for w in packed.weights()}
    tracemalloc.stop()
    assert peak < sum(w.nbytes for w in weights.values())
    for name, values in weights.items():
        np.testing.assert_array_equal(restored[name], values)


def test_float16_exact_weights_are_stored_as_float16_and_restored_by_one_cast(
    tmp_path: Path,
) -> None:
    """A float32 weight whose values are all float16 values (too many for a codebook) is stored
    as float16 and widened by one Cast: half the file, the same outputs in onnxruntime, exact
    unpacking. One value off float16 keeps the weight dense."""
    halves = RNG.normal(0, 0.2, (512, 300)).astype(np.float16).astype(np.float32)
    off = halves.copy()
    off[7, 7] = np.nextafter(off[7, 7], np.float32(1))
    dense, packed, stats = pack_file(matmul_model({"w": halves, "off": off}), tmp_path)
    assert [(t.name, t.encoding) for t in stats.tensors] == [("w", "float16")]
    assert 0.74 < ratio(packed, dense) < 0.76  # one weight of two halved
    feed = {"x": RNG.normal(0, 1, (2, 512)).astype(np.float32)}
    np.testing.assert_array_equal(run(packed, feed)[0], run(dense, feed)[0])
    restored = encoding.expanded_weights(packed)
    np.testing.assert_array_equal(restored["w"], halves)


def test_cluster_of_an_external_data_model_is_really_smaller_and_loads_in_onnxruntime(
    tmp_path: Path,
) -> None:
    """`mcompress cluster` of a model with external data rounds its centroids to float16, so
    weights the load budget cannot afford as codebooks (a 4-byte index per element at load)
    are stored as float16 + Cast (nothing but the weight at load): 5 of 6 weights halved and
    one as 4-bit codes, 44% of the input on disk (it was 67%, 4 weights left dense). Stock
    onnxruntime loads it and gives exactly the outputs of the clustered weights stored dense."""
    weights = {f"w{i}": RNG.normal(0, 0.05, (64, 256)).astype(np.float32) for i in range(6)}
    source = save(matmul_model(weights, inputs=64), tmp_path / "ext.onnx", external=True)
    out = tmp_path / "out.onnx"
    result = CliRunner().invoke(
        app, ["cluster", str(source), "-k", "16", "--no-validate", "-o", str(out), "--json"]
    )
    assert result.exit_code == 0, result.output
    encodings = [t["encoding"] for t in json.loads(result.output)["packing"]["tensors"]]
    assert sorted(encodings) == ["codebook4", *["float16"] * 5]
    assert 0.42 < model_io.disk_size(out) / model_io.disk_size(source) < 0.46
    restored = encoding.expanded_weights(out)
    assert all(
        np.array_equal(w.astype(np.float16).astype(np.float32), w) for w in restored.values()
    )
    dense = save(matmul_model(restored, inputs=64), tmp_path / "dense.onnx")
    feed = {"x": RNG.normal(0, 1, (2, 64)).astype(np.float32)}
    np.testing.assert_array_equal(run(out, feed)[0], run(dense, feed)[0])
