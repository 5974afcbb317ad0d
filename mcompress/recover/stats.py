"""Per-layer calibration statistics: Gram matrices of a layer's input, batch by batch.

For a layer with input rows x (im2col patches for Conv, one Gram per group, a trailing 1 for the
bias column) it accumulates, over the compressed model's inputs x_c and the original's x_o:
  hcc = sum x_c x_cᵀ,  hco = sum x_c x_oᵀ,  hoo = sum x_o x_oᵀ.
Reconstruction error of any weight Ŵ against the original layer output W x_o then follows from
these alone (see `output_error`), so memory is bounded by the statistics, not the activations.

Patches are built inputs-first (`[groups, inputs, rows]`, rows contiguous): each copy reads the
input along its width, and a depthwise Conv's many small Grams are one batched product. The
bias column's entries are row sums, so no column of ones is ever materialised.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from mcompress.recover.layers import Layer
from mcompress.recover.solve import RIDGE

# Patch elements per Gram product: keeps the im2col copy of one chunk near 64 MB of float32.
_CHUNK_ELEMENTS = 16 * 1024 * 1024


def patches(layer: Layer, x: np.ndarray) -> np.ndarray:
    """Rows the layer multiplies by its weight: `[groups, rows, inputs(+1)]` float32."""
    cols = columns(layer, x).transpose(0, 2, 1)
    if layer.has_bias_column:
        ones = np.ones((*cols.shape[:2], 1), np.float32)
        cols = np.concatenate([cols, ones], axis=2)
    return np.ascontiguousarray(cols)


def columns(layer: Layer, x: np.ndarray) -> np.ndarray:
    """The layer's input as `[groups, inputs, rows]` float32 (inputs in weight-column order:
    channel, then kernel position, for a Conv; no bias column)."""
    x = np.asarray(x, dtype=np.float32)
    if layer.kind != "conv":
        return x.reshape(-1, x.shape[-1]).T[None]
    win = _windows(layer, x)
    g, cg, kh, kw, n, oh, ow = win.shape
    return win.reshape(g, cg * kh * kw, n * oh * ow)


def _windows(layer: Layer, x: np.ndarray) -> np.ndarray:
    """Conv input `[N, C, *spatial]` -> a view `[groups, C/groups, kh, kw, N, out_h, out_w]`
    (1-D convolutions have kh = out_h = 1)."""
    spatial = len(layer.kernel)
    if spatial == 1:
        x = x[:, :, None, :]
    kernel = layer.kernel if spatial == 2 else (1, *layer.kernel)
    strides = layer.strides if spatial == 2 else (1, *layer.strides)
    dil = layer.dilations if spatial == 2 else (1, *layer.dilations)
    pads = layer.pads if spatial == 2 else (0, layer.pads[0], 0, layer.pads[1])
    x = x.transpose(1, 0, 2, 3)  # [C, N, H, W]: the rows of one input run along the width
    if any(pads):
        x = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    span = tuple(d * (k - 1) + 1 for k, d in zip(kernel, dil, strict=True))
    win = np.lib.stride_tricks.sliding_window_view(x, span, axis=(2, 3))
    win = win[:, :, :: strides[0], :: strides[1], :: dil[0], :: dil[1]]
    c, n, oh, ow, kh, kw = win.shape
    g = layer.groups
    return win.reshape(g, c // g, n, oh, ow, kh, kw).transpose(0, 1, 5, 6, 2, 3, 4)


def _stacked(layer: Layer, xs: list[np.ndarray], bias: bool) -> np.ndarray:
    """`[groups, k*inputs(+1), rows]`: the columns of each of the k inputs, one above the other,
    then a row of ones for the bias, written once into one buffer."""
    d, per_sample = _shape(layer, xs[0])
    g, rows = layer.groups if layer.kind == "conv" else 1, per_sample * xs[0].shape[0]
    out = np.empty((g, d * len(xs) + bias, rows), np.float32)
    for i, x in enumerate(xs):
        part = out[:, i * d : (i + 1) * d]
        if layer.kind == "conv":
            win = _windows(layer, np.asarray(x, dtype=np.float32))
            np.copyto(part.reshape(win.shape), win)
        else:
            part[0] = x.reshape(-1, d).T
    if bias:
        out[:, -1] = 1.0
    return out


def _shape(layer: Layer, x: np.ndarray) -> tuple[int, int]:
    """(inputs per group, rows per sample) of the layer's columns, without building them."""
    if layer.kind != "conv":
        return x.shape[-1], 1
    g, cg, kh, kw, _, oh, ow = _windows(layer, x[:1]).shape
    return cg * kh * kw, oh * ow


def _sample_chunks(n: int, elements_per_sample: int) -> Iterator[slice]:
    """Slices of `n` samples whose patches stay near _CHUNK_ELEMENTS."""
    step = max(1, _CHUNK_ELEMENTS // max(elements_per_sample, 1))
    for start in range(0, n, step):
        yield slice(start, start + step)


# Up to this many stacked inputs (compressed and original side by side, plus the bias row) the
# three Grams come from one batched product over one buffer; wider layers use three products.
STACK_MAX_INPUTS = 512


@dataclass
class GramStats:
    """Accumulated Gram matrices of one layer (float64, `[groups, d, d]`)."""

    hcc: np.ndarray | None = None
    hco: np.ndarray | None = None
    hoo: np.ndarray | None = None
    rows: int = 0
    same: bool = True  # x_c == x_o so far (nothing upstream changed): hco = hoo = hcc
    ridge: float = RIDGE  # relative ridge the reconstruction adds to hcc (`solve.damped`)

    def add(self, layer: Layer, xc: np.ndarray, xo: np.ndarray | None) -> None:
        """Add one batch of layer inputs (xo None: the compressed input equals the original)."""
        bias = layer.has_bias_column
        if layer.kind != "conv":
            xc = xc.reshape(-1, xc.shape[-1])
            xo = None if xo is None else xo.reshape(-1, xo.shape[-1])
        d, per_sample = _shape(layer, xc)
        width = (1 if xo is None else 2) * d * layer.groups
        for part in _sample_chunks(xc.shape[0], width * per_sample):
            if xo is None:
                self._add(_gram_stacked(_stacked(layer, [xc[part]], bias)), None, None)
            elif 2 * d + bias <= STACK_MAX_INPUTS:
                both = _gram_stacked(_stacked(layer, [xc[part], xo[part]], bias))
                self._add(*_split(both, d, bias))
            else:
                c, o = columns(layer, xc[part]), columns(layer, xo[part])
                self._add(gram(c, c, bias), gram(c, o, bias), gram(o, o, bias))
            self.rows += xc[part].shape[0] * per_sample

    def _add(self, hcc: np.ndarray, hco: np.ndarray | None, hoo: np.ndarray | None) -> None:
        """Add one chunk's Grams (hco, hoo None: the chunk's x_o equals x_c)."""
        if self.hcc is None:
            self.hcc = np.zeros_like(hcc)
        if self.same and hco is None:
            self.hcc += hcc
            return
        if self.same:
            self.same = False
            self.hco, self.hoo = self.hcc.copy(), self.hcc.copy()
        assert self.hco is not None and self.hoo is not None
        self.hcc += hcc
        self.hco += hcc if hco is None else hco
        self.hoo += hcc if hoo is None else hoo

    def cross(self) -> np.ndarray:
        """sum x_c x_oᵀ."""
        assert self.hcc is not None
        return self.hcc if self.same else self.hco  # type: ignore[return-value]

    def original(self) -> np.ndarray:
        """sum x_o x_oᵀ."""
        assert self.hcc is not None
        return self.hcc if self.same else self.hoo  # type: ignore[return-value]


def combined(a: GramStats, b: GramStats) -> GramStats:
    """The statistics of the batches of `a` and of `b` together."""
    if a.hcc is None:
        return b
    if b.hcc is None:
        return a
    both = GramStats(a.hcc + b.hcc, rows=a.rows + b.rows, same=a.same and b.same)
    if not both.same:
        both.hco, both.hoo = a.cross() + b.cross(), a.original() + b.original()
    return both


def _gram_stacked(a: np.ndarray) -> np.ndarray:
    """a aᵀ per group, float64 (one batched float32 product)."""
    if a.shape[0] == 1:
        return (a[0] @ a[0].T)[None].astype(np.float64)
    return np.matmul(a, a.transpose(0, 2, 1)).astype(np.float64)


def _split(both: np.ndarray, d: int, bias: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """hcc, hco, hoo from the Gram of [x_c; x_o; 1] (each with the bias row and column)."""
    c = list(range(d)) + ([2 * d] if bias else [])
    o = list(range(d, 2 * d)) + ([2 * d] if bias else [])
    return both[:, c][:, :, c], both[:, c][:, :, o], both[:, o][:, :, o]


def gram(a: np.ndarray, b: np.ndarray, bias: bool) -> np.ndarray:
    """Σ over rows of a bᵀ per group, float64 `[groups, da(+1), db(+1)]`, for inputs-first
    columns; with `bias` a trailing 1 on both sides (its entries are row sums and the row
    count). Float32 products (BLAS), accumulated in float64 by the caller."""
    g, da, rows = a.shape
    db = b.shape[1]
    out = np.zeros((g, da + bias, db + bias))
    for gi in range(g):
        out[gi, :da, :db] = a[gi] @ b[gi].T
    if bias:
        out[:, :da, db] = a.sum(axis=2, dtype=np.float64)
        out[:, da, :db] = b.sum(axis=2, dtype=np.float64)
        out[:, da, db] = rows
    return out


def output_error(w_hat: np.ndarray, w: np.ndarray, stats: GramStats) -> float:
    """Relative squared error ||Ŵ x_c - W x_o||² / ||W x_o||² over the calibration rows."""
    hcc, hco, hoo = stats.hcc, stats.cross(), stats.original()
    assert hcc is not None
    a = _quadratic(w_hat, hcc, w_hat)
    b = _quadratic(w_hat, hco, w)
    ref = _quadratic(w, hoo, w)
    return float(max(a - 2 * b + ref, 0.0) / max(ref, 1e-30))


def _quadratic(a: np.ndarray, h: np.ndarray, b: np.ndarray) -> float:
    """Σ over groups and rows of a_r H b_rᵀ (one batched BLAS product, not a 3-operand einsum,
    whose plain loops cost seconds on a 2048-input layer)."""
    return float(np.sum(np.matmul(a, h) * b))
