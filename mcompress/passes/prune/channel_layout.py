"""What channel analysis records: how channels lie along an activation axis (`Layout`), the
coupled groups they form (`Analysis`), and the tensor, attribute and shape edits that pruning a
group implies."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper

from mcompress.weights import Initializer

Shapes = dict[str, tuple[int | None, ...]]


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


def product(dims: tuple[int | None, ...]) -> int | None:
    """The product of known dimensions, or None when any is unknown."""
    if any(d is None for d in dims):
        return None
    return int(np.prod([d for d in dims if d is not None], dtype=np.int64))


def who(node: onnx.NodeProto) -> str:
    """How a message names a node: its op type and name (or first output)."""
    return f"{node.op_type} '{node.name or node.output[0]}'"
