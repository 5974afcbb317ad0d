"""The bundled sample models load in onnxruntime, keep their accuracy and stay small."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"
MIN_ACCURACY = {"digits_mlp.onnx": 0.95, "digits_cnn.onnx": 0.93}


@pytest.fixture(scope="module")
def val() -> tuple[np.ndarray, np.ndarray]:
    data = np.load(SAMPLES / "digits_val.npz")
    return data["x"], data["labels"]


@pytest.mark.parametrize("name", sorted(MIN_ACCURACY))
def test_model_accuracy_on_held_out_digits(name: str, val: tuple[np.ndarray, np.ndarray]) -> None:
    x, labels = val
    sess = ort.InferenceSession(str(SAMPLES / name), providers=["CPUExecutionProvider"])
    probs = sess.run(["probs"], {"x": x})[0]
    accuracy = float((probs.argmax(1) == labels).mean())
    assert probs.shape == (len(labels), 10)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    assert accuracy >= MIN_ACCURACY[name]
    recorded = {p.key: p.value for p in onnx.load(SAMPLES / name).metadata_props}
    assert abs(float(recorded["test_accuracy"]) - accuracy) < 1e-4


def test_model_headers() -> None:
    for name in MIN_ACCURACY:
        model = onnx.load(SAMPLES / name)
        assert (model.ir_version, model.opset_import[0].version) == (8, 13)
        assert model.producer_name == "mcompress-sample-models"
        (inp,) = model.graph.input
        dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
        assert (inp.name, dims) == ("x", ["batch", 64])
    cnn_ops = [n.op_type for n in onnx.load(SAMPLES / "digits_cnn.onnx").graph.node]
    assert cnn_ops.count("BatchNormalization") == 2 and cnn_ops.count("Conv") == 3


def test_data_files(val: tuple[np.ndarray, np.ndarray]) -> None:
    x, labels = val
    assert x.dtype == np.float32 and x.shape[1] == 64 and len(x) >= 300
    assert labels.dtype == np.int64 and labels.shape == (len(x),)
    assert sorted(set(labels.tolist())) == list(range(10))
    calib = np.load(SAMPLES / "digits_calib.npz")["x"]
    assert calib.shape == (64, 64) and calib.dtype == np.float32
    assert calib.min() >= 0.0 and calib.max() <= 1.0


def test_sample_models_total_under_2mb() -> None:
    total = sum(p.stat().st_size for p in SAMPLES.iterdir() if p.is_file())
    assert total < 2_000_000
