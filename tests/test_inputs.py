"""Validation inputs: .npz data checked against the model, and random inputs that really run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from mcompress.errors import DataError
from mcompress.inputs import make_feeds
from tests import builders


def _feeds(path: Path, data: Path | None = None, **kw: object) -> object:
    args = {"data": data, "samples": 4, "seed": 0, "input_shapes": {}}
    args.update(kw)
    return make_feeds(path, **args)  # type: ignore[arg-type]


@pytest.fixture
def mlp_path(tmp_path: Path) -> Path:
    return builders.save(builders.mlp(inputs=32, classes=10), tmp_path / "mlp.onnx")


def test_vad_runs_unaided_with_sr_from_its_constant_and_zero_state(vad: Path) -> None:
    inputs = _feeds(vad)
    desc = inputs.description
    assert inputs.synthetic and desc["source"] == "random" and desc["seed"] == 0
    assert len(inputs.feeds) == 4
    feed = inputs.feeds[0]
    assert feed["sr"].dtype == np.int64 and feed["sr"].shape == () and int(feed["sr"]) == 16000
    assert feed["state"].shape == (2, 1, 128) and not feed["state"].any()
    # The default sequence length (64) is rejected by the model; the smallest size of the
    # ladder that runs is 256, where the output ignores the audio; 512 is its window.
    assert feed["input"].shape == (1, 512) and feed["input"].dtype == np.float32
    assert desc["guessed"] == {"input": [512]}
    notes = " ".join(desc["dimensions"])
    assert "guessed: 512 (at 256 the outputs do not depend on the inputs)" in notes
    assert "16000" in desc["inputs"]["sr"]["fill"]
    for f in inputs.feeds:
        prob, state = builders.run(vad, f)
        assert prob.shape == (1, 1) and 0 <= float(prob[0, 0]) <= 1
        assert state.shape == (2, 1, 128)


def test_classifier_runs_unaided_and_input_shape_pins_dims(classifier: Path) -> None:
    inputs = _feeds(classifier, samples=2)
    assert inputs.feeds[0]["x"].shape == (1, 3, 224, 224)
    (probs,) = builders.run(classifier, inputs.feeds[0])
    np.testing.assert_allclose(probs.sum(), 1.0, rtol=1e-5)
    pinned = _feeds(classifier, samples=2, input_shapes={"x": (2, 3, 48, 192)})
    assert pinned.feeds[0]["x"].shape == (2, 3, 48, 192)
    assert builders.run(classifier, pinned.feeds[0])[0].shape == (2, 2)


def test_random_inputs_are_seeded(mlp_path: Path) -> None:
    a, b, c = (_feeds(mlp_path, seed=s) for s in (1, 1, 2))
    assert np.array_equal(a.feeds[3]["x"], b.feeds[3]["x"])
    assert not np.array_equal(a.feeds[0]["x"], c.feeds[0]["x"])
    assert not np.array_equal(a.feeds[0]["x"], a.feeds[1]["x"])
    assert a.feeds[0]["x"].shape == (1, 32)


def test_token_ids_stay_below_the_embedding_rows(tmp_path: Path) -> None:
    path = builders.save(builders.transformer_like(vocab=50, dim=8), tmp_path / "t.onnx")
    inputs = _feeds(path, samples=20)
    tokens = np.stack([f["tokens"] for f in inputs.feeds])
    assert tokens.dtype == np.int64 and tokens.shape == (20, 1, 64)
    assert tokens.min() == 0 and tokens.max() == 49  # 1280 draws cover the whole 0..49 range
    assert inputs.description["inputs"]["tokens"]["fill"].startswith("integers 0..49")
    builders.run(path, inputs.feeds[0])


def test_unknown_int_input_gets_documented_default_range(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Cast", ["k"], ["y"], to=TensorProto.FLOAT)],
        "g",
        [helper.make_tensor_value_info("k", TensorProto.INT32, [1, 300])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 300])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "k.onnx"
    onnx.save(model, str(path))
    k = _feeds(path, samples=1).feeds[0]["k"]
    assert k.dtype == np.int32 and k.min() == 0 and k.max() == 9


def test_npz_data_with_labels(mlp_path: Path, tmp_path: Path) -> None:
    x = np.random.default_rng(0).normal(size=(6, 32)).astype(np.float32)
    labels = np.array([0, 1, 2, 3, 4, 5])
    np.savez(tmp_path / "val.npz", x=x, labels=labels)
    inputs = _feeds(mlp_path, data=tmp_path / "val.npz", samples=100)
    assert not inputs.synthetic and inputs.description["source"] == "data"
    assert len(inputs.feeds) == 6 and inputs.feeds[2]["x"].shape == (1, 32)
    np.testing.assert_array_equal(inputs.feeds[2]["x"][0], x[2])
    np.testing.assert_array_equal(inputs.labels, labels)
    capped = _feeds(mlp_path, data=tmp_path / "val.npz", samples=3)
    assert len(capped.feeds) == 3 and capped.labels.tolist() == [0, 1, 2]
    assert capped.description["samples_available"] == 6


def test_npz_folder_is_joined(mlp_path: Path, tmp_path: Path) -> None:
    folder = tmp_path / "val"
    folder.mkdir()
    for i in range(2):
        np.savez(folder / f"part{i}.npz", x=np.full((3, 32), i, np.float32))
    inputs = _feeds(mlp_path, data=folder, samples=10)
    assert [float(f["x"][0, 0]) for f in inputs.feeds] == [0, 0, 0, 1, 1, 1]


def test_vad_data_without_state_or_sr_is_completed(vad: Path, tmp_path: Path) -> None:
    audio = np.random.default_rng(0).normal(size=(3, 1, 512)).astype(np.float32)
    np.savez(tmp_path / "audio.npz", input=audio)
    inputs = _feeds(vad, data=tmp_path / "audio.npz")
    assert int(inputs.feeds[0]["sr"]) == 16000 and inputs.feeds[0]["state"].shape == (2, 1, 128)
    builders.run(vad, inputs.feeds[0])


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"y": np.zeros((2, 32), np.float32)}, "has no array for input 'x' (expected float32"),
        ({"labels": np.zeros(2, np.int64)}, "has no array for input 'x' (expected float32"),
        ({"x": np.zeros((2, 32), np.int64)}, "input 'x' is int64, the model expects float32"),
        ({"x": np.zeros((2, 31), np.float32)}, "input 'x' has shape [2, 31]; the model expects"),
        (
            {"x": np.zeros((2, 32), np.float32), "labels": np.zeros(3, np.int64)},
            "same number of samples",
        ),
    ],
)
def test_npz_mismatches_name_the_input(
    mlp_path: Path, tmp_path: Path, arrays: dict[str, np.ndarray], message: str
) -> None:
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError) as info:
        _feeds(mlp_path, data=tmp_path / "bad.npz")
    assert message in info.value.message
    assert info.value.exit_code == 2


def test_float64_data_is_cast_and_recorded(mlp_path: Path, tmp_path: Path) -> None:
    np.savez(tmp_path / "f64.npz", x=np.ones((2, 32)))
    inputs = _feeds(mlp_path, data=tmp_path / "f64.npz")
    assert inputs.feeds[0]["x"].dtype == np.float32
    assert inputs.description["inputs"]["x"]["fill"] == "from data (cast from float64)"


def test_missing_pickled_and_corrupt_data(mlp_path: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        _feeds(mlp_path, data=tmp_path / "nope.npz")
    np.savez(tmp_path / "obj.npz", x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(DataError, match="holds Python objects"):
        _feeds(mlp_path, data=tmp_path / "obj.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable .npz"):
        _feeds(mlp_path, data=tmp_path / "junk.npz")


def test_bad_input_shape_option(mlp_path: Path) -> None:
    with pytest.raises(DataError, match="does not fit the model's x \\[batch, 32\\]"):
        _feeds(mlp_path, input_shapes={"x": (1, 31)})
    with pytest.raises(DataError, match="names input 'z'"):
        _feeds(mlp_path, input_shapes={"z": (1, 32)})
