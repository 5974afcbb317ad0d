"""Gram statistics of a layer's input: whatever the chunking or product used, each output
row's energy wᵀ H w equals what onnxruntime computes for that layer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mcompress import model_io
from mcompress.recover import stats
from mcompress.recover.layers import Layer, find_layers
from mcompress.recover.stats import GramStats
from tests import builders

# (input shape, weight shape, Conv attributes)
CONVS = {
    "depthwise 5x5, stride 2, pads": ((3, 6, 9, 11), (6, 1, 5, 5),
                                      {"group": 6, "strides": [2, 1], "pads": [2, 2, 2, 2]}),
    "grouped 3x3, dilation 2": ((2, 4, 10, 8), (6, 2, 3, 3),
                                {"group": 2, "dilations": [2, 2], "pads": [2, 1, 2, 1]}),
    "pointwise": ((4, 5, 3, 7), (7, 5, 1, 1), {}),
    "1-D, stride 2": ((3, 4, 17), (5, 4, 3), {"strides": [2], "pads": [1, 0]}),
}  # fmt: skip


def _single(node: onnx.NodeProto, x: tuple[int, ...], inits: list[onnx.TensorProto]) -> Layer:
    graph = helper.make_graph(
        [node], "one", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = builders.IR_VERSION
    proto = model_io.Model(model, Path("one.onnx"), Path("."), False)
    (layer,) = find_layers(proto)
    return layer


def _conv(name: str) -> tuple[Layer, onnx.ModelProto, tuple[int, ...]]:
    x, w, attrs = CONVS[name]
    r = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(r.normal(size=w).astype(np.float32), "w"),
        numpy_helper.from_array(r.normal(size=w[0]).astype(np.float32), "b"),
    ]
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", **attrs)
    layer = _single(node, x, inits)
    return layer, layer.weight.model.proto, x


def _outputs(proto: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """Layer output as `[groups, rows, positions]` (rows: output channels of one group)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"x": x})[0].astype(np.float64)
    return np.moveaxis(y, 1, 0).reshape(y.shape[1], -1)


def _grams(layer: Layer, xc: np.ndarray, xo: np.ndarray | None, batch: int) -> GramStats:
    gram = GramStats()
    for start in range(0, xc.shape[0], batch):
        part = slice(start, start + batch)
        gram.add(layer, xc[part], None if xo is None else xo[part])
    return gram


@pytest.mark.parametrize("name", sorted(CONVS))
@pytest.mark.parametrize("stacked", [True, False])
def test_conv_gram_gives_each_output_rows_energy(
    name: str, stacked: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    layer, proto, shape = _conv(name)
    r = np.random.default_rng(1)
    xc = r.normal(size=shape).astype(np.float32)
    xo = (xc + 0.3 * r.normal(size=shape)).astype(np.float32)
    monkeypatch.setattr(stats, "_CHUNK_ELEMENTS", 200)  # several chunks per batch
    if not stacked:
        monkeypatch.setattr(stats, "STACK_MAX_INPUTS", 0)
    gram = _grams(layer, xc, xo, batch=2)
    w = layer.matrices()  # [groups, rows, inputs + bias]
    yc, yo = _outputs(proto, xc), _outputs(proto, xo)
    groups, rows = w.shape[:2]
    expected = {
        "hcc": np.sum(yc * yc, axis=1), "hco": np.sum(yc * yo, axis=1),
        "hoo": np.sum(yo * yo, axis=1),
    }  # fmt: skip
    for key, h in (("hcc", gram.hcc), ("hco", gram.cross()), ("hoo", gram.original())):
        energy = np.einsum("grd,gde,gre->gr", w, h, w).reshape(groups * rows)
        np.testing.assert_allclose(energy, expected[key], rtol=1e-4)
    assert gram.rows == yc.shape[1]


def test_chunked_gram_equals_the_one_shot_gram(monkeypatch: pytest.MonkeyPatch) -> None:
    layer, _, shape = _conv("depthwise 5x5, stride 2, pads")
    r = np.random.default_rng(2)
    xc = r.normal(size=shape).astype(np.float32)
    one_shot = _grams(layer, xc, None, batch=shape[0])
    # the first batch equal for both models, then different: hco/hoo start from hcc
    xo = np.concatenate([xc[:1], xc[1:] * 1.5])
    whole = _grams(layer, xc, xo, batch=shape[0])
    monkeypatch.setattr(stats, "_CHUNK_ELEMENTS", 100)
    chunked = _grams(layer, xc, None, batch=1)
    split = _grams(layer, xc, xo, batch=1)
    assert one_shot.same and chunked.same and not split.same
    np.testing.assert_allclose(chunked.hcc, one_shot.hcc, rtol=1e-5, atol=1e-4)
    for a, b in ((split.cross(), whole.cross()), (split.original(), whole.original())):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


def test_matmul_gram_is_xtx_over_every_leading_axis() -> None:
    r = np.random.default_rng(3)
    w = numpy_helper.from_array(r.normal(size=(6, 4)).astype(np.float32), "w")
    layer = _single(helper.make_node("MatMul", ["x", "w"], ["y"]), (2, 5, 6), [w])
    xc = r.normal(size=(2, 5, 6)).astype(np.float32)
    xo = r.normal(size=(2, 5, 6)).astype(np.float32)
    gram = _grams(layer, xc, xo, batch=1)
    flat_c, flat_o = xc.reshape(-1, 6).astype(np.float64), xo.reshape(-1, 6).astype(np.float64)
    np.testing.assert_allclose(gram.hcc[0], flat_c.T @ flat_c, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gram.cross()[0], flat_c.T @ flat_o, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gram.original()[0], flat_o.T @ flat_o, rtol=1e-5, atol=1e-5)
    assert gram.rows == 10
