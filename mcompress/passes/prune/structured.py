"""Structured pruning: remove whole output channels and physically shrink every coupled tensor.

The result is a smaller dense model (fewer parameters, fewer MACs), so it is faster in any
runtime. Channel groups come from `channel_groups`; a group that cannot be pruned
consistently is left alone and listed in the stats with the reason.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np
import onnx
from onnx import helper

from mcompress.analysis import count_parameters
from mcompress.graph import iter_graphs
from mcompress.inputs import BATCH_NAMES, DEFAULT_DIM, DEFAULT_IMAGE_DIM
from mcompress.model_io import Model, add_initializer
from mcompress.passes.base import PassContext, PassResult
from mcompress.passes.prune.channel_groups import analyze, iter_layer_sites
from mcompress.passes.prune.channel_layout import LAYERS, Analysis, Segment, Shapes, attr
from mcompress.passes.prune.channel_state import graph_output_names
from mcompress.passes.prune.config import Config
from mcompress.prepare import remove_unused_initializers
from mcompress.recover.options import NO_DATA_NOTE, wants_recovery
from mcompress.weights import Initializer, Site, walk

LAYER_OPS = LAYERS


def apply(model: Model, cfg: Config, ctx: PassContext) -> PassResult:
    """Prune `cfg.sparsity` of the channels of every prunable group, ranked by weight norm."""
    folded = fold_constant_reshapes(model)
    shapes, pinned = infer_shapes(model, ctx.input_shapes)
    params_before = count_parameters(model.proto)
    macs_before, macs_unknown = estimate_macs(model, shapes)
    analysis = analyze(model, shapes, tuple(cfg.exclude))
    keep, unchanged = choose_channels(analysis, cfg)
    for gid, reason in unchanged.items():
        analysis.groups[gid].reasons.append(reason)
    recovery = None
    if keep and wants_recovery(cfg):
        from mcompress.passes.prune import structured_recovered

        keep, recovery = structured_recovered.run(model, analysis, keep, cfg, ctx, cfg.round_to)
    apply_edits(model, analysis, keep)
    if keep:
        remove_unused_initializers(model)
        _refresh_graph_info(model)
    shapes_after, _ = infer_shapes(model, ctx.input_shapes)
    params_after = count_parameters(model.proto)
    stats: dict[str, Any] = {
        "mode": "structured",
        "criterion": cfg.criterion or "l1",
        "target_sparsity": cfg.sparsity,
        "parameters_before": params_before,
        "parameters_after": params_after,
        "parameters_removed": 1 - params_after / max(params_before, 1),
        "macs_before": macs_before,
        "macs_after": estimate_macs(model, shapes_after)[0],
        "macs_input_shapes": pinned,
        "macs_layers_unknown": macs_unknown,
        "constants_folded": folded,
        "groups": {
            "total": len(analysis.groups),
            "pruned": len(keep),
            "left_alone": len(analysis.blocked_groups()),
        },
        "pruned_groups": [
            {
                "layers": analysis.groups[gid].layers,
                "channels_before": analysis.groups[gid].channels,
                "channels_after": int(kept.size),
            }
            for gid, kept in keep.items()
        ],
        "left_alone": [
            {"layers": g.layers, "channels": g.channels, "reason": g.reasons[0]}
            for g in analysis.blocked_groups()
        ],
    }
    notes = []
    if not keep:
        notes.append("structured prune: no channel group could be pruned (see left_alone)")
    if recovery is not None:
        stats["criterion"] = "reconstruction"
        stats["recovery"] = asdict(recovery)
        notes.append(recovery.summary())
    elif keep and cfg.recover:
        notes.append(NO_DATA_NOTE.format(name="prune"))
    return PassResult(modified=bool(keep) or folded > 0, stats=stats, notes=notes)


# ---------------------------------------------------------------- channel choice


def choose_channels(
    analysis: Analysis, cfg: Config
) -> tuple[dict[int, np.ndarray], dict[int, str]]:
    """Kept channel indices per group to prune (highest summed norm first), and why the other
    free groups keep all their channels.

    A group's score per channel is the sum, over every tensor producing its channels, of that
    channel's L1 or L2 norm.
    """
    free = {g.id: g for g in analysis.free_groups()}
    scores = {gid: np.zeros(g.channels) for gid, g in free.items()}
    for edit in analysis.axis_edits:
        if not edit.importance:
            continue
        values = np.asarray(edit.init.weight.array(), dtype=np.float64)
        rows = np.moveaxis(values, edit.axis, 0).reshape(values.shape[edit.axis], -1)
        norms = (
            np.abs(rows).sum(1) if (cfg.criterion or "l1") == "l1" else np.sqrt((rows**2).sum(1))
        )
        offset = 0
        for seg in edit.segments:
            span = seg.channels * seg.block
            root = analysis.root(seg.group) if seg.group is not None else None
            if root in scores:
                scores[root] += norms[offset : offset + span].reshape(seg.channels, -1).sum(1)
            offset += span
    keep: dict[int, np.ndarray] = {}
    unchanged: dict[int, str] = {}
    for gid, group in free.items():
        count = kept_count(group.channels, cfg.sparsity, cfg.round_to)
        if count < group.channels:
            order = np.argsort(-scores[gid], kind="stable")[:count]
            keep[gid] = np.sort(order)
        elif cfg.round_to > 1:
            unchanged[gid] = f"rounding to a multiple of round_to={cfg.round_to} keeps all"
        else:
            unchanged[gid] = f"sparsity {cfg.sparsity:g} removes no channel of {group.channels}"
    return keep, unchanged


def kept_count(channels: int, sparsity: float, round_to: int) -> int:
    """Channels left after removing `sparsity` of them: at least one, and a multiple of
    `round_to` when the group has that many (nearest multiple, at most `channels`)."""
    keep = max(1, channels - int(np.floor(sparsity * channels + 0.5)))
    if round_to <= 1 or channels < round_to:
        return keep if round_to <= 1 else channels
    nearest = int(np.floor(keep / round_to + 0.5)) * round_to
    return max(round_to, min(nearest, channels // round_to * round_to))


# ---------------------------------------------------------------- edits


def positions(
    analysis: Analysis, segments: tuple[Segment, ...], keep: dict[int, np.ndarray]
) -> np.ndarray | None:
    """Indices kept along an axis laid out as `segments`; None when nothing there is pruned."""
    parts: list[np.ndarray] = []
    offset = 0
    changed = False
    for seg in segments:
        span = seg.channels * seg.block
        kept = keep.get(analysis.root(seg.group)) if seg.group is not None else None
        if kept is None:
            parts.append(np.arange(offset, offset + span))
        else:
            changed = True
            idx = offset + kept[:, None] * seg.block + np.arange(seg.block)[None, :]
            parts.append(idx.reshape(-1))
        offset += span
    return np.concatenate(parts) if changed else None


def apply_edits(model: Model, analysis: Analysis, keep: dict[int, np.ndarray]) -> None:
    """Slice every coupled tensor axis, update depthwise `group`s and Reshape targets."""
    if not keep:
        return
    for edit in analysis.axis_edits:
        idx = positions(analysis, edit.segments, keep)
        if idx is not None:
            values = np.take(np.asarray(edit.init.weight.array()), idx, axis=edit.axis)
            _store(edit.init, values, edit.reader)
    for group_edit in analysis.group_edits:
        idx = positions(analysis, group_edit.segments, keep)
        if idx is not None:
            _set_int_attr(group_edit.node, "group", int(idx.size))
    for shape_edit in analysis.shape_edits:
        idx = positions(analysis, shape_edit.segments, keep)
        if idx is not None:
            values = np.array(shape_edit.init.weight.array())
            values.reshape(-1)[shape_edit.index] = idx.size
            _store(shape_edit.init, values, shape_edit.reader)


def _store(
    init: Initializer,
    values: np.ndarray,
    reader: tuple[onnx.GraphProto, onnx.NodeProto, int] | None,
) -> None:
    """Write `values` back, or into a copy owned by `reader` when the tensor is shared."""
    if reader is None:
        init.weight.replace(values)
        return
    graph, node, slot = reader
    taken = {t.name for g in iter_graphs(graph) for t in g.initializer}
    taken |= {o for g in iter_graphs(graph) for n in g.node for o in n.output}
    name, i = f"{init.weight.name}_pruned", 0
    while name in taken:
        i += 1
        name = f"{init.weight.name}_pruned_{i}"
    add_initializer(graph, values, name)
    node.input[slot] = name


def _set_int_attr(node: onnx.NodeProto, name: str, value: int) -> None:
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend([*kept, helper.make_attribute(name, value)])


def _refresh_graph_info(model: Model) -> None:
    """Drop stale value_info and fix graph inputs that mirror resized initializers (IR < 4)."""
    for graph in model.graphs():
        del graph.value_info[:]
        dims = {t.name: list(t.dims) for t in graph.initializer}
        for vi in graph.input:
            if vi.name in dims and vi.type.HasField("tensor_type"):
                shape = vi.type.tensor_type.shape
                del shape.dim[:]
                for d in dims[vi.name]:
                    shape.dim.add().dim_value = d


# ---------------------------------------------------------------- constant folding


_FOLDABLE = {"Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity"}


def fold_constant_reshapes(model: Model) -> int:
    """Replace Reshape/Unsqueeze/Squeeze/Flatten/Identity of initializers by their result.

    Exporters often store a bias as `Reshape(offset, [1, C, 1, 1])`; folding turns it into one
    per-channel constant that can be sliced like any other.
    """
    outputs = graph_output_names(model)
    done: dict[int, tuple[onnx.GraphProto, set[str]]] = {}
    for site in walk(model):
        node = site.node
        inputs = [n for n in node.input if n]
        if node.op_type not in _FOLDABLE or node.domain not in ("", "ai.onnx") or not inputs:
            continue
        consts = [site.const(slot) for slot, n in enumerate(node.input) if n]
        if any(c is None for c in consts) or node.output[0] in outputs or len(node.output) != 1:
            continue
        try:
            values = _fold(site, [np.asarray(c.weight.array()) for c in consts if c is not None])
        except ValueError:
            continue
        add_initializer(site.graph, values, node.output[0])
        done.setdefault(site.graph_id, (site.graph, set()))[1].add(node.output[0])
    for graph, names in done.values():
        kept = [n for n in graph.node if not (len(n.output) == 1 and n.output[0] in names)]
        del graph.node[:]
        graph.node.extend(kept)
    if done:
        remove_unused_initializers(model)
    return sum(len(names) for _, names in done.values())


def _fold(site: Site, arrays: list[np.ndarray]) -> np.ndarray:
    node, data = site.node, arrays[0]
    op = node.op_type
    if op == "Identity":
        return data.copy()
    if op == "Flatten":
        axis = int(attr(node, "axis", 1)) % max(data.ndim, 1)  # type: ignore[call-overload]
        return data.reshape(int(np.prod(data.shape[:axis])), -1)
    if op == "Reshape":
        target = [int(v) for v in arrays[1].reshape(-1)]
        if not int(attr(node, "allowzero", 0)):  # type: ignore[call-overload]
            target = [data.shape[i] if v == 0 else v for i, v in enumerate(target)]
        return data.reshape(target)
    axes_attr = attr(node, "axes")
    if axes_attr is not None:
        axes = [int(a) for a in axes_attr]  # type: ignore[attr-defined]
    elif len(arrays) > 1:
        axes = [int(a) for a in arrays[1].reshape(-1)]
    else:
        axes = []
    if op == "Squeeze":
        return data.squeeze(tuple(a % data.ndim for a in axes) if axes else None)
    out_rank = data.ndim + len(axes)
    result = data
    for axis in sorted(a % out_rank for a in axes):
        result = np.expand_dims(result, axis)
    return result


# ---------------------------------------------------------------- shapes and MACs


def infer_shapes(
    model: Model, input_shapes: dict[str, tuple[int, ...]]
) -> tuple[Shapes, dict[str, list[int]]]:
    """Static shapes of every value, from ONNX shape inference on a copy with pinned inputs.

    Dynamic input dimensions take `input_shapes`, else 1 for the first (batch) dimension and
    the same defaults as random validation inputs for the others.
    """
    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    inits = {t.name for t in proto.graph.initializer}
    pinned: dict[str, list[int]] = {}
    named: dict[str, int] = {}
    for vi in proto.graph.input:
        if vi.name in inits or not vi.type.HasField("tensor_type"):
            continue
        tensor_type = vi.type.tensor_type
        if not tensor_type.HasField("shape"):
            continue
        dims = tensor_type.shape.dim
        given = input_shapes.get(vi.name)
        if given is not None and len(given) == len(dims):
            concrete = [int(d) for d in given]
        else:
            concrete = [_pinned_dim(d, i, len(dims), named) for i, d in enumerate(dims)]
        for d, value in zip(dims, concrete, strict=True):
            if d.dim_param and d.dim_param not in named:
                named[d.dim_param] = value
            d.Clear()
            d.dim_value = value
        pinned[vi.name] = concrete
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=False, data_prop=True)
    except Exception:  # noqa: BLE001 - shape inference is best effort; analysis blocks on gaps
        inferred = proto
    shapes: Shapes = {}
    for graph in iter_graphs(inferred.graph):
        for vi in (*graph.input, *graph.output, *graph.value_info):
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
                shapes[vi.name] = tuple(
                    d.dim_value if d.HasField("dim_value") else None
                    for d in vi.type.tensor_type.shape.dim
                )
        for tensor in graph.initializer:
            shapes[tensor.name] = tuple(int(d) for d in tensor.dims)
    return shapes, pinned


def _pinned_dim(dim: Any, index: int, rank: int, named: dict[str, int]) -> int:
    """A concrete size for one input dimension: fixed, shared by name, batch-like, or default."""
    if dim.dim_value > 0:
        return int(dim.dim_value)
    if dim.dim_param in named:
        return named[dim.dim_param]
    if index == 0 or dim.dim_param.lower() in BATCH_NAMES:
        return 1
    return DEFAULT_IMAGE_DIM if rank >= 4 else DEFAULT_DIM


def estimate_macs(model: Model, shapes: Shapes) -> tuple[int, int]:
    """Multiply-accumulates of Conv/ConvTranspose/Gemm/MatMul layers, and how many layers had
    shapes too dynamic to count (left out of the total)."""
    total = unknown = 0
    for site in iter_layer_sites(model):
        macs = _layer_macs(site, shapes)
        if macs is None:
            unknown += 1
        else:
            total += macs
    return total, unknown


def _layer_macs(site: Site, shapes: Shapes) -> int | None:
    node = site.node
    if len(node.input) < 2:
        return None
    weight = _static(shapes.get(node.input[1]))
    x, y = _static(shapes.get(node.input[0])), _static(shapes.get(node.output[0]))
    if node.op_type in ("Conv", "ConvTranspose"):
        if weight is None or (y if node.op_type == "Conv" else x) is None:
            return None
        return _count((y if node.op_type == "Conv" else x) or ()) * _count(weight[1:])
    if y is None:
        return None
    if node.op_type == "Gemm":
        trans_a, trans_b = (int(attr(node, k, 0)) for k in ("transA", "transB"))  # type: ignore[call-overload]
        k = weight[1 if trans_b else 0] if weight else (x[0 if trans_a else -1] if x else None)
    else:
        k = weight[0] if weight and len(weight) == 2 else (x[-1] if x else None)
    return None if k is None else _count(y) * k


def _static(dims: tuple[int | None, ...] | None) -> tuple[int, ...] | None:
    if dims is None or any(d is None for d in dims):
        return None
    return tuple(int(d) for d in dims if d is not None)


def _count(dims: tuple[int, ...]) -> int:
    return int(np.prod(dims, dtype=np.int64))
