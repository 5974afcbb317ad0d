"""Compact lossless weight storage that stock onnxruntime expands at load.

Pruned or clustered weights are dense float arrays full of zeros or repeated values, so their
files do not shrink. `pack` stores each weight in its smallest lossless form: packed codebook
indices plus a codebook (one per tensor, or one per channel for per-channel clustering); a
bit-mask of the non-zeros plus their values; gap-coded positions of the non-zeros plus their
values (very sparse tensors); or either of the last two with the values themselves
codebook-coded. Standard ops of opset 11 (BitShift, Cast, CumSum, Add, Mul, Gather, Reshape,
Slice, ConstantOfShape, ScatterElements) rebuild each tensor under its own name, and
onnxruntime constant-folds them when it creates a session. `unpack` turns them (and any
`sparse_initializer`) back into dense initializers so a packed model can be compressed again.

`sparse_initializer` is not emitted: onnx shape inference cannot type it (`check_model(...,
full_check=True)` fails), the checker rejects the int32 indices onnxruntime accepts, and with
int64 indices it is larger than the gap-coded form.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mcompress.errors import ModelError
from mcompress.model_io import (
    Model,
    add_initializer,
    iter_graphs,
    load_model,
    names_used,
    read_array,
    store_raw,
)

# Short, because every node and tensor of an expansion carries it: bytes in the file.
PREFIX = "mcp/"
# Opset that has every op the node encodings use (BitShift and CumSum arrived in 11).
MIN_OPSET = 11
# IR version from which initializers need not also be graph inputs.
MIN_IR = 4
# An encoding is used only when it saves this many bytes or this fraction of the dense bytes.
MIN_SAVING_BYTES = 1024
MIN_SAVING_FRACTION = 0.10
# Elements sampled to rule out a codebook before any full pass over the tensor.
SAMPLE = 4096
_CHUNK = 1 << 22
_BIT_VIEWS: dict[int, Any] = {
    TensorProto.FLOAT: np.uint32,
    TensorProto.FLOAT16: np.uint16,
    TensorProto.INT8: np.uint8,
    TensorProto.UINT8: np.uint8,
}


def pack(model: Model, *, min_elements: int = 64) -> dict[str, Any]:
    """Re-encode each float weight in its smallest lossless form; return per-tensor stats.

    Only tensors whose encoding changed are listed; the totals cover those tensors.
    """
    rows: list[dict[str, Any]] = []
    scanned = 0
    if model.opset("") < MIN_OPSET or model.proto.ir_version < MIN_IR:
        note = f"weights left dense: packing needs opset >= {MIN_OPSET} and IR >= {MIN_IR}"
        return {"tensors": rows, "scanned": 0, "bytes_before": 0, "bytes_after": 0, "note": note}
    names = _Names(model.proto)
    # Innermost graphs first: editing a graph copies its nodes, and with them any subgraph.
    for graph in reversed(list(iter_graphs(model.proto.graph))):
        state = _GraphState(graph, names)
        graph_rows: list[dict[str, Any]] = []
        inputs = {i.name for i in graph.input}
        for tensor in list(graph.initializer):
            if (
                tensor.data_type not in _BIT_VIEWS
                or tensor.name.startswith(PREFIX)
                or tensor.name in inputs
                or _count(tensor.dims) < min_elements
            ):
                continue
            scanned += 1
            facts = _Facts.of(tensor, read_array(tensor, model.base_dir))
            dense = _tensor_cost(_stub(tensor.name, tensor.data_type, facts.shape), facts.nbytes)
            best = min(_candidates(facts, state), key=_Plan.cost, default=None)
            if best is None or not _worth(dense, best.cost()):
                continue
            graph_rows.append(facts.row(best.encoding, dense, best.cost()))
            state.commit(best)
        state.finish()
        rows[:0] = graph_rows
    return {
        "tensors": rows,
        "scanned": scanned,
        "bytes_before": sum(r["bytes_before"] for r in rows),
        "bytes_after": sum(r["bytes_after"] for r in rows),
    }


def unpack(model: Model) -> int:
    """Turn mcompress expansions and sparse initializers back into dense initializers.

    Returns how many tensors were restored.
    """
    count = 0
    for graph in reversed(list(iter_graphs(model.proto.graph))):
        count += _densify_sparse(graph, model) + _evaluate_expansions(graph, model)
    return count


def expanded_weights(path: str | Path) -> dict[str, np.ndarray]:
    """Every float weight of the model at `path`, expanded as onnxruntime sees it."""
    model = load_model(path)
    unpack(model)
    return {w.name: np.array(w.array()) for w in model.weights()}


# ---------------------------------------------------------------- facts about one tensor


@dataclass
class _Facts:
    """What the encodings need to know about one tensor, computed as cheaply as possible."""

    name: str
    shape: tuple[int, ...]
    data_type: int
    bits: np.ndarray  # flat bit patterns: -0.0 and NaN payloads stay distinct and exact
    zeros: int
    nonzero: np.ndarray | None = None  # bool mask, only when enough zeros make a mask pay
    table: np.ndarray | None = None  # sorted distinct bit patterns, when <= 256 of them
    codes: np.ndarray | None = None  # uint8 index of each element into `table`
    # Else, per-channel clustering: (axis, [channels, K] distinct bit patterns per channel,
    # uint8 index of each element into its channel's row), when every channel has <= 256.
    channel_book: tuple[int, np.ndarray, np.ndarray] | None = None

    @classmethod
    def of(cls, tensor: TensorProto, values: np.ndarray) -> _Facts:
        bits = np.ascontiguousarray(values).reshape(-1).view(_BIT_VIEWS[tensor.data_type])
        facts = cls(
            name=tensor.name,
            shape=tuple(int(d) for d in tensor.dims),
            data_type=tensor.data_type,
            bits=bits,
            zeros=int(bits.size - np.count_nonzero(bits)),
        )
        if facts.zeros * bits.itemsize > bits.size / 8:
            facts.nonzero = bits != 0
        # Codes of at most 8 bits pay only when they are narrower than the elements themselves.
        found = _codebook(bits, 256 if bits.itemsize > 1 else 16)
        if found is not None:
            facts.table, facts.codes = found
        elif bits.itemsize > 1:
            # A bit-mask plus the non-zero values: what per-channel codes must beat.
            masked = bits.size // 8 + (bits.size - facts.zeros) * bits.itemsize
            facts.channel_book = _channel_codebook(bits, facts.shape, masked)
        return facts

    @property
    def size(self) -> int:
        return int(self.bits.size)

    @property
    def nbytes(self) -> int:
        return int(self.bits.nbytes)

    @property
    def nnz(self) -> int:
        return self.size - self.zeros

    @property
    def index_type(self) -> int:
        return TensorProto.INT32 if self.size < 2**31 - 2 else TensorProto.INT64

    @property
    def float_dtype(self) -> np.dtype[Any]:
        return np.dtype(helper.tensor_dtype_to_np_dtype(self.data_type))

    def floats(self, bits: np.ndarray) -> np.ndarray:
        """Bit patterns back as the tensor's float dtype."""
        return bits.astype(self.bits.dtype).view(self.float_dtype)

    def row(self, encoding: str, before: int, after: int) -> dict[str, Any]:
        return {
            "name": self.name,
            "elements": self.size,
            "encoding": encoding,
            "bytes_before": before,
            "bytes_after": after,
            "zeros": self.zeros,
            "unique_values": None if self.table is None else int(self.table.size),
        }


def _codebook(bits: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Distinct values and each element's index among them, when there are <= `limit`.

    A random sample rules most dense tensors out at once. Otherwise the sample's distinct
    values are looked up chunk by chunk; values the sample missed are added and looked up again.
    """
    sample = bits
    if bits.size > SAMPLE:
        sample = bits[np.random.default_rng(0).integers(0, bits.size, SAMPLE)]
    table = np.unique(sample)
    while table.size <= limit:
        lookup = _hash_lookup(table)
        if lookup is None:
            return None
        codes = np.empty(bits.size, np.uint8)
        missing = np.zeros(0, bits.dtype)
        for start in range(0, bits.size, _CHUNK):
            chunk = bits[start : start + _CHUNK]
            found = lookup(chunk)
            hit = table[found] == chunk
            if not hit.all():
                missing = np.union1d(missing, chunk[~hit])
                if table.size + missing.size > limit:
                    return None
            codes[start : start + _CHUNK] = found
        if missing.size == 0:
            return table, codes
        table = np.union1d(table, missing)
    return None


def _channel_codebook(
    bits: np.ndarray, shape: tuple[int, ...], masked: int
) -> tuple[int, np.ndarray, np.ndarray] | None:
    """Per-channel codebooks, along the first axis whose channels each hold <= 256 distinct
    values (what per-channel clustering writes), when such codes could save enough and beat
    `masked` bytes (the bit-mask encoding).

    Each axis is ruled out from its first channel before any full pass: a dense weight has
    more distinct values there, or so many that codes and tables would not pay (a pruned
    weight's zeros leave each channel some hundreds of distinct values: the mask wins).
    """
    if len(shape) < 2:
        return None
    values = bits.reshape(shape)
    for axis in dict.fromkeys((0, len(shape) - 1, *range(len(shape)))):
        channels = shape[axis]
        entries = np.unique(np.take(values, 0, axis=axis)).size
        if channels < 2 or entries > 256:
            continue
        least = bits.size * _code_bits(entries) / 8 + channels * entries * bits.itemsize
        if least > min(bits.nbytes * (1 - MIN_SAVING_FRACTION), masked):
            continue
        found = _per_channel_codes(values, axis)
        if found is not None:
            return axis, *found
    return None


def _per_channel_codes(values: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray] | None:
    """([channels, K] sorted distinct bit patterns per channel (0-padded), uint8 code of every
    element in its channel's row, in element order), or None when a channel has > 256."""
    moved = np.moveaxis(values, axis, 0)
    channels = moved.shape[0]
    rows = np.arange(channels, dtype=np.uint64) << np.uint64(32)
    keys = (rows.reshape(-1, *[1] * (moved.ndim - 1)) | moved.astype(np.uint64)).reshape(-1)
    ordered = np.sort(keys)  # np.unique hashes uint64 keys, 5-10x slower than sorting
    distinct = ordered[np.concatenate(([True], ordered[1:] != ordered[:-1]))]
    starts = np.searchsorted(distinct, rows)
    counts = np.diff(np.append(starts, distinct.size))
    entries = int(counts.max())
    if entries > 256:
        return None
    owner = (distinct >> np.uint64(32)).astype(np.int64)
    table = np.zeros((channels, entries), values.dtype)
    table[owner, np.arange(distinct.size) - starts[owner]] = distinct.astype(values.dtype)
    local = np.searchsorted(distinct, keys) - np.repeat(starts, keys.size // channels)
    codes = np.moveaxis(local.astype(np.uint8).reshape(moved.shape), 0, axis)
    return table, np.ascontiguousarray(codes).reshape(-1)


def _hash_lookup(table: np.ndarray) -> Callable[[np.ndarray], np.ndarray] | None:
    """A vectorised lookup from bit pattern to index in `table` (<= 256 entries).

    16-bit patterns index a 65536-slot array directly; 32-bit ones go through a multiplicative
    hash whose multiplier is chosen so that the table's entries do not collide. Values not in
    the table map to some index; callers compare to find them.
    """
    slots = np.zeros(1 << 16, np.uint8)
    if table.dtype == np.uint16:
        slots[table] = np.arange(table.size)
        return lambda chunk: slots[chunk]
    for multiplier in np.random.default_rng(0).integers(1, 2**31, 64).astype(np.uint32):
        odd = np.uint32(multiplier * 2 + 1)
        keys = (table * odd) >> np.uint32(16)
        if np.unique(keys).size == table.size:
            slots[keys] = np.arange(table.size)
            return lambda chunk: slots[(chunk * odd) >> np.uint32(16)]
    return None


def _worth(dense: int, packed: int) -> bool:
    saved = dense - packed
    return saved > 0 and (saved >= MIN_SAVING_BYTES or saved >= MIN_SAVING_FRACTION * dense)


# ---------------------------------------------------------------- byte accounting


def _count(dims: Any) -> int:
    return int(np.prod(list(dims), dtype=np.int64))


def _field_cost(body: int) -> int:
    """Bytes of a length-delimited protobuf field with a `body`-byte body and 1-byte tag."""
    return 1 + max(1, (body.bit_length() + 6) // 7) + body


def _stub(name: str, data_type: int, shape: tuple[int, ...]) -> TensorProto:
    tensor = TensorProto(name=name, data_type=data_type)
    tensor.dims.extend(shape)
    return tensor


def _tensor_cost(stub: TensorProto, payload: int) -> int:
    """Serialized bytes of an initializer: header, raw data and its field framing."""
    return _field_cost(stub.ByteSize() + _field_cost(payload))


# ---------------------------------------------------------------- plans


class _Names:
    """Fresh `mcp/<n>` prefixes that no name in the model uses yet."""

    def __init__(self, proto: onnx.ModelProto) -> None:
        self.taken = {n.split("/")[1] for n in _all_names(proto) if n.startswith(PREFIX)}
        self.next = 0

    def fresh(self) -> str:
        while str(self.next) in self.taken:
            self.next += 1
        self.taken.add(str(self.next))
        return f"{PREFIX}{self.next}"


def _all_names(proto: onnx.ModelProto) -> Iterator[str]:
    for graph in iter_graphs(proto.graph):
        yield from (t.name for t in graph.initializer)
        yield from (s.values.name for s in graph.sparse_initializer)
        for node in graph.node:
            yield node.name
            yield from node.output


Producer = Callable[[], np.ndarray]


@dataclass
class _Plan:
    """One candidate encoding of one tensor: its protos, and producers of its data."""

    encoding: str
    tag: str
    helpers: dict[tuple[Any, ...], str]  # helper constants the graph already has
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    data: list[tuple[TensorProto, Producer]] = field(default_factory=list)
    new_helpers: dict[tuple[Any, ...], TensorProto] = field(default_factory=dict)
    bytes: int = 0

    def tensor(self, suffix: str, dtype: Any, shape: tuple[int, ...], make: Producer) -> str:
        """A per-tensor initializer whose values `make()` produces only if this plan wins."""
        stub = _stub(f"{self.tag}/{suffix}", helper.np_dtype_to_tensor_dtype(dtype), shape)
        self.data.append((stub, make))
        self.bytes += _tensor_cost(stub, _count(shape) * np.dtype(dtype).itemsize)
        return stub.name

    def const(self, key: str, values: np.ndarray) -> str:
        """A small helper constant shared by every expansion in the graph."""
        full_key = (values.dtype.str, values.shape, values.tobytes())
        if full_key in self.helpers:
            return self.helpers[full_key]
        if full_key not in self.new_helpers:
            tensor = numpy_helper.from_array(values, f"{self.tag}/{key}")
            self.new_helpers[full_key] = tensor
            self.bytes += _field_cost(tensor.ByteSize())
        return self.new_helpers[full_key].name

    def node(self, op: str, inputs: list[str], output: str | None = None, **attrs: Any) -> str:
        name = f"{self.tag}/{len(self.nodes)}"
        node = helper.make_node(op, inputs, [output or name], name=name, **attrs)
        self.nodes.append(node)
        self.bytes += _field_cost(node.ByteSize())
        return node.output[0]

    def cost(self) -> int:
        return self.bytes


class _GraphState:
    """Edits to one graph, applied together: new tensors, nodes first, originals removed."""

    def __init__(self, graph: onnx.GraphProto, names: _Names) -> None:
        self.graph = graph
        self.names = names
        self.helpers: dict[tuple[Any, ...], str] = {}
        self.nodes: list[onnx.NodeProto] = []
        self.removed: set[str] = set()

    def plan(self, encoding: str) -> _Plan:
        return _Plan(encoding, self.names.fresh(), self.helpers)

    def commit(self, plan: _Plan) -> None:
        for key, tensor in plan.new_helpers.items():
            self.graph.initializer.append(tensor)
            self.helpers[key] = tensor.name
        for stub, make in plan.data:
            added = self.graph.initializer.add()  # append(stub) would copy its data again
            added.CopyFrom(stub)
            store_raw(added, make())
        self.nodes.extend(plan.nodes)
        self.removed.add(plan.nodes[-1].output[0])

    def finish(self) -> None:
        for index in reversed(range(len(self.graph.initializer))):
            if self.graph.initializer[index].name in self.removed:
                del self.graph.initializer[index]
        if self.nodes:
            rest = list(self.graph.node)
            del self.graph.node[:]
            self.graph.node.extend(self.nodes + rest)


def _candidates(facts: _Facts, state: _GraphState) -> list[_Plan]:
    plans = []
    with_zeros = facts.nonzero is not None and facts.nnz > 0
    # A codebook that holds 0.0 (always first: its bit pattern sorts first) can code zeros too.
    books = [False, True] if facts.table is not None and facts.table[0] == 0 else [False]
    if facts.table is not None:
        plans.append(_codebook_plan(facts, state))
    if facts.channel_book is not None:
        plans.append(_channel_codebook_plan(facts, state))
    if with_zeros:
        plans.extend(_mask_plan(facts, state, book) for book in books)
    if with_zeros and facts.nnz * 8 < facts.size:
        plans.extend(_scatter_plan(facts, state, w, book) for w in (8, 16) for book in books)
    return plans


def _code_bits(entries: int) -> int:
    """Bits per index for a codebook of `entries` values: 1, 2, 4 or 8 (bytes split evenly)."""
    return next(b for b in (1, 2, 4, 8) if entries <= 2**b)


def _pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """`bits`-bit codes packed into bytes, first code in the high bits; 8-bit codes as is."""
    if bits == 8:
        return codes.astype(np.uint8)
    per_byte = 8 // bits
    padded = np.zeros(-(-codes.size // per_byte) * per_byte, np.uint8)
    padded[: codes.size] = codes
    groups = padded.reshape(-1, per_byte)
    packed = np.zeros(groups.shape[0], np.uint8)
    for j in range(per_byte):
        packed |= groups[:, j] << np.uint8(8 - bits * (j + 1))
    return packed.reshape(-1, 1)


def _packed_shape(count: int, bits: int, shape: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """Shape of the stored codes: 8-bit codes as they will be used, packed ones as [bytes, 1]."""
    if bits == 8:
        return shape or (count,)
    return (-(-count * bits // 8), 1)


def _unpack_codes(
    plan: _Plan,
    packed: str,
    bits: int,
    count: int,
    index_type: int,
    *,
    exact: bool = True,
    shape: tuple[int, ...] | None = None,
) -> str:
    """Nodes expanding `packed` into integer codes: `count` of them, flat or shaped `shape`.

    Shifting each byte left by j*bits (uint8 wraps) and then right by 8-bits isolates code j.
    Unless `exact`, trailing padding codes are left in place (for gathers that never reach them).
    """
    if bits == 8:
        return plan.node("Cast", [packed], to=index_type)
    shifts = np.arange(0, 8, bits, dtype=np.uint8)
    left = plan.node("BitShift", [packed, plan.const(f"l{bits}", shifts)], direction="LEFT")
    right = plan.const(f"r{bits}", np.array(8 - bits, np.uint8))
    codes = plan.node("BitShift", [left, right], direction="RIGHT")
    padded = _packed_shape(count, bits)[0] * (8 // bits) != count
    if shape is None or padded:
        codes = plan.node("Reshape", [codes, plan.const("flat", np.array([-1], np.int64))])
    if padded and (exact or shape is not None):
        start = plan.const("start", np.array([0], np.int64))
        end = plan.const(f"n{count}", np.array([count], np.int64))
        codes = plan.node("Slice", [codes, start, end])
    if shape is not None:
        codes = plan.node("Reshape", [codes, plan.const(f"s{count}", np.array(shape, np.int64))])
    return plan.node("Cast", [codes], to=index_type)


Stream = Callable[[np.ndarray], np.ndarray]


def _values(
    plan: _Plan,
    facts: _Facts,
    entries: int,
    stream: Stream,
    book: bool,
    *,
    exact: bool = True,
    shape: tuple[int, ...] | None = None,
) -> str:
    """`entries` values stored as floats (flat), or as codes into the codebook (any shape).

    `stream` picks the entries from an array over all elements (bit patterns or codes).
    """
    if not book:

        def raw() -> np.ndarray:
            return facts.floats(stream(facts.bits))

        return plan.tensor("v", facts.float_dtype, (entries,), raw)
    table, codes = facts.table, facts.codes
    if table is None or codes is None:
        raise ValueError("codebook requested for a tensor without one")
    bits = _code_bits(table.size)

    def packed_codes() -> np.ndarray:
        return _pack_codes(stream(codes), bits)

    stored = _packed_shape(entries, bits, shape)
    packed = plan.tensor("c", np.dtype(np.uint8), stored, packed_codes)
    indices = _unpack_codes(plan, packed, bits, entries, facts.index_type, exact=exact, shape=shape)
    book_values = plan.tensor("t", facts.float_dtype, table.shape, lambda: facts.floats(table))
    return plan.node("Gather", [book_values, indices], output=facts.name if shape else None)


def _to_shape(plan: _Plan, values: str, facts: _Facts) -> None:
    """Reshape the flat expansion to the weight's shape, under the weight's own name."""
    shape = plan.const(f"s{facts.size}", np.array(facts.shape, np.int64))
    plan.node("Reshape", [values, shape], output=facts.name)


def _name(encoding: str, facts: _Facts, book: bool) -> str:
    if facts.table is None or not book:
        return encoding
    return f"{encoding}+codebook{_code_bits(facts.table.size)}"


def _codebook_plan(facts: _Facts, state: _GraphState) -> _Plan:
    """Every element as a 1/2/4/8-bit index into the tensor's distinct values."""
    table = facts.table
    if table is None:
        raise ValueError("codebook plan for a tensor without one")
    plan = state.plan(f"codebook{_code_bits(table.size)}")
    _values(plan, facts, facts.size, lambda a: a, book=True, shape=facts.shape)
    return plan


def _channel_codebook_plan(facts: _Facts, state: _GraphState) -> _Plan:
    """Every element as a 1/2/4/8-bit index into its channel's distinct values; adding each
    channel's offset turns the indices into positions in all the tables laid end to end."""
    if facts.channel_book is None:
        raise ValueError("channel codebook plan for a tensor without one")
    axis, table, codes = facts.channel_book
    channels, entries = table.shape
    bits = _code_bits(entries)
    plan = state.plan(f"channel-codebook{bits}")
    stored = _packed_shape(facts.size, bits, facts.shape)
    packed = plan.tensor("c", np.dtype(np.uint8), stored, lambda: _pack_codes(codes, bits))
    local = _unpack_codes(plan, packed, bits, facts.size, facts.index_type, shape=facts.shape)
    index_dtype = np.dtype(helper.tensor_dtype_to_np_dtype(facts.index_type))
    offset_shape = tuple(channels if i == axis else 1 for i in range(len(facts.shape)))

    def offsets() -> np.ndarray:
        return (np.arange(channels) * entries).astype(index_dtype).reshape(offset_shape)

    where = plan.node("Add", [local, plan.tensor("o", index_dtype, offset_shape, offsets)])
    book = plan.tensor(
        "t", facts.float_dtype, (channels * entries,), lambda: facts.floats(table.reshape(-1))
    )
    plan.node("Gather", [book, where], output=facts.name)
    return plan


def _mask_plan(facts: _Facts, state: _GraphState, book: bool) -> _Plan:
    """Packed bit-mask of the non-zeros; a CumSum over it numbers them for a Gather.

    Zeros get number 0, which the value stream holds as 0.0.
    """
    nonzero = facts.nonzero
    if nonzero is None:
        raise ValueError("mask plan without a zero mask")
    plan = state.plan(_name("bitmask", facts, book))
    mask = plan.tensor(
        "m", np.dtype(np.uint8), _packed_shape(facts.size, 1), lambda: _pack_codes(nonzero, 1)
    )
    flags = _unpack_codes(plan, mask, 1, facts.size, facts.index_type)
    running = plan.node("CumSum", [flags, plan.const("axis", np.array(0, np.int32))])
    numbers = plan.node("Mul", [running, flags])

    def stream(a: np.ndarray) -> np.ndarray:
        return np.concatenate([np.zeros(1, a.dtype), a[nonzero]])

    values = _values(plan, facts, facts.nnz + 1, stream, book, exact=False)
    _to_shape(plan, plan.node("Gather", [values, numbers]), facts)
    return plan


def _scatter_plan(facts: _Facts, state: _GraphState, width: int, book: bool) -> _Plan:
    """Non-zeros scattered into zeros; positions stored as 8/16-bit gaps summed by CumSum.

    A gap too wide for `width` bits is bridged by zero-valued filler entries.
    """
    nonzero = facts.nonzero
    if nonzero is None:
        raise ValueError("scatter plan without a zero mask")
    positions = np.flatnonzero(nonzero)
    widest = 2**width - 1
    gaps = np.diff(positions, prepend=0)
    fillers = np.maximum((gaps - 1) // widest, 0)
    real = np.cumsum(fillers + 1) - 1
    entries = int(real[-1]) + 1
    plan = state.plan(_name(f"scatter{width}", facts, book))
    gap_type = np.dtype(np.uint8 if width == 8 else np.uint16)

    def stored_gaps() -> np.ndarray:
        out = np.full(entries, widest, gap_type)
        out[real] = gaps - fillers * widest
        return out

    def stream(a: np.ndarray) -> np.ndarray:
        out = np.zeros(entries, a.dtype)
        out[real] = a[nonzero]
        return out

    stored = plan.tensor("g", gap_type, (entries,), stored_gaps)
    steps = plan.node("Cast", [stored], to=facts.index_type)
    where = plan.node("CumSum", [steps, plan.const("axis", np.array(0, np.int32))])
    values = _values(plan, facts, entries, stream, book)
    zero = numpy_helper.from_array(np.zeros(1, facts.float_dtype), "")
    size = plan.const(f"n{facts.size}", np.array([facts.size], np.int64))
    base = plan.node("ConstantOfShape", [size], value=zero)
    flat = plan.node("ScatterElements", [base, where, values])
    _to_shape(plan, flat, facts)
    return plan


# ---------------------------------------------------------------- unpack


def _densify_sparse(graph: onnx.GraphProto, model: Model) -> int:
    for sparse in graph.sparse_initializer:
        values = read_array(sparse.values, model.base_dir).reshape(-1)
        indices = read_array(sparse.indices, model.base_dir).astype(np.int64)
        shape = tuple(int(d) for d in sparse.dims)
        dense = np.zeros(_count(shape), values.dtype)
        flat = indices if indices.ndim == 1 else np.ravel_multi_index(tuple(indices.T), shape)
        dense[flat] = values
        add_initializer(graph, dense.reshape(shape), sparse.values.name)
    count = len(graph.sparse_initializer)
    del graph.sparse_initializer[:]
    return count


def _evaluate_expansions(graph: onnx.GraphProto, model: Model) -> int:
    ours = [n for n in graph.node if n.name.startswith(PREFIX)]
    if not ours:
        return 0
    env = {
        t.name: read_array(t, model.base_dir)
        for t in graph.initializer
        if t.name.startswith(PREFIX)
    }
    restored = []
    for node in ours:
        args = []
        for name in node.input:
            if name not in env:
                raise ModelError(f"cannot unpack '{node.name}': its input '{name}' is missing")
            args.append(env[name])
        env[node.output[0]] = _run(node, args)
        if not node.output[0].startswith(PREFIX):
            restored.append(node.output[0])
    rest = [n for n in graph.node if not n.name.startswith(PREFIX)]
    del graph.node[:]
    graph.node.extend(rest)
    infos = [v for v in graph.value_info if not v.name.startswith(PREFIX)]
    del graph.value_info[:]
    graph.value_info.extend(infos)
    used = names_used(graph)
    for index in reversed(range(len(graph.initializer))):
        name = graph.initializer[index].name
        if name.startswith(PREFIX) and name not in used:
            del graph.initializer[index]
    for name in restored:
        add_initializer(graph, env[name], name)
    return len(restored)


def _run(node: onnx.NodeProto, args: list[np.ndarray]) -> np.ndarray:
    """numpy for the few ops `pack` emits (exact integer and gather semantics)."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    op = node.op_type
    if op == "BitShift":
        shift = np.left_shift if attrs["direction"] == b"LEFT" else np.right_shift
        return np.asarray(shift(args[0], args[1]), dtype=args[0].dtype)
    if op == "Cast":
        return args[0].astype(helper.tensor_dtype_to_np_dtype(attrs["to"]))
    if op == "Reshape":
        return args[0].reshape(tuple(int(d) for d in args[1]))
    if op == "Slice":
        return args[0][int(args[1][0]) : int(args[2][0])]
    if op == "CumSum":
        return np.cumsum(args[0], axis=int(args[1]), dtype=args[0].dtype)
    if op == "Mul":
        return np.asarray(args[0] * args[1])
    if op == "Add":
        return np.asarray(args[0] + args[1])
    if op == "ConstantOfShape":
        fill = numpy_helper.to_array(attrs["value"]).reshape(-1)
        return np.full(tuple(int(d) for d in args[0]), fill[0], fill.dtype)
    if op == "ScatterElements":
        out = args[0].copy()
        out[args[1].astype(np.int64)] = args[2]
        return out
    if op == "Gather":
        return np.take(args[0], args[1].astype(np.int64), axis=int(attrs.get("axis", 0)))
    raise ModelError(f"cannot unpack '{node.name}': op {op} is not one mcompress emits")
