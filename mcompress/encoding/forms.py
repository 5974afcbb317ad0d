"""The lossless forms a weight can take, each built as a `Plan` of standard ops: packed codebook
indices (per tensor or per channel), a bit-mask of the non-zeros, or gap-coded positions, the
last two with raw or codebook-coded values."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from mcompress.encoding.facts import Facts, code_bits
from mcompress.encoding.plan import GraphState, Plan


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
    plan: Plan,
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
    indices = count * _itemsize(index_type)
    if bits == 8:
        return plan.node("Cast", [packed], to=index_type, out_bytes=indices)
    shifts = np.arange(0, 8, bits, dtype=np.uint8)
    unpacked = _packed_shape(count, bits)[0] * (8 // bits)  # one code per byte
    left = plan.const(f"l{bits}", shifts)
    codes = plan.node("BitShift", [packed, left], direction="LEFT", out_bytes=unpacked)
    right = plan.const(f"r{bits}", np.array(8 - bits, np.uint8))
    codes = plan.node("BitShift", [codes, right], direction="RIGHT", out_bytes=unpacked)
    padded = unpacked != count
    if shape is None or padded:
        flat = plan.const("flat", np.array([-1], np.int64))
        codes = plan.node("Reshape", [codes, flat], out_bytes=unpacked)
    if padded and (exact or shape is not None):
        start = plan.const("start", np.array([0], np.int64))
        end = plan.const(f"n{count}", np.array([count], np.int64))
        codes = plan.node("Slice", [codes, start, end], out_bytes=count)
    if shape is not None:
        dims = plan.const(f"s{count}", np.array(shape, np.int64))
        codes = plan.node("Reshape", [codes, dims], out_bytes=count)
    return plan.node("Cast", [codes], to=index_type, out_bytes=indices)


def _itemsize(data_type: int) -> int:
    return np.dtype(helper.tensor_dtype_to_np_dtype(data_type)).itemsize


Stream = Callable[[np.ndarray], np.ndarray]


def _values(
    plan: Plan,
    facts: Facts,
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
    bits = code_bits(table.size)

    def packed_codes() -> np.ndarray:
        return _pack_codes(stream(codes), bits)

    stored = _packed_shape(entries, bits, shape)
    packed = plan.tensor("c", np.dtype(np.uint8), stored, packed_codes)
    indices = _unpack_codes(plan, packed, bits, entries, facts.index_type, exact=exact, shape=shape)
    book_values = plan.tensor("t", facts.float_dtype, table.shape, lambda: facts.floats(table))
    out_bytes = entries * facts.float_dtype.itemsize
    output = facts.name if shape else None
    return plan.node("Gather", [book_values, indices], output, out_bytes=out_bytes)


def _to_shape(plan: Plan, values: str, facts: Facts) -> None:
    """Reshape the flat expansion to the weight's shape, under the weight's own name."""
    shape = plan.const(f"s{facts.size}", np.array(facts.shape, np.int64))
    plan.node("Reshape", [values, shape], output=facts.name, out_bytes=facts.nbytes)


def _name(encoding: str, facts: Facts, book: bool) -> str:
    if facts.table is None or not book:
        return encoding
    return f"{encoding}+codebook{code_bits(facts.table.size)}"


def codebook_plan(facts: Facts, state: GraphState) -> Plan:
    """Every element as a 1/2/4/8-bit index into the tensor's distinct values."""
    table = facts.table
    if table is None:
        raise ValueError("codebook plan for a tensor without one")
    plan = state.plan(f"codebook{code_bits(table.size)}")
    _values(plan, facts, facts.size, lambda a: a, book=True, shape=facts.shape)
    return plan


def channel_codebook_plan(facts: Facts, state: GraphState) -> Plan:
    """Every element as a 1/2/4/8-bit index into its channel's distinct values; adding each
    channel's offset turns the indices into positions in all the tables laid end to end."""
    if facts.channel_book is None:
        raise ValueError("channel codebook plan for a tensor without one")
    axis, table, codes = facts.channel_book
    channels, entries = table.shape
    bits = code_bits(entries)
    plan = state.plan(f"channel-codebook{bits}")
    stored = _packed_shape(facts.size, bits, facts.shape)
    packed = plan.tensor("c", np.dtype(np.uint8), stored, lambda: _pack_codes(codes, bits))
    local = _unpack_codes(plan, packed, bits, facts.size, facts.index_type, shape=facts.shape)
    index_dtype = np.dtype(helper.tensor_dtype_to_np_dtype(facts.index_type))
    offset_shape = tuple(channels if i == axis else 1 for i in range(len(facts.shape)))

    def offsets() -> np.ndarray:
        return (np.arange(channels) * entries).astype(index_dtype).reshape(offset_shape)

    offset = plan.tensor("o", index_dtype, offset_shape, offsets)
    where = plan.node("Add", [local, offset], out_bytes=facts.size * index_dtype.itemsize)
    book = plan.tensor(
        "t", facts.float_dtype, (channels * entries,), lambda: facts.floats(table.reshape(-1))
    )
    plan.node("Gather", [book, where], output=facts.name, out_bytes=facts.nbytes)
    return plan


def half_plan(facts: Facts, state: GraphState) -> Plan:
    """Every element as the float16 it exactly is; one Cast widens it. At load onnxruntime
    holds nothing but the weight: the Cast reads its input from the file and drops it."""
    plan = state.plan("float16")

    def halves() -> np.ndarray:
        return facts.floats(facts.bits).astype(np.float16).reshape(facts.shape)

    stored = plan.tensor("h", np.dtype(np.float16), facts.shape, halves)
    plan.node("Cast", [stored], output=facts.name, to=TensorProto.FLOAT, out_bytes=facts.nbytes)
    return plan


def mask_plan(facts: Facts, state: GraphState, book: bool) -> Plan:
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
    indices = facts.size * _itemsize(facts.index_type)
    axis = plan.const("axis", np.array(0, np.int32))
    running = plan.node("CumSum", [flags, axis], out_bytes=indices)
    numbers = plan.node("Mul", [running, flags], out_bytes=indices)

    def stream(a: np.ndarray) -> np.ndarray:
        return np.concatenate([np.zeros(1, a.dtype), a[nonzero]])

    values = _values(plan, facts, facts.nnz + 1, stream, book, exact=False)
    _to_shape(plan, plan.node("Gather", [values, numbers], out_bytes=facts.nbytes), facts)
    return plan


def scatter_plan(facts: Facts, state: GraphState, width: int, book: bool) -> Plan:
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
    indices = entries * _itemsize(facts.index_type)
    steps = plan.node("Cast", [stored], to=facts.index_type, out_bytes=indices)
    axis = plan.const("axis", np.array(0, np.int32))
    where = plan.node("CumSum", [steps, axis], out_bytes=indices)
    values = _values(plan, facts, entries, stream, book)
    zero = numpy_helper.from_array(np.zeros(1, facts.float_dtype), "")
    size = plan.const(f"n{facts.size}", np.array([facts.size], np.int64))
    base = plan.node("ConstantOfShape", [size], value=zero, out_bytes=facts.nbytes)
    flat = plan.node("ScatterElements", [base, where, values], out_bytes=facts.nbytes)
    _to_shape(plan, flat, facts)
    return plan


def candidates(facts: Facts, state: GraphState) -> list[Plan]:
    plans = []
    with_zeros = facts.nonzero is not None and facts.nnz > 0
    # A codebook that holds 0.0 (always first: its bit pattern sorts first) can code zeros too.
    books = [False, True] if facts.table is not None and facts.table[0] == 0 else [False]
    if facts.half:
        plans.append(half_plan(facts, state))
    if facts.table is not None:
        plans.append(codebook_plan(facts, state))
    if facts.channel_book is not None:
        plans.append(channel_codebook_plan(facts, state))
    if with_zeros:
        plans.extend(mask_plan(facts, state, book) for book in books)
    if with_zeros and facts.nnz * 8 < facts.size:
        plans.extend(scatter_plan(facts, state, w, book) for w in (8, 16) for book in books)
    return plans
