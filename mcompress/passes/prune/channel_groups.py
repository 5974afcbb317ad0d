"""Graph analysis for pruning: which initializer each node reads, and which channels are coupled.

Removing output channel c of a layer also removes input channel c of every consumer, entry c of
every per-channel constant the activation meets (bias, BatchNorm, SE scale), and channel c of
every other layer joined to it by a residual Add, an SE Mul or a depthwise Conv. `analyze` walks
each graph once, tracking how channels are laid out along one axis of every activation, and
returns the coupled channel groups with every tensor axis, `group` attribute and shape constant
that must change together - or the reason a group has to be left alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper

from mcompress.graph import node_excluded
from mcompress.model_io import Model, iter_graphs, names_used, subgraphs
from mcompress.weights import Initializer, Site, reader_counts, walk

Shapes = dict[str, tuple[int | None, ...]]


def graph_output_names(model: Model) -> set[str]:
    """Names of every graph's outputs, subgraphs included."""
    return {o.name for g in iter_graphs(model.proto.graph) for o in g.output}


# ---------------------------------------------------------------- layouts and edits


@dataclass(frozen=True)
class Segment:
    """`channels` consecutive channels of one group (None: never pruned), each `block` wide."""

    group: int | None
    channels: int
    block: int = 1


@dataclass(frozen=True)
class Layout:
    """How channels lie along one axis of an activation (`axis` is negative, from the end)."""

    segments: tuple[Segment, ...]
    axis: int
    rank: int | None

    @property
    def size(self) -> int:
        return sum(s.channels * s.block for s in self.segments)

    @property
    def position(self) -> int | None:
        """The axis counted from the front, when the rank is known."""
        return None if self.rank is None else self.rank + self.axis

    def moved(self, position: int, rank: int) -> Layout:
        return Layout(self.segments, position - rank, rank)

    def widened(self, factor: int) -> Layout:
        """Each channel now spans `factor` times more positions (after flattening)."""
        segments = tuple(Segment(s.group, s.channels, s.block * factor) for s in self.segments)
        return Layout(segments, -1, None)


@dataclass
class AxisEdit:
    """Slice axis `axis` of an initializer to the kept channels of `segments`.

    `importance`: the tensor produces these channels; its norms rank them. `reader`: the
    initializer is shared with other nodes, so this node gets its own sliced copy.
    """

    init: Initializer
    axis: int
    segments: tuple[Segment, ...]
    importance: bool = False
    reader: tuple[onnx.GraphProto, onnx.NodeProto, int] | None = None


@dataclass
class GroupAttrEdit:
    """A depthwise Conv whose `group` attribute becomes the number of kept channels."""

    node: onnx.NodeProto
    segments: tuple[Segment, ...]


@dataclass
class ShapeEdit:
    """Entry `index` of an integer shape constant becomes the kept size of `segments`."""

    init: Initializer
    index: int
    segments: tuple[Segment, ...]
    reader: tuple[onnx.GraphProto, onnx.NodeProto, int] | None = None


@dataclass
class Group:
    """A set of channels that must be pruned together."""

    id: int
    channels: int
    layers: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)


@dataclass
class Analysis:
    """Channel groups (by root id) and every edit that pruning them implies."""

    groups: dict[int, Group] = field(default_factory=dict)
    parent: dict[int, int] = field(default_factory=dict)
    axis_edits: list[AxisEdit] = field(default_factory=list)
    group_edits: list[GroupAttrEdit] = field(default_factory=list)
    shape_edits: list[ShapeEdit] = field(default_factory=list)

    def root(self, group: int) -> int:
        while self.parent[group] != group:
            self.parent[group] = self.parent[self.parent[group]]
            group = self.parent[group]
        return group

    def new_group(self, channels: int, layer: str) -> int:
        gid = len(self.parent)
        self.parent[gid] = gid
        self.groups[gid] = Group(gid, channels, [layer])
        return gid

    def union(self, a: int, b: int) -> None:
        ra, rb = self.root(a), self.root(b)
        if ra == rb:
            return
        self.parent[rb] = ra
        merged = self.groups.pop(rb)
        self.groups[ra].layers.extend(merged.layers)
        self.groups[ra].reasons.extend(merged.reasons)

    def block(self, layout: Layout, reason: str) -> None:
        for seg in layout.segments:
            if seg.group is not None:
                self.groups[self.root(seg.group)].reasons.append(reason)

    def free_groups(self) -> list[Group]:
        return [g for g in self.groups.values() if not g.reasons]

    def blocked_groups(self) -> list[Group]:
        return [g for g in self.groups.values() if g.reasons]


# ---------------------------------------------------------------- op tables

UNARY = {
    "Relu", "LeakyRelu", "PRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Clip", "Elu",
    "Selu", "Celu", "Gelu", "Softplus", "Softsign", "Mish", "Erf", "Exp", "Log", "Abs", "Neg",
    "Sqrt", "Reciprocal", "Floor", "Ceil", "Round", "Sign", "Identity", "Dropout", "Cast",
    "ThresholdedRelu", "Swish",
}  # fmt: skip
ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "Pow"}
SPATIAL = {
    "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "GlobalLpPool",
}  # fmt: skip
REDUCE = {
    "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
    "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare",
}  # fmt: skip
LAYERS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}


def attr(node: onnx.NodeProto, name: str, default: object = None) -> object:
    """A node attribute's value, or `default`."""
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


# ---------------------------------------------------------------- analysis


class _Walker:
    """One pass over the graphs, recording layouts, groups and edits."""

    def __init__(self, model: Model, shapes: Shapes, exclude: tuple[str, ...]) -> None:
        self.model = model
        self.shapes = shapes
        self.exclude = exclude
        self.sites = walk(model)
        self.readers = reader_counts(self.sites)
        self.outputs = graph_output_names(model)
        self.result = Analysis()
        self.layouts: dict[str, Layout] = {}
        self.consumers: dict[str, list[tuple[Site, int]]] = {}
        self.producers = {out: site for site in self.sites for out in site.node.output if out}
        for site in self.sites:
            for slot, name in enumerate(site.node.input):
                if name:
                    self.consumers.setdefault(name, []).append((site, slot))
        self.handlers: dict[str, Callable[[Site, dict[int, Layout]], None]] = {
            **dict.fromkeys(UNARY, self._unary),
            **dict.fromkeys(ELEMENTWISE, self._elementwise),
            **dict.fromkeys(SPATIAL, self._spatial),
            **dict.fromkeys(REDUCE, self._reduce),
            "BatchNormalization": self._norm,
            "InstanceNormalization": self._norm,
            "Flatten": self._flatten,
            "Reshape": self._reshape,
            "Squeeze": self._squeeze,
            "Unsqueeze": self._unsqueeze,
            "Transpose": self._transpose,
            "Concat": self._concat,
            "Slice": self._slice,
            "Split": self._split,
            "Gather": self._gather,
            "Pad": self._pad,
            "Resize": self._resize,
            "Upsample": self._resize,
            "Shape": self._shape,
            "Softmax": self._softmax,
            "LogSoftmax": self._softmax,
            "Hardmax": self._softmax,
        }

    # ------------------------------------------------------------ driver

    def run(self) -> Analysis:
        for site in self.sites:
            self._visit(site)
        for name in self.outputs:
            if name in self.layouts:
                self.result.block(self.layouts[name], f"reaches the model output '{name}'")
        return self.result

    def _visit(self, site: Site) -> None:
        node = site.node
        tracked = {s: self.layouts[n] for s, n in enumerate(node.input) if n in self.layouts}
        for sub in subgraphs(node):
            for name in names_used(sub):
                if name in self.layouts:
                    self.result.block(
                        self.layouts[name], f"is read inside a subgraph of {_who(node)}"
                    )
        excluded = node_excluded(node, self.exclude)
        if excluded:
            for layout in tracked.values():
                self.result.block(layout, f"reaches excluded {_who(node)}")
        if node.op_type in LAYERS and node.domain in ("", "ai.onnx"):
            self._layer(site, tracked, excluded)
            return
        if not tracked or excluded:
            return
        handler = self.handlers.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        if handler is None:
            self._block_all(tracked, f"feeds {_who(node)}, which channel pruning cannot follow")
            return
        handler(site, tracked)

    def _block_all(self, tracked: dict[int, Layout], reason: str) -> None:
        for layout in tracked.values():
            self.result.block(layout, reason)

    def _set(self, name: str, layout: Layout) -> None:
        if name:
            self.layouts[name] = layout

    def _shape(self, site: Site, tracked: dict[int, Layout]) -> None:
        """`Shape` of a pruned tensor is fine when only dimensions other than channels are used."""
        layout = tracked[0]
        node = site.node
        pos = layout.position
        rank = layout.rank
        if pos is None or rank is None:
            self.result.block(layout, f"its shape is read by {_who(node)}")
            return
        start = int(attr(node, "start", 0))  # type: ignore[call-overload]
        end = int(attr(node, "end", rank))  # type: ignore[call-overload]
        start, end = (max(0, min(rank, v + rank if v < 0 else v)) for v in (start, end))
        if not start <= pos < end:
            return
        if not self._shape_use_safe(node.output[0], pos - start, end - start):
            self.result.block(layout, f"its channel count is read by {_who(node)}")

    def _shape_use_safe(self, name: str, index: int, length: int) -> bool:
        """Every use of a shape vector picks entries other than `index` (via Slice or Gather)."""
        for site, slot in self.consumers.get(name, []):
            node = site.node
            if node.op_type in ("Cast", "Identity") and slot == 0:
                if not self._shape_use_safe(node.output[0], index, length):
                    return False
            elif node.op_type == "Slice" and slot == 0:
                picked = self._sliced_indices(site, length)
                if picked is None or index in picked:
                    return False
            elif node.op_type == "Gather" and slot == 0 and int(attr(node, "axis", 0)) == 0:  # type: ignore[call-overload]
                values = self._int_values(site, 1)
                if values is None or index in {v % length for v in values}:
                    return False
            else:
                return False
        return True

    def _sliced_indices(self, site: Site, length: int) -> set[int] | None:
        """Entries of a 1-D vector that a Slice keeps, when its parameters are constants."""
        params = self._slice_params(site)
        if params is None or params[2] not in ([0], [-1]):
            return None
        starts, ends, _, steps = params
        return set(range(length)[slice(starts[0], ends[0], steps[0])])

    def _slice_params(
        self, site: Site
    ) -> tuple[list[int], list[int], list[int] | None, list[int]] | None:
        """(starts, ends, axes or None for the default, steps) of a Slice, when constant."""
        node = site.node
        if attr(node, "starts") is not None:
            starts = [int(v) for v in attr(node, "starts")]  # type: ignore[attr-defined]
            ends = [int(v) for v in attr(node, "ends", [])]  # type: ignore[attr-defined]
            axes_attr = attr(node, "axes")
            axes = [int(v) for v in axes_attr] if axes_attr is not None else None  # type: ignore[attr-defined]
            return starts, ends, axes, [1] * len(starts)
        starts_in, ends_in = self._int_values(site, 1), self._int_values(site, 2)
        axes_in = self._optional_ints(site, 3)
        steps_in = self._optional_ints(site, 4)
        if starts_in is None or ends_in is None or axes_in is False or steps_in is False:
            return None
        steps = steps_in if isinstance(steps_in, list) else [1] * len(starts_in)
        return starts_in, ends_in, axes_in if isinstance(axes_in, list) else None, steps

    def _optional_ints(self, site: Site, slot: int) -> list[int] | None | bool:
        """An optional integer input: its values, None when absent, False when computed."""
        if slot >= len(site.node.input) or not site.node.input[slot]:
            return None
        values = self._int_values(site, slot)
        return False if values is None else values

    # ------------------------------------------------------------ helpers

    def _int_values(self, site: Site, slot: int) -> list[int] | None:
        init = site.const(slot)
        if init is None:
            return None
        values = np.asarray(init.weight.array())
        if values.dtype.kind not in "iu":
            return None
        return [int(v) for v in values.reshape(-1)]

    def _axes(self, site: Site, slot: int) -> list[int] | None:
        """Axes from the `axes` attribute (old opsets) or input `slot` (new opsets)."""
        value = attr(site.node, "axes")
        if value is not None:
            return [int(v) for v in value]  # type: ignore[attr-defined]
        if slot < len(site.node.input) and site.node.input[slot]:
            return self._int_values(site, slot)
        return []

    def _exclusive(self, init: Initializer) -> bool:
        return self.readers[init.key] == 1

    def _shape_of(self, name: str) -> tuple[int | None, ...] | None:
        return self.shapes.get(name)

    def _per_channel(self, site: Site, slot: int, layout: Layout) -> bool:
        """A constant operand: broadcast (fine), per-channel (sliced with the group) or not."""
        init = site.const(slot)
        if init is None:
            return False
        shape = init.weight.shape
        axis = len(shape) + layout.axis
        if axis < 0 or shape[axis] == 1:
            return True
        if shape[axis] != layout.size:
            return False
        reader = None if self._exclusive(init) else (site.graph, site.node, slot)
        self.result.axis_edits.append(AxisEdit(init, axis, layout.segments, reader=reader))
        return True

    def _broadcast_only(self, name: str, layout: Layout) -> bool:
        """A computed operand whose shape is 1 (or absent) along the channel axis."""
        shape = self._shape_of(name)
        if shape is None:
            return False
        axis = len(shape) + layout.axis
        return axis < 0 or shape[axis] == 1

    def _unify(self, layouts: list[Layout], reason: str) -> Layout | None:
        """Join layouts that meet elementwise: same structure, and their groups merge."""
        base = layouts[0]
        for other in layouts[1:]:
            same = other.axis == base.axis and len(other.segments) == len(base.segments)
            same = same and all(
                (a.channels, a.block, a.group is None) == (b.channels, b.block, b.group is None)
                for a, b in zip(base.segments, other.segments, strict=False)
            )
            if not same:
                for layout in layouts:
                    self.result.block(layout, reason)
                return None
        for other in layouts[1:]:
            for a, b in zip(base.segments, other.segments, strict=True):
                if a.group is not None and b.group is not None:
                    self.result.union(a.group, b.group)
        ranks = [lay.rank for lay in layouts]
        rank = None if None in ranks else max(r for r in ranks if r is not None)
        return Layout(base.segments, base.axis, rank)

    # ------------------------------------------------------------ layers

    def _layer(self, site: Site, tracked: dict[int, Layout], excluded: bool) -> None:
        node = site.node
        for slot, layout in tracked.items():
            if slot != 0:
                self.result.block(layout, f"is a weight or bias input of {_who(node)}")
        x_layout = tracked.get(0)
        weight = site.const(1)
        usable = weight is not None and weight.weight.tensor.data_type in _FLOATS
        if weight is None or not usable or not self._exclusive(weight):
            if x_layout is not None:
                self.result.block(
                    x_layout, f"feeds {_who(node)}, whose weight is not a constant of its own"
                )
            return
        spec = _layer_spec(node, weight.weight.shape, self._shape_of(node.input[0]))
        if isinstance(spec, str):
            if x_layout is not None:
                self.result.block(x_layout, f"feeds {_who(node)} ({spec})")
            return
        if spec.depthwise:
            if x_layout is not None and not excluded:
                self._depthwise(site, weight, x_layout, spec)
            return
        if x_layout is not None and not excluded:
            self._consume(site, weight, x_layout, spec)
        if excluded:
            return
        self._produce(site, weight, spec)

    def _consume(self, site: Site, weight: Initializer, layout: Layout, spec: _LayerSpec) -> None:
        node = site.node
        if layout.axis != spec.act_axis:
            self.result.block(layout, f"enters {_who(node)} on another axis than its channels")
            return
        if layout.size != weight.weight.shape[spec.in_axis]:
            self.result.block(layout, f"does not match the input channels of {_who(node)}")
            return
        self.result.axis_edits.append(AxisEdit(weight, spec.in_axis, layout.segments))

    def _produce(self, site: Site, weight: Initializer, spec: _LayerSpec) -> None:
        node = site.node
        channels = weight.weight.shape[spec.out_axis]
        bias_edit = self._bias_edit(site, channels)
        if bias_edit is False:
            return
        gid = self.result.new_group(channels, node.name or node.output[0])
        segments = (Segment(gid, channels),)
        self.result.axis_edits.append(AxisEdit(weight, spec.out_axis, segments, importance=True))
        if isinstance(bias_edit, tuple):
            init, axis = bias_edit
            self.result.axis_edits.append(AxisEdit(init, axis, segments))
        self._set(node.output[0], Layout(segments, spec.act_axis, spec.rank))

    def _bias_edit(self, site: Site, channels: int) -> tuple[Initializer, int] | bool:
        """(bias, axis) to slice with the output channels; True: no bias; False: cannot prune."""
        slot = 2
        if len(site.node.input) <= slot or not site.node.input[slot]:
            return True
        bias = site.const(slot)
        if bias is None or not self._exclusive(bias):
            return False
        shape = bias.weight.shape
        if int(np.prod(shape, dtype=np.int64)) == 1 and channels != 1:
            return True
        if not shape or shape[-1] != channels or any(d != 1 for d in shape[:-1]):
            return False
        return bias, len(shape) - 1

    def _depthwise(self, site: Site, weight: Initializer, layout: Layout, spec: _LayerSpec) -> None:
        node = site.node
        if layout.axis != spec.act_axis or any(s.block != 1 for s in layout.segments):
            self.result.block(layout, f"enters depthwise {_who(node)} on another axis")
            return
        if layout.size != weight.weight.shape[0]:
            self.result.block(layout, f"does not match the channels of {_who(node)}")
            return
        bias_edit = self._bias_edit(site, layout.size)
        if bias_edit is False:
            self.result.block(layout, f"the bias of depthwise {_who(node)} is shared")
            return
        self.result.axis_edits.append(AxisEdit(weight, 0, layout.segments, importance=True))
        if isinstance(bias_edit, tuple):
            self.result.axis_edits.append(AxisEdit(bias_edit[0], 0, layout.segments))
        self.result.group_edits.append(GroupAttrEdit(node, layout.segments))
        for seg in layout.segments:
            if seg.group is not None:
                self.result.groups[self.result.root(seg.group)].layers.append(
                    node.name or node.output[0]
                )
        self._set(node.output[0], Layout(layout.segments, spec.act_axis, spec.rank))

    # ------------------------------------------------------------ pass-through ops

    def _unary(self, site: Site, tracked: dict[int, Layout]) -> None:
        node = site.node
        if 0 not in tracked or len(tracked) > 1:
            if node.op_type == "PRelu":
                self._elementwise(site, tracked)
                return
            self._block_all(tracked, f"is a parameter of {_who(node)}")
            return
        if node.op_type == "PRelu" and not self._per_channel(site, 1, tracked[0]):
            self.result.block(tracked[0], f"the slope of {_who(node)} does not match")
            return
        self._set(node.output[0], tracked[0])

    def _elementwise(self, site: Site, tracked: dict[int, Layout]) -> None:
        node = site.node
        layout = self._unify(list(tracked.values()), f"meets other channels in {_who(node)}")
        if layout is None:
            return
        for slot, name in enumerate(node.input):
            if not name or slot in tracked:
                continue
            if site.const(slot) is not None:
                ok = self._per_channel(site, slot, layout)
            else:
                ok = self._broadcast_only(name, layout)
            if not ok:
                self.result.block(layout, f"meets a tensor of unknown channels in {_who(node)}")
                return
        self._set(node.output[0], layout)

    def _spatial(self, site: Site, tracked: dict[int, Layout]) -> None:
        layout = tracked[0]
        if layout.position != 1 or len(tracked) > 1:
            self.result.block(layout, f"enters {_who(site.node)} on another axis")
            return
        self._set(site.node.output[0], layout)

    def _norm(self, site: Site, tracked: dict[int, Layout]) -> None:
        node = site.node
        layout = tracked[0]
        last = 5 if node.op_type == "BatchNormalization" else 3
        if layout.position != 1 or len(tracked) > 1:
            self.result.block(layout, f"enters {_who(node)} on another axis")
            return
        for slot in range(1, last):
            init = site.const(slot)
            if init is None or init.weight.shape != (layout.size,):
                self.result.block(layout, f"the parameters of {_who(node)} are not constants")
                return
        for slot in range(1, last):
            self._per_channel(site, slot, Layout(layout.segments, -1, 1))
        self._set(node.output[0], layout)

    def _reduce(self, site: Site, tracked: dict[int, Layout]) -> None:
        node = site.node
        layout = tracked[0]
        axes = self._axes(site, 1)
        rank = layout.rank
        if axes is None or rank is None or len(tracked) > 1:
            self.result.block(layout, f"enters {_who(node)} with unknown axes")
            return
        axes = sorted(a % rank for a in axes)
        pos = rank + layout.axis
        if not axes and int(attr(node, "noop_with_empty_axes", 0)):  # type: ignore[call-overload]
            self._set(node.output[0], layout)
            return
        if not axes or pos in axes:
            return
        if int(attr(node, "keepdims", 1)):  # type: ignore[call-overload]
            self._set(node.output[0], layout)
            return
        new_pos = pos - sum(1 for a in axes if a < pos)
        self._set(node.output[0], layout.moved(new_pos, rank - len(axes)))

    def _softmax(self, site: Site, tracked: dict[int, Layout]) -> None:
        node = site.node
        layout = tracked[0]
        old_style = self._opset() < 13  # before opset 13: normalises over all axes >= axis
        axis = int(attr(node, "axis", 1 if old_style else -1))  # type: ignore[call-overload]
        pos = layout.position
        if pos is None or layout.rank is None:
            self.result.block(layout, f"enters {_who(node)} with unknown rank")
            return
        axis %= layout.rank
        if pos == axis or (old_style and pos > axis):
            self.result.block(layout, f"is normalised across channels by {_who(node)}")
            return
        self._set(node.output[0], layout)

    def _opset(self) -> int:
        return self.model.opset("")

    def _flatten(self, site: Site, tracked: dict[int, Layout]) -> None:
        node = site.node
        layout = tracked[0]
        shape = self._shape_of(node.input[0])
        pos = layout.position
        if shape is None or pos is None:
            self.result.block(layout, f"enters {_who(node)} with unknown shape")
            return
        axis = int(attr(node, "axis", 1)) % max(len(shape), 1)  # type: ignore[call-overload]
        merged = _product(shape[axis:pos])
        tail = _product(shape[pos + 1 :])
        if axis > pos or merged != 1 or tail is None:
            self.result.block(layout, f"is flattened with other dimensions by {_who(node)}")
            return
        self._set(node.output[0], layout.widened(tail).moved(1, 2))

    def _reshape(self, site: Site, tracked: dict[int, Layout]) -> None:
        node = site.node
        layout = tracked[0]
        src, dst = self._shape_of(node.input[0]), self._reshaped(site)
        pos = layout.position
        if 1 in tracked or src is None or dst is None or pos is None:
            self._block_all(tracked, f"enters {_who(node)} with unknown shapes")
            return
        tail = _product(src[pos + 1 :])
        keeps_prefix = len(dst) > pos and tuple(dst[:pos]) == tuple(src[:pos])
        if (
            keeps_prefix
            and tail is not None
            and len(dst) == pos + 1
            and dst[pos] == layout.size * tail
        ):
            after = Layout(layout.widened(tail).segments, -1, pos + 1)
        elif keeps_prefix and dst[pos] == layout.size and _product(dst[pos + 1 :]) is not None:
            after = layout.moved(pos, len(dst))
        else:
            self.result.block(layout, f"is reshaped across channels by {_who(node)}")
            return
        target = self._shape_target(site, pos)
        if target is None:
            self.result.block(layout, f"the target shape of {_who(node)} is computed at runtime")
            return
        if isinstance(target, tuple):
            init, index, reader = target
            self.result.shape_edits.append(ShapeEdit(init, index, after.segments, reader))
        self._set(node.output[0], after)

    def _reshaped(self, site: Site) -> tuple[int | None, ...] | None:
        """A Reshape's output shape: from shape inference, else by evaluating its target."""
        node = site.node
        known = self._shape_of(node.output[0])
        src = self._shape_of(node.input[0])
        target = self._eval_ints(site, 1, 8) if known is None and src is not None else None
        if known is not None or target is None or src is None:
            return known
        copy_zero = not int(attr(node, "allowzero", 0))  # type: ignore[call-overload]
        dims = [
            src[i] if copy_zero and v == 0 and i < len(src) else v for i, v in enumerate(target)
        ]
        total = _product(src)
        rest = _product(tuple(d for d in dims if d != -1))
        if dims.count(-1) == 1:
            fill = total // rest if total is not None and rest else None
            dims = [fill if d == -1 else d for d in dims]
        return tuple(dims)

    def _eval_ints(self, site: Site, slot: int, depth: int) -> list[int | None] | None:
        """Values of a small integer vector computed from constants and known shapes."""
        values = self._int_values(site, slot)
        if values is not None or depth == 0:
            return list(values) if values is not None else None
        producer = self.producers.get(site.node.input[slot])
        if producer is None:
            return None
        node = producer.node
        if node.op_type in ("Cast", "Identity", "Squeeze", "Unsqueeze"):
            return self._eval_ints(producer, 0, depth - 1)
        if node.op_type == "Concat":
            parts = [self._eval_ints(producer, i, depth - 1) for i in range(len(node.input))]
            if any(p is None for p in parts):
                return None
            return [v for p in parts if p is not None for v in p]
        if node.op_type == "Shape":
            shape = self._shape_of(node.input[0])
            if shape is None:
                return None
            start = int(attr(node, "start", 0))  # type: ignore[call-overload]
            end = attr(node, "end")
            return list(shape[start : None if end is None else int(end)])  # type: ignore[call-overload]
        data = (
            self._eval_ints(producer, 0, depth - 1) if node.op_type in ("Slice", "Gather") else None
        )
        if data is None:
            return None
        if node.op_type == "Gather":
            picks = self._int_values(producer, 1)
            return None if picks is None else [data[i] for i in picks]
        params = self._slice_params(producer)
        if params is None or params[2] not in (None, [0], [-1]):
            return None
        return data[slice(params[0][0], params[1][0], params[3][0])]

    def _shape_target(
        self, site: Site, index: int
    ) -> tuple[Initializer, int, tuple[onnx.GraphProto, onnx.NodeProto, int] | None] | bool | None:
        """Where entry `index` of a Reshape target is stored; True when it needs no change."""
        name = site.node.input[1]
        hop: tuple[Site, int] = (site, 1)
        for _ in range(8):
            at, slot = hop
            init = at.const(slot)
            if init is not None:
                values = np.asarray(init.weight.array()).reshape(-1)
                if index >= values.size:
                    return None
                if int(values[index]) in (-1, 0):
                    return True
                reader = None if self._exclusive(init) else (at.graph, at.node, slot)
                return init, index, reader
            producer = self.producers.get(name)
            if producer is None:
                return None
            node = producer.node
            if node.op_type in ("Cast", "Identity"):
                hop, name = (producer, 0), node.input[0]
                continue
            if node.op_type != "Concat":
                return None
            offset = 0
            for piece_slot, piece in enumerate(node.input):
                piece_init = producer.const(piece_slot)
                piece_shape = piece_init.weight.shape if piece_init else self._shape_of(piece)
                if piece_shape is None or len(piece_shape) != 1 or piece_shape[0] is None:
                    return None
                if offset <= index < offset + piece_shape[0]:
                    hop, name, index = (producer, piece_slot), piece, index - offset
                    break
                offset += piece_shape[0]
            else:
                return None
        return None

    def _squeeze(self, site: Site, tracked: dict[int, Layout]) -> None:
        node = site.node
        layout = tracked[0]
        rank, pos = layout.rank, layout.position
        axes = self._axes(site, 1)
        shape = self._shape_of(node.input[0])
        if rank is None or pos is None or axes is None or len(tracked) > 1:
            self._block_all(tracked, f"enters {_who(node)} with unknown axes")
            return
        if not axes:
            if shape is None:
                self.result.block(layout, f"enters {_who(node)} with unknown shape")
                return
            axes = [i for i, d in enumerate(shape) if d == 1]
        axes = [a % rank for a in axes]
        if pos in axes:
            self.result.block(layout, f"its channel axis is squeezed by {_who(node)}")
            return
        new_pos = pos - sum(1 for a in axes if a < pos)
        self._set(node.output[0], layout.moved(new_pos, rank - len(axes)))

    def _unsqueeze(self, site: Site, tracked: dict[int, Layout]) -> None:
        node = site.node
        layout = tracked[0]
        rank, pos = layout.rank, layout.position
        axes = self._axes(site, 1)
        if rank is None or pos is None or not axes or len(tracked) > 1:
            self._block_all(tracked, f"enters {_who(node)} with unknown axes")
            return
        out_rank = rank + len(axes)
        inserted = {a % out_rank for a in axes}
        kept = [i for i in range(out_rank) if i not in inserted]
        self._set(node.output[0], layout.moved(kept[pos], out_rank))

    def _transpose(self, site: Site, tracked: dict[int, Layout]) -> None:
        node = site.node
        layout = tracked[0]
        rank, pos = layout.rank, layout.position
        if rank is None or pos is None:
            self.result.block(layout, f"enters {_who(node)} with unknown rank")
            return
        perm = attr(node, "perm")
        order = [int(p) for p in perm] if perm is not None else list(range(rank))[::-1]  # type: ignore[attr-defined]
        self._set(node.output[0], layout.moved(order.index(pos), rank))

    def _concat(self, site: Site, tracked: dict[int, Layout]) -> None:
        node = site.node
        first = next(iter(tracked.values()))
        rank = first.rank
        if rank is None or any(lay.rank != rank for lay in tracked.values()):
            self._block_all(tracked, f"enters {_who(node)} with unknown rank")
            return
        axis = int(attr(node, "axis", 0)) % rank  # type: ignore[call-overload]
        if any(lay.position != axis for lay in tracked.values()):
            if len(tracked) == len([n for n in node.input if n]):
                self._elementwise_same(site, tracked)
            else:
                self._block_all(tracked, f"is concatenated with other tensors by {_who(node)}")
            return
        segments: list[Segment] = []
        for slot, name in enumerate(node.input):
            if slot in tracked:
                segments.extend(tracked[slot].segments)
                continue
            shape = self._shape_of(name)
            size = shape[axis] if shape is not None and len(shape) == rank else None
            if size is None:
                self._block_all(
                    tracked, f"is concatenated with a tensor of unknown size by {_who(node)}"
                )
                return
            segments.append(Segment(None, size))
        self._set(node.output[0], Layout(tuple(segments), axis - rank, rank))

    def _elementwise_same(self, site: Site, tracked: dict[int, Layout]) -> None:
        layout = self._unify(list(tracked.values()), f"meets other channels in {_who(site.node)}")
        if layout is not None:
            self._set(site.node.output[0], layout)

    def _slice(self, site: Site, tracked: dict[int, Layout]) -> None:
        node = site.node
        layout = tracked[0]
        rank, pos = layout.rank, layout.position
        params = self._slice_params(site)
        if rank is None or pos is None or params is None or len(tracked) > 1:
            self._block_all(tracked, f"enters {_who(node)} with unknown axes")
            return
        starts, _, axes_given, _ = params
        axes = [a % rank for a in axes_given] if axes_given else list(range(len(starts)))
        if pos in axes:
            self.result.block(layout, f"is sliced along channels by {_who(node)}")
            return
        self._set(node.output[0], layout)

    def _split(self, site: Site, tracked: dict[int, Layout]) -> None:
        node = site.node
        layout = tracked[0]
        rank, pos = layout.rank, layout.position
        axis = int(attr(node, "axis", 0))  # type: ignore[call-overload]
        if rank is None or pos is None or axis % rank == pos or len(tracked) > 1:
            self._block_all(tracked, f"is split along channels by {_who(node)}")
            return
        for out in node.output:
            self._set(out, layout)

    def _gather(self, site: Site, tracked: dict[int, Layout]) -> None:
        node = site.node
        layout = tracked[0]
        rank, pos = layout.rank, layout.position
        axis = int(attr(node, "axis", 0))  # type: ignore[call-overload]
        init = site.const(1)
        indices = init.weight.shape if init is not None else self._shape_of(node.input[1])
        if rank is None or pos is None or indices is None or len(tracked) > 1:
            self._block_all(tracked, f"enters {_who(node)} with unknown shapes")
            return
        axis %= rank
        if axis == pos:
            self.result.block(layout, f"is indexed along channels by {_who(node)}")
            return
        new_pos = pos if axis > pos else pos - 1 + len(indices)
        self._set(node.output[0], layout.moved(new_pos, rank - 1 + len(indices)))

    def _pad(self, site: Site, tracked: dict[int, Layout]) -> None:
        node = site.node
        layout = tracked[0]
        rank, pos = layout.rank, layout.position
        pads = self._int_values(site, 1) if len(node.input) > 1 else attr(node, "pads")
        axes = self._int_values(site, 3) if len(node.input) > 3 and node.input[3] else None
        if rank is None or pos is None or pads is None or len(tracked) > 1:
            self._block_all(tracked, f"enters {_who(node)} with unknown pads")
            return
        axes = [a % rank for a in axes] if axes is not None else list(range(rank))
        pads = list(pads)  # type: ignore[call-overload]
        n = len(axes)
        if pos in axes and (pads[axes.index(pos)] or pads[axes.index(pos) + n]):
            self.result.block(layout, f"is padded along channels by {_who(node)}")
            return
        self._set(node.output[0], layout)

    def _resize(self, site: Site, tracked: dict[int, Layout]) -> None:
        node = site.node
        layout = tracked[0]
        pos = layout.position
        slot = 1 if node.op_type == "Upsample" or self._opset() < 11 else 2
        scales = site.const(slot)
        sizes = len(node.input) > 3 and bool(node.input[3])
        if pos is None or scales is None or sizes or len(tracked) > 1:
            self._block_all(tracked, f"enters {_who(node)} with sizes or unknown scales")
            return
        values = np.asarray(scales.weight.array()).reshape(-1)
        if pos >= values.size or values[pos] != 1:
            self.result.block(layout, f"is resized along channels by {_who(node)}")
            return
        self._set(node.output[0], layout)


_FLOATS = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}


@dataclass(frozen=True)
class _LayerSpec:
    """Which weight axes are a layer's input and output channels; the activations' channel axis."""

    in_axis: int
    out_axis: int
    act_axis: int
    rank: int | None
    depthwise: bool = False


def _layer_spec(
    node: onnx.NodeProto, wshape: tuple[int, ...], xshape: tuple[int | None, ...] | None
) -> _LayerSpec | str:
    """How a Conv/ConvTranspose/Gemm/MatMul maps channels, or why it cannot be pruned."""
    op = node.op_type
    if op in ("Conv", "ConvTranspose"):
        group = int(attr(node, "group", 1))  # type: ignore[call-overload]
        rank = len(wshape)
        if rank < 3:
            return "unexpected weight rank"
        if op == "Conv" and group > 1 and wshape[1] == 1 and wshape[0] == group:
            return _LayerSpec(1, 0, 1 - rank, rank, depthwise=True)
        if group != 1:
            return f"grouped convolution, group={group}"
        if op == "ConvTranspose":
            return _LayerSpec(0, 1, 1 - rank, rank)
        return _LayerSpec(1, 0, 1 - rank, rank)
    if len(wshape) != 2:
        return "weight is not a matrix"
    if op == "Gemm":
        if int(attr(node, "transA", 0)):  # type: ignore[call-overload]
            return "transposed input"
        trans_b = int(attr(node, "transB", 0))  # type: ignore[call-overload]
        return _LayerSpec(1, 0, -1, 2) if trans_b else _LayerSpec(0, 1, -1, 2)
    return _LayerSpec(0, 1, -1, len(xshape) if xshape is not None else None)


def _product(dims: tuple[int | None, ...]) -> int | None:
    if any(d is None for d in dims):
        return None
    return int(np.prod([d for d in dims if d is not None], dtype=np.int64))


def _who(node: onnx.NodeProto) -> str:
    return f"{node.op_type} '{node.name or node.output[0]}'"


def analyze(model: Model, shapes: Shapes, exclude: tuple[str, ...] = ()) -> Analysis:
    """Find channel groups of every Conv/ConvTranspose/Gemm/MatMul output in all graphs."""
    return _Walker(model, shapes, exclude).run()


def iter_layer_sites(model: Model) -> Iterator[Site]:
    """Nodes of prunable layer types (used for MAC estimates)."""
    for site in walk(model):
        if site.node.op_type in LAYERS:
            yield site
