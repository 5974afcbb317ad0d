"""Channel analysis for structured pruning: which channels are coupled across layers.

Removing output channel c of a layer also removes input channel c of every consumer, entry c of
every per-channel constant the activation meets (bias, BatchNorm, SE scale), and channel c of
every other layer joined to it by a residual Add, an SE Mul or a depthwise Conv. `analyze` walks
each graph once, tracking how channels are laid out along one axis of every activation, and
returns the coupled channel groups with every tensor axis, `group` attribute and shape constant
that must change together - or the reason a group has to be left alone. The records live in
`channel_layout`, the walk's shared state in `channel_state`, shape-changing ops in
`channel_shapes`; layers and pass-through ops are handled here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import onnx

from mcompress.graph import names_used, node_excluded, subgraphs
from mcompress.model_io import Model
from mcompress.passes.prune.channel_layout import (
    ELEMENTWISE,
    LAYERS,
    REDUCE,
    SPATIAL,
    UNARY,
    Analysis,
    AxisEdit,
    GroupAttrEdit,
    Layout,
    Segment,
    Shapes,
    attr,
    who,
)
from mcompress.passes.prune.channel_shapes import ShapeOps
from mcompress.weights import Initializer, Site, walk


class _Walker(ShapeOps):
    """One pass over the graphs, recording layouts, groups and edits."""

    def __init__(self, model: Model, shapes: Shapes, exclude: tuple[str, ...]) -> None:
        super().__init__(model, shapes, exclude)
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
                        self.layouts[name], f"is read inside a subgraph of {who(node)}"
                    )
        excluded = node_excluded(node, self.exclude)
        if excluded:
            for layout in tracked.values():
                self.result.block(layout, f"reaches excluded {who(node)}")
        if node.op_type in LAYERS and node.domain in ("", "ai.onnx"):
            self._layer(site, tracked, excluded)
            return
        if not tracked or excluded:
            return
        handler = self.handlers.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        if handler is None:
            self._block_all(tracked, f"feeds {who(node)}, which channel pruning cannot follow")
            return
        handler(site, tracked)

    def _layer(self, site: Site, tracked: dict[int, Layout], excluded: bool) -> None:
        node = site.node
        for slot, layout in tracked.items():
            if slot != 0:
                self.result.block(layout, f"is a weight or bias input of {who(node)}")
        x_layout = tracked.get(0)
        weight = site.const(1)
        usable = weight is not None and weight.weight.tensor.data_type in _FLOATS
        if weight is None or not usable or not self._exclusive(weight):
            if x_layout is not None:
                self.result.block(
                    x_layout, f"feeds {who(node)}, whose weight is not a constant of its own"
                )
            return
        spec = _layer_spec(node, weight.weight.shape, self._shape_of(node.input[0]))
        if isinstance(spec, str):
            if x_layout is not None:
                self.result.block(x_layout, f"feeds {who(node)} ({spec})")
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
            self.result.block(layout, f"enters {who(node)} on another axis than its channels")
            return
        if layout.size != weight.weight.shape[spec.in_axis]:
            self.result.block(layout, f"does not match the input channels of {who(node)}")
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
            self.result.block(layout, f"enters depthwise {who(node)} on another axis")
            return
        if layout.size != weight.weight.shape[0]:
            self.result.block(layout, f"does not match the channels of {who(node)}")
            return
        bias_edit = self._bias_edit(site, layout.size)
        if bias_edit is False:
            self.result.block(layout, f"the bias of depthwise {who(node)} is shared")
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

    def _unary(self, site: Site, tracked: dict[int, Layout]) -> None:
        node = site.node
        if 0 not in tracked or len(tracked) > 1:
            if node.op_type == "PRelu":
                self._elementwise(site, tracked)
                return
            self._block_all(tracked, f"is a parameter of {who(node)}")
            return
        if node.op_type == "PRelu" and not self._per_channel(site, 1, tracked[0]):
            self.result.block(tracked[0], f"the slope of {who(node)} does not match")
            return
        self._set(node.output[0], tracked[0])

    def _elementwise(self, site: Site, tracked: dict[int, Layout]) -> None:
        node = site.node
        layout = self._unify(list(tracked.values()), f"meets other channels in {who(node)}")
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
                self.result.block(layout, f"meets a tensor of unknown channels in {who(node)}")
                return
        self._set(node.output[0], layout)

    def _spatial(self, site: Site, tracked: dict[int, Layout]) -> None:
        layout = tracked[0]
        if layout.position != 1 or len(tracked) > 1:
            self.result.block(layout, f"enters {who(site.node)} on another axis")
            return
        self._set(site.node.output[0], layout)

    def _norm(self, site: Site, tracked: dict[int, Layout]) -> None:
        node = site.node
        layout = tracked[0]
        last = 5 if node.op_type == "BatchNormalization" else 3
        if layout.position != 1 or len(tracked) > 1:
            self.result.block(layout, f"enters {who(node)} on another axis")
            return
        for slot in range(1, last):
            init = site.const(slot)
            if init is None or init.weight.shape != (layout.size,):
                self.result.block(layout, f"the parameters of {who(node)} are not constants")
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
            self.result.block(layout, f"enters {who(node)} with unknown axes")
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
            self.result.block(layout, f"enters {who(node)} with unknown rank")
            return
        axis %= layout.rank
        if pos == axis or (old_style and pos > axis):
            self.result.block(layout, f"is normalised across channels by {who(node)}")
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


def analyze(model: Model, shapes: Shapes, exclude: tuple[str, ...] = ()) -> Analysis:
    """Find channel groups of every Conv/ConvTranspose/Gemm/MatMul output in all graphs."""
    return _Walker(model, shapes, exclude).run()


def iter_layer_sites(model: Model) -> Iterator[Site]:
    """Nodes of prunable layer types (used for MAC estimates)."""
    for site in walk(model):
        if site.node.op_type in LAYERS:
            yield site
