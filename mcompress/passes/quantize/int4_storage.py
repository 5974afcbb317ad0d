"""4-bit block-wise weights that run as int8: 4-bit codes on disk, an int8 MatMul at run time.

onnxruntime's MatMulNBits is slower than its int8 DynamicQuantizeMatMul on x86 at prompt-sized
inputs (figures in benchmarks/README.md). So a [K, N] weight is stored as int4 codes
q in [-7, 7] per block of `block_size` rows, and one small integer multiplier m in [1, 16] per
block and column, over one float scale per column s: w ~ q * m * s. The int8 weight q * m
(|q * m| <= 112) is rebuilt by Cast/Mul/Reshape/Cast, which onnxruntime constant-folds when it
loads the model, and feeds the dynamic int8 MatMul. Codes and multipliers each hold at most 16
values, so packing stores both as 4-bit codes: about 4.1 bits per weight. Rounding multipliers
up costs ~0.5 dB of SQNR against free float block scales (19.9 vs 20.3 dB on random weights).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

from mcompress.graph import FreshNames
from mcompress.model_io import add_initializer

CODE_MAX = 7
MULTIPLIER_MAX = 16


@dataclass
class Int4Weight:
    """Codes [K / block, block, N] int8, multipliers [K / block, 1, N] uint8, scales [N]."""

    codes: np.ndarray
    multipliers: np.ndarray
    scale: np.ndarray

    def int8(self) -> np.ndarray:
        """The int8 [K, N] weight onnxruntime rebuilds at load."""
        product = self.codes.astype(np.int32) * self.multipliers
        return product.reshape(-1, self.codes.shape[-1]).astype(np.int8)

    @property
    def nbytes(self) -> int:
        """Stored bytes once packing has turned codes and multipliers into 4-bit codes."""
        return (self.codes.size + self.multipliers.size + 1) // 2 + self.scale.nbytes


def fits(rows: int, block_size: int) -> bool:
    """Whether a weight of `rows` input rows splits into whole blocks."""
    return rows >= block_size and rows % block_size == 0


def quantize(weight: np.ndarray, block_size: int) -> Int4Weight:
    """Symmetric 4-bit codes of a [K, N] float weight with integer block multipliers."""
    k, n = weight.shape
    blocks = weight.reshape(k // block_size, block_size, n)
    column_max = np.abs(weight).max(axis=0)
    scale = np.where(column_max > 0, column_max / (CODE_MAX * MULTIPLIER_MAX), 1).astype(np.float32)
    block_max = np.abs(blocks).max(axis=1, keepdims=True)
    multipliers = np.clip(np.ceil(block_max / (CODE_MAX * scale) - 1e-6), 1, MULTIPLIER_MAX)
    step = scale * multipliers
    codes = np.clip(np.rint(blocks / step), -CODE_MAX, CODE_MAX).astype(np.int8)
    return Int4Weight(codes, multipliers.astype(np.uint8), scale)


def rebuild_nodes(
    graph: onnx.GraphProto, stored: Int4Weight, base: str, output: str, names: FreshNames
) -> tuple[list[onnx.NodeProto], list[str]]:
    """Initializers for `stored` in `graph`, and the nodes writing its int8 weight to `output`
    (constant-folded at load); returns (nodes, initializer names)."""
    codes, multipliers = names.fresh(f"{base}_int4"), names.fresh(f"{base}_block_multipliers")
    shape = names.fresh(f"{base}_shape")
    add_initializer(graph, stored.codes, codes)
    add_initializer(graph, stored.multipliers, multipliers)
    add_initializer(graph, np.array([-1, stored.codes.shape[-1]], np.int64), shape)
    wide = [names.fresh(f"{base}_codes_int32"), names.fresh(f"{base}_multipliers_int32")]
    product, flat = names.fresh(f"{base}_product"), names.fresh(f"{base}_product_2d")
    nodes = [
        helper.make_node("Cast", [codes], [wide[0]], to=TensorProto.INT32),
        helper.make_node("Cast", [multipliers], [wide[1]], to=TensorProto.INT32),
        helper.make_node("Mul", wide, [product]),
        helper.make_node("Reshape", [product, shape], [flat]),
        helper.make_node("Cast", [flat], [output], to=TensorProto.INT8),
    ]
    for node in nodes:
        node.name = names.fresh(f"{base}_{node.op_type}")
    return nodes, [codes, multipliers, shape]
