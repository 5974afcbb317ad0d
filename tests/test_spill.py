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

    def measuring_pack(model: model_io.Model, **kw: Any) -> encoding.Packing:
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


_PEAK_GROWTH = """
import sys
import onnxruntime
from mcompress import runtime

def peak_kb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))

before = peak_kb()
runtime.session(sys.argv[1], optimize=sys.argv[2] == "1")
print(peak_kb() - before)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="Linux peak-RSS counter")
@pytest.mark.parametrize("optimize", [True, False])
def test_a_session_that_runs_once_holds_no_copy_of_the_weights(
    tmp_path: Path, optimize: bool
) -> None:
    """The load check before any pass (optimize=False) leaves the 64 MB of external weights
    to onnxruntime's memory map: no pre-packed copy that would double a big model's memory."""
    import subprocess
    import sys

    src = save(mlp(layers=4, dim=2048), tmp_path / "mlp.onnx", external=True)
    script = [sys.executable, "-c", _PEAK_GROWTH, str(src), "1" if optimize else "0"]
    done = subprocess.run(script, capture_output=True, text=True, check=True)
    growth_mb = int(done.stdout.split()[-1]) / 1024
    assert growth_mb > 64 if optimize else growth_mb < 24
