"""Model I/O: real-file shapes (Constant weights, subgraphs, external data), safety, atomicity."""

from __future__ import annotations

import gzip
import math
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mcompress import encoding, gzipped, model_io
from mcompress.analysis import count_parameters
from mcompress.errors import ModelError
from mcompress.graph import iter_graphs
from mcompress.prepare import prepare
from tests import builders


def test_weights_cover_subgraphs(tmp_path: Path) -> None:
    path = builders.save(builders.if_subgraph(), tmp_path / "if.onnx")
    names = {w.name for w in model_io.load_model(path).weights()}
    assert {"w_outer", "w_inner"} <= names


def test_external_data_round_trip_streams_untouched_tensors(tmp_path: Path) -> None:
    src = builders.save(builders.mlp(), tmp_path / "ext.onnx", external=True)
    model = model_io.load_model(src)
    assert model.had_external_data
    w1 = next(w for w in model.weights() if w.name == "w1")
    assert isinstance(w1.array(), np.memmap)
    expected = np.array(w1.array())
    out = tmp_path / "out.onnx"
    model_io.save_model(model, out)
    assert (tmp_path / "out.onnx.data").is_file()
    x = np.random.default_rng(0).normal(size=(2, 32)).astype(np.float32)
    np.testing.assert_array_equal(builders.run(out, {"x": x})[0], builders.run(src, {"x": x})[0])
    reloaded = model_io.load_model(out)
    np.testing.assert_array_equal(
        next(w for w in reloaded.weights() if w.name == "w1").array(), expected
    )
    assert (
        model_io.disk_size(out) == out.stat().st_size + (tmp_path / "out.onnx.data").stat().st_size
    )


@pytest.mark.parametrize("location", ["../evil.bin", "/etc/passwd"])
def test_external_location_outside_folder_is_refused(tmp_path: Path, location: str) -> None:
    path = builders.save(builders.mlp(), tmp_path / "ext.onnx", external=True)
    proto = onnx.load(str(path), load_external_data=False)
    for entry in proto.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = location
    onnx.save(proto, str(path))
    with pytest.raises(ModelError, match="outside the model's folder|absolute path"):
        model_io.load_model(path)


def test_missing_and_truncated_external_data(tmp_path: Path) -> None:
    path = builders.save(builders.mlp(), tmp_path / "ext.onnx", external=True)
    data = tmp_path / "ext.onnx.data"
    data.write_bytes(data.read_bytes()[:100])
    with pytest.raises(ModelError, match="is truncated"):
        model_io.load_model(path)
    data.unlink()
    with pytest.raises(ModelError, match="is missing"):
        model_io.load_model(path)


def test_truncated_and_garbage_files(tmp_path: Path) -> None:
    good = builders.save(builders.mlp(), tmp_path / "m.onnx").read_bytes()
    for i, cut in enumerate([len(good) // 2, len(good) - 3, 10]):
        bad = tmp_path / f"cut{i}.onnx"
        bad.write_bytes(good[:cut])
        with pytest.raises(ModelError, match="corrupt or truncated|not an ONNX model"):
            model_io.load_model(bad)
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(ModelError, match="is empty"):
        model_io.load_model(tmp_path / "empty.onnx")


def test_default_output(tmp_path: Path) -> None:
    src = builders.save(builders.mlp(), tmp_path / "m.onnx")
    assert model_io.default_output(src, "int8") == tmp_path / "m.int8.onnx"


def test_save_is_atomic_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = model_io.load_model(builders.save(builders.mlp(), tmp_path / "m.onnx"))
    out = tmp_path / "out.onnx"

    def boom(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        model_io.save_model(model, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_ir_version_lowered_for_runtime(tmp_path: Path) -> None:
    proto = builders.mlp()
    proto.ir_version = onnx.IR_VERSION
    path = tmp_path / "new_ir.onnx"
    onnx.save(proto, str(path))
    model = model_io.load_model(path)
    out = tmp_path / "out.onnx"
    model_io.save_model(model, out)
    assert onnx.load(str(out)).ir_version == model_io.max_ir_version() <= onnx.IR_VERSION
    builders.run(out, {"x": np.zeros((1, 32), np.float32)})


def test_prepare_folds_bn_and_moves_constants(tmp_path: Path) -> None:
    src = builders.save(builders.conv_bn(in_constants=True), tmp_path / "c.onnx")
    model = model_io.load_model(src)
    stats = prepare(model)
    assert stats.constants_to_initializers == 9
    assert stats.batchnorms_folded == 1
    assert stats.unused_initializers_removed == 4
    assert not any(n.op_type in ("Constant", "BatchNormalization") for n in model.proto.graph.node)
    out = tmp_path / "prepared.onnx"
    model_io.save_model(model, out)
    x = np.random.default_rng(1).normal(size=(2, 3, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(
        builders.run(out, {"x": x})[0], builders.run(src, {"x": x})[0], rtol=1e-4, atol=1e-5
    )


@pytest.mark.slow
def test_over_2gb_round_trips_through_external_data(tmp_path: Path) -> None:
    """A model whose weights exceed the protobuf limit is saved with external data. Two 1 GiB
    weights live in a sparse file the proto points at and a 64 MiB one in the proto, so the
    tensors (2.06 GiB) cross the limit while the test holds well under 1 GB of memory."""
    proto = builders.mlp()
    count = 2**28  # float32: 1 GiB each
    data = tmp_path / "in.onnx.data"
    with open(data, "wb") as f:  # zeros are holes; 7.0 at two places of big1
        for position in (count, count + 1000003):
            f.seek(position * 4)
            f.write(np.float32(7.0).tobytes())
        f.truncate(2 * count * 4)
    for i in range(2):
        tensor = TensorProto(name=f"big{i}", data_type=TensorProto.FLOAT, dims=[count])
        entries = {"location": data.name, "offset": str(i * count * 4), "length": str(count * 4)}
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in entries.items():
            tensor.external_data.add(key=key, value=value)
        proto.graph.initializer.append(tensor)
    proto.graph.initializer.append(numpy_helper.from_array(np.ones(2**24, np.float32), "mem"))
    model = model_io.Model(proto, tmp_path / "in.onnx", tmp_path, had_external_data=False)
    out = tmp_path / "big.onnx"
    model_io.save_model(model, out)
    del proto, model
    assert out.stat().st_size < 1_000_000
    assert model_io.disk_size(out) > 2**31
    reloaded = {w.name: w for w in model_io.load_model(out).weights()}
    values = reloaded["big1"].array()
    assert values.shape == (count,)
    assert values[0] == 7.0 and values[1] == 0.0 and values[1000003] == 7.0
    assert reloaded["mem"].array()[[0, -1]].tolist() == [1.0, 1.0]


def test_gzip_size_is_gzip_level_6_of_the_model_and_its_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same number as Python's gzip at level 6 over the file and its data file, whether
    the data files are given or found, and however the files are split into chunks."""
    path = builders.save(builders.mlp(), tmp_path / "ext.onnx", external=True)
    data = path.read_bytes() + (tmp_path / "ext.onnx.data").read_bytes()
    expected = len(gzip.compress(data, compresslevel=6, mtime=0))
    model = model_io.load_model(path)
    files = model_io.external_files(model.proto, model.base_dir)
    assert files == [(tmp_path / "ext.onnx.data").resolve()]
    assert gzipped.gzip_size(path) == expected
    monkeypatch.setattr(gzipped, "_GZIP_CHUNK", 1000)
    assert gzipped.gzip_size(path, files) == expected
    assert model_io.disk_size(path, files) == model_io.disk_size(path) == len(data)


def test_gzip_size_of_a_large_model_is_a_close_estimate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Above the exact limit (lowered here) the size is sampled: within 2% of the exact
    count on a model whose weights range from incompressible noise to long runs of zeros."""
    r = np.random.default_rng(0)
    weights = {
        "noise": r.normal(0, 1, 2**18).astype(np.float32),
        "sparse": np.where(r.random(2**18) < 0.7, 0, r.normal(0, 1, 2**18)).astype(np.float32),
        "steps": np.repeat(r.normal(0, 1, 2**10), 2**8).astype(np.float32),
    }
    graph = helper.make_graph(
        [helper.make_node("Sum", list(weights), ["total"])],
        "mixed",
        [],
        [helper.make_tensor_value_info("total", TensorProto.FLOAT, [2**18])],
        [numpy_helper.from_array(w, name) for name, w in weights.items()],
    )
    path = builders.save(builders._model(graph), tmp_path / "mixed.onnx", external=True)
    monkeypatch.setattr(gzipped, "GZIP_EXACT_LIMIT", 2**22)
    exact = gzipped.gzip_size(path)
    assert not gzipped.gzip_estimated(model_io.disk_size(path))
    monkeypatch.setattr(gzipped, "GZIP_EXACT_LIMIT", 2**16)
    assert gzipped.gzip_estimated(model_io.disk_size(path))
    estimate = gzipped.gzip_size(path)
    assert estimate != exact and abs(estimate - exact) < 0.02 * exact


def test_gzip_size_started_stops_when_the_block_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = builders.save(builders.mlp(), tmp_path / "m.onnx")
    monkeypatch.setattr(gzipped, "_GZIP_CHUNK", 16)
    with gzipped.gzip_size_started(path, []) as size:
        assert size.result() == gzipped.gzip_size(path)
    with (
        pytest.raises(RuntimeError, match="pass failed"),
        gzipped.gzip_size_started(path, []) as size,
    ):
        raise RuntimeError("pass failed")
    assert size.done()


def test_count_parameters_everywhere_and_sparse_by_dense_shape() -> None:
    """Initializers of every graph and Constant tensors count; a sparse initializer counts its
    dense shape once, not also its stored values."""
    proto = builders.if_subgraph()
    assert count_parameters(proto) == 16 * 16 * 2 + 1
    sparse = proto.graph.sparse_initializer.add()
    sparse.values.CopyFrom(numpy_helper.from_array(np.ones(3, np.float32), "s"))
    sparse.indices.CopyFrom(numpy_helper.from_array(np.array([0, 5, 9], np.int64), "s_i"))
    sparse.dims.extend([4, 5])
    proto.graph.node.append(
        onnx.helper.make_node(
            "Constant", [], ["c"], value=numpy_helper.from_array(np.ones((2, 3), np.float32))
        )
    )
    assert count_parameters(proto) == 16 * 16 * 2 + 1 + 20 + 6


def test_count_parameters_of_packed_weights_counts_what_they_rebuild(tmp_path: Path) -> None:
    """A pruned MLP (one weight in an If branch) stored as masks and codes counts the elements
    onnxruntime rebuilds at load, exactly as its unpacked copy does, not its stored bytes."""
    proto = builders.if_subgraph()
    for graph in iter_graphs(proto.graph):
        for tensor in graph.initializer:
            values = numpy_helper.to_array(tensor).copy()
            values.reshape(-1)[::2] = 0
            tensor.CopyFrom(numpy_helper.from_array(values, tensor.name))
    model = model_io.load_model(builders.save(proto, tmp_path / "m.onnx"))
    dense = count_parameters(model.proto)
    assert encoding.pack(model).tensors
    stored = sum(
        math.prod(t.dims)
        for g in iter_graphs(model.proto.graph)
        for t in g.initializer
        if t.data_type in (TensorProto.FLOAT, TensorProto.UINT8)
    )
    assert stored != dense
    assert count_parameters(model.proto) == dense == 16 * 16 * 2 + 1
