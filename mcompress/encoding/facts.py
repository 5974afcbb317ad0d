"""What the encodings need to know about one weight: its bit patterns, zeros, and codebooks
(one per tensor or one per channel) when few distinct values make them pay."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from onnx import TensorProto, helper

# An encoding is used only when it saves this many bytes or this fraction of the dense bytes.
MIN_SAVING_BYTES = 1024

MIN_SAVING_FRACTION = 0.10


# Elements sampled to rule out a codebook before any full pass over the tensor.
SAMPLE = 4096

_CHUNK = 1 << 22

BIT_VIEWS: dict[int, Any] = {
    TensorProto.FLOAT: np.uint32,
    TensorProto.FLOAT16: np.uint16,
    TensorProto.INT8: np.uint8,
    TensorProto.UINT8: np.uint8,
}


@dataclass
class Facts:
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
    # Every value is exactly a float16 (float32 tensors only): a codebook rounded to float16,
    # or a float16 model widened again. Stored as float16, one Cast restores it.
    half: bool = False

    @classmethod
    def of(cls, tensor: TensorProto, values: np.ndarray) -> Facts:
        bits = np.ascontiguousarray(values).reshape(-1).view(BIT_VIEWS[tensor.data_type])
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
        if tensor.data_type == TensorProto.FLOAT:
            facts.half = _all_half(facts)
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

    def row(self, encoding: str, before: int, after: int) -> PackedTensor:
        """This tensor's report row once stored as `encoding` (`before`/`after`: bytes)."""
        unique = None if self.table is None else int(self.table.size)
        return PackedTensor(self.name, self.size, encoding, before, after, self.zeros, unique)


@dataclass
class PackedTensor:
    """One weight whose stored form changed: a row of the report's `packing.tensors`."""

    name: str
    elements: int
    encoding: str
    bytes_before: int
    bytes_after: int
    zeros: int
    unique_values: int | None  # distinct values, when a codebook holds them


def _codebook(bits: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Distinct values and each element's index among them, when there are <= `limit`.

    A sample spread over the tensor rules most dense tensors out at once. Otherwise the
    sample's distinct values are looked up chunk by chunk; values the sample missed are added
    and looked up again (the result does not depend on the sample, only the time taken).
    """
    sample = bits
    if bits.size > SAMPLE:
        sample = bits[_spread(SAMPLE) % bits.size]
    table = distinct(sample)
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
                missing = distinct(np.concatenate((missing, chunk[~hit])))
                if table.size + missing.size > limit:
                    return None
            codes[start : start + _CHUNK] = found
        if missing.size == 0:
            return table, codes
        table = distinct(np.concatenate((table, missing)))
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
        entries = distinct(np.take(values, 0, axis=axis)).size
        if channels < 2 or entries > 256:
            continue
        least = bits.size * code_bits(entries) / 8 + channels * entries * bits.itemsize
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
    ordered = np.sort(keys)  # np.unique hashes uint64 keys, much slower than sorting
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


def _all_half(facts: Facts) -> bool:
    """Whether every value survives float32 -> float16 -> float32 bit for bit (NaNs do not
    count: their payloads may not). A tensor with a codebook is decided by its codebook; any
    other by a sample, then chunk by chunk."""
    if facts.table is not None:
        return _half_exact(facts.table)
    if facts.channel_book is not None:
        return _half_exact(facts.channel_book[1])
    bits = facts.bits
    if bits.size > SAMPLE and not _half_exact(bits[_spread(SAMPLE) % bits.size]):
        return False
    return all(_half_exact(bits[i : i + _CHUNK]) for i in range(0, bits.size, _CHUNK))


def _half_exact(bits: np.ndarray) -> bool:
    values = bits.view(np.float32)
    with np.errstate(over="ignore"):
        back = values.astype(np.float16).astype(np.float32)
    return bool(np.array_equal(back.view(np.uint32), bits))


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
    for multiplier in (_spread(64) % 2**31).astype(np.uint32):
        odd = np.uint32(multiplier * 2 + 1)
        keys = (table * odd) >> np.uint32(16)
        if distinct(keys).size == table.size:
            slots[keys] = np.arange(table.size)
            return lambda chunk: slots[(chunk * odd) >> np.uint32(16)]
    return None


def distinct(values: np.ndarray) -> np.ndarray:
    """The sorted distinct values of an integer array (bit patterns), as `np.unique` gives
    them, by sorting: `np.unique` imports `numpy.ma` on its first call, a cost every command
    that packs a weight paid (figures in benchmarks/README.md)."""
    ordered = np.sort(values, axis=None)
    if ordered.size < 2:
        return ordered
    return ordered[np.concatenate(([True], ordered[1:] != ordered[:-1]))]


def _spread(count: int) -> np.ndarray:
    """`count` well spread, deterministic non-negative int64 values (a multiplicative
    Weyl sequence): sample indices and hash multipliers without importing `numpy.random`,
    a cost every command that packs a weight paid."""
    return np.arange(1, count + 1, dtype=np.int64) * 2654435761


def code_bits(entries: int) -> int:
    """Bits per index for a codebook of `entries` values: 1, 2, 4 or 8 (bytes split evenly)."""
    return next(b for b in (1, 2, 4, 8) if entries <= 2**b)


def worth(dense: int, packed: int) -> bool:
    saved = dense - packed
    return saved > 0 and (saved >= MIN_SAVING_BYTES or saved >= MIN_SAVING_FRACTION * dense)
