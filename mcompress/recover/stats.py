"""Per-layer calibration statistics: Gram matrices of a layer's input, batch by batch.

For a layer with input rows x (im2col patches for Conv, one Gram per group, a trailing 1 for the
bias column) it accumulates, over the compressed model's inputs x_c and the original's x_o:
  hcc = sum x_c x_cᵀ,  hco = sum x_c x_oᵀ,  hoo = sum x_o x_oᵀ.
Reconstruction error of any weight Ŵ against the original layer output W x_o then follows from
these alone (see `output_error`), so memory is bounded by the statistics, not the activations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mcompress.recover.layers import Layer

# Patch rows per Gram product: keeps the im2col copy of one chunk near 64 MB of float32.
_CHUNK_ELEMENTS = 16 * 1024 * 1024


def patches(layer: Layer, x: np.ndarray) -> np.ndarray:
    """Rows the layer multiplies by its weight: `[groups, rows, inputs(+1)]` float32."""
    x = np.asarray(x, dtype=np.float32)
    cols = _im2col(layer, x) if layer.kind == "conv" else x.reshape(1, -1, x.shape[-1])
    if layer.has_bias_column:
        ones = np.ones((*cols.shape[:2], 1), np.float32)
        cols = np.concatenate([cols, ones], axis=2)
    return cols


def _im2col(layer: Layer, x: np.ndarray) -> np.ndarray:
    """Conv input `[N, C, *spatial]` -> `[groups, N*out_positions, C/groups * prod(kernel)]`."""
    spatial = len(layer.kernel)
    if spatial == 1:
        x = x[:, :, None, :]
    kernel = layer.kernel if spatial == 2 else (1, *layer.kernel)
    strides = layer.strides if spatial == 2 else (1, *layer.strides)
    dil = layer.dilations if spatial == 2 else (1, *layer.dilations)
    pads = layer.pads if spatial == 2 else (0, layer.pads[0], 0, layer.pads[1])
    x = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    span = tuple(d * (k - 1) + 1 for k, d in zip(kernel, dil, strict=True))
    win = np.lib.stride_tricks.sliding_window_view(x, span, axis=(2, 3))
    win = win[:, :, :: strides[0], :: strides[1], :: dil[0], :: dil[1]]
    n, c, oh, ow, kh, kw = win.shape
    g = layer.groups
    win = win.reshape(n, g, c // g, oh, ow, kh, kw).transpose(1, 0, 3, 4, 2, 5, 6)
    return win.reshape(g, n * oh * ow, (c // g) * kh * kw)


@dataclass
class GramStats:
    """Accumulated Gram matrices of one layer (float64, `[groups, d, d]`)."""

    hcc: np.ndarray | None = None
    hco: np.ndarray | None = None
    hoo: np.ndarray | None = None
    rows: int = 0
    same: bool = True  # x_c == x_o so far (nothing upstream changed): hco = hoo = hcc

    def add(self, layer: Layer, xc: np.ndarray, xo: np.ndarray | None) -> None:
        """Add one batch of layer inputs (xo None: the compressed input equals the original)."""
        pc = patches(layer, xc)
        po = None if xo is None else patches(layer, xo)
        step = max(1, _CHUNK_ELEMENTS // max(pc.shape[0] * pc.shape[2], 1))
        for start in range(0, pc.shape[1], step):
            c = pc[:, start : start + step]
            o = None if po is None else po[:, start : start + step]
            self._add_chunk(c, o)
        self.rows += pc.shape[1]

    def _add_chunk(self, c: np.ndarray, o: np.ndarray | None) -> None:
        hcc = _gram(c, c)
        if self.hcc is None:
            self.hcc = np.zeros_like(hcc)
        self.hcc += hcc
        if o is None and self.same:
            return
        if self.same:
            self.same = False
            self.hco = self.hcc - hcc
            self.hoo = self.hcc - hcc
        o = c if o is None else o
        self.hco += _gram(c, o)
        self.hoo += _gram(o, o)

    def cross(self) -> np.ndarray:
        """sum x_c x_oᵀ."""
        assert self.hcc is not None
        return self.hcc if self.same else self.hco  # type: ignore[return-value]

    def original(self) -> np.ndarray:
        """sum x_o x_oᵀ."""
        assert self.hcc is not None
        return self.hcc if self.same else self.hoo  # type: ignore[return-value]


def _gram(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Σ a bᵀ per group, one 2-D BLAS product each (batched matmul on views is far slower)."""
    return np.stack([a[g].T @ b[g] for g in range(a.shape[0])]).astype(np.float64)


def output_error(w_hat: np.ndarray, w: np.ndarray, stats: GramStats) -> float:
    """Relative squared error ||Ŵ x_c - W x_o||² / ||W x_o||² over the calibration rows."""
    hcc, hco, hoo = stats.hcc, stats.cross(), stats.original()
    assert hcc is not None
    a = np.einsum("grd,gde,gre->", w_hat, hcc, w_hat)
    b = np.einsum("grd,gde,gre->", w_hat, hco, w)
    ref = np.einsum("grd,gde,gre->", w, hoo, w)
    return float(max(a - 2 * b + ref, 0.0) / max(ref, 1e-30))
