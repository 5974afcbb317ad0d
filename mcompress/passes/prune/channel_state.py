"""The state of one channel-analysis walk and the helpers every op handler shares: tracked
layouts, constant integer inputs, per-channel constants, and joining layouts that meet."""

from __future__ import annotations

import numpy as np

from mcompress.graph import iter_graphs
from mcompress.model_io import Model
from mcompress.passes.prune.channel_layout import (
    Analysis,
    AxisEdit,
    Layout,
    Shapes,
    attr,
)
from mcompress.weights import Initializer, Site, reader_counts, walk


class WalkState:
    """Layouts of the activations seen so far, who produces and reads each name, and the result."""

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

    def _block_all(self, tracked: dict[int, Layout], reason: str) -> None:
        for layout in tracked.values():
            self.result.block(layout, reason)

    def _set(self, name: str, layout: Layout) -> None:
        if name:
            self.layouts[name] = layout

    def _int_values(self, site: Site, slot: int) -> list[int] | None:
        init = site.const(slot)
        if init is None:
            return None
        values = np.asarray(init.weight.array())
        if values.dtype.kind not in "iu":
            return None
        return [int(v) for v in values.reshape(-1)]

    def _optional_ints(self, site: Site, slot: int) -> list[int] | None | bool:
        """An optional integer input: its values, None when absent, False when computed."""
        if slot >= len(site.node.input) or not site.node.input[slot]:
            return None
        values = self._int_values(site, slot)
        return False if values is None else values

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

    def _opset(self) -> int:
        return self.model.opset("")

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

    def _sliced_indices(self, site: Site, length: int) -> set[int] | None:
        """Entries of a 1-D vector that a Slice keeps, when its parameters are constants."""
        params = self._slice_params(site)
        if params is None or params[2] not in ([0], [-1]):
            return None
        starts, ends, _, steps = params
        return set(range(length)[slice(starts[0], ends[0], steps[0])])


def graph_output_names(model: Model) -> set[str]:
    """Names of every graph's outputs, subgraphs included."""
    return {o.name for g in iter_graphs(model.proto.graph) for o in g.output}
