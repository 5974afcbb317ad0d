"""The numbers behind `quantize`: linear (de)quantization of a weight and its error.

Used for mcompress's own weight-only storage and to measure, tensor by tensor, how far any
quantized weight (ours or one written by onnxruntime.quantization) is from the original.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Tensors are compared in chunks (float32 dot products, summed in float64), so error stats
# never copy a big tensor and stay accurate to far better than 0.01 dB.
_CHUNK = 1 << 20


@dataclass
class Quantized:
    """Integer values plus the scale (and zero point) that map them back to floats.

    `scale` and `zero_point` keep the weight's rank (size 1 except along the channel axis), so
    they broadcast against `values`; `zero_point` is None for symmetric quantization.
    """

    values: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray | None
    axis: int | None

    def dequantize(self) -> np.ndarray:
        """The float tensor these integers stand for."""
        restored = self.values.astype(np.float32)
        if self.zero_point is not None:
            restored -= self.zero_point.astype(np.float32)
        return restored * self.scale

    @property
    def nbytes(self) -> int:
        """Bytes of values, scales and zero points as stored (8-bit values)."""
        zp = 0 if self.zero_point is None else self.zero_point.size * 4
        return int(self.values.nbytes + self.scale.nbytes + zp)


def quantize(weight: np.ndarray, *, axis: int | None, symmetric: bool, bits: int = 8) -> Quantized:
    """Round `weight` to `bits`-bit integers, one scale per slice along `axis` (None: one scale).

    Symmetric: int8 in [-(2^(b-1)-1), 2^(b-1)-1], zero maps to 0. Asymmetric: uint8 in
    [0, 2^b-1] with a zero point, the range widened to include 0 so zero stays exact.
    """
    w = np.asarray(weight, dtype=np.float32)
    if axis is not None:
        axis = axis % w.ndim
    reduce = tuple(i for i in range(w.ndim) if i != axis)
    # One temporary, rounded and clipped in place: faster than chained expressions.
    if w.size:
        high = np.max(w, axis=reduce, keepdims=True)
        low = np.min(w, axis=reduce, keepdims=True)
    else:
        high = low = np.zeros((1,) * w.ndim, np.float32)
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        scale = _safe_scale(np.maximum(high, -low) / qmax)
        scaled = np.divide(w, scale)
        np.rint(scaled, out=scaled)
        np.clip(scaled, -qmax, qmax, out=scaled)
        return Quantized(scaled.astype(np.int8), scale, None, axis)
    qmax = 2**bits - 1
    low, high = np.minimum(low, 0), np.maximum(high, 0)
    scale = _safe_scale((high - low) / qmax)
    zero_point = np.clip(np.rint(-low / scale), 0, qmax).astype(np.uint8)
    scaled = np.divide(w, scale)
    np.rint(scaled, out=scaled)
    scaled += zero_point
    np.clip(scaled, 0, qmax, out=scaled)
    return Quantized(scaled.astype(np.uint8), scale, zero_point, axis)


def _safe_scale(scale: np.ndarray) -> np.ndarray:
    """Float32 scales with all-zero slices given scale 1 (their values quantize to 0 anyway)."""
    scale = np.asarray(scale, dtype=np.float32)
    return np.where(scale > 0, scale, np.float32(1.0)).astype(np.float32)


def error_stats(original: np.ndarray, restored: np.ndarray) -> tuple[float, float]:
    """(MSE, SQNR in dB) of `restored` against `original`; SQNR is inf when they are equal."""
    a = np.asarray(original).reshape(-1)
    b = np.asarray(restored).reshape(-1)
    if a.size != b.size:
        raise ValueError(f"cannot compare {a.size} values with {b.size}")
    noise = 0.0
    signal = 0.0
    for start in range(0, a.size, _CHUNK):
        x = np.asarray(a[start : start + _CHUNK], dtype=np.float32)
        d = x - np.asarray(b[start : start + _CHUNK], dtype=np.float32)
        noise += float(np.dot(d, d))
        signal += float(np.dot(x, x))
    count = max(a.size, 1)
    mse = noise / count
    if noise == 0.0:
        return 0.0, math.inf
    if signal == 0.0:
        return mse, -math.inf
    return mse, 10.0 * math.log10(signal / noise)


# ---------------------------------------------------------------- onnxruntime's formats


def dequantize_linear(
    values: np.ndarray,
    scale: np.ndarray,
    zero_point: np.ndarray | None,
    axis: int | None,
    block_size: int = 0,
) -> np.ndarray:
    """ONNX DequantizeLinear semantics: per-tensor, per-axis, or blocked along `axis`."""
    v = values.astype(np.float32)
    s = np.asarray(scale, dtype=np.float32)
    z = None if zero_point is None else np.asarray(zero_point).astype(np.float32)
    if s.size > 1 and axis is not None:
        axis = axis % v.ndim
        if block_size:
            s = np.repeat(s, block_size, axis=axis).take(range(v.shape[axis]), axis=axis)
            if z is not None:
                z = np.repeat(z, block_size, axis=axis).take(range(v.shape[axis]), axis=axis)
        else:
            shape = [1] * v.ndim
            shape[axis] = s.size
            s = s.reshape(shape)
            z = None if z is None else z.reshape(shape)
    if z is not None:
        v -= z
    return v * s


def unpack_nibbles(packed: np.ndarray, count: int) -> np.ndarray:
    """Unsigned 4-bit values, low nibble first, as onnxruntime packs MatMulNBits/GatherBlock."""
    flat = np.asarray(packed, dtype=np.uint8).reshape(-1)
    out = np.empty(flat.size * 2, dtype=np.uint8)
    out[0::2] = flat & 0x0F
    out[1::2] = flat >> 4
    return out[:count]


def dequantize_matmul_nbits(
    packed: np.ndarray,
    scales: np.ndarray,
    zero_points: np.ndarray | None,
    *,
    k: int,
    n: int,
    bits: int,
    block_size: int,
) -> np.ndarray:
    """The [K, N] float weight stored in a com.microsoft MatMulNBits node (4- or 8-bit)."""
    blocks = -(-k // block_size)
    if bits == 4:
        q = unpack_nibbles(packed, n * blocks * block_size)
    else:
        q = np.asarray(packed, dtype=np.uint8).reshape(-1)[: n * blocks * block_size]
    q = q.reshape(n, blocks, block_size).astype(np.float32)
    s = np.asarray(scales, dtype=np.float32).reshape(n, blocks, 1)
    default_zp = float(2 ** (bits - 1))
    if zero_points is None:
        z = np.full((n, blocks, 1), default_zp, np.float32)
    else:
        zp = np.asarray(zero_points, dtype=np.uint8).reshape(n, -1)
        if bits == 4:
            per_row = zp.shape[1] * 2
            zp = unpack_nibbles(zp, n * per_row).reshape(n, per_row)
        z = zp[:, :blocks].astype(np.float32).reshape(n, blocks, 1)
    w = ((q - z) * s).reshape(n, blocks * block_size)[:, :k]
    return np.ascontiguousarray(w.T)
