"""`auto: true`: one float32 run with intermediate tensors exposed, to find what half would break.

Every float32 value of the main graph is added as an extra model output. Values inside `If`
branches are exposed too: each branch gets extra outputs (its own values, and an empty tensor in
the slots of the other branch), recursively, so the same single run sees them. `Loop` and `Scan`
bodies are not exposed (a body runs many times, often with changing shapes); under `auto` their
nodes stay float32 and are reported as not analysed, as are nodes of a branch never taken. If
the instrumented model does not run, the analysis retries with main-graph values only.
Outputs are fetched in chunks so peak memory stays at a bounded number of tensors.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper

from mcompress import runtime
from mcompress.graph import FreshNames
from mcompress.model_io import Model, make_runtime_compatible
from mcompress.passes.fp16.ops import FLOAT, FLOAT16
from mcompress.passes.fp16.plan import Flag

Key = tuple[int, str]
_CHUNK = 128
FLOAT16_MAX = 65504.0
BFLOAT16_MAX = 3.3895313892515355e38


@dataclass
class TensorStats:
    """Largest magnitude seen and squared rounding error against squared norm, over all runs."""

    max_abs: float = 0.0
    sq_norm: float = 0.0
    sq_error: float = 0.0

    @property
    def rel_error(self) -> float:
        return float(np.sqrt(self.sq_error / self.sq_norm)) if self.sq_norm > 0 else 0.0

    def add(self, values: np.ndarray, half_type: int) -> None:
        """Fold one observed tensor into the statistics."""
        flat = np.asarray(values, dtype=np.float32).reshape(-1)
        finite = np.isfinite(flat)
        if not finite.all():
            flat = flat[finite]
        if flat.size == 0:
            return
        peak = float(np.max(np.abs(flat)))
        self.max_abs = max(self.max_abs, peak)
        if peak == 0.0:
            return
        limit = FLOAT16_MAX if half_type == FLOAT16 else BFLOAT16_MAX
        if peak > limit:
            flat = np.clip(flat, -limit, limit)
        # Scaled to at most 1 so float32 dot products cannot overflow (and stay fast).
        error = (round_to_half(flat, half_type) - flat) * np.float32(1.0 / peak)
        scaled = flat * np.float32(1.0 / peak)
        self.sq_error += float(np.dot(error, error)) * peak * peak
        self.sq_norm += float(np.dot(scaled, scaled)) * peak * peak


def round_to_half(values: np.ndarray, half_type: int) -> np.ndarray:
    """Finite float32 `values` within the half range, rounded to float16 or bfloat16 (nearest
    even) and kept as float32. Integer bit arithmetic: several times faster than astype."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    drop = np.uint32(13 if half_type == FLOAT16 else 16)
    half_ulp = np.uint32((1 << (int(drop) - 1)) - 1)
    mask = np.uint32((0xFFFFFFFF >> int(drop)) << int(drop))
    rounded = ((bits + half_ulp + ((bits >> drop) & np.uint32(1))) & mask).view(np.float32)
    if half_type != FLOAT16:
        return rounded
    tiny = np.abs(values) < np.float32(2.0**-14)  # float16 subnormals: a fixed step of 2^-24
    if tiny.any():
        rounded = np.where(
            tiny, np.round(values * np.float32(2.0**24)) * np.float32(2.0**-24), rounded
        )
    return rounded


@dataclass
class Analysis:
    """What one instrumented run found: statistics per value key, and how it went."""

    stats: dict[Key, TensorStats]
    notes: list[str]
    runs: int = 0


def analyse(
    model: Model,
    float_values: dict[int, list[str]],
    feeds: list[dict[str, np.ndarray]],
    half_type: int,
) -> Analysis:
    """Run the float32 model on `feeds` and collect statistics of every exposed float tensor."""
    notes: list[str] = []
    for branches in (True, False):
        proto = onnx.ModelProto()
        proto.CopyFrom(model.proto)
        exposed = _expose(proto, float_values, branches)
        try:
            session = _session(proto, model)
            return _collect(session, exposed, feeds, half_type, notes)
        except Exception as exc:  # noqa: BLE001 - any onnxruntime failure: retry simpler, report
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            notes.append(
                f"auto: the {'instrumented ' if branches else ''}float32 run failed ({message})"
            )
    notes.append("auto: no activations analysed; nodes that would compute in half stay float32")
    return Analysis({}, notes)


def flags_from(
    stats: dict[Key, TensorStats], half_type: int, headroom: float, max_rel_error: float
) -> dict[Key, Flag]:
    """Tensors too large for the half type (with headroom) or rounded too coarsely by it."""
    limit = (FLOAT16_MAX if half_type == FLOAT16 else BFLOAT16_MAX) / headroom
    flags = {}
    for key, s in stats.items():
        if s.max_abs > limit:
            flags[key] = Flag("overflow", s.max_abs, s.rel_error)
        elif s.rel_error > max_rel_error:
            flags[key] = Flag("precision", s.max_abs, s.rel_error)
    return flags


def _collect(
    session: Any,
    exposed: list[tuple[str, Key]],
    feeds: list[dict[str, np.ndarray]],
    half_type: int,
    notes: list[str],
) -> Analysis:
    stats: dict[Key, TensorStats] = {}
    names = [i.name for i in session.get_inputs()]
    runs = 0
    for feed in feeds:
        for name in names:
            if name in feed and np.asarray(feed[name]).dtype == np.float32:
                stats.setdefault((0, name), TensorStats()).add(feed[name], half_type)
    for chunk in _chunks(exposed, _CHUNK):
        for feed in feeds:
            feed_in = {n: feed[n] for n in names if n in feed}
            outs = session.run([n for n, _ in chunk], feed_in)
            runs += 1
            for (_, key), value in zip(chunk, outs, strict=True):
                if isinstance(value, np.ndarray) and value.dtype == np.float32 and value.size:
                    stats.setdefault(key, TensorStats()).add(value, half_type)
    return Analysis(stats, notes, runs)


def _chunks(items: list[tuple[str, Key]], size: int) -> Iterator[list[tuple[str, Key]]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _session(proto: onnx.ModelProto, model: Model) -> Any:
    make_runtime_compatible(proto)
    return runtime.session(proto, external_folder=model.base_dir)


def _expose(
    proto: onnx.ModelProto, float_values: dict[int, list[str]], branches: bool
) -> list[tuple[str, Key]]:
    """Add model outputs for every float value (and If-branch values when `branches`)."""
    taken = FreshNames(proto)
    exposed = _visit(proto.graph, float_values, itertools.count(), branches, taken)
    outputs = {o.name for o in proto.graph.output}
    inputs = {i.name for i in proto.graph.input}
    result = []
    for name, key in exposed:
        if name in inputs:
            continue
        if name not in outputs:
            proto.graph.output.append(helper.make_tensor_value_info(name, FLOAT, None))
            outputs.add(name)
        result.append((name, key))
    return result


def _visit(
    graph: onnx.GraphProto,
    float_values: dict[int, list[str]],
    counter: Iterator[int],
    branches: bool,
    taken: FreshNames,
) -> list[tuple[str, Key]]:
    """Number graphs in the planner's order; expose nested If values through new If outputs."""
    gidx = next(counter)
    exposed = [(name, (gidx, name)) for name in float_values.get(gidx, [])]
    for node in list(graph.node):
        found: dict[str, tuple[onnx.GraphProto, list[tuple[str, Key]]]] = {}
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                found[attr.name] = (attr.g, _visit(attr.g, float_values, counter, branches, taken))
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    _visit(sub, float_values, counter, branches, taken)
        if branches and node.op_type == "If" and set(found) == {"then_branch", "else_branch"}:
            exposed += _expose_if(node, found["then_branch"], found["else_branch"], taken)
    return exposed


def _expose_if(
    node: onnx.NodeProto,
    then: tuple[onnx.GraphProto, list[tuple[str, Key]]],
    other: tuple[onnx.GraphProto, list[tuple[str, Key]]],
    taken: FreshNames,
) -> list[tuple[str, Key]]:
    slots = then[1] + other[1]
    owned = ((then[0], 0, len(then[1])), (other[0], len(then[1]), len(slots)))
    empty = helper.make_tensor("empty", FLOAT, [0], [])
    for branch, start, stop in owned:
        for k, (name, _) in enumerate(slots):
            out = taken.fresh("mcompress_probe")
            if start <= k < stop:
                branch.node.append(helper.make_node("Identity", [name], [out]))
            else:
                branch.node.append(helper.make_node("Constant", [], [out], value=empty))
            branch.output.append(helper.make_tensor_value_info(out, FLOAT, None))
    result = []
    for _, key in slots:
        out = taken.fresh("mcompress_probe")
        node.output.append(out)
        result.append((out, key))
    return result
