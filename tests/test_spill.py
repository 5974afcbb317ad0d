"""Passes on external-data models write large tensors to a spill file, one at a time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mcompress import config, encoding, model_io, pipeline, spill
from tests.builders import _model, run, save


def mlp(layers: int = 3, dim: int = 1024) -> onnx.ModelProto:
    """`layers` MatMuls with 4 MB weights (1 MB even as int8)."""
    r = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(r.normal(0, dim**-0.5, (dim, dim)).astype(np.float32), f"w{i}")
        for i in range(layers)
    ]
    nodes = [
        helper.make_node("MatMul", ["x" if i == 0 else f"h{i - 1}", f"w{i}"], [f"h{i}"])
        for i in range(layers)
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", dim])],
        [helper.make_tensor_value_info(f"h{layers - 1}", TensorProto.FLOAT, ["batch", dim])],
        inits,
    )
    return _model(graph)


def test_large_tensors_go_to_the_spill_file_and_read_back() -> None:
    values = np.arange(spill.MIN_BYTES // 4, dtype=np.float32).reshape(-1, 64)
    small = np.ones(16, np.float32)
    graph = helper.make_graph([], "g", [], [])
    with spill.spilling(True):
        big = model_io.add_initializer(graph, values, "big")
        tiny = model_io.add_initializer(graph, small, "tiny")
        folder = model_io.external_file(big, Path(".")).parent
        assert model_io.is_external(big) and not model_io.is_external(tiny)
        assert np.array_equal(model_io.read_array(big, Path(".")), values)
    assert not folder.exists()
    with spill.spilling(False):
        assert not model_io.is_external(model_io.add_initializer(graph, values, "again"))


@pytest.mark.parametrize("kind", ["prune", "fp16", "quantize"])
def test_passes_on_external_data_keep_the_proto_small(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """By packing time every rewritten weight is in the spill file, not in the proto; the
    output equals the one from the same model stored inline."""
    proto_bytes: list[int] = []
    pack = encoding.pack

    def measuring_pack(model: model_io.Model, **kw: Any) -> dict[str, Any]:
        proto_bytes.append(model.proto.ByteSize())
        return pack(model, **kw)

    monkeypatch.setattr(encoding, "pack", measuring_pack)
    # Spill folders of this test only: other runs on the machine use the system temp folder.
    monkeypatch.setattr(spill.tempfile, "tempdir", str(tmp_path))
    outputs = []
    for external in (True, False):
        src = save(mlp(), tmp_path / f"mlp{external}.onnx", external=external)
        out = tmp_path / f"out{external}.onnx"
        cfg = config.build({"passes": [{"type": kind}], "validate": {"enabled": False}})
        pipeline.run(cfg, pipeline.RunOptions(input_path=src, output=out, force=True))
        x = np.random.default_rng(1).standard_normal((4, 1024)).astype(np.float32)
        outputs.append(run(out, {"x": x})[0])
    assert proto_bytes[0] < 50_000 < 3 * 2**20 < proto_bytes[1]
    np.testing.assert_array_equal(outputs[0], outputs[1])
    assert not list(tmp_path.glob("mcompress-spill-*"))
