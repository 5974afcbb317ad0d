"""Per-layer sensitivity: prune, quantize or cluster one layer at a time and measure the damage.

Tells a user (and `mcompress tune`) which layers to exclude or treat gently before compressing
the whole model. Each layer is altered by the pass's own code (the prune pass's magnitude
pruning, the quantize pass's plan and quantizers - per channel, 4-bit blocks - and the cluster
pass's k-means), so a layer's figure is what the pass would do to it. The model is loaded and
prepared once and kept in memory; one onnxruntime session (built from its bytes) serves every
trial, with the altered weight fed in place of its initializer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper

from mcompress import model_io, runtime
from mcompress.errors import ModelError, UsageError
from mcompress.graph import FreshNames
from mcompress.inputs import InputSet, make_feeds
from mcompress.passes import quantize
from mcompress.passes.cluster.config import Config as ClusterConfig
from mcompress.passes.cluster.kmeans1d import MAX_CLUSTERS
from mcompress.passes.cluster.share import cluster_weight
from mcompress.passes.prune.magnitude import zero_smallest
from mcompress.passes.quantize.restored import restored_weights
from mcompress.prepare import prepare
from mcompress.runtime import error_line
from mcompress.weights import Candidate, find_candidates

DEFAULT_LEVELS = {"prune": (0.3, 0.5, 0.7, 0.9), "quantize": (8.0, 4.0), "cluster": (16.0, 4.0)}
# Models whose tensors exceed this are refused: every trial keeps the whole model in memory.
MAX_MODEL_BYTES = 1 << 30

Progress = Callable[[str, int, int], None]


def parse_levels(text: str | None, pass_type: str) -> list[float]:
    """`"0.3,0.5"` -> [0.3, 0.5], checked: sparsities in (0, 1), bit widths the quantize pass
    writes (8, 4) or cluster counts 2..256."""
    if not text:
        return list(DEFAULT_LEVELS[pass_type])
    try:
        levels = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"--levels '{text}' is not a comma-separated list of numbers") from None
    if not levels:
        raise UsageError("--levels is empty")
    for level in levels:
        if pass_type == "prune" and not 0 < level < 1:
            raise UsageError(f"--levels: sparsity {level:g} is not between 0 and 1")
        if pass_type == "quantize" and level not in (8, 4):
            raise UsageError(f"--levels: {level:g} is not a bit width of the quantize pass (8, 4)")
        if pass_type == "cluster" and (level != int(level) or not 2 <= level <= MAX_CLUSTERS):
            raise UsageError(f"--levels: {level:g} is not a cluster count from 2 to 256")
    return levels


def analyze(
    model_path: Path,
    *,
    pass_type: str,
    levels: list[float],
    data: Path | None,
    samples: int,
    seed: int,
    input_shapes: dict[str, tuple[int, ...]],
    max_layers: int,
    progress: Progress = lambda label, done, total: None,
) -> dict[str, Any]:
    """Probe each prunable layer alone at each level; rows sorted most sensitive first."""
    started = time.perf_counter()
    model = load_prepared(model_path)
    candidates, _ = find_candidates(model, min_elements=0)
    if not candidates:
        raise ModelError(
            "nothing to probe: the model has no Conv, ConvTranspose, Gemm, MatMul or Gather weight"
        )
    candidates.sort(key=lambda c: -c.weight.size)
    probed = candidates[:max_layers] if max_layers > 0 else candidates
    inputs = make_feeds(
        model_path, data=data, samples=samples, seed=seed, input_shapes=input_shapes
    )
    altered = [level_values(model, probed, pass_type, level) for level in levels]
    runner = Runner(model, probed, inputs)
    judge = _Judge(inputs, runner.run())
    rows: list[dict[str, Any]] = []
    total = len(probed) * len(levels)
    for i, cand in enumerate(probed):
        results = []
        for j, level in enumerate(levels):
            progress("sensitivity", i * len(levels) + j, total)
            values = altered[j].get(cand.weight.name)
            outputs = runner.run(cand, values) if values is not None else runner.run()
            results.append({"level": level, **judge.score(outputs)})
        deltas = [r["delta"] for r in results]
        rows.append(
            {
                "name": cand.weight.name,
                "ops": cand.ops,
                "shape": list(cand.weight.shape),
                "elements": cand.weight.size,
                "results": results,
                "score": float(np.mean(deltas)),
            }
        )
    progress("sensitivity", total, total)
    rows.sort(key=lambda r: -r["score"])
    notes = []
    if len(probed) < len(candidates):
        notes.append(
            f"probed the {len(probed)} largest of {len(candidates)} layers; "
            "raise --max-layers (0 = all) to probe more"
        )
    if inputs.synthetic:
        notes.append("random inputs: the metric compares outputs with the original model's")
    return {
        "model": str(model_path),
        "pass": pass_type,
        "metric": judge.metric,
        "baseline": judge.baseline,
        "levels": levels,
        "layers_total": len(candidates),
        "layers_probed": len(probed),
        "layers": rows,
        "inputs": inputs.description,
        "notes": notes,
        "seconds": round(time.perf_counter() - started, 3),
    }


class _Judge:
    """Scores outputs: accuracy drop with labels, else 1 - cosine vs the original outputs."""

    def __init__(self, inputs: InputSet, reference: list[list[np.ndarray]]) -> None:
        self.labels = inputs.labels
        self.reference = reference
        self.metric = "accuracy" if self.labels is not None else "cosine"
        self.baseline = self._value(reference)
        self.classes = _classes(reference)

    def _value(self, outputs: list[list[np.ndarray]]) -> float:
        if self.labels is not None:
            predicted = np.array([int(np.argmax(run[0])) for run in outputs])
            return float(np.mean(predicted == self.labels[: len(predicted)]))
        return _cosine(flat(self.reference), flat(outputs))

    def score(self, outputs: list[list[np.ndarray]]) -> dict[str, float]:
        value = self._value(outputs)
        result = {"metric": value, "delta": self.baseline - value}
        if self.classes:
            agree = [
                int(np.argmax(a[0])) == int(np.argmax(b[0]))
                for a, b in zip(self.reference, outputs, strict=True)
            ]
            result["top1_agreement"] = float(np.mean(agree))
        return result


def _classes(outputs: list[list[np.ndarray]]) -> bool:
    """True when the first output looks like class scores (one row of several values)."""
    first = outputs[0][0] if outputs and outputs[0] else None
    return first is not None and first.dtype.kind == "f" and first.size > 1 and first.ndim >= 1


def flat(outputs: list[list[np.ndarray]]) -> np.ndarray:
    """Every float output of every run, as one vector."""
    parts = [np.asarray(o, np.float64).reshape(-1) for run in outputs for o in run]
    return np.concatenate([p for p in parts if p.dtype.kind == "f"])


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return float("nan")
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0 or nb == 0:
        return 1.0 if na == nb else 0.0
    return float(np.dot(a, b) / (na * nb))


def level_values(
    model: model_io.Model, probed: list[Candidate], pass_type: str, level: float
) -> dict[str, np.ndarray]:
    """{weight name: its values after the pass at `level`} for the probed weights, each altered
    alone by the pass's own code; a weight the pass leaves alone is absent."""
    names = {c.weight.name for c in probed}
    if pass_type == "quantize":
        cfg = quantize.Config(bits=int(level))
        found = restored_weights(model, cfg)
        return {name: found[name] for name in names if name in found}
    altered = {}
    for cand in probed:
        values = np.asarray(cand.weight.array())
        if pass_type == "prune":
            altered[cand.weight.name] = zero_smallest(values, int(round(level * values.size)))
            continue
        saved = onnx.TensorProto()
        saved.CopyFrom(cand.weight.tensor)
        row, _ = cluster_weight(cand, ClusterConfig(clusters=int(level)), None)
        if row is not None:
            altered[cand.weight.name] = np.array(cand.weight.array(), copy=True)
        cand.weight.tensor.CopyFrom(saved)
    return altered


class Runner:
    """Runs every feed with at most one weight replaced.

    Probed main-graph weights become graph inputs whose initializer is only a default, so one
    session serves every trial (the replaced weight is fed); weights inside subgraphs are
    swapped in the proto and a session is built from its bytes for the trial.
    """

    def __init__(self, model: model_io.Model, probed: list[Candidate], inputs: InputSet) -> None:
        self.model = model
        self.inputs = inputs
        graph = model.proto.graph
        existing = {vi.name for vi in graph.input}
        self.fed = {c.weight.name for c in probed if c.key[0] == 0}
        for cand in probed:
            name = cand.weight.name
            if name in self.fed and name not in existing:
                tensor = cand.weight.tensor
                graph.input.append(
                    helper.make_tensor_value_info(name, tensor.data_type, list(tensor.dims))
                )
        self.session = _session(model.proto)

    def run(
        self, cand: Candidate | None = None, values: np.ndarray | None = None
    ) -> list[list[np.ndarray]]:
        """Outputs for every feed, with `cand`'s weight replaced by `values` when given."""
        if cand is None or values is None:
            return _outputs(self.session, self.inputs.feeds)
        weight = cand.weight
        if weight.name in self.fed:
            feeds = [{**feed, weight.name: values} for feed in self.inputs.feeds]
            return _outputs(self.session, feeds)
        saved = onnx.TensorProto()
        saved.CopyFrom(weight.tensor)
        weight.replace(values)
        try:
            return _outputs(_session(self.model.proto), self.inputs.feeds)
        finally:
            weight.tensor.CopyFrom(saved)


def _session(proto: onnx.ModelProto) -> Any:
    """Idle worker threads sleep instead of spinning: a probe run is short, and a spinning
    pool burned ~40% more CPU than the run (classifier, 64 inputs, under load)."""
    try:
        return runtime.session(proto, spinning=False)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises many types; report one line
        raise ModelError(f"onnxruntime cannot load the model: {error_line(exc, 200)}") from None


def _outputs(session: Any, feeds: list[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
    try:
        return [list(session.run(None, feed)) for feed in feeds]
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises many types; report one line
        raise ModelError(f"onnxruntime cannot run the model: {error_line(exc, 200)}") from None


def load_prepared(model_path: Path) -> model_io.Model:
    """The model as the pipeline sees it before its passes (prepared), in memory, every node
    named (the quantize plan selects nodes by name)."""
    model = model_io.load_model(model_path)
    prepare(model)
    _internalize(model)
    names = FreshNames(model.proto)
    for graph in model.graphs():
        for node in graph.node:
            node.name = node.name or names.fresh(node.op_type)
    return model


def _internalize(model: model_io.Model) -> None:
    """Bring external tensors into memory so the model can be serialized for each trial."""
    if model_io.tensor_bytes(model.proto) > MAX_MODEL_BYTES:
        raise UsageError("sensitivity analysis keeps the model in memory and needs it under 1 GB")
    for weight in model.weights(float_only=False):
        if model_io.is_external(weight.tensor):
            weight.replace(np.array(weight.array()))
