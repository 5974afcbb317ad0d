"""What recovery does with weights it cannot reconstruct (mcompress.recover.tables): an
embedding table read by Gather is held at 8 bits (prune: an 8-bit grid instead of zeros;
quantize --bits 4: int8 instead of 4-bit blocks), before the layers after it are re-fitted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from mcompress import encoding, model_io
from mcompress.passes import cluster
from mcompress.passes.base import PassContext
from mcompress.passes.cluster import recovered as cluster_recovered
from mcompress.passes.prune import Config
from mcompress.passes.prune import recovered as prune_recovered
from mcompress.recover import tables
from mcompress.weights import find_candidates
from tests import builders

VOCAB, DIM = 256, 32


def embedding_model(path: Path) -> tuple[Path, np.ndarray]:
    """Gather(table, ids) -> MatMul: the table is read by an op recovery cannot re-fit."""
    r = np.random.default_rng(10)
    table = (r.normal(size=(VOCAB, DIM)) @ r.normal(size=(DIM, DIM)) / 4).astype(np.float32)
    w = r.normal(size=(DIM, DIM)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["e"], name="embed"),
         helper.make_node("MatMul", ["e", "w"], ["y"], name="mm")],
        "embed",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8, DIM])],
        [numpy_helper.from_array(table, "table"), numpy_helper.from_array(w, "w")],
    )  # fmt: skip
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = builders.IR_VERSION
    source = builders.save(proto, path / "embed.onnx")
    np.savez(path / "calib.npz", ids=r.integers(0, VOCAB, size=(128, 8)))
    np.savez(path / "val.npz", ids=r.integers(0, VOCAB, size=(64, 8)))
    return source, table


def _run(tmp_path: Path, source: Path, flag: str, *args: str) -> dict:
    """The JSON report of one mcompress command on `source` with the test's data; output
    `FLAG.onnx` in tmp_path."""
    result = subprocess.run(
        [sys.executable, "-m", "mcompress", *args[:1], str(source), *args[1:], flag,
         "--calibration", str(tmp_path / "calib.npz"), "--data", str(tmp_path / "val.npz"),
         "-o", str(tmp_path / f"{flag}.onnx"), "--json"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode in (0, 3), result.stderr
    return json.loads(result.stdout)


def test_int8_grid_has_255_values_within_half_a_step() -> None:
    values = np.random.default_rng(0).normal(size=(64, 16)).astype(np.float32)
    rounded = tables.int8_grid(values)
    step = np.abs(values).max() / 127
    assert np.unique(rounded).size <= 255
    assert np.abs(rounded - values).max() <= step / 2 + 1e-7
    assert rounded.dtype == np.float32


def test_prune_with_recovery_rounds_the_table_to_8_bits_and_is_smaller(tmp_path: Path) -> None:
    """At 50%, the table (the only weight compressed: the MatMul is excluded) costs fewer bytes
    as 8-bit codes than pruned, and its output error is a small fraction of magnitude
    pruning's."""
    source, table = embedding_model(tmp_path)
    reports = {
        flag: _run(tmp_path, source, flag, "prune", "-s", "0.5", "--exclude", "mm")
        for flag in ("--recover", "--no-recover")
    }
    on, off = reports["--recover"], reports["--no-recover"]
    assert any(
        "1 weights recovery cannot reconstruct (e.g. 'table', read by Gather) rounded to 8 bits "
        "instead of pruned" in n
        for n in on["notes"]
    )
    [row] = [t for t in on["passes"][0]["stats"]["tensors"] if t["name"] == "table"]
    assert row["recovered"] is False and row["int8_grid"] is True and row["sparsity"] < 0.05
    stored = encoding.expanded_weights(tmp_path / "--recover.onnx")["table"]
    assert np.unique(stored).size <= 255
    assert np.abs(stored - table).max() <= np.abs(table).max() / 254 + 1e-6
    assert on["output"]["size_bytes"] < off["output"]["size_bytes"]
    sqnr = {f: rep["validation"]["overall"]["sqnr_db"] for f, rep in reports.items()}
    assert sqnr["--recover"] > 35 and sqnr["--no-recover"] < 15, sqnr


def test_a_layer_out_of_reach_is_pruned_and_a_table_held_at_8_bits_at_any_sparsity(
    tmp_path: Path,
) -> None:
    """The MatMul, shared by two nodes, is out of recovery's reach but re-fittable in kind:
    pruned by magnitude. The table is rounded to 8 bits even at 90%."""
    source, _ = embedding_model(tmp_path)
    model = model_io.load_model(source)
    graph = model.proto.graph
    graph.node.append(helper.make_node("MatMul", ["e", "w"], ["y2"], name="mm2"))
    graph.output.append(helper.make_tensor_value_info("y2", TensorProto.FLOAT, ["n", 8, DIM]))
    cfg = Config(sparsity=0.9, calibration=str(tmp_path / "calib.npz"))
    result = prune_recovered.apply(model, cfg, PassContext(input_path=source))
    rows = {t["name"]: t for t in result.stats["tensors"]}
    assert rows["table"]["int8_grid"] is True and rows["table"]["sparsity"] < 0.05
    assert abs(rows["w"]["sparsity"] - 0.9) < 1e-3 and "int8_grid" not in rows["w"]
    assert any("(e.g. 'table', read by Gather) rounded to 8 bits" in n for n in result.notes)
    assert any("(e.g. 'w', read by MatMul) pruned by magnitude" in n for n in result.notes)


def test_quantize_4bit_with_recovery_keeps_the_table_int8(tmp_path: Path) -> None:
    """Without data the table becomes 4-bit GatherBlockQuantized; with recovery it is stored
    int8 per row, which loses far less (the MatMul is excluded: the table is all that moves)."""
    source, _ = embedding_model(tmp_path)
    reports = {}
    for flag in ("--recover", "--no-recover"):
        args = ("quantize", "--bits", "4", "--block-size", "16", "--exclude", "mm")
        reports[flag] = _run(tmp_path, source, flag, *args)
        ops = {n.op_type for n in model_io.load_model(tmp_path / f"{flag}.onnx").proto.graph.node}
        assert ("GatherBlockQuantized" in ops) == (flag == "--no-recover"), ops
    on = reports["--recover"]
    assert any(
        "1 weights recovery cannot reconstruct (e.g. 'table', read by Gather) stored as int8 "
        "(not 4-bit" in n
        for n in on["notes"]
    )
    [row] = [t for t in on["passes"][0]["stats"]["tensors"] if t["name"] == "table"]
    assert row["bits"] == 8 and row["method"] == "weight-only gather"
    assert row["bytes_after"] == VOCAB * DIM + VOCAB * 4
    sqnr = {f: rep["validation"]["overall"]["sqnr_db"] for f, rep in reports.items()}
    assert sqnr["--recover"] > 35 and sqnr["--no-recover"] < 25, sqnr


def test_cluster_with_recovery_gives_the_table_256_values(tmp_path: Path) -> None:
    """K = 16 for the MatMul; the table gets 256 shared values (8-bit codes), with a fraction
    of the error 16 would leave."""
    source, _ = embedding_model(tmp_path)
    model = model_io.load_model(source)
    cfg = cluster.Config(clusters=16, calibration=str(tmp_path / "calib.npz"))
    result = cluster_recovered.apply(model, cfg, PassContext(input_path=source))
    rows = {t["name"]: t for t in result.stats["tensors"]}
    assert rows["table"]["clusters"] == 256 and rows["table"]["unique_values_after"] <= 256
    assert rows["w"]["clusters"] == 16 and rows["w"]["unique_values_after"] <= 16
    assert rows["table"]["relative_rmse"] < 0.01
    candidates, _ = find_candidates(model_io.load_model(source), 0)
    [fresh] = [c for c in candidates if c.weight.name == "table"]
    plain, _ = cluster_recovered.cluster_weight(fresh, cluster.Config(clusters=16), None)
    assert plain is not None and plain["relative_rmse"] > 10 * rows["table"]["relative_rmse"]
    assert any(
        "1 weights recovery cannot reconstruct (e.g. 'table', read by Gather) clustered to 256 "
        "values (8 bits)" in n
        for n in result.notes
    )
