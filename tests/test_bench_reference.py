"""The benchmarks' reference tools (benchmarks/reference.py) compress what mcompress does."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from tests import builders
from tests.conftest import REPO

_spec = importlib.util.spec_from_file_location("reference", REPO / "benchmarks" / "reference.py")
assert _spec and _spec.loader
reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reference)


def _weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    graphs, found = [model.graph], {}
    while graphs:
        graph = graphs.pop()
        found |= {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        graphs += [a.g for node in graph.node for a in node.attribute if a.HasField("g")]
    return found


def test_reference_cluster_reaches_weights_inside_if_branches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A VAD exported with its weights in If branches: a reference that edits only the main
    # graph leaves them as they were and its output error of 0 looks like a perfect codebook.
    monkeypatch.setattr(reference, "MIN_ELEMENTS", 256)
    monkeypatch.setattr(reference, "CLUSTERS", 4)
    src = builders.save(builders.if_subgraph(), tmp_path / "if.onnx")
    reference.main("cluster", src, tmp_path / "ref.onnx")
    after = _weights(onnx.load(str(tmp_path / "ref.onnx")))
    assert np.unique(after["w_outer"]).size == 4
    assert np.unique(after["w_inner"]).size == 4
