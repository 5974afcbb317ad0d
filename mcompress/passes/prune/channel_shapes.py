"""How channels move through shape-changing ops (Reshape, Flatten, Squeeze, Transpose, Concat,
Slice, Gather, Pad, Resize, Shape...): each handler follows the channel axis to the node's
output or blocks the groups it cannot follow."""

from __future__ import annotations

import numpy as np
import onnx

from mcompress.passes.prune.channel_layout import (
    Layout,
    Segment,
    ShapeEdit,
    attr,
    product,
    who,
)
from mcompress.passes.prune.channel_state import WalkState
from mcompress.weights import Initializer, Site


class ShapeOps(WalkState):
    """Handlers of the ops that move, split or join axes."""

    def _shape(self, site: Site, tracked: dict[int, Layout]) -> None:
        """`Shape` of a pruned tensor is fine when only dimensions other than channels are used."""
        layout = tracked[0]
        node = site.node
        pos = layout.position
        rank = layout.rank
        if pos is None or rank is None:
            self.result.block(layout, f"its shape is read by {who(node)}")
            return
        start = int(attr(node, "start", 0))  # type: ignore[call-overload]
        end = int(attr(node, "end", rank))  # type: ignore[call-overload]
        start, end = (max(0, min(rank, v + rank if v < 0 else v)) for v in (start, end))
        if not start <= pos < end:
            return
        if not self._shape_use_safe(node.output[0], pos - start, end - start):
            self.result.block(layout, f"its channel count is read by {who(node)}")

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

    def _flatten(self, site: Site, tracked: dict[int, Layout]) -> None:
        node = site.node
        layout = tracked[0]
        shape = self._shape_of(node.input[0])
        pos = layout.position
        if shape is None or pos is None:
            self.result.block(layout, f"enters {who(node)} with unknown shape")
            return
        axis = int(attr(node, "axis", 1)) % max(len(shape), 1)  # type: ignore[call-overload]
        merged = product(shape[axis:pos])
        tail = product(shape[pos + 1 :])
        if axis > pos or merged != 1 or tail is None:
            self.result.block(layout, f"is flattened with other dimensions by {who(node)}")
            return
        self._set(node.output[0], layout.widened(tail).moved(1, 2))

    def _reshape(self, site: Site, tracked: dict[int, Layout]) -> None:
        node = site.node
        layout = tracked[0]
        src, dst = self._shape_of(node.input[0]), self._reshaped(site)
        pos = layout.position
        if 1 in tracked or src is None or dst is None or pos is None:
            self._block_all(tracked, f"enters {who(node)} with unknown shapes")
            return
        tail = product(src[pos + 1 :])
        keeps_prefix = len(dst) > pos and tuple(dst[:pos]) == tuple(src[:pos])
        if (
            keeps_prefix
            and tail is not None
            and len(dst) == pos + 1
            and dst[pos] == layout.size * tail
        ):
            after = Layout(layout.widened(tail).segments, -1, pos + 1)
        elif keeps_prefix and dst[pos] == layout.size and product(dst[pos + 1 :]) is not None:
            after = layout.moved(pos, len(dst))
        else:
            self.result.block(layout, f"is reshaped across channels by {who(node)}")
            return
        target = self._shape_target(site, pos)
        if target is None:
            self.result.block(layout, f"the target shape of {who(node)} is computed at runtime")
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
        total = product(src)
        rest = product(tuple(d for d in dims if d != -1))
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
            self._block_all(tracked, f"enters {who(node)} with unknown axes")
            return
        if not axes:
            if shape is None:
                self.result.block(layout, f"enters {who(node)} with unknown shape")
                return
            axes = [i for i, d in enumerate(shape) if d == 1]
        axes = [a % rank for a in axes]
        if pos in axes:
            self.result.block(layout, f"its channel axis is squeezed by {who(node)}")
            return
        new_pos = pos - sum(1 for a in axes if a < pos)
        self._set(node.output[0], layout.moved(new_pos, rank - len(axes)))

    def _unsqueeze(self, site: Site, tracked: dict[int, Layout]) -> None:
        node = site.node
        layout = tracked[0]
        rank, pos = layout.rank, layout.position
        axes = self._axes(site, 1)
        if rank is None or pos is None or not axes or len(tracked) > 1:
            self._block_all(tracked, f"enters {who(node)} with unknown axes")
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
            self.result.block(layout, f"enters {who(node)} with unknown rank")
            return
        perm = attr(node, "perm")
        order = [int(p) for p in perm] if perm is not None else list(range(rank))[::-1]  # type: ignore[attr-defined]
        self._set(node.output[0], layout.moved(order.index(pos), rank))

    def _concat(self, site: Site, tracked: dict[int, Layout]) -> None:
        node = site.node
        first = next(iter(tracked.values()))
        rank = first.rank
        if rank is None or any(lay.rank != rank for lay in tracked.values()):
            self._block_all(tracked, f"enters {who(node)} with unknown rank")
            return
        axis = int(attr(node, "axis", 0)) % rank  # type: ignore[call-overload]
        if any(lay.position != axis for lay in tracked.values()):
            if len(tracked) == len([n for n in node.input if n]):
                self._elementwise_same(site, tracked)
            else:
                self._block_all(tracked, f"is concatenated with other tensors by {who(node)}")
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
                    tracked, f"is concatenated with a tensor of unknown size by {who(node)}"
                )
                return
            segments.append(Segment(None, size))
        self._set(node.output[0], Layout(tuple(segments), axis - rank, rank))

    def _elementwise_same(self, site: Site, tracked: dict[int, Layout]) -> None:
        layout = self._unify(list(tracked.values()), f"meets other channels in {who(site.node)}")
        if layout is not None:
            self._set(site.node.output[0], layout)

    def _slice(self, site: Site, tracked: dict[int, Layout]) -> None:
        node = site.node
        layout = tracked[0]
        rank, pos = layout.rank, layout.position
        params = self._slice_params(site)
        if rank is None or pos is None or params is None or len(tracked) > 1:
            self._block_all(tracked, f"enters {who(node)} with unknown axes")
            return
        starts, _, axes_given, _ = params
        axes = [a % rank for a in axes_given] if axes_given else list(range(len(starts)))
        if pos in axes:
            self.result.block(layout, f"is sliced along channels by {who(node)}")
            return
        self._set(node.output[0], layout)

    def _split(self, site: Site, tracked: dict[int, Layout]) -> None:
        node = site.node
        layout = tracked[0]
        rank, pos = layout.rank, layout.position
        axis = int(attr(node, "axis", 0))  # type: ignore[call-overload]
        if rank is None or pos is None or axis % rank == pos or len(tracked) > 1:
            self._block_all(tracked, f"is split along channels by {who(node)}")
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
            self._block_all(tracked, f"enters {who(node)} with unknown shapes")
            return
        axis %= rank
        if axis == pos:
            self.result.block(layout, f"is indexed along channels by {who(node)}")
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
            self._block_all(tracked, f"enters {who(node)} with unknown pads")
            return
        axes = [a % rank for a in axes] if axes is not None else list(range(rank))
        pads = list(pads)  # type: ignore[call-overload]
        n = len(axes)
        if pos in axes and (pads[axes.index(pos)] or pads[axes.index(pos) + n]):
            self.result.block(layout, f"is padded along channels by {who(node)}")
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
            self._block_all(tracked, f"enters {who(node)} with sizes or unknown scales")
            return
        values = np.asarray(scales.weight.array()).reshape(-1)
        if pos >= values.size or values[pos] != 1:
            self.result.block(layout, f"is resized along channels by {who(node)}")
            return
        self._set(node.output[0], layout)
